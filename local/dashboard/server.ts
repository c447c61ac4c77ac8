/**
 * The live fleet dashboard's server (docs/dashboard.md): polls the aggregation Function's job API and the fleet's
 * module twins (./sources.ts), folds them into one snapshot (./model.ts) and pushes every changed snapshot to the
 * open pages with server-sent events (HTML Living Standard, §9.2 "Server-sent events": `text/event-stream`,
 * `event:`/`data:` fields, `retry:`). The page (./page.ts) and Chart.js (from node_modules, the same file the
 * reports inline) are served by this server: nothing is fetched from a CDN.
 *
 *   GET /                  the page            GET /api/snapshot      the current snapshot (JSON)
 *   GET /dashboard.js      its script          GET /api/events        snapshots as server-sent events
 *   GET /dashboard.css     its style           GET /api/devices/{id}  a device's history (JSON)
 *   GET /chart.js          Chart.js 4 (UMD)
 *
 * A source that fails (unreachable, refused key, bad connection string) is an entry of the snapshot's `errors`
 * (code + one line) shown on the page and logged once per change; the other source and the server go on. It binds to
 * 127.0.0.1 by default and, bound to a loopback address, answers only requests whose Host is a loopback name (a web
 * page elsewhere cannot read it through DNS rebinding).
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { FlotillaError, errorCode, isFlotillaError } from "../../core/errors";
import { chartLibrary } from "../report/report";
import {
  FleetHistory,
  deviceRows,
  qualityViews,
  type DeviceQualityView,
  jobView,
  pickJob,
  roundPoints,
  type DashboardError,
  type DeviceRow,
  type RoundPoint,
  type Snapshot,
} from "./model";
import { DASHBOARD_CSS, DASHBOARD_HTML, DASHBOARD_JS } from "./page";
import type { FunctionApi, JobSummary, TwinSource } from "./sources";

export const DEFAULT_DASHBOARD_PORT = 8090;

export interface DashboardOptions {
  /** The Function's job API; absent (or a start error in `startErrors`): no jobs and rounds. */
  readonly functionApi?: FunctionApi;
  /** The fleet's module twins; absent: no device rows. */
  readonly twins?: TwinSource;
  /** Errors of sources that could not even be set up (a malformed URL or connection string): shown as they are. */
  readonly startErrors?: readonly DashboardError[];
  /** Follow this job (default: the running one, else the last updated). */
  readonly jobId?: string;
  /** Bind address (default 127.0.0.1). */
  readonly host?: string;
  /** Port (default 8090; 0: any free port). */
  readonly port?: number;
  /** Poll period of the Function's API, ms (default 2 000). */
  readonly functionIntervalMs?: number;
  /**
   * Poll period of the twin query, ms (default 10 000: IoT Hub meters queries, an S1 unit allows 20 a minute,
   * and the Function's own device selection queries too).
   */
  readonly hubIntervalMs?: number;
  /** Receives one line per source error as it appears (and when the source recovers). */
  readonly log?: (line: string) => void;
}

export interface Dashboard {
  /** `http://host:port/` */
  readonly url: string;
  snapshot(): Snapshot;
  /** Polls both sources now (the periodic polls go on). */
  refresh(): Promise<void>;
  /**
   * Polls once more, then stops polling and keeps serving that last snapshot marked `final` (the sources are about
   * to go away: `simulate --dashboard` closing its local stack).
   */
  freeze(reason: string): Promise<void>;
  close(): Promise<void>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;
const HOST_HEADER = /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/i;

const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

function line(e: DashboardError): string {
  return `${e.code}: ${e.message}`;
}

export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const host = opts.host ?? "127.0.0.1";
  const log = opts.log ?? (() => undefined);
  const fnEvery = opts.functionIntervalMs ?? 2_000;
  const hubEvery = opts.hubIntervalMs ?? 10_000;
  const history = new FleetHistory();
  const errors = new Map<string, DashboardError>();
  for (const e of opts.startErrors ?? []) errors.set(e.source, e);
  let jobs: JobSummary[] = [];
  let job: Snapshot["job"] = null;
  let rounds: RoundPoint[] = [];
  let devices: DeviceRow[] = [];
  let quality: Record<string, DeviceQualityView> = {};
  let final: string | null = null;
  let current: Snapshot = build();
  let currentKey = keyOf(current);
  const clients = new Set<http.ServerResponse>();

