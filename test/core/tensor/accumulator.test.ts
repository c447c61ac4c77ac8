import { describe, it } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { isFlotillaError } from "../../../core/errors";
import { Accumulator, BLOCK_UPDATES, wasmSimdAvailable } from "../../../core/tensor/accumulator";
import { benchAggregate } from "../../../core/tensor/bench-aggregate";

const U = 2 ** -24; // float32 unit roundoff

/** Deterministic uniform values in [-0.5, 0.5) (xorshift32). */
function rng(seed: number): () => number {
  let s = seed | 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296 - 0.5;
  };
}

function randomVector(n: number, next: () => number, scale = 1): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = next() * scale;
  return x;
}

function assertCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (e: unknown) => isFlotillaError(e) && e.code === code);
}

/**
 * Streams `updates` through the accumulator and checks every element against a float64 reference within the
 * documented bound: (BLOCK_UPDATES + 2) u sum|w x| / W + u |mean| for the wasm kernel (one u of slack over the
 * stated bound), and a float64 sum's rounding (u |mean| plus a negligible term) for the scalar kernel.
 */
function checkAgainstReference(acc: Accumulator, updates: Float32Array[], weights: number[]): void {
  const n = acc.size;
  const sum = new Float64Array(n);
  const abs = new Float64Array(n);
  let total = 0;
  updates.forEach((x, k) => {
    acc.add(x, weights[k]);
    total += weights[k];
    for (let i = 0; i < n; i++) {
      sum[i] += weights[k] * x[i];
      abs[i] += Math.abs(weights[k] * x[i]);
    }
  });
  assert.equal(acc.count, updates.length);
  assert.equal(acc.totalWeight, total);
  const got = acc.mean();
  const blockTerms = acc.kernel === "wasm-simd" ? BLOCK_UPDATES + 2 : 1e-6;
  for (let i = 0; i < n; i++) {
    const want = sum[i] / total;
    const tol = (blockTerms * U * abs[i]) / total + U * Math.abs(want) + 1e-30;
    const err = Math.abs(got[i] - want);
    if (!(err <= tol))
      assert.fail(`${acc.kernel} size ${n}, [${i}]: got ${got[i]}, want ${want}, error ${err} > ${tol}`);
  }
}

