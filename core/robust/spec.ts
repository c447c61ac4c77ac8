/**
 * The `--aggregator` spec (and the Function job spec's `aggregator` member): which rule turns a round's updates
 * into the aggregate delta the server strategy steps on, optionally after norm bounding.
 *
 *   spec   := "default" | [bound "+"] rule
 *   bound  := "norm:" C          each update scaled to L2 norm ≤ C (Sun et al. 2019)
 *           | "norm:q" Q         … to the Q-quantile of the round's norms, Q in (0, 1] (e.g. norm:q0.5, the median)
 *   rule   := "mean"                       FedAvg's sample-weighted mean (streams: no update is buffered)
 *           | "median"                     coordinate-wise median (Yin et al. 2018)
 *           | "trimmed-mean:" B            coordinate-wise trimmed mean; B < 1: fraction trimmed per side, else count
 *           | "krum:" F                    Krum (Blanchard et al. 2017); F < 1: fraction of the round, else count
 *                                          (B and F: 0 is the count zero; a fraction must be in (0, 0.5))
 *           | "multi-krum:" F "," M        Multi-Krum: the M best-scoring updates averaged (M < 1: fraction)
 *           | "geomed"                     geometric median, smoothed Weiszfeld / RFA (Pillutla et al. 2022)
 *           | "centered-clip:" TAU         centered clipping around the previous aggregate (Karimireddy et al. 2021)
 *           | "fltrust"                    FLTrust (Cao et al. 2021): trust by cosine to the server's root update
 *
 * Parsing is pure and total: any other text is one E_CONFIG_AGGREGATOR line naming what was expected.
 */
import { fail } from "../errors";

export const AGGREGATOR_RULES = [
  "mean",
  "median",
  "trimmed-mean",
  "krum",
  "multi-krum",
  "geomed",
  "centered-clip",
  "fltrust",
] as const;
export type AggregatorRule = (typeof AGGREGATOR_RULES)[number];

/** How many of a round's n updates a count-or-fraction parameter means. */
export type CountOrFraction = { readonly count: number } | { readonly fraction: number };

export type NormBound = { readonly fixed: number } | { readonly quantile: number };

export type RuleSpec =
  | { readonly rule: "mean" }
  | { readonly rule: "median" }
  | { readonly rule: "trimmed-mean"; readonly trim: CountOrFraction }
  | { readonly rule: "krum"; readonly f: CountOrFraction }
  | { readonly rule: "multi-krum"; readonly f: CountOrFraction; readonly m: CountOrFraction }
  | { readonly rule: "geomed" }
  | { readonly rule: "centered-clip"; readonly tau: number }
  | { readonly rule: "fltrust" };

export type AggregatorSpec = RuleSpec & {
  /** Norm bounding applied to every update before the rule. */
  readonly bound?: NormBound;
};

/**
 * The recommended defence: what `--aggregator default` and a job spec's `"aggregator": "default"` mean. Multi-Krum
 * (Blanchard et al. 2017) dropping the 20% of each round's updates that are farthest from their neighbours and
 * averaging the 80% it keeps: in the benchmark table (`flotilla bench robust-table`, docs/robustness.md "The default
 * and the benchmark table") the one rule within 3 points of the clean accuracy under every attack on MNIST with a
 * backdoor success ≤ 5% on both datasets. Counts are fractions of the round, so it fits any round size.
 */
export const DEFAULT_AGGREGATOR = "multi-krum:0.2,0.8";

export const E_CONFIG_AGGREGATOR = "E_CONFIG_AGGREGATOR";

/** Control characters of the input shown escaped, so the error stays one line whatever was typed. */
const oneLine = (text: string): string =>
  // eslint-disable-next-line no-control-regex
  text.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);

const bad = (raw: string, why: string): never =>
  fail(
    E_CONFIG_AGGREGATOR,
    oneLine(
      `invalid aggregator '${raw}': ${why} (expected default | [norm:C|norm:qQ+]mean | median | trimmed-mean:B | krum:F | multi-krum:F,M | geomed | centered-clip:TAU | fltrust)`,
    ),
  );

function number(raw: string, text: string, what: string): number {
  if (!/^\d+(\.\d+)?([eE][-+]?\d+)?$|^\.\d+$/.test(text)) bad(raw, `${what} '${text}' is not a number`);
  const x = Number(text);
  if (!Number.isFinite(x)) bad(raw, `${what} '${text}' is not a number`);
  return x;
}

/** `zero`: 0 is a count (trimming none, tolerating no attacker), not a fraction. */
function countOrFraction(
  raw: string,
  text: string,
  what: string,
  maxFraction: number,
  zero = false,
): CountOrFraction {
  const x = number(raw, text, what);
  if (x === 0 && zero) return { count: 0 };
  if (x < 1) {
    if (!(x > 0 && x < maxFraction)) bad(raw, `${what} as a fraction must be in (0, ${maxFraction})`);
    return { fraction: x };
  }
  if (!Number.isInteger(x)) bad(raw, `${what} ${x} is neither a fraction below 1 nor a whole count`);
  return { count: x };
}