  function build(): Snapshot {
    return {
      at: Date.now(),
      sources: { function: opts.functionApi?.url ?? null, hub: opts.twins?.hubName ?? null },
      jobs,
      job,
      rounds,
      devices,
      quality,
      errors: [...errors.values()].sort((a, b) => (a.source < b.source ? -1 : 1)),
      final,
    };
  }
  function keyOf(s: Snapshot): string {
    return JSON.stringify({ ...s, at: 0 });
  }
  function publish(): void {
    const next = build();
    const key = keyOf(next);
    if (key === currentKey) {
      current = next;
      return;
    }
    current = next;
    currentKey = key;
    const frame = `event: snapshot\ndata: ${JSON.stringify(current)}\n\n`;
    for (const res of clients) res.write(frame);
  }
  function setError(source: string, e: unknown): void {
    const err: DashboardError = {
      source,
      code: errorCode(e),
      message: (isFlotillaError(e) ? e.message : e instanceof Error ? e.message : String(e)).split("\n")[0],
    };
    const prev = errors.get(source);
    if (!prev || prev.code !== err.code || prev.message !== err.message) log(line(err));
    errors.set(source, err);
  }
  function clearError(source: string): void {
    if (errors.has(source)) {
      log(`${source}: reachable again`);
      errors.delete(source);
    }
  }

  async function pollFunction(): Promise<void> {
    const api = opts.functionApi;
    if (!api) return;
    try {
      const list = await api.listJobs();
      const chosen = pickJob(list, opts.jobId);
      if (opts.jobId !== undefined && !chosen) {
        jobs = list;
        job = null;
        rounds = [];
        quality = {};
        throw new FlotillaError("E_JOB_NOT_FOUND", `the Function at ${api.url} has no job '${opts.jobId}'`);
      }
      const detail = chosen ? await api.getJob(chosen.jobId) : undefined;
      jobs = list;
      job = detail ? jobView(detail) : null;
      rounds = detail ? roundPoints(detail.history) : [];
      quality = detail ? qualityViews(detail) : {};
      if (detail) history.observeJob(detail);
      clearError("function");
    } catch (e) {
      setError("function", e);
    }
  }
  async function pollHub(): Promise<void> {
    const twins = opts.twins;
    if (!twins) return;
    try {
      const rows = deviceRows(await twins.moduleTwins());
      devices = rows;
      history.observeDevices(rows, Date.now());
      clearError("hub");
    } catch (e) {
      setError("hub", e);
    }
  }

  // Each source on its own chain of timeouts: a slow source never overlaps itself nor holds up the other.
  let stopped = false;
  const timers = new Set<NodeJS.Timeout>();
  const inFlight = new Set<Promise<void>>();
  const track = (p: Promise<void>) => {
    inFlight.add(p);
    void p.finally(() => inFlight.delete(p));
    return p;
  };
  const loop = (poll: () => Promise<void>, every: number) => {
    const run = async () => {
      await track(poll());
      publish();
      if (stopped) return;
      const t = setTimeout(() => {
        timers.delete(t);
        void run();
      }, every);
      timers.add(t);
    };
    void run();
  };

  const server = http.createServer((req, res) => {
    try {
      handle(req, res);
    } catch (e) {
      // Never reached by design (handle does no I/O that throws); kept so a bug answers 500 instead of crashing.
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
      res.end(`E_INTERNAL: ${e instanceof Error ? e.message : String(e)}`);
    }
  });
  const loopbackOnly = LOOPBACK.test(host);

