/**
 * A thin local host for the aggregation Function's handlers (azure-functions-core-tools cannot be installed
 * offline): HTTP on localhost mapped to the same routes as cloud/aggregator/src/index.ts, the round timer, and
 * event delivery from the local IoT Hub's built-in endpoint. Handlers are called exactly as the Functions runtime
 * would: with `HttpRequest` / `InvocationContext` objects from @azure/functions.
 */
import { HttpRequest, InvocationContext, type HttpResponseInit } from "@azure/functions";
import * as crypto from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import type { Aggregator } from "../../cloud/aggregator/src/aggregator";
import type { HttpHandler } from "../../cloud/aggregator/src/http-api";

interface Route {
  method: string;
  pattern: RegExp;
  params: string[];
  handler: keyof Aggregator["http"];
}

/** The routes of cloud/aggregator/src/index.ts, under the Functions default prefix /api. */
const ROUTES: Route[] = [
  { method: "POST", pattern: /^\/api\/jobs$/, params: [], handler: "createJob" },
  { method: "GET", pattern: /^\/api\/jobs$/, params: [], handler: "listJobs" },
  { method: "GET", pattern: /^\/api\/jobs\/([^/]+)$/, params: ["id"], handler: "getJob" },
  { method: "POST", pattern: /^\/api\/jobs\/([^/]+)\/start$/, params: ["id"], handler: "startJob" },
  { method: "POST", pattern: /^\/api\/jobs\/([^/]+)\/stop$/, params: ["id"], handler: "stopJob" },
  {
    method: "GET",
    pattern: /^\/api\/jobs\/([^/]+)\/models\/([^/]+)$/,
    params: ["id", "round"],
    handler: "getModel",
  },
  { method: "GET", pattern: /^\/api\/metrics$/, params: [], handler: "metrics" },
];

export interface FunctionsHost {
  readonly url: string;
  /** Runs the timer trigger once now (the interval keeps running too). */
  tick(): Promise<void>;
  /** Delivers device-to-cloud events to the Event Hub trigger. */
  deliver(events: unknown[]): Promise<void>;
  /**
   * Routes every later HTTP request, timer run and event batch to `next` (a restarted Function instance over the
   * same store and fleet). A timer run or batch already in progress finishes on the old one.
   */
  replaceAggregator(next: Aggregator): void;
  close(): Promise<void>;
}

export interface FunctionsHostOptions {
  port?: number;
  /**
   * A function key: the HTTP routes then answer 401 (empty body, as the Functions host does for `authLevel:
   * "function"`) unless the request carries it in `x-functions-key` or the `code` query parameter. Default: none
   * (the local stack's runner calls without a key).
   */
  functionKey?: string;
  /** Timer period; the deployed app uses every 10 s. */
  timerIntervalMs?: number;
  log?: (line: string) => void;
}

function context(functionName: string, log: (line: string) => void): InvocationContext {
  return new InvocationContext({
    functionName,
    invocationId: `${functionName}-${Date.now().toString(36)}`,
    logHandler: (_level, ...args) => log(`[${functionName}] ${args.map(String).join(" ")}`),
  });
}

export async function startFunctionsHost(
  initial: Aggregator,
  opts: FunctionsHostOptions = {},
): Promise<FunctionsHost> {
  let agg = initial;
  const log = opts.log ?? (() => undefined);
  const server = http.createServer((req, res) => {
    void handle(req, res);
  });
  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? "/", "http://localhost");
      const route = ROUTES.find((r) => r.method === req.method && r.pattern.test(url.pathname));
      if (!route) {
        res.writeHead(404, { "content-type": "application/json" });
        res.end(
          JSON.stringify({ code: "E_HTTP_NOT_FOUND", message: `no route ${req.method} ${url.pathname}` }),
        );
        return;
      }
      if (opts.functionKey !== undefined) {
        const given = req.headers["x-functions-key"] ?? url.searchParams.get("code") ?? "";
        const a = Buffer.from(String(given));
        const b = Buffer.from(opts.functionKey);
        if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) {
          res.writeHead(401);
          res.end();
          return;
        }
      }
      const m = route.pattern.exec(url.pathname)!;
      const params = Object.fromEntries(route.params.map((p, i) => [p, decodeURIComponent(m[i + 1])]));
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const body = Buffer.concat(chunks).toString("utf8");
      const request = new HttpRequest({
        method: req.method ?? "GET",
        url: url.toString(),
        headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)])),
        params,
        query: Object.fromEntries(url.searchParams),
        body: body ? { string: body } : undefined,
      });
      const handler = agg.http[route.handler] as HttpHandler;
      const out: HttpResponseInit = await handler(request, context(route.handler, log));
      const headers: Record<string, string> = { "content-type": "application/json" };
      // The handler's own headers win (GET /api/metrics answers in Prometheus text).
      for (const [k, v] of Object.entries((out.headers ?? {}) as Record<string, string>))
        headers[k.toLowerCase()] = String(v);
      const payload =
        out.jsonBody !== undefined
          ? JSON.stringify(out.jsonBody)
          : out.body === undefined
            ? ""
            : String(out.body);
      res.writeHead(out.status ?? 200, headers);
      res.end(payload);
    } catch (e) {
      res.writeHead(500, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ code: "E_HTTP_INTERNAL", message: e instanceof Error ? e.message : String(e) }),
      );
    }
  }
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;

  let ticking: Promise<void> | null = null;
  const tick = async () => {
    if (ticking) return ticking; // the Functions runtime never overlaps a timer function with itself
    ticking = (async () => {
      try {
        await agg.roundTimer({ isPastDue: false }, context("roundTimer", log));
      } catch (e) {
        log(`[roundTimer] failed: ${e instanceof Error ? e.message : String(e)}`);
      } finally {
        ticking = null;
      }
    })();
    return ticking;
  };
  const timer = setInterval(() => void tick(), opts.timerIntervalMs ?? 10_000);
  let delivering: Promise<unknown> = Promise.resolve();
  return {
    url: `http://127.0.0.1:${port}`,
    tick,
    deliver: (events) => {
      // One batch at a time, in order, as an Event Hub partition delivers them.
      delivering = delivering.then(() => agg.ingestUpdates(events, context("ingestUpdates", log)));
      return delivering.then(() => undefined);
    },
    replaceAggregator: (next) => {
      agg = next;
    },
    close: async () => {
      clearInterval(timer);
      await ticking;
      await delivering.catch(() => undefined);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
