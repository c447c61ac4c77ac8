import { fail } from "../errors";
import { SIMD_KERNELS_WASM_BASE64 } from "./simd-kernels.wasm";

/**
 * Streaming weighted sum of equally sized Float32Array updates: the aggregator's hot loop.
 * Updates are added one at a time and never all held; `mean()` gives sum(w_i x_i) / sum(w_i) (or
 * sum(w_i x_i) / sum(v_i) when an add gives a separate denominator weight v_i).
 *
 * Kernel. Where WebAssembly SIMD is available (Node >= 16) the sum lives in the accumulator's own wasm linear
 * memory and each update is folded in by the f32x4 kernels of simd-kernels.wat; otherwise (e.g. `node --jitless`,
 * or a vector too large for 32-bit wasm memory) a scalar JS loop with a Float64Array sum does the same job.
 *
 * Precision of the wasm kernel (two-level sum). Updates are summed in float32 in blocks of BLOCK_UPDATES (32);
 * each full block is folded into a float64 sum in the same pass that starts the next block, and mean() adds the
 * two in float64 before one final rounding to float32. Weights are first divided by a power of two s taken from
 * the first weight (exact), so block values stay in the range of the updates even for large sample counts.
 * Per element, the result differs from the exact weighted mean by at most about
 *     (BLOCK_UPDATES + 1) * 2^-24 * sum(|w_i x_i|) / sum(w_i)   (~2e-6 relative)   + the final float32 rounding,
 * whatever the number of updates: a plain float32 running sum (numpy's `acc += w * x`) has a bound that grows
 * as n * 2^-24, e.g. 6e-4 for 10,000 updates. With cancellation the bound is relative to sum(|w_i x_i|), not to
 * the mean. Limits: one block's partial sum must stay within float32 range (|value| < 3.4e38), and weights are
 * used as float32 ratios to the first weight of the round (relative rounding 6e-8, counted in the bound).
 * Why not float64 throughout: on the 2-core reference box (100 x 1M float32 updates, interleaved runs), a
 * float64 running sum (f64x2 kernel) was 30-40% slower than float32, and float32 blocks of 8 about 15% slower,
 * while blocks of 32 were within noise of a plain float32 sum: the 8 MB float64 sum is read and written once per
 * block, so its cost shrinks as 1/block.
 *
 * Zero copy. Wasm code can only read its own memory, so `add(x)` copies x in 64 KiB chunks into a staging area
 * (the copy's writes stay in L1/L2) and runs the kernel on each chunk: one read of x from DRAM, plus the block's
 * read and write. A decoder can skip even that copy: `acquireInput()` returns a Float32Array view into wasm
 * memory; decode an update into it, then call `addAcquired(weight)` (or `add(view)`).
 *
 * One thread. Splitting each add with a worker_thread (shared wasm memory; the main thread copies chunks while
 * the worker sums them) measured ~9-12 GB/s against ~7-9 single-threaded on the 2-core box while it was quiet,
 * but collapsed to 0.3-1.5 GB/s when other jobs loaded it (load average 5; the single thread still did 3.5-5):
 * every wait on a descheduled worker costs a scheduler slice. The box is shared, so the kernel stays on one thread.
 *
 * Memory. The wasm module is compiled once per process; each accumulator instantiates it over its own
 * WebAssembly.Memory (about 16 bytes per parameter of address space: float32 block, float64 sum, float32 input;
 * pages are only committed when touched). Memory never grows after construction, so views stay valid for the
 * accumulator's life and never detach because another accumulator was created, and the GC returns the memory of
 * an accumulator that is dropped without dispose().
 */
export class Accumulator {
  private weightTotal = 0;
  private n = 0;
  private backend: Backend | null;

