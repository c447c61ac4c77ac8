/**
 * The local training loop both training paths share (models.ts fast path, generic.ts autograd path): each epoch
 * shuffles the sample order with the round's seed, then runs one step per mini-batch, checking the abort signal
 * before every batch, reporting progress after it (then ending early, without an error, once the stop signal fired:
 * the trainer's training-time cap), and yielding to the event loop at least every YIELD_MS (abort
 * signals, timers and transports keep running during training).
 */
import { FlotillaError } from "../errors";
import { Rng } from "../data/rng";
import type { TrainOptions } from "./types";

/** Yield to the event loop at least this often during training. */
export const YIELD_MS = 50;

/**
 * Runs `step(order, from, to, lastEpoch, stepNumber)` for every mini-batch of `opts.epochs` epochs over n samples
 * (`order[from..to)` are the batch's sample indices; stepNumber counts from 1). Resolves with the steps and samples
 * done; rejects with E_ABORTED when the abort signal fires; resolves early (after the batch in progress) when the
 * stop signal fires.
 */
export async function forEachBatch(
  n: number,
  opts: TrainOptions,
  step: (order: Int32Array, from: number, to: number, lastEpoch: boolean, stepNumber: number) => void,
): Promise<{ steps: number; samples: number }> {
  const rng = new Rng(opts.seed);
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  const total = n * opts.epochs;
  let steps = 0;
  let done = 0;
  let lastYield = performance.now();
  epochs: for (let epoch = 0; epoch < opts.epochs; epoch++) {
    rng.shuffle(order);
    const lastEpoch = epoch === opts.epochs - 1;
    for (let from = 0; from < n; from += opts.batchSize) {
      if (opts.abortSignal?.aborted) throw new FlotillaError("E_ABORTED", "training was aborted");
      const to = Math.min(from + opts.batchSize, n);
      step(order, from, to, lastEpoch, ++steps);
      done += to - from;
      opts.onProgress?.(done, total);
      if (opts.stopSignal?.aborted) break epochs;
      if (performance.now() - lastYield > YIELD_MS) {
        await new Promise((r) => setImmediate(r));
        lastYield = performance.now();
      }
    }
  }
  return { steps, samples: done };
}
