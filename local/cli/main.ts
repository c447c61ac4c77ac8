import { Command, CommanderError, Option } from "commander";
import * as path from "node:path";
import { isFlotillaError, fail } from "../../core/errors";
import { loggerFromEnv, type Logger } from "../../core/log";
import {
  DEFAULT_CONFIG,
  DEFAULT_ROOT_SAMPLES,
  PRESETS,
  nonNegativeInt,
  nonNegativeNumber,
  positiveInt,
  positiveNumber,
  SIM_LIMITS,
  validateConfig,
  checkModelArg,
  type SimConfig,
} from "../sim/config";
import type { RoundSummary, SimulationReporter } from "../sim/simulate";
import type { IotHubRunOptions } from "../stack/iothub-simulate";
import type { Dashboard } from "../dashboard/server";
import { benchCodecs, DEFAULT_BENCH_SIZE, parseCompression } from "../../core/compress";
import { MAX_THREADS, parseThreads } from "../../core/engine/threads";
import { registerFleetCommand } from "./fleet";
import { registerFleetTraceCommand } from "./fleet-trace";
import { registerPrivacyCommand } from "./privacy";
import * as fs from "node:fs";

// The simulator, the hub, tfjs and the benchmarks are loaded by the command that needs them (await import), so a
// bad flag is reported without loading them.

/** Options as commander hands them over: strings, validated by us so every error is one clear line. */
type RawOptions = Record<string, string | boolean | undefined>;

/**
 * Upper bounds of the bench commands' count and size flags (E_CONFIG_RANGE above them), checked before anything
 * is allocated. bench aggregate holds about 7 float32-sized copies of one update (28 bytes per parameter: 2.8 GB at
 * the bound); bench train allocates a batch of samples and its activations; SecAgg+'s Shamir shares are points of
 * GF(2^16), and one round's cost grows with clients x neighbours.
 */
const BENCH_LIMITS = {
  params: 100_000_000,
  updates: 1_000_000,
  repeats: 1_000,
  trainBatchSize: 4_096,
  seconds: 3_600,
  secaggClients: 10_000,
  secaggParams: 10_000_000,
} as const;
const MAX_PORT = 65_535;
/** The dashboard's default port (local/dashboard/server.ts DEFAULT_DASHBOARD_PORT; not imported: it loads the server). */
const DEFAULT_DASHBOARD_PORT = 8090;

/** A simulated job's config from the simulate command's options (also each cell of `bench robust-table`). */
export function buildSimConfig(o: RawOptions): SimConfig {
  const presetName = (o.preset as string | undefined) ?? undefined;
  if (presetName !== undefined && !PRESETS[presetName]) {
    fail(
      "E_CONFIG_VALUE",
      `unknown preset '${presetName}' (expected one of ${Object.keys(PRESETS).join(", ")})`,
    );
  }
  const c: SimConfig = { ...DEFAULT_CONFIG, ...(presetName ? PRESETS[presetName] : {}) };
  const s = (k: string) => o[k] as string | undefined;
  const L = SIM_LIMITS;
  if (s("devices") !== undefined) c.devices = positiveInt("devices", s("devices")!, L.devices);
  if (s("rounds") !== undefined) c.rounds = positiveInt("rounds", s("rounds")!, L.rounds);
  if (s("clientsPerRound") !== undefined)
    c.clientsPerRound = positiveInt("clients-per-round", s("clientsPerRound")!, L.clientsPerRound);
  if (s("dataset") !== undefined) c.dataset = s("dataset")!;
  if (s("model") !== undefined) c.model = s("model")!;
  if (s("initModel") !== undefined) c.initModel = s("initModel")!;
  if (s("optimizer") !== undefined) c.optimizer = s("optimizer")!;
  if (s("engine") !== undefined) c.engine = s("engine") as SimConfig["engine"];
  if (s("partition") !== undefined) c.partition = s("partition")!;
  else if (c.dataset !== "sensors" && c.partition === "natural") c.partition = "iid";
  if (s("strategy") !== undefined) c.strategy = s("strategy")!;
  if (s("aggregator") !== undefined) c.aggregator = s("aggregator")!;
  if (s("rootSamples") !== undefined)
    c.rootSamples = nonNegativeInt("root-samples", s("rootSamples")!, L.rootSamples);
  if (s("attack") !== undefined) c.attack = s("attack")!;
  if (s("quality") !== undefined) {
    const q = s("quality")!;
    if (q !== "on" && q !== "off") fail("E_CONFIG_QUALITY", `--quality must be on or off, got '${q}'`);
    c.quality = q === "on";
  }
  if (s("excludeAfter") !== undefined) c.excludeAfter = s("excludeAfter")!;
  if (s("localEpochs") !== undefined)
    c.localEpochs = positiveInt("local-epochs", s("localEpochs")!, L.localEpochs);
  if (s("batchSize") !== undefined) c.batchSize = positiveInt("batch-size", s("batchSize")!, L.batchSize);
  if (s("lr") !== undefined) c.lr = positiveNumber("lr", s("lr")!);
  if (s("mu") !== undefined) c.mu = nonNegativeNumber("mu", s("mu")!);
  if (s("serverLr") !== undefined) c.serverLr = positiveNumber("server-lr", s("serverLr")!);
  if (s("seed") !== undefined) c.seed = nonNegativeInt("seed", s("seed")!, L.seed);
  if (s("workers") !== undefined) c.workers = nonNegativeInt("workers", s("workers")!, L.workers);
  if (s("threads") !== undefined) c.threads = parseThreads(s("threads"), "--threads");
  if (s("samplesPerDevice") !== undefined) {
    c.samplesPerDevice = positiveInt("samples-per-device", s("samplesPerDevice")!, L.samplesPerDevice);
  }
  if (s("roundTimeout") !== undefined)
    c.roundTimeoutMs = positiveNumber("round-timeout", s("roundTimeout")!, L.roundTimeoutS) * 1000;
  if (s("targetAccuracy") !== undefined) {
    c.targetAccuracy = nonNegativeNumber("target-accuracy", s("targetAccuracy")!);
  }
  if (s("out") !== undefined) c.out = s("out")!;
  if (s("transport") !== undefined) {
    if (s("transport") !== "memory" && s("transport") !== "iothub") {
      fail("E_CONFIG_VALUE", `--transport must be memory or iothub, got '${s("transport")}'`);
    }
    c.transport = s("transport") as "memory" | "iothub";
  }
  if (s("timeScale") !== undefined) c.timeScale = positiveNumber("time-scale", s("timeScale")!);
  if (s("compression") !== undefined) c.compression = s("compression")!;
  if (s("downlinkCompression") !== undefined) c.downlinkCompression = s("downlinkCompression")!;
  if (o.secureAggregation) c.secureAggregation = true;
  if (o.fleetEval === false) c.fleetEval = false;
  if (s("secaggNeighbours") !== undefined)
    c.secaggNeighbours = positiveInt("secagg-neighbours", s("secaggNeighbours")!, L.secaggNeighbours);
  if (s("secaggThreshold") !== undefined)
    c.secaggThreshold = positiveInt("secagg-threshold", s("secaggThreshold")!, L.secaggThreshold);
  if (s("secaggClip") !== undefined)
    c.secaggClip = positiveNumber("secagg-clip", s("secaggClip")!, L.secaggClip);
  if (s("secaggStepTimeout") !== undefined)
    c.secaggStepTimeoutMs =
      positiveNumber("secagg-step-timeout", s("secaggStepTimeout")!, L.secaggStepTimeoutS) * 1000;
  if (s("dropout") !== undefined) c.dropout = nonNegativeNumber("dropout", s("dropout")!);
  if (s("dpNoise") !== undefined) c.dpNoise = positiveNumber("dp-noise", s("dpNoise")!, L.dpNoise);
  if (s("dpClip") !== undefined)
    c.dpClip = s("dpClip") === "adaptive" ? "adaptive" : positiveNumber("dp-clip", s("dpClip")!, L.dpClip);
  if (s("dpDelta") !== undefined) c.dpDelta = positiveNumber("dp-delta", s("dpDelta")!);
  if (s("dpEpsilonBudget") !== undefined)
    c.dpEpsilonBudget = positiveNumber("dp-epsilon-budget", s("dpEpsilonBudget")!);
  if (s("dpPlacement") !== undefined) c.dpPlacement = s("dpPlacement") as SimConfig["dpPlacement"];
  if (s("dpMinSurvivors") !== undefined)
    c.dpMinSurvivors = positiveInt("dp-min-survivors", s("dpMinSurvivors")!, L.dpMinSurvivors);
  if (s("dpTargetQuantile") !== undefined)
    c.dpTargetQuantile = positiveNumber("dp-target-quantile", s("dpTargetQuantile")!);
  if (s("dpClipCountStddev") !== undefined)
    c.dpClipCountStddev = positiveNumber(
      "dp-clip-count-stddev",
      s("dpClipCountStddev")!,
      L.dpClipCountStddev,
    );
  if (s("fleetTrace") !== undefined) c.fleetTrace = s("fleetTrace")!;
  if (s("selection") !== undefined) c.selection = s("selection")!;
  if (s("mode") !== undefined) c.mode = s("mode") as SimConfig["mode"];
  if (s("concurrency") !== undefined)
    c.concurrency = positiveInt("concurrency", s("concurrency")!, L.concurrency);
  if (s("buffer") !== undefined) c.buffer = positiveInt("buffer", s("buffer")!, L.buffer);
  if (s("maxStaleness") !== undefined)
    c.maxStaleness = nonNegativeInt("max-staleness", s("maxStaleness")!, L.maxStaleness);
  if (s("staleness") !== undefined) c.staleness = s("staleness")!;
  if (s("roundDeadline") !== undefined)
    c.roundDeadlineS = positiveNumber("round-deadline", s("roundDeadline")!, L.roundDeadlineS);
  if (s("virtualHours") !== undefined)
    c.virtualHours = positiveNumber("virtual-hours", s("virtualHours")!, L.roundDeadlineS / 3600);
  if (c.clientsPerRound > c.devices && s("clientsPerRound") === undefined) c.clientsPerRound = c.devices;
  return validateConfig(c);
}

