import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { forEachBatch } from "../../../core/engine/batches";

/** The shared training loop's stop signal (the trainer's training-time cap): an early end, not an error. */
test("forEachBatch ends after the batch during which the stop signal fired, resolving with what was done", async () => {
  const stop = new AbortController();
  const batches: [number, number][] = [];
  const r = await forEachBatch(
    10,
    {
      epochs: 3,
      batchSize: 4,
      lr: 0.1,
      seed: 1,
      stopSignal: stop.signal,
      onProgress: (done) => {
        if (done >= 12) stop.abort(); // fires during the 4th batch (the first of epoch 2)
      },
    },
    (_order, from, to) => batches.push([from, to]),
  );
  assert.deepEqual(r, { steps: 4, samples: 14 });
  assert.deepEqual(batches, [
    [0, 4],
    [4, 8],
    [8, 10],
    [0, 4],
  ]);
  // Fired before training: one batch still runs (an update of no steps would be empty).
  const early = new AbortController();
  early.abort();
  const one = await forEachBatch(
    10,
    { epochs: 1, batchSize: 4, lr: 0.1, seed: 1, stopSignal: early.signal },
    () => undefined,
  );
  assert.deepEqual(one, { steps: 1, samples: 4 });
  // The abort signal still rejects.
  await assert.rejects(
    forEachBatch(
      10,
      { epochs: 1, batchSize: 4, lr: 0.1, seed: 1, abortSignal: early.signal },
      () => undefined,
    ),
    { code: "E_ABORTED" },
  );
});
