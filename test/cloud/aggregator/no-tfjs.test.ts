/**
 * The Function never loads TensorFlow.js: it needs weight layouts and initial weights only (core/engine/plan.ts),
 * not the training engine (core/engine/models.ts and the tfjs wasm backend). Checked in a fresh child process, whose
 * require.cache holds exactly what loading the Function's entry point pulled in.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";

const distRoot = path.resolve(__dirname, "..", "..", "..");

/** Requires each file in a fresh node and returns the modules its require.cache holds after each one. */
function loadedAfter(files: string[]): string[][] {
  const script = `
    const out = [];
    for (const f of ${JSON.stringify(files)}) {
      require(f);
      out.push(Object.keys(require.cache));
    }
    process.stdout.write(JSON.stringify(out));
  `;
  const r = spawnSync(process.execPath, ["-e", script], { cwd: distRoot, encoding: "utf8" });
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as string[][];
}

const isTfjs = (p: string) => p.split(path.sep).join("/").includes("/node_modules/@tensorflow/");

test("loading the Function's entry point (and so the aggregator) loads no module of @tensorflow", () => {
  const entry = path.join(distRoot, "cloud", "aggregator", "src", "index.js");
  const models = path.join(distRoot, "core", "engine", "models.js");
  const [afterEntry, afterModels] = loadedAfter([entry, models]);
  // The entry really loaded the aggregator and the layout code it uses.
  for (const f of [
    "cloud/aggregator/src/aggregator.js",
    "cloud/aggregator/src/orchestrator.js",
    "core/engine/plan.js",
  ]) {
    assert.ok(
      afterEntry.some((p) => p.endsWith(path.join(...f.split("/")))),
      `${f} is loaded`,
    );
  }
  assert.deepEqual(afterEntry.filter(isTfjs), [], "the Function loaded TensorFlow.js");
  // The check sees tfjs when it is there: the training engine loads it.
  assert.ok(afterModels.some(isTfjs), "core/engine/models.js loads @tensorflow/tfjs");
});
