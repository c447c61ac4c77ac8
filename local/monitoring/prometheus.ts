/**
 * A real Prometheus (Debian's `prometheus` package, /usr/bin/prometheus) over the local stack, for `npm start
 * --prometheus` and the tests (docs/prometheus.md). Nothing is templated: the run directory gets the repository's
 * own configuration, monitoring/prometheus/local.yml, as `prometheus.yml`, its rules under `rules/`, and the
 * file_sd target lists the configuration names under `targets/` — each module instance's `/metrics` (the stack's
 * MetricsEndpoints) and the Function host's `GET /api/metrics`. Prometheus re-reads the target files when they
 * change (`setTargets`), so a launcher can write them before or after it starts.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { FlotillaError, isFlotillaError } from "../../core/errors";
import type { MetricsEndpoint } from "../../modules/shared/metrics";
import { freePort } from "../stack/azurite";
import type { LocalStack } from "../stack/stack";

/** The repository's Prometheus configuration (monitoring/prometheus). */
export const MONITORING_DIR = path.join(__dirname, "..", "..", "..", "monitoring");
export const PROMETHEUS_CONFIG_DIR = path.join(MONITORING_DIR, "prometheus");

/** How to get Prometheus, printed when it is missing. */
export const PROMETHEUS_INSTALL = "apt-get install -y prometheus";

/** The scrape jobs of monitoring/prometheus/local.yml and their file_sd files (under `targets/`). */
export const LOCAL_SCRAPE_JOBS = {
  modules: { job: "flotilla-modules", file: "modules.json" },
  function: { job: "flotilla-function", file: "function.json" },
} as const;

/**
 * The Prometheus binary: FLOTILLA_PROMETHEUS, else `prometheus` on the PATH, else Debian's /usr/bin/prometheus;
 * undefined when none exists.
 */
