import { fail } from "../errors";
import { subset, type Dataset } from "./dataset";
import { Rng } from "./rng";

/**
 * How a centralized dataset is split over simulated clients.
 *   iid                 shuffle, then equal contiguous pieces (sizes differ by at most one).
 *   shards[:K]          McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
 *                       Data" (AISTATS), the pathological non-IID split: sort by label, cut into numClients*K
 *                       shards, give every client K random shards (K = 2 in the paper).
 *   dirichlet:ALPHA     label skew by a Dirichlet prior (Hsu, Qi & Brown 2019, "Measuring the Effects of
 *                       Non-Identical Data Distribution for Federated Visual Classification", arXiv:1909.06335),
 *                       in its per-class form: for every class, the shares of the clients are drawn from
 *                       Dir(ALPHA, ..., ALPHA) (Yurochkin et al. 2019 ICML; Wang et al. 2020 "FedMA" ICLR; Li et
 *                       al. 2022 "Federated Learning on Non-IID Data Silos", NIID-Bench). Small ALPHA (0.1) is
 *                       highly skewed, large ALPHA (100) close to iid. Client sizes vary.
 */
export type PartitionSpec =
  | { readonly kind: "iid" }
  | { readonly kind: "shards"; readonly shardsPerClient: number }
  | { readonly kind: "dirichlet"; readonly alpha: number };

export const DEFAULT_SHARDS_PER_CLIENT = 2;

const EXPECTED = "expected iid, shards, shards:K or dirichlet:ALPHA";

/** Parse `iid`, `shards`, `shards:K` (K a positive integer, default 2) or `dirichlet:ALPHA` (ALPHA > 0). */
export function parsePartition(spec: string): PartitionSpec {
  const text = String(spec).trim();
  const shown = JSON.stringify(text);
  const colon = text.indexOf(":");
  const kind = (colon < 0 ? text : text.slice(0, colon)).trim().toLowerCase();
  const arg = colon < 0 ? undefined : text.slice(colon + 1).trim();
  switch (kind) {
    case "iid":
      if (arg !== undefined)
        fail("E_CONFIG_PARTITION", `partition ${shown}: iid takes no parameter (${EXPECTED})`);
      return { kind: "iid" };
    case "shards": {
      if (arg === undefined) return { kind: "shards", shardsPerClient: DEFAULT_SHARDS_PER_CLIENT };
      const k = /^\d+$/.test(arg) ? Number(arg) : NaN;
      if (!Number.isSafeInteger(k) || k < 1) {
        fail(
          "E_CONFIG_PARTITION",
          `partition ${shown}: shards per client must be a positive integer (${EXPECTED})`,
        );
      }
      return { kind: "shards", shardsPerClient: k };
    }
    case "dirichlet": {
      const a = arg !== undefined && /^[+]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(arg) ? Number(arg) : NaN;
      if (!(a > 0 && Number.isFinite(a))) {
        fail(
          "E_CONFIG_PARTITION",
          `partition ${shown}: dirichlet needs a concentration ALPHA > 0 (${EXPECTED})`,
        );
      }
      return { kind: "dirichlet", alpha: a };
    }
    default:
      return fail("E_CONFIG_PARTITION", `unknown partition ${shown} (${EXPECTED})`);
  }
}

/** The canonical text of a spec (parsePartition(formatPartition(s)) deep-equals s). */
export function formatPartition(spec: PartitionSpec): string {
  switch (spec.kind) {
    case "iid":
      return "iid";
    case "shards":
      return `shards:${spec.shardsPerClient}`;
    case "dirichlet":
      return `dirichlet:${spec.alpha}`;
  }
}

export interface PartitionOptions {
  /**
   * Use only numClients * samplesPerClient samples, a seeded uniform random subset of the data. iid and shards
   * then give every client exactly this many (shards: up to rounding of shard sizes across classes); with
   * dirichlet it is the mean client size.
   */
  readonly samplesPerClient?: number;
}

/**
 * Each client's sample indices (ascending) into `labels`. Every index is used at most once; without
 * samplesPerClient every index is used exactly once. Every client gets at least one sample. Deterministic for a
 * given seed. Throws E_CONFIG_PARTITION when there are fewer samples than the split needs.
 */
export function partition(
  labels: Int32Array,
  numClients: number,
  spec: PartitionSpec,
  seed: number,
  opts: PartitionOptions = {},
): Int32Array[] {
  const n = labels.length;
  if (!Number.isSafeInteger(numClients) || numClients < 1) {
    fail("E_CONFIG_PARTITION", `number of clients must be a positive integer, got ${numClients}`);
  }
  if (numClients > n) {
    fail(
      "E_CONFIG_PARTITION",
      `cannot partition ${n} samples over ${numClients} clients (more clients than samples)`,
    );
  }
  const rng = new Rng(seed);
  let pool: number[] = Array.from({ length: n }, (_, i) => i);
  const per = opts.samplesPerClient;
  if (per !== undefined) {
    if (!Number.isSafeInteger(per) || per < 1) {
      fail("E_CONFIG_PARTITION", `samples per client must be a positive integer, got ${per}`);
    }
    if (per * numClients > n) {
      fail(
        "E_CONFIG_PARTITION",
        `${numClients} clients x ${per} samples need ${per * numClients} samples, the data has ${n}`,
      );
    }
    rng.shuffle(pool);
    pool = pool.slice(0, per * numClients);
  }
  let parts: number[][];
  switch (spec.kind) {
    case "iid":
      parts = iid(pool, numClients, rng);
      break;
    case "shards":
      parts = shards(pool, labels, numClients, spec.shardsPerClient, rng);
      break;
    case "dirichlet":
      parts = dirichlet(pool, labels, numClients, spec.alpha, rng);
      break;
    default:
      return fail("E_CONFIG_PARTITION", `unknown partition kind '${(spec as { kind: string }).kind}'`);
  }
  return parts.map((p) => Int32Array.from(p).sort());
}

