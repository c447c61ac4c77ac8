/**
 * The simulator's attack suite (docs/robustness.md "Attacks (simulator)"): `--attack KIND:FRACTION[:PARAM]`.
 *
 *   sign-flip:F[:S]   the attacker sends −S·Δ (S default 1)                              model poisoning
 *   gaussian:F[:σ]    the attacker sends N(0, σ²) per coordinate (σ default 10)            model poisoning
 *   scaling:F[:λ]     the attacker sends λ·Δ (λ default 100)                               model poisoning
 *   alie:F[:Z]        μ − z·σ of the honest updates, z from Baruch et al. 2019 (Z overrides) model poisoning
 *   ipm:F[:ε]         −ε·μ of the honest updates, Xie et al. 2020 (ε default 0.1)           model poisoning
 *   label-flip:F[:T]  the attacker's labels y → C−1−y (or every label → class T)             data poisoning
 *   backdoor:F[:P]    a trigger stamped on a fraction P (default 0.5) of the attacker's samples, relabelled to
 *                     class 0 (Gu et al. 2017 BadNets; Bagdasaryan et al. 2020)              data poisoning
 *
 * F is the fraction of the fleet that attacks, in (0, 1): ⌈F·devices⌉ devices (rounded up, so any F > 0 has at
 * least one attacker), drawn by the job's seed and fixed for the whole job (chooseAttackers). Every error is one
 * E_CONFIG_ATTACK line.
 */
import { fail } from "../../../core/errors";
import { Rng } from "../../../core/data/rng";

export const MODEL_ATTACKS = ["sign-flip", "gaussian", "scaling", "alie", "ipm"] as const;
export const DATA_ATTACKS = ["label-flip", "backdoor"] as const;
export type ModelAttackKind = (typeof MODEL_ATTACKS)[number];
export type DataAttackKind = (typeof DATA_ATTACKS)[number];
export type AttackKind = ModelAttackKind | DataAttackKind;

export interface AttackSpec {
  readonly kind: AttackKind;
  /** Fraction of the fleet that attacks, in (0, 1). */
  readonly fraction: number;
  /** The kind's parameter as given (unset: the kind's default, DEFAULT_PARAM; label-flip: C−1−y). */
  readonly param?: number;
}

/** Each kind's parameter when none is given (label-flip has none: it maps y → C−1−y). */
export const DEFAULT_PARAM: Readonly<Record<AttackKind, number | undefined>> = {
  "sign-flip": 1,
  gaussian: 10, // σ = 1 only slows FedAvg on MNIST (89.8% -> 70.6% in 10 rounds); σ = 10 collapses it (9.95%)
  scaling: 100,
  alie: undefined, // z_max from Baruch et al.'s formula for the round's n and f
  ipm: 0.1,
  "label-flip": undefined,
  backdoor: 0.5,
};

/** The backdoor's target class (every triggered sample is relabelled to it). */
export const BACKDOOR_TARGET = 0;

const KINDS: readonly string[] = [...MODEL_ATTACKS, ...DATA_ATTACKS];

export function isModelAttack(k: AttackKind): k is ModelAttackKind {
  return (MODEL_ATTACKS as readonly string[]).includes(k);
}

/** Parses `KIND:FRACTION[:PARAM]` (one E_CONFIG_ATTACK line for any mistake). */
export function parseAttack(text: string): AttackSpec {
  const bad = (why: string): never => fail("E_CONFIG_ATTACK", `--attack '${text}': ${why}`);
  const parts = String(text).trim().split(":");
  const kind = parts[0]!.toLowerCase();
  if (!KINDS.includes(kind)) bad(`unknown attack '${parts[0]}' (expected one of ${KINDS.join(", ")})`);
  if (parts.length < 2 || parts.length > 3) bad("expected KIND:FRACTION[:PARAM], e.g. sign-flip:0.2");
  const num = (s: string, what: string): number => {
    const v = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s.trim()) ? Number(s) : NaN;
    if (!Number.isFinite(v)) bad(`${what} must be a number, got '${s}'`);
    return v;
  };
  const fraction = num(parts[1]!, "the fraction of attackers");
  if (!(fraction > 0 && fraction < 1)) bad(`the fraction of attackers must be in (0, 1), got ${fraction}`);
  if (parts.length === 2) return { kind: kind as AttackKind, fraction };
  const param = num(parts[2]!, "the parameter");
  const k = kind as AttackKind;
  switch (k) {
    case "sign-flip":
    case "gaussian":
    case "scaling":
    case "ipm":
      if (!(param > 0)) bad(`${k}'s parameter must be > 0, got ${param}`);
      break;
    case "alie":
      if (!(param >= 0)) bad(`alie's z must be ≥ 0, got ${param}`);
      break;
    case "label-flip":
      if (!(Number.isInteger(param) && param >= 0))
        bad(`label-flip's target must be a class (an integer ≥ 0), got ${param}`);
      break;
    case "backdoor":
      if (!(param > 0 && param <= 1)) bad(`backdoor's poisoned fraction must be in (0, 1], got ${param}`);
      break;
  }
  return { kind: k, fraction, param };
}

/** The canonical text of a spec (what results.json's config keeps). */
export function formatAttack(a: AttackSpec): string {
  return `${a.kind}:${a.fraction}${a.param !== undefined ? `:${a.param}` : ""}`;
}

/** The parameter in force: the one given or the kind's default. */
export function attackParam(a: AttackSpec): number | undefined {
  return a.param ?? DEFAULT_PARAM[a.kind];
}

/** ⌈fraction·devices⌉ (rounded up; a tiny tolerance keeps 0.2·10 at 2, not 3). */
export function attackerCount(fraction: number, devices: number): number {
  return Math.min(devices, Math.ceil(fraction * devices - 1e-9));
}

/**
 * The attackers: ⌈fraction·devices⌉ device indices drawn without replacement by a generator seeded from the job's
 * seed (its own stream, so the partitions and the sampling are unchanged), sorted. The same seed gives the same
 * attackers on every machine; they attack in every round they are picked for. At least one device stays honest.
 */
export function chooseAttackers(fraction: number, devices: number, seed: number): number[] {
  const m = attackerCount(fraction, devices);
  if (m >= devices)
    fail(
      "E_CONFIG_ATTACK",
      `--attack fraction ${fraction} makes all ${devices} devices attackers: none is honest`,
    );
  const rng = new Rng((Math.imul(seed >>> 0, 0x85ebca6b) ^ 0xa77ac4) >>> 0);
  return rng.sample(devices, m).sort((a, b) => a - b);
}
