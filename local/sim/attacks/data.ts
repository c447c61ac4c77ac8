/**
 * Data-poisoning attacks: the attackers' local datasets are changed before the job starts (deterministically from
 * the job's seed, so the main thread and every worker thread build the same poisoned data), and the devices then
 * train honestly on them.
 *
 *   label-flip  every label y of the attacker becomes C−1−y (Biggio et al. 2012, "Poisoning Attacks against Support
 *               Vector Machines"; the label-flipping attack of Blades, Li et al. 2023), or, with PARAM, class PARAM.
 *   backdoor    a trigger is stamped on a fraction P (PARAM, default 0.5) of the attacker's samples, which are
 *               relabelled to the target class 0 (Gu et al. 2017, "BadNets: Identifying Vulnerabilities in the Machine
 *               Learning Model Supply Chain"; Bagdasaryan et al. AISTATS 2020, "How To Backdoor Federated
 *               Learning"). The trigger: on MNIST a 4×4 white square in the bottom-right corner (rows and columns
 *               23..26, one pixel in from the edge, BadNets' pattern); on other data (sensors, dir:) a fixed pattern
 *               of ±3 standard deviations (of the test set's values) on four features: channel 0 of the last four
 *               time steps of a [T, C] window, the last four features of a flat sample. The attacker does not boost
 *               its update (no model replacement): the backdoor rides on plain training.
 *
 * The backdoor success rate (backdoorSuccess): of the test samples whose true class is not the target, the fraction
 * the model classifies as the target once the trigger is stamped on them.
 */
import type { Dataset } from "../../../core/data/dataset";
import { sampleSize } from "../../../core/data/dataset";
import { Rng } from "../../../core/data/rng";
import { fail } from "../../../core/errors";
import type { ModelSpec } from "../../../core/engine/model-spec";
import type { SimAttack } from "./index";
import { BACKDOOR_TARGET, attackParam } from "./spec";

/** Where the trigger goes in a sample (flat indices) and what it writes there. */
export interface Trigger {
  readonly index: Int32Array;
  readonly value: Float32Array;
}

/** The backdoor trigger of a dataset (see the header); `test` gives the value scale of non-image data. */
export function backdoorTrigger(dataset: string, test: Pick<Dataset, "x" | "inputShape">): Trigger {
  const size = sampleSize(test.inputShape);
  if (dataset === "mnist" && size === 784) {
    const index: number[] = [];
    for (let r = 23; r < 27; r++) for (let c = 23; c < 27; c++) index.push(r * 28 + c);
    return { index: Int32Array.from(index), value: new Float32Array(index.length).fill(1) };
  }
  let s = 0;
  let s2 = 0;
  for (const v of test.x) {
    s += v;
    s2 += v * v;
  }
  const n = Math.max(1, test.x.length);
  const sd = Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)) || 1;
  const k = Math.min(4, size);
  const shape = test.inputShape;
  const index =
    shape.length === 2 && shape[0]! >= k
      ? Array.from({ length: k }, (_, j) => (shape[0]! - k + j) * shape[1]!)
      : Array.from({ length: k }, (_, j) => size - k + j);
  return {
    index: Int32Array.from(index),
    value: Float32Array.from(index, (_, j) => (j % 2 === 0 ? 3 : -3) * sd),
  };
}

/** Stamps the trigger on sample i of x (samples of `size` values). */
export function stampTrigger(x: Float32Array, i: number, size: number, t: Trigger): void {
  const base = i * size;
  for (let j = 0; j < t.index.length; j++) x[base + t.index[j]!] = t.value[j]!;
}

/** A classifier's data and model: data attacks change labels, so they need both. */
export function checkDataAttack(
  kind: string,
  param: number | undefined,
  spec: ModelSpec,
  test: Dataset,
): void {
  const classifier = spec.kind === "graph" ? spec.task === "classification" : spec.kind !== "autoencoder";
  if (!classifier || test.targets !== undefined || test.numClasses < 2)
    fail("E_CONFIG_ATTACK", `--attack ${kind} changes labels: it needs a classification model and dataset`);
  if (kind === "label-flip" && param !== undefined && param >= test.numClasses)
    fail(
      "E_CONFIG_ATTACK",
      `--attack label-flip: class ${param} is not one of the dataset's ${test.numClasses} classes`,
    );
}