  constructor(
    readonly size: number,
    options: AccumulatorOptions = {},
  ) {
    if (!Number.isSafeInteger(size) || size < 0) {
      fail("E_STRATEGY_SIZE", `accumulator size ${size} is invalid`);
    }
    const want = options.kernel ?? "auto";
    if (want !== "auto" && want !== "scalar" && want !== "wasm-simd") {
      fail("E_STRATEGY_OPTIONS", `unknown accumulator kernel '${String(want)}'`);
    }
    let backend: Backend | null = null;
    if (want !== "scalar") backend = WasmBackend.create(size);
    if (backend === null && want === "wasm-simd") {
      fail("E_STRATEGY_KERNEL", `WebAssembly SIMD is unavailable for an accumulator of ${size} values`);
    }
    this.backend = backend ?? new ScalarBackend(size);
  }

  /** Which implementation runs the sum: "wasm-simd" normally, "scalar" when WebAssembly SIMD is unavailable. */
  get kernel(): "wasm-simd" | "scalar" {
    return this.live().kernel;
  }
  get count(): number {
    return this.n;
  }
  get totalWeight(): number {
    return this.weightTotal;
  }

  /**
   * Adds `weight · x` to the sum and `normWeight` (default: `weight`) to the mean's denominator. A `normWeight`
   * other than `weight` scales the update without renormalising it away: FedBuff's staleness discount, where an
   * update counts n·s(τ) in the sum and n in the denominator (core/strategies/fedavg.ts).
   */
  add(x: Float32Array, weight = 1, normWeight = weight): void {
    const b = this.live();
    if (x.length !== this.size) {
      fail("E_STRATEGY_SIZE", `update has ${x.length} values, expected ${this.size}`);
    }
    b.add(x, weight);
    this.weightTotal += normWeight;
    this.n++;
  }

  /**
   * A Float32Array of `size` values inside the accumulator's memory, to decode one update into; then call
   * `addAcquired(weight)`. Always the same view; its contents after `addAcquired` are unspecified. `add(x)`
   * does not disturb it.
   */
  acquireInput(): Float32Array {
    return this.live().input();
  }

  /** Adds the update currently held by the `acquireInput()` view, without copying it (`normWeight` as in add). */
  addAcquired(weight = 1, normWeight = weight): void {
    const b = this.live();
    if (!b.acquired) fail("E_STRATEGY_STATE", "addAcquired() called before acquireInput()");
    b.add(null, weight);
    this.weightTotal += normWeight;
    this.n++;
  }

  mean(out: Float32Array = new Float32Array(this.size)): Float32Array {
    const b = this.live();
    if (out.length < this.size) {
      fail("E_STRATEGY_SIZE", `mean output has ${out.length} values, expected ${this.size}`);
    }
    if (this.n === 0) out.fill(0, 0, this.size);
    else b.mean(out, this.weightTotal > 0 ? 1 / this.weightTotal : 0);
    return out;
  }

  reset(): void {
    this.live().reset();
    this.weightTotal = 0;
    this.n = 0;
  }

  /**
   * Drops the accumulator's memory (freed by the next garbage collection even if this object stays referenced;
   * an acquired view keeps it alive until the view is dropped too). Later calls fail with E_STRATEGY_STATE.
   * Idempotent.
   */
  dispose(): void {
    this.backend = null;
  }

  private live(): Backend {
    return this.backend ?? fail("E_STRATEGY_STATE", "the accumulator was disposed");
  }
}

export interface AccumulatorOptions {
  /**
   * "auto" (default): wasm SIMD when available, else scalar JS. "scalar": always the JS loop (reference, tests).
   * "wasm-simd": fail with E_STRATEGY_KERNEL rather than fall back.
   */
  kernel?: "auto" | "scalar" | "wasm-simd";
}

/** True when this runtime can run the wasm SIMD kernels (compiles them once, on first call). */
export function wasmSimdAvailable(): boolean {
  return kernelModule() !== null;
}

/** Updates summed in float32 before being folded into the float64 sum (see the precision note above). */
export const BLOCK_UPDATES = 32;

/** What an Accumulator delegates to. `x === null` means "the acquired input". */
interface Backend {
  readonly kernel: "wasm-simd" | "scalar";
  readonly acquired: boolean;
  input(): Float32Array;
  add(x: Float32Array | null, weight: number): void;
  /** out[i] = sum[i] * inv, for i < size. */
  mean(out: Float32Array, inv: number): void;
  reset(): void;
}

