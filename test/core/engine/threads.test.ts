import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import * as os from "node:os";
import * as fs from "node:fs";
import * as path from "node:path";
import { Worker } from "node:worker_threads";
import { isFlotillaError } from "../../../core/errors";
import { backendThreads, initBackend } from "../../../core/engine/backend";
import {
  DEFAULT_MAX_THREADS,
  MAX_THREADS,
  defaultThreads,
  parseThreads,
  sharedThreads,
} from "../../../core/engine/threads";
import { benchTrain } from "../../../core/engine/bench";
import { findThreadpoolSlot, THREADED_WASM } from "../../../core/engine/wasm-threads";
import { mainThreads, simThreads } from "../../../local/sim/config";
import { loadTrainerConfig } from "../../../modules/trainer/src/config";
import { loadProfilerConfig } from "../../../modules/profiler/src/config";
import { trainFixture, type ThreadsJob, type ThreadsReply } from "./threads-fixture";

const CS = { FLOTILLA_CONNECTION_STRING: "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5" };

function inWorker(job: ThreadsJob): Promise<ThreadsReply> {
  return new Promise((resolve, reject) => {
    const w = new Worker(path.join(__dirname, "threads-worker.js"), { workerData: job });
    w.once("message", (m: ThreadsReply | { error: string }) => {
      void w.terminate();
      if ("error" in m) reject(new Error(m.error));
      else resolve(m);
    });
    w.once("error", reject);
  });
}

/** Largest |a − b| relative to the largest |a|. */
function relDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  return d / m;
}

test("parseThreads: 1..MAX_THREADS, 'auto' and unset are the default, anything else is E_CONFIG_THREADS", () => {
  assert.equal(parseThreads(undefined), undefined);
  assert.equal(parseThreads("auto"), undefined);
  assert.equal(parseThreads(""), undefined);
  assert.equal(parseThreads("2"), 2);
  assert.equal(parseThreads(MAX_THREADS), MAX_THREADS);
  for (const bad of ["0", "-1", "1.5", "many", String(MAX_THREADS + 1), 0]) {
    assert.throws(
      () => parseThreads(bad, "--threads"),
      (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_THREADS" && /--threads/.test(e.message),
    );
  }
});

test("defaultThreads and sharedThreads: FLOTILLA_THREADS wins, else the cores (divided among trainers), capped", () => {
  const cores = os.availableParallelism();
  assert.equal(defaultThreads({ FLOTILLA_THREADS: "3" }), 3);
  assert.equal(defaultThreads({}), Math.max(1, Math.min(cores, DEFAULT_MAX_THREADS)));
  assert.equal(sharedThreads(2, {}), Math.max(1, Math.min(DEFAULT_MAX_THREADS, Math.floor(cores / 2))));
  assert.equal(sharedThreads(1000, {}), 1);
  assert.equal(sharedThreads(4, { FLOTILLA_THREADS: "2" }), 2);
  assert.throws(() => defaultThreads({ FLOTILLA_THREADS: "x" }), /FLOTILLA_THREADS/);
});

test("the simulator divides the cores among its workers; --threads overrides; the main thread evaluates on 1", () => {
  const cores = os.availableParallelism();
  assert.equal(
    simThreads({ workers: 2 }, {}),
    Math.max(1, Math.min(DEFAULT_MAX_THREADS, Math.floor(cores / 2))),
  );
  assert.equal(simThreads({ workers: 0 }, {}), Math.max(1, Math.min(DEFAULT_MAX_THREADS, cores)));
  assert.equal(simThreads({ workers: 2, threads: 3 }, {}), 3);
  assert.equal(mainThreads({ workers: 2, threads: 3 }, {}), 1);
  assert.equal(mainThreads({ workers: 0, threads: 3 }, {}), 3);
});

test("the trainer and profiler modules read FLOTILLA_THREADS (auto = unset), invalid values are named", () => {
  assert.equal(loadTrainerConfig({ ...CS }).threads, undefined);
  assert.equal(loadTrainerConfig({ ...CS, FLOTILLA_THREADS: "auto" }).threads, undefined);
  assert.equal(loadTrainerConfig({ ...CS, FLOTILLA_THREADS: "2" }).threads, 2);
  assert.equal(loadProfilerConfig({ ...CS, FLOTILLA_THREADS: "4" }).threads, 4);
  assert.throws(
    () => loadTrainerConfig({ ...CS, FLOTILLA_THREADS: "0" }),
    (e: unknown) =>
      isFlotillaError(e) && e.code === "E_CONFIG_INVALID" && /FLOTILLA_THREADS=0/.test(e.message),
  );
});

test("threaded training (2 threads, tfjs's threaded build in a worker thread) gives the single-threaded weights", async () => {
  await initBackend({ threads: 1 });
  assert.equal(backendThreads(), 1);
  for (const model of ["mlp", "cnn"] as const) {
    const job: ThreadsJob = { threads: 2, model, steps: 3 };
    const [threaded, single] = await Promise.all([inWorker(job), trainFixture({ ...job, threads: 1 })]);
    assert.equal(threaded.threads, 2, "the worker's backend runs 2 threads");
    assert.equal(threaded.shared, true, "the threaded build's memory is shared");
    assert.equal(threaded.switchable, true, "small kernels can be kept off the pool (its global was found)");
    const d = relDiff(single, threaded.weights);
    assert.ok(d < 1e-5, `${model}: threaded weights differ by ${d} (relative)`);
    // The heap views survive a memory growth (the shared memory's views are refreshed).
    assert.equal(threaded.grew, true, "the 192 MB tensor grew the wasm memory");
    assert.equal(threaded.viewOk, true, "a tensor written before the growth reads back after it");
    assert.deepEqual(threaded.readBack, [1, 2, 3, 4]);
    assert.equal(threaded.sum, 1000 + (999 * 1000 * 0.5) / 2);
  }
});

test("benchTrain reports the thread count it measured with", async () => {
  await initBackend({ threads: 1 });
  const r = await benchTrain({ model: "mlp", batchSize: 10, seconds: 0.2 });
  assert.equal(r.threads, 1);
});

test("findThreadpoolSlot reads the pool global's address from get_threads_count; anything else is null", () => {
  const dist = path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm"));
  for (const file of [THREADED_WASM, "tfjs-backend-wasm-simd.wasm"]) {
    const slot = findThreadpoolSlot(fs.readFileSync(path.join(dist, file)));
    assert.ok(slot !== null && slot > 0 && slot % 4 === 0, `${file}: ${slot}`);
  }
  assert.equal(findThreadpoolSlot(new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0])), null);
});
