/**
 * Fleet benchmark (issue 13): virtual time to accuracy of participant selection and asynchronous rounds on a
 * heterogeneous, intermittent synthetic fleet, against random selection with synchronous rounds:
 *
 *   random + sync     the baseline (FedAvg's uniform draw among the devices online now)
 *   deadline + sync   FedCS (Nishio & Yonetani 2019)
 *   oort + sync       Oort (Lai et al., OSDI 2021)
 *   oort + async      Oort picking for FedBuff (Nguyen et al., AISTATS 2022), C = 2 × clients per round, K = C / 2
 *
 *   node dist/scripts/bench-fleet.js [mnist-shards|sensors ...] [--rounds N] [--devices N] [--fleet SPEC]
 *        [--target F] [--deadline S] [--json]
 *
 * The fleet is `synthetic` (docs/fleet-traces.md: speed and bandwidth lognormal with p90/p10 = 10×, 30% of the
 * devices intermittent with ~30-minute sessions and a day/night cycle, a 20-minute nightly maintenance window) over
 * 24 hours, replayed cyclically. Every run has the same seed, data, model and rounds budget; sync rounds close at
 * `--deadline` virtual seconds. Prints the virtual time to `--target` test accuracy of each run and its speed-up
 * over random + sync (a run that never reaches it is reported as a miss), writes bench-out/fleet-<scenario>.json
 * and bench-out/fleet/<scenario>.html (accuracy against virtual time, all runs on one chart).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { errorCode, errorMessage, fail } from "../core/errors";
import {
  DEFAULT_CONFIG,
  nonNegativeNumber,
  positiveInt,
  positiveNumber,
  SIM_LIMITS,
  validateConfig,
  type SimConfig,
} from "../local/sim/config";
import { simulate, type SimulationResult } from "../local/sim/simulate";
import { writeFleetComparison } from "../local/report/fleet-compare";

interface Scenario {
  readonly config: Partial<SimConfig>;
  readonly rounds: number;
  readonly target: number;
  /** Virtual seconds per synchronous round. */
  readonly deadline: number;
}

const SCENARIOS: Record<string, Scenario> = {
  // McMahan et al. 2017's pathological non-IID split: 100 clients, C = 0.1, E = 5, B = 10.
  "mnist-shards": {
    config: {
      dataset: "mnist",
      model: "mlp",
      partition: "shards",
      devices: 100,
      clientsPerRound: 10,
      localEpochs: 5,
      batchSize: 10,
      lr: 0.05,
    },
    rounds: 100,
    target: 0.9,
    deadline: 300,
  },
  sensors: {
    config: { dataset: "sensors", model: "mlp", partition: "natural", devices: 100, clientsPerRound: 10 },
    rounds: 60,
    target: 0.93,
    deadline: 120,
  },
};

/** The compared settings, in order; the first is the reference of the ratios. */
const RUNS: { label: string; patch: (c: SimConfig) => Partial<SimConfig> }[] = [
  { label: "random+sync", patch: () => ({ selection: "random" }) },
  { label: "deadline+sync", patch: () => ({ selection: "deadline" }) },
  { label: "oort+sync", patch: () => ({ selection: "oort" }) },
  {
    label: "oort+async",
    patch: (c) => ({
      selection: "oort",
      mode: "async",
      concurrency: Math.min(c.devices, 2 * c.clientsPerRound),
      buffer: Math.max(1, Math.min(c.devices, 2 * c.clientsPerRound) >> 1),
    }),
  },
];

