import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Rng } from "../../../core/data/rng";
import type { GraphSpec } from "../../../core/engine/graph-spec";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { initialWeights } from "../../../core/engine/models";
import { saveModelDir } from "../../../core/export/model-dir";
import { OnnxModel } from "../../../core/export/onnx-runtime";
import { modelProtoType } from "../../../core/export/onnx-schema";
import { reference, referencePredict } from "./tfjs-graph";

const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");

function run(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const SPEC: ModelSpec = { kind: "mlp", inputShape: [784], numClasses: 10, hidden: [200, 200] };

test("flotilla export --format onnx [--quantize int8] writes loadable models", async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-export-"));
  const dir = path.join(tmp, "model");
  saveModelDir(dir, SPEC, initialWeights(SPEC, 1), { jobId: "j", round: 3 });
  const sizes: number[] = [];
  for (const q of [[], ["--quantize", "int8"]]) {
    const out = path.join(tmp, "out", q.length ? "m-int8.onnx" : "m.onnx");
    const r = run(["export", "--model", dir, "--format", "onnx", ...q, "--out", out]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 1, r.stdout);
    const size = fs.statSync(out).size;
    sizes.push(size);
    assert.match(lines[0], new RegExp(`${out.replace(/[.\\/]/g, "\\$&")}: ${size} bytes, mlp 199210 params`));
    assert.match(lines[0], q.length ? /int8/ : /fp32/);
    const bytes = fs.readFileSync(out);
    const m = modelProtoType().decode(bytes) as unknown as { graph: { node: unknown[] } };
    assert.ok(m.graph.node.length > 0);
    const onnx = await OnnxModel.load(bytes, { threads: 1 });
    const p = await onnx.predict(new Float32Array(2 * 784).fill(0.5), 2);
    await onnx.close();
    assert.equal(p.length, 20);
  }
  assert.ok(sizes[0] / sizes[1] >= 3.5, `ratio ${sizes[0] / sizes[1]}`);
});

test("flotilla export errors are one line with exit code 2", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-export-"));
  const dir = path.join(tmp, "model");
  saveModelDir(dir, SPEC, initialWeights(SPEC, 1));
  fs.rmSync(path.join(dir, "layout.json"));
  const out = path.join(tmp, "x.onnx");
  const cases: [string[], RegExp][] = [
    [
      ["export", "--model", path.join(tmp, "nope"), "--format", "onnx", "--out", out],
      /^flotilla: E_MODEL_DIR: .*no such model directory$/,
    ],
    [
      ["export", "--model", dir, "--format", "onnx", "--out", out],
      /^flotilla: E_MODEL_DIR: .*missing layout\.json$/,
    ],
    [
      ["export", "--model", dir, "--format", "tflite", "--out", out],
      /^flotilla: E_EXPORT_FORMAT: unsupported --format 'tflite'/,
    ],
    [
      ["export", "--model", dir, "--format", "onnx", "--quantize", "int4", "--out", out],
      /^flotilla: E_EXPORT_FORMAT: unsupported --quantize 'int4'/,
    ],
    [["export", "--model", dir, "--format", "onnx"], /required option '--out <file>'/],
  ];
  for (const [args, pattern] of cases) {
    const r = run(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
  }
  assert.ok(!fs.existsSync(out));
});

test("flotilla export of a layer-graph model directory: fp32 matches tfjs-layers, int8 agrees", async () => {
  const graph: GraphSpec = {
    kind: "graph",
    name: "sensor-lstm",
    inputShape: [12, 4],
    layers: [
      { name: "conv", type: "Conv1D", filters: 8, kernelSize: 3, padding: "same", activation: "relu" },
      { name: "lstm", type: "LSTM", units: 6 },
      { name: "out", type: "Dense", units: 3, activation: "softmax" },
    ],
    loss: "sparse_categorical_crossentropy",
    task: "classification",
    numClasses: 3,
  };
  const ref = await reference(graph, 4);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-export-"));
  const dir = path.join(tmp, "model");
  saveModelDir(dir, graph, ref.weights, { jobId: "g", round: 1 });
  const rng = new Rng(2);
  const x = new Float32Array(16 * 48).map(() => rng.normal());
  const want = referencePredict(ref, graph, x, 16);
  for (const q of [[], ["--quantize", "int8"]]) {
    const out = path.join(tmp, q.length ? "g-int8.onnx" : "g.onnx");
    const r = run(["export", "--model", dir, "--format", "onnx", ...q, "--out", out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout.trim(),
      new RegExp(`graph ${ref.weights.length} params, ${q.length ? "int8" : "fp32"} onnx$`),
    );
    const onnx = await OnnxModel.load(fs.readFileSync(out), { threads: 1 });
    const got = await onnx.predict(x, 16);
    await onnx.close();
    let diff = 0;
    for (let i = 0; i < got.length; i++) diff = Math.max(diff, Math.abs(got[i] - want[i]));
    assert.ok(diff < (q.length ? 0.05 : 1e-5), `${q.join(" ") || "fp32"}: max |ORT − tfjs| = ${diff}`);
  }
});