for (const kernel of ["wasm-simd", "scalar"] as const) {
  describe(`Accumulator (${kernel} kernel)`, () => {
    const make = (size: number): Accumulator => new Accumulator(size, { kernel });

    it("runs the requested kernel", () => {
      assert.equal(make(4).kernel, kernel);
    });

    it("computes small weighted means exactly", () => {
      const acc = make(3);
      acc.add(Float32Array.of(1, 2, 3)); // weight defaults to 1
      acc.add(Float32Array.of(3, 2, 1), 3);
      assert.equal(acc.count, 2);
      assert.equal(acc.totalWeight, 4);
      assert.deepEqual(Array.from(acc.mean()), [2.5, 2, 1.5]);
      // mean() does not consume the sum, and writes into a given output
      const out = new Float32Array(3);
      assert.equal(acc.mean(out), out);
      assert.deepEqual(Array.from(out), [2.5, 2, 1.5]);
      acc.add(Float32Array.of(-6, 0, 0.5), 4);
      assert.deepEqual(Array.from(acc.mean()), [-1.75, 1, 1]);
    });

    it("returns zeros with no updates and with zero total weight, never NaN", () => {
      const acc = make(5);
      assert.deepEqual(Array.from(acc.mean()), [0, 0, 0, 0, 0]);
      acc.add(Float32Array.of(1, 2, 3, 4, 5), 0);
      acc.add(Float32Array.of(-1, 7, 3, 4, 9), 0);
      assert.equal(acc.count, 2);
      assert.equal(acc.totalWeight, 0);
      assert.deepEqual(Array.from(acc.mean()), [0, 0, 0, 0, 0]);
      acc.add(Float32Array.of(2, 4, 6, 8, 10), 2); // the zero-weight updates contribute nothing
      assert.deepEqual(Array.from(acc.mean()), [2, 4, 6, 8, 10]);
    });

    it("handles every length 0..70 exactly (vector body + scalar tail, no element lost or doubled)", () => {
      for (let size = 0; size <= 70; size++) {
        const acc = make(size);
        // Distinct small integers and weights summing to a power of two: every float32 sum and the mean are exact.
        const a = Float32Array.from({ length: size }, (_, i) => i + 1);
        const b = Float32Array.from({ length: size }, (_, i) => 3 * i - 100);
        for (let r = 0; r < BLOCK_UPDATES + 8; r++) {
          acc.add(a, 1);
          acc.add(b, 3);
        }
        const mean = acc.mean();
        assert.equal(mean.length, size);
        for (let i = 0; i < size; i++)
          assert.equal(mean[i], (i + 1 + 3 * (3 * i - 100)) / 4, `size ${size} [${i}]`);
      }
    });

    it("matches a float64 reference on random data, in and past the first float32 block", () => {
      let seed = 7;
      for (const size of [1, 3, 5, 17, 31, 1000, 16384 + 5, 50001]) {
        for (const count of [1, BLOCK_UPDATES, BLOCK_UPDATES + 1, 2 * BLOCK_UPDATES + 7]) {
          const next = rng(seed++);
          const updates = Array.from({ length: count }, (_, k) =>
            randomVector(size, next, k % 3 === 0 ? 100 : 1),
          );
          const weights = updates.map(() => 1 + Math.floor((next() + 0.5) * 5000)); // sample counts
          checkAgainstReference(make(size), updates, weights);
        }
      }
    });

    it("matches the reference with heavy cancellation (updates of mixed sign that nearly cancel)", () => {
      const next = rng(99);
      const base = randomVector(4099, next);
      const updates: Float32Array[] = [];
      for (let k = 0; k < 3 * BLOCK_UPDATES; k++) {
        const x = randomVector(4099, next, 1e-3);
        for (let i = 0; i < x.length; i++) x[i] += k % 2 === 0 ? base[i] : -base[i];
        updates.push(x);
      }
      checkAgainstReference(
        make(4099),
        updates,
        updates.map(() => 1),
      );
    });

    it("keeps its error bounded over many updates (no float32 drift)", () => {
      // A plain float32 running sum of 10,000 x 0.1 ends at 999.90 (relative error 9.7e-5, as a float32
      // kernel without the float64 level does); the documented bound is (BLOCK_UPDATES + 1) u = 2e-6.
      const acc = make(37);
      const x = new Float32Array(37).fill(0.1);
      for (let k = 0; k < 10_000; k++) acc.add(x, 1);
      const v = Math.fround(0.1);
      const tol = (BLOCK_UPDATES + 1) * U * v;
      for (const m of acc.mean()) assert.ok(Math.abs(m - v) <= tol, `mean ${m} drifted from ${v}`);
    });

    it("does not overflow float32 products of large weights and large values", () => {
      const acc = make(6);
      const x = new Float32Array(6).fill(1e33);
      acc.add(x, 1e6); // w * x = 1e39 > float32 max
      acc.add(x, 3e6);
      for (const m of acc.mean()) assert.ok(Math.abs(m - 1e33) <= 1e33 * 4 * U, `mean ${m}`);
    });

    it("reset() starts a fresh sum (also after the float64 part was used)", () => {
      const acc = make(21);
      const next = rng(5);
      for (let k = 0; k < BLOCK_UPDATES * 2 + 3; k++) acc.add(randomVector(21, next, 1000), 1 + k);
      acc.reset();
      assert.equal(acc.count, 0);
      assert.equal(acc.totalWeight, 0);
      assert.deepEqual(Array.from(acc.mean()), new Array(21).fill(0));
      const x = Float32Array.from({ length: 21 }, (_, i) => i - 10);
      acc.add(x, 5);
      assert.deepEqual(acc.mean(), x);
      // a reference check after reset exercises the block -> float64 transition from a clean state again
      acc.reset();
      checkAgainstReference(
        acc,
        Array.from({ length: BLOCK_UPDATES + 3 }, () => randomVector(21, next)),
        new Array(BLOCK_UPDATES + 3).fill(2),
      );
    });

    it("rejects an update or an output of the wrong size with E_STRATEGY_SIZE, leaving the sum intact", () => {
      const acc = make(8);
      acc.add(new Float32Array(8).fill(2), 1);
      assertCode(() => acc.add(new Float32Array(7)), "E_STRATEGY_SIZE");
      assertCode(() => acc.add(new Float32Array(9), 2), "E_STRATEGY_SIZE");
      assertCode(() => acc.mean(new Float32Array(7)), "E_STRATEGY_SIZE");
      assert.equal(acc.count, 1);
      assert.equal(acc.totalWeight, 1);
      assert.deepEqual(Array.from(acc.mean()), new Array(8).fill(2));
      assertCode(() => make(-1), "E_STRATEGY_SIZE");
      assertCode(() => make(2.5), "E_STRATEGY_SIZE");
    });

    it("adds a decoded-in-place update via acquireInput()/addAcquired() without disturbing it on add()", () => {
      const acc = make(1027);
      assertCode(() => acc.addAcquired(1), "E_STRATEGY_STATE");
      const view = acc.acquireInput();
      assert.equal(view.length, 1027);
      assert.equal(acc.acquireInput(), view, "the same view every time");
      for (let i = 0; i < view.length; i++) view[i] = i;
      acc.addAcquired(3);
      const other = Float32Array.from({ length: 1027 }, (_, i) => -i);
      acc.add(other, 1); // copies through the staging area, not through the acquired view
      for (let i = 0; i < view.length; i++) assert.equal(view[i], i);
      acc.add(view, 4); // passing the view itself is the zero-copy path too
      const mean = acc.mean();
      for (let i = 0; i < 1027; i++) assert.equal(mean[i], (3 * i - i + 4 * i) / 8);
      assert.equal(acc.count, 3);
    });

    it("works at large sizes (tens of MB of state)", () => {
      const size = 5_000_003; // wasm: ~80 MB of memory (block, float64 sum, input)
      const acc = make(size);
      const a = new Float32Array(size);
      const b = new Float32Array(size);
      for (let i = 0; i < size; i++) {
        a[i] = i % 1000;
        b[i] = -(i % 7);
      }
      acc.add(a, 1);
      acc.add(b, 1);
      acc.acquireInput().set(a);
      acc.addAcquired(2);
      const mean = acc.mean();
      for (const i of [0, 1, 2, 3, 999, 1000, 65535, 2_500_000, size - 2, size - 1]) {
        assert.equal(mean[i], (3 * (i % 1000) - (i % 7)) / 4, `[${i}]`);
      }
    });

    it("keeps an acquired view valid while other accumulators are created", () => {
      const acc = make(300);
      const view = acc.acquireInput();
      const others = [make(2_000_000), make(17)]; // would detach the view if memory were shared and grown
      view.fill(1.5);
      assert.equal(view.length, 300);
      acc.addAcquired(2);
      assert.deepEqual(acc.mean(), new Float32Array(300).fill(1.5));
      others.forEach((o) => o.dispose());
    });

    it("accepts size 0 and fails clearly after dispose()", () => {
      const empty = make(0);
      empty.add(new Float32Array(0), 2);
      assert.equal(empty.mean().length, 0);
      const acc = make(4);
      acc.add(Float32Array.of(1, 2, 3, 4));
      acc.dispose();
      acc.dispose(); // idempotent
      assertCode(() => acc.add(Float32Array.of(1, 2, 3, 4)), "E_STRATEGY_STATE");
      assertCode(() => acc.mean(), "E_STRATEGY_STATE");
      assertCode(() => acc.reset(), "E_STRATEGY_STATE");
    });
  });
}

