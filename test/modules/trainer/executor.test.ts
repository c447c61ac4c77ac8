import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { isFlotillaError } from "../../../core/errors";
import { resolveData } from "../../../modules/trainer/src/executor";

/** The trainer reads its data directory with the directory's schema.json (docs/data.md). */

const dirs: string[] = [];
process.on("exit", () => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function dirWith(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-trainer-data-"));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  return dir;
}

const CSV =
  "ts,a,b,label\n" + Array.from({ length: 8 }, (_, i) => `${7 - i},${i},${-i},${i < 4 ? 0 : 1}`).join("\n");

test("resolveData windows the directory by its schema.json and views it in the model's shape", () => {
  const dir = dirWith({
    "schema.json": JSON.stringify({ window: { length: 4, orderBy: "ts" }, classes: ["ok", "fault"] }),
    "d.csv": CSV,
  });
  const cnn1d: ModelSpec = { kind: "cnn1d", inputShape: [4, 2], numClasses: 2 };
  const w = resolveData({ kind: "dir", dir }, cnn1d);
  assert.deepEqual(w.inputShape, [4, 2]);
  // Sorted by ts (the file is in reverse time order): rows 7..4 (label 1), then 3..0 (label 0).
  assert.deepEqual(Array.from(w.x.subarray(0, 8)), [7, -7, 6, -6, 5, -5, 4, -4]);
  assert.deepEqual(Array.from(w.y), [1, 0]);
  const mlp: ModelSpec = { kind: "mlp", inputShape: [8], numClasses: 2 };
  assert.deepEqual(resolveData({ kind: "dir", dir }, mlp).inputShape, [8]);
});

test("resolveData: a bad schema.json or data for another task is a coded error, not a crash", () => {
  const spec: ModelSpec = { kind: "mlp", inputShape: [2], numClasses: 2 };
  const cases: [Record<string, string>, string][] = [
    [{ "schema.json": '{"window": {"length": "4"}}', "d.csv": CSV }, "E_DATA_SCHEMA"],
    [
      { "schema.json": '{"task": "regression", "targets": ["ts"], "features": ["a", "b"]}', "d.csv": CSV },
      "E_DATA_TASK",
    ],
    [{ "schema.json": '{"features": ["c"]}', "d.csv": CSV }, "E_DATA_COLUMN"],
  ];
  for (const [files, code] of cases) {
    try {
      resolveData({ kind: "dir", dir: dirWith(files) }, spec);
      assert.fail(`expected ${code}`);
    } catch (e) {
      assert.ok(isFlotillaError(e), String(e));
      assert.equal(e.code, code, e.message);
    }
  }
});
