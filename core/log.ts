import { FlotillaError, isFlotillaError } from "./errors";

/**
 * One logger for the edge modules, the aggregator Function and the CLI: four levels, a component name, and
 * structured fields beside a short message (`log.info("round started", { jobId, round })`). Where the records go
 * is a sink: JSON lines in production (one object per line, what log collectors such as IoT Edge's `iotedge logs`
 * + Azure Monitor or Application Insights parse), one human line per record for the CLI and development.
 *
 *   FLOTILLA_LOG_LEVEL    debug | info | warn | error          default info
 *   FLOTILLA_LOG_FORMAT   json | text                          default json (modules, Function), text (CLI)
 *
 * JSON record: `{"time":"<ISO 8601>","level":"warn","component":"trainer","msg":"…", …fields}`; an error passed as
 * the field `err` becomes `code` (its FlotillaError code, when it has one) and `error` (its message). Fields never
 * overwrite time/level/component/msg (they are renamed `field.<name>`). debug/info go to stdout, warn/error to
 * stderr. Hand-rolled (≈150 lines) rather than a dependency: the sinks need no buffering or transport.
 */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type LogFields = Readonly<Record<string, unknown>>;

export interface LogRecord {
  readonly time: Date;
  readonly level: LogLevel;
  readonly component: string;
  readonly msg: string;
  readonly fields: LogFields;
}

export type LogSink = (record: LogRecord) => void;

