import { describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import {
  SYNTHETIC_DEFAULTS,
  generateSynthetic,
  parseSyntheticSpec,
  sigmaForSpread,
} from "../../../core/fleet/synthetic";
import { isIntermittent, quantile, summarize } from "../../../core/fleet/trace";

const defaults = parseSyntheticSpec("synthetic");
const fleet = generateSynthetic(defaults, 2000, 42);

describe("synthetic fleet", () => {
  test("the same seed gives the same trace, another seed another; a prefix does not depend on the fleet size", () => {
    assert.deepEqual(generateSynthetic(defaults, 2000, 42), fleet);
    assert.notDeepEqual(generateSynthetic(defaults, 2000, 43).devices[0], fleet.devices[0]);
    assert.deepEqual(generateSynthetic(defaults, 10, 42).devices, fleet.devices.slice(0, 10));
  });

  test("compute and bandwidth are lognormal with p90/p10 ≈ 10x, medians as specified", () => {
    const s = summarize(fleet);
    for (const [name, v, median] of [
      ["speed", s.samplesPerSecond, defaults.speed],
      ["uplink", s.uplinkBytesPerSecond, defaults.up],
      ["downlink", s.downlinkBytesPerSecond, defaults.down],
    ] as const) {
      const ratio = v.p90 / v.p10;
      assert.ok(ratio > 7 && ratio < 14, `${name} p90/p10 ${ratio}`);
      assert.ok(Math.abs(v.p50 / median - 1) < 0.15, `${name} median ${v.p50} vs ${median}`);
    }
    assert.ok(Math.abs(Math.exp(2 * 1.2815515655446004 * sigmaForSpread(10)) - 10) < 1e-9);
  });

  test("about 30% of devices are intermittent; the others are online except in maintenance", () => {
    const share =
      fleet.devices.filter((d) => isIntermittent(d, fleet.horizonS)).length / fleet.devices.length;
    assert.ok(Math.abs(share - 0.3) <= 0.05, `intermittent share ${share}`);
    assert.ok(Math.abs(summarize(fleet).intermittentShare - share) < 1e-12);
  });

  test("sessions are sorted, non-overlapping, inside the horizon and outside maintenance windows", () => {
    for (const d of fleet.devices) {
      for (const list of [d.sessions, d.maintenance]) {
        list.forEach(([a, b], i) => {
          assert.ok(a >= 0 && a < b && b <= fleet.horizonS, `${d.deviceId} [${a}, ${b}]`);
          if (i > 0) assert.ok(a >= list[i - 1][1], `${d.deviceId}: intervals out of order or overlapping`);
        });
      }
      for (const [a, b] of d.sessions)
        for (const [ma, mb] of d.maintenance)
          assert.ok(!(a < mb && ma < b), `${d.deviceId}: session in maintenance`);
    }
  });

  test("one maintenance window of maintenanceMin a day per device (default)", () => {
    for (const d of fleet.devices.slice(0, 200)) {
      const total = d.maintenance.reduce((s, [a, b]) => s + b - a, 0);
      // A window may be cut at either end of the 24 h horizon (it then shows as two pieces).
      assert.ok(total <= SYNTHETIC_DEFAULTS.maintenanceMin * 60 * 2 + 1e-6, `${d.deviceId}: ${total}`);
      assert.ok(total >= SYNTHETIC_DEFAULTS.maintenanceMin * 60 - 1e-6, `${d.deviceId}: ${total}`);
    }
  });

  test("intermittent sessions last tens of minutes: the mean of whole sessions is near `session`", () => {
    // A long horizon, no maintenance: sessions cut by the horizon's ends are left out.
    const t = generateSynthetic(
      parseSyntheticSpec("synthetic:intermittent=1,hours=48,maintenance=0,session=30"),
      300,
      5,
    );
    const lengths = t.devices.flatMap((d) =>
      d.sessions.filter(([a, b]) => a > 0 && b < t.horizonS).map(([a, b]) => (b - a) / 60),
    );
    const mean = lengths.reduce((s, x) => s + x, 0) / lengths.length;
    assert.ok(lengths.length > 5000, `${lengths.length} sessions`);
    assert.ok(Math.abs(mean - 30) < 3, `mean session ${mean} min`);
  });

  test("day/night cycle: intermittent devices are online less around 04:00 local than around 16:00", () => {
    const t = generateSynthetic(
      parseSyntheticSpec("synthetic:intermittent=1,tz=0,maintenance=0,diurnal=0.9"),
      1000,
      9,
    );
    const onlineAt = (h: number) =>
      t.devices.filter((d) => d.sessions.some(([a, b]) => a <= h * 3600 && h * 3600 < b)).length;
    assert.ok(onlineAt(16) > onlineAt(4) * 1.3, `online at 16:00 ${onlineAt(16)}, at 04:00 ${onlineAt(4)}`);
  });

  test("spec keys change the generator's parameters", () => {
    const s = parseSyntheticSpec("synthetic:speed=50,speedSpread=100,intermittent=0,hours=2");
    assert.deepEqual(s, { ...SYNTHETIC_DEFAULTS, speed: 50, speedSpread: 100, intermittent: 0, hours: 2 });
    const t = generateSynthetic(s, 2000, 1);
    assert.equal(t.horizonS, 7200);
    const v = t.devices.map((d) => d.samplesPerSecond);
    const ratio = quantile(v, 0.9) / quantile(v, 0.1);
    assert.ok(ratio > 70 && ratio < 140, `p90/p10 ${ratio}`);
    assert.equal(t.devices.filter((d) => isIntermittent(d, t.horizonS)).length, 0);
  });

  test.each([
    ["synthetics", /is not synthetic/],
    ["synthetic:", /unknown synthetic key ''/],
    ["synthetic:speeds=3", /unknown synthetic key 'speeds'/],
    ["synthetic:speed=0", /speed must be a number in/],
    ["synthetic:intermittent=1.5", /intermittent must be a number in \[0, 1\]/],
    ["synthetic:hours=abc", /hours must be a number/],
    ["synthetic:hours", /hours must be a number .*got ''/],
    ["synthetic:hours=2,hours=3", /given twice/],
    ["synthetic:maintenance=1.5", /maintenance \(windows per day\) must be an integer/],
  ])("a bad spec %s is one E_TRACE_SPEC error", (spec, pattern) => {
    assert.throws(
      () => parseSyntheticSpec(spec),
      (e: unknown) => isFlotillaError(e) && e.code === "E_TRACE_SPEC" && pattern.test(e.message),
    );
  });
});
