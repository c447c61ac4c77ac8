/**
 * `node dist/scripts/bench-onnx.js [--json] [--model DIR] [--save DIR] [--forms]`: ONNX export and inference
 * figures on MNIST (the fixed 8,000 / 2,000 split of core/data/mnist.ts).
 *
 * Trains an mlp (McMahan 2NN, 5 epochs) and a cnn (McMahan CNN, 1 epoch) centrally with LocalModel.train (plain
 * SGD, B = 10, lr 0.05), or takes one saved model directory (--model DIR, an MNIST-shaped spec), exports each as
 * fp32 and int8 ONNX and reports, per model:
 *   - file sizes and their ratio (target ≥ 3.5×),
 *   - argmax agreement of onnxruntime fp32 with the tfjs model on the 2,000 test digits (target ≥ 99.9%) and the
 *     largest probability difference,
 *   - test accuracy of tfjs, onnxruntime fp32 and onnxruntime int8 (target: int8 within 1 point),
 *   - onnxruntime latency per sample, fp32 vs int8, batch 1 and batch 64, intra-op threads 1: the median of 9
 *     timed runs (each run: 200 single-sample session runs, or 10 batches of 64), after a warm-up; the variants'
 *     runs are interleaved.
 * --forms adds the other int8 graph forms of onnx.ts ("integer": ConvInteger too; "qdq": DequantizeLinear
 * weight-only) and full ±127 weights for the integer kernels ("8-bit"), which is how the defaults were chosen.
 * --save DIR writes the trained models as model directories DIR/mlp and DIR/cnn.
 */
import * as path from "node:path";
import { loadMnist } from "../core/data/mnist";
import { reshape, type Dataset } from "../core/data/dataset";
import type { ModelSpec } from "../core/engine/model-spec";
import { createModel } from "../core/engine/models";
import { isFlotillaError } from "../core/errors";
import { loadModelDir, saveModelDir } from "../core/export/model-dir";
import { exportOnnx, type ExportOptions } from "../core/export/onnx";
import { OnnxModel } from "../core/export/onnx-runtime";

interface Variant {
  readonly name: string;
  readonly opts: ExportOptions;
}

interface VariantResult {
  readonly variant: string;
  readonly bytes: number;
  readonly accuracy: number;
  /** argmax agreement with tfjs on the test set */
  readonly agreement: number;
  readonly maxAbsDiff: number;
  /** ms per sample, medians */
  readonly latencyB1: number;
  readonly latencyB64: number;
}

interface ModelResult {
  readonly model: string;
  readonly params: number;
  readonly trainMs: number;
  readonly tfjsAccuracy: number;
  readonly fp32: VariantResult;
  readonly int8: VariantResult;
  readonly sizeRatio: number;
  readonly others: VariantResult[];
}

const RUNS = 9;
const B1_SAMPLES = 200;
const B64_SAMPLES = 640;

