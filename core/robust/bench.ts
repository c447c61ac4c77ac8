/**
 * `flotilla bench robust`: the cost of each robust aggregator (core/robust) for one round of `updates` updates of
 * `params` values, next to the plain streaming mean, measured in the same process on the same data. Each run is
 * a whole round as the server does it: a FedAvg strategy's aggregation (wrapped by the rule's decorator, as
 * core/round/aggregation.ts builds it), every update added (the streaming mean folds it in; a buffered rule copies
 * it into its buffer), then finish (bound, rule, report, server step). Runs are interleaved across rules so all
 * see the same machine conditions; the median of `repeats` is reported, with its ratio to the plain mean's.
 *
 * Memory: `bufferedBytes` is what the rule holds until finish (n × d × 4 for every rule but the fixed-bound mean);
 * each run starts after a full garbage collection, and just before finish (where a round holds the most) the
 * growth of the process's ArrayBuffer memory (`heldBytes`, measured) and its resident set (`rssBytes`) are taken;
 * the result's `peakRssBytes` is the process's peak (it includes the n test updates themselves, n × d × 4).
 */
import * as os from "node:os";
import * as v8 from "node:v8";
import * as vm from "node:vm";
import { fail } from "../errors";
import { FedAvg } from "../strategies/fedavg";
import type { RoundAggregation } from "../strategies/strategy";
import { makeUpdates, median } from "../tensor/bench-aggregate";
import { robustAggregation, type RobustRoundResult } from "./aggregation";
import { formatAggregator, isPlainMean, isStreaming, parseAggregator } from "./spec";
import { l2Norm } from "./rules";

/** The rules measured when none are named: the plain mean first (the reference), then every rule and bound. */
export const DEFAULT_BENCH_RULES = [
  "mean",
  "norm:C+mean",
  "norm:q0.5+mean",
  "median",
  "trimmed-mean:0.1",
  "krum:0.1",
  "multi-krum:0.1,0.5",
  "geomed",
  "centered-clip:1",
  "fltrust",
  "default",
] as const;

export interface RobustBenchRow {
  /** The spec as given (`norm:C` is a fixed bound at the median update norm) and its canonical text. */
  readonly spec: string;
  readonly aggregator: string;
  readonly streaming: boolean;
  /** Median wall time of one round (adds + finish), ms. */
  readonly ms: number;
  /** Median time of the rule itself at finish (the RobustReport's ms; 0 for the streaming mean), ms. */
  readonly ruleMs: number;
  /** ms / the plain mean's ms. */
  readonly ratio: number;
  readonly bufferedBytes: number;
  /** Growth of ArrayBuffer memory from the round's start to just before finish (largest over the runs). */
  readonly heldBytes: number;
  /** The process's resident set just before finish (largest over the runs). */
  readonly rssBytes: number;
}

export interface RobustBenchResult {
  readonly updates: number;
  readonly params: number;
  readonly repeats: number;
  readonly rows: readonly RobustBenchRow[];
  /** The process's peak resident set (the test updates, n × d × 4, included). */
  readonly peakRssBytes: number;
  /** The machine's load average when the runs ended (1, 5, 15 minutes). */
  readonly loadAverage: readonly number[];
}

export interface RobustBenchOptions {
  readonly updates: number;
  readonly params: number;
  /** Timed runs per rule (median reported). Default 3. */
  readonly repeats?: number;
  /** Specs to measure (default DEFAULT_BENCH_RULES); `mean` is always measured, first. */
  readonly rules?: readonly string[];
  /** One line per finished run. */
  readonly onProgress?: (line: string) => void;
}

