/**
 * A simulated job's attack (`--attack`, local/sim/attacks/spec.ts): who attacks, how, and what results.json records.
 * Model-poisoning kinds run as a round interceptor (model.ts); data-poisoning kinds change the attackers' local
 * datasets (data.ts), in the main thread and in every worker thread alike.
 */
import { deviceName } from "../data";
import { ModelAttack } from "./model";
import {
  attackParam,
  chooseAttackers,
  isModelAttack,
  parseAttack,
  type AttackKind,
  type AttackSpec,
  type ModelAttackKind,
} from "./spec";

/** results.json `attack`: the kind, the fraction, the parameter in force (absent: ALIE's z from its formula, label-flip's C−1−y) and the attackers. */
export interface AttackRecord {
  kind: AttackKind;
  fraction: number;
  param?: number;
  attackers: string[];
}

export interface SimAttack {
  readonly spec: AttackSpec;
  /** Attacker device indices (sorted). */
  readonly indices: readonly number[];
  readonly record: AttackRecord;
  /** Model poisoning: the round interceptor. */
  readonly interceptor?: ModelAttack;
}

/** The job's attack from its config (undefined without --attack). */
export function simAttack(c: { attack?: string; devices: number; seed: number }): SimAttack | undefined {
  if (c.attack === undefined) return undefined;
  const spec = parseAttack(c.attack);
  const indices = chooseAttackers(spec.fraction, c.devices, c.seed);
  const attackers = indices.map((i) => deviceName(i, c.devices));
  const param = attackParam(spec);
  return {
    spec,
    indices,
    record: {
      kind: spec.kind,
      fraction: spec.fraction,
      ...(param !== undefined ? { param } : {}),
      attackers,
    },
    ...(isModelAttack(spec.kind)
      ? { interceptor: new ModelAttack(spec as AttackSpec & { kind: ModelAttackKind }, attackers, c.seed) }
      : {}),
  };
}
