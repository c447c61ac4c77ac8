/**
 * A small, real parser and evaluator for the IoT Hub query language subset the hub serves on
 * POST /devices/query, and whose condition grammar the edgeHub-style routes reuse.
 *
 * Spec: "IoT Hub query language for device and module twins, jobs, and message routing"
 * (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-query-language):
 *   SELECT <select_list> FROM <from_specification> [WHERE <filter_condition>]
 *   from: devices | devices.modules; select: * | paths [AS alias] | COUNT() [AS alias]
 *   conditions: = != <> < <= > >=, AND OR NOT, IN / NIN [..], parentheses, dotted paths
 *   (tags.x, properties.reported.y, deviceId, moduleId, status, ...), string/number/boolean/null literals,
 *   functions IS_DEFINED IS_NULL IS_BOOL IS_NUMBER IS_STRING IS_OBJECT IS_PRIMITIVE, STARTSWITH ENDSWITH
 *   CONTAINS LOWER UPPER LENGTH; a path segment after a dot may be bracketed, `configurations.[[my-config]].status`
 *   (automatic device management's twin field, ./configurations.ts).
 * Semantics follow the document-query model the language is built on: a comparison between mismatched
 * types, or with an undefined path, is *undefined*, and only rows whose condition is exactly true match
 * (three-valued AND/OR/NOT).
 * Paging (Query - Get Twins, REST 2021-04-12): request header x-ms-max-item-count, response header
 * x-ms-continuation while more results remain, echoed back by the client to get the next page.
 */
import * as crypto from "node:crypto";
import { FlotillaError } from "../../core/errors";
import { isForbiddenKey } from "./safe-json";
import type { Json, JsonObject } from "./twin";

type TokKind = "ident" | "num" | "str" | "op" | "punct" | "eof";
interface Token {
  kind: TokKind;
  text: string;
  value?: Json;
  pos: number;
}

function badQuery(message: string): never {
  throw new FlotillaError("E_HUB_QUERY", message);
}

/**
 * Bounds on untrusted query text (the local hub's own, not IoT Hub's published quotas): the parser is
 * recursive descent and the evaluator walks the tree recursively, so both the number of tokens (a left-deep
 * `a AND b AND ...` chain is one tree level per operator) and the nesting of parentheses / NOT / function
 * calls are capped well below what the stack can hold. Over a bound the query fails with E_HUB_QUERY (400).
 */
export const QUERY_LIMITS = { maxChars: 8192, maxTokens: 2048, maxDepth: 32 } as const;

export function tokenize(src: string): Token[] {
  if (src.length > QUERY_LIMITS.maxChars)
    badQuery(`query is ${src.length} characters long; the limit is ${QUERY_LIMITS.maxChars}`);
  const out: Token[] = [];
  let i = 0;
  while (i < src.length) {
    if (out.length >= QUERY_LIMITS.maxTokens)
      badQuery(`query has more than ${QUERY_LIMITS.maxTokens} tokens`);
    const c = src[i];
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    const start = i;
    if (c === "'" || c === '"') {
      let s = "";
      i++;
      for (;;) {
        if (i >= src.length) badQuery(`unterminated string at ${start}`);
        if (src[i] === c) {
          if (src[i + 1] === c) {
            s += c;
            i += 2;
            continue;
          }
          i++;
          break;
        }
        s += src[i++];
      }
      out.push({ kind: "str", text: src.slice(start, i), value: s, pos: start });
      continue;
    }
    const num = /^-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?/.exec(src.slice(i));
    if (num && (c !== "-" || !prevIsOperand(out))) {
      i += num[0].length;
      out.push({ kind: "num", text: num[0], value: Number(num[0]), pos: start });
      continue;
    }
    // `configurations.[[my-config]].status`: a bracketed name after a dot (IDs with characters an identifier
    // cannot have, as the automatic device management docs write them).
    const prev = out[out.length - 1];
    if (c === "[" && src[i + 1] === "[" && prev?.kind === "punct" && prev.text === ".") {
      const end = src.indexOf("]]", i + 2);
      if (end < 0) badQuery(`unterminated [[ at ${start}`);
      const name = src.slice(i + 2, end);
      if (name === "") badQuery(`empty [[]] at ${start}`);
      i = end + 2;
      out.push({ kind: "ident", text: name, pos: start });
      continue;
    }
    const ident = /^[A-Za-z_$][A-Za-z0-9_$]*/.exec(src.slice(i));
    if (ident) {
      i += ident[0].length;
      out.push({ kind: "ident", text: ident[0], pos: start });
      continue;
    }
    const op = /^(<=|>=|<>|!=|=|<|>)/.exec(src.slice(i));
    if (op) {
      i += op[0].length;
      out.push({ kind: "op", text: op[0], pos: start });
      continue;
    }
    if ("()[],.*".includes(c)) {
      i++;
      out.push({ kind: "punct", text: c, pos: start });
      continue;
    }
    badQuery(`unexpected character '${c}' at ${start}`);
  }
  out.push({ kind: "eof", text: "", pos: src.length });
  return out;
}

