import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isFlotillaError } from "../../../core/errors";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { initialWeights, modelLayout } from "../../../core/engine/models";
import { loadModelDir, saveModelDir } from "../../../core/export/model-dir";
import { weightsHash } from "../../../core/tensor/layout";

const SPEC: ModelSpec = {
  kind: "cnn",
  inputShape: [8, 8, 1],
  numClasses: 3,
  filters: [4],
  kernelSize: 3,
  dense: 5,
};

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-modeldir-"));
}

function saved(meta?: { jobId?: string; round?: number }): { dir: string; weights: Float32Array } {
  const dir = path.join(tmpDir(), "model");
  const weights = initialWeights(SPEC, 3);
  weights[weights.length - 1] = 0.25;
  saveModelDir(dir, SPEC, weights, meta);
  return { dir, weights };
}

/** loadModelDir(dir) fails with E_MODEL_DIR and a one-line message matching `pattern`. */
function rejects(dir: string, pattern: RegExp): void {
  assert.throws(
    () => loadModelDir(dir),
    (e: unknown) =>
      isFlotillaError(e) && e.code === "E_MODEL_DIR" && !e.message.includes("\n") && pattern.test(e.message),
  );
}

test("saveModelDir / loadModelDir round-trip", () => {
  const { dir, weights } = saved({ jobId: "job-1", round: 12 });
  // model.json: the same weights as a TensorFlow.js Layers model (weights.bin is its shard; docs/byom.md).
  assert.deepEqual(fs.readdirSync(dir).sort(), [
    "layout.json",
    "meta.json",
    "model.json",
    "spec.json",
    "weights.bin",
  ]);
  assert.equal(fs.statSync(path.join(dir, "weights.bin")).size, weights.length * 4);
  const m = loadModelDir(dir);
  assert.deepEqual(m.spec, SPEC);
  assert.deepEqual(m.weights, weights);
  assert.deepEqual(m.layout, modelLayout(SPEC));
  assert.equal(m.meta?.jobId, "job-1");
  assert.equal(m.meta?.round, 12);
  assert.equal(m.meta?.sha256, weightsHash(weights));
  assert.ok(!Number.isNaN(Date.parse(m.meta!.createdAt)));
  // weights.bin is float32 little-endian
  const b = fs.readFileSync(path.join(dir, "weights.bin"));
  assert.equal(b.readFloatLE(b.length - 4), 0.25);
  // meta.json is optional
  fs.rmSync(path.join(dir, "meta.json"));
  assert.equal(loadModelDir(dir).meta, null);
  // without meta fields: only sha256 and createdAt
  const plain = saved();
  assert.deepEqual(Object.keys(loadModelDir(plain.dir).meta!).sort(), ["createdAt", "sha256"]);
});

test("loadModelDir rejects every bad directory with a one-line E_MODEL_DIR", () => {
  const root = tmpDir();
  rejects(path.join(root, "missing"), /no such model directory/);
  fs.writeFileSync(path.join(root, "file"), "x");
  rejects(path.join(root, "file"), /not a directory/);

  for (const f of ["spec.json", "weights.bin", "layout.json"]) {
    const { dir } = saved();
    fs.rmSync(path.join(dir, f));
    rejects(dir, new RegExp(`missing ${f.replace(".", "\\.")}`));
  }

  let d = saved().dir;
  fs.writeFileSync(path.join(d, "spec.json"), "{ not json");
  rejects(d, /spec\.json: not valid JSON/);

  d = saved().dir;
  fs.writeFileSync(path.join(d, "spec.json"), JSON.stringify({ ...SPEC, kind: "rnn" }));
  rejects(d, /spec\.json: .*unknown kind/);

  // layout of another architecture: hash mismatch
  d = saved().dir;
  fs.writeFileSync(path.join(d, "layout.json"), JSON.stringify(modelLayout({ ...SPEC, dense: 6 })));
  rejects(d, /layout\.json: layout [0-9a-f]{12} does not match spec\.json's layout/);
  // right hash, tampered entries
  d = saved().dir;
  const l = JSON.parse(fs.readFileSync(path.join(d, "layout.json"), "utf8"));
  l.entries[0].offset = 1;
  fs.writeFileSync(path.join(d, "layout.json"), JSON.stringify(l));
  rejects(d, /does not match/);
  // spec changed under the layout
  d = saved().dir;
  fs.writeFileSync(path.join(d, "spec.json"), JSON.stringify({ ...SPEC, numClasses: 4 }));
  rejects(d, /does not match/);

  // length mismatch
  d = saved().dir;
  const wf = path.join(d, "weights.bin");
  fs.writeFileSync(wf, fs.readFileSync(wf).subarray(0, 40));
  rejects(d, /weights\.bin: has 40 bytes, the spec needs \d+ float32 values/);
  d = saved().dir;
  fs.appendFileSync(path.join(d, "weights.bin"), Buffer.from([1, 2]));
  rejects(d, /weights\.bin: has \d+ bytes/);

  // weights changed after meta.json was written
  d = saved().dir;
  const bytes = fs.readFileSync(path.join(d, "weights.bin"));
  bytes.writeFloatLE(1.5, 0);
  fs.writeFileSync(path.join(d, "weights.bin"), bytes);
  rejects(d, /sha256 [0-9a-f]{12} does not match meta\.json/);

  d = saved().dir;
  fs.writeFileSync(path.join(d, "meta.json"), "[");
  rejects(d, /meta\.json: not valid JSON/);
  d = saved().dir;
  fs.writeFileSync(path.join(d, "meta.json"), JSON.stringify({ createdAt: "now" }));
  rejects(d, /meta\.json: needs string fields sha256 and createdAt/);
});

test("saveModelDir rejects weights that do not fit the spec", () => {
  const dir = path.join(tmpDir(), "m");
  assert.throws(
    () => saveModelDir(dir, SPEC, new Float32Array(3)),
    (e: unknown) => isFlotillaError(e) && e.code === "E_MODEL_DIR",
  );
  assert.throws(
    () => saveModelDir(dir, { ...SPEC, inputShape: [] }, new Float32Array(3)),
    (e: unknown) => isFlotillaError(e) && e.code === "E_MODEL_DIR",
  );
  assert.ok(!fs.existsSync(dir));
});
