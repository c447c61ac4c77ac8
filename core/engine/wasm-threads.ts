/**
 * Multi-threaded tfjs-backend-wasm under Node: what its threaded build (tfjs-backend-wasm-threaded-simd.wasm, whose
 * XNNPACK runs convolutions and matrix products on a pthreadpool) needs and does not get from tfjs 4.22, supplied
 * without modifying the installed package.
 *
 * tfjs turns the build off under Node (`WASM_HAS_MULTITHREAD_SUPPORT` is false there, tfjs issue #3830). Forcing
 * the flag on loads the threaded binary, but three things then go wrong, each fixed here:
 *
 * 1. The Emscripten pthread glue starts each pthread as `new Worker(url)` with `url` a `blob:nodedata:` object URL
 *    of the worker script, which Node's worker_threads refuse (ERR_WORKER_PATH). `installPthreadWorker()` makes
 *    the global `Worker` the glue uses a {@link PthreadWorker}: the worker script (tfjs ships its text as
 *    `wasm-out/tfjs-backend-wasm-threaded-simd.worker.js`, `wasmWorkerContents`) runs as an `eval` worker, and the
 *    glue's "load" message, which names the main script as a Blob the worker cannot import either, is rewritten to
 *    name the package's own copy of that script (`wasm-out/tfjs-backend-wasm-threaded-simd.js`, the same
 *    Emscripten output tfjs bundles) by path. The worker script already has Node adapters (`self`,
 *    `postMessage`, `importScripts` reading a file).
 * 2. The glue pre-starts a pool of 8 workers (an isolate each, ~10 MB) though XNNPACK uses `threads − 1` of them
 *    (the calling thread is the pool's first thread). A PthreadWorker starts its thread only when the glue first
 *    runs a pthread on it and answers "loaded" itself until then: idle pool slots cost nothing.
 * 3. The backend caps XNNPACK's pool at `emscripten_num_logical_cores() / 2` (it assumes 2 hyper-threads per
 *    core), which is `os.cpus().length / 2` under Node: one thread on a 2-core machine. `withReportedCores()`
 *    reports 2 × the requested thread count to that one call, made while the module starts.
 *
 * Pthreads never keep the process alive (they only run work the main thread waits for), so their workers stay
 * unref'd. With threads the wasm memory is a SharedArrayBuffer: growing it does not detach old views but leaves
 * them short, and only the glue's own accessors notice; `syncHeapViews()` refreshes the module's exported views.
 */
import os = require("node:os");
import * as path from "node:path";
import { EventEmitter } from "node:events";
import { Worker as NodeWorker } from "node:worker_threads";
import type { TransferListItem } from "node:worker_threads";

/** The installed tfjs-backend-wasm's files the pthread workers need. */
function packageFiles(): { workerSource: string; mainScript: string } {
  const dist = path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm"));
  const out = path.join(dist, "..", "wasm-out");
  const { wasmWorkerContents } = require(path.join(out, "tfjs-backend-wasm-threaded-simd.worker.js")) as {
    wasmWorkerContents: string;
  };
  return {
    // The worker text has literal "\n" escapes inside string literals: tfjs escapes them the same way before
    // making its Blob.
    workerSource: wasmWorkerContents.replace(/\n/g, "\\n"),
    mainScript: path.join(out, "tfjs-backend-wasm-threaded-simd.js"),
  };
}

let files: { workerSource: string; mainScript: string } | null = null;

/** The threaded build's binary, in the package's dist/ directory. */
export const THREADED_WASM = "tfjs-backend-wasm-threaded-simd.wasm";

interface GlueMessage {
  cmd?: string;
  urlOrBlob?: unknown;
}

/**
 * A Web-Worker-shaped stand-in for an Emscripten pthread worker (the subset of Node's Worker API the glue uses:
 * on, postMessage, ref, unref, terminate), backed by a worker_threads Worker that starts on first real use.
 */
export class PthreadWorker extends EventEmitter {
  private real: NodeWorker | null = null;
  private load: GlueMessage | null = null;
  // The glue assigns these (browser-style handlers); under Node it also listens with on("message"/"error").
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;

  constructor(_url?: unknown) {
    super();
    files ??= packageFiles();
  }

  postMessage(msg: unknown, transfer?: readonly TransferListItem[]): void {
    const m = msg as GlueMessage;
    if (this.real === null && m?.cmd === "load") {
      // Remembered for the real thread; the pool slot reports itself loaded now (as the real worker would).
      this.load = { ...m, urlOrBlob: (files as { mainScript: string }).mainScript };
      setImmediate(() => this.emit("message", { cmd: "loaded" }));
      return;
    }
    const real = this.start();
    real.postMessage(msg, transfer);
  }

  private start(): NodeWorker {
    if (this.real !== null) return this.real;
    const w = new NodeWorker((files as { workerSource: string }).workerSource, { eval: true });
    w.on("message", (d: GlueMessage) => {
      if (d?.cmd === "loaded") return; // already announced
      this.emit("message", d);
    });
    w.on("error", (e) => this.emit("error", e));
    w.unref(); // after the listeners: adding a "message" listener refs the worker's port again
    // The worker handles "load" synchronously (it instantiates the shared module with WebAssembly.Instance), so
    // a message posted right after it finds the thread ready: no round trip through this (possibly blocked)
    // thread's event loop, which pthreadpool_create would deadlock on.
    if (this.load !== null) w.postMessage(this.load);
    this.real = w;
    return w;
  }

  /** Pthreads never hold the process open: the main thread only waits on them while it runs their work. */
  ref(): void {}

  unref(): void {}