/** The original algorithm: float64 running sum, one scalar pass per update. */
class ScalarBackend implements Backend {
  readonly kernel = "scalar";
  private readonly sum: Float64Array;
  private inputView: Float32Array | null = null;
  constructor(private readonly size: number) {
    this.sum = new Float64Array(size);
  }
  get acquired(): boolean {
    return this.inputView !== null;
  }
  input(): Float32Array {
    return (this.inputView ??= new Float32Array(this.size));
  }
  add(x: Float32Array | null, weight: number): void {
    const v = x ?? this.input();
    const s = this.sum;
    for (let i = 0; i < s.length; i++) s[i] += weight * v[i];
  }
  mean(out: Float32Array, inv: number): void {
    const s = this.sum;
    for (let i = 0; i < s.length; i++) out[i] = s[i] * inv;
  }
  reset(): void {
    this.sum.fill(0);
  }
}

// ---- WebAssembly plumbing ----------------------------------------------------------------------------------

/** The slice of the WebAssembly JS API used here (lib "ES2022" does not declare it). */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
}
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { readonly exports: unknown };
  Memory: new (descriptor: { initial: number; maximum?: number }) => WasmMemory;
}

/** Exports of simd-kernels.wat. Pointers are byte offsets, n an element count. */
interface Kernels {
  scale_f32(dst: number, src: number, n: number, w: number): void;
  axpy_f32(acc: number, x: number, n: number, w: number): void;
  widen_scale(main: number, block: number, x: number, n: number, w: number): void;
  flush_scale(main: number, block: number, x: number, n: number, w: number): void;
  mean_block(out: number, block: number, n: number, inv: number): void;
  mean_both(out: number, main: number, block: number, n: number, inv: number): void;
}

const PAGE = 65536;
/** Highest usable byte address + 1: keeps every `ptr + n * size` of the kernels below 2^32 (no wrap-around). */
const ADDRESS_LIMIT = 2 ** 32 - PAGE;
/** Values per staging chunk for add(x) and mean(): 64 KiB, so the copy's writes stay in L1/L2. */
const CHUNK = 16384;

let compiled: object | null | undefined; // undefined: not tried yet; null: unavailable