export interface Logger {
  readonly component: string;
  readonly level: LogLevel;
  enabled(level: LogLevel): boolean;
  log(level: LogLevel, msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger for a sub-component (`trainer` → `trainer.secagg`) and/or with fields added to every record. */
  child(component: string, fields?: LogFields): Logger;
  child(fields: LogFields): Logger;
}

/** The older line-callback shape `(level, message)` some callers (tests, launchers) still pass. */
export type LineLog = (level: "info" | "warn" | "error", message: string) => void;

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function isLogLevel(v: unknown): v is LogLevel {
  return typeof v === "string" && (LOG_LEVELS as readonly string[]).includes(v);
}

export interface LoggerOptions {
  readonly component?: string;
  readonly level?: LogLevel;
  readonly sink?: LogSink;
  readonly fields?: LogFields;
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  return new SinkLogger(
    opts.component ?? "flotilla",
    opts.level ?? "info",
    opts.sink ?? jsonSink(),
    opts.fields ?? {},
  );
}

class SinkLogger implements Logger {
  constructor(
    readonly component: string,
    readonly level: LogLevel,
    private readonly sink: LogSink,
    private readonly fields: LogFields,
  ) {}
  enabled(level: LogLevel): boolean {
    return RANK[level] >= RANK[this.level];
  }
  log(level: LogLevel, msg: string, fields?: LogFields): void {
    if (!this.enabled(level)) return;
    const all = fields ? { ...this.fields, ...fields } : this.fields;
    try {
      this.sink({ time: new Date(), level, component: this.component, msg, fields: all });
    } catch {
      // A sink that throws (a closed stream) must never take the caller down.
    }
  }
  debug(msg: string, fields?: LogFields): void {
    this.log("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.log("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.log("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.log("error", msg, fields);
  }
  child(a: string | LogFields, fields?: LogFields): Logger {
    const component = typeof a !== "string" ? this.component : this.component ? `${this.component}.${a}` : a;
    const extra = typeof a === "string" ? (fields ?? {}) : a;
    return new SinkLogger(component, this.level, this.sink, { ...this.fields, ...extra });
  }
}

const RESERVED = new Set(["time", "level", "component", "msg"]);

/** The record as one JSON object (what the JSON sink writes, without the newline). */
export function formatJson(r: LogRecord): string {
  const out: Record<string, unknown> = {
    time: r.time.toISOString(),
    level: r.level,
    component: r.component,
    msg: oneLine(r.msg),
  };
  for (const [k, v] of Object.entries(r.fields)) {
    if (v === undefined) continue;
    if (k === "err") {
      Object.assign(out, errorFields(v));
      continue;
    }
    out[RESERVED.has(k) ? `field.${k}` : k] = plain(v);
  }
  try {
    return JSON.stringify(out);
  } catch {
    return JSON.stringify({ time: out.time, level: r.level, component: r.component, msg: out.msg });
  }
}

/** The record as one human line: `12:00:01.234 WARN  trainer: msg key=value key2="two words"`. */
export function formatText(r: LogRecord, opts: { readonly time?: boolean } = {}): string {
  const parts: string[] = [];
  if (opts.time !== false) parts.push(r.time.toISOString().slice(11, 23));
  parts.push(r.level.toUpperCase().padEnd(5));
  parts.push(`${r.component}: ${oneLine(r.msg)}`);
  for (const [k, v] of Object.entries(r.fields)) {
    if (v === undefined) continue;
    if (k === "err") {
      for (const [ek, ev] of Object.entries(errorFields(v))) parts.push(`${ek}=${textValue(ev)}`);
      continue;
    }
    parts.push(`${k}=${textValue(plain(v))}`);
  }
  return parts.join(" ");
}

type Writable = { write(chunk: string): unknown };

/** One JSON object per line: debug/info on `out`, warn/error on `err`. */
export function jsonSink(out: Writable = process.stdout, err: Writable = process.stderr): LogSink {
  return (r) => (RANK[r.level] >= RANK.warn ? err : out).write(`${formatJson(r)}\n`);
}

/** One human line per record: debug/info on `out`, warn/error on `err`. */
export function textSink(
  out: Writable = process.stdout,
  err: Writable = process.stderr,
  opts: { readonly time?: boolean } = {},
): LogSink {
  return (r) => (RANK[r.level] >= RANK.warn ? err : out).write(`${formatText(r, opts)}\n`);
}

/**
 * A logger from FLOTILLA_LOG_LEVEL and FLOTILLA_LOG_FORMAT. An invalid value is an E_CONFIG_INVALID naming the
 * variable (start-up configuration, like the modules' other settings).
 */
export function loggerFromEnv(
  component: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
  defaults: { readonly format?: "json" | "text"; readonly out?: Writable; readonly err?: Writable } = {},
): Logger {
  const levelText = env.FLOTILLA_LOG_LEVEL?.trim().toLowerCase() || "info";
  const format = env.FLOTILLA_LOG_FORMAT?.trim().toLowerCase() || defaults.format || "json";
  if (!isLogLevel(levelText))
    throw new FlotillaError(
      "E_CONFIG_INVALID",
      `invalid setting FLOTILLA_LOG_LEVEL=${levelText} (debug, info, warn or error)`,
    );
  if (format !== "json" && format !== "text")
    throw new FlotillaError(
      "E_CONFIG_INVALID",
      `invalid setting FLOTILLA_LOG_FORMAT=${format} (json or text)`,
    );
  const sink =
    format === "json" ? jsonSink(defaults.out, defaults.err) : textSink(defaults.out, defaults.err);
  return createLogger({ component, level: levelText, sink });
}

/**
 * A Logger over a line callback `(level, message)`: each record becomes `component: msg` (debug is dropped; fields
 * are for structured sinks, the message already names what a reader needs).
 */
export function lineLogger(fn: LineLog, component: string): Logger {
  return createLogger({
    component,
    level: "info",
    sink: (r) => fn(r.level === "debug" ? "info" : r.level, `${r.component}: ${r.msg}`),
  });
}

/** A Logger over a `(line) => void` callback (the aggregator's services.log, the stack's log option). */
export function stringLogger(
  fn: (line: string) => void,
  component: string,
  level: LogLevel = "info",
): Logger {
  return createLogger({ component, level, sink: (r) => fn(formatText(r, { time: false })) });
}

/** The option a module takes: a Logger, a line callback, or nothing (JSON lines on stdout/stderr from the env). */
export function toLogger(log: Logger | LineLog | undefined, component: string): Logger {
  if (log === undefined) return loggerFromEnvOrDefault(component);
  if (typeof log === "function") return lineLogger(log, component);
  return log.component === component ? log : log.child(component);
}

function loggerFromEnvOrDefault(component: string): Logger {
  try {
    return loggerFromEnv(component);
  } catch {
    return createLogger({ component });
  }
}

/** `{ code?, error }` of anything thrown: the FlotillaError code (or an E_ code property) and the message. */
export function errorFields(e: unknown): { code?: string; error: string } {
  if (isFlotillaError(e)) return { code: e.code, error: oneLine(e.message) };
  const code = (e as { code?: unknown } | null)?.code;
  const message = e instanceof Error ? e.message : String(e);
  return typeof code === "string" && code.startsWith("E_")
    ? { code, error: oneLine(message) }
    : { error: oneLine(message) };
}

function oneLine(s: string): string {
  return s.includes("\n") ? s.replace(/\s*\n\s*/g, " ") : s;
}

function plain(v: unknown): unknown {
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Error) return errorFields(v);
  if (v instanceof Date) return v.toISOString();
  return v;
}

function textValue(v: unknown): string {
  if (typeof v === "string") return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(oneLine(v));
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}