export interface FleetBenchRow {
  scenario: string;
  run: string;
  target: number;
  timeToTargetS: number | null;
  /** Baseline time to target ÷ this run's (null when either never reached it). */
  speedup: number | null;
  /** When the baseline missed the target and this run reached it: the baseline's whole virtual time ÷ this run's time to target, a lower bound of the speed-up. */
  speedupAtLeast?: number;
  finalAccuracy: number;
  rounds: number;
  virtualTimeS: number;
  /** Aggregated updates per device over the run: min / median / max. */
  participation: { min: number; median: number; max: number } | null;
  /** Times each device was picked (ordered) over the run: min / median / max (the participation floor's measure). */
  selected: { min: number; median: number; max: number } | null;
  /** Longest run of rounds (async: versions) a device was offered and not picked: min / median / max (the floor's measure). */
  longestWait: { min: number; median: number; max: number } | null;
  wallS: number;
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes("--json");
  if (json) args.splice(args.indexOf("--json"), 1);
  // Every flag is parsed before any run: a bad value is one coded line.
  const raw = {
    rounds: flag(args, "--rounds"),
    devices: flag(args, "--devices"),
    fleet: flag(args, "--fleet"),
    target: flag(args, "--target"),
    deadline: flag(args, "--deadline"),
  };
  const rounds = raw.rounds !== undefined ? positiveInt("rounds", raw.rounds, SIM_LIMITS.rounds) : undefined;
  const devices =
    raw.devices !== undefined ? positiveInt("devices", raw.devices, SIM_LIMITS.devices) : undefined;
  const target = raw.target !== undefined ? nonNegativeNumber("target", raw.target) : undefined;
  const deadline =
    raw.deadline !== undefined
      ? positiveNumber("deadline", raw.deadline, SIM_LIMITS.roundDeadlineS)
      : undefined;
  const names = args.length ? args : Object.keys(SCENARIOS);
  for (const n of names)
    if (!SCENARIOS[n])
      fail("E_CONFIG_VALUE", `unknown scenario '${n}' (expected ${Object.keys(SCENARIOS).join(", ")})`);
  fs.mkdirSync(path.join("bench-out", "fleet"), { recursive: true });
  const all: FleetBenchRow[] = [];
  for (const name of names) {
    const sc = SCENARIOS[name];
    const base: SimConfig = {
      ...DEFAULT_CONFIG,
      ...sc.config,
      ...(devices !== undefined
        ? { devices, clientsPerRound: Math.min(devices, sc.config.clientsPerRound!) }
        : {}),
      rounds: rounds ?? sc.rounds,
      fleetTrace: raw.fleet ?? "synthetic",
      roundDeadlineS: deadline ?? sc.deadline,
      // Every run goes its whole budget (no early stop), so the final accuracies compare; the time to the target
      // is read from its rounds (the first round at or above it).
      targetAccuracy: 0,
    };
    const goal = target ?? sc.target;
    const results: { label: string; result: SimulationResult }[] = [];
    for (const run of RUNS) {
      const config = validateConfig({
        ...base,
        ...run.patch(base),
        out: path.join("bench-out", "fleet", `${name}-${run.label.replace("+", "-")}`),
      });
      const t0 = Date.now();
      const result = await simulate(config, {
        onRoundEnd: (s) => {
          if (s.round % 10 === 0)
            console.error(
              `${name} ${run.label} round ${s.round}: ${(s.accuracy * 100).toFixed(2)}% at ` +
                `${((s.virtualEndS ?? 0) / 3600).toFixed(3)} h virtual (${((Date.now() - t0) / 1000).toFixed(0)} s)`,
            );
        },
      });
      results.push({ label: run.label, result });
    }
    const reach = (r: SimulationResult): number | null =>
      r.rounds.find((x) => x.accuracy >= goal)?.virtualEndS ?? null;
    const ref = reach(results[0].result);
    const refSpan = results[0].result.final.virtualTimeS ?? 0;
    for (const { label, result: r } of results) {
      const t = reach(r);
      const row: FleetBenchRow = {
        scenario: name,
        run: label,
        target: goal,
        timeToTargetS: t,
        speedup: ref !== null && t !== null && t > 0 ? ref / t : null,
        ...(ref === null && t !== null && t > 0 ? { speedupAtLeast: refSpan / t } : {}),
        finalAccuracy: r.final.accuracy,
        rounds: r.final.rounds,
        virtualTimeS: r.final.virtualTimeS ?? 0,
        participation: r.participation?.completed ?? null,
        selected: r.participation?.selected ?? null,
        longestWait: r.participation?.longestWait ?? null,
        wallS: r.final.wallMs / 1000,
      };
      all.push(row);
      if (!json)
        console.log(
          `${name}\t${label.padEnd(14)}\ttime to ${(row.target * 100).toFixed(0)}%: ` +
            `${t === null ? "MISS (not reached)" : `${(t / 3600).toFixed(3)} h`}\t` +
            `${row.speedup !== null ? `${row.speedup.toFixed(2)}x vs random+sync` : row.speedupAtLeast !== undefined ? `>= ${row.speedupAtLeast.toFixed(2)}x (random+sync missed)` : ""}\t` +
            `final ${(row.finalAccuracy * 100).toFixed(2)}% after ${row.rounds}\t` +
            `updates/device min ${row.participation?.min} median ${row.participation?.median} max ${row.participation?.max}\t` +
            `picks/device min ${row.selected?.min} median ${row.selected?.median} max ${row.selected?.max}\t` +
            `wall ${row.wallS.toFixed(0)} s`,
        );
    }
    fs.writeFileSync(
      path.join("bench-out", `fleet-${name}.json`),
      JSON.stringify(
        all.filter((r) => r.scenario === name),
        null,
        2,
      ),
    );
    writeFleetComparison(
      path.join("bench-out", "fleet", `${name}.html`),
      results,
      `Flotilla fleet comparison: ${name} on ${base.fleetTrace}`,
    );
  }
  if (json) console.log(JSON.stringify(all));
}

main().catch((e) => {
  process.stderr.write(`bench-fleet: ${errorCode(e)}: ${errorMessage(e)}\n`);
  process.exit(1);
});
