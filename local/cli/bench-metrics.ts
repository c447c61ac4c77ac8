/**
 * `flotilla bench metrics`: what the modules' Prometheus metrics cost a training device (issue 15's target: the
 * metrics endpoints add at most 5 % CPU to a training device; docs/metrics.md "Cost").
 *
 * The workload is the trainer module's own local training (modules/trainer/src/executor.ts InProcessTrainExecutor:
 * DeviceRuntime on the wasm backend, one round after another on a device's data of the default simulation). Arms,
 * each run for `seconds`, in interleaved repeats (the order rotates so no arm always runs first or last):
 *
 * - `off`: training alone — no registries, no endpoints;
 * - `scrape <S> s`: the four modules' registries (trainer, quantizer, update-queue over a real outbox, profiler, and
 *   the module host's link metrics in each) updated as the modules update them each round, served on 127.0.0.1 as
 *   each module serves them, and scraped every S seconds by a separate process (as Prometheus or the
 *   metrics-collector module would be).
 *
 * The figure is CPU seconds of this process (process.cpuUsage: user + system, every thread) per trained sample;
 * medians per arm, and each metrics arm's overhead over `off` in percent. The scraper's own CPU is reported apart.
 */
import { fork } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { initBackend, backendThreads } from "../../core/engine/backend";
import { createModel, modelLayout } from "../../core/engine/models";
import { deviceName, loadFleetData } from "../sim/data";
import { DEFAULT_CONFIG } from "../sim/config";
import {
  ModuleMetrics,
  moduleMetricLabels,
  serveMetrics,
  type MetricsServer,
} from "../../modules/shared/metrics";
import { linkMetrics } from "../../modules/shared/link-metrics";
import { InProcessTrainExecutor, type TrainJob } from "../../modules/trainer/src/executor";
import { trainerMetrics } from "../../modules/trainer/src/metrics";
import { quantizerMetrics } from "../../modules/quantizer/src/metrics";
import { updateQueueMetrics } from "../../modules/update-queue/src/metrics";
import { Outbox } from "../../modules/update-queue/src/outbox";
import { profilerMetrics } from "../../modules/profiler/src/metrics";

export interface BenchMetricsOptions {
  /** Seconds of training per arm and repeat (default 30). */
  readonly seconds?: number;
  /** Interleaved repeats of every arm (default 3). */
  readonly repeats?: number;
  /** Scrape intervals to measure, seconds (default [15, 1]: Prometheus' default, and a worst case). */
  readonly intervals?: readonly number[];
  /** Training threads of the wasm backend (default 1: steadier figures on a shared machine). */
  readonly threads?: number;
  /** Samples of the device's local data (default 200, the simulation's). */
  readonly samples?: number;
  readonly onProgress?: (line: string) => void;
}

export interface ArmRun {
  readonly arm: string;
  readonly cpuSeconds: number;
  readonly samples: number;
  readonly rounds: number;
  readonly cpuSecondsPerSample: number;
  readonly scrapes: number;
  readonly scrapeBytes: number;
  readonly scraperCpuSeconds: number;
}

