/**
 * The TensorFlow.js backend every model runs on: the WebAssembly backend (XNNPACK kernels, SIMD when the runtime
 * has it). No native libtensorflow, so the same code runs on any device that runs Node.
 *
 * `initBackend()` is idempotent and safe to call concurrently: it points the wasm backend at its .wasm binaries
 * (resolved from the installed @tensorflow/tfjs-backend-wasm package, so it works from any working directory),
 * selects it, and registers the training kernels the wasm backend lacks (`kernels/index.ts`).
 *
 * Threads (docs/threads.md): with `threads` > 1 the backend runs tfjs's threaded build, whose XNNPACK spreads
 * convolutions and matrix products over a pool of that many threads (worker_threads running Emscripten pthreads
 * on a shared wasm memory; `wasm-threads.ts` makes that build work under Node). `threads: 1` is the
 * single-threaded build. The backend is one per isolate (the main thread, or each worker thread): the first
 * initBackend() call that starts it fixes its thread count; `backendThreads()` tells what it runs with.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { getThreadsCount, setThreadsCount, setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { fail } from "../errors";
import { registerWasmTrainingKernels } from "./kernels/index";
import { DEFAULT_MAX_THREADS, MAX_THREADS, defaultThreads, parseThreads } from "./threads";
import {
  THREADED_WASM,
  findThreadpoolSlot,
  installPthreadWorker,
  syncHeapViews,
  withReportedCores,
} from "./wasm-threads";

export const BACKEND = "wasm";

let initializing: Promise<void> | null = null;

export { DEFAULT_MAX_THREADS, MAX_THREADS, defaultThreads, parseThreads };

export interface InitBackendOptions {
  /** Silence tfjs's console warnings (default true); see silenceTfjs(). */
  readonly quiet?: boolean;
  /**
   * XNNPACK threads of this isolate's backend (default: defaultThreads()); 1 = the single-threaded build. Only
   * the call that starts the backend uses it.
   */
  readonly threads?: number;
}

/** Selects the tfjs wasm backend and registers the training kernels. Resolves once; later calls are free. */
export function initBackend(opts: InitBackendOptions = {}): Promise<void> {
  if (opts.quiet !== false) silenceTfjs();
  if (initializing === null) {
    const threads = parseThreads(opts.threads) ?? defaultThreads();
    initializing = init(threads).catch((e: unknown) => {
      initializing = null; // let a later call retry
      throw e;
    });
  }
  return initializing;
}