/**
 * `ds` split over `numClients` clients by `partition` of its labels: each client's samples (features, label and
 * regression targets) copied into a dataset of its own. A regression dataset's `y` holds zeros unless its schema
 * names a label column, so shards and dirichlet then split by that class (stratified), else like one class.
 */
export function partitionDataset(
  ds: Dataset,
  numClients: number,
  spec: PartitionSpec,
  seed: number,
  opts: PartitionOptions = {},
): Dataset[] {
  return partition(ds.y, numClients, spec, seed, opts).map((idx) => subset(ds, idx));
}

function iid(pool: number[], numClients: number, rng: Rng): number[][] {
  rng.shuffle(pool);
  const m = pool.length;
  return Array.from({ length: numClients }, (_, c) =>
    pool.slice(Math.floor((c * m) / numClients), Math.floor(((c + 1) * m) / numClients)),
  );
}

/** Pool indices grouped by label (labels ascending), each group in random order. */
function byClass(pool: number[], labels: Int32Array, rng: Rng): number[][] {
  const groups = new Map<number, number[]>();
  for (const i of pool) {
    const g = groups.get(labels[i]);
    if (g) g.push(i);
    else groups.set(labels[i], [i]);
  }
  return [...groups.keys()].sort((a, b) => a - b).map((k) => rng.shuffle(groups.get(k) as number[]));
}

/**
 * McMahan et al. 2017 shards. The shards are made label-pure where possible: each class is cut into a number of
 * shards proportional to its size (every class at least one; the extra shards go one by one to the class whose
 * shards are currently largest, D'Hondt style), so shard sizes are as equal as the class sizes allow and a client
 * with K shards sees at most K labels. With fewer shards than classes, the label-sorted data is cut into equal
 * contiguous shards instead.
 */
function shards(pool: number[], labels: Int32Array, numClients: number, k: number, rng: Rng): number[][] {
  const numShards = numClients * k;
  if (numShards > pool.length) {
    fail(
      "E_CONFIG_PARTITION",
      `shards:${k} over ${numClients} clients needs ${numShards} shards, but there are only ${pool.length} samples`,
    );
  }
  const groups = byClass(pool, labels, rng);
  const pieces: number[][] = [];
  if (numShards >= groups.length) {
    const count = groups.map(() => 1);
    for (let extra = numShards - groups.length; extra > 0; extra--) {
      let best = 0;
      for (let c = 1; c < groups.length; c++) {
        if (groups[c].length / count[c] > groups[best].length / count[best]) best = c;
      }
      count[best]++;
    }
    groups.forEach((g, c) => {
      for (let s = 0; s < count[c]; s++) {
        pieces.push(
          g.slice(Math.floor((s * g.length) / count[c]), Math.floor(((s + 1) * g.length) / count[c])),
        );
      }
    });
  } else {
    const sorted = groups.flat();
    for (let s = 0; s < numShards; s++) {
      pieces.push(
        sorted.slice(
          Math.floor((s * sorted.length) / numShards),
          Math.floor(((s + 1) * sorted.length) / numShards),
        ),
      );
    }
  }
  const order = rng.shuffle(Array.from({ length: numShards }, (_, s) => s));
  return Array.from({ length: numClients }, (_, c) =>
    order.slice(c * k, (c + 1) * k).flatMap((s) => pieces[s]),
  );
}

function dirichlet(
  pool: number[],
  labels: Int32Array,
  numClients: number,
  alpha: number,
  rng: Rng,
): number[][] {
  const parts: number[][] = Array.from({ length: numClients }, () => []);
  const p = new Float64Array(numClients);
  for (const g of byClass(pool, labels, rng)) {
    let sum = 0;
    for (let c = 0; c < numClients; c++) sum += p[c] = rng.gamma(alpha);
    if (!(sum > 0 && Number.isFinite(sum))) {
      // Every gamma draw underflowed (tiny alpha): the Dirichlet's limit puts the class on one client.
      p.fill(0);
      p[rng.int(numClients)] = sum = 1;
    }
    let cum = 0;
    let start = 0;
    for (let c = 0; c < numClients; c++) {
      cum += p[c];
      const end = c === numClients - 1 ? g.length : Math.min(g.length, Math.round((cum / sum) * g.length));
      for (let j = start; j < end; j++) parts[c].push(g[j]);
      start = Math.max(start, end);
    }
  }
  // Every client needs at least one sample: an empty client takes a random sample from the largest client.
  // numClients <= samples, so while a client is empty the largest holds at least two.
  for (let c = 0; c < numClients; c++) {
    if (parts[c].length > 0) continue;
    let donor = 0;
    for (let d = 1; d < numClients; d++) if (parts[d].length > parts[donor].length) donor = d;
    const j = rng.int(parts[donor].length);
    parts[c].push(parts[donor][j]);
    parts[donor][j] = parts[donor][parts[donor].length - 1];
    parts[donor].pop();
  }
  return parts;
}
