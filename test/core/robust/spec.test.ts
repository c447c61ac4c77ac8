import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  AGGREGATOR_RULES,
  DEFAULT_AGGREGATOR,
  checkAggregatorCompatible,
  formatAggregator,
  isPlainMean,
  isStreaming,
  parseAggregator,
  resolveCount,
  type AggregatorSpec,
} from "../../../core/robust/spec";

const code = (c: string) => (e: unknown) => (e as { code?: string }).code === c;

/** The one-line E_CONFIG_AGGREGATOR message of a bad spec. */
function refusal(raw: unknown): string {
  try {
    parseAggregator(raw as string);
  } catch (e) {
    assert.equal((e as { code?: string }).code, "E_CONFIG_AGGREGATOR", `code for ${JSON.stringify(raw)}`);
    const m = (e as Error).message;
    assert.ok(!/[\r\n]/.test(m), `one line for ${JSON.stringify(raw)}: ${m}`);
    return m;
  }
  return assert.fail(`${JSON.stringify(raw)} was accepted`);
}

test("every rule parses, with counts and fractions, and formats back to its canonical text", () => {
  const cases: [string, AggregatorSpec][] = [
    ["mean", { rule: "mean" }],
    ["median", { rule: "median" }],
    ["geomed", { rule: "geomed" }],
    ["fltrust", { rule: "fltrust" }],
    ["trimmed-mean:2", { rule: "trimmed-mean", trim: { count: 2 } }],
    ["trimmed-mean:0.1", { rule: "trimmed-mean", trim: { fraction: 0.1 } }],
    ["trimmed-mean:0", { rule: "trimmed-mean", trim: { count: 0 } }],
    ["krum:3", { rule: "krum", f: { count: 3 } }],
    ["krum:0.2", { rule: "krum", f: { fraction: 0.2 } }],
    ["krum:0", { rule: "krum", f: { count: 0 } }],
    ["multi-krum:2,5", { rule: "multi-krum", f: { count: 2 }, m: { count: 5 } }],
    ["multi-krum:0.2,0.5", { rule: "multi-krum", f: { fraction: 0.2 }, m: { fraction: 0.5 } }],
    ["multi-krum:1,0.6", { rule: "multi-krum", f: { count: 1 }, m: { fraction: 0.6 } }],
    ["centered-clip:1", { rule: "centered-clip", tau: 1 }],
    ["centered-clip:0.25", { rule: "centered-clip", tau: 0.25 }],
    ["centered-clip:1e-7", { rule: "centered-clip", tau: 1e-7 }],
    ["norm:5+mean", { rule: "mean", bound: { fixed: 5 } }],
    ["norm:0.5+median", { rule: "median", bound: { fixed: 0.5 } }],
    ["norm:q0.5+krum:2", { rule: "krum", f: { count: 2 }, bound: { quantile: 0.5 } }],
    ["norm:q1+fltrust", { rule: "fltrust", bound: { quantile: 1 } }],
  ];
  for (const [text, spec] of cases) {
    assert.deepEqual(parseAggregator(text), spec, text);
    assert.equal(formatAggregator(spec), text, `canonical ${text}`);
    assert.deepEqual(parseAggregator(formatAggregator(spec)), spec, `round trip ${text}`);
  }
  // Case and surrounding spaces are ignored; the canonical text is lower case.
  assert.equal(formatAggregator(parseAggregator("  Norm:Q0.5+Multi-Krum:2,5 ")), "norm:q0.5+multi-krum:2,5");
  assert.equal(formatAggregator(parseAggregator("norm:.5+mean")), "norm:0.5+mean");
  // Every rule of the catalogue is reachable.
  const named = new Set(cases.map(([, s]) => s.rule));
  for (const r of AGGREGATOR_RULES) assert.ok(named.has(r), r);
});

test("default is the documented spec, parsed like any other", () => {
  const d = parseAggregator("default");
  assert.deepEqual(d, parseAggregator(DEFAULT_AGGREGATOR));
  assert.deepEqual(parseAggregator(" DEFAULT "), d);
  assert.equal(formatAggregator(d), formatAggregator(parseAggregator(DEFAULT_AGGREGATOR)));
  assert.ok(!isPlainMean(d), "the default defends");
});

test("counts and fractions resolve against the round's size (fractions round down)", () => {
  assert.equal(resolveCount({ count: 3 }, 10), 3);
  assert.equal(resolveCount({ count: 3 }, 2), 3, "a count is a count; the rule bounds it by n");
  assert.equal(resolveCount({ fraction: 0.2 }, 10), 2);
  assert.equal(resolveCount({ fraction: 0.2 }, 9), 1);
  assert.equal(resolveCount({ fraction: 0.2 }, 4), 0);
});