/**
 * Creates `dir` (with its parents) and checks that it is a directory this process can write, so a bad --out (a
 * file, a path under a file, a read-only place) is one E_CONFIG_OUT line before the job runs, not an E_INTERNAL
 * after it (and the run's results lost).
 */
function prepareOutDir(flag: string, dir: string): void {
  const why = (e: unknown) => (e as Error).message.split("\n")[0];
  if (dir.trim() === "") fail("E_CONFIG_OUT", `${flag} must name a directory, got ''`);
  let stat: fs.Stats | undefined;
  try {
    stat = fs.statSync(dir, { throwIfNoEntry: false });
  } catch (e) {
    fail("E_CONFIG_OUT", `${flag} ${dir}: ${why(e)}`, { cause: e });
  }
  if (stat && !stat.isDirectory()) fail("E_CONFIG_OUT", `${flag} ${dir}: exists and is not a directory`);
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    fail("E_CONFIG_OUT", `${flag} ${dir}: cannot create the directory (${why(e)})`, { cause: e });
  }
  const probe = path.join(dir, `.flotilla-write-check-${process.pid}`);
  try {
    fs.writeFileSync(probe, "");
    fs.rmSync(probe, { force: true });
  } catch (e) {
    fail("E_CONFIG_OUT", `${flag} ${dir}: directory is not writable (${why(e)})`, { cause: e });
  }
}

function roundLine(r: RoundSummary, total: number, mb: (bytes: number) => string): string {
  const acc = Number.isFinite(r.accuracy) ? `${(r.accuracy * 100).toFixed(2)}%` : "n/a";
  const loss = Number.isFinite(r.loss) ? r.loss.toFixed(4) : "n/a";
  return (
    `round ${String(r.round).padStart(String(total).length)}/${total}  ` +
    `participants ${r.completed}/${r.participants.length}  accuracy ${acc.padStart(7)}  loss ${loss}  ` +
    (r.auc !== undefined ? `AUC ${r.auc.toFixed(4)}  ` : "") +
    (r.mae !== undefined ? `MAE ${r.mae.toFixed(4)}  ` : "") +
    `up ${mb(r.uplinkBytes)}  down ${mb(r.downlinkBytes)}  ${(r.durationMs / 1000).toFixed(1)} s` +
    evalText(r) +
    secaggText(r) +
    dpText(r) +
    virtualText(r)
  );
}

/** Fleet-wide evaluation: the weighted accuracy (MAE) on the devices' held-out data and the worst decile's. */
function evalText(r: RoundSummary): string {
  const e = r.evaluation;
  if (!e?.worstDecile) return "";
  const pct = (v: number) => `${(v * 100).toFixed(2)}%`;
  return e.accuracy !== undefined
    ? `  fleet ${pct(e.accuracy)} (worst 10% ${pct(e.worstDecile.value)}, ${e.devices} devices)`
    : e.mae !== undefined
      ? `  fleet MAE ${e.mae.toFixed(4)} (worst 10% ${e.worstDecile.value.toFixed(4)}, ${e.devices} devices)`
      : "";
}

/** With a fleet trace: the round's virtual end (hours:minutes:seconds), late updates and async staleness. */
function virtualText(r: RoundSummary): string {
  if (r.virtualEndS === undefined) return "";
  const late = r.late ? `  late ${r.late}` : "";
  const tau = r.staleness?.length ? `  staleness max ${Math.max(...r.staleness)}` : "";
  return `  virtual ${hms(r.virtualEndS)}${late}${tau}`;
}

