/**
 * The simulator with your own model (docs/byom.md): `--model PATH` trains an imported Keras / tfjs model from its
 * weights (in the main thread and in worker threads), `--init-model` warm-starts from a previous job's out/model,
 * out/model saves and reloads (and holds a tfjs model.json), `--optimizer` is recorded, and `flotilla bench train
 * --model PATH` benchmarks an imported model.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../../../core/engine/backend";
import { readKerasModel } from "../../../core/engine/keras";
import { createModel } from "../../../core/engine/models";
import { modelLayout } from "../../../core/engine/plan";
import { loadModelSource } from "../../../core/export/model-dir";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { loadFleetData } from "../../../local/sim/data";
import { simulate } from "../../../local/sim/simulate";
import { saveLayersModel } from "../../../scripts/make-keras-fixtures";

const BIN = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");
const CNN = path.resolve(__dirname, "..", "..", "..", "..", "test", "fixtures", "keras", "mnist-cnn");

/** A small Keras classifier of the sensor windows ([32, 6], 5 classes), saved as tfjs model.save() writes it. */
async function sensorModel(dir: string): Promise<string> {
  await initBackend();
  const m = tf.sequential({ name: "sensor_mlp" });
  m.add(tf.layers.flatten({ inputShape: [32, 6], name: "flat" }));
  m.add(tf.layers.dense({ units: 16, activation: "relu", name: "hidden" }));
  m.add(tf.layers.dense({ units: 5, activation: "softmax", name: "out" }));
  m.compile({ optimizer: "sgd", loss: "sparseCategoricalCrossentropy" });
  await saveLayersModel(m, dir);
  m.dispose();
  return path.join(dir, "model.json");
}

const base = (out: string, over: Partial<SimConfig>): SimConfig => ({
  ...DEFAULT_CONFIG,
  devices: 4,
  clientsPerRound: 2,
  rounds: 1,
  samplesPerDevice: 40,
  workers: 0,
  out,
  ...over,
});

test("--model PATH trains the imported model from its weights, in the main thread and in workers; --init-model warm-starts", async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-byom-"));
  try {
    const file = await sensorModel(path.join(tmp, "keras"));
    const imported = readKerasModel(file);
    // The imported weights' accuracy on the simulator's test set: a round with a vanishing learning rate keeps it.
    const cfg = base(path.join(tmp, "a"), { model: file, lr: 1e-30 });
    const data = loadFleetData({ ...cfg, modelSpec: imported.spec });
    const ref = await createModel(imported.spec, 1);
    ref.setWeights(imported.weights);
    const want = ref.evaluate(data.test, 500);
    ref.dispose();
    for (const workers of [0, 1]) {
      const r = await simulate({ ...cfg, workers, out: path.join(tmp, `w${workers}`) });
      assert.equal(r.config.modelSpec && (r.config.modelSpec as { kind: string }).kind, "graph");
      assert.equal(r.config.layoutHash, modelLayout(imported.spec).hash);
      assert.ok(
        Math.abs(r.rounds[0].accuracy - want.accuracy) < 1e-9,
        `workers ${workers}: ${r.rounds[0].accuracy} vs ${want.accuracy}`,
      );
    }
    // A real run, saved; its out/model reloads (spec.json) and holds a model.json of the same weights.
    const first = await simulate(
      base(path.join(tmp, "b"), { model: file, rounds: 2, lr: 0.05, optimizer: "momentum" }),
    );
    assert.equal(first.config.optimizer, "momentum");
    const saved = loadModelSource(path.join(tmp, "b", "model"));
    // ... and exports to ONNX like any model directory.
    const onnx = path.join(tmp, "b.onnx");
    const ex = spawnSync(
      process.execPath,
      [BIN, "export", "--model", path.join(tmp, "b", "model"), "--format", "onnx", "--out", onnx],
      { encoding: "utf8", timeout: 300_000 },
    );
    assert.equal(ex.status, 0, ex.stderr);
    assert.ok(fs.statSync(onnx).size > saved.weights.length * 4);
    assert.equal(saved.format, "model-dir");
    assert.deepEqual(readKerasModel(path.join(tmp, "b", "model")).weights, saved.weights);
    // Warm start from it: the first round starts where the previous job ended (same weights → same accuracy).
    const warm = await simulate(
      base(path.join(tmp, "c"), { model: file, initModel: path.join(tmp, "b", "model"), lr: 1e-30 }),
    );
    const m = await createModel(saved.spec, 1);
    m.setWeights(saved.weights);
    assert.ok(Math.abs(warm.rounds[0].accuracy - m.evaluate(data.test, 500).accuracy) < 1e-9);
    m.dispose();
    // A warm start of another layout is one coded error before anything runs.
    await assert.rejects(
      simulate(base(path.join(tmp, "d"), { model: "mlp", initModel: path.join(tmp, "b", "model") })),
      { code: "E_MODEL_INIT" },
    );
    // A model that does not take the dataset's samples.
    await assert.rejects(simulate(base(path.join(tmp, "e"), { model: CNN })), { code: "E_DATA_SHAPE" });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test("the CLI: simulate --model/--init-model/--optimizer errors are one coded line; bench train --model PATH", () => {
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 300_000 });
  const bad = run("simulate", "--model", "/nonexistent/model.json", "--devices", "2", "--rounds", "1");
  assert.equal(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /^flotilla: E_MODEL_IMPORT: .*no such file/m);
  const opt = run("simulate", "--optimizer", "rmsprop", "--devices", "2", "--rounds", "1");
  assert.match(opt.stderr, /^flotilla: E_CONFIG_OPTIMIZER: /m);
  const b = run("bench", "train", "--model", CNN, "--seconds", "1", "--json");
  assert.equal(b.status, 0, b.stderr);
  const r = JSON.parse(b.stdout.trim().split("\n").pop()!) as {
    model: string;
    params: number;
    samplesPerSecond: number;
  };
  assert.equal(r.params, 1_663_370);
  assert.ok(r.samplesPerSecond > 0);
});
