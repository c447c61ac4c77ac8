/**
 * Device policy (core/fleet/policy.ts): the parser each policy property's value goes through (on the device that
 * acks it and in the cloud that reads it), training windows in a time zone (daylight saving, half-hour zones,
 * windows that wrap local midnight), the exclusion verdict and its order, and the effective policy the cloud reads
 * from a module's desired and reported properties.
 */
import { describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  DEFAULT_POLICY,
  POLICY_EXCLUSIONS,
  POLICY_PROPERTIES,
  effectivePolicy,
  isTimeZone,
  parsePolicyValue,
  parseTrainingWindows,
  policyError,
  policyExclusion,
  show,
  trainingWindowOpenForS,
  zoneOffsetMs,
  type DevicePolicy,
} from "../../../core/fleet/policy";
import { isFlotillaError } from "../../../core/errors";

/** Asserts `f` throws a one-line FlotillaError with `code` whose message matches `re`. */
function refuses(f: () => unknown, code: string, re: RegExp, what = ""): void {
  assert.throws(
    f,
    (e) => {
      assert.ok(isFlotillaError(e), `${what}: a FlotillaError, not ${String(e)}`);
      assert.equal(e.code, code, what);
      assert.ok(!/[\n\r\u2028\u2029]/.test(e.message), `${what}: one line: ${JSON.stringify(e.message)}`);
      assert.match(e.message, re, what);
      return true;
    },
    what,
  );
}

const H = 3600_000;