function hms(seconds: number): string {
  const s = Math.round(seconds);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${Math.floor(s / 3600)}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}`;
}

function dpText(r: RoundSummary): string {
  const d = r.dp;
  if (!d) return "";
  const eps = `ε ${d.epsilon.toFixed(3)}`;
  if (!d.released) return `  dp NOT RELEASED (${d.reason ?? ""}) ${eps}`;
  return `  dp clip ${d.clip.toPrecision(3)} noise ${d.noiseStd.toPrecision(3)} ${eps}`;
}

function secaggText(r: RoundSummary): string {
  const s = r.secagg;
  if (!s) return "";
  if (s.aborted) return `  secagg ABORTED (${s.aborted.code})`;
  const d = s.dropouts;
  return (
    `  secagg sum of ${s.included.length}, dropouts ${d.advertise.length}/${d.share.length}/${d.mask.length}/` +
    `${d.unmask.length}, unmask ${s.unmaskMs.toFixed(0)} ms`
  );
}

/** `--prometheus [port]`: undefined when absent, "default" without a port, else the port (0: any free port). */
function prometheusOption(v: unknown): number | "default" | undefined {
  if (v === undefined || v === false) return undefined;
  if (v === true) return "default";
  return nonNegativeInt("prometheus", v as string, MAX_PORT);
}

async function runSimulate(o: RawOptions): Promise<number> {
  const config = buildSimConfig(o);
  // --prometheus [port]: a real Prometheus over the stack's modules and the Function (docs/prometheus.md).
  const prometheusPort = prometheusOption(o.prometheus);
  if (prometheusPort !== undefined && config.transport !== "iothub")
    fail("E_CONFIG_CONFLICT", "--prometheus scrapes the local stack's modules: it needs --transport iothub");
  const dashboardPort =
    o.dashboard === undefined
      ? undefined
      : o.dashboard === true
        ? DEFAULT_DASHBOARD_PORT
        : nonNegativeInt("dashboard", o.dashboard as string, MAX_PORT);
  if (dashboardPort !== undefined && config.transport !== "iothub")
    fail("E_CONFIG_CONFLICT", "--dashboard serves the local stack's fleet: it needs --transport iothub");
  if (o.keepDashboard && dashboardPort === undefined)
    fail("E_CONFIG_CONFLICT", "--keep-dashboard keeps the page of --dashboard: give --dashboard too");
  prepareOutDir("--out", config.out);
  // Started once the stack runs, stopped with it; prints its URL, or one line why it does not run.
  const base: IotHubRunOptions =
    prometheusPort === undefined
      ? {}
      : {
          attach: [
            async (stack) =>
              (await import("../monitoring/prometheus.js")).attachPrometheus(stack, {
                dir: path.join(config.out, "prometheus"),
                ...(prometheusPort === "default" ? {} : { port: prometheusPort }),
                print: (line) => console.log(line),
              }),
          ],
        };
  if (dashboardPort === undefined) return simulateAndPrint(config, base);
  // --dashboard: the live page over the local stack while the job runs (local/dashboard, docs/dashboard.md); when
  // the job ends it shows the final state, until the command exits or, with --keep-dashboard, until Ctrl-C.
  let dashboard: Dashboard | undefined;
  try {
    return await simulateAndPrint(config, {
      ...base,
      dashboard: {
        port: dashboardPort,
        log: (l) => console.error(`flotilla dashboard: ${l}`),
        onStart: (d) => {
          dashboard = d;
          console.log(`dashboard: ${d.url}`);
        },
      },
    });
  } finally {
    if (dashboard && o.keepDashboard) {
      console.log(`dashboard: ${dashboard.url} shows the final state; Ctrl-C stops it`);
      await untilInterrupted();
    }
    await dashboard?.close();
  }
}

/** Resolves on the first SIGINT or SIGTERM. */
function untilInterrupted(): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      process.off("SIGINT", done);
      process.off("SIGTERM", done);
      resolve();
    };
    process.once("SIGINT", done);
    process.once("SIGTERM", done);
  });
}

async function simulateAndPrint(config: SimConfig, runOptions: IotHubRunOptions): Promise<number> {
  const { SingleBar, Presets } = await import("cli-progress");
  const { mb } = await import("../report/report.js");
  const interactive = Boolean(process.stderr.isTTY);
  const bar = new SingleBar(
    {
      format: "round {round} [{bar}] {percentage}% | {value}/{total} samples | {eta_formatted} left",
      hideCursor: true,
    },
    Presets.shades_classic,
  );
  let barActive = false;
  console.log(
    `flotilla simulate: ${config.devices} devices, ${config.clientsPerRound} per round, ${config.rounds} rounds, ` +
      `dataset ${config.dataset}, model ${config.model}, partition ${config.partition}, strategy ${config.strategy}`,
  );
  const reporter: SimulationReporter = {
    onStart: (i) =>
      console.log(`model: ${i.params.toLocaleString("en-US")} parameters; test set ${i.testSamples} samples`),
    onRoundStart: (round, _p, total) => {
      if (!interactive) return;
      bar.start(total, 0, { round });
      barActive = true;
    },
    onProgress: (_round, done) => {
      if (barActive) bar.update(done);
    },
    onRoundEnd: (r) => {
      if (barActive) {
        bar.stop();
        barActive = false;
      }
      console.log(roundLine(r, config.rounds, mb));
    },
    onQualityLine: (line) => console.log(line),
  };
  const result =
    config.transport === "iothub"
      ? await (await import("../stack/iothub-simulate.js")).simulateOverIotHub(config, reporter, runOptions)
      : await (await import("../sim/simulate.js")).simulate(config, reporter);
  const acc = Number.isFinite(result.final.accuracy) ? `${(result.final.accuracy * 100).toFixed(2)}%` : "n/a";
  console.log(
    `done: ${result.final.rounds} rounds in ${(result.final.wallMs / 1000).toFixed(1)} s, final test accuracy ${acc}` +
      (result.final.auc !== undefined ? `, AUC ${result.final.auc.toFixed(4)}` : "") +
      (result.final.mae !== undefined ? `, MAE ${result.final.mae.toFixed(4)}` : ""),
  );
  if (result.final.virtualTimeS !== undefined) {
    const t = result.final.timeToTargetS;
    const pc = result.participation?.completed;
    console.log(
      `virtual time ${hms(result.final.virtualTimeS)} (${(result.final.virtualTimeS / 3600).toFixed(2)} h)` +
        (t === undefined
          ? ""
          : `; time to ${config.targetAccuracy}: ${t === null ? "not reached" : hms(t)}`) +
        (pc ? `; updates per device min ${pc.min} median ${pc.median} max ${pc.max}` : ""),
    );
  }
  if (result.privacy) {
    const p = result.privacy;
    console.log(
      `privacy: ε = ${p.epsilon.toFixed(4)} at δ = ${p.delta} (${p.placement} noise, z = ${p.noiseMultiplier}, ` +
        `${p.steps} released round(s), RDP order ${p.order}, ${p.conversion} conversion)` +
        (p.epsilonBudget !== undefined ? `; budget ε = ${p.epsilonBudget}` : ""),
    );
  }
  if (result.attack) {
    const a = result.attack;
    console.log(
      `attack: ${a.kind} by ${a.attackers.length} of ${config.devices} devices (fraction ${a.fraction}` +
        (a.param !== undefined ? `, parameter ${a.param}` : "") +
        `): ${a.attackers.join(", ")}` +
        (result.final.backdoorSuccess !== undefined
          ? `; backdoor success ${(result.final.backdoorSuccess * 100).toFixed(2)}%`
          : ""),
    );
  }
  if (result.status && result.status.state !== "completed")
    console.log(`job stopped: ${result.status.state}: ${result.status.reason ?? ""}`);
  const rejected = Object.entries(result.rejected);
  if (rejected.length) console.log(`rejected frames: ${rejected.map(([k, v]) => `${k}=${v}`).join(", ")}`);
  console.log(`results: ${path.join(config.out, "results.json")}`);
  console.log(`report:  ${path.join(config.out, "report.html")}`);
  // A job whose global model turned non-finite ran, but failed: exit 3 (results and report are written).
  if (result.status?.state === "diverged") {
    console.error(`flotilla: E_MODEL_DIVERGED: ${result.status.reason ?? "the global model is not finite"}`);
    return 3;
  }
  return 0;
}

async function runBenchTrain(o: RawOptions): Promise<number> {
  const model = (o.model as string) ?? "mlp";
  // Not a kind: a model.json (or its directory) or a saved model directory, benchmarked on data of its shape.
  const { isPresetKind } = await import("../../core/engine/graph.js");
  const { loadModelSourceSpec } = await import("../../core/export/model-dir.js");
  checkModelArg(model, "--model");
  const spec = isPresetKind(model) ? undefined : loadModelSourceSpec(model);
  const batchSize = positiveInt("batch-size", (o.batchSize as string) ?? "10", BENCH_LIMITS.trainBatchSize);
  const seconds =
    o.seconds !== undefined
      ? positiveNumber("seconds", o.seconds as string, BENCH_LIMITS.seconds)
      : undefined;
  const threads = parseThreads(o.threads, "--threads");
  const reference = o.reference as string | undefined;
  if (reference !== undefined && reference !== "pytorch")
    fail("E_CONFIG_BENCH", `--reference must be 'pytorch', got '${reference}'`);
  if (reference !== undefined && !["mlp", "cnn"].includes(model))
    fail("E_CONFIG_BENCH", `--reference pytorch has the mlp and cnn models only, got '${model}'`);
  const refThreads = parseThreads(o.referenceThreads ?? "2", "--reference-threads") ?? 2;
  const engine = (o.engine as string | undefined) ?? "auto";
  if (engine !== "auto" && engine !== "fast" && engine !== "generic")
    fail("E_CONFIG_BENCH", `--engine must be auto, fast or generic, got '${engine}'`);
  // PyTorch's absence is one line before anything is measured.
  const ref = reference !== undefined ? await import("../../core/engine/bench-reference.js") : undefined;
  const python = ref?.findTorchPython();
  const { benchTrain } = await import("../../core/engine/bench.js");
  const r = await benchTrain({ model, batchSize, seconds, threads, path: engine, ...(spec ? { spec } : {}) });
  const line =
    `${r.model} B=${r.batchSize} (${r.params.toLocaleString("en-US")} params, ${r.threads} thread(s), ` +
    `${r.path ?? "fast"} path)`;
  if (ref === undefined || python === undefined) {
    if (o.json) console.log(JSON.stringify(r));
    else console.log(`${line}: ${r.samplesPerSecond.toFixed(1)} samples/s`);
    return 0;
  }
  const p = ref.runPytorchReference(python, { model, batchSize, threads: refThreads, seconds: seconds ?? 5 });
  const ratio = r.samplesPerSecond / p.samplesPerSecond;
  const loadAverage = (await import("node:os")).loadavg().map((x) => Math.round(x * 100) / 100);
  if (o.json) console.log(JSON.stringify({ ...r, reference: { pytorch: p }, ratio, loadAverage }));
  else
    console.log(
      `${line}: ${r.samplesPerSecond.toFixed(1)} samples/s; PyTorch ${p.torch} (${p.threads} threads): ` +
        `${p.samplesPerSecond.toFixed(1)} samples/s; ratio ${ratio.toFixed(2)}x (load average ${loadAverage.join(", ")})`,
    );
  return 0;
}

async function runBenchAggregate(o: RawOptions): Promise<number> {
  const updates = positiveInt("updates", (o.updates as string) ?? "100", BENCH_LIMITS.updates);
  const params = positiveInt("params", (o.params as string) ?? "1000000", BENCH_LIMITS.params);
  if (o.dp) {
    const { benchDpAggregate } = await import("../../core/privacy/bench.js");
    const d = benchDpAggregate({ updates, params });
    if (o.json) console.log(JSON.stringify(d));
    else
      console.log(
        `${d.updates} updates x ${d.params.toLocaleString("en-US")} params: plain ${d.gbPerSecond.toFixed(2)} GB/s, ` +
          `central DP ${d.dpGbPerSecond.toFixed(2)} GB/s (${(d.ratio * 100).toFixed(0)}%), noise ${d.noiseMs.toFixed(0)} ms`,
      );
    return 0;
  }
  const { benchAggregate } = await import("../../core/tensor/bench-aggregate.js");
  const r = benchAggregate({ updates, params });
  if (o.json) console.log(JSON.stringify(r));
  else {
    console.log(
      `${r.updates} updates x ${r.params.toLocaleString("en-US")} params: ` +
        `${r.updatesPerSecond.toFixed(1)} updates/s, ${r.gbPerSecond.toFixed(2)} GB/s`,
    );
  }
  return 0;
}

async function runBenchRobust(o: RawOptions): Promise<number> {
  const updates = positiveInt("updates", (o.updates as string) ?? "100", BENCH_LIMITS.updates);
  const params = positiveInt("params", (o.params as string) ?? "1000000", BENCH_LIMITS.params);
  const repeats = positiveInt("repeats", (o.repeats as string) ?? "3", BENCH_LIMITS.repeats);
  const rules = typeof o.rules === "string" ? o.rules.split(/[\s;]+/).filter((r) => r !== "") : undefined;
  // One clear E_CONFIG_AGGREGATOR line for a bad spec (norm:C stands for the median norm), before any allocation.
  const { parseAggregator } = await import("../../core/robust/spec.js");
  for (const r of rules ?? []) parseAggregator(r.replace(/^norm:C\+/i, "norm:1+"));
  // The test updates, one buffered copy of them and the rules' scratch: about 3 x n x d x 4 bytes.
  const bytes = updates * params * 4 * 3;
  if (bytes > (await import("node:os")).totalmem())
    fail(
      "E_CONFIG_MEMORY",
      `${updates} updates x ${params} params need about ${(bytes / 1e9).toFixed(1)} GB, more than this machine has`,
    );
  const { benchRobust } = await import("../../core/robust/bench.js");
  const r = benchRobust({
    updates,
    params,
    repeats,
    ...(rules ? { rules } : {}),
    onProgress: (l) => console.error(l),
  });
  if (o.json) console.log(JSON.stringify(r));
  else {
    const mb = (b: number) => `${(b / 1e6).toFixed(0)} MB`;
    console.log(
      `${r.updates} updates x ${r.params.toLocaleString("en-US")} params, median of ${r.repeats} ` +
        `(load average ${r.loadAverage.join(", ")}); peak RSS ${mb(r.peakRssBytes)}:`,
    );
    console.log(
      "aggregator                          round ms   rule ms   x mean   buffered    held   RSS at finish",
    );
    for (const x of r.rows)
      console.log(
        `${x.spec.padEnd(34)} ${x.ms.toFixed(0).padStart(9)} ${x.ruleMs.toFixed(0).padStart(9)} ` +
          `${x.ratio.toFixed(1).padStart(7)}x ${mb(x.bufferedBytes).padStart(10)} ${mb(x.heldBytes).padStart(7)} ` +
          `${mb(x.rssBytes).padStart(13)}`,
      );
  }
  return 0;
}

async function runExport(o: RawOptions): Promise<number> {
  const format = o.format as string;
  if (format !== "onnx") fail("E_EXPORT_FORMAT", `unsupported --format '${format}' (expected onnx)`);
  const quantize = o.quantize as string | undefined;
  if (quantize !== undefined && quantize !== "int8") {
    fail("E_EXPORT_FORMAT", `unsupported --quantize '${quantize}' (expected int8)`);
  }
  const { loadModelSource } = await import("../../core/export/model-dir.js");
  const { exportOnnx } = await import("../../core/export/onnx.js");
  const { spec, weights } = loadModelSource(o.model as string);
  const bytes = exportOnnx(spec, weights, quantize ? { quantize } : {});
  const out = o.out as string;
  try {
    fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
    fs.writeFileSync(out, bytes);
  } catch (e) {
    fail("E_EXPORT_WRITE", `${out}: cannot write: ${(e as Error).message.split("\n")[0]}`, { cause: e });
  }
  console.log(
    `exported ${out}: ${bytes.byteLength} bytes, ${spec.kind} ${weights.length} params, ${quantize ?? "fp32"} onnx`,
  );
  return 0;
}

async function runBenchCompress(o: RawOptions): Promise<number> {
  const size = positiveInt("params", (o.params as string) ?? String(DEFAULT_BENCH_SIZE), BENCH_LIMITS.params);
  const repeats = positiveInt("repeats", (o.repeats as string) ?? "5", BENCH_LIMITS.repeats);
  const specs = typeof o.codecs === "string" ? o.codecs.split(",") : undefined;
  for (const s of specs ?? []) parseCompression(s); // one clear E_COMPRESS_SPEC line for a bad codec
  const rows = benchCodecs({ size, repeats, specs });
  if (o.json) console.log(JSON.stringify(rows));
  else {
    console.log(`${size.toLocaleString("en-US")} float32 values, median of ${repeats}:`);
    console.log("codec               ratio    encode GB/s  decode GB/s  decode+sum GB/s  (plain add GB/s)");
    for (const r of rows) {
      console.log(
        `${r.spec.padEnd(18)} ${r.ratio.toFixed(1).padStart(6)}x ${r.encodeGBps.toFixed(2).padStart(12)} ` +
          `${r.decodeGBps.toFixed(2).padStart(12)} ${r.accumulateGBps.toFixed(2).padStart(16)}  (${r.addReferenceGBps.toFixed(2)})`,
      );
    }
  }
  return 0;
}

async function runBenchStack(o: RawOptions): Promise<number> {
  const devices = positiveInt("devices", (o.devices as string) ?? "10", SIM_LIMITS.devices);
  const rounds = positiveInt("rounds", (o.rounds as string) ?? "4", SIM_LIMITS.rounds);
  const out = o.out === undefined ? undefined : path.resolve(o.out as string);
  const { benchStack, benchStackJson } = await import("../stack/bench-stack.js");
  const r = await benchStack({ devices, rounds, out, onProgress: (l) => console.error(l) });
  if (o.json) console.log(JSON.stringify(benchStackJson(r)));
  else
    console.log(
      `${r.devices} devices, ${r.rounds} rounds (medians): round ${r.roundWallMs} ms, training span ` +
        `${r.trainingSpanMs} ms, protocol overhead ${r.overheadMs} ms; peak memory ${(r.peakRssBytes / 2 ** 20).toFixed(0)} MiB`,
    );
  return 0;
}

async function runBenchMetrics(o: RawOptions): Promise<number> {
  const seconds = positiveNumber("seconds", (o.seconds as string) ?? "30", BENCH_LIMITS.seconds);
  const repeats = positiveInt("repeats", (o.repeats as string) ?? "3", BENCH_LIMITS.repeats);
  const intervals = String(o.intervals ?? "15,1")
    .split(",")
    .map((x) => positiveNumber("intervals", x.trim(), BENCH_LIMITS.seconds));
  const threads = parseThreads(o.threads ?? "1", "--threads");
  const { benchMetrics } = await import("./bench-metrics.js");
  const r = await benchMetrics({ seconds, repeats, intervals, threads, onProgress: (l) => console.error(l) });
  if (o.json) console.log(JSON.stringify(r));
  else {
    console.log(
      `${r.model} on ${r.samplesPerRound} samples per round, ${r.threads} thread(s), ${r.seconds} s x ${r.repeats} ` +
        `interleaved repeats (load average ${r.loadAverage.join(", ")}):`,
    );
    for (const a of r.arms)
      console.log(
        `  ${a.arm.padEnd(12)} ${(a.medianCpuSecondsPerSample * 1e6).toFixed(1).padStart(8)} µs CPU/sample` +
          (a.arm === "off"
            ? ""
            : `  ${a.overheadPercent >= 0 ? "+" : ""}${a.overheadPercent.toFixed(2)} %  ` +
              `(${a.scrapesPerRun.toFixed(0)} endpoint scrapes per run, ${(a.bytesPerScrape / 1024).toFixed(1)} KiB ` +
              `each; serving: ${((a.cpuSecondsPerScrape ?? 0) * 1e3).toFixed(2)} ms CPU per scrape of the four ` +
              `endpoints = ${(a.scrapeCostPercent ?? 0).toFixed(3)} % of the training CPU)`),
      );
  }
  return 0;
}

async function runBenchRobustTable(o: RawOptions): Promise<number> {
  const { parseRobustTableOptions, runRobustTable } = await import("./bench-robust-table.js");
  const opts = parseRobustTableOptions(o);
  prepareOutDir("--out", opts.out);
  const { SingleBar, Presets } = await import("cli-progress");
  const interactive = Boolean(process.stderr.isTTY);
  const bar = new SingleBar(
    {
      format:
        "cell {cell}/{cells} {name} [{bar}] {percentage}% | round {round}/{rounds} | {eta_formatted} left",
      hideCursor: true,
      etaBuffer: 50,
    },
    Presets.shades_classic,
  );
  let roundsBefore = 0;
  let rounds = 0;
  let started = false;
  const run = runRobustTable(opts, buildSimConfig, {
    onStart: (cells, totalRounds) => {
      if (!interactive || cells === 0) return;
      bar.start(totalRounds, 0, { cell: 0, cells, name: "", round: 0, rounds: 0 });
      started = true;
    },
    onCellStart: (i, total, p) => {
      const name = `${p.cell.dataset} ${p.cell.attack} × ${p.cell.aggregator} seed ${p.cell.seed}`;
      rounds = p.cell.rounds;
      // The bar counts rounds over every cell to run (without a terminal: one line as each cell ends).
      if (interactive) bar.update(roundsBefore, { cell: i + 1, cells: total, name, round: 0, rounds });
    },
    onRound: (round) => {
      if (interactive) bar.update(roundsBefore + round, { round });
    },
    onCellEnd: (i, total, c) => {
      roundsBefore += rounds;
      const acc = c.finalAccuracy === null ? "diverged" : `${(c.finalAccuracy * 100).toFixed(2)}%`;
      const bd =
        c.backdoorSuccess !== undefined ? `, backdoor success ${(c.backdoorSuccess * 100).toFixed(1)}%` : "";
      if (!interactive)
        console.error(
          `cell ${i + 1}/${total}: ${c.dataset} ${c.attack} × ${c.aggregator}: ${acc}${bd} (${(c.wallMs / 1000).toFixed(1)} s)`,
        );
    },
  });
  const r = await run.finally(() => {
    if (started) bar.stop();
  });
  console.log(
    `robust table: ${r.planned} cells in the grid, ${r.ran} run, ${r.reused} already in ${r.files[0]}; ` +
      `${r.table.cells.length} cells in the table`,
  );
  for (const f of r.files.slice(1)) console.log(`  ${f}`);
  return 0;
}

async function runBenchSecAgg(o: RawOptions): Promise<number> {
  const clients = positiveInt("clients", o.clients as string, BENCH_LIMITS.secaggClients);
  const params = positiveInt("params", o.params as string, BENCH_LIMITS.secaggParams);
  const dropout = nonNegativeNumber("dropout", o.dropout as string);
  if (dropout >= 1) fail("E_CONFIG_VALUE", `--dropout is a fraction in [0, 1), got ${dropout}`);
  const neighbours =
    o.neighbours !== undefined
      ? positiveInt("neighbours", o.neighbours as string, BENCH_LIMITS.secaggClients)
      : undefined;
  const threshold =
    o.threshold !== undefined
      ? positiveInt("threshold", o.threshold as string, BENCH_LIMITS.secaggClients)
      : undefined;
  const { benchSecAgg } = await import("../../core/secagg/bench.js");
  const r = await benchSecAgg({ clients, params, dropout, neighbours, threshold });
  if (o.json) console.log(JSON.stringify(r));
  else {
    console.log(
      `${r.clients} clients x ${r.params.toLocaleString("en-US")} values, ${(r.dropout * 100).toFixed(0)}% dropout: ` +
        `one device ${r.clientMs.toFixed(1)} ms, server unmask ${r.serverMs.toFixed(1)} ms, ` +
        `${(r.bytesPerClient / 1e6).toFixed(3)} MB per device`,
    );
  }
  return 0;
}

/**
 * The CLI's log (not its output: results and tables stay on stdout): human lines on stderr, or JSON lines with
 * FLOTILLA_LOG_FORMAT=json; FLOTILLA_LOG_LEVEL filters (core/log.ts). An invalid value is E_CONFIG_INVALID.
 */
export function cliLogger(component: string, env: NodeJS.ProcessEnv = process.env): Logger {
  return loggerFromEnv(component, env, { format: "text", out: process.stderr, err: process.stderr });
}

async function runHub(o: RawOptions): Promise<number> {
  const mqttPort = nonNegativeInt("mqtt-port", o.mqttPort as string, MAX_PORT);
  const httpsPort = nonNegativeInt("https-port", o.httpsPort as string, MAX_PORT);
  const stateDir = o.stateDir as string;
  const file = path.join(".flotilla", "hub.json");
  prepareOutDir("--state-dir", stateDir);
  prepareOutDir("the connection-info directory", path.dirname(file));
  const { startLocalHub, writeHubInfo } = await import("../hub/index.js");
  const log = cliLogger("hub");
  const hub = await startLocalHub({
    // The hub's own diagnostics (refused connections, failed sends): warnings on the CLI's log.
    log: (line) => log.warn(line),
    mqttPort,
    httpsPort,
    stateDir,
    persistRegistry: true,
    onEvent: (batch) => {
      for (const e of batch) {
        const sp = e.systemProperties as unknown as Record<string, unknown>;
        console.log(`event from ${String(sp["iothub-connection-device-id"])}: ${e.body.length} bytes`);
      }
    },
  });
  writeHubInfo(hub, file);
  console.log(
    `local IoT Hub ${hub.hubName}: MQTT/TLS ${hub.mqttHost}:${hub.mqttPort}, REST https://127.0.0.1:${hub.httpsPort}`,
  );
  console.log(`connection info: ${file} (CA certificate ${hub.caCertPath}); Ctrl-C stops it`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await hub.close();
  return 0;
}

