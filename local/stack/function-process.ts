/**
 * The aggregation Function's host (local/stack/functions-host.ts: HTTP API, round timer, Event Hub trigger) in a
 * child process of the local stack, so a fault test can SIGKILL the Function mid-round and start a new instance
 * that has nothing but what the old one persisted in Blob Storage (Azurite) — as when Azure Functions recycles or
 * loses a host. The child builds its aggregator as cloud/aggregator/src/index.ts does: an AzureBlobStore over the
 * storage account and an IotHubFleet over the hub's service API (the unmodified azure-iothub SDK).
 *
 * Event delivery follows the Event Hubs trigger's contract (at-least-once, checkpoint after the function returns:
 * https://learn.microsoft.com/azure/azure-functions/functions-bindings-event-hubs-trigger#checkpointing): the parent
 * keeps each batch until a Function process has handled it, hands batches over one at a time in order, and hands a
 * batch whose process died before finishing it to the next process. While no process runs, batches wait (the hub
 * keeps queueing behind them), as events wait in an Event Hub partition.
 *
 * Plain (non-secure) jobs only: the child has no identity keys.
 */
import type { ChildProcess } from "node:child_process";
import { FlotillaError } from "../../core/errors";
import { createAggregator, robustMaxBytesFromEnv } from "../../cloud/aggregator/src/aggregator";
import { IotHubFleet } from "../../cloud/aggregator/src/fleet/fleet";
import type { IngestCounter } from "../../cloud/aggregator/src/ingest";
import { AzureBlobStore, devStorageConnectionString } from "../../cloud/aggregator/src/store/blob-store";
import { createRegistry, createServiceClient } from "../hub";
import { freePort } from "./azurite";
import { startFunctionsHost, type FunctionsHost } from "./functions-host";
import { forkChild, runAsChild, type ChildLifecycle } from "./child";
import type { FunctionsHostContext } from "./stack";

export type IngestCounters = Record<IngestCounter, number>;

interface ChildSpec {
  readonly blobEndpoint: string;
  readonly serviceConnectionString: string;
  readonly caCertPem: string;
  readonly port: number;
  readonly timerIntervalMs: number;
}

type ToChild =
  | { type: "start"; spec: ChildSpec }
  | { type: "batch"; seq: number; events: unknown[] }
  | { type: "tick"; id: number }
  | { type: "counters"; id: number }
  | { type: "close" };
type FromChild =
  | ChildLifecycle
  | { type: "log"; line: string }
  | { type: "checkpoint"; seq: number }
  | { type: "done"; id: number; counters?: IngestCounters };

interface Instance {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly checkpoints: Map<number, () => void>;
  readonly requests: Map<number, (counters?: IngestCounters) => void>;
  alive: boolean;
}

export interface FunctionProcessHost extends FunctionsHost {
  /** The running Function process's pid (undefined while none runs). */
  readonly pid: number | undefined;
  /** Event batches handed to a Function process more than once (its process died before checkpointing them). */
  readonly redelivered: number;
  /** SIGKILLs the running Function process; resolves once it has exited, with how it ended. */
  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Starts a new Function process (on the same port) over the same storage account and hub. */
  restart(): Promise<void>;
  /** The running process's ingest counters (cloud/aggregator/src/ingest/ingest.ts). */
  counters(): Promise<IngestCounters>;
}

