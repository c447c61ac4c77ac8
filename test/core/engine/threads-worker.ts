/**
 * Worker-thread side of threads.test.ts: trains a model on a backend started with `threads` (its own isolate, so
 * its own tfjs backend) and reports the weights, the thread count, and what a memory growth left of the heap views.
 */
import { parentPort, workerData } from "node:worker_threads";
import * as tf from "@tensorflow/tfjs";
import { backendThreads, initBackend, poolSwitchable, wasmBackend } from "../../../core/engine/backend";
import { trainFixture, type ThreadsJob, type ThreadsReply } from "./threads-fixture";
import { heapTensor, heapView } from "../../../core/engine/wasm-tensors";

/** The module's exported byte view of the wasm memory. */
function heapU8(): Uint8Array {
  return (wasmBackend().wasm as unknown as { HEAPU8: Uint8Array }).HEAPU8;
}

async function main(): Promise<void> {
  const job = workerData as ThreadsJob;
  await initBackend({ threads: job.threads });
  const weights = await trainFixture(job);
  // Memory growth: a tensor written before a large allocation must still read back through fresh views.
  const before = heapTensor<tf.Rank.R1>([1000], (v) => v.forEach((_, i) => (v[i] = i * 0.5)));
  const heapBefore = heapU8().byteLength;
  const big = tf.zeros([48 * 1024 * 1024]); // 192 MB: more than the heap holds after training
  const heapAfter = heapU8().byteLength;
  const view = heapView(before);
  let viewOk = view.length === 1000;
  for (let i = 0; i < 1000 && viewOk; i++) viewOk = view[i] === i * 0.5;
  const after = heapTensor<tf.Rank.R1>([4], (v) => v.set([1, 2, 3, 4]));
  const readBack = Array.from(after.dataSync());
  const sum = (await tf.sum(tf.add(before, 1)).data())[0];
  tf.dispose([before, big, after]);
  const reply: ThreadsReply = {
    weights,
    threads: backendThreads(),
    switchable: poolSwitchable(),
    shared: heapU8().buffer instanceof SharedArrayBuffer,
    grew: heapAfter > heapBefore,
    viewOk,
    readBack,
    sum,
  };
  parentPort?.postMessage(reply);
}

main().catch((e: unknown) => parentPort?.postMessage({ error: e instanceof Error ? e.stack : String(e) }));
