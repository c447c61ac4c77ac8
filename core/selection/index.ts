/**
 * Participant selection: `createSelector(spec)` builds a selector from its spec text, shared by the simulator
 * (`--selection`) and the Azure Function (the job definition's `selection`):
 *
 *   random                       uniform seeded sample (the baseline; random.ts)
 *   deadline[:margin=M]          FedCS, the most devices that finish before the deadline (deadline.ts)
 *   oort[:KEY=VALUE,...]         Oort's utility with exploration, staleness and a participation floor (oort.ts);
 *                                keys T, alpha, epsilon, decay, minEpsilon, cutoff, floor, maxTimeouts,
 *                                timeoutPenalty
 *
 * A bad spec throws FlotillaError E_CONFIG_SELECTION with a one-line message naming the bad part and the valid
 * ones. docs/selection.md documents every option and default.
 */
import { fail } from "../errors";
import { DEADLINE_DEFAULTS, DeadlineSelector, type DeadlineOptions } from "./deadline";
import { OORT_DEFAULTS, OortSelector, type OortOptions } from "./oort";
import { RandomSelector } from "./random";
import type { Selector } from "./types";

export type { DeviceHistory, DeviceProfile, SelectionContext, Selector } from "./types";
export { SelectionHistory, type Completion, type SelectionHistoryJson } from "./history";
export { ESTIMATE_DEFAULTS, estimateRoundS, observedRoundS, feasible } from "./estimate";
export { DEADLINE_DEFAULTS, DeadlineSelector, type DeadlineOptions } from "./deadline";
export { OORT_DEFAULTS, OortSelector, explorationFactor, type OortOptions } from "./oort";
export { RandomSelector, canonicalIds } from "./random";

export const SELECTION_KINDS = ["random", "deadline", "oort"] as const;
export type SelectionKind = (typeof SELECTION_KINDS)[number];

/** The default selector spec (jobs and the simulator). */
export const DEFAULT_SELECTION = "random";

/** How an option's value is read and checked: its range and whether it must be an integer. */
interface OptionRule {
  readonly min: number;
  readonly max: number;
  /** The bound `min` itself is excluded. */
  readonly minExclusive?: boolean;
  readonly integer?: boolean;
}

const RULES: Record<SelectionKind, Record<string, OptionRule>> = {
  random: {},
  deadline: { margin: { min: 1, max: 100 } },
  oort: {
    T: { min: 0, max: 7 * 86_400, minExclusive: true },
    Tpct: { min: 0, max: 100, minExclusive: true },
    alpha: { min: 0, max: 10 },
    epsilon: { min: 0, max: 1 },
    decay: { min: 0, max: 1, minExclusive: true },
    minEpsilon: { min: 0, max: 1 },
    cutoff: { min: 0, max: 1, minExclusive: true },
    floor: { min: 0, max: 100_000, integer: true },
    maxTimeouts: { min: 0, max: 1000, integer: true },
    timeoutPenalty: { min: 0, max: 1, minExclusive: true },
  },
};

function bad(message: string): never {
  return fail("E_CONFIG_SELECTION", message);
}

function describeRule(r: OptionRule): string {
  const lo = r.minExclusive ? `(${r.min}` : `[${r.min}`;
  return `${r.integer ? "an integer" : "a number"} in ${lo}, ${r.max}]`;
}

/** Parses `kind[:KEY=VALUE,...]` into its kind and checked numeric options (E_CONFIG_SELECTION). */
export function parseSelectionSpec(spec: string): { kind: SelectionKind; options: Record<string, number> } {
  if (typeof spec !== "string") bad(`selection must be a string, got ${typeof spec}`);
  const text = spec.trim();
  const colon = text.indexOf(":");
  const kind = (colon < 0 ? text : text.slice(0, colon)).trim().toLowerCase();
  if (!(SELECTION_KINDS as readonly string[]).includes(kind))
    bad(`unknown selection '${kind}' (valid: ${SELECTION_KINDS.join(", ")})`);
  const rules = RULES[kind as SelectionKind];
  const valid = Object.keys(rules);
  const options: Record<string, number> = {};
  const rest = colon < 0 ? "" : text.slice(colon + 1).trim();
  if (colon >= 0 && valid.length === 0) bad(`selection '${kind}' takes no options, got '${rest}'`);
  if (rest.length > 0) {
    for (const part of rest.split(",")) {
      const eq = part.indexOf("=");
      const key = (eq < 0 ? part : part.slice(0, eq)).trim();
      if (!Object.hasOwn(rules, key)) bad(`unknown ${kind} option '${key}' (valid: ${valid.join(", ")})`);
      if (eq < 0) bad(`${kind} option '${key}' needs a value (${key}=VALUE)`);
      if (Object.hasOwn(options, key)) bad(`${kind} option '${key}' is given twice`);
      const raw = part.slice(eq + 1).trim();
      const rule = rules[key];
      const v = raw === "" ? NaN : Number(raw);
      const ok =
        Number.isFinite(v) &&
        (rule.minExclusive ? v > rule.min : v >= rule.min) &&
        v <= rule.max &&
        (!rule.integer || Number.isInteger(v));
      if (!ok) bad(`${kind} option ${key}='${raw}' must be ${describeRule(rule)}`);
      options[key] = v;
    }
  } else if (colon >= 0) {
    bad(`selection '${kind}:' has an empty option list (options: ${valid.join(", ")})`);
  }
  return { kind: kind as SelectionKind, options };
}

/** The canonical text of a spec: the kind and the options given, in the order of the option table. */
function canonicalSpec(kind: SelectionKind, options: Record<string, number>): string {
  const parts = Object.keys(RULES[kind])
    .filter((k) => Object.hasOwn(options, k))
    .map((k) => `${k}=${options[k]}`);
  return parts.length > 0 ? `${kind}:${parts.join(",")}` : kind;
}

/** A selector from its spec (E_CONFIG_SELECTION for a bad one). */
export function createSelector(spec: string): Selector & { readonly spec: string } {
  const { kind, options } = parseSelectionSpec(spec);
  const text = canonicalSpec(kind, options);
  switch (kind) {
    case "random":
      return new RandomSelector();
    case "deadline": {
      const o: DeadlineOptions = { ...DEADLINE_DEFAULTS, ...options };
      return new DeadlineSelector(o, text);
    }
    case "oort": {
      const o: OortOptions = { ...OORT_DEFAULTS, ...options };
      if (o.minEpsilon > o.epsilon)
        bad(`oort option minEpsilon=${o.minEpsilon} must not exceed epsilon=${o.epsilon}`);
      return new OortSelector(o, text);
    }
  }
}
