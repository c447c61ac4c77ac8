/**
 * `npm run bench`: the speed figures of docs/benchmarks.md, measured in one process so ratios are comparable.
 * Writes bench-out/speed.json and prints a Markdown table. Learning (rounds-to-accuracy) runs are separate:
 * `node dist/scripts/bench-learning.js` (long).
 */
import * as fs from "node:fs";
import { benchTrain } from "../core/engine/bench";
import { findTorchPython, runPytorchReference } from "../core/engine/bench-reference";
import { benchAggregate } from "../core/tensor/bench-aggregate";
import { benchCodecs } from "../core/compress";

/** Samples/s of PyTorch 1.13 CPU, 2 threads, B=10 recorded on this machine class: used when torch is not installed. */
const PYTORCH_RECORDED = { mlp: 4171, cnn: 368 } as const;

/** A Python with torch, or undefined (the table then quotes the recorded figures). */
function torchPython(): string | undefined {
  try {
    return findTorchPython();
  } catch (e) {
    console.error(`${(e as Error).message}: quoting the recorded PyTorch figures`);
    return undefined;
  }
}

async function main(): Promise<void> {
  const rows: string[] = ["| figure | measured | reference | target |", "|---|---|---|---|"];
  const out: Record<string, unknown> = { date: new Date().toISOString() };
  const python = torchPython();
  for (const model of ["mlp", "cnn"] as const) {
    const seconds = model === "cnn" ? 20 : 10;
    const r = await benchTrain({ model, batchSize: 10, seconds });
    out[`train_${model}`] = r;
    // PyTorch right after Flotilla, on the same machine state (scripts/bench-pytorch.py), when installed.
    const live = python
      ? runPytorchReference(python, { model, batchSize: 10, threads: 2, seconds })
      : undefined;
    if (live) out[`pytorch_${model}`] = live;
    const ref = live?.samplesPerSecond ?? PYTORCH_RECORDED[model];
    rows.push(
      `| train ${model} B=10 (samples/s, ${r.threads ?? 1} thread(s)) | ${r.samplesPerSecond.toFixed(0)} | PyTorch ` +
        `${ref.toFixed(0)} ${live ? "(2 threads, same run)" : "(recorded)"}: ` +
        `${(r.samplesPerSecond / ref).toFixed(2)}× | ≥ 1.0× (cnn), ahead (mlp) |`,
    );
    console.error(JSON.stringify(r));
  }
  const a = benchAggregate({ updates: 100, params: 1_000_000, repeats: 7 });
  out.aggregate = a;
  console.error(JSON.stringify(a));
  rows.push(
    `| FedAvg 100 x 1M float32 (GB/s) | ${a.gbPerSecond.toFixed(2)} | numpy 16.8; scalar JS ${
      (a as { referenceGbPerSecond?: number }).referenceGbPerSecond?.toFixed(2) ?? "1.75"
    } (same run) | ≥ 8 |`,
  );
  const codecs = benchCodecs({ repeats: 7 });
  out.codecs = codecs;
  for (const c of codecs) {
    console.error(JSON.stringify(c));
    rows.push(
      `| codec ${c.spec}, 1.66M values: ratio / encode / decode / decode+sum (GB/s) | ` +
        `${c.ratio.toFixed(1)}× / ${c.encodeGBps.toFixed(2)} / ${c.decodeGBps.toFixed(2)} / ${c.accumulateGBps.toFixed(2)} | ` +
        `plain float32 add ${c.addReferenceGBps.toFixed(2)} (same run) | — |`,
    );
  }
  fs.mkdirSync("bench-out", { recursive: true });
  fs.writeFileSync("bench-out/speed.json", JSON.stringify(out, null, 2));
  console.log(rows.join("\n"));
}

main().catch((e) => {
  console.error(`bench: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