  function send(res: http.ServerResponse, status: number, type: string, body: string): void {
    res.writeHead(status, { ...SECURITY_HEADERS, "content-type": type });
    res.end(body);
  }
  function json(res: http.ServerResponse, status: number, body: unknown): void {
    send(res, status, "application/json; charset=utf-8", JSON.stringify(body));
  }

  function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (loopbackOnly && !HOST_HEADER.test(req.headers.host ?? "")) {
      send(res, 421, "text/plain; charset=utf-8", "this dashboard answers only to localhost\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      send(
        res,
        405,
        "text/plain; charset=utf-8",
        `${req.method} is not served: the dashboard is read-only\n`,
      );
      return;
    }
    const url = new URL(req.url ?? "/", "http://localhost");
    const p = url.pathname;
    if (p === "/" || p === "/index.html") return send(res, 200, "text/html; charset=utf-8", DASHBOARD_HTML);
    if (p === "/dashboard.js") return send(res, 200, "text/javascript; charset=utf-8", DASHBOARD_JS);
    if (p === "/dashboard.css") return send(res, 200, "text/css; charset=utf-8", DASHBOARD_CSS);
    if (p === "/chart.js") return send(res, 200, "text/javascript; charset=utf-8", chartLibrary());
    if (p === "/api/snapshot") return json(res, 200, current);
    if (p === "/api/events") {
      res.writeHead(200, {
        ...SECURITY_HEADERS,
        "content-type": "text/event-stream; charset=utf-8",
        connection: "keep-alive",
      });
      res.write(`retry: 2000\nevent: snapshot\ndata: ${JSON.stringify(current)}\n\n`);
      clients.add(res);
      req.on("close", () => clients.delete(res));
      return;
    }
    const dev = /^\/api\/devices\/([^/]+)$/.exec(p);
    if (dev) {
      let id: string;
      try {
        id = decodeURIComponent(dev[1]);
      } catch {
        return json(res, 400, { code: "E_HUB_BAD_URI", message: "a malformed device id" });
      }
      const h = history.history(id);
      if (!h) return json(res, 404, { code: "E_HUB_DEVICE_NOT_FOUND", message: `no device '${id}' seen` });
      return json(res, 200, h);
    }
    send(res, 404, "text/plain; charset=utf-8", `no page ${p}\n`);
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) =>
      reject(
        new FlotillaError(
          "E_DASHBOARD_LISTEN",
          `cannot listen on ${host}:${opts.port ?? DEFAULT_DASHBOARD_PORT}: ${e.code ?? e.message}` +
            (e.code === "EADDRINUSE" ? " (the port is in use: --port / --dashboard PORT, 0 = any)" : ""),
          { cause: e },
        ),
      );
    server.once("error", onError);
    server.listen(opts.port ?? DEFAULT_DASHBOARD_PORT, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
  // Comments keep idle event streams open through proxies; a client gone away is dropped on its 'close'.
  const heartbeat = setInterval(() => {
    for (const res of clients) res.write(": keep-alive\n\n");
  }, 15_000);
  const addr = server.address() as AddressInfo;
  const shown = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const url = `http://${loopbackOnly && addr.address !== "::1" ? "127.0.0.1" : shown}:${addr.port}/`;

  for (const e of errors.values()) log(line(e));
  loop(pollFunction, fnEvery);
  loop(pollHub, hubEvery);

  const stopPolling = async () => {
    stopped = true;
    for (const t of timers) clearTimeout(t);
    timers.clear();
    await Promise.allSettled([...inFlight]);
  };

  return {
    url,
    snapshot: () => current,
    async refresh() {
      await Promise.all([track(pollFunction()), track(pollHub())]);
      publish();
    },
    async freeze(reason) {
      if (final !== null) return;
      await stopPolling();
      await Promise.all([pollFunction(), pollHub()]);
      final = reason;
      publish();
    },
    async close() {
      await stopPolling();
      clearInterval(heartbeat);
      for (const res of clients) res.end();
      clients.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
