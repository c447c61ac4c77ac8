import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";

const base = (over: Partial<SimConfig>): SimConfig => ({
  ...DEFAULT_CONFIG,
  devices: 8,
  clientsPerRound: 8,
  rounds: 2,
  samplesPerDevice: 40,
  workers: 0,
  secaggStepTimeoutMs: 5000,
  out: fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-secsim-")),
  ...over,
});

test("secure aggregation gives the plain FedAvg model up to the fixed-point resolution", async () => {
  const plain = await simulate(base({}));
  const secure = await simulate(base({ secureAggregation: true }));
  for (let i = 0; i < plain.rounds.length; i++) {
    const p = plain.rounds[i];
    const s = secure.rounds[i];
    assert.deepEqual(s.secagg?.included.slice().sort(), p.participants.slice().sort());
    assert.equal(s.completed, p.completed);
    // Fixed point at n = 8, clip 8: one step is 8·8/2^31 ≈ 3e-8, so the models agree to far better than 1e-4.
    assert.ok(Math.abs(s.loss - p.loss) < 1e-4, `round ${s.round}: loss ${s.loss} vs plain ${p.loss}`);
    assert.equal(s.accuracy, p.accuracy);
    const bytes = Object.values(s.secagg?.bytesPerDevice ?? {});
    assert.equal(bytes.length, 8);
    // Each device sends at least its masked vector (4 bytes per value) and receives at least the model.
    for (const b of bytes) assert.ok(b.up >= secure.config.params * 4 && b.down >= secure.config.params * 4);
  }
  const json = JSON.parse(fs.readFileSync(path.join(secure.config.out, "results.json"), "utf8"));
  assert.ok(json.rounds[0].secagg.dropouts, "results.json records the dropouts per step");
  assert.ok(json.rounds[0].secagg.meanBytesPerDevice.up > 0, "results.json records the bytes per device");
  const html = fs.readFileSync(path.join(secure.config.out, "report.html"), "utf8");
  assert.match(html, /<canvas id="secagg">/);
});

test("dropouts at random steps still give a round; the record says who dropped where", async () => {
  const r = await simulate(base({ secureAggregation: true, dropout: 0.25, rounds: 3 }));
  for (const round of r.rounds) {
    const s = round.secagg;
    assert.ok(s && !s.aborted, `round ${round.round} aborted: ${s?.aborted?.reason}`);
    const vanished = Object.keys(s.simulatedDropouts ?? {});
    assert.equal(vanished.length, 2, "25% of 8 participants vanish");
    // A device that vanished after sending its masked input (at unmask) is still in the sum.
    const lostBeforeSum = vanished.filter((id) => s.simulatedDropouts?.[id] !== "unmask");
    assert.deepEqual(
      s.included.slice().sort(),
      round.participants.filter((id) => !lostBeforeSum.includes(id)).sort(),
    );
    for (const [id, step] of Object.entries(s.simulatedDropouts ?? {})) {
      assert.ok(s.dropouts[step].includes(id), `${id} is recorded as dropped at ${step}`);
    }
    // Every participant is in the sum or has a failure saying where it was lost (the engine's lost reasons).
    for (const id of lostBeforeSum) {
      const f = round.failures.find((x) => x.deviceId === id);
      assert.equal(f?.code, "E_SECAGG_DROPOUT", `${id}'s failure`);
      assert.match(f?.reason ?? "", new RegExp(`^${s.simulatedDropouts?.[id]}: `));
    }
    assert.equal(round.completed + round.failures.length, round.participants.length);
    assert.ok(Number.isFinite(round.accuracy));
  }
});

test("too many dropouts abort the round cleanly: nothing unmasked, model kept, the job goes on", async () => {
  // t = k = 7 (classic SecAgg over 8): losing any 2 devices leaves too few shares, whatever the step.
  const r = await simulate(
    base({ secureAggregation: true, secaggNeighbours: 7, secaggThreshold: 7, dropout: 0.25, rounds: 2 }),
  );
  const aborted = r.rounds.filter((x) => x.secagg?.aborted);
  assert.equal(aborted.length, 2, "every round aborts");
  for (const x of aborted) {
    assert.equal(x.secagg?.aborted?.code, "E_SECAGG_ABORTED");
    assert.equal(x.completed, 0);
    assert.deepEqual(x.secagg?.included, []);
    // nothing was aggregated, so the round has no training loss (not that of masked inputs never summed)
    assert.ok(Number.isNaN(x.trainLoss), `round ${x.round}: trainLoss ${x.trainLoss}`);
  }
  assert.equal(r.rounds.length, 2, "the job runs every round");
});

test("the CLI runs secure aggregation over worker threads (steps stay on the worker holding the device)", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-cli-secsim-"));
  const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");
  const run = spawnSync(
    process.execPath,
    [
      bin,
      "simulate",
      ...["--devices", "6", "--clients-per-round", "6", "--rounds", "1", "--samples-per-device", "30"],
      ...["--workers", "2", "--secure-aggregation", "--dropout", "0.2", "--out", out],
    ],
    { encoding: "utf8", timeout: 120_000 },
  );
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /secagg sum of \d+, dropouts \d+\/\d+\/\d+\/\d+/);
  const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
  assert.equal(json.rounds[0].secagg.aborted, undefined);
});

test("secure-aggregation flags are checked: one line with a code", () => {
  const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");
  const cases: [string[], RegExp][] = [
    [["--dropout", "0.1"], /E_CONFIG_VALUE: --dropout needs --secure-aggregation/],
    [["--secure-aggregation", "--dropout", "1.5"], /E_CONFIG_VALUE/],
    [["--secure-aggregation", "--secagg-threshold", "1"], /E_SECAGG_PARAMS/],
    [["--secure-aggregation", "--secagg-neighbours", "abc"], /E_CONFIG_VALUE/],
  ];
  for (const [args, re] of cases) {
    const run = spawnSync(process.execPath, [bin, "simulate", "--devices", "6", ...args], {
      encoding: "utf8",
    });
    assert.equal(run.status, 2, `${args.join(" ")}: ${run.stderr}`);
    assert.match(run.stderr.trim(), re);
    assert.equal(run.stderr.trim().split("\n").length, 1);
  }
});

test("norm:C+mean with secure aggregation: each device clips before masking, so the sum is the plain run's bounded mean", async () => {
  const over: Partial<SimConfig> = { rounds: 1, aggregator: "norm:0.05+mean" };
  const free = await simulate(base({ rounds: 1 }));
  const plain = await simulate(base(over));
  const secure = await simulate(base({ ...over, secureAggregation: true }));
  const [f, p, s] = [free.rounds[0]!, plain.rounds[0]!, secure.rounds[0]!];
  // The bound is active (it changes the model) and the devices applied it exactly as the server would have.
  assert.ok(Math.abs(p.loss - f.loss) > 1e-3, `bounded loss ${p.loss} vs unbounded ${f.loss}`);
  assert.ok(Math.abs(s.loss - p.loss) < 1e-4, `secure ${s.loss} vs server-side bound ${p.loss}`);
  assert.equal(s.robust?.aggregator, "norm:0.05+mean");
  assert.equal(s.robust?.bound, 0.05);
  assert.equal(s.robust?.onDevices, true);
  assert.deepEqual(s.robust?.kept.slice().sort(), s.participants.slice().sort());
});