describe("parsePolicyValue", () => {
  test("booleans: enabled and meteredLink take true/false; null is the default; anything else is refused", () => {
    assert.equal(parsePolicyValue("enabled", false), false);
    assert.equal(parsePolicyValue("enabled", true), true);
    assert.equal(parsePolicyValue("enabled", null), true, "null: back to the default (enabled)");
    assert.equal(parsePolicyValue("meteredLink", true), true);
    assert.equal(parsePolicyValue("meteredLink", null), false, "null: not metered");
    for (const bad of ["no", "false", 0, 1, {}, [], undefined])
      for (const name of ["enabled", "meteredLink"] as const)
        refuses(
          () => parsePolicyValue(name, bad),
          "E_PROPERTY_INVALID",
          new RegExp(`^${name} must be true or false, not `),
          `${name}=${show(bad)}`,
        );
  });

  test("numbers: ranges, integers, null → 0 (no cap / no floor)", () => {
    assert.equal(parsePolicyValue("maxTrainingMinutes", 2.5), 2.5);
    assert.equal(parsePolicyValue("maxTrainingMinutes", 0), 0);
    assert.equal(parsePolicyValue("maxTrainingMinutes", 1440), 1440);
    assert.equal(parsePolicyValue("maxTrainingMinutes", null), 0);
    assert.equal(parsePolicyValue("maxThreads", 64), 64);
    assert.equal(parsePolicyValue("maxThreads", null), 0);
    for (const name of ["minFreeDiskBytes", "minFreeMemoryBytes", "meteredMaxUploadBytes"] as const) {
      assert.equal(parsePolicyValue(name, 0), 0);
      assert.equal(parsePolicyValue(name, 2 ** 40), 2 ** 40);
      assert.equal(parsePolicyValue(name, null), 0);
      refuses(() => parsePolicyValue(name, 1.5), "E_PROPERTY_INVALID", /must be an integer, not 1\.5$/, name);
      refuses(
        () => parsePolicyValue(name, -1),
        "E_PROPERTY_INVALID",
        /-1 is out of range \(0 to \d+\)$/,
        name,
      );
      refuses(() => parsePolicyValue(name, 2 ** 60), "E_PROPERTY_INVALID", /out of range/, name);
      refuses(
        () => parsePolicyValue(name, "1000"),
        "E_PROPERTY_INVALID",
        /must be an integer from 0 to \d+, not "1000"$/,
        name,
      );
    }
    refuses(
      () => parsePolicyValue("maxTrainingMinutes", 1441),
      "E_PROPERTY_INVALID",
      /^maxTrainingMinutes 1441 is out of range \(0 to 1440\)$/,
    );
    refuses(() => parsePolicyValue("maxTrainingMinutes", -0.5), "E_PROPERTY_INVALID", /out of range/);
    refuses(
      () => parsePolicyValue("maxThreads", 2.5),
      "E_PROPERTY_INVALID",
      /^maxThreads must be an integer, not 2\.5$/,
    );
    refuses(
      () => parsePolicyValue("maxThreads", 65),
      "E_PROPERTY_INVALID",
      /^maxThreads 65 is out of range \(0 to 64\)$/,
    );
    refuses(() => parsePolicyValue("maxThreads", true), "E_PROPERTY_INVALID", /not true$/);
    refuses(() => parsePolicyValue("maxTrainingMinutes", {}), "E_PROPERTY_INVALID", /not \{\}$/);
    // Not JSON values, but a caller may hand them over: the message names them, not "null".
    refuses(() => parsePolicyValue("maxThreads", NaN), "E_PROPERTY_INVALID", /not NaN$/);
    refuses(() => parsePolicyValue("maxTrainingMinutes", Infinity), "E_PROPERTY_INVALID", /not Infinity$/);
  });

  test("trainingWindows: null is no restriction; a zone and 1 to 48 windows; one string is a list of one", () => {
    assert.equal(parsePolicyValue("trainingWindows", null), null);
    assert.deepEqual(
      parsePolicyValue("trainingWindows", {
        timeZone: "Europe/Berlin",
        windows: ["22:00-06:00", "12:00-13:30"],
      }),
      {
        timeZone: "Europe/Berlin",
        windows: ["22:00-06:00", "12:00-13:30"],
      },
    );
    assert.deepEqual(parseTrainingWindows({ timeZone: "UTC", windows: "08:00-09:00" }), {
      timeZone: "UTC",
      windows: ["08:00-09:00"],
    });
  });

  test("trainingWindows: bad values name trainingWindows and the device's local time, not the availability tag or UTC", () => {
    const cases: [unknown, RegExp][] = [
      ["22:00-06:00", /^trainingWindows must be \{"timeZone"/],
      [[], /^trainingWindows must be \{"timeZone"/],
      [{ timeZone: "Europe/Berlin", windows: ["22:00-06:00"], days: [1] }, /unknown member 'days'/],
      [{ windows: ["22:00-06:00"] }, /^trainingWindows\.timeZone undefined is not an IANA time zone/],
      [
        { timeZone: "Mars/Olympus", windows: ["22:00-06:00"] },
        /^trainingWindows\.timeZone "Mars\/Olympus" is not an IANA time zone/,
      ],
      [{ timeZone: "", windows: ["22:00-06:00"] }, /is not an IANA time zone/],
      [
        { timeZone: "Europe/Berlin" },
        /^trainingWindows\.windows must be a list of 1 to 48 "HH:MM-HH:MM" windows \(Europe\/Berlin local time\)$/,
      ],
      [{ timeZone: "Europe/Berlin", windows: [] }, /^trainingWindows\.windows must be a list of 1 to 48/],
      [
        { timeZone: "Asia/Kolkata", windows: ["25:00-26:00"] },
        /^trainingWindows\.windows window start '25:00' is not HH:MM \(Asia\/Kolkata local time\)$/,
      ],
      [
        { timeZone: "UTC", windows: ["08:00-08:00"] },
        /^trainingWindows\.windows window '08:00-08:00' is empty$/,
      ],
      [{ timeZone: "UTC", windows: [7] }, /^trainingWindows\.windows window 7 is not a string$/],
      [{ timeZone: "UTC", windows: ["8-9-10"] }, /is not HH:MM-HH:MM$/],
      [{ timeZone: "UTC", windows: ["08:00-0\n9:00"] }, /window end '0 9:00' is not HH:MM/],
      [{ timeZone: "UTC", windows: ["08:00-24:30"] }, /window end '24:30' is after 24:00$/],
    ];
    for (const [v, re] of cases) {
      refuses(() => parsePolicyValue("trainingWindows", v), "E_PROPERTY_INVALID", re, show(v));
      assert.throws(
        () => parsePolicyValue("trainingWindows", v),
        (e) => !/availability|UTC windows/.test((e as Error).message),
      );
    }
    const long = Array.from({ length: 49 }, () => "08:00-09:00");
    refuses(() => parseTrainingWindows({ timeZone: "UTC", windows: long }), "E_PROPERTY_INVALID", /1 to 48/);
  });

  test("an unknown name is E_PROPERTY_UNKNOWN", () => {
    refuses(
      () => parsePolicyValue("colour" as "enabled", 1),
      "E_PROPERTY_UNKNOWN",
      /^'colour' is not a device policy property$/,
    );
  });

  test("every name in POLICY_PROPERTIES parses null to its default", () => {
    for (const names of Object.values(POLICY_PROPERTIES))
      for (const name of names) assert.doesNotThrow(() => parsePolicyValue(name, null), name);
  });

  test("show bounds and flattens what it quotes", () => {
    assert.equal(show("x".repeat(200)).length, 80);
    assert.ok(!/[\n\u2028]/.test(show("a\u2028b")));
    assert.equal(show(undefined), "undefined");
    assert.equal(show(-Infinity), "-Infinity");
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    assert.equal(typeof show(cyclic), "string");
    assert.equal(show(10n), "10");
  });
});

describe("time zones", () => {
  test("zoneOffsetMs: fixed, half-hour and daylight-saving zones", () => {
    const jan = Date.UTC(2026, 0, 15, 12);
    const jul = Date.UTC(2026, 6, 15, 12);
    assert.equal(zoneOffsetMs("UTC", jan), 0);
    assert.equal(zoneOffsetMs("Asia/Kolkata", jan), 5.5 * H);
    assert.equal(zoneOffsetMs("Asia/Kolkata", jul), 5.5 * H);
    assert.equal(zoneOffsetMs("Europe/Berlin", jan), 1 * H);
    assert.equal(zoneOffsetMs("Europe/Berlin", jul), 2 * H);
    assert.equal(zoneOffsetMs("America/St_Johns", jan), -3.5 * H);
    // Berlin's spring change, 2026-03-29 01:00 UTC: 02:00 CET becomes 03:00 CEST.
    assert.equal(zoneOffsetMs("Europe/Berlin", Date.UTC(2026, 2, 29, 0, 59, 59, 999)), 1 * H);
    assert.equal(zoneOffsetMs("Europe/Berlin", Date.UTC(2026, 2, 29, 1)), 2 * H);
    assert.equal(
      zoneOffsetMs("Europe/Berlin", Date.UTC(2026, 2, 29, 1, 0, 0, 500)),
      2 * H,
      "sub-second instants",
    );
  });

  test("a zone the runtime does not know is a one-line E_PROPERTY_INVALID, never a RangeError", () => {
    assert.equal(isTimeZone("Mars/Olympus"), false);
    assert.equal(isTimeZone("Asia/Kolkata"), true);
    refuses(() => zoneOffsetMs("Mars/Olympus", 0), "E_PROPERTY_INVALID", /Mars\/Olympus/);
    refuses(
      () => trainingWindowOpenForS({ timeZone: "Mars/Olympus", windows: ["00:00-24:00"] }, 0),
      "E_PROPERTY_INVALID",
      /Mars\/Olympus/,
    );
  });

  test("trainingWindowOpenForS: no windows is always open; a window in local time", () => {
    assert.equal(trainingWindowOpenForS(null, 0), Infinity);
    assert.equal(trainingWindowOpenForS(undefined, 0), Infinity);
    const w = { timeZone: "Europe/Berlin", windows: ["08:00-12:00"] };
    // 2026-07-15 07:00 UTC = 09:00 CEST: 3 h left.
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 6, 15, 7)), 3 * 3600);
    // 2026-01-15 07:00 UTC = 08:00 CET: 4 h left.
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 0, 15, 7)), 4 * 3600);
    // 11:00 UTC in summer = 13:00 CEST: closed.
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 6, 15, 11)), 0);
  });

  test("a half-hour zone with a window that wraps local midnight (Asia/Kolkata, UTC+05:30)", () => {
    const w = { timeZone: "Asia/Kolkata", windows: ["22:00-06:00"] };
    // 22:00 IST = 16:30 UTC; 06:00 IST = 00:30 UTC next day.
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 11, 7, 16, 29)), 0);
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 11, 7, 16, 30)), 8 * 3600);
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 11, 7, 23, 30)), 3600, "05:00 IST");
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 11, 8, 0, 30)), 0, "06:00 IST: ended");
    assert.equal(trainingWindowOpenForS(w, Date.UTC(2026, 11, 7, 12)), 0, "17:30 IST");
  });

  test("on a daylight-saving change day the window keeps its local hours and its length in real time", () => {
    const night = { timeZone: "Europe/Berlin", windows: ["00:00-06:00"] };
    // 2026-03-28 23:30 UTC = 00:30 CET; the window ends at 06:00 CEST = 04:00 UTC: 4.5 h of real time, not 5.5.
    assert.equal(trainingWindowOpenForS(night, Date.UTC(2026, 2, 28, 23, 30)), 4.5 * 3600);
    // Autumn: 2026-10-25 01:00 UTC clocks go back from 03:00 CEST to 02:00 CET. 2026-10-24 22:30 UTC = 00:30 CEST;
    // 06:00 CET = 05:00 UTC: 6.5 h of real time.
    assert.equal(trainingWindowOpenForS(night, Date.UTC(2026, 9, 24, 22, 30)), 6.5 * 3600);
    const morning = { timeZone: "Europe/Berlin", windows: ["07:00-08:00"] };
    // The day after the spring change the window is 05:00-06:00 UTC, the day before 06:00-07:00 UTC.
    assert.equal(trainingWindowOpenForS(morning, Date.UTC(2026, 2, 28, 6, 30)), 1800);
    assert.equal(trainingWindowOpenForS(morning, Date.UTC(2026, 2, 28, 5, 30)), 0);
    assert.equal(trainingWindowOpenForS(morning, Date.UTC(2026, 2, 29, 5, 30)), 1800);
    assert.equal(trainingWindowOpenForS(morning, Date.UTC(2026, 2, 29, 6, 30)), 0);
  });
});

