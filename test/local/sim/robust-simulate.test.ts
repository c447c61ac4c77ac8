import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Dataset } from "../../../core/data/dataset";
import { isFlotillaError } from "../../../core/errors";
import {
  DEFAULT_CONFIG,
  DEFAULT_ROOT_SAMPLES,
  validateConfig,
  type SimConfig,
} from "../../../local/sim/config";
import { loadFleetData } from "../../../local/sim/data";
import { simulate } from "../../../local/sim/simulate";

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-robust-"));
const small = (over: Partial<SimConfig>): SimConfig =>
  validateConfig({
    ...DEFAULT_CONFIG,
    devices: 8,
    clientsPerRound: 4,
    rounds: 3,
    samplesPerDevice: 40,
    workers: 0,
    fleetEval: false,
    out: tmp(),
    ...over,
  });

/** Each sample's features, hashed: to check that two datasets share no sample. */
function rows(d: Dataset): Set<string> {
  const size = d.x.length / d.n;
  const out = new Set<string>();
  for (let i = 0; i < d.n; i++)
    out.add(
      createHash("sha1")
        .update(d.x.subarray(i * size, (i + 1) * size))
        .digest("hex"),
    );
  return out;
}

const disjoint = (a: Set<string>, b: Set<string>) => [...a].every((x) => !b.has(x));

test("the root set is held by no device and is not the test set; sensors devices keep their data", () => {
  const c = small({ aggregator: "fltrust", rootSamples: 30 });
  const withRoot = loadFleetData(c);
  const without = loadFleetData({ ...c, rootSamples: undefined });
  assert.equal(withRoot.root!.n, 30);
  assert.equal(without.root, undefined);
  const root = rows(withRoot.root!);
  assert.equal(root.size, 30);
  assert.ok(disjoint(root, rows(withRoot.test)));
  for (const d of withRoot.devices) assert.ok(disjoint(root, rows(d)));
  // A seed stream of its own: the devices' and the test set's data are exactly as without FLTrust.
  withRoot.devices.forEach((d, i) => assert.deepEqual(d.x, without.devices[i]!.x));
  assert.deepEqual(withRoot.test.x, without.test.x);
  // Balanced classes, like the test set.
  const counts = new Map<number, number>();
  for (const y of withRoot.root!.y) counts.set(y, (counts.get(y) ?? 0) + 1);
  assert.ok(Math.max(...counts.values()) - Math.min(...counts.values()) <= 1);
});

test("mnist: the root set is taken out of the training pool before it is partitioned", () => {
  const c = small({ dataset: "mnist", partition: "iid", devices: 10, aggregator: "fltrust" });
  assert.equal(c.rootSamples, DEFAULT_ROOT_SAMPLES);
  const data = loadFleetData(c);
  const plain = loadFleetData({ ...c, rootSamples: undefined });
  assert.equal(data.root!.n, 100);
  const root = rows(data.root!);
  const devices = new Set(data.devices.flatMap((d) => [...rows(d)]));
  assert.ok(disjoint(root, devices));
  assert.ok(disjoint(root, rows(data.test)));
  assert.equal(
    data.devices.reduce((a, d) => a + d.n, 0) + data.root!.n,
    plain.devices.reduce((a, d) => a + d.n, 0),
    "every training sample is a device's or the root set's",
  );
});

test("fltrust end to end, sync: every round trusts by the server's root update; results.json records the root set", async () => {
  const c = small({ aggregator: "fltrust", rootSamples: 30 });
  const r = await simulate(c);
  assert.equal(r.rounds.length, 3);
  for (const round of r.rounds) {
    const rep = round.robust!;
    assert.equal(rep.aggregator, "fltrust");
    assert.equal(rep.devices.length, round.completed);
    for (const d of rep.devices) assert.ok(d.trust! >= 0 && d.trust! <= 1, `trust ${d.trust}`);
    assert.ok(
      rep.devices.some((d) => d.trust! > 0.1),
      "honest devices agree with the root update",
    );
  }
  assert.ok(r.final.accuracy > 0.4, `accuracy ${r.final.accuracy}`);
  const json = JSON.parse(fs.readFileSync(path.join(c.out, "results.json"), "utf8"));
  assert.equal(json.config.aggregator, "fltrust");
  assert.equal(json.config.rootSamples, 30);
  assert.ok(Number.isFinite(json.rounds[0].robust.devices[0].trust));
});

test("fltrust end to end, async (FedBuff on a fleet trace)", async () => {
  const r = await simulate(
    small({ aggregator: "fltrust", fleetTrace: "synthetic", mode: "async", concurrency: 4, buffer: 2 }),
  );
  assert.equal(r.rounds.length, 3);
  for (const round of r.rounds) {
    assert.equal(round.robust!.updates, 2);
    assert.ok(round.robust!.devices.every((d) => d.trust !== undefined));
  }
  assert.equal(r.config.rootSamples, DEFAULT_ROOT_SAMPLES);
});

test("fltrust without a root dataset, or a root set for another rule, is one coded line", async () => {
  const refuse = (over: Partial<SimConfig>, code: string, why: RegExp) =>
    assert.throws(
      () => small(over),
      (e: unknown) =>
        isFlotillaError(e) && e.code === code && why.test(e.message) && !e.message.includes("\n"),
    );
  refuse({ aggregator: "fltrust", rootSamples: 0 }, "E_CONFIG_AGGREGATOR", /needs the server's root dataset/);
  refuse({ aggregator: "median", rootSamples: 10 }, "E_CONFIG_CONFLICT", /needs --aggregator fltrust/);
  refuse({ rootSamples: 10 }, "E_CONFIG_CONFLICT", /got mean/);
  refuse({ aggregator: "fltrust", rootSamples: 1e9 }, "E_CONFIG_RANGE", /root-samples/);
  // A job built without the config check (no root set) fails before any device trains.
  await assert.rejects(
    simulate({
      ...DEFAULT_CONFIG,
      devices: 4,
      clientsPerRound: 2,
      rounds: 1,
      workers: 0,
      out: tmp(),
      aggregator: "fltrust",
    }),
    (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_AGGREGATOR",
  );
  // A root set too large for the training data.
  assert.throws(
    () =>
      loadFleetData(
        small({
          dataset: "mnist",
          partition: "iid",
          devices: 10,
          aggregator: "fltrust",
          rootSamples: 99_999,
        }),
      ),
    (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_VALUE" && /too few/.test(e.message),
  );
});
