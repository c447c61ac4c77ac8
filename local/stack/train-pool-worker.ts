/** Worker-thread side of TrainPool: runs trainer jobs on this thread's wasm backend. */
import { parentPort, workerData } from "node:worker_threads";
import { initBackend } from "../../core/engine/backend";
import { InProcessTrainExecutor, type TrainJob } from "../../modules/trainer/src/executor";

type In = { kind: "run"; id: number; job: TrainJob } | { kind: "abort"; id: number };

const executor = new InProcessTrainExecutor();
const aborts = new Map<number, AbortController>();
let queue: Promise<void> = Promise.resolve();
// The pool divides the machine's cores among its workers (TrainPool's `threads`).
const ready = initBackend({ threads: (workerData as { threads?: number } | null)?.threads });

parentPort?.on("message", (m: In) => {
  if (m.kind === "abort") {
    aborts.get(m.id)?.abort();
    return;
  }
  const ac = new AbortController();
  aborts.set(m.id, ac);
  queue = queue.then(async () => {
    try {
      await ready;
      let last = 0;
      const out = await executor.run(m.job, ac.signal, (done, total) => {
        const now = Date.now();
        if (now - last >= 250 || done === total) {
          last = now;
          parentPort?.postMessage({ kind: "progress", id: m.id, done, total });
        }
      });
      parentPort?.postMessage({ kind: "done", id: m.id, out }, [out.delta.buffer as ArrayBuffer]);
    } catch (e) {
      const code = (e as { code?: string }).code ?? "E_DEVICE_INTERNAL";
      parentPort?.postMessage({
        kind: "error",
        id: m.id,
        code,
        message: e instanceof Error ? e.message : String(e),
      });
    } finally {
      aborts.delete(m.id);
    }
  });
});