function prevIsOperand(toks: Token[]): boolean {
  const p = toks[toks.length - 1];
  return (
    !!p && (p.kind === "num" || p.kind === "str" || p.kind === "ident" || p.text === ")" || p.text === "]")
  );
}

export type Expr =
  | { t: "lit"; v: Json }
  | { t: "path"; p: string[] }
  | { t: "cmp"; op: string; l: Expr; r: Expr }
  | { t: "and" | "or"; l: Expr; r: Expr }
  | { t: "not"; e: Expr }
  | { t: "in"; e: Expr; list: Expr[]; neg: boolean }
  | { t: "call"; fn: string; args: Expr[] };

const KEYWORDS = new Set([
  "SELECT",
  "FROM",
  "WHERE",
  "AND",
  "OR",
  "NOT",
  "IN",
  "NIN",
  "AS",
  "TRUE",
  "FALSE",
  "NULL",
  "INTO",
]);
const FUNCS: Record<string, number> = {
  IS_DEFINED: 1,
  IS_NULL: 1,
  IS_BOOL: 1,
  IS_NUMBER: 1,
  IS_STRING: 1,
  IS_OBJECT: 1,
  IS_PRIMITIVE: 1,
  STARTSWITH: 2,
  ENDSWITH: 2,
  CONTAINS: 2,
  LOWER: 1,
  UPPER: 1,
  LENGTH: 1,
};

/** Recursive-descent parser over the token list; `pos` is the cursor. */
export class Parser {
  pos = 0;
  /** Current nesting (parentheses, NOT, function calls, IN lists): bounded by QUERY_LIMITS.maxDepth. */
  private depth = 0;
  constructor(readonly toks: Token[]) {}

  private nest<T>(f: () => T): T {
    if (++this.depth > QUERY_LIMITS.maxDepth)
      badQuery(`query is nested deeper than ${QUERY_LIMITS.maxDepth} levels at ${this.peek().pos}`);
    try {
      return f();
    } finally {
      this.depth--;
    }
  }

  peek(): Token {
    return this.toks[this.pos];
  }
  isKw(kw: string): boolean {
    const t = this.peek();
    return t.kind === "ident" && t.text.toUpperCase() === kw;
  }
  eatKw(kw: string): boolean {
    if (!this.isKw(kw)) return false;
    this.pos++;
    return true;
  }
  expectKw(kw: string): void {
    if (!this.eatKw(kw)) badQuery(`expected ${kw} at ${this.peek().pos}`);
  }
  eatPunct(p: string): boolean {
    const t = this.peek();
    if (t.kind === "punct" && t.text === p) {
      this.pos++;
      return true;
    }
    return false;
  }
  expectPunct(p: string): void {
    if (!this.eatPunct(p)) badQuery(`expected '${p}' at ${this.peek().pos}`);
  }

  parseExpr(): Expr {
    let l = this.parseAnd();
    while (this.eatKw("OR")) l = { t: "or", l, r: this.parseAnd() };
    return l;
  }
  private parseAnd(): Expr {
    let l = this.parseNot();
    while (this.eatKw("AND")) l = { t: "and", l, r: this.parseNot() };
    return l;
  }
  private parseNot(): Expr {
    if (this.eatKw("NOT")) return this.nest(() => ({ t: "not", e: this.parseNot() }));
    return this.parseCmp();
  }
  private parseCmp(): Expr {
    const l = this.parseOperand();
    const t = this.peek();
    if (t.kind === "op") {
      this.pos++;
      return { t: "cmp", op: t.text === "<>" ? "!=" : t.text, l, r: this.parseOperand() };
    }
    const neg =
      this.isKw("NIN") || (this.isKw("NOT") && this.toks[this.pos + 1]?.text.toUpperCase() === "IN");
    if (this.isKw("IN") || neg) {
      if (this.eatKw("NOT")) this.expectKw("IN");
      else this.pos++;
      this.expectPunct("[");
      const list: Expr[] = [];
      if (!this.eatPunct("]")) {
        do list.push(this.parseOperand());
        while (this.eatPunct(","));
        this.expectPunct("]");
      }
      return { t: "in", e: l, list, neg };
    }
    return l;
  }
  parseOperand(): Expr {
    const t = this.peek();
    if (t.kind === "num" || t.kind === "str") {
      this.pos++;
      return { t: "lit", v: t.value as Json };
    }
    if (t.kind === "punct" && t.text === "(") {
      this.pos++;
      return this.nest(() => {
        const e = this.parseExpr();
        this.expectPunct(")");
        return e;
      });
    }
    if (t.kind === "ident") {
      const up = t.text.toUpperCase();
      if (up === "TRUE" || up === "FALSE" || up === "NULL") {
        this.pos++;
        return { t: "lit", v: up === "NULL" ? null : up === "TRUE" };
      }
      if (Object.hasOwn(FUNCS, up) && this.toks[this.pos + 1]?.text === "(") {
        this.pos += 2;
        const args: Expr[] = [];
        if (!this.eatPunct(")")) {
          this.nest(() => {
            do args.push(this.parseExpr());
            while (this.eatPunct(","));
          });
          this.expectPunct(")");
        }
        if (args.length !== FUNCS[up]) badQuery(`${up} takes ${FUNCS[up]} argument(s)`);
        return { t: "call", fn: up, args };
      }
      if (KEYWORDS.has(up)) badQuery(`unexpected ${t.text} at ${t.pos}`);
      return { t: "path", p: this.parsePath() };
    }
    badQuery(`unexpected '${t.text || "end of query"}' at ${t.pos}`);
  }
  parsePath(): string[] {
    const p: string[] = [];
    do {
      const t = this.peek();
      if (t.kind !== "ident") badQuery(`expected a property name at ${t.pos}`);
      if (isForbiddenKey(t.text)) badQuery(`property name ${t.text} is not allowed at ${t.pos}`);
      p.push(t.text);
      this.pos++;
    } while (this.eatPunct("."));
    return p;
  }
}