  terminate(): Promise<number> {
    return this.real?.terminate() ?? Promise.resolve(0);
  }

  /** Whether this pool slot has started a thread (for diagnostics and tests). */
  get started(): boolean {
    return this.real !== null;
  }
}

let installed = false;

/**
 * Makes the global `Worker` the Emscripten glue uses a PthreadWorker. The glue assigns worker_threads' Worker to
 * the global while it starts; that assignment is ignored. Node 20 has no global Worker of its own.
 */
export function installPthreadWorker(): void {
  if (installed) return;
  Object.defineProperty(globalThis, "Worker", {
    configurable: true,
    get: () => PthreadWorker,
    set: () => undefined,
  });
  installed = true;
}

/**
 * Runs `start` (the backend's module start-up) with `os.cpus()` reporting 2 × `threads` CPUs, so the backend's
 * `num_logical_cores / 2` cap is `threads`. Restored as soon as `start` settles.
 */
export async function withReportedCores<T>(threads: number, start: () => Promise<T>): Promise<T> {
  const cpus = os.cpus;
  const real = cpus();
  const n = 2 * threads;
  const patched = (): os.CpuInfo[] => Array.from({ length: n }, (_, i) => real[i % Math.max(1, real.length)]);
  (os as { cpus: () => os.CpuInfo[] }).cpus = patched;
  try {
    return await start();
  } finally {
    if (os.cpus === patched) (os as { cpus: () => os.CpuInfo[] }).cpus = cpus;
  }
}

/** The Emscripten module fields syncHeapViews() reads and refreshes. */
interface HeapModule {
  wasmMemory?: { readonly buffer: ArrayBufferLike };
  HEAP8: Int8Array;
  HEAP16: Int16Array;
  HEAP32: Int32Array;
  HEAPU8: Uint8Array;
  HEAPU16: Uint16Array;
  HEAPU32: Uint32Array;
  HEAPF32: Float32Array;
  HEAPF64: Float64Array;
}

/**
 * Rebuilds the module's exported heap views when the wasm memory grew behind them. With shared memory a pthread's
 * growth neither detaches nor resizes this thread's views, and tfjs's own code (typedArrayFromHeap, readSync)
 * uses the exported views directly. Free when nothing changed; a no-op on the single-threaded build (its memory
 * only grows from this thread, which refreshes the views itself).
 */
export function syncHeapViews(module: unknown): void {
  const m = module as HeapModule;
  const mem = m.wasmMemory;
  if (mem === undefined) return;
  const buf = mem.buffer;
  if (m.HEAPU8.buffer === buf) return;
  m.HEAP8 = new Int8Array(buf);
  m.HEAP16 = new Int16Array(buf);
  m.HEAP32 = new Int32Array(buf);
  m.HEAPU8 = new Uint8Array(buf);
  m.HEAPU16 = new Uint16Array(buf);
  m.HEAPU32 = new Uint32Array(buf);
  m.HEAPF32 = new Float32Array(buf);
  m.HEAPF64 = new Float64Array(buf);
}

/**
 * The address of tfjs's `tfjs::backend::threadpool` (the pthreadpool every XNNPACK kernel of the backend runs on)
 * in wasm memory, read from the code of the exported `get_threads_count`, which starts by loading it
 * (`i32.const A; i32.load offset=O`; tfjs-backend-wasm src/cc/backend.cc). Null when the code has another shape.
 */
export function findThreadpoolSlot(wasm: Uint8Array): number | null {
  let p = 8;
  const u = (): number => {
    let r = 0;
    let s = 0;
    let b: number;
    do {
      b = wasm[p++];
      r += (b & 0x7f) * 2 ** s;
      s += 7;
    } while (b & 0x80 && p < wasm.length);
    return r;
  };
  const sleb = (): number => {
    let r = 0;
    let s = 0;
    let b: number;
    do {
      b = wasm[p++];
      r += (b & 0x7f) * 2 ** s;
      s += 7;
    } while (b & 0x80 && p < wasm.length);
    return b & 0x40 ? r - 2 ** s : r;
  };
  const skipName = (): void => {
    const l = u();
    p += l;
  };
  let imported = 0;
  let target = -1;
  let code = -1;
  while (p < wasm.length) {
    const id = wasm[p++];
    const size = u();
    const start = p;
    if (id === 2) {
      for (let n = u(), i = 0; i < n; i++) {
        skipName();
        skipName();
        const kind = wasm[p++];
        if (kind === 0) {
          u();
          imported++;
        } else if (kind === 1) {
          p++; // element type
          const flags = u();
          u();
          if (flags & 1) u();
        } else if (kind === 2) {
          const flags = u();
          u();
          if (flags & 1) u();
        } else if (kind === 3) p += 2;
        else return null;
      }
    } else if (id === 7) {
      for (let n = u(), i = 0; i < n; i++) {
        const l = u();
        const name = Buffer.from(wasm.subarray(p, p + l)).toString("utf8");
        p += l;
        const kind = wasm[p++];
        const index = u();
        if (kind === 0 && name === "get_threads_count") target = index;
      }
    } else if (id === 10) code = start;
    p = start + size;
  }
  if (target < imported || code < 0) return null;
  p = code;
  const count = u();
  for (let i = 0; i < count; i++) {
    const size = u();
    const start = p;
    if (i + imported === target) {
      for (let groups = u(), g = 0; g < groups; g++) {
        u();
        p++;
      }
      if (wasm[p++] !== 0x41) return null; // i32.const
      const base = sleb();
      if (wasm[p++] !== 0x28) return null; // i32.load
      u(); // alignment
      return base + u();
    }
    p = start + size;
  }
  return null;
}
