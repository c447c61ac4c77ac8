import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isFlotillaError } from "../../../core/errors";
import { generateSynthetic, parseSyntheticSpec } from "../../../core/fleet/synthetic";
import { formatTrace } from "../../../core/fleet/trace-file";
import { DEFAULT_CONFIG, validateConfig, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";

const small = (out: string): SimConfig => ({
  ...DEFAULT_CONFIG,
  devices: 8,
  clientsPerRound: 4,
  rounds: 3,
  samplesPerDevice: 40,
  workers: 0,
  out,
});

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-virtual-"));

test("sync rounds on a synthetic trace: virtual round times, time to target, participation", async () => {
  const out = tmp();
  const r = await simulate({
    ...small(out),
    fleetTrace: "synthetic:intermittent=0.5",
    selection: "deadline",
    roundDeadlineS: 120,
    targetAccuracy: 0.999,
  });
  assert.equal(r.rounds.length, 3);
  assert.equal(r.rounds[0].virtualStartS, 0);
  r.rounds.forEach((round, i) => {
    assert.ok(round.virtualEndS! > round.virtualStartS!, "a round takes virtual time");
    assert.ok(round.virtualEndS! <= round.virtualStartS! + 120 + 1e-9, "a round closes by its deadline");
    if (i > 0) assert.equal(round.virtualStartS, r.rounds[i - 1].virtualEndS);
    assert.equal(typeof round.late, "number");
  });
  assert.equal(r.final.virtualTimeS, r.rounds[2].virtualEndS);
  assert.equal(r.final.timeToTargetS, null);
  const p = r.participation!;
  assert.equal(Object.keys(p.devices).length, 8);
  const completed = Object.values(p.devices).reduce((a, d) => a + d.completed, 0);
  assert.equal(
    completed,
    r.rounds.reduce((a, x) => a + x.completed, 0),
  );
  assert.ok(p.completed.min <= p.completed.median && p.completed.median <= p.completed.max);
  const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
  assert.equal(json.config.fleetTrace, "synthetic:intermittent=0.5");
  assert.equal(json.config.selection, "deadline");
  assert.equal(json.final.timeToTargetS, null);
});

test("the time to target is the virtual end of the first round that reaches it", async () => {
  const r = await simulate({ ...small(tmp()), fleetTrace: "synthetic", targetAccuracy: 0.01 });
  assert.equal(r.rounds.length, 1);
  assert.equal(r.final.timeToTargetS, r.rounds[0].virtualEndS);
});

test("async mode on a trace: one entry per flush, with staleness, in virtual time", async () => {
  const r = await simulate({
    ...small(tmp()),
    fleetTrace: "synthetic",
    mode: "async",
    concurrency: 4,
    buffer: 2,
    selection: "oort",
  });
  assert.equal(r.rounds.length, 3);
  for (const round of r.rounds) {
    assert.equal(round.completed, 2);
    assert.equal(round.staleness!.length, 2);
    assert.ok(round.virtualEndS! >= round.virtualStartS!);
  }
  assert.ok(r.final.virtualTimeS! > 0);
});

test("a trace file must describe exactly --devices devices", async () => {
  const dir = tmp();
  const file = path.join(dir, "fleet.jsonl");
  fs.writeFileSync(file, formatTrace(generateSynthetic(parseSyntheticSpec("synthetic"), 5, 1)));
  await assert.rejects(
    simulate({ ...small(dir), fleetTrace: file }),
    (e) => isFlotillaError(e) && e.code === "E_CONFIG_FLEET_TRACE" && /5 devices/.test(e.message),
  );
});

test("the fleet flags are checked with one coded line each", () => {
  const bad: [Partial<SimConfig>, string][] = [
    [{ mode: "async" }, "E_CONFIG_FLEET_TRACE"],
    [{ mode: "bogus" as "sync" }, "E_CONFIG_MODE"],
    [{ concurrency: 2 }, "E_CONFIG_MODE"],
    [{ fleetTrace: "synthetic", mode: "async", concurrency: 50 }, "E_CONFIG_MODE"],
    [{ fleetTrace: "synthetic", mode: "async", concurrency: 4, buffer: 5 }, "E_CONFIG_MODE"],
    [{ fleetTrace: "synthetic", mode: "async", staleness: "cubic" }, "E_CONFIG_STALENESS"],
    [{ selection: "fastest" }, "E_CONFIG_SELECTION"],
    [{ roundDeadlineS: 10 }, "E_CONFIG_FLEET_TRACE"],
    [{ fleetTrace: "synthetic", secureAggregation: true }, "E_CONFIG_FLEET_TRACE"],
    [{ fleetTrace: "synthetic", transport: "iothub", mode: "async" }, "E_CONFIG_FLEET_TRACE"],
    [{ fleetTrace: "synthetic", transport: "iothub", selection: "oort" }, "E_CONFIG_FLEET_TRACE"],
  ];
  for (const [patch, code] of bad) {
    assert.throws(
      () => validateConfig({ ...small("x"), ...patch }),
      (e) => isFlotillaError(e) && e.code === code && !e.message.includes("\n"),
      JSON.stringify(patch),
    );
  }
  assert.equal(validateConfig({ ...small("x"), selection: "oort:floor=3" }).selection, "oort:floor=3");
});

test("the participation floor holds on an always-online fleet: no device waits more than N selections (longestWait)", async () => {
  const run = (selection: string) =>
    simulate({
      ...small(tmp()),
      devices: 8,
      clientsPerRound: 2,
      rounds: 12,
      fleetTrace: "synthetic:intermittent=0,maintenance=0",
      selection,
      roundDeadlineS: 600,
    });
  const floored = await run("oort:floor=3");
  const w = floored.participation!.longestWait!;
  assert.ok(w.max <= 3, `longest wait ${w.max} > floor 3`);
  assert.ok(floored.participation!.selected.min >= 1, "every device picked");
  // deadline (FedCS) has no floor: it keeps the fastest devices, so some wait all along
  const greedy = await run("deadline");
  assert.ok(greedy.participation!.longestWait!.max > 3, JSON.stringify(greedy.participation!.longestWait));
});

test("--virtual-hours stops after the round that reaches that much of the trace's time", async () => {
  const r = await simulate({
    ...small(tmp()),
    rounds: 50,
    fleetTrace: "synthetic",
    roundDeadlineS: 600,
    virtualHours: 0.002,
  });
  assert.equal(r.status?.state, "time-limit");
  const ends = r.rounds.map((x) => x.virtualEndS!);
  assert.ok(ends[ends.length - 1] >= 7.2, "the last round reaches 0.002 h (7.2 s)");
  assert.ok(
    ends.slice(0, -1).every((e) => e < 7.2),
    "no round after it",
  );
  assert.ok(r.rounds.length < 50);
  assert.throws(
    () => validateConfig({ ...small("x"), virtualHours: 1 }),
    (e) => isFlotillaError(e) && e.code === "E_CONFIG_FLEET_TRACE",
  );
});