async function runDashboard(o: RawOptions): Promise<number> {
  const env = process.env;
  const s = (k: string) => (typeof o[k] === "string" ? (o[k] as string) : undefined);
  const port = nonNegativeInt("port", s("port")!, MAX_PORT);
  const interval = positiveNumber("interval", s("interval")!, 3600);
  const hubInterval = positiveNumber("hub-interval", s("hubInterval")!, 3600);
  const functionUrl = s("functionUrl") ?? (env.FLOTILLA_FUNCTION_URL || undefined);
  const functionKey = s("functionKey") ?? (env.FLOTILLA_FUNCTION_KEY || undefined);
  const hubInfo = s("hubInfo");
  const hubConnectionString =
    s("hubConnectionString") ??
    (hubInfo === undefined ? env.IOTHUB_SERVICE_CONNECTION_STRING || undefined : undefined);
  if (hubInfo !== undefined && s("hubConnectionString") !== undefined)
    fail("E_CONFIG_CONFLICT", "give --hub-info or --hub-connection-string, not both");
  if (functionUrl === undefined && hubInfo === undefined && hubConnectionString === undefined)
    fail(
      "E_DASHBOARD_CONFIG",
      "nothing to show: give --function-url (FLOTILLA_FUNCTION_URL) and/or --hub-connection-string " +
        "(IOTHUB_SERVICE_CONNECTION_STRING) or --hub-info",
    );
  const host = s("host")!;
  const { startDashboardFrom } = await import("../dashboard/index.js");
  const dashboard = await startDashboardFrom(
    {
      ...(functionUrl !== undefined ? { functionUrl } : {}),
      ...(functionKey !== undefined ? { functionKey } : {}),
      ...(hubConnectionString !== undefined ? { hubConnectionString } : {}),
      ...(s("hubCa") !== undefined ? { hubCaPath: s("hubCa") } : {}),
      ...(hubInfo !== undefined ? { hubInfo } : {}),
    },
    {
      host,
      port,
      functionIntervalMs: interval * 1000,
      hubIntervalMs: hubInterval * 1000,
      ...(s("job") !== undefined ? { jobId: s("job") } : {}),
      // Source errors, one coded line each as they appear (the page shows them too).
      log: (l) => console.error(`flotilla dashboard: ${l}`),
    },
  );
  if (!/^(127\.|::1$|localhost$)/.test(host))
    console.error(
      `flotilla dashboard: listening on ${host}: the page has no authentication; anyone who reaches the port sees the fleet`,
    );
  console.log(`dashboard: ${dashboard.url} (Ctrl-C stops it)`);
  await untilInterrupted();
  await dashboard.close();
  return 0;
}