export function findPrometheus(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.FLOTILLA_PROMETHEUS)
    return fs.existsSync(env.FLOTILLA_PROMETHEUS) ? env.FLOTILLA_PROMETHEUS : undefined;
  const dirs = [...(env.PATH ?? "").split(path.delimiter).filter(Boolean), "/usr/bin"];
  for (const dir of dirs) {
    const p = path.join(dir, "prometheus");
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** What the local Prometheus scrapes. */
export interface PrometheusTargets {
  /** Each module instance's /metrics (LocalStack.metricsEndpoints()). */
  readonly modules: readonly MetricsEndpoint[];
  /** The Function host's base URL (http://127.0.0.1:PORT); its metrics are at /api/metrics. */
  readonly functionUrl?: string;
}

/** One file_sd group: `targets` host:port, with labels. */
interface TargetGroup {
  targets: string[];
  labels: Record<string, string>;
}

/**
 * The file_sd groups of the module endpoints: one target per distinct URL (a launcher that serves all modules of a
 * device at one URL lists it once), labelled with its `edge_device` and `module_name` (IoT Edge's names). The scrape
 * job honours the samples' own labels, so these only fill in series that have none, such as `up`.
 */
export function moduleTargetGroups(endpoints: readonly MetricsEndpoint[]): TargetGroup[] {
  const byUrl = new Map<string, MetricsEndpoint[]>();
  for (const e of endpoints) byUrl.set(e.url, [...(byUrl.get(e.url) ?? []), e]);
  const groups: TargetGroup[] = [];
  for (const [url, es] of byUrl) {
    const u = new URL(url);
    if (u.pathname !== "/metrics") {
      throw new FlotillaError(
        "E_CONFIG_VALUE",
        `a module metrics endpoint must be served at /metrics: ${url}`,
      );
    }
    const devices = new Set(es.map((e) => e.deviceId));
    const labels: Record<string, string> = {};
    if (devices.size === 1) labels.edge_device = es[0]!.deviceId;
    if (es.length === 1) labels.module_name = es[0]!.module;
    groups.push({ targets: [u.host], labels });
  }
  return groups;
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

/**
 * Lays out a run directory for the local Prometheus: `prometheus.yml` (monitoring/prometheus/local.yml as it is),
 * `rules/` (monitoring/prometheus/rules/*.yml) and `targets/` (the file_sd lists). Returns the config's path.
 */
export function writePrometheusDir(dir: string, targets: PrometheusTargets): string {
  fs.mkdirSync(path.join(dir, "rules"), { recursive: true });
  fs.mkdirSync(path.join(dir, "targets"), { recursive: true });
  const config = path.join(dir, "prometheus.yml");
  fs.copyFileSync(path.join(PROMETHEUS_CONFIG_DIR, "local.yml"), config);
  const rules = path.join(PROMETHEUS_CONFIG_DIR, "rules");
  for (const f of fs.readdirSync(rules)) {
    if (f.endsWith(".yml")) fs.copyFileSync(path.join(rules, f), path.join(dir, "rules", f));
  }
  writeTargets(dir, targets);
  return config;
}

function writeTargets(dir: string, targets: PrometheusTargets): void {
  writeAtomic(
    path.join(dir, "targets", LOCAL_SCRAPE_JOBS.modules.file),
    JSON.stringify(moduleTargetGroups(targets.modules), null, 2) + "\n",
  );
  const fn: TargetGroup[] = targets.functionUrl
    ? [{ targets: [new URL(targets.functionUrl).host], labels: {} }]
    : [];
  writeAtomic(path.join(dir, "targets", LOCAL_SCRAPE_JOBS.function.file), JSON.stringify(fn, null, 2) + "\n");
}

export interface LocalPrometheusOptions {
  /** The run directory (config, rules, targets, and the TSDB under `data/`); created if missing. */
  readonly dir: string;
  /** The web port (default or 0: any free port). */
  readonly port?: number;
  /** The binary (default: findPrometheus()). */
  readonly binary?: string;
  /** How long to wait for /-/ready (default 30 s). */
  readonly readyTimeoutMs?: number;
}

export interface LocalPrometheus {
  /** http://127.0.0.1:PORT (the UI and the HTTP API /api/v1). */
  readonly url: string;
  readonly dir: string;
  readonly pid: number | undefined;
  /** Rewrites the file_sd target lists (Prometheus picks them up within seconds). */
  setTargets(targets: PrometheusTargets): void;
  /** Stops Prometheus (SIGTERM; SIGKILL after 10 s). The run directory stays. */
  close(): Promise<void>;
}

/** A running Prometheus process. */
export interface PrometheusProcess {
  readonly url: string;
  readonly pid: number | undefined;
  close(): Promise<void>;
}

export interface RunPrometheusOptions {
  readonly binary: string;
  /** The working directory; `prometheus.log` (its stderr) goes there. */
  readonly dir: string;
  readonly port: number;
  /** Arguments besides --web.listen-address (config, storage, feature flags). */
  readonly args: readonly string[];
  /** Environment additions (e.g. IOTEDGE_DEVICEID for expand-external-labels). */
  readonly env?: Readonly<Record<string, string>>;
  readonly readyTimeoutMs?: number;
}

/**
 * Runs `prometheus` (server or agent, per `args`) on 127.0.0.1:port and resolves once it answers /-/ready. Throws
 * E_PROMETHEUS when it exits early or is not ready in time (with its last error line). It never outlives the
 * launcher's process.
 */
export async function runPrometheus(opts: RunPrometheusOptions): Promise<PrometheusProcess> {
  const { binary, dir, port } = opts;
  fs.mkdirSync(dir, { recursive: true });
  const child: ChildProcess = spawn(binary, [...opts.args, `--web.listen-address=127.0.0.1:${port}`], {
    cwd: dir,
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, ...(opts.env ?? {}) },
  });
  // Prometheus logs to stderr; keep the tail for error messages, and the whole of it in the run directory.
  const logFile = fs.createWriteStream(path.join(dir, "prometheus.log"));
  let tail = "";
  child.stderr?.on("data", (d: Buffer) => {
    logFile.write(d);
    tail = (tail + d.toString()).slice(-4000);
  });
  let spawnError: Error | undefined;
  child.once("error", (e) => (spawnError = e));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const running = () => child.exitCode === null && child.signalCode === null && !spawnError;
  // Never outlive the launcher: a Node process that exits without closing (an uncaught error) takes it along.
  const killOnExit = () => {
    if (running()) child.kill("SIGTERM");
  };
  process.once("exit", killOnExit);
  const close = async (): Promise<void> => {
    process.removeListener("exit", killOnExit);
    if (running()) {
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    }
    await new Promise<void>((resolve) => logFile.end(() => resolve()));
  };
  const url = `http://127.0.0.1:${port}`;
  const lastLine = () =>
    tail
      .trim()
      .split("\n")
      .filter((l) => /level=(error|fatal)|err=/.test(l))
      .pop() ??
    tail.trim().split("\n").pop() ??
    "";
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 30_000);
  for (;;) {
    if (!running()) {
      await close();
      throw new FlotillaError(
        "E_PROMETHEUS",
        `prometheus (${binary}) exited before it was ready: ${spawnError?.message ?? lastLine()}`,
        spawnError ? { cause: spawnError } : undefined,
      );
    }
    const ready = await fetch(`${url}/-/ready`).then(
      (r) => r.ok,
      () => false,
    );
    if (ready) break;
    if (Date.now() > deadline) {
      await close();
      throw new FlotillaError("E_PROMETHEUS", `prometheus did not become ready at ${url}: ${lastLine()}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return { url, pid: child.pid, close };
}

/**
 * Starts Prometheus over `targets` and resolves once it answers /-/ready. Throws E_PROMETHEUS when the binary is
 * missing (the message says how to install it), exits early, or is not ready in time.
 */
export async function startPrometheus(
  targets: PrometheusTargets,
  opts: LocalPrometheusOptions,
): Promise<LocalPrometheus> {
  const binary = opts.binary ?? findPrometheus();
  if (!binary) {
    throw new FlotillaError("E_PROMETHEUS", `prometheus is not installed (${PROMETHEUS_INSTALL})`);
  }
  const dir = path.resolve(opts.dir);
  const config = writePrometheusDir(dir, targets);
  const p = await runPrometheus({
    binary,
    dir,
    port: opts.port || (await freePort()), // 0: any free port
    args: [
      `--config.file=${config}`,
      `--storage.tsdb.path=${path.join(dir, "data")}`,
      // The stack's run is short: keep the TSDB small.
      "--storage.tsdb.retention.time=1d",
    ],
    ...(opts.readyTimeoutMs !== undefined ? { readyTimeoutMs: opts.readyTimeoutMs } : {}),
  });
  return {
    url: p.url,
    dir,
    pid: p.pid,
    setTargets: (t) => writeTargets(dir, t),
    close: () => p.close(),
  };
}

/** What the local Prometheus scrapes on a running stack: every module instance and the Function host. */
export function stackTargets(stack: LocalStack): PrometheusTargets {
  return { modules: stack.metricsEndpoints(), functionUrl: stack.host.url };
}

export interface AttachPrometheusOptions {
  /** The run directory (`<out>/prometheus` for `npm start --prometheus`). */
  readonly dir: string;
  /** The web port (0: any free port); absent: 9090 (Prometheus' own) when free, else any free port. */
  readonly port?: number;
  readonly binary?: string;
  /** Where the one-line notices go (the URL, or why Prometheus does not run). */
  readonly print: (line: string) => void;
}

async function portFree(port: number): Promise<boolean> {
  const net = await import("node:net");
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/**
 * `--prometheus`: starts Prometheus over a running stack and prints its URL; when Prometheus is not installed or
 * cannot start, prints one line saying why (and how to install it) and returns undefined — the stack runs on
 * without it.
 */
export async function attachPrometheus(
  stack: LocalStack,
  opts: AttachPrometheusOptions,
): Promise<LocalPrometheus | undefined> {
  const binary = opts.binary ?? findPrometheus();
  if (!binary) {
    opts.print(`prometheus: not installed, the stack runs without it (${PROMETHEUS_INSTALL})`);
    return undefined;
  }
  const targets = stackTargets(stack);
  try {
    const port = opts.port ?? ((await portFree(9090)) ? 9090 : undefined);
    const p = await startPrometheus(targets, {
      dir: opts.dir,
      binary,
      ...(port !== undefined ? { port } : {}),
    });
    opts.print(
      `prometheus: ${p.url} (${targets.modules.length} module endpoints and the Function, every 2 s; ` +
        `data in ${p.dir})`,
    );
    return p;
  } catch (e) {
    if (!isFlotillaError(e) || e.code !== "E_PROMETHEUS") throw e;
    opts.print(`prometheus: ${e.code}: ${e.message}; the stack runs without it`);
    return undefined;
  }
}