test("streaming and plain mean: only the mean with no bound or a fixed bound streams", () => {
  assert.ok(isStreaming(parseAggregator("mean")) && isPlainMean(parseAggregator("mean")));
  assert.ok(isStreaming(parseAggregator("norm:3+mean")) && !isPlainMean(parseAggregator("norm:3+mean")));
  assert.ok(!isStreaming(parseAggregator("norm:q0.5+mean")));
  for (const r of [
    "median",
    "trimmed-mean:1",
    "krum:1",
    "multi-krum:1,2",
    "geomed",
    "centered-clip:1",
    "fltrust",
  ]) {
    assert.ok(!isStreaming(parseAggregator(r)), r);
    assert.ok(!isStreaming(parseAggregator(`norm:1+${r}`)), r);
  }
});

test("bad specs are one E_CONFIG_AGGREGATOR line naming what was expected", () => {
  const bad: [unknown, RegExp][] = [
    ["", /unknown rule ''/],
    ["avg", /unknown rule 'avg'/],
    ["median:3", /median takes no parameter/],
    ["mean:1", /mean takes no parameter/],
    ["geomed:2", /takes no parameter/],
    ["fltrust:1", /takes no parameter/],
    ["trimmed-mean", /needs a parameter/],
    ["trimmed-mean:", /needs a parameter/],
    ["trimmed-mean:0.5", /fraction must be in \(0, 0.5\)/],
    ["trimmed-mean:2.5", /neither a fraction below 1 nor a whole count/],
    ["trimmed-mean:-1", /is not a number/],
    ["trimmed-mean:x", /is not a number/],
    ["krum", /needs a parameter/],
    ["krum:0.5", /fraction must be in \(0, 0.5\)/],
    ["krum:1:2", /too many ':' parts/],
    ["multi-krum:2", /multi-krum takes F,M/],
    ["multi-krum:2,3,4", /multi-krum takes F,M/],
    ["multi-krum:2,0", /M as a fraction must be in \(0, 1\)/],
    ["multi-krum:0.6,3", /F as a fraction/],
    ["centered-clip:0", /TAU must be > 0/],
    ["centered-clip:inf", /is not a number/],
    ["centered-clip:1e999", /is not a number/],
    ["centered-clip", /needs a parameter/],
    ["norm:0+mean", /the norm bound must be > 0/],
    ["norm:q0+mean", /quantile must be in \(0, 1\]/],
    ["norm:q1.5+mean", /quantile must be in \(0, 1\]/],
    ["norm:q+mean", /quantile '' is not a number/],
    ["norm:abc+mean", /is not a number/],
    ["clip:1+mean", /is not a norm bound/],
    ["norm:1+norm:2+mean", /at most one norm bound and one rule/],
    ["norm:1+default", /unknown rule 'default'/],
    ["norm:1+", /unknown rule ''/],
    ["NaN", /unknown rule/],
    [42, /not a string/],
    [undefined, /not a string/],
    ["median\nkrum:1", /unknown rule/],
    ["krum:1\n2", /is not a number/],
    ["norm:1\u0007+mean", /is not a number/],
  ];
  for (const [raw, why] of bad) {
    const m = refusal(raw);
    assert.match(m, why, `${JSON.stringify(raw)}: ${m}`);
    assert.match(m, /expected default \| \[norm:C\|norm:qQ\+\]mean/, "names the grammar");
  }
});

test("checkAggregatorCompatible: secure aggregation allows only the mean (fixed bound on devices); DP only the plain mean", () => {
  const ok = (s: string, job: { secureAggregation?: boolean; dp?: boolean }) =>
    checkAggregatorCompatible(parseAggregator(s), job);
  for (const s of ["mean", "median", "krum:1", "fltrust", "norm:q0.5+centered-clip:1"]) ok(s, {});
  ok("mean", { secureAggregation: true });
  ok("norm:2+mean", { secureAggregation: true });
  ok("mean", { dp: true });
  ok("mean", { secureAggregation: true, dp: true });
  for (const s of [
    "median",
    "trimmed-mean:1",
    "krum:1",
    "multi-krum:1,2",
    "geomed",
    "centered-clip:1",
    "fltrust",
  ]) {
    assert.throws(() => ok(s, { secureAggregation: true }), code("E_CONFIG_CONFLICT"), s);
    assert.throws(() => ok(s, { dp: true }), code("E_CONFIG_CONFLICT"), s);
  }
  assert.throws(() => ok("norm:q0.5+mean", { secureAggregation: true }), code("E_CONFIG_CONFLICT"));
  assert.throws(() => ok("norm:2+mean", { dp: true }), /differential privacy/);
  assert.throws(
    () => ok("default", { secureAggregation: true }),
    /secure aggregation shows it only their sum/,
  );
  try {
    ok("median", { secureAggregation: true });
  } catch (e) {
    assert.ok(!(e as Error).message.includes("\n"));
  }
});
