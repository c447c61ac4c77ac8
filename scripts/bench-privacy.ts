/**
 * Differential-privacy benchmark: test accuracy against ε (δ = 1e-5) for DP-FedAvg, with and without secure
 * aggregation, on the synthetic sensor fleet and on MNIST (mlp).
 *
 *   node dist/scripts/bench-privacy.js [sensors|mnist|mnist-100 ...] [--epsilons 1,2,4,8] [--modes plain,secure] [--rounds N]
 *
 * For each ε the noise multiplier z is solved with the RDP accountant (core/privacy/rdp.ts, tight conversion) for
 * the scenario's q = clients per round / fleet size and round count, so every run spends exactly its ε by the last
 * round. "plain" = central placement (the server clips and noises); "secure" = SecAgg+ with distributed noise
 * (each device adds N(0, (zC)²/n) before masking, n' = clients per round). Each scenario also runs once without DP.
 *
 * Writes bench-out/privacy-<scenario>.json (merged with earlier runs) and bench-out/privacy/report.html.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { solveNoiseMultiplier } from "../core/privacy/rdp";
import { DEFAULT_CONFIG, positiveInt, SIM_LIMITS, type SimConfig } from "../local/sim/config";
import { errorCode, errorMessage } from "../core/errors";
import { simulate } from "../local/sim/simulate";
import { chartLibrary, esc } from "../local/report/report";

interface Scenario {
  readonly config: Partial<SimConfig>;
  readonly label: string;
}

const DELTA = 1e-5;
const SCENARIOS: Record<string, Scenario> = {
  sensors: {
    label: "sensors (mlp, 1000 devices, 100 per round)",
    config: {
      dataset: "sensors",
      model: "mlp",
      partition: "natural",
      devices: 1000,
      clientsPerRound: 100,
      rounds: 30,
      localEpochs: 1,
      dpClip: 1,
    },
  },
  mnist: {
    label: "MNIST (mlp, iid, 1000 devices × 8 samples, 100 per round)",
    config: {
      dataset: "mnist",
      model: "mlp",
      partition: "iid",
      devices: 1000,
      clientsPerRound: 100,
      rounds: 30,
      localEpochs: 2,
      batchSize: 8,
      lr: 0.1,
      dpClip: 0.5,
    },
  },
};
// The same MNIST job trained for 100 rounds: each ε then buys less noise per round, the model more rounds.
SCENARIOS["mnist-100"] = {
  label: "MNIST (mlp, iid, 1000 devices × 8 samples, 100 per round, 100 rounds)",
  config: { ...SCENARIOS.mnist!.config, rounds: 100 },
};

export interface PrivacyRun {
  scenario: string;
  label: string;
  /** "none" (no DP), "plain" (central noise) or "secure" (SecAgg+ with distributed noise). */
  mode: "none" | "plain" | "secure";
  targetEpsilon: number | null;
  epsilon: number | null;
  noiseMultiplier: number | null;
  clip: number | null;
  rounds: number;
  samplingRate: number;
  finalAccuracy: number;
  /** Mean test accuracy of the last five rounds (DP noise makes single rounds jumpy). */
  lastFiveAccuracy: number;
  accuracyPerRound: number[];
  wallS: number;
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const epsilons = (flag(args, "--epsilons") ?? "1,2,4,8").split(",").map(Number);
  const modes = (flag(args, "--modes") ?? "none,plain,secure").split(",") as PrivacyRun["mode"][];
  const roundsOverride = flag(args, "--rounds");
  const roundsParsed =
    roundsOverride !== undefined ? positiveInt("rounds", roundsOverride, SIM_LIMITS.rounds) : undefined;
  const names = args.length ? args : ["sensors", "mnist"]; // mnist-100 (about 40 min) on request
  fs.mkdirSync("bench-out/privacy", { recursive: true });
  for (const name of names) {
    const sc = SCENARIOS[name];
    if (!sc) throw new Error(`unknown scenario '${name}' (expected ${Object.keys(SCENARIOS).join(", ")})`);
    const base: SimConfig = { ...DEFAULT_CONFIG, ...sc.config, workers: 2, secaggStepTimeoutMs: 300_000 };
    if (roundsParsed !== undefined) base.rounds = roundsParsed;
    const q = base.clientsPerRound / base.devices;
    const file = `bench-out/privacy-${name}.json`;
    const stored: PrivacyRun[] = fs.existsSync(file)
      ? (JSON.parse(fs.readFileSync(file, "utf8")) as PrivacyRun[])
      : [];
    const runs: PrivacyRun[] = [];
    const plan: { mode: PrivacyRun["mode"]; eps: number | null }[] = [];
    if (modes.includes("none")) plan.push({ mode: "none", eps: null });
    for (const mode of modes.filter((m) => m !== "none"))
      for (const eps of epsilons) plan.push({ mode, eps });
    for (const { mode, eps } of plan) {
      const z =
        eps === null
          ? null
          : solveNoiseMultiplier({ targetEpsilon: eps, q, steps: base.rounds, delta: DELTA }).noiseMultiplier;
      const config: SimConfig = {
        ...base,
        ...(z === null
          ? { dpNoise: undefined, dpClip: undefined }
          : {
              dpNoise: z,
              dpDelta: DELTA,
              dpPlacement: mode === "secure" ? "distributed" : "central",
              dpMinSurvivors: mode === "secure" ? base.clientsPerRound : undefined,
            }),
        secureAggregation: mode === "secure",
        out: `bench-out/privacy/${name}-${mode}${eps === null ? "" : `-eps${eps}`}`,
      };
      const t0 = Date.now();
      const r = await simulate(config, {
        onRoundEnd: (s) => {
          if (s.round % 10 === 0 || s.round === config.rounds)
            console.error(
              `${name} ${mode} ε=${eps ?? "∞"} round ${s.round}: ${(s.accuracy * 100).toFixed(2)}% ` +
                `(${((Date.now() - t0) / 1000).toFixed(0)} s)`,
            );
        },
      });
      const acc = r.rounds.map((x) => x.accuracy);
      const last5 = acc.slice(-5);
      const run: PrivacyRun = {
        scenario: name,
        label: sc.label,
        mode,
        targetEpsilon: eps,
        epsilon: r.privacy ? r.privacy.epsilon : null,
        noiseMultiplier: z,
        clip: z === null ? null : (config.dpClip as number),
        rounds: r.final.rounds,
        samplingRate: q,
        finalAccuracy: r.final.accuracy,
        lastFiveAccuracy: last5.reduce((a, x) => a + x, 0) / last5.length,
        accuracyPerRound: acc,
        wallS: r.final.wallMs / 1000,
      };
      runs.push(run);
      console.log(
        `${name}\t${mode}\tε=${eps ?? "∞"}\tz=${z?.toFixed(4) ?? "-"}\tspent ε=${run.epsilon?.toFixed(4) ?? "-"}\t` +
          `acc ${(run.finalAccuracy * 100).toFixed(2)}%\tlast5 ${(run.lastFiveAccuracy * 100).toFixed(2)}%\t${run.wallS.toFixed(0)} s`,
      );
    }
    const key = (x: PrivacyRun) => `${x.mode}/${x.targetEpsilon}`;
    const merged = [...stored.filter((s) => !runs.some((r) => key(r) === key(s))), ...runs];
    fs.writeFileSync(file, JSON.stringify(merged, null, 2));
  }
  const all: PrivacyRun[] = [];
  for (const n of Object.keys(SCENARIOS)) {
    const f = `bench-out/privacy-${n}.json`;
    if (fs.existsSync(f)) all.push(...(JSON.parse(fs.readFileSync(f, "utf8")) as PrivacyRun[]));
  }
  const out = path.join("bench-out", "privacy", "report.html");
  fs.writeFileSync(out, renderPrivacyReport(all));
  console.log(`report: ${out}`);
}

