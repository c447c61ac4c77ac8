/** Issue 11: count and size flags have upper bounds (E_CONFIG_RANGE) or a memory estimate (E_CONFIG_MEMORY). */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { check, scratch } from "./spawn-cli";
import { DEFAULT_CONFIG, validateConfig } from "../../../local/sim/config";

test("count and size flags have upper bounds, checked before anything is allocated", async () => {
  const tmp = scratch();
  const range = (flag: string, max: number, got: string) =>
    new RegExp(
      `^flotilla: E_CONFIG_RANGE: --${flag} must be at most ${String(max).replace(/[.+]/g, "\\$&")} \\(got ${got}\\)$`,
    );
  const cases: [string[], RegExp][] = [
    // Unbounded, this one grows memory until the kernel kills the process (or the SIGKILL above does).
    [["simulate", "--devices", "100000000"], range("devices", 100000, "100000000")],
    [["simulate", "--rounds", "1e9"], range("rounds", 100000, "1e9")],
    [
      ["simulate", "--devices", "50", "--clients-per-round", "1000000"],
      range("clients-per-round", 100000, "1000000"),
    ],
    [["simulate", "--local-epochs", "1000000"], range("local-epochs", 1000, "1000000")],
    [["simulate", "--batch-size", "100000000"], range("batch-size", 100000, "100000000")],
    [["simulate", "--workers", "100000"], range("workers", 64, "100000")],
    [["simulate", "--samples-per-device", "1e10"], range("samples-per-device", 1000000, "1e10")],
    [["simulate", "--seed", "1e20"], range("seed", 4294967295, "1e20")],
    // Node's timers hold 2^31-1 ms; a longer timeout fired after 1 ms (TimeoutOverflowWarning).
    [["simulate", "--round-timeout", "1e7"], range("round-timeout", 1000000, "1e7")],
    [
      ["simulate", "--secure-aggregation", "--secagg-step-timeout", "1e7"],
      range("secagg-step-timeout", 1000000, "1e7"),
    ],
    [
      ["simulate", "--secure-aggregation", "--secagg-neighbours", "1e9"],
      range("secagg-neighbours", 65535, "1e9"),
    ],
    [
      ["simulate", "--secure-aggregation", "--secagg-threshold", "1e9"],
      range("secagg-threshold", 65535, "1e9"),
    ],
    [
      ["simulate", "--dp-noise", "1", "--dp-clip", "1", "--dp-min-survivors", "1e9"],
      range("dp-min-survivors", 100000, "1e9"),
    ],
    [["simulate", "--dp-noise", "1e300", "--dp-clip", "1"], range("dp-noise", 1000, "1e300")],
    [["simulate", "--dp-noise", "1", "--dp-clip", "1e300"], range("dp-clip", 3.4028234663852886e38, "1e300")],
    [
      ["simulate", "--dp-noise", "1", "--dp-clip", "adaptive", "--dp-clip-count-stddev", "1e300"],
      range("dp-clip-count-stddev", 1000000, "1e300"),
    ],
    [["simulate", "--secure-aggregation", "--secagg-clip", "1e300"], range("secagg-clip", 1000, "1e300")],
    // Each flag within its bound, but the product is far beyond any machine: a memory estimate says so.
    [["simulate", "--devices", "100000", "--samples-per-device", "1000000"], /^flotilla: E_CONFIG_MEMORY: /],
    [["bench", "aggregate", "--params", "1e11"], range("params", 100000000, "1e11")],
    [["bench", "aggregate", "--dp", "--params", "1e11"], range("params", 100000000, "1e11")],
    [["bench", "aggregate", "--updates", "1e12"], range("updates", 1000000, "1e12")],
    [["bench", "compress", "--params", "1e11"], range("params", 100000000, "1e11")],
    [["bench", "compress", "--repeats", "1e9"], range("repeats", 1000, "1e9")],
    [["bench", "secagg", "--clients", "100000"], range("clients", 10000, "100000")],
    [["bench", "secagg", "--params", "1e11"], range("params", 10000000, "1e11")],
    [["bench", "train", "--batch-size", "100000000"], range("batch-size", 4096, "100000000")],
    [["bench", "train", "--seconds", "1e9"], range("seconds", 3600, "1e9")],
    [["hub", "--mqtt-port", "70000", "--state-dir", tmp], range("mqtt-port", 65535, "70000")],
    [["hub", "--https-port", "70000", "--state-dir", tmp], range("https-port", 65535, "70000")],
  ];
  assert.deepEqual(await check(cases, tmp), []);
});

test("validateConfig applies the same bounds to presets and programmatic configs", () => {
  const codeOf = (f: () => unknown): string | undefined => {
    try {
      f();
    } catch (e) {
      return (e as { code?: string }).code;
    }
    return undefined;
  };
  assert.equal(
    codeOf(() => validateConfig({ ...DEFAULT_CONFIG, devices: 1e8, clientsPerRound: 10 })),
    "E_CONFIG_RANGE",
  );
  assert.equal(
    codeOf(() => validateConfig({ ...DEFAULT_CONFIG, roundTimeoutMs: 1e10 })),
    "E_CONFIG_RANGE",
  );
  assert.equal(
    codeOf(() => validateConfig({ ...DEFAULT_CONFIG, devices: 100_000, samplesPerDevice: 1_000_000 })),
    "E_CONFIG_MEMORY",
  );
  assert.equal(
    codeOf(() => validateConfig({ ...DEFAULT_CONFIG })),
    undefined,
  );
});