export function buildProgram(): Command {
  const program = new Command("flotilla")
    .description("Federated learning for Azure IoT Edge device fleets")
    .version(require("../../../package.json").version as string)
    .exitOverride()
    // commander's own error output (its message, and the help it prints when a command is missing) is replaced
    // by main()'s one coded line; --help and --version go to stdout as usual. Subcommands inherit both settings.
    .configureOutput({ writeErr: () => undefined })
    .hook("preSubcommand", (_parent, sub) => {
      parsing = sub;
    });

  program
    .command("simulate")
    .description("run a federated job on a simulated fleet; writes results.json and report.html")
    .addOption(new Option("--preset <name>", `start from a preset (${Object.keys(PRESETS).join(", ")})`))
    .option(
      "--devices <n>",
      `simulated devices (at most ${SIM_LIMITS.devices})`,
      String(DEFAULT_CONFIG.devices),
    )
    .option("--rounds <n>", `federated rounds (at most ${SIM_LIMITS.rounds})`)
    .option("--clients-per-round <n>", "devices asked to train each round (at most --devices)")
    .option("--dataset <name>", "mnist | sensors | dir:PATH")
    .option(
      "--model <kind|path>",
      "mlp | cnn | cnn1d | autoencoder, or a Keras / tfjs model.json (or its directory) or a saved model directory to train from its weights",
    )
    .option(
      "--init-model <path>",
      "warm start: the initial global model from a model directory (e.g. a previous job's out/model) or a model.json of the same layout",
    )
    .option("--optimizer <name>", "on-device optimizer: sgd (default) | momentum[:BETA] (default 0.9) | adam")
    .option(
      "--engine <path>",
      "devices' training path: auto (default: fast path for presets and graphs of them, autograd otherwise) | fast | generic",
    )
    .option(
      "--partition <spec>",
      "iid | shards[:K] | dirichlet:ALPHA (sensors default: each device's own data)",
    )
    .option("--strategy <name>", "fedavg | fedprox | fedavgm | fedadam | fedyogi | fedadagrad")
    .option(
      "--aggregator <spec>",
      "robust aggregation: mean (default) | median | trimmed-mean:B | krum:F | multi-krum:F,M | geomed | centered-clip:TAU | fltrust | default; prefix norm:C+ or norm:qQ+ to bound update norms (docs/robustness.md)",
    )
    .option(
      "--root-samples <n>",
      `fltrust: the server's clean root dataset, held by no device and not in the test set (at most ${SIM_LIMITS.rootSamples}; default ${DEFAULT_ROOT_SAMPLES})`,
    )
    .option(
      "--attack <spec>",
      "simulator attacks, KIND:FRACTION[:PARAM]: sign-flip[:S] | gaussian[:SIGMA] | scaling[:LAMBDA] | alie[:Z] | ipm[:EPS] | label-flip[:CLASS] | backdoor[:POISONED]; ⌈FRACTION·devices⌉ attackers chosen by seed (memory transport; docs/robustness.md)",
    )
    .option(
      "--quality <on|off>",
      "contribution quality: per-device anomalies and reputation each round, exclusion of devices flagged repeatedly (default on; docs/robustness.md)",
    )
    .option(
      "--exclude-after <K/W[:R]>",
      "exclude a device flagged in K of its last W contributions, for R rounds (or 'end'); 'off': flag only (default 3/5:10)",
    )
    .option("--local-epochs <n>", `local epochs per round (at most ${SIM_LIMITS.localEpochs})`)
    .option("--batch-size <n>", `local mini-batch size (at most ${SIM_LIMITS.batchSize})`)
    .option("--lr <x>", "local learning rate")
    .option("--mu <x>", "FedProx proximal coefficient")
    .option("--server-lr <x>", "server learning rate (FedAvgM, FedAdam, FedYogi, FedAdagrad)")
    .option("--seed <n>", "seed for data, partitions, initialisation and sampling (0 to 2^32-1)")
    .option(
      "--workers <n>",
      `worker threads hosting the devices (0 = main thread; at most ${SIM_LIMITS.workers})`,
    )
    .option(
      "--threads <n>",
      `threads of each device's training (1 to ${MAX_THREADS}; default: the cores divided among the workers)`,
    )
    .option(
      "--samples-per-device <n>",
      `samples per simulated sensor device (at most ${SIM_LIMITS.samplesPerDevice})`,
    )
    .option(
      "--round-timeout <seconds>",
      `close a round after this long (at most ${SIM_LIMITS.roundTimeoutS})`,
    )
    .option("--target-accuracy <fraction>", "stop once test accuracy reaches this")
    .option("--out <dir>", "output directory")
    .addOption(
      new Option("--transport <name>", "memory (in-process) | iothub (the local IoT Hub stack)").choices([
        "memory",
        "iothub",
      ]),
    )
    .option(
      "--time-scale <x>",
      "iothub with --fleet-trace: virtual seconds of the trace per real second (default 600: a day in 2.4 minutes)",
    )
    .option(
      "--compression <spec>",
      "uplink codecs: none | fp16 | int8 | int4 | int2 | topk:F | randk:F | qsgd:L, chained with + (topk:0.01+int8)",
    )
    .option(
      "--downlink-compression <spec>",
      "codec of the global model sent to devices: none | fp16 | int8 | ...",
    )
    .option("--secure-aggregation", "SecAgg+: the server sees only the sum of each round's updates")
    .option(
      "--no-fleet-eval",
      "skip fleet-wide evaluation of each round's model on the devices' held-out data (docs/evaluation.md)",
    )
    .option("--secagg-neighbours <k>", "neighbours per device in the masking graph (default 2·⌈log2 n⌉)")
    .option("--secagg-threshold <t>", "shares needed to unmask a device's secrets (default ⌊k/2⌋+1)")
    .option(
      "--secagg-clip <c>",
      `update values are clipped to [-c, c] for the fixed-point encoding (default 8, at most ${SIM_LIMITS.secaggClip})`,
    )
    .option(
      "--secagg-step-timeout <seconds>",
      `deadline of each secure-aggregation step (default 30, at most ${SIM_LIMITS.secaggStepTimeoutS})`,
    )
    .option(
      "--dp-noise <z>",
      `differential privacy: noise multiplier z (noise std = z × clip norm; at most ${SIM_LIMITS.dpNoise})`,
    )
    .option(
      "--dp-clip <c>",
      `L2 clip norm of each update (at most ${SIM_LIMITS.dpClip}), or 'adaptive' (tracks the median update norm privately)`,
    )
    .option("--dp-delta <d>", "δ of the (ε, δ) guarantee (default 1e-5)")
    .option("--dp-epsilon-budget <e>", "stop before a round that would spend more than ε")
    .option(
      "--dp-placement <where>",
      "central (server adds noise) | distributed (devices, needs --secure-aggregation) | local",
    )
    .option("--dp-target-quantile <g>", "adaptive clipping: quantile of update norms to track (default 0.5)")
    .option(
      "--dp-clip-count-stddev <s>",
      "adaptive clipping: noise std of the clipped count (default clients/20)",
    )
    .option(
      "--dp-min-survivors <n>",
      "distributed: fewest updates a round may sum (default ⌈0.8 × clients per round⌉)",
    )
    .option(
      "--dropout <p>",
      "fraction of each round's participants that vanish at a random secure-aggregation step",
    )
    .option(
      "--fleet-trace <source>",
      "device trace: FILE | synthetic | synthetic:KEY=VALUE,...; memory: runs in its virtual time (docs/simulation.md); iothub: the devices' links and training speed follow it (docs/fleet-traces.md)",
    )
    .option(
      "--selection <spec>",
      "participant selection: random | deadline | oort[:KEY=VALUE,...] (default random)",
    )
    .option(
      "--prometheus [port]",
      "--transport iothub: run Debian's Prometheus over the fleet's modules and the Function (port: default 9090, 0 any free)",
    )
    .option("--mode <mode>", "sync (rounds, default) | async (FedBuff; needs --fleet-trace)")
    .option("--concurrency <c>", "async: devices kept training at all times (default --clients-per-round)")
    .option("--buffer <k>", "async: updates per aggregation (default min(10, concurrency))")
    .option("--max-staleness <s>", "async: refuse updates staler than this many model versions")
    .option("--staleness <fn>", "async: staleness weight poly:0.5 (default) | hinge:a,b | const")
    .option(
      "--round-deadline <seconds>",
      `with --fleet-trace: each round's deadline in virtual seconds (default --round-timeout; at most ${SIM_LIMITS.roundDeadlineS})`,
    )
    .option(
      "--virtual-hours <h>",
      "with --fleet-trace: stop after the round that ends at or past this many virtual hours (e.g. 24: a day of the fleet)",
    )
    .option(
      "--dashboard [port]",
      `iothub: serve the live fleet dashboard on 127.0.0.1 while the job runs (default port ${DEFAULT_DASHBOARD_PORT}; 0 = any free port)`,
    )
    .option("--keep-dashboard", "with --dashboard: after the job, keep serving its final state until Ctrl-C")
    .action(async (opts: RawOptions, cmd: Command) => {
      // --devices has a display default; only count it when given.
      if (cmd.getOptionValueSource("devices") === "default") delete opts.devices;
      exitCode = await runSimulate(opts);
    });

  program
    .command("hub")
    .description(
      "start the local IoT Hub alone; writes .flotilla/hub.json for any azure-iot-device / azure-iothub client",
    )
    .option("--mqtt-port <n>", "MQTT over TLS port (0 = any free port)", "8883")
    .option("--https-port <n>", "service REST API port (0 = any free port)", "8443")
    .option("--state-dir <dir>", "CA, certificates and registry", ".flotilla/hub")
    .action(async (opts: RawOptions) => {
      exitCode = await runHub(opts);
    });

  program
    .command("dashboard")
    .description(
      "serve the live fleet dashboard over the aggregation Function's job API and the fleet's module twins (docs/dashboard.md)",
    )
    .option("--function-url <url>", "the Function app's base URL (default: $FLOTILLA_FUNCTION_URL)")
    .option(
      "--function-key <key>",
      "a function key of its job API (default: $FLOTILLA_FUNCTION_KEY; prefer the variable: arguments show in ps)",
    )
    .option(
      "--hub-connection-string <cs>",
      "an IoT Hub service connection string with registry read (default: $IOTHUB_SERVICE_CONNECTION_STRING)",
    )
    .option("--hub-ca <file>", "the CA certificate of a local hub (a connection string with GatewayHostName)")
    .option(
      "--hub-info <file>",
      "a local hub's connection info, as `flotilla hub` writes it (.flotilla/hub.json)",
    )
    .option("--job <id>", "follow this job (default: the running one, else the last updated)")
    .option("--host <address>", "address to bind (default 127.0.0.1: this machine only)", "127.0.0.1")
    .option("--port <n>", "port (0 = any free port)", String(DEFAULT_DASHBOARD_PORT))
    .option("--interval <seconds>", "poll period of the Function's API", "2")
    .option(
      "--hub-interval <seconds>",
      "poll period of the twin query (IoT Hub meters queries: an S1 unit allows 20 a minute)",
      "10",
    )
    .action(async (opts: RawOptions) => {
      exitCode = await runDashboard(opts);
    });

  program
    .command("export")
    .description("export a saved model directory (spec.json, weights.bin, layout.json) for inference")
    .requiredOption(
      "--model <path>",
      "model directory, e.g. the simulate output's model/, or a Keras / tfjs model.json (or its directory)",
    )
    .requiredOption("--format <name>", "onnx")
    .option("--quantize <type>", "int8: int8 weights (about 4x smaller)")
    .requiredOption("--out <file>", "output file")
    .action(async (opts: RawOptions) => {
      exitCode = await runExport(opts);
    });

  const bench = program
    .command("bench")
    .description("measure speed")
    .hook("preSubcommand", (_parent, sub) => {
      parsing = sub;
    });
  bench
    .command("train")
    .description("local training throughput (samples/s)")
    .option(
      "--model <kind|path>",
      "mlp | cnn | cnn1d | autoencoder, or a model.json / model directory (synthetic data of its input shape)",
      "mlp",
    )
    .option("--batch-size <n>", `mini-batch size (at most ${BENCH_LIMITS.trainBatchSize})`, "10")
    .option("--seconds <s>", `measuring time (at most ${BENCH_LIMITS.seconds})`)
    .option("--threads <n>", "threads of the wasm backend (1 to 8; default: the cores, at most 4)")
    .option(
      "--reference <name>",
      "also measure the same training on PyTorch CPU (pytorch) and print the ratio",
    )
    .option("--reference-threads <n>", "PyTorch's threads with --reference (default 2)")
    .option(
      "--engine <path>",
      "training path: auto (default: what training picks) | fast (presets and graphs of them) | generic (autograd)",
    )
    .option("--json", "print one JSON object")
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchTrain(opts);
    });
  bench
    .command("aggregate")
    .description("streaming FedAvg aggregation throughput")
    .option("--updates <n>", `updates per round (at most ${BENCH_LIMITS.updates})`, "100")
    .option("--params <n>", `parameters per update (at most ${BENCH_LIMITS.params})`, "1000000")
    .option(
      "--dp",
      "also run central DP (clip + noise) on the same data: {gbPerSecond, dpGbPerSecond, ratio}",
    )
    .option("--json", "print one JSON object")
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchAggregate(opts);
    });
  bench
    .command("secagg")
    .description(
      "secure aggregation (SecAgg+): one device's compute, the server's unmasking, bytes per device",
    )
    .option("--clients <n>", `participants (3 to ${BENCH_LIMITS.secaggClients})`, "100")
    .option("--params <n>", `values per update (at most ${BENCH_LIMITS.secaggParams})`, "100000")
    .option("--dropout <p>", "fraction of participants vanishing at a random step", "0.1")
    .option("--neighbours <k>", "neighbours per device (default 2·⌈log2 n⌉)")
    .option("--threshold <t>", "shares needed to unmask (default ⌊k/2⌋+1)")
    .option("--json", "print one JSON object")
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchSecAgg(opts);
    });
  bench
    .command("compress")
    .description("update codecs: compression ratio, encode/decode speed, and the aggregator's decode+sum")
    .option("--params <n>", `values per update (at most ${BENCH_LIMITS.params})`, String(DEFAULT_BENCH_SIZE))
    .option("--repeats <n>", `timed repeats (median; at most ${BENCH_LIMITS.repeats})`, "5")
    .option("--codecs <list>", "comma-separated codec specs (default: a standard sweep)")
    .option("--json", "print one JSON array")
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchCompress(opts);
    });
  bench
    .command("stack")
    .description(
      "the IoT Hub path over the local stack: round wall time, training span, protocol overhead (medians), peak memory",
    )
    .option("--devices <n>", `devices, all taking part in every round (at most ${SIM_LIMITS.devices})`, "10")
    .option("--rounds <n>", `rounds (at most ${SIM_LIMITS.rounds})`, "4")
    .option("--out <dir>", "keep the run's state here (default: a temporary directory, removed)")
    .option(
      "--json",
      "print one JSON object {devices, rounds, roundWallMs, trainingSpanMs, overheadMs, peakRssBytes}",
    )
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchStack(opts);
    });
  bench
    .command("metrics")
    .description(
      "what the modules' Prometheus metrics cost a training device: CPU per trained sample with the four modules' " +
        "registries updated and scraped every S seconds vs none (medians of interleaved repeats, overhead %)",
    )
    .option("--seconds <s>", `training time per arm and repeat (at most ${BENCH_LIMITS.seconds})`, "30")
    .option("--repeats <n>", `interleaved repeats (at most ${BENCH_LIMITS.repeats})`, "3")
    .option("--intervals <list>", "scrape intervals to measure, seconds, comma-separated", "15,1")
    .option("--threads <n>", "threads of the wasm backend (1 to 8)", "1")
    .option("--json", "print one JSON object")
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchMetrics(opts);
    });
  bench
    .command("robust")
    .description(
      "robust aggregators (docs/robustness.md): one round's time per rule next to the plain streaming mean " +
        "(same process, interleaved runs, medians), and the memory a round holds",
    )
    .option("--updates <n>", `updates per round (at most ${BENCH_LIMITS.updates})`, "100")
    .option("--params <n>", `parameters per update (at most ${BENCH_LIMITS.params})`, "1000000")
    .option("--repeats <n>", `timed runs per rule (median; at most ${BENCH_LIMITS.repeats})`, "3")
    .option(
      "--rules <specs>",
      "aggregator specs separated by spaces or ';' (norm:C+RULE: a fixed bound at the median norm; default: every rule)",
    )
    .option("--json", "print one JSON object")
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchRobust(opts);
    });
  bench
    .command("robust-table")
    .description(
      "the Byzantine-robustness table (docs/robustness.md): every attack x every aggregator on simulated jobs " +
        "(20% attackers, all devices in every round), final accuracy and backdoor success; resumes from --out",
    )
    .option("--datasets <list>", "comma-separated: mnist (mlp, IID), sensors (default both)")
    .option(
      "--attacks <list>",
      "comma-separated kind[:param]: none, sign-flip, gaussian, scaling, label-flip, alie, ipm:0.1, ipm:100, backdoor (default all)",
    )
    .option(
      "--aggregators <list>",
      "aggregator specs separated by commas, spaces or ';' (multi-krum:F,M keeps its comma; default: every rule and the default's candidates)",
    )
    .option("--attackers <fraction>", "fraction of the devices that attack (default 0.2)")
    .option("--devices <n>", "devices, all in every round (default 20)")
    .option(
      "--rounds <n>",
      "rounds of every job (default: mnist 10, sensors 8; clean FedAvg reaches about 91% and 92%)",
    )
    .option("--local-epochs <n>", "local epochs per round (default 1)")
    .option("--seeds <list>", "comma-separated seeds; a cell's accuracy is their mean (default 42)")
    .option("--workers <n>", "worker threads of each job (default 0: the devices train in the main thread)")
    .option("--out <dir>", "where the table's JSON, markdown and HTML go (default bench-out/robust-table)")
    .option("--png [file]", "also a PNG of the heatmap (default <out>/robust-table.png; needs chromium)")
    .action(async (opts: RawOptions) => {
      exitCode = await runBenchRobustTable(opts);
    });
  registerPrivacyCommand(program);
  registerFleetTraceCommand(program);
  registerFleetCommand(program, (code) => {
    exitCode = code;
  });
  return program;
}

