import { fail } from "../errors";
import { subset, type Dataset } from "./dataset";
import { Rng } from "./rng";

/**
 * A simulated device's held-out data (docs/evaluation.md): samples of a shared evaluation pool (the simulation's
 * test set, which no device trains on) drawn with the device's own label mix, so each device evaluates a global
 * model on data distributed like its training data (a label-skewed device is tested on its own classes) while its
 * training data stays exactly what it was. Stratified by `y` (the class; regression datasets carry a class or
 * zeros there, which then draws uniformly): class c gets round(size × share of c in the device's data) samples
 * (largest remainders, so the sizes sum to `size`), each drawn without replacement from the pool's samples of c
 * (a class the pool lacks gives its share to the others; a class asked for more than the pool has takes all of
 * it). Devices draw independently, so two devices may share pool samples. Deterministic in (pool, device labels,
 * size, seed).
 */
export function heldOutSample(device: Dataset, pool: Dataset, size: number, seed: number): Dataset {
  if (!Number.isInteger(size) || size < 1)
    fail("E_CONFIG_VALUE", `held-out size ${size} is not a positive integer`);
  if (pool.n === 0) fail("E_CONFIG_VALUE", "the held-out pool is empty");
  const byClass = new Map<number, number[]>();
  for (let i = 0; i < pool.n; i++) {
    const c = pool.y[i];
    let list = byClass.get(c);
    if (!list) byClass.set(c, (list = []));
    list.push(i);
  }
  // The device's label mix over the classes the pool has.
  const counts = new Map<number, number>();
  let known = 0;
  for (let i = 0; i < device.n; i++) {
    const c = device.y[i];
    if (!byClass.has(c)) continue;
    counts.set(c, (counts.get(c) ?? 0) + 1);
    known++;
  }
  if (known === 0) {
    // No label in common (e.g. an unlabelled device): the pool's own mix.
    for (const [c, list] of byClass) counts.set(c, list.length);
    known = pool.n;
  }
  const target = Math.min(size, pool.n);
  const classes = [...counts.keys()].sort((a, b) => a - b);
  const exact = classes.map((c) => (target * counts.get(c)!) / known);
  const take = exact.map(Math.floor);
  let left = target - take.reduce((a, b) => a + b, 0);
  const byRemainder = classes
    .map((_, i) => i)
    .sort((a, b) => exact[b] - take[b] - (exact[a] - take[a]) || a - b);
  for (const i of byRemainder) {
    if (left === 0) break;
    take[i]++;
    left--;
  }
  const rng = new Rng(seed);
  const picked: number[] = [];
  classes.forEach((c, i) => {
    const list = byClass.get(c)!;
    const k = Math.min(take[i], list.length);
    // Partial Fisher-Yates on a copy: the first k of a seeded shuffle.
    const a = [...list];
    for (let j = 0; j < k; j++) {
      const r = j + rng.int(a.length - j);
      [a[j], a[r]] = [a[r], a[j]];
      picked.push(a[j]);
    }
  });
  return subset(
    pool,
    picked.sort((a, b) => a - b),
  );
}