describe("policyExclusion", () => {
  const now = Date.UTC(2026, 11, 7, 12); // 12:00 UTC
  const open = { timeZone: "UTC", windows: ["11:00-13:00"] };
  const closed = { timeZone: "UTC", windows: ["13:00-11:00"] };
  const strict: DevicePolicy = {
    enabled: false,
    trainingWindows: closed,
    minFreeDiskBytes: 1000,
    minFreeMemoryBytes: 1000,
    maxTrainingMinutes: 1,
    meteredLink: true,
    meteredMaxUploadBytes: 100,
  };
  const poor = { freeDiskBytes: 10, freeMemoryBytes: 10, trainingSeconds: 600, uploadBytes: 1000 };

  test("the default policy excludes nobody", () => {
    assert.equal(policyExclusion(DEFAULT_POLICY, poor, now), undefined);
    assert.equal(policyExclusion(DEFAULT_POLICY, {}, now), undefined);
  });

  test("reasons come in POLICY_EXCLUSIONS order: each one once those before it are lifted", () => {
    const seen: string[] = [];
    const lift: Partial<DevicePolicy>[] = [
      { enabled: true },
      { trainingWindows: open },
      { minFreeDiskBytes: 0 },
      { minFreeMemoryBytes: 0 },
      { maxTrainingMinutes: 0 },
      { meteredLink: false },
    ];
    let p: DevicePolicy = strict;
    for (const l of lift) {
      const v = policyExclusion(p, poor, now);
      assert.ok(v, `excluded before lifting ${Object.keys(l).join()}`);
      assert.ok(v.detail.length > 0 && !v.detail.includes("\n"));
      seen.push(v.reason);
      p = { ...p, ...l };
    }
    assert.deepEqual(seen, [...POLICY_EXCLUSIONS]);
    assert.equal(policyExclusion(p, poor, now), undefined, "all lifted");
  });

  test("each reason's detail", () => {
    const only = (p: Partial<DevicePolicy>) => policyExclusion({ enabled: true, ...p }, poor, now);
    assert.deepEqual(policyExclusion({ enabled: false }, {}, now), {
      reason: "disabled",
      detail: "participation is disabled by the operator",
    });
    assert.deepEqual(only({ trainingWindows: closed }), {
      reason: "window",
      detail: "outside its training windows (13:00-11:00 UTC)",
    });
    assert.equal(only({ trainingWindows: open }), undefined);
    assert.match(
      only({ minFreeDiskBytes: 2 ** 30 })!.detail,
      /^free disk 0\.00 MiB is below its floor of 1024 MiB$/,
    );
    assert.match(
      only({ minFreeMemoryBytes: 2 ** 21 })!.detail,
      /^free memory 0\.00 MiB is below its floor of 2 MiB$/,
    );
    assert.match(
      only({ maxTrainingMinutes: 5 })!.detail,
      /needs about 10\.0 min of training, over its cap of 5 min$/,
    );
    assert.match(
      only({ meteredLink: true, meteredMaxUploadBytes: 999 })!.detail,
      /over 999 bytes; this round's update is 1000 bytes$/,
    );
    assert.equal(only({ meteredLink: false, meteredMaxUploadBytes: 999 }), undefined, "not metered");
    assert.equal(only({ meteredLink: true }), undefined, "metered without a cap");
    // Floors and caps at exactly the figure do not exclude.
    assert.equal(
      policyExclusion({ enabled: true, minFreeDiskBytes: 10, maxTrainingMinutes: 10 }, poor, now),
      undefined,
    );
  });

  test("a floor just above the free figure says so in bytes when MiB would read the same", () => {
    const v = policyExclusion(
      { enabled: true, minFreeDiskBytes: 2_000_000_001 },
      { freeDiskBytes: 2_000_000_000 },
      now,
    );
    assert.ok(v);
    assert.match(v.detail, /2000000000 bytes is below its floor of 2000000001 bytes/);
  });

  test("unknown facts never exclude", () => {
    const p: DevicePolicy = {
      enabled: true,
      minFreeDiskBytes: 1,
      minFreeMemoryBytes: 1,
      maxTrainingMinutes: 1,
      meteredLink: true,
      meteredMaxUploadBytes: 1,
    };
    assert.equal(policyExclusion(p, {}, now), undefined);
  });

  test("the window verdict follows the zone: the same UTC instant is inside in one zone and outside in another", () => {
    const w = (timeZone: string) => ({
      enabled: true,
      trainingWindows: { timeZone, windows: ["09:00-17:00"] },
    });
    assert.equal(policyExclusion(w("Europe/Berlin"), {}, now), undefined, "13:00 CET");
    assert.equal(policyExclusion(w("America/New_York"), {}, now)?.reason, "window", "07:00 EST");
    assert.equal(policyExclusion(w("Asia/Kolkata"), {}, now)?.reason, "window", "17:30 IST");
    assert.equal(
      policyExclusion(w("Asia/Tokyo"), {}, Date.UTC(2026, 11, 7, 7, 59))?.reason,
      undefined,
      "16:59 JST",
    );
  });

  test("policyError is E_POLICY_EXCLUDED with the reason and detail", () => {
    const e = policyError({ reason: "window", detail: "outside" });
    assert.equal(e.code, "E_POLICY_EXCLUDED");
    assert.equal(e.message, "window: outside");
  });
});

