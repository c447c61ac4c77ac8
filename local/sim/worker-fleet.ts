import * as path from "node:path";
import { Worker } from "node:worker_threads";
import { FlotillaError, fail } from "../../core/errors";
import { encodeMessage } from "../../core/protocol/messages";
import type { DeviceTransport, ServerTransport, TransportStats } from "../../core/protocol/transport";
import { MemoryTransport } from "../../core/protocol/memory-transport";
import type { ClientInfo } from "../../core/strategies/strategy";
import { initBackend } from "../../core/engine/backend";
import { createModel } from "../../core/engine/models";
import { DeviceRuntime, type DeviceProgress } from "../../core/round/device";
import type { KeyProvider } from "../../core/secagg/identity";
import { simThreads, type SimConfig } from "./config";
import type { ModelSpec } from "../../core/engine/model-spec";
import { deviceName, type FleetData } from "./data";

export type ToWorker = { kind: "train"; deviceId: string; frame: Uint8Array; state?: Uint8Array };

/** What each worker is started with: the job's config, and where the devices' identity keys are (secure aggregation). */
export type FleetWorkerData = SimConfig & { keyDir?: string; modelSpec?: ModelSpec };
export type FromWorker =
  | { kind: "ready"; devices: { deviceId: string; numSamples: number }[] }
  | { kind: "reply"; deviceId: string; frame: Uint8Array; state?: Uint8Array }
  | { kind: "progress"; deviceId: string; done: number; total: number }
  | { kind: "error"; message: string; code?: string };

/**
 * The simulated fleet as a transport: devices live in worker threads (several devices train at once; each worker's
 * backend gets its share of the cores, config.ts simThreads, docs/threads.md). Frames are posted between threads (transferred, never shared), and each request
 * goes to the worker with the fewest requests in flight. Every worker can host every device: the data are rebuilt
 * deterministically in each worker.
 */
export class WorkerFleet implements ServerTransport {
  readonly stats: TransportStats = { uplinkBytes: 0, downlinkBytes: 0 };
  private readonly handlers = new Set<(frame: Uint8Array) => void>();
  private readonly inFlight: number[];
  private devices: ClientInfo[] = [];
  /** Each device's carried state (error-feedback residuals): any worker can host any device. */
  private readonly deviceState = new Map<string, Uint8Array>();
  /**
   * The worker that trained a device for a secure-aggregation round: its protocol state (keys, shares, the
   * update) lives there, so the round's later steps go to the same worker.
   */
  private readonly home = new Map<string, number>();
  private exited = false;
  /** Requests each worker holds (device → the request's job and round), to answer for them if the worker dies. */
  private readonly pending: Map<string, { jobId: string; round: number }>[];
  /** Workers that died after start (an uncaught error or an exit): no request goes to them again. */
  private readonly dead = new Set<number>();

  private constructor(
    private readonly workers: Worker[],
    private readonly onProgress?: DeviceProgress,
  ) {
    this.inFlight = workers.map(() => 0);
    this.pending = workers.map(() => new Map());
  }

  static async start(
    config: SimConfig,
    onProgress?: DeviceProgress,
    opts: { keyDir?: string; modelSpec?: ModelSpec } = {},
  ): Promise<WorkerFleet> {
    const script = path.join(__dirname, "fleet-worker.js");
    const workerData: FleetWorkerData = { ...config, keyDir: opts.keyDir, modelSpec: opts.modelSpec };
    const workers = Array.from({ length: config.workers }, () => new Worker(script, { workerData }));
    const fleet = new WorkerFleet(workers, onProgress);
    try {
      const ready = await Promise.all(workers.map((w, i) => fleet.wire(w, i)));
      fleet.devices = ready[0];
    } catch (e) {
      await fleet.close();
      throw e;
    }
    return fleet;
  }

  private wire(w: Worker, index: number): Promise<ClientInfo[]> {
    let started = false;
    return new Promise((resolve, reject) => {
      w.on("message", (m: FromWorker) => {
        switch (m.kind) {
          case "ready":
            started = true;
            resolve(m.devices);
            break;
          case "error":
            reject(new FlotillaError(m.code ?? "E_SIM_WORKER", m.message));
            break;
          case "progress":
            this.onProgress?.(m.deviceId, m.done, m.total);
            break;
          case "reply":
            this.inFlight[index]--;
            this.pending[index].delete(m.deviceId);
            if (m.state) this.deviceState.set(m.deviceId, m.state);
            else this.deviceState.delete(m.deviceId);
            this.stats.uplinkBytes += m.frame.byteLength;
            this.handlers.forEach((h) => h(m.frame));
            break;
        }
      });
      w.on("error", (e) => {
        if (!started) reject(new FlotillaError("E_SIM_WORKER", `simulation worker failed: ${e.message}`));
        else this.lose(index, `simulation worker ${index} failed: ${e.message}`);
      });
      w.on("exit", (code) => {
        if (!started) reject(new FlotillaError("E_SIM_WORKER", `simulation worker exited with code ${code}`));
        else if (!this.exited) this.lose(index, `simulation worker ${index} exited with code ${code}`);
      });
    });
  }