/** Parses an aggregator spec (case-insensitive, surrounding spaces ignored); `default` expands DEFAULT_AGGREGATOR. */
export function parseAggregator(raw: string): AggregatorSpec {
  if (typeof raw !== "string") return bad(String(raw), "not a string");
  const text = raw.trim().toLowerCase();
  if (text === "default") return parseAggregator(DEFAULT_AGGREGATOR);
  const parts = text.split("+");
  if (parts.length > 2) bad(raw, "at most one norm bound and one rule");
  let bound: NormBound | undefined;
  if (parts.length === 2) {
    const b = parts[0]!;
    if (!b.startsWith("norm:")) bad(raw, `'${b}' is not a norm bound (norm:C or norm:qQ)`);
    const v = b.slice(5);
    if (v.startsWith("q")) {
      const q = number(raw, v.slice(1), "quantile");
      if (!(q > 0 && q <= 1)) bad(raw, "the norm quantile must be in (0, 1]");
      bound = { quantile: q };
    } else {
      const c = number(raw, v, "norm bound");
      if (!(c > 0)) bad(raw, "the norm bound must be > 0");
      bound = { fixed: c };
    }
  }
  const r = parts[parts.length - 1]!;
  const [name, arg, ...rest] = r.split(":");
  if (rest.length > 0) bad(raw, `'${r}' has too many ':' parts`);
  const noArg = (rule: RuleSpec): RuleSpec =>
    arg === undefined ? rule : bad(raw, `${name} takes no parameter`);
  const needArg = (): string =>
    arg === undefined || arg === "" ? bad(raw, `${name} needs a parameter`) : arg;
  let rule: RuleSpec;
  switch (name) {
    case "mean":
      rule = noArg({ rule: "mean" });
      break;
    case "median":
      rule = noArg({ rule: "median" });
      break;
    case "geomed":
      rule = noArg({ rule: "geomed" });
      break;
    case "fltrust":
      rule = noArg({ rule: "fltrust" });
      break;
    case "trimmed-mean":
      rule = { rule: "trimmed-mean", trim: countOrFraction(raw, needArg(), "B", 0.5, true) };
      break;
    case "krum":
      rule = { rule: "krum", f: countOrFraction(raw, needArg(), "F", 0.5, true) };
      break;
    case "multi-krum": {
      const [f, m, more] = needArg().split(",");
      if (m === undefined || more !== undefined) bad(raw, "multi-krum takes F,M");
      rule = {
        rule: "multi-krum",
        f: countOrFraction(raw, f!, "F", 0.5, true),
        m: countOrFraction(raw, m!, "M", 1),
      };
      break;
    }
    case "centered-clip": {
      const tau = number(raw, needArg(), "TAU");
      if (!(tau > 0)) bad(raw, "TAU must be > 0");
      rule = { rule: "centered-clip", tau };
      break;
    }
    default:
      return bad(raw, `unknown rule '${name}'`);
  }
  return bound ? { ...rule, bound } : rule;
}

function formatCount(c: CountOrFraction): string {
  return "count" in c ? String(c.count) : String(c.fraction);
}

/** The canonical text of a spec (parseAggregator(formatAggregator(s)) equals s). */
export function formatAggregator(s: AggregatorSpec): string {
  const b = s.bound ? `norm:${"fixed" in s.bound ? s.bound.fixed : `q${s.bound.quantile}`}+` : "";
  switch (s.rule) {
    case "trimmed-mean":
      return `${b}trimmed-mean:${formatCount(s.trim)}`;
    case "krum":
      return `${b}krum:${formatCount(s.f)}`;
    case "multi-krum":
      return `${b}multi-krum:${formatCount(s.f)},${formatCount(s.m)}`;
    case "centered-clip":
      return `${b}centered-clip:${s.tau}`;
    default:
      return `${b}${s.rule}`;
  }
}

/** The count a count-or-fraction parameter means in a round of n updates (fractions round down). */
export function resolveCount(c: CountOrFraction, n: number): number {
  return "count" in c ? c.count : Math.floor(c.fraction * n);
}

/**
 * True when the spec can run without buffering the round's updates: the mean, unbounded or with a fixed bound
 * (each update is clipped as it arrives). Every other rule needs all of the round's updates at once.
 */
export function isStreaming(s: AggregatorSpec): boolean {
  return s.rule === "mean" && (s.bound === undefined || "fixed" in s.bound);
}

/** True for plain FedAvg aggregation: no rule, no bound (the aggregation is the strategy's own). */
export function isPlainMean(s: AggregatorSpec): boolean {
  return s.rule === "mean" && s.bound === undefined;
}

/**
 * The bound each device applies to its own update in a secure round: a fixed `norm:C` with the mean (the only
 * bound secure aggregation allows); undefined otherwise.
 */
export function deviceNormBound(s: AggregatorSpec | undefined): number | undefined {
  return s?.rule === "mean" && s.bound && "fixed" in s.bound ? s.bound.fixed : undefined;
}

export const E_CONFIG_CONFLICT = "E_CONFIG_CONFLICT";

/**
 * Refuses combinations that cannot work (one E_CONFIG_CONFLICT line):
 * - secure aggregation: the server sees only the sum, so no server-side rule or bound applies; only `mean` (a
 *   fixed norm bound is then applied by each device before masking, docs/robustness.md);
 * - differential privacy: DP clips and noises the *mean* of the round (its sensitivity analysis is for a sum of
 *   clipped updates), so a robust rule would void the guarantee; only `mean` (DP's own clip is the norm bound).
 */
export function checkAggregatorCompatible(
  s: AggregatorSpec,
  job: { readonly secureAggregation?: boolean; readonly dp?: boolean },
): void {
  const text = formatAggregator(s);
  if (job.secureAggregation && !(s.rule === "mean" && (s.bound === undefined || "fixed" in s.bound))) {
    fail(
      E_CONFIG_CONFLICT,
      `aggregator '${text}' needs each update on the server, but secure aggregation shows it only their sum (use mean, or norm:C+mean to bound norms on the devices)`,
    );
  }
  if (job.dp && !isPlainMean(s)) {
    fail(
      E_CONFIG_CONFLICT,
      `aggregator '${text}' cannot be combined with differential privacy: DP's guarantee is for its clipped mean (its clip norm already bounds each update); use mean`,
    );
  }
}