describe("effectivePolicy (what the cloud honours before the device acks)", () => {
  const ack = (value: unknown, ac: number, av: number, ad?: string) => ({
    value,
    ac,
    av,
    ...(ad ? { ad } : {}),
  });

  test("nothing set: the default policy", () => {
    assert.deepEqual(effectivePolicy({}, {}), { policy: DEFAULT_POLICY, pending: [], refused: [] });
    assert.deepEqual(
      effectivePolicy({ trainer: { $version: 4 } }, { trainer: { $version: 9 } }).policy,
      DEFAULT_POLICY,
    );
  });

  test("a valid desired value newer than the module's ack (or not acked yet) takes effect at once, and is pending", () => {
    const e = effectivePolicy(
      {
        trainer: { $version: 5, enabled: false, maxThreads: 2 },
        "update-queue": { $version: 3, meteredLink: true },
      },
      { trainer: { maxThreads: ack(4, 200, 4) } },
    );
    assert.deepEqual(e.policy, { enabled: false, maxThreads: 2, meteredLink: true });
    assert.deepEqual([...e.pending].sort(), ["enabled", "maxThreads", "meteredLink"]);
    assert.deepEqual(e.refused, []);
  });

  test("an acked value is the module's (200 applied, 202 pending at the device)", () => {
    const w = { timeZone: "UTC", windows: ["01:00-02:00"] };
    const e = effectivePolicy(
      { trainer: { $version: 7, enabled: false, trainingWindows: w } },
      { trainer: { enabled: ack(false, 200, 7), trainingWindows: ack(w, 202, 7) } },
    );
    assert.deepEqual(e.policy, { enabled: false, trainingWindows: w });
    assert.deepEqual(e.pending, []);
  });

  test("a refused value never takes effect: the last good value (the ack's) holds, else the default", () => {
    // Not acked yet and invalid: the last acked value holds.
    let e = effectivePolicy(
      { trainer: { $version: 8, enabled: "no" } },
      { trainer: { enabled: ack(false, 200, 6) } },
    );
    assert.equal(e.policy.enabled, false);
    assert.deepEqual(e.refused, [{ name: "enabled", reason: 'enabled must be true or false, not "no"' }]);
    // Acked 400: the ack's value is the last good one.
    e = effectivePolicy(
      { trainer: { $version: 9, maxTrainingMinutes: 99999 } },
      { trainer: { maxTrainingMinutes: ack(30, 400, 9, "out of range") } },
    );
    assert.equal(e.policy.maxTrainingMinutes, 30);
    assert.equal(e.refused.length, 1);
    // Nothing acked: the default (enabled).
    e = effectivePolicy({ trainer: { $version: 2, enabled: "no" } }, {});
    assert.equal(e.policy.enabled, true);
    assert.equal(policyExclusion(e.policy, {}, 0), undefined);
  });

  test("the ack is judged against the version the property last changed at ($metadata), not the document's", () => {
    // The Function rewrites the trainer's desired `flotilla` (round orders) every round, so the document's $version
    // moves past an ack that answers the operator's last change of `enabled`.
    const e = effectivePolicy(
      {
        trainer: {
          $version: 12,
          enabled: false,
          $metadata: { enabled: { $lastUpdated: "2026-12-07T10:00:00Z", $lastUpdatedVersion: 5 } },
        },
      },
      { trainer: { enabled: ack(false, 200, 5) } },
    );
    assert.deepEqual(e.pending, [], "acked at the version it last changed at");
    assert.equal(e.policy.enabled, false);
    // An ack whose value the hub dropped (a null value in effect) still counts as an ack.
    const w = effectivePolicy(
      { trainer: { $version: 4, maxThreads: 2 } },
      { trainer: { maxThreads: { ac: 500, av: 4, ad: "failed" } } },
    );
    assert.equal(w.policy.maxThreads, 0, "the value in effect: the default");
    assert.deepEqual(w.pending, []);
  });

  test("a current ack wins over the desired value (the cloud does not second-guess an applied change)", () => {
    const e = effectivePolicy(
      { trainer: { $version: 3, minFreeDiskBytes: 1000 } },
      { trainer: { minFreeDiskBytes: ack(1000, 200, 3) } },
    );
    assert.equal(e.policy.minFreeDiskBytes, 1000);
    assert.deepEqual(e.pending, []);
  });

  test("an absent desired value is the default; a malformed ack or a bad acked value is ignored", () => {
    const e = effectivePolicy(
      { trainer: { $version: 3 }, "update-queue": { $version: 3, meteredLink: true } },
      {
        trainer: { enabled: ack(false, 200, 2) },
        "update-queue": { meteredLink: { value: "yes", ac: 200, av: 2 }, meteredMaxUploadBytes: 5 },
      },
    );
    assert.equal(e.policy.enabled, true, "the operator removed it: the device goes back to the default");
    assert.equal(e.policy.meteredLink, true, "desired newer than the ack");
    assert.equal(e.policy.meteredMaxUploadBytes, undefined);
  });

  test("a property is read from its owner only (enabled in the update-queue's twin is not the trainer's)", () => {
    const e = effectivePolicy(
      { "update-queue": { $version: 1, enabled: false }, trainer: { $version: 1, meteredLink: true } },
      {},
    );
    assert.deepEqual(e.policy, DEFAULT_POLICY);
  });
});
