/**
 * Protocol overhead of the IoT Hub path: round wall time (the Function's round open → close) minus the round's
 * training critical path (first local training start → last end in the fleet's shared training workers), for
 * fleets of 10 and 100 devices with every device taking part. Also the peak resident memory of the whole local
 * stack (this process with its worker threads + the Azurite child process).
 *
 *   node dist/scripts/bench-stack.js [devices ...]       (default: 10 100)
 *
 * Writes bench-out/stack-<devices>.json.
 */
import * as fs from "node:fs";
import { DEFAULT_CONFIG, positiveInt, SIM_LIMITS } from "../local/sim/config";
import { errorCode, errorMessage } from "../core/errors";
import { simulateOverIotHub } from "../local/stack/iothub-simulate";

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

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

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
}

async function main(): Promise<void> {
  const counts = process.argv.slice(2).map((c) => positiveInt("devices", c, SIM_LIMITS.devices));
  for (const devices of counts.length ? counts : [10, 100]) {
    let peak = 0;
    const sampler = setInterval(() => {
      const total = process.memoryUsage().rss + childPids().reduce((a, p) => a + rssOf(p), 0);
      peak = Math.max(peak, total);
    }, 200);
    const t0 = Date.now();
    const r = await simulateOverIotHub(
      {
        ...DEFAULT_CONFIG,
        devices,
        clientsPerRound: devices,
        rounds: 4,
        samplesPerDevice: 50,
        workers: 2,
        roundTimeoutMs: 300_000,
        out: `bench-out/stack-${devices}`,
      },
      {
        onRoundEnd: (s) =>
          console.error(
            `${devices} devices, round ${s.round}: ${s.durationMs} ms, training ${s.slowestTrainMs} ms`,
          ),
      },
    );
    clearInterval(sampler);
    // Round 1 includes the fleet's first model download and JIT warm-up; report rounds 2.. separately too.
    const overheads = r.rounds.map((s) => s.durationMs - s.slowestTrainMs);
    const out = {
      devices,
      rounds: r.rounds.map((s) => ({
        round: s.round,
        durationMs: s.durationMs,
        trainingSpanMs: s.slowestTrainMs,
      })),
      overheadMsMedian: median(overheads),
      overheadMsMedianAfterFirst: median(overheads.slice(1)),
      peakRssBytes: peak,
      wallS: (Date.now() - t0) / 1000,
      finalAccuracy: r.final.accuracy,
    };
    fs.mkdirSync("bench-out", { recursive: true });
    fs.writeFileSync(`bench-out/stack-${devices}.json`, JSON.stringify(out, null, 2));
    console.log(JSON.stringify(out));
  }
}

main().catch((e) => {
  console.error(`bench-stack: ${errorCode(e)}: ${errorMessage(e)}`);
  process.exit(1);
});
