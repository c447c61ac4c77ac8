import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { decodeTensorInto } from "../../../core/compress";
import type { RoundInterceptor } from "../../../core/round/aggregation";
import type { FitResult, RoundAggregation } from "../../../core/strategies/strategy";
import { DEFAULT_CONFIG, validateConfig, type SimConfig } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";
import { isFlotillaError } from "../../../core/errors";

const small = (out: string): SimConfig => ({
  ...DEFAULT_CONFIG,
  transport: "memory",
  devices: 10,
  clientsPerRound: 10,
  rounds: 7,
  samplesPerDevice: 60,
  workers: 0,
  fleetEval: false,
  out,
});

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-quality-"));

/** Plays two broken devices: their updates arrive sign-flipped. */
function signFlip(bad: ReadonlySet<string>, length: () => number): RoundInterceptor {
  return {
    wrap: (inner: RoundAggregation): RoundAggregation => ({
      get count() {
        return inner.count;
      },
      add(r: FitResult) {
        if (!bad.has(r.deviceId)) return inner.add(r);
        let d: Float32Array;
        if (r.delta instanceof Float32Array) d = r.delta;
        else {
          d = new Float32Array(length());
          decodeTensorInto(r.delta.bytes, d, { length: d.length });
        }
        inner.add({ ...r, delta: Float32Array.from(d, (x) => -x) });
      },
      addAggregate: (a) => inner.addAggregate(a),
      finish: (f) => inner.finish(f),
    }),
  };
}

test("a clean sensors run flags no device; quality off leaves no quality record", async () => {
  const out = tmp();
  const lines: string[] = [];
  const r = await simulate({ ...small(out), rounds: 6 }, { onQualityLine: (l) => lines.push(l) });
  assert.deepEqual(lines, []);
  for (const round of r.rounds) {
    assert.deepEqual(round.quality?.anomalies, [], `round ${round.round}`);
    assert.deepEqual(round.quality?.excluded, []);
    assert.equal(Object.keys(round.quality!.reputation).length, 10);
  }
  assert.ok(Object.values(r.quality!.devices).every((d) => d.flagged === 0 && d.reputation > 0.5));
  const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
  assert.deepEqual(json.rounds[0].quality.anomalies, []);
  const html = fs.readFileSync(path.join(out, "report.html"), "utf8");
  assert.match(html, /Contribution quality/);
  assert.match(html, /No anomalies/);

  const off = await simulate({ ...small(tmp()), rounds: 2, quality: false });
  assert.equal(off.rounds[0].quality, undefined);
  assert.equal(off.quality, undefined);
});

test("devices sending sign-flipped updates are flagged, excluded with their reason after 3 of 5 (here 3 of 3), and never ordered while excluded", async () => {
  const out = tmp();
  const bad = new Set(["device-001", "device-006"]);
  const lines: string[] = [];
  let params = 0;
  const r = await simulate(
    small(out),
    {
      onStart: (i) => (params = i.params),
      onQualityLine: (l) => lines.push(l),
    },
    { interceptor: signFlip(bad, () => params) },
  );
  // Rounds 1-3 flag both; from round 4 they are excluded.
  for (const round of r.rounds) {
    const flagged = new Set(round.quality!.anomalies.map((a) => a.deviceId));
    for (const id of flagged) assert.ok(bad.has(id), `round ${round.round}: honest ${id} flagged`);
    if (round.round <= 3) assert.deepEqual([...flagged].sort(), [...bad].sort());
    for (const a of round.quality!.anomalies) assert.equal(a.code, "E_QUALITY_DIRECTION");
    const excluded = round.quality!.excluded.map((e) => e.deviceId);
    if (round.round >= 4) {
      assert.deepEqual(excluded.sort(), [...bad].sort(), `round ${round.round}`);
      for (const id of bad) assert.ok(!round.participants.includes(id), `round ${round.round} ordered ${id}`);
      for (const e of round.quality!.excluded) {
        assert.equal(e.code, "E_QUALITY_EXCLUDED");
        assert.match(e.reason, /flagged in 3 of its last 3 contributions \(E_QUALITY_DIRECTION ×3/);
      }
    } else assert.deepEqual(excluded, []);
  }
  assert.deepEqual(r.rounds[2].quality!.newlyExcluded!.map((e) => e.deviceId).sort(), [...bad].sort());
  assert.ok(lines.some((l) => /^quality: device device-001 round 1 E_QUALITY_DIRECTION: cosine -/.test(l)));
  assert.ok(
    lines.some((l) => /^quality: device device-006 excluded from round 4 \(E_QUALITY_EXCLUDED\)/.test(l)),
  );
  assert.ok(r.quality!.devices["device-001"]!.reputation < 0.3);
  const html = fs.readFileSync(path.join(out, "report.html"), "utf8");
  assert.match(html, /E_QUALITY_DIRECTION/);
  assert.match(html, /device-006/);
});

test("a clean run under the default aggregator (Multi-Krum drops 20% every round) flags and excludes no device", async () => {
  const r = await simulate({ ...small(tmp()), rounds: 6, aggregator: "default" });
  for (const round of r.rounds) {
    assert.ok(round.robust!.dropped.length > 0, "the rule drops updates every round");
    assert.deepEqual(round.quality?.anomalies, [], `round ${round.round}`);
    assert.deepEqual(round.quality?.excluded, [], `round ${round.round}`);
  }
});

test("--quality and --exclude-after values are checked", () => {
  const base = small(tmp());
  assert.equal(validateConfig({ ...base, excludeAfter: "2/4" }).excludeAfter, "2/4:10");
  for (const bad of ["4/2", "x", "3/5:0"])
    assert.throws(
      () => validateConfig({ ...base, excludeAfter: bad }),
      (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_QUALITY",
    );
});