/** Parses a standalone condition (a route's WHERE clause). */
export function parseCondition(src: string): Expr {
  const p = new Parser(tokenize(src));
  const e = p.parseExpr();
  if (p.peek().kind !== "eof") badQuery(`unexpected '${p.peek().text}' at ${p.peek().pos}`);
  return e;
}

export type Resolver = (path: string[]) => Json | undefined;

export function resolveIn(doc: Json | undefined, path: readonly string[]): Json | undefined {
  let cur: Json | undefined = doc;
  for (const seg of path) {
    if (
      cur === null ||
      typeof cur !== "object" ||
      Array.isArray(cur) ||
      !Object.prototype.hasOwnProperty.call(cur, seg)
    ) {
      return undefined;
    }
    cur = (cur as JsonObject)[seg];
  }
  return cur;
}

function typeOf(v: Json): string {
  return v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
}

function compare(op: string, a: Json | undefined, b: Json | undefined): boolean | undefined {
  if (a === undefined || b === undefined) return undefined;
  const ta = typeOf(a);
  if (ta !== typeOf(b) || ta === "object" || ta === "array") return undefined;
  if (op === "=") return a === b;
  if (op === "!=") return a !== b;
  if (ta !== "number" && ta !== "string") return undefined;
  const x = a as number | string;
  const y = b as number | string;
  return op === "<" ? x < y : op === "<=" ? x <= y : op === ">" ? x > y : op === ">=" ? x >= y : undefined;
}

export function evaluate(e: Expr, resolve: Resolver): Json | undefined {
  switch (e.t) {
    case "lit":
      return e.v;
    case "path":
      return resolve(e.p);
    case "cmp":
      return compare(e.op, evaluate(e.l, resolve), evaluate(e.r, resolve));
    case "and": {
      const l = evaluate(e.l, resolve);
      const r = evaluate(e.r, resolve);
      if (l === false || r === false) return false;
      return l === true && r === true ? true : undefined;
    }
    case "or": {
      const l = evaluate(e.l, resolve);
      const r = evaluate(e.r, resolve);
      if (l === true || r === true) return true;
      return l === false && r === false ? false : undefined;
    }
    case "not": {
      const v = evaluate(e.e, resolve);
      return typeof v === "boolean" ? !v : undefined;
    }
    case "in": {
      const v = evaluate(e.e, resolve);
      if (v === undefined) return undefined;
      const hit = e.list.some((x) => compare("=", v, evaluate(x, resolve)) === true);
      return e.neg ? !hit : hit;
    }
    case "call":
      return callFn(
        e.fn,
        e.args.map((a) => evaluate(a, resolve)),
      );
  }
}