/** Accuracy against ε (one line per scenario and mode, the non-private run dashed) and a table of every run. */
export function renderPrivacyReport(runs: PrivacyRun[]): string {
  const scenarios = [...new Set(runs.map((r) => r.scenario))];
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
  const datasets: unknown[] = [];
  scenarios.forEach((s, i) => {
    for (const mode of ["plain", "secure"] as const) {
      const pts = runs
        .filter((r) => r.scenario === s && r.mode === mode && r.targetEpsilon !== null)
        .sort((a, b) => a.targetEpsilon! - b.targetEpsilon!)
        .map((r) => ({ x: r.targetEpsilon, y: r.lastFiveAccuracy * 100 }));
      if (pts.length)
        datasets.push({
          label: `${s} ${mode === "plain" ? "central DP" : "SecAgg+ & distributed DP"}`,
          data: pts,
          borderColor: colors[i % colors.length],
          backgroundColor: colors[i % colors.length],
          borderDash: mode === "secure" ? [2, 2] : [],
          pointStyle: mode === "secure" ? "triangle" : "circle",
          pointRadius: 5,
        });
    }
    const none = runs.find((r) => r.scenario === s && r.mode === "none");
    if (none) {
      const xs = runs.filter((r) => r.targetEpsilon !== null).map((r) => r.targetEpsilon!);
      const lo = Math.min(1, ...xs);
      const hi = Math.max(8, ...xs);
      datasets.push({
        label: `${s} without DP`,
        data: [
          { x: lo, y: none.lastFiveAccuracy * 100 },
          { x: hi, y: none.lastFiveAccuracy * 100 },
        ],
        borderColor: colors[i % colors.length],
        borderDash: [8, 6],
        pointRadius: 0,
      });
    }
  });
  const rows = runs
    .map(
      (r) =>
        `<tr><td>${esc(r.label)}</td><td>${r.mode}</td><td>${r.targetEpsilon ?? "∞"}</td>` +
        `<td>${r.epsilon?.toFixed(4) ?? "-"}</td><td>${r.noiseMultiplier?.toFixed(4) ?? "-"}</td><td>${r.clip ?? "-"}</td>` +
        `<td>${r.rounds}</td><td>${(r.finalAccuracy * 100).toFixed(2)}%</td><td>${(r.lastFiveAccuracy * 100).toFixed(2)}%</td>` +
        `<td>${r.wallS.toFixed(0)}</td></tr>`,
    )
    .join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Flotilla: accuracy against privacy</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#1b1f24}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}canvas{max-height:420px}</style>
</head><body>
<h1>Accuracy against ε (δ = 1e-5)</h1>
<p>DP-FedAvg, user-level (ε, δ) from the RDP accountant (tight conversion). Accuracy is the mean test accuracy of the
last five rounds. Dashed horizontal lines: the same job without DP.</p>
<canvas id="acc"></canvas>
<h2>Runs</h2>
<table><tr><th>scenario</th><th>mode</th><th>target ε</th><th>spent ε</th><th>z</th><th>clip C</th><th>rounds</th>
<th>final accuracy</th><th>last-5 accuracy</th><th>wall s</th></tr>${rows}</table>
<script>${chartLibrary()}</script>
<script>
new Chart(document.getElementById("acc"), { type: "line", data: { datasets: ${JSON.stringify(datasets)} },
  options: { animation: false, scales: { x: { type: "logarithmic", title: { display: true, text: "ε (log scale)" },
    ticks: { callback: (v) => [1, 2, 4, 8, 16].includes(v) ? v : "" } }, y: { title: { display: true, text: "test accuracy (%)" } } } } });
</script></body></html>
`;
}

if (require.main === module) {
  main().catch((e: unknown) => {
    console.error(`bench-privacy: ${errorCode(e)}: ${errorMessage(e)}`);
    process.exit(1);
  });
}