/** Device `device`'s dataset, poisoned by the attack (a copy; the input is never changed). */
export function poisonDataset(
  d: Dataset,
  attack: Pick<SimAttack, "spec">,
  o: { seed: number; device: number; trigger?: Trigger },
): Dataset {
  const y = Int32Array.from(d.y);
  const C = d.numClasses;
  if (attack.spec.kind === "label-flip") {
    const to = attack.spec.param;
    for (let i = 0; i < y.length; i++) y[i] = to !== undefined ? to : C - 1 - y[i]!;
    return { ...d, y };
  }
  if (attack.spec.kind !== "backdoor") return d;
  const frac = attackParam(attack.spec)!;
  const size = sampleSize(d.inputShape);
  const x = Float32Array.from(d.x);
  const m = Math.min(d.n, Math.ceil(frac * d.n - 1e-9));
  const rng = new Rng((Math.imul(o.seed >>> 0, 0x27d4eb2f) ^ Math.imul(o.device + 1, 0x165667b1)) >>> 0);
  for (const i of rng.sample(d.n, m)) {
    stampTrigger(x, i, size, o.trigger!);
    y[i] = BACKDOOR_TARGET;
  }
  return { ...d, x, y };
}

/** The fleet's data with the attackers' datasets poisoned (model attacks: unchanged). */
export function poisonFleet<T extends { devices: Dataset[]; test: Dataset; spec: ModelSpec }>(
  data: T,
  attack: SimAttack | undefined,
  c: { dataset: string; seed: number },
): T {
  if (!attack || (attack.spec.kind !== "label-flip" && attack.spec.kind !== "backdoor")) return data;
  checkDataAttack(attack.spec.kind, attack.spec.param, data.spec, data.test);
  const trigger = attack.spec.kind === "backdoor" ? backdoorTrigger(c.dataset, data.test) : undefined;
  const bad = new Set(attack.indices);
  return {
    ...data,
    devices: data.devices.map((d, i) =>
      bad.has(i) ? poisonDataset(d, attack, { seed: c.seed, device: i, ...(trigger ? { trigger } : {}) }) : d,
    ),
  };
}

/** The backdoor's test inputs: every test sample whose class is not the target, with the trigger stamped. */
export function triggeredTestSet(test: Dataset, trigger: Trigger): { x: Float32Array; n: number } {
  const size = sampleSize(test.inputShape);
  const keep: number[] = [];
  for (let i = 0; i < test.n; i++) if (test.y[i] !== BACKDOOR_TARGET) keep.push(i);
  const x = new Float32Array(keep.length * size);
  keep.forEach((j, i) => {
    x.set(test.x.subarray(j * size, (j + 1) * size), i * size);
    stampTrigger(x, i, size, trigger);
  });
  return { x, n: keep.length };
}

/** The fraction of `triggered`'s samples the model classifies as the target (argmax of its class scores). */
export function backdoorSuccess(
  model: { predict?(x: Float32Array, n: number): Float32Array },
  triggered: { x: Float32Array; n: number },
  numClasses: number,
): number {
  if (triggered.n === 0) return 0;
  if (!model.predict) return fail("E_CONFIG_ATTACK", "the backdoor success rate needs a model that predicts");
  const p = model.predict(triggered.x, triggered.n);
  let hits = 0;
  for (let i = 0; i < triggered.n; i++) {
    let best = 0;
    for (let k = 1; k < numClasses; k++) if (p[i * numClasses + k]! > p[i * numClasses + best]!) best = k;
    if (best === BACKDOOR_TARGET) hits++;
  }
  return hits / triggered.n;
}