describe("Accumulator kernel selection", () => {
  it("uses wasm SIMD by default on this Node.js", () => {
    assert.equal(wasmSimdAvailable(), true);
    assert.equal(new Accumulator(10).kernel, "wasm-simd");
  });

  it("falls back to the scalar kernel where WebAssembly is unavailable (node --jitless)", () => {
    const script = [
      `const { Accumulator, wasmSimdAvailable } = require(${JSON.stringify(require.resolve("../../../core/tensor/accumulator"))});`,
      "const acc = new Accumulator(5);",
      "acc.add(Float32Array.of(1, 2, 3, 4, 5), 1);",
      "acc.add(Float32Array.of(3, 2, 1, 0, -1), 3);",
      "console.log(JSON.stringify({ wasm: wasmSimdAvailable(), kernel: acc.kernel, mean: Array.from(acc.mean()) }));",
    ].join("\n");
    const r = spawnSync(process.execPath, ["--jitless", "-e", script], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { wasm: false, kernel: "scalar", mean: [2.5, 2, 1.5, 1, 0.5] });
  });

  it("refuses kernel 'wasm-simd' beyond 32-bit wasm memory instead of falling back", () => {
    // 300M values need ~4.8 GB of wasm memory; the check happens before any allocation.
    assertCode(() => new Accumulator(300_000_000, { kernel: "wasm-simd" }), "E_STRATEGY_KERNEL");
  });

  it("rejects an unknown kernel name", () => {
    assertCode(() => new Accumulator(3, { kernel: "gpu" as "scalar" }), "E_STRATEGY_OPTIONS");
  });
});

describe("benchAggregate", () => {
  it("reports consistent throughput figures for a small run", () => {
    const r = benchAggregate({ updates: 6, params: 10_000, repeats: 1 });
    assert.equal(r.updates, 6);
    assert.equal(r.params, 10_000);
    assert.equal(r.kernel, "wasm-simd");
    assert.ok(r.updatesPerSecond > 0 && Number.isFinite(r.updatesPerSecond));
    assert.ok(Math.abs(r.gbPerSecond - (r.updatesPerSecond * 10_000 * 4) / 1e9) < 1e-9 * r.gbPerSecond);
    assert.ok(r.referenceGbPerSecond !== undefined && r.referenceGbPerSecond > 0);
    assertCode(() => benchAggregate({ updates: 0, params: 10 }), "E_CONFIG_BENCH");
  });
});
