/**
 * The IoT Hub path's protocol overhead (`flotilla bench stack`, scripts/bench-stack.ts): a federated job over the
 * whole local stack in one process (embedded IoT Hub over MQTT/TLS, Azurite child process, the Function's handlers,
 * every device running the real modules on its own ModuleClients), every device taking part in every round.
 *
 * Per round: wall time = the Function's round open → close (RoundRecord.durationMs); training span = the round's
 * training critical path (first local training start → last end in the fleet's shared training workers);
 * protocol overhead = wall time − training span. Reported as medians over the rounds, with the peak resident
 * memory of the whole stack (this process with its worker threads + the Azurite child process, sampled every
 * 200 ms from /proc).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG } from "../sim/config";
import { simulateOverIotHub } from "./iothub-simulate";

export interface BenchStackOptions {
  readonly devices: number;
  readonly rounds: number;
  /** Output directory (the stack's state goes under `.stack`, removed first so every run starts fresh). Default: a
   *  temporary directory removed afterwards. */
  readonly out?: string;
  /** Local samples per device (default 50). */
  readonly samplesPerDevice?: number;
  /** Training worker threads (default 2). */
  readonly workers?: number;
  /** Progress lines (one per round). */
  readonly onProgress?: (line: string) => void;
}

export interface BenchStackRound {
  readonly round: number;
  readonly wallMs: number;
  readonly trainingSpanMs: number;
  readonly overheadMs: number;
}

/** `flotilla bench stack --json`: medians over the rounds, and the peak memory of the whole stack. */
export interface BenchStackResult {
  readonly devices: number;
  readonly rounds: number;
  readonly roundWallMs: number;
  readonly trainingSpanMs: number;
  readonly overheadMs: number;
  readonly peakRssBytes: number;
}

export interface BenchStackReport extends BenchStackResult {
  readonly perRound: readonly BenchStackRound[];
  /** Median overhead of rounds 2.. (round 1 includes the fleet's first model download and JIT warm-up). */
  readonly overheadMsAfterFirst: number;
  readonly wallS: number;
  readonly finalAccuracy: number;
}

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Direct children of this process (Azurite), from /proc; none where /proc is missing. */
function childPids(): number[] {
  try {
    return fs
      .readFileSync(`/proc/${process.pid}/task/${process.pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** The median (the lower middle value of an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

export async function benchStack(o: BenchStackOptions): Promise<BenchStackReport> {
  const temp =
    o.out === undefined ? fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-bench-stack-")) : undefined;
  const out = o.out ?? temp!;
  // A rerun into the same directory would find the previous run's hub state (twins and queues of its job).
  fs.rmSync(path.join(out, ".stack"), { recursive: true, force: true });
  let peak = 0;
  const sample = () => {
    const total = process.memoryUsage().rss + childPids().reduce((a, p) => a + rssOf(p), 0);
    peak = Math.max(peak, total);
  };
  const sampler = setInterval(sample, 200);
  const t0 = Date.now();
  try {
    const r = await simulateOverIotHub(
      {
        ...DEFAULT_CONFIG,
        devices: o.devices,
        clientsPerRound: o.devices,
        rounds: o.rounds,
        samplesPerDevice: o.samplesPerDevice ?? 50,
        workers: o.workers ?? 2,
        roundTimeoutMs: 300_000,
        out,
      },
      {
        onRoundEnd: (s) =>
          o.onProgress?.(
            `${o.devices} devices, round ${s.round}/${o.rounds}: ${s.durationMs} ms, training ${s.slowestTrainMs} ms, ` +
              `overhead ${s.durationMs - s.slowestTrainMs} ms`,
          ),
      },
    );
    sample();
    const perRound = r.rounds.map((s) => ({
      round: s.round,
      wallMs: s.durationMs,
      trainingSpanMs: s.slowestTrainMs,
      overheadMs: s.durationMs - s.slowestTrainMs,
    }));
    return {
      devices: o.devices,
      rounds: perRound.length,
      roundWallMs: median(perRound.map((x) => x.wallMs)),
      trainingSpanMs: median(perRound.map((x) => x.trainingSpanMs)),
      overheadMs: median(perRound.map((x) => x.overheadMs)),
      peakRssBytes: peak,
      perRound,
      overheadMsAfterFirst: median(perRound.slice(1).map((x) => x.overheadMs)),
      wallS: (Date.now() - t0) / 1000,
      finalAccuracy: r.final.accuracy,
    };
  } finally {
    clearInterval(sampler);
    if (temp) fs.rmSync(temp, { recursive: true, force: true });
  }
}

/** The `--json` object: exactly the documented keys. */
export function benchStackJson(r: BenchStackResult): BenchStackResult {
  return {
    devices: r.devices,
    rounds: r.rounds,
    roundWallMs: r.roundWallMs,
    trainingSpanMs: r.trainingSpanMs,
    overheadMs: r.overheadMs,
    peakRssBytes: r.peakRssBytes,
  };
}