export function benchRobust(o: RobustBenchOptions): RobustBenchResult {
  const { updates: n, params: d } = o;
  const repeats = o.repeats ?? 3;
  for (const [name, v] of [
    ["updates", n],
    ["params", d],
    ["repeats", repeats],
  ] as const)
    if (!Number.isSafeInteger(v) || v < 1)
      fail("E_CONFIG_BENCH", `${name} must be a positive integer, got ${v}`);
  const given = o.rules ?? DEFAULT_BENCH_RULES;
  const texts = ["mean", ...given.filter((t) => t.trim().toLowerCase() !== "mean")];
  // `norm:C` stands for a fixed bound at the median norm of the test updates (half of them are clipped).
  const pool = makeUpdates(n, d);
  const norms = pool.map(l2Norm).sort((a, b) => a - b);
  const c = norms[(n - 1) >> 1]!;
  const specs = texts.map((t) => parseAggregator(t.replace(/^norm:C\+/i, `norm:${c}+`)));
  const root = makeUpdates(1, d)[0]!;
  // A root update that agrees with half of the updates: FLTrust keeps some and drops some, as in a real round.
  for (let i = 0; i < d; i++) root[i] = (pool[0]![i]! + pool[1 % n]![i]!) / 2;
  const strategy = new FedAvg({ clientsPerRound: n, fit: { epochs: 1, batchSize: 1, lr: 0.1 }, seed: 1 });
  strategy.initialize(new Float32Array(d));
  const metrics = { loss: 0, accuracy: 0, trainMs: 0 };
  let round = 0;
  const gc = collector();
  const once = (k: number): { ms: number; ruleMs: number; held: number; rss: number } => {
    const spec = specs[k]!;
    round++;
    gc();
    const before = process.memoryUsage().arrayBuffers;
    const t0 = performance.now();
    const inner = strategy.beginAggregate(round);
    const agg: RoundAggregation = isPlainMean(spec)
      ? inner
      : robustAggregation(inner, { spec, round, length: d, rootDelta: root });
    for (let u = 0; u < n; u++)
      agg.add({ deviceId: `d${u}`, numSamples: 1 + ((u * 7919) % 600), delta: pool[u]!, metrics });
    const mem = process.memoryUsage();
    const out = agg.finish([]) as RobustRoundResult;
    const ms = performance.now() - t0;
    // The next run starts from the same model.
    strategy.initialize(new Float32Array(d));
    return { ms, ruleMs: out.robust?.ms ?? 0, held: mem.arrayBuffers - before, rss: mem.rss };
  };
  // Warm-up: JIT, first touch of the pages.
  for (let k = 0; k < specs.length; k++) o.onProgress?.(`${texts[k]}: warm-up ${once(k).ms.toFixed(0)} ms`);
  const runs = specs.map(() => ({ ms: [] as number[], ruleMs: [] as number[], held: 0, rss: 0 }));
  for (let r = 0; r < repeats; r++) {
    for (let k = 0; k < specs.length; k++) {
      const x = once(k);
      const run = runs[k]!;
      run.ms.push(x.ms);
      run.ruleMs.push(x.ruleMs);
      run.held = Math.max(run.held, x.held);
      run.rss = Math.max(run.rss, x.rss);
      o.onProgress?.(`${texts[k]}: run ${r + 1}/${repeats} ${x.ms.toFixed(0)} ms`);
    }
  }
  const meanMs = median(runs[0]!.ms);
  const rows = specs.map((spec, k) => {
    const run = runs[k]!;
    const ms = median(run.ms);
    const streaming = isStreaming(spec);
    return {
      spec: texts[k]!,
      aggregator: formatAggregator(spec),
      streaming,
      ms,
      ruleMs: median(run.ruleMs),
      ratio: ms / meanMs,
      bufferedBytes: streaming ? 0 : n * d * 4,
      heldBytes: Math.max(0, run.held),
      rssBytes: run.rss,
    };
  });
  return {
    updates: n,
    params: d,
    repeats,
    rows,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

/**
 * A full garbage collection before each run, so one run's garbage (a buffered round's 400 MB) is neither freed
 * inside the next run's timing nor counted in its memory: V8's gc() made reachable at run time (the bench only).
 */
function collector(): () => void {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as (() => void) | undefined;
  return typeof gc === "function" ? gc : () => undefined;
}