function wasmApi(): WasmApi | undefined {
  return (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
}

/** Compiles the kernels once per process (synchronously: ~2 KB of wasm); null when wasm or SIMD is missing. */
function kernelModule(): object | null {
  if (compiled === undefined) {
    const api = wasmApi();
    try {
      compiled = api ? new api.Module(Buffer.from(SIMD_KERNELS_WASM_BASE64, "base64")) : null;
    } catch {
      compiled = null; // CompileError: no SIMD support
    }
  }
  return compiled;
}

const align64 = (bytes: number): number => Math.ceil(bytes / 64) * 64;

/** Which kernel an add runs over the whole vector (chosen once per update, applied chunk by chunk). */
const enum Step {
  Start, // block = w x
  Axpy, // block += w x
  Widen, // main = block; block = w x
  Flush, // main += block; block = w x
}

class WasmBackend implements Backend {
  readonly kernel = "wasm-simd";
  acquired = false;
  private readonly k: Kernels;
  private readonly blockPtr: number;
  private readonly mainPtr: number;
  private readonly inputPtr: number;
  private readonly stagePtr: number;
  private readonly inputView: Float32Array;
  private readonly stageView: Float32Array;
  /** Updates in the float32 block (0 only when empty), and whether the float64 sum holds anything. */
  private inBlock = 0;
  private hasMain = false;
  /** Power of two the weights are divided by; 0 until the first add after construction/reset. */
  private scale = 0;

  static create(size: number): WasmBackend | null {
    const api = wasmApi();
    const mod = kernelModule();
    if (!api || mod === null) return null;
    const blockPtr = 0;
    const mainPtr = align64(blockPtr + size * 4);
    const inputPtr = align64(mainPtr + size * 8);
    const stagePtr = align64(inputPtr + size * 4);
    const end = stagePtr + Math.min(size, CHUNK) * 4;
    if (end > ADDRESS_LIMIT) return null; // beyond 32-bit wasm memory: the scalar loop handles it
    let memory: WasmMemory;
    try {
      memory = new api.Memory({ initial: Math.max(1, Math.ceil(end / PAGE)) });
    } catch (e) {
      if (e instanceof RangeError) return null; // address space reservation refused: fall back
      throw e;
    }
    const k = new api.Instance(mod, { env: { memory } }).exports as Kernels;
    return new WasmBackend(size, k, memory, blockPtr, mainPtr, inputPtr, stagePtr);
  }

  private constructor(
    private readonly size: number,
    k: Kernels,
    memory: WasmMemory,
    blockPtr: number,
    mainPtr: number,
    inputPtr: number,
    stagePtr: number,
  ) {
    this.k = k;
    this.blockPtr = blockPtr;
    this.mainPtr = mainPtr;
    this.inputPtr = inputPtr;
    this.stagePtr = stagePtr;
    // The memory never grows, so these views are never detached.
    this.inputView = new Float32Array(memory.buffer, inputPtr, size);
    this.stageView = new Float32Array(memory.buffer, stagePtr, Math.min(size, CHUNK));
  }

  input(): Float32Array {
    this.acquired = true;
    return this.inputView;
  }

  add(x: Float32Array | null, weight: number): void {
    if (this.scale === 0) {
      const a = Math.abs(weight);
      this.scale = a > 0 && a < Infinity ? 2 ** Math.round(Math.log2(a)) : 1;
    }
    const w = weight / this.scale;
    let step: Step;
    if (this.inBlock === 0) step = Step.Start;
    else if (this.inBlock < BLOCK_UPDATES) step = Step.Axpy;
    else step = this.hasMain ? Step.Flush : Step.Widen;

    if (x === null || (x.buffer === this.inputView.buffer && x.byteOffset === this.inputPtr)) {
      this.run(step, 0, this.inputPtr, this.size, w); // already in wasm memory: no copy
    } else {
      const stage = this.stageView;
      for (let o = 0; o < this.size; o += CHUNK) {
        const m = Math.min(CHUNK, this.size - o);
        stage.set(this.size <= CHUNK ? x : x.subarray(o, o + m));
        this.run(step, o, this.stagePtr, m, w);
      }
    }

    if (step === Step.Widen || step === Step.Flush) {
      this.hasMain = true;
      this.inBlock = 1;
    } else {
      this.inBlock++;
    }
  }

  /** Applies `step` to values [o, o + m) of the sums, reading the update from byte address `src`. */
  private run(step: Step, o: number, src: number, m: number, w: number): void {
    const k = this.k;
    const block = this.blockPtr + o * 4;
    switch (step) {
      case Step.Start:
        return k.scale_f32(block, src, m, w);
      case Step.Axpy:
        return k.axpy_f32(block, src, m, w);
      case Step.Widen:
        return k.widen_scale(this.mainPtr + o * 8, block, src, m, w);
      case Step.Flush:
        return k.flush_scale(this.mainPtr + o * 8, block, src, m, w);
    }
  }

  mean(out: Float32Array, inv: number): void {
    const scaledInv = inv * this.scale;
    const stage = this.stageView;
    for (let o = 0; o < this.size; o += CHUNK) {
      const m = Math.min(CHUNK, this.size - o);
      if (this.hasMain)
        this.k.mean_both(this.stagePtr, this.mainPtr + o * 8, this.blockPtr + o * 4, m, scaledInv);
      else this.k.mean_block(this.stagePtr, this.blockPtr + o * 4, m, scaledInv);
      out.set(m === stage.length ? stage : stage.subarray(0, m), o);
    }
  }

  /** O(1): the next add overwrites the block and the first flush overwrites the float64 sum. */
  reset(): void {
    this.inBlock = 0;
    this.hasMain = false;
    this.scale = 0;
  }
}
