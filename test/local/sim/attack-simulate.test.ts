/**
 * The attack suite end to end (docs/robustness.md): a small sensors job where 20% of the fleet scales its update by
 * 100 drives plain FedAvg far below the clean run, while the coordinate median holds; the attackers are recorded.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";

const small = (over: Partial<SimConfig>): SimConfig => ({
  ...DEFAULT_CONFIG,
  devices: 10,
  clientsPerRound: 10,
  rounds: 6,
  samplesPerDevice: 60,
  workers: 0,
  fleetEval: false,
  out: fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-attack-")),
  ...over,
});

test("scaling at 20% collapses FedAvg, the median holds, and results.json records the attackers", async () => {
  const clean = await simulate(small({}));
  const attacked = await simulate(small({ attack: "scaling:0.2" }));
  const median = await simulate(small({ attack: "scaling:0.2", aggregator: "median" }));
  const acc = (r: typeof clean) => r.rounds.reduce((m, x) => Math.max(m, x.accuracy), 0);
  assert.ok(clean.final.accuracy > 0.6, `clean ${clean.final.accuracy}`);
  assert.ok(
    acc(attacked) < clean.final.accuracy - 0.25,
    `attacked best ${acc(attacked)} vs clean ${clean.final.accuracy}`,
  );
  assert.ok(median.final.accuracy > clean.final.accuracy - 0.1, `median ${median.final.accuracy}`);
  const json = JSON.parse(fs.readFileSync(path.join(attacked.config.out, "results.json"), "utf8"));
  assert.equal(json.attack.kind, "scaling");
  assert.equal(json.attack.fraction, 0.2);
  assert.equal(json.attack.param, 100);
  assert.equal(json.attack.attackers.length, 2);
  assert.deepEqual(json.attack, median.attack);
  assert.equal(json.config.attack, "scaling:0.2");
  assert.equal(clean.attack, undefined);
});

test("a backdoor run records its success rate each round and at the end", async () => {
  const r = await simulate(small({ attack: "backdoor:0.2", rounds: 3 }));
  assert.equal(r.rounds.length, 3);
  for (const x of r.rounds)
    assert.ok(x.backdoorSuccess! >= 0 && x.backdoorSuccess! <= 1, `${x.backdoorSuccess}`);
  assert.equal(r.final.backdoorSuccess, r.rounds[2]!.backdoorSuccess);
  assert.equal(r.attack!.param, 0.5);
  const json = JSON.parse(fs.readFileSync(path.join(r.config.out, "results.json"), "utf8"));
  assert.equal(json.final.backdoorSuccess, r.final.backdoorSuccess);
});

test("worker threads poison the attackers' data as the main thread does (label flip)", async () => {
  const tiny = { devices: 6, clientsPerRound: 6, rounds: 2, samplesPerDevice: 40, threads: 1 };
  const inProcess = await simulate(small({ ...tiny, attack: "label-flip:0.5" }));
  const workers = await simulate(small({ ...tiny, attack: "label-flip:0.5", workers: 1 }));
  const clean = await simulate(small({ ...tiny, workers: 1 }));
  const losses = (r: typeof clean) => r.rounds.map((x) => [x.trainLoss, x.loss]);
  assert.deepEqual(losses(workers), losses(inProcess));
  assert.notDeepEqual(losses(workers), losses(clean), "the workers trained on poisoned labels");
  assert.deepEqual(workers.attack, inProcess.attack);
});

test("model attacks run in async mode too (IPM with ε = 100 on a synthetic trace)", async () => {
  const over = { clientsPerRound: 5, mode: "async" as const, fleetTrace: "synthetic", rounds: 4 };
  const clean = await simulate(small(over));
  const r = await simulate(small({ ...over, attack: "ipm:0.3:100" }));
  assert.equal(r.attack!.attackers.length, 3);
  assert.equal(r.attack!.param, 100);
  assert.ok(r.rounds.length >= 1);
  assert.ok(
    r.final.accuracy < clean.final.accuracy - 0.2 || r.status?.state === "diverged",
    `ipm ${r.final.accuracy} vs clean ${clean.final.accuracy}`,
  );
});