function callFn(fn: string, a: (Json | undefined)[]): Json | undefined {
  const [x, y] = a;
  switch (fn) {
    case "IS_DEFINED":
      return x !== undefined;
    case "IS_NULL":
      return x === null;
    case "IS_BOOL":
      return typeof x === "boolean";
    case "IS_NUMBER":
      return typeof x === "number";
    case "IS_STRING":
      return typeof x === "string";
    case "IS_OBJECT":
      return typeof x === "object" && x !== null && !Array.isArray(x);
    case "IS_PRIMITIVE":
      return x === null || ["string", "number", "boolean"].includes(typeof x);
    case "STARTSWITH":
      return typeof x === "string" && typeof y === "string" ? x.startsWith(y) : undefined;
    case "ENDSWITH":
      return typeof x === "string" && typeof y === "string" ? x.endsWith(y) : undefined;
    case "CONTAINS":
      return typeof x === "string" && typeof y === "string" ? x.includes(y) : undefined;
    case "LOWER":
      return typeof x === "string" ? x.toLowerCase() : undefined;
    case "UPPER":
      return typeof x === "string" ? x.toUpperCase() : undefined;
    case "LENGTH":
      return typeof x === "string" ? x.length : undefined;
  }
  return undefined;
}

export type QuerySource = "devices" | "devices.modules";

export interface SelectItem {
  kind: "path" | "count";
  path?: string[];
  alias: string;
}

export interface ParsedQuery {
  source: QuerySource;
  /** undefined = SELECT * */
  select?: SelectItem[];
  where?: Expr;
}

export function parseQuery(sql: string): ParsedQuery {
  const p = new Parser(tokenize(sql));
  p.expectKw("SELECT");
  let select: SelectItem[] | undefined;
  if (!p.eatPunct("*")) {
    select = [];
    let n = 1;
    do {
      let item: SelectItem;
      if (p.isKw("COUNT") && p.toks[p.pos + 1]?.text === "(") {
        p.pos += 2;
        p.expectPunct(")");
        item = { kind: "count", alias: `$${n}` };
      } else {
        const path = p.parsePath();
        item = { kind: "path", path, alias: path[path.length - 1] };
      }
      if (p.eatKw("AS")) {
        const t = p.peek();
        if (t.kind !== "ident") badQuery(`expected an alias at ${t.pos}`);
        if (isForbiddenKey(t.text)) badQuery(`alias ${t.text} is not allowed at ${t.pos}`);
        item.alias = t.text;
        p.pos++;
      }
      select.push(item);
      n++;
    } while (p.eatPunct(","));
    if (select.some((s) => s.kind === "count") && select.length > 1)
      badQuery("COUNT() cannot be combined with other fields");
  }
  p.expectKw("FROM");
  const from = p.parsePath().join(".");
  if (from !== "devices" && from !== "devices.modules") badQuery(`unsupported collection '${from}'`);
  let where: Expr | undefined;
  if (p.eatKw("WHERE")) where = p.parseExpr();
  if (p.peek().kind !== "eof") badQuery(`unexpected '${p.peek().text}' at ${p.peek().pos}`);
  return { source: from as QuerySource, select, where };
}

export interface QueryPage {
  items: JsonObject[];
  continuation?: string;
  /** x-ms-item-type: "Twin" for SELECT * over twins, "Raw" for projections. */
  itemType: "Twin" | "Raw";
}

export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;

/** Runs a query over the documents of its source; continuation tokens are bound to the query text. */
export function runQuery(
  sql: string,
  docsOf: (source: QuerySource) => JsonObject[],
  opts: { pageSize?: number; continuation?: string } = {},
): QueryPage {
  const q = parseQuery(sql);
  const rows = docsOf(q.source).filter((d) => !q.where || evaluate(q.where, (p) => resolveIn(d, p)) === true);
  if (q.select && q.select[0].kind === "count")
    return { items: [{ [q.select[0].alias]: rows.length }], itemType: "Raw" };
  const projected: JsonObject[] = q.select
    ? rows.map((d) => {
        const o: JsonObject = {};
        for (const s of q.select as SelectItem[]) {
          const v = resolveIn(d, s.path as string[]);
          if (v !== undefined) o[s.alias] = v;
        }
        return o;
      })
    : rows;
  const size = Math.min(Math.max(1, Math.floor(opts.pageSize ?? DEFAULT_PAGE_SIZE)), MAX_PAGE_SIZE);
  const hash = crypto.createHash("sha256").update(sql).digest("base64url").slice(0, 12);
  let offset = 0;
  if (opts.continuation) {
    try {
      const c = JSON.parse(Buffer.from(opts.continuation, "base64url").toString("utf8")) as {
        o?: unknown;
        h?: unknown;
      };
      if (c.h !== hash || typeof c.o !== "number" || !Number.isInteger(c.o) || c.o < 0)
        throw new Error("mismatch");
      offset = c.o;
    } catch {
      badQuery("invalid continuation token for this query");
    }
  }
  const items = projected.slice(offset, offset + size);
  const next = offset + size;
  return {
    items,
    continuation:
      next < projected.length
        ? Buffer.from(JSON.stringify({ o: next, h: hash })).toString("base64url")
        : undefined,
    itemType: q.select ? "Raw" : "Twin",
  };
}