let exitCode = 0;
/** The command being parsed (program, then each subcommand as commander dispatches to it). */
let parsing: Command | undefined;

/** commander's error codes -> ours (E_CONFIG_*: configuration and CLI input, core/errors.ts). */
const COMMANDER_CODES: Record<string, string> = {
  "commander.unknownOption": "E_CONFIG_UNKNOWN_OPTION",
  "commander.unknownCommand": "E_CONFIG_UNKNOWN_COMMAND",
  "commander.missingArgument": "E_CONFIG_MISSING_ARGUMENT",
  "commander.optionMissingArgument": "E_CONFIG_MISSING_ARGUMENT",
  "commander.missingMandatoryOptionValue": "E_CONFIG_MISSING_OPTION",
  "commander.excessArguments": "E_CONFIG_UNEXPECTED_ARGUMENT",
  "commander.invalidArgument": "E_CONFIG_VALUE",
  "commander.conflictingOption": "E_CONFIG_CONFLICT",
};

/** The one-line `E_CODE: message` for a commander parse error (not for --help/--version, which exit 0). */
function commanderErrorLine(e: CommanderError, program: Command): string {
  if (e.code === "commander.help") {
    // commander printed (to our silenced stderr) a command's help because no subcommand was given, or because
    // `help NAME` named no command.
    const cmd = parsing ?? program;
    if (cmd.args[0] === "help" && cmd.args[1] !== undefined)
      return `E_CONFIG_UNKNOWN_COMMAND: unknown command '${cmd.args[1]}'`;
    const names: string[] = [];
    for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
    const full = names.join(" ");
    return (
      `E_CONFIG_MISSING_COMMAND: '${full}' needs a command: ${cmd.commands.map((c) => c.name()).join(", ")} ` +
      `(${full} --help describes them)`
    );
  }
  const code = COMMANDER_CODES[e.code] ?? "E_CONFIG_USAGE";
  // "error: unknown option '--device'\n(Did you mean --devices?)" -> one line.
  const message = e.message
    .replace(/^error: /, "")
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean)
    .join(" ");
  return `${code}: ${message}`;
}

/** Entry point used by bin/flotilla.js. Returns the process exit code; never lets a stack trace reach the user. */
export async function main(argv: string[]): Promise<number> {
  exitCode = 0;
  parsing = undefined;
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.exitCode === 0)
        return 0;
      console.error(`flotilla: ${commanderErrorLine(e, program)}`);
      return 2;
    }
    if (isFlotillaError(e)) {
      console.error(`flotilla: ${e.code}: ${e.message}`);
      return 2;
    }
    console.error(`flotilla: E_INTERNAL: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}
