/**
 * IoT Edge hub route declarations: parsing and matching.
 *
 * Spec: "Deploy modules and establish routes in IoT Edge"
 * (https://learn.microsoft.com/azure/iot-edge/module-composition#declare-routes):
 *   FROM <source> [WHERE <condition>] INTO <sink>
 *   source: /*  /twinChangeNotifications  /messages/*  /messages/modules/*  /messages/modules/<m>/*
 *           /messages/modules/<m>/outputs/*  /messages/modules/<m>/outputs/<o>
 *   sink:   $upstream | BrokeredEndpoint("/modules/<m>/inputs/<i>")
 *   condition: the IoT Hub message-routing query grammar: application properties by name, system properties
 *           with a `$` prefix ($connectionDeviceId, $connectionModuleId, $contentType, $contentEncoding,
 *           $messageId, $correlationId, $outputName...), the JSON body with `$body.<path>` (only when the
 *           message is content-type application/json with UTF-8 encoding).
 * In the $edgeHub desired properties (schema 1.2) each route is a string or {route, priority, timeToLiveSecs}.
 */
import { FlotillaError } from "../../core/errors";
import { evaluate, type Expr, Parser, resolveIn, tokenize } from "./query";
import type { Json } from "./twin";

export type RouteSink = { kind: "upstream" } | { kind: "module"; moduleId: string; input: string };

export type RouteSource =
  | { kind: "all" }
  | { kind: "twinChangeNotifications" }
  | { kind: "messages" }
  | { kind: "modules"; moduleId?: string; output?: string };

export interface Route {
  name: string;
  text: string;
  source: RouteSource;
  condition?: Expr;
  sink: RouteSink;
}

/** What routing needs to know about one message. */
export interface RoutableMessage {
  /** Set for module-originated messages. */
  moduleId?: string;
  outputName?: string;
  /** Application properties. */
  properties: Record<string, string>;
  /** System-property values by routing name without the `$` (connectionDeviceId, contentType, ...). */
  system: Record<string, string | undefined>;
  body: Buffer;
}

function badRoute(name: string, msg: string): never {
  throw new FlotillaError("E_HUB_ROUTE", `route ${name}: ${msg}`);
}

function parseSource(name: string, src: string): RouteSource {
  if (src === "/*") return { kind: "all" };
  if (src === "/twinChangeNotifications") return { kind: "twinChangeNotifications" };
  if (src === "/messages/*" || src === "/messages") return { kind: "messages" };
  if (src === "/messages/modules/*" || src === "/messages/modules") return { kind: "modules" };
  const m = /^\/messages\/modules\/([^/*]+)(?:\/(?:\*|outputs(?:\/(\*|[^/*]+))?))?$/.exec(src);
  if (!m) badRoute(name, `unsupported source ${src}`);
  return { kind: "modules", moduleId: m[1], output: m[2] === undefined || m[2] === "*" ? undefined : m[2] };
}

function parseSink(name: string, sink: string): RouteSink {
  const s = sink.trim();
  if (s === "$upstream") return { kind: "upstream" };
  const m = /^BrokeredEndpoint\(\s*(["'])\/modules\/([^/"']+)\/inputs\/([^/"']+)\1\s*\)$/i.exec(s);
  if (!m) badRoute(name, `unsupported sink ${s}`);
  return { kind: "module", moduleId: m[2], input: m[3] };
}

/** Parses one route string. */
export function parseRoute(name: string, text: string): Route {
  const head = /^\s*FROM\s+(\S+)\s+/i.exec(text);
  if (!head) badRoute(name, "must start with FROM <source>");
  const source = parseSource(name, head[1]);
  const restOffset = head[0].length;
  const toks = tokenize(text.slice(restOffset));
  const p = new Parser(toks);
  let condition: Expr | undefined;
  if (p.eatKw("WHERE")) condition = p.parseExpr();
  const into = p.peek();
  if (!p.eatKw("INTO")) badRoute(name, "expected INTO <sink>");
  const sinkText = text.slice(restOffset + into.pos + into.text.length);
  return { name, text, source, condition, sink: parseSink(name, sinkText) };
}

/** Parses a route table: the manifest's `routes` object (values string or {route}), or a plain array. */
export function parseRoutes(routes: Record<string, unknown> | readonly string[]): Route[] {
  const entries: [string, unknown][] = Array.isArray(routes)
    ? routes.map((r, i) => [`route${i + 1}`, r])
    : Object.entries(routes as Record<string, unknown>);
  return entries.map(([name, v]) => {
    const text =
      typeof v === "string"
        ? v
        : typeof v === "object" && v && typeof (v as { route?: unknown }).route === "string"
          ? (v as { route: string }).route
          : undefined;
    if (text === undefined) badRoute(name, "must be a string or {route: string}");
    return parseRoute(name, text);
  });
}

export const DEFAULT_ROUTES: Record<string, string> = { upstream: "FROM /messages/* INTO $upstream" };

function sourceMatches(s: RouteSource, m: RoutableMessage): boolean {
  switch (s.kind) {
    case "all":
    case "messages":
      return true;
    case "twinChangeNotifications":
      return false;
    case "modules":
      if (m.moduleId === undefined) return false;
      if (s.moduleId !== undefined && s.moduleId !== m.moduleId) return false;
      return s.output === undefined || s.output === m.outputName;
  }
}

function resolver(m: RoutableMessage) {
  let body: Json | undefined | null = null;
  return (path: string[]): Json | undefined => {
    const [head, ...rest] = path;
    if (head === "$body") {
      if (body === null) {
        body = undefined;
        const ct = (m.system.contentType ?? "").toLowerCase();
        const ce = (m.system.contentEncoding ?? "").toLowerCase().replace("-", "");
        if (ct.startsWith("application/json") && ce === "utf8") {
          try {
            body = JSON.parse(m.body.toString("utf8")) as Json;
          } catch {
            body = undefined;
          }
        }
      }
      return rest.length ? resolveIn(body, rest) : body;
    }
    if (rest.length) return undefined;
    if (head.startsWith("$")) {
      const name = head.slice(1);
      return Object.hasOwn(m.system, name) ? m.system[name] : undefined;
    }
    return Object.hasOwn(m.properties, head) ? m.properties[head] : undefined;
  };
}

/**
 * Sinks a message goes to. A message matched by several routes into the same sink is delivered once (IoT
 * Hub routing: "a message is delivered to an endpoint only once").
 */
export function matchRoutes(routes: readonly Route[], m: RoutableMessage): RouteSink[] {
  const seen = new Set<string>();
  const out: RouteSink[] = [];
  for (const r of routes) {
    if (!sourceMatches(r.source, m)) continue;
    if (r.condition && evaluate(r.condition, resolver(m)) !== true) continue;
    const key = r.sink.kind === "upstream" ? "$upstream" : `${r.sink.moduleId}/${r.sink.input}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(r.sink);
  }
  return out;
}
