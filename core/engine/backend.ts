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
import * as path from "node:path";
import * as tf from "@tensorflow/tfjs";
import { getThreadsCount, setThreadsCount, setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import { fail } from "../errors";
import { registerWasmTrainingKernels } from "./kernels/index";
import { DEFAULT_MAX_THREADS, MAX_THREADS, defaultThreads, parseThreads } from "./threads";
import { installPthreadWorker, syncHeapViews, withReportedCores } from "./wasm-threads";

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
