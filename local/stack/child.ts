/**
 * The one way the local stack runs a part of itself in a child process that a fault test can SIGKILL: a forked
 * copy of the part's compiled file, started with a `start` message over IPC and answering `ready` (or `failed`).
 * Used by device-process.ts (one device's modules) and function-process.ts (the Function host).
 */
import { fork, type ChildProcess } from "node:child_process";
import { FlotillaError } from "../../core/errors";

export type ChildExit = { code: number | null; signal: NodeJS.Signals | null };

/** Messages every child sends besides its own. */
export type ChildLifecycle = { type: "ready" } | { type: "failed"; message: string };

export interface ForkedChild<FromChild> {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Settles when the process has exited: its exit code, or the signal that ended it. */
  readonly exited: Promise<ChildExit>;
  /** Resolves on `ready`; rejects (with `errorCode`) on `failed` or an exit before it, after SIGKILLing the child. */
  readonly ready: Promise<void>;
  /** Every other message the child sends. */
  onMessage(handler: (m: FromChild) => void): void;
}

export interface ForkOptions {
  /** The compiled file to fork (its `__filename`); it must call `runAsChild`. */
  readonly file: string;
  /** Names the process in log lines and errors, e.g. "device edge-1" or "the Function". */
  readonly label: string;
  readonly errorCode: string;
  readonly log: (line: string) => void;
}

/** Forks `opts.file`, sends it `{type: "start", spec}`, and forwards its output to `opts.log` line by line. */
export function forkChild<Spec, FromChild extends { type: string }>(
  spec: Spec,
  opts: ForkOptions,
): ForkedChild<Exclude<FromChild, ChildLifecycle>> {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT; // the child is not a test file of the runner that started its parent
  const child = fork(opts.file, [], {
    execArgv: [],
    env,
    serialization: "advanced",
    stdio: ["ignore", "pipe", "pipe", "ipc"],
  });
  const pid = child.pid as number;
  const tail: string[] = [];
  const onOutput = (d: Buffer): void => {
    for (const line of d.toString().split("\n").filter(Boolean)) {
      tail.push(line);
      if (tail.length > 20) tail.shift();
      opts.log(`[${opts.label} pid ${pid}] ${line}`);
    }
  };
  child.stdout?.on("data", onOutput);
  child.stderr?.on("data", onOutput);
  // A message sent just as the process dies fails asynchronously: `exited` covers it.
  child.on("error", (e) => opts.log(`[${opts.label} pid ${pid}] ${e.message}`));
  const exited = new Promise<ChildExit>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const handlers: ((m: Exclude<FromChild, ChildLifecycle>) => void)[] = [];
  const ready = new Promise<void>((resolve, reject) => {
    child.on("message", (m: FromChild | ChildLifecycle) => {
      if (m.type === "ready") resolve();
      else if (m.type === "failed")
        reject(new FlotillaError(opts.errorCode, (m as { message: string }).message));
      else for (const h of handlers) h(m as Exclude<FromChild, ChildLifecycle>);
    });
    void exited.then(({ code, signal }) =>
      reject(
        new FlotillaError(
          opts.errorCode,
          `${opts.label} process exited (${signal ?? code}) before it started: ${tail.join(" | ")}`,
        ),
      ),
    );
  }).catch((e: unknown) => {
    child.kill("SIGKILL");
    throw e;
  });
  child.send({ type: "start", spec });
  return { child, pid, exited, ready, onMessage: (h) => handlers.push(h) };
}

/**
 * The child's side: when this file is the forked main module, waits for `start`, runs `main(spec)` (which sends
 * `ready` once it serves), and exits when the parent goes away (its test ended or crashed) or `main` fails.
 */
export function runAsChild<Spec>(mod: NodeJS.Module, main: (spec: Spec) => Promise<void>): void {
  if (require.main !== mod) return;
  process.on("disconnect", () => process.exit(0));
  process.once("message", (m: { type: string; spec: Spec }) => {
    if (m.type !== "start") return;
    main(m.spec).catch((e: unknown) => {
      process.send?.({
        type: "failed",
        message: e instanceof Error ? e.message : String(e),
      } satisfies ChildLifecycle);
      process.exit(1);
    });
  });
}