/** A `LocalStackOptions.functionsHost` that runs the Function in a child process. */
export async function startFunctionProcess(ctx: FunctionsHostContext): Promise<FunctionProcessHost> {
  const port = await freePort();
  const spec: ChildSpec = {
    blobEndpoint: ctx.blobEndpoint,
    serviceConnectionString: ctx.hub.serviceConnectionString,
    caCertPem: ctx.hub.caCertPem,
    port,
    timerIntervalMs: ctx.timerIntervalMs,
  };
  let current: Instance | undefined;
  let nextInstance: ((i: Instance | undefined) => void)[] = [];
  let seq = 0;
  let nextId = 1;
  let redelivered = 0;
  let closed = false;

  const launch = async (): Promise<Instance> => {
    const { child, pid, exited, ready, onMessage } = forkChild<ChildSpec, FromChild>(spec, {
      file: __filename,
      label: "the Function",
      errorCode: "E_FUNCTION_PROCESS",
      log: ctx.log,
    });
    const inst: Instance = {
      child,
      pid,
      exited,
      checkpoints: new Map(),
      requests: new Map(),
      alive: true,
    };
    onMessage((m) => {
      if (m.type === "log") ctx.log(m.line);
      else if (m.type === "checkpoint") inst.checkpoints.get(m.seq)?.();
      else if (m.type === "done") {
        inst.requests.get(m.id)?.(m.counters);
        inst.requests.delete(m.id);
      }
    });
    void exited.then(() => {
      inst.alive = false;
      if (current === inst) current = undefined;
      for (const r of inst.requests.values()) r(undefined);
      inst.requests.clear();
    });
    await ready;
    return inst;
  };

  /** The running process, or (waiting for one to start) the next; undefined once the host is closed. */
  const waitInstance = (): Promise<Instance | undefined> =>
    current?.alive ? Promise.resolve(current) : new Promise((resolve) => nextInstance.push(resolve));

  /** Hands one batch to Function processes until one of them has checkpointed it. */
  const handOver = async (events: unknown[]): Promise<void> => {
    const n = ++seq;
    for (let attempt = 0; ; attempt++) {
      if (closed) return;
      const inst = await waitInstance();
      if (!inst) return;
      if (attempt > 0) redelivered++;
      const outcome = await new Promise<"checkpoint" | "died">((resolve) => {
        inst.checkpoints.set(n, () => resolve("checkpoint"));
        void inst.exited.then(() => resolve("died"));
        if (inst.alive && inst.child.connected)
          inst.child.send({ type: "batch", seq: n, events } satisfies ToChild);
      });
      inst.checkpoints.delete(n);
      if (outcome === "checkpoint") return;
    }
  };

  const request = async (type: "tick" | "counters"): Promise<IngestCounters | undefined> => {
    const inst = current;
    if (!inst?.alive) return undefined;
    const id = nextId++;
    return new Promise((resolve) => {
      inst.requests.set(id, resolve);
      inst.child.send({ type, id } satisfies ToChild);
    });
  };

  const start = async (): Promise<void> => {
    const inst = await launch();
    current = inst;
    const waiting = nextInstance;
    nextInstance = [];
    for (const w of waiting) w(inst);
  };
  await start();

  let delivering: Promise<void> = Promise.resolve();
  return {
    url: `http://127.0.0.1:${port}`,
    get pid() {
      return current?.alive ? current.pid : undefined;
    },
    get redelivered() {
      return redelivered;
    },
    tick: async () => {
      await request("tick");
    },
    deliver: (events) => {
      delivering = delivering.then(() => handOver(events));
      return delivering;
    },
    replaceAggregator: () => {
      throw new FlotillaError(
        "E_FUNCTION_PROCESS",
        "the Function runs in a child process: kill() and restart() it instead of replacing its aggregator",
      );
    },
    kill: async () => {
      const inst = current;
      if (!inst) throw new FlotillaError("E_FUNCTION_PROCESS", "no Function process is running");
      inst.child.kill("SIGKILL");
      return inst.exited;
    },
    restart: async () => {
      if (current?.alive) throw new FlotillaError("E_FUNCTION_PROCESS", "a Function process is running");
      await start();
    },
    counters: async () => {
      const c = await request("counters");
      if (!c) throw new FlotillaError("E_FUNCTION_PROCESS", "no Function process is running");
      return c;
    },
    close: async () => {
      closed = true;
      const inst = current;
      for (const w of nextInstance.splice(0)) w(undefined);
      if (inst?.alive) {
        if (inst.child.connected) inst.child.send({ type: "close" } satisfies ToChild);
        const timer = setTimeout(() => inst.child.kill("SIGKILL"), 10_000);
        await inst.exited;
        clearTimeout(timer);
      }
    },
  };
}

// --- the child ------------------------------------------------------------------------------------------------------

/** Structured clone turns a Buffer into a plain Uint8Array: give event bodies back their Buffer type. */
function reviveEvent(ev: unknown): unknown {
  if (!ev || typeof ev !== "object") return ev;
  const e = ev as { body?: unknown };
  if (e.body instanceof Uint8Array && !Buffer.isBuffer(e.body))
    return { ...e, body: Buffer.from(e.body.buffer, e.body.byteOffset, e.body.byteLength) };
  return ev;
}

async function runChild(spec: ChildSpec): Promise<void> {
  const send = (m: FromChild): void => {
    process.send?.(m);
  };
  const log = (line: string): void => send({ type: "log", line });
  const hub = { serviceConnectionString: spec.serviceConnectionString, caCertPem: spec.caCertPem };
  const robustMaxBytes = robustMaxBytesFromEnv(process.env);
  const aggregator = createAggregator({
    store: new AzureBlobStore({ connectionString: devStorageConnectionString(spec.blobEndpoint) }),
    fleet: new IotHubFleet(createRegistry(hub), createServiceClient(hub), { log }),
    clock: Date.now,
    log,
    // The Function's app setting, from the environment this child inherited.
    ...(robustMaxBytes !== undefined ? { robustMaxBytes } : {}),
  });
  const host = await startFunctionsHost(aggregator, {
    port: spec.port,
    timerIntervalMs: spec.timerIntervalMs,
    log,
  });
  process.on("message", (m: ToChild) => {
    if (m.type === "batch") {
      // The host delivers one batch at a time, in order; the checkpoint follows the function's return.
      void host.deliver(m.events.map(reviveEvent)).then(
        () => send({ type: "checkpoint", seq: m.seq }),
        (e: unknown) => {
          // As the Functions runtime does: a failed invocation is logged and the checkpoint moves on.
          log(`[ingestUpdates] failed: ${e instanceof Error ? e.message : String(e)}`);
          send({ type: "checkpoint", seq: m.seq });
        },
      );
    } else if (m.type === "tick") {
      void host.tick().then(() => send({ type: "done", id: m.id }));
    } else if (m.type === "counters") {
      send({ type: "done", id: m.id, counters: { ...aggregator.ingestor.counters } });
    } else if (m.type === "close") {
      void host.close().finally(() => process.exit(0));
    }
  });
  send({ type: "ready" });
}

runAsChild(module, runChild);
