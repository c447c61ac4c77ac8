import { describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import { generateSynthetic, parseSyntheticSpec } from "../../../core/fleet/synthetic";
import {
  availability,
  isOnline,
  nextOnline,
  onlineUntil,
  speedFor,
  subtractIntervals,
  type DeviceTrace,
} from "../../../core/fleet/trace";
import { formatSessionsCsv, formatTrace, parseTrace } from "../../../core/fleet/trace-file";

const dev = (sessions: [number, number][], maintenance: [number, number][] = []): DeviceTrace => ({
  deviceId: "d",
  samplesPerSecond: 100,
  uplinkBytesPerSecond: 1000,
  downlinkBytesPerSecond: 4000,
  rttMs: 50,
  sessions,
  maintenance,
});

/** Brute-force answers by scanning every session. */
const bruteOnline = (d: DeviceTrace, t: number) => d.sessions.some(([a, b]) => a <= t && t < b);
const bruteNext = (d: DeviceTrace, t: number) =>
  bruteOnline(d, t) ? t : (d.sessions.find(([a]) => a > t)?.[0] ?? null);
const bruteUntil = (d: DeviceTrace, t: number) => d.sessions.find(([a, b]) => a <= t && t < b)?.[1] ?? null;

describe("trace helpers", () => {
  test("isOnline, nextOnline and onlineUntil agree with a brute-force scan", () => {
    const fleet = generateSynthetic(parseSyntheticSpec("synthetic:intermittent=1,hours=12"), 40, 7);
    for (const d of [
      ...fleet.devices,
      dev([]),
      dev([[0, 10]]),
      dev([
        [5, 10],
        [10, 20],
        [30, 31],
      ]),
    ]) {
      const probes = [-1, 0, fleet.horizonS, fleet.horizonS + 1];
      for (const [a, b] of d.sessions) probes.push(a, b, a - 1e-3, b - 1e-3, (a + b) / 2);
      for (let t = 0; t < fleet.horizonS; t += 997) probes.push(t);
      for (const t of probes) {
        assert.equal(isOnline(d, t), bruteOnline(d, t), `${d.deviceId} isOnline(${t})`);
        assert.equal(nextOnline(d, t), bruteNext(d, t), `${d.deviceId} nextOnline(${t})`);
        assert.equal(onlineUntil(d, t), bruteUntil(d, t), `${d.deviceId} onlineUntil(${t})`);
      }
    }
  });

  test("availability is the online fraction of the horizon", () => {
    assert.equal(
      availability(
        dev([
          [0, 25],
          [50, 75],
        ]),
        100,
      ),
      0.5,
    );
    assert.equal(availability(dev([]), 100), 0);
  });

  test("speedFor: a measured model speed, else the reference speed over the relative cost", () => {
    const d = { ...dev([]), modelSpeed: { cnn: 7 } };
    assert.equal(speedFor(d), 100);
    assert.equal(speedFor(d, "cnn", 50), 7);
    assert.equal(speedFor(d, "autoencoder", 4), 25);
  });

  test("subtractIntervals cuts holes out of intervals", () => {
    assert.deepEqual(
      subtractIntervals(
        [
          [0, 10],
          [20, 30],
        ],
        [
          [2, 3],
          [9, 21],
          [25, 40],
        ],
      ),
      [
        [0, 2],
        [3, 9],
        [21, 25],
      ],
    );
    assert.deepEqual(subtractIntervals([[0, 10]], []), [[0, 10]]);
    assert.deepEqual(subtractIntervals([[0, 10]], [[0, 10]]), []);
  });
});

describe("trace file", () => {
  test("a synthetic trace round-trips through the JSON lines format", () => {
    const t = generateSynthetic(parseSyntheticSpec("synthetic"), 50, 3);
    t.devices[0].modelSpeed = { cnn: 12.5 };
    assert.deepEqual(parseTrace(formatTrace(t)), t);
  });

  test("the sessions CSV has one row per session and maintenance window, in time order per device", () => {
    const d = {
      ...dev(
        [
          [0, 10],
          [20, 30],
        ],
        [[10, 20]],
      ),
      deviceId: 'a,"b"',
    };
    assert.equal(
      formatSessionsCsv({ horizonS: 30, devices: [d] }),
      'deviceId,kind,startS,endS\n"a,""b""",online,0,10\n"a,""b""",maintenance,10,20\n"a,""b""",online,20,30\n',
    );
  });

  test("without a header the horizon is the latest interval end; blank lines are skipped", () => {
    const text =
      '{"deviceId":"a","samplesPerSecond":1,"uplinkBytesPerSecond":2,"downlinkBytesPerSecond":3,"rttMs":4,"sessions":[[0,50]]}\n\n' +
      '{"deviceId":"b","samplesPerSecond":1,"uplinkBytesPerSecond":2,"downlinkBytesPerSecond":3,"rttMs":4,"sessions":[],"maintenance":[[60,70]]}\n';
    const t = parseTrace(text);
    assert.equal(t.horizonS, 70);
    assert.equal(t.devices.length, 2);
    assert.deepEqual(t.devices[1].maintenance, [[60, 70]]);
  });

  const good =
    '{"deviceId":"a","samplesPerSecond":1,"uplinkBytesPerSecond":2,"downlinkBytesPerSecond":3,"rttMs":4,"sessions":[[0,50]]}';
  const cases: [string, RegExp][] = [
    [`{"flotillaTrace":1,"horizonS":100}\n${good}\nnot json`, /^f\.jsonl: line 3: not JSON/],
    [`${good}\n[1,2]`, /^f\.jsonl: line 2: expected a JSON object/],
    [`${good}\n${good}`, /^f\.jsonl: line 2: device 'a' appears twice/],
    [good.replace('"rttMs":4', '"rttMs":-4'), /^f\.jsonl: line 1: rttMs must be a number > 0/],
    [good.replace('"rttMs":4', '"rtt":4'), /^f\.jsonl: line 1: unknown field 'rtt'/],
    [
      good.replace("[[0,50]]", "[[0,50],[40,60]]"),
      /^f\.jsonl: line 1: sessions\[1\] starts before sessions\[0\] ends/,
    ],
    [good.replace("[[0,50]]", "[[50,50]]"), /^f\.jsonl: line 1: sessions\[0\] must be \[startS, endS\]/],
    [
      good.replace("[[0,50]]", '[[0,50]],"maintenance":[[40,45]]'),
      /^f\.jsonl: line 1: session \[0, 50\] overlaps/,
    ],
    [
      `{"flotillaTrace":1,"horizonS":10}\n\n${good}`,
      /^f\.jsonl: line 3: an interval ends at 50, after the horizon 10/,
    ],
    [`{"flotillaTrace":2,"horizonS":100}\n${good}`, /^f\.jsonl: line 1: unsupported flotillaTrace version 2/],
    [`${good}\n{"flotillaTrace":1,"horizonS":100}`, /^f\.jsonl: line 2: the header must be the first line/],
    [`{"flotillaTrace":1,"horizonS":100}\n`, /^f\.jsonl: no devices/],
  ];
  test.each(cases)("a bad file is one E_TRACE_FILE line naming the line: %s", (text, pattern) => {
    assert.throws(
      () => parseTrace(text, "f.jsonl"),
      (e: unknown) =>
        isFlotillaError(e) &&
        e.code === "E_TRACE_FILE" &&
        pattern.test(e.message) &&
        !e.message.includes("\n"),
    );
  });
});