export interface BenchMetricsResult {
  readonly seconds: number;
  readonly repeats: number;
  readonly threads: number;
  readonly model: string;
  readonly samplesPerRound: number;
  readonly runs: readonly ArmRun[];
  /** Per arm: median CPU seconds per trained sample, and the overhead over `off` (percent). */
  readonly arms: readonly {
    readonly arm: string;
    readonly medianCpuSecondsPerSample: number;
    readonly overheadPercent: number;
    readonly scrapesPerRun: number;
    readonly bytesPerScrape: number;
  }[];
  readonly loadAverage: readonly number[];
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

interface Fleet {
  readonly metrics: ModuleMetrics[];
  /** What the modules update after one round (as trainer.ts, quantizer.ts, the host do). */
  round(samples: number, trainSeconds: number, loss: number, accuracy: number, frameBytes: number): void;
  readonly servers: MetricsServer[];
  close(): Promise<void>;
}

/** The four modules' registries of one device, served on 127.0.0.1 as each module serves its own. */
async function meteredDevice(dir: string, modelBytes: number): Promise<Fleet> {
  const make = (module: string): ModuleMetrics =>
    new ModuleMetrics({
      module,
      labels: moduleMetricLabels(module, {}, { iothub: "bench.azure-devices.net", edge_device: "bench-1" }),
    });
  const [t, q, u, p] = ["trainer", "quantizer", "update-queue", "profiler"].map(make);
  const links = [t, q, u, p].map(linkMetrics);
  const trainer = trainerMetrics(t);
  const quantizer = quantizerMetrics(q);
  const outbox = new Outbox(path.join(dir, "outbox.sqlite"));
  updateQueueMetrics(u, { outbox, dir, unstored: () => 0, lostInputs: () => 0, invalidInputs: () => 0 });
  const profiler = profilerMetrics(p);
  profiler.record({
    samplesPerSecond: { mlp: 1000 },
    threads: 1,
    memoryBytes: os.totalmem(),
    freeMemoryBytes: os.freemem(),
    freeDiskBytes: 1e10,
    rttMs: 12,
    uplinkBytesPerSecond: 1e6,
    uptimeSeconds: Math.round(os.uptime()),
    availability: 1,
    measuredAt: new Date().toISOString(),
  });
  for (const l of links) l.linkUp.set(1);
  const servers: MetricsServer[] = [];
  for (const m of [t, q, u, p]) servers.push(await serveMetrics(() => [m], { port: 0, host: "127.0.0.1" }));
  return {
    metrics: [t, q, u, p],
    servers,
    round(samples, trainSeconds, loss, accuracy, frameBytes) {
      trainer.roundsStarted.inc();
      trainer.downloadBytes.inc(modelBytes);
      trainer.downloadSeconds.observe(0.01);
      trainer.trainingSeconds.observe(trainSeconds);
      trainer.samplesPerSecond.set(samples / trainSeconds);
      trainer.localLoss.set(loss);
      trainer.localAccuracy.set(accuracy);
      trainer.localSamples.set(samples);
      trainer.roundsCompleted.inc();
      trainer.inferenceSeconds.observe({ kind: "evaluate" }, 0.002);
      quantizer.bytesIn.inc(frameBytes);
      quantizer.encodeSeconds.observe(0.001);
      quantizer.bytesOut.inc(frameBytes >> 3);
      quantizer.updates.inc({ outcome: "compressed" });
      quantizer.lastRatio.set(8);
      quantizer.ratio.observe(8);
      for (const l of links) l.reportedPatches.inc(2);
    },
    async close() {
      await Promise.all(servers.map((s) => s.close()));
      outbox.close();
    },
  };
}

interface Scraper {
  stop(): Promise<{ scrapes: number; bytes: number; cpuSeconds: number }>;
}

function startScraper(urls: readonly string[], intervalMs: number): Scraper {
  const child = fork(path.join(__dirname, "bench-metrics-scraper.js"), [], { execArgv: [], stdio: "ignore" });
  child.send({ type: "start", urls, intervalMs });
  return {
    stop: () =>
      new Promise((resolve, reject) => {
        child.once("exit", (code) => reject(new Error(`the scraper exited (${code}) before answering`)));
        child.once(
          "message",
          (m: { scrapes: number; bytes: number; cpu: { user: number; system: number } }) => {
            child.removeAllListeners("exit");
            resolve({ scrapes: m.scrapes, bytes: m.bytes, cpuSeconds: (m.cpu.user + m.cpu.system) / 1e6 });
          },
        );
        child.send({ type: "stop" });
      }),
  };
}

export async function benchMetrics(o: BenchMetricsOptions = {}): Promise<BenchMetricsResult> {
  const seconds = o.seconds ?? 30;
  const repeats = o.repeats ?? 3;
  const intervals = o.intervals ?? [15, 1];
  const progress = o.onProgress ?? (() => undefined);
  await initBackend({ threads: o.threads ?? 1 });
  const data = loadFleetData({ ...DEFAULT_CONFIG, devices: 1, samplesPerDevice: o.samples ?? 200 });
  const dataset = data.devices[0];
  const spec = data.spec;
  const model = await createModel(spec, 7);
  const weights = model.getWeights().slice();
  model.dispose();
  const modelSha256 = createHash("sha256")
    .update(new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength))
    .digest("hex");
  const layoutHash = modelLayout(spec).hash;
  const executor = new InProcessTrainExecutor();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-bench-metrics-"));
  let round = 0;
  /** Trains rounds for `seconds`; `after` is called after each one. */
  const train = async (after?: (samples: number, s: number, loss: number, acc: number) => void) => {
    const end = performance.now() + seconds * 1000;
    let samples = 0;
    let rounds = 0;
    const cpu0 = process.cpuUsage();
    while (performance.now() < end) {
      const job: TrainJob = {
        jobId: "bench-metrics",
        round: ++round,
        deviceId: deviceName(0, 1),
        spec,
        weights,
        modelSha256,
        layoutHash,
        config: { epochs: 1, batchSize: 10, lr: 0.05, seed: round },
        data: { kind: "dataset", dataset },
      };
      const outcome = await executor.run(job, new AbortController().signal, () => undefined);
      samples += outcome.numSamples;
      rounds++;
      after?.(
        outcome.numSamples,
        outcome.metrics.trainMs / 1000,
        outcome.metrics.loss,
        outcome.metrics.accuracy,
      );
    }
    const cpu = process.cpuUsage(cpu0);
    return { samples, rounds, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
  };
  const arms = ["off", ...intervals.map((s) => `scrape ${s} s`)];
  const runs: ArmRun[] = [];
  try {
    await train(); // warm-up (JIT, wasm compilation), not counted
    for (let r = 0; r < repeats; r++) {
      const order = arms.map((_, i) => arms[(i + r) % arms.length]);
      for (const arm of order) {
        let run: ArmRun;
        if (arm === "off") {
          const t = await train();
          run = {
            arm,
            ...t,
            cpuSecondsPerSample: t.cpuSeconds / t.samples,
            scrapes: 0,
            scrapeBytes: 0,
            scraperCpuSeconds: 0,
          };
        } else {
          const interval = intervals[arms.indexOf(arm) - 1];
          const device = await meteredDevice(dir, weights.byteLength);
          const scraper = startScraper(
            device.servers.map((s) => s.url),
            interval * 1000,
          );
          const frameBytes = weights.byteLength + 200;
          const t = await train((n, s, loss, acc) => device.round(n, s, loss, acc, frameBytes));
          const sc = await scraper.stop();
          await device.close();
          run = {
            arm,
            ...t,
            cpuSecondsPerSample: t.cpuSeconds / t.samples,
            scrapes: sc.scrapes,
            scrapeBytes: sc.bytes,
            scraperCpuSeconds: sc.cpuSeconds,
          };
        }
        runs.push(run);
        progress(
          `repeat ${r + 1}/${repeats} ${arm}: ${run.samples} samples in ${run.rounds} rounds, ` +
            `${(run.cpuSecondsPerSample * 1e6).toFixed(1)} µs CPU/sample` +
            (run.scrapes ? `, ${run.scrapes} scrapes` : ""),
        );
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const base = median(runs.filter((x) => x.arm === "off").map((x) => x.cpuSecondsPerSample));
  return {
    seconds,
    repeats,
    threads: backendThreads(),
    model: spec.kind,
    samplesPerRound: dataset.n,
    runs,
    arms: arms.map((arm) => {
      const mine = runs.filter((x) => x.arm === arm);
      const m = median(mine.map((x) => x.cpuSecondsPerSample));
      const scrapes = mine.reduce((a, x) => a + x.scrapes, 0);
      return {
        arm,
        medianCpuSecondsPerSample: m,
        overheadPercent: ((m - base) / base) * 100,
        scrapesPerRun: scrapes / mine.length,
        bytesPerScrape: scrapes > 0 ? mine.reduce((a, x) => a + x.scrapeBytes, 0) / scrapes : 0,
      };
    }),
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}