function argmaxAgreement(a: Float32Array, b: Float32Array, width: number): { agree: number; maxAbs: number } {
  const n = a.length / width;
  let agree = 0;
  let maxAbs = 0;
  for (let i = 0; i < n; i++) {
    let ba = 0;
    let bb = 0;
    for (let k = 0; k < width; k++) {
      const o = i * width + k;
      if (a[o] > a[i * width + ba]) ba = k;
      if (b[o] > b[i * width + bb]) bb = k;
      maxAbs = Math.max(maxAbs, Math.abs(a[o] - b[o]));
    }
    if (ba === bb) agree++;
  }
  return { agree: agree / n, maxAbs };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** One timed run: ms per sample of `samples` samples in batches of `batch`. */
async function timedRun(m: OnnxModel, test: Dataset, batch: number, samples: number): Promise<number> {
  const x = test.x.subarray(0, samples * m.inputSize);
  const t0 = performance.now();
  await m.predict(x, samples, { batchSize: batch });
  return (performance.now() - t0) / samples;
}

/**
 * Exports and loads every variant, measures accuracy and agreement, then latency: after a warm-up run, RUNS
 * rounds that each time every variant once (interleaved, so background load on a shared machine hits all
 * variants alike); the median per variant is reported.
 */
async function measureAll(
  spec: ModelSpec,
  weights: Float32Array,
  variants: Variant[],
  test: Dataset,
  ref: Float32Array,
): Promise<VariantResult[]> {
  const loaded: { v: Variant; bytes: number; m: OnnxModel }[] = [];
  try {
    for (const v of variants) {
      const bytes = exportOnnx(spec, weights, v.opts);
      loaded.push({ v, bytes: bytes.byteLength, m: await OnnxModel.load(bytes, { threads: 1 }) });
    }
    const quality: { accuracy: number; agree: number; maxAbs: number }[] = [];
    for (const { m } of loaded) {
      const ev = await m.evaluate(test);
      quality.push({
        accuracy: ev.accuracy,
        ...argmaxAgreement(await m.predict(test.x, test.n), ref, spec.numClasses),
      });
    }
    const lat = async (batch: number, samples: number): Promise<number[]> => {
      const times: number[][] = loaded.map(() => []);
      for (const { m } of loaded) await timedRun(m, test, batch, samples);
      for (let r = 0; r < RUNS; r++) {
        for (const [i, { m }] of loaded.entries()) times[i].push(await timedRun(m, test, batch, samples));
      }
      return times.map(median);
    };
    const b1 = await lat(1, B1_SAMPLES);
    const b64 = await lat(64, B64_SAMPLES);
    return loaded.map(({ v, bytes }, i) => ({
      variant: v.name,
      bytes,
      accuracy: quality[i].accuracy,
      agreement: quality[i].agree,
      maxAbsDiff: quality[i].maxAbs,
      latencyB1: b1[i],
      latencyB64: b64[i],
    }));
  } finally {
    for (const { m } of loaded) await m.close();
  }
}

async function benchModel(
  label: string,
  spec: ModelSpec,
  source: { weights: Float32Array } | { train: Dataset; epochs: number },
  test: Dataset,
  forms: boolean,
  saveDir: string | undefined,
): Promise<ModelResult> {
  const model = await createModel(spec, 1);
  let trainMs = 0;
  try {
    if ("weights" in source) {
      model.setWeights(source.weights);
    } else {
      const t0 = performance.now();
      await model.train(source.train, { epochs: source.epochs, batchSize: 10, lr: 0.05, seed: 7 });
      trainMs = performance.now() - t0;
      if (saveDir) saveModelDir(path.join(saveDir, label), spec, model.getWeights(), { jobId: "bench-onnx" });
    }
    const weights = model.getWeights();
    const tfjsAccuracy = model.evaluate(test).accuracy;
    const ref = model.predict!(test.x, test.n);
    const variants: Variant[] = [
      { name: "fp32", opts: {} },
      { name: "int8", opts: { quantize: "int8" } },
    ];
    if (forms) {
      variants.push(
        { name: "int8 integer", opts: { quantize: "int8", int8Form: "integer" } },
        { name: "int8 qdq", opts: { quantize: "int8", int8Form: "qdq" } },
        { name: "int8 8-bit", opts: { quantize: "int8", reduceRange: false } },
      );
    }
    const [fp32, int8, ...others] = await measureAll(spec, weights, variants, test, ref);
    return {
      model: label,
      params: model.numParams,
      trainMs,
      tfjsAccuracy,
      fp32,
      int8,
      sizeRatio: fp32.bytes / int8.bytes,
      others,
    };
  } finally {
    model.dispose();
  }
}

function pct(x: number, digits = 2): string {
  return `${(x * 100).toFixed(digits)}%`;
}

function table(results: ModelResult[]): string {
  const rows = [
    "| model | variant | file bytes | size ratio | test accuracy | argmax agreement with tfjs | max abs prob diff | ms/sample b=1 | ms/sample b=64 |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const r of results) {
    rows.push(
      `| ${r.model} (${r.params.toLocaleString("en-US")} params) | tfjs wasm | | | ${pct(r.tfjsAccuracy)} | | | | |`,
    );
    for (const v of [r.fp32, r.int8, ...r.others]) {
      rows.push(
        `| ${r.model} | ORT ${v.variant} | ${v.bytes.toLocaleString("en-US")} | ${(r.fp32.bytes / v.bytes).toFixed(2)}x | ` +
          `${pct(v.accuracy)} | ${pct(v.agreement)} | ${v.maxAbsDiff.toExponential(1)} | ` +
          `${v.latencyB1.toFixed(4)} | ${v.latencyB64.toFixed(4)} |`,
      );
    }
  }
  const checks = results.map(
    (r) =>
      `${r.model}: size ${r.sizeRatio.toFixed(2)}x (target ≥ 3.5x), fp32 agreement ${pct(r.fp32.agreement)} ` +
      `(target ≥ 99.9%), int8 accuracy ${((r.int8.accuracy - r.tfjsAccuracy) * 100).toFixed(2)} points vs tfjs ` +
      `(target within 1), int8 speed-up b=1 ${(r.fp32.latencyB1 / r.int8.latencyB1).toFixed(2)}x, ` +
      `b=64 ${(r.fp32.latencyB64 / r.int8.latencyB64).toFixed(2)}x`,
  );
  return [...rows, "", ...checks].join("\n");
}

async function main(argv: string[]): Promise<void> {
  const json = argv.includes("--json");
  const forms = argv.includes("--forms");
  const arg = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    if (i < 0) return undefined;
    const v = argv[i + 1];
    if (v === undefined || v.startsWith("--")) throw new Error(`${name} needs a value`);
    return v;
  };
  const modelDir = arg("--model");
  const saveDir = arg("--save");
  const { train, test } = loadMnist();
  const image = (ds: Dataset) => reshape(ds, [28, 28, 1]);
  const results: ModelResult[] = [];
  const log = (s: string) => console.error(`bench-onnx: ${s}`);
  if (modelDir) {
    const dir = loadModelDir(modelDir);
    const size = dir.spec.inputShape.reduce((a, b) => a * b, 1);
    if (size !== 784 || dir.spec.numClasses !== 10 || dir.spec.kind === "autoencoder") {
      throw new Error(`--model ${modelDir}: needs an MNIST classifier (784 inputs, 10 classes)`);
    }
    const ds = dir.spec.inputShape.length === 3 ? image(test) : test;
    log(`${dir.spec.kind} from ${modelDir}`);
    results.push(await benchModel(dir.spec.kind, dir.spec, { weights: dir.weights }, ds, forms, undefined));
  } else {
    const mlp: ModelSpec = { kind: "mlp", inputShape: [784], numClasses: 10, hidden: [200, 200] };
    const cnn: ModelSpec = {
      kind: "cnn",
      inputShape: [28, 28, 1],
      numClasses: 10,
      filters: [32, 64],
      kernelSize: 5,
      dense: 512,
    };
    log("training mlp (5 epochs) ...");
    results.push(await benchModel("mlp", mlp, { train, epochs: 5 }, test, forms, saveDir));
    log("training cnn (1 epoch) ...");
    results.push(
      await benchModel("cnn", cnn, { train: image(train), epochs: 1 }, image(test), forms, saveDir),
    );
  }
  const report = {
    date: new Date().toISOString(),
    onnxruntimeThreads: 1,
    testSamples: test.n,
    results,
  };
  if (json) console.log(JSON.stringify(report, null, 2));
  else console.log(table(results));
}

main(process.argv.slice(2)).catch((e: unknown) => {
  console.error(
    `bench-onnx: ${isFlotillaError(e) ? `${e.code}: ` : ""}${e instanceof Error ? e.message : String(e)}`,
  );
  process.exit(1);
});