async function init(threads: number): Promise<void> {
  if (tf.getBackend() !== BACKEND || tf.findBackend(BACKEND) === null) {
    try {
      // The directory holding tfjs-backend-wasm*.wasm (the package's main file lives next to them).
      setWasmPaths(path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm")) + path.sep);
    } catch {
      // The wasm backend was already initialized by someone else: its paths are fixed, nothing to do.
    }
    const threaded = threads > 1 && tf.findBackend(BACKEND) === null;
    if (threaded) installPthreadWorker();
    // Read once, when the backend's module starts (a started backend keeps its build and pool).
    tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", threaded);
    setThreadsCount(threads);
    let ok = false;
    try {
      ok = threaded
        ? await withReportedCores(threads, () => tf.setBackend(BACKEND))
        : await tf.setBackend(BACKEND);
    } catch (e) {
      fail("E_ENGINE_BACKEND", `cannot start the TensorFlow.js wasm backend: ${(e as Error).message}`, {
        cause: e,
      });
    }
    if (!ok) fail("E_ENGINE_BACKEND", "cannot start the TensorFlow.js wasm backend");
  }
  await tf.ready();
  registerWasmTrainingKernels();
  pool = threads > 1 ? locatePool(threads) : null;
}

/**
 * Small kernels on one thread. A kernel on the pool wakes the pool's threads and waits for the slowest: worth it
 * for a convolution of a few hundred MFLOP, a loss for the many small kernels of a step (a 784×200 matrix product
 * at B = 10, a max-pool, a bias add), and a large one when the machine is busy and the pool's threads wait for a
 * core. Every XNNPACK kernel of the backend reads the pool from one global of wasm memory
 * (`tfjs::backend::threadpool`) when it runs, and runs on the calling thread when it is null: `pool` remembers its
 * address and value so that the fast path (network.ts, backprop.ts) can run its steps serially
 * (`serialKernels`) and put only the large products on the pool (`parallelIf`). Null on one thread, or when the
 * global was not found (then every kernel runs on the pool, tfjs's own behaviour).
 */
let pool: { readonly slot: number; readonly ptr: number } | null = null;
let poolOn = true;

/** Below this many floating-point operations a kernel runs on the calling thread (see `pool`). */
export const PARALLEL_MIN_FLOPS = 16e6;

function heap32(): Int32Array {
  return (wasmBackend().wasm as unknown as { HEAP32: Int32Array }).HEAP32;
}

/** Finds the pool global in the running module and checks it (get_threads_count reads -1 with it cleared). */
function locatePool(threads: number): { slot: number; ptr: number } | null {
  try {
    const file = path.join(path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm")), THREADED_WASM);
    const slot = findThreadpoolSlot(fs.readFileSync(file));
    if (slot === null || slot % 4 !== 0) return null;
    const be = wasmBackend();
    const h = heap32();
    const ptr = h[slot >> 2];
    if (ptr === 0 || be.wasm.tfjs.getThreadsCount() !== threads) return null;
    h[slot >> 2] = 0;
    const cleared = be.wasm.tfjs.getThreadsCount();
    h[slot >> 2] = ptr;
    return cleared === -1 && be.wasm.tfjs.getThreadsCount() === threads ? { slot, ptr } : null;
  } catch {
    return null;
  }
}

function setPool(on: boolean): boolean {
  const was = poolOn;
  if (pool !== null && on !== was) heap32()[pool.slot >> 2] = on ? pool.ptr : 0;
  poolOn = on;
  return was;
}

/** True when small kernels can be kept off the thread pool (threads > 1 and the pool global was found). */
export function poolSwitchable(): boolean {
  return pool !== null;
}

/** Runs `fn` (synchronous tfjs kernels) with XNNPACK on the calling thread only; see `pool`. */
export function serialKernels<T>(fn: () => T): T {
  const was = setPool(false);
  try {
    return fn();
  } finally {
    setPool(was);
  }
}

/** Runs `fn` on the thread pool when it does at least PARALLEL_MIN_FLOPS, else on the calling thread. */
export function parallelIf<T>(flops: number, fn: () => T): T {
  const was = setPool(flops >= PARALLEL_MIN_FLOPS);
  try {
    return fn();
  } finally {
    setPool(was);
  }
}

/** The threads the running backend's XNNPACK uses (1 on the single-threaded build). */
export function backendThreads(): number {
  if (!backendReady())
    fail("E_ENGINE_BACKEND", "the wasm backend is not initialized (await initBackend() first)");
  return Math.max(1, getThreadsCount());
}

/** True once initBackend() has finished and wasm is the active backend. */
export function backendReady(): boolean {
  return tf.getBackend() === BACKEND && tf.findBackend(BACKEND) !== null;
}

/** The active wasm backend (for code that reads or writes tensor memory on the wasm heap). */
export function wasmBackend(): BackendWasm {
  if (!backendReady())
    fail("E_ENGINE_BACKEND", "the wasm backend is not initialized (await initBackend() first)");
  const be = tf.backend() as unknown as BackendWasm;
  syncHeapViews(be.wasm);
  return be;
}

/**
 * Silences tfjs's console output: the "Hi, looks like you are running TensorFlow.js in Node.js ... install our
 * node backend" banner (printed when the cpu backend first stores data) and its other console.warn hints. tfjs's
 * PROD flag gates exactly those warnings (it disables no computation checks: those hang off the DEBUG flag).
 */
export function silenceTfjs(): void {
  tf.env().set("PROD", true);
}