  /**
   * A worker died mid-job: every request it held is answered with an E_SIM_WORKER failure frame (so the round
   * closes now instead of at its deadline), later requests go to the other workers, and the reason is printed once.
   */
  private lose(index: number, reason: string): void {
    if (this.dead.has(index)) return;
    this.dead.add(index);
    process.stderr.write(`flotilla: E_SIM_WORKER: ${reason}\n`);
    for (const [deviceId, req] of this.pending[index]) {
      const frame = encodeMessage({ type: "failure", ...req, deviceId, code: "E_SIM_WORKER", reason });
      this.handlers.forEach((h) => h(frame));
    }
    this.pending[index].clear();
    this.inFlight[index] = 0;
    for (const [id, w] of this.home) if (w === index) this.home.delete(id);
  }

  async listDevices(): Promise<ClientInfo[]> {
    return this.devices;
  }

  async send(deviceId: string, frame: Uint8Array): Promise<void> {
    if (!this.devices.some((d) => d.deviceId === deviceId)) {
      fail("E_TRANSPORT_UNKNOWN_DEVICE", `unknown device '${deviceId}'`);
    }
    let best = -1;
    for (let i = 0; i < this.inFlight.length; i++)
      if (!this.dead.has(i) && (best < 0 || this.inFlight[i] < this.inFlight[best])) best = i;
    if (best < 0) fail("E_SIM_WORKER", "every simulation worker has died");
    const head = peekHeader(frame);
    const kind = head?.type === "train" && head.secagg ? "train-secagg" : head?.type;
    if (kind === "secagg") {
      const home = this.home.get(deviceId);
      // The device's protocol state died with its worker: it is a dropout of this round.
      if (home === undefined)
        fail("E_SIM_WORKER", `the worker holding '${deviceId}''s secure-aggregation state is gone`);
      best = home;
    } else if (kind === "train-secagg") this.home.set(deviceId, best);
    this.inFlight[best]++;
    this.pending[best].set(deviceId, { jobId: String(head?.jobId ?? ""), round: Number(head?.round ?? 0) });
    this.stats.downlinkBytes += frame.byteLength;
    const copy = frame.slice();
    const msg: ToWorker = { kind: "train", deviceId, frame: copy, state: this.deviceState.get(deviceId) };
    this.workers[best].postMessage(msg, [copy.buffer as ArrayBuffer]);
  }

  onMessage(handler: (frame: Uint8Array) => void): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  /** Fault injection for tests: stops worker `index` as if it had crashed. */
  async killWorker(index: number): Promise<void> {
    await this.workers[index]?.terminate();
  }

  async close(): Promise<void> {
    this.exited = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** The frame's JSON header, without decoding its payload (undefined if unreadable). */
function peekHeader(
  frame: Uint8Array,
): { type?: string; secagg?: boolean; jobId?: string; round?: number } | undefined {
  try {
    const n = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(4, true);
    return JSON.parse(Buffer.from(frame.buffer, frame.byteOffset + 8, n).toString("utf8")) as {
      type?: string;
      secagg?: boolean;
      jobId?: string;
      round?: number;
    };
  } catch {
    return undefined;
  }
}

/**
 * The same fleet in the main thread over the MemoryTransport (used with --workers 0 and in tests): one model,
 * devices train one after another.
 */
export async function startInProcessFleet(
  config: SimConfig,
  data: FleetData,
  onProgress?: DeviceProgress,
  keys?: KeyProvider,
): Promise<MemoryTransport> {
  await initBackend({ threads: simThreads(config) });
  const transport = new MemoryTransport();
  const model = await createModel(data.spec, config.seed, { path: config.engine ?? "auto" });
  let queue: Promise<void> = Promise.resolve();
  data.devices.forEach((d, i) => {
    const deviceId = deviceName(i, config.devices);
    const rt = new DeviceRuntime(deviceId, d, model, onProgress, keys?.signer(deviceId));
    const link: DeviceTransport = transport.connect({ deviceId, numSamples: d.n });
    link.onMessage((frame) => {
      queue = queue.then(async () => {
        const reply = await rt.handle(frame);
        await link.send(reply).catch(() => undefined);
      });
    });
  });
  return transport;
}
