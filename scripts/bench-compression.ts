/**
 * Compression benchmark: uplink bytes per round and final accuracy of each codec against float32 FedAvg at the
 * same round count, on MNIST (mlp and cnn, shards: McMahan et al. 2017's pathological non-IID split, 100 clients,
 * C = 0.1, E = 5, B = 10) and on the synthetic sensor fleet (cnn1d, each device its own data).
 *
 *   node dist/scripts/bench-compression.js [mlp-shards|cnn-shards|sensors ...] [--rounds N] [--codecs a,b,c]
 *
 * Writes bench-out/compression-<scenario>.json, and bench-out/compression/report.html (the trade-off charts) over
 * every scenario result found in bench-out.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { DEFAULT_CONFIG, positiveInt, SIM_LIMITS, type SimConfig } from "../local/sim/config";
import { errorCode, errorMessage } from "../core/errors";
import { simulate } from "../local/sim/simulate";
import { writeTradeoffReport, type TradeoffRun } from "../local/report/tradeoff";

interface Scenario {
  readonly config: Partial<SimConfig>;
  readonly rounds: number;
  readonly codecs: readonly string[];
}

const SWEEP = [
  "none",
  "fp16",
  "int8",
  "int4",
  "int2",
  "qsgd:4",
  "topk:0.1+int8",
  "topk:0.03+int8",
  "topk:0.01+int8",
];
const MNIST: Partial<SimConfig> = {
  dataset: "mnist",
  partition: "shards",
  devices: 100,
  clientsPerRound: 10,
  localEpochs: 5,
  batchSize: 10,
  lr: 0.05,
};

const SCENARIOS: Record<string, Scenario> = {
  "mlp-shards": { config: { ...MNIST, model: "mlp" }, rounds: 100, codecs: SWEEP },
  "cnn-shards": {
    config: { ...MNIST, model: "cnn" },
    rounds: 20,
    codecs: ["none", "int8", "topk:0.03+int8", "topk:0.01+int8"],
  },
  sensors: {
    config: {
      dataset: "sensors",
      model: "cnn1d",
      partition: "natural",
      devices: 50,
      clientsPerRound: 10,
      localEpochs: 2,
    },
    rounds: 40,
    codecs: SWEEP,
  },
};

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const roundsOverride = flag(args, "--rounds");
  // Parsed up front: a bad --rounds is one coded line, not a sweep of runs of NaN or 1e9 rounds.
  const roundsParsed =
    roundsOverride !== undefined ? positiveInt("rounds", roundsOverride, SIM_LIMITS.rounds) : undefined;
  const codecsOverride = flag(args, "--codecs");
  const names = args.length ? args : Object.keys(SCENARIOS);
  fs.mkdirSync("bench-out", { recursive: true });
  for (const name of names) {
    const sc = SCENARIOS[name];
    if (!sc) throw new Error(`unknown scenario '${name}' (expected ${Object.keys(SCENARIOS).join(", ")})`);
    const rounds = roundsParsed ?? sc.rounds;
    const codecs = codecsOverride ? codecsOverride.split(",") : sc.codecs;
    const file = `bench-out/compression-${name}.json`;
    // Runs of other codecs measured before are kept (a later --codecs run adds to the sweep); the float32
    // reference comes from this run when it includes "none", else from the stored one.
    const stored: TradeoffRun[] = fs.existsSync(file)
      ? (JSON.parse(fs.readFileSync(file, "utf8")) as TradeoffRun[]).filter((r) => r.rounds === rounds)
      : [];
    const runs: TradeoffRun[] = [];
    const old = stored.find((r) => r.compression === "none");
    let reference: { up: number; acc: number } | undefined =
      old && !codecs.includes("none") ? { up: old.uplinkBytesPerRound, acc: old.finalAccuracy } : undefined;
    for (const compression of codecs) {
      const config: SimConfig = {
        ...DEFAULT_CONFIG,
        ...sc.config,
        rounds,
        compression,
        out: `bench-out/compression-${name}/${compression.replace(/[^a-z0-9.]+/gi, "_")}`,
      };
      const t0 = Date.now();
      const r = await simulate(config, {
        onRoundEnd: (s) => {
          if (s.round % 10 === 0 || s.round === rounds)
            console.error(
              `${name} ${compression} round ${s.round}: ${(s.accuracy * 100).toFixed(2)}% ` +
                `(${((Date.now() - t0) / 1000).toFixed(0)} s)`,
            );
        },
      });
      const up = r.rounds.reduce((a, x) => a + x.uplinkBytes, 0) / r.rounds.length;
      const down = r.rounds.reduce((a, x) => a + x.downlinkBytes, 0) / r.rounds.length;
      if (compression === "none") reference = { up, acc: r.final.accuracy };
      runs.push({
        scenario: `${name} (${config.model})`,
        compression,
        rounds: r.final.rounds,
        finalAccuracy: r.final.accuracy,
        uplinkBytesPerRound: up,
        downlinkBytesPerRound: down,
        uplinkReduction: reference ? reference.up / up : NaN,
        accuracyLossPoints: reference ? (reference.acc - r.final.accuracy) * 100 : NaN,
        accuracyPerRound: r.rounds.map((x) => x.accuracy),
        wallS: r.final.wallMs / 1000,
      });
      const last = runs[runs.length - 1];
      console.log(
        `${name}\t${compression}\tacc ${(last.finalAccuracy * 100).toFixed(2)}%\t` +
          `loss ${last.accuracyLossPoints.toFixed(2)} pt\tuplink ${(up / 1e6).toFixed(3)} MB/round\t` +
          `${last.uplinkReduction.toFixed(1)}x`,
      );
    }
    const merged = [...stored.filter((r) => !codecs.includes(r.compression)), ...runs].sort(
      (x, y) =>
        Number(y.compression === "none") - Number(x.compression === "none") ||
        y.uplinkBytesPerRound - x.uplinkBytesPerRound,
    );
    fs.writeFileSync(file, JSON.stringify(merged, null, 2));
  }
  // One report over every scenario measured so far.
  const all: TradeoffRun[] = [];
  for (const f of fs
    .readdirSync("bench-out")
    .filter((x) => /^compression-.*\.json$/.test(x))
    .sort()) {
    all.push(...(JSON.parse(fs.readFileSync(path.join("bench-out", f), "utf8")) as TradeoffRun[]));
  }
  fs.mkdirSync("bench-out/compression", { recursive: true });
  writeTradeoffReport("bench-out/compression/report.html", all);
  console.error("report: bench-out/compression/report.html");
}

main().catch((e) => {
  console.error(`bench-compression: ${errorCode(e)}: ${errorMessage(e)}`);
  process.exit(1);
});
