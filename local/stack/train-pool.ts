import * as path from "node:path";
import { Worker } from "node:worker_threads";
import { FlotillaError } from "../../core/errors";
import { sharedThreads } from "../../core/engine/threads";
import type { TrainExecutor, TrainJob, TrainOutcome } from "../../modules/trainer/src/executor";

interface Pending {
  resolve(o: TrainOutcome): void;
  reject(e: Error): void;
  onProgress(done: number, total: number): void;
  worker: number;
}

type Out =
  | { kind: "progress"; id: number; done: number; total: number }
  | { kind: "done"; id: number; out: TrainOutcome }
  | { kind: "error"; id: number; code: string; message: string };

/**
 * A TrainExecutor shared by every simulated trainer module of the local fleet: training runs in worker threads
 * (several devices train at once, each worker's backend on its share of the cores: docs/threads.md). Each job
 * goes to the worker with the fewest jobs queued.
 */
export class TrainPool implements TrainExecutor {
  private readonly workers: Worker[];
  private readonly load: number[];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private readonly spans = new Map<string, { start: number; end: number }>();

  /** `threads`: each worker's backend threads (default: the cores divided among the workers, sharedThreads). */
  constructor(size: number, threads = sharedThreads(Math.max(1, size))) {
    const script = path.join(__dirname, "train-pool-worker.js");
    this.workers = Array.from(
      { length: Math.max(1, size) },
      () => new Worker(script, { workerData: { threads } }),
    );
    this.load = this.workers.map(() => 0);
    this.workers.forEach((w, i) => {
      w.on("message", (m: Out) => this.onMessage(i, m));
      w.on("error", (e) => this.failWorker(i, e.message));
      w.on("exit", (code) => this.failWorker(i, `exited with code ${code}`));
    });
  }

  run(job: TrainJob, signal: AbortSignal, onProgress: (d: number, t: number) => void): Promise<TrainOutcome> {
    if (signal.aborted) return Promise.reject(new FlotillaError("E_ABORTED", "training was aborted"));
    let best = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i] < this.load[best]) best = i;
    const id = this.nextId++;
    this.load[best]++;
    const key = `${job.jobId}/${job.round}`;
    const span = this.spans.get(key) ?? { start: performance.now(), end: 0 };
    this.spans.set(key, span);
    return new Promise<TrainOutcome>((resolve, reject) => {
      const done = () => (span.end = Math.max(span.end, performance.now()));
      this.pending.set(id, {
        resolve: (o) => (done(), resolve(o)),
        reject: (e) => (done(), reject(e)),
        onProgress,
        worker: best,
      });
      signal.addEventListener("abort", () => this.workers[best].postMessage({ kind: "abort", id }), {
        once: true,
      });
      const weights = job.weights.slice();
      this.workers[best].postMessage({ kind: "run", id, job: { ...job, weights } }, [weights.buffer]);
    });
  }

  private onMessage(_worker: number, m: Out): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.kind === "progress") return p.onProgress(m.done, m.total);
    this.pending.delete(m.id);
    this.load[p.worker]--;
    if (m.kind === "done") p.resolve(m.out);
    else p.reject(new FlotillaError(m.code, m.message));
  }

  private failWorker(worker: number, why: string): void {
    for (const [id, p] of this.pending) {
      if (p.worker !== worker) continue;
      this.pending.delete(id);
      p.reject(new FlotillaError("E_SIM_WORKER", `training worker ${worker} ${why}`));
    }
  }

  /** Wall time from the first training job of a round starting to its last one ending (ms), if any ran. */
  trainingSpanMs(jobId: string, round: number): number | undefined {
    const s = this.spans.get(`${jobId}/${round}`);
    return s && s.end > 0 ? s.end - s.start : undefined;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
