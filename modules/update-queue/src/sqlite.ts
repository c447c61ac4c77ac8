import { FlotillaError, isFlotillaError } from "../../../core/errors";

/**
 * The slice of better-sqlite3 (12.x) the outbox uses. The package ships no type declarations and
 * @types/better-sqlite3 is not a dependency, so the few calls are typed here instead of declaring the module
 * globally (which could clash with another component's declaration).
 */
export interface SqliteRunResult {
  readonly changes: number;
  readonly lastInsertRowid: number | bigint;
}

export interface SqliteStatement {
  run(...params: unknown[]): SqliteRunResult;
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}

export type SqliteTransaction<A extends unknown[], R> = ((...args: A) => R) & {
  immediate: (...args: A) => R;
};

export interface SqliteDatabase {
  prepare(sql: string): SqliteStatement;
  exec(sql: string): void;
  pragma(source: string, options?: { simple?: boolean }): unknown;
  transaction<A extends unknown[], R>(fn: (...args: A) => R): SqliteTransaction<A, R>;
  close(): void;
  readonly open: boolean;
}

interface SqliteOpenOptions {
  /** Busy timeout in ms: how long to wait for a lock held by another connection. */
  timeout?: number;
  fileMustExist?: boolean;
  readonly?: boolean;
}

type SqliteConstructor = new (file: string, options?: SqliteOpenOptions) => SqliteDatabase;

const BetterSqlite3 = require("better-sqlite3") as SqliteConstructor;

export function openSqlite(file: string, options: SqliteOpenOptions): SqliteDatabase {
  return new BetterSqlite3(file, options);
}

/**
 * Maps a better-sqlite3 `SqliteError` (which carries the SQLite result code name in `code`) onto the queue's
 * E_QUEUE_* codes. FlotillaErrors pass through unchanged; anything else becomes E_QUEUE_IO.
 */
export function queueError(e: unknown, what: string): FlotillaError {
  if (isFlotillaError(e)) return e;
  const code = typeof e === "object" && e !== null ? (e as { code?: unknown }).code : undefined;
  const message = e instanceof Error ? e.message : String(e);
  switch (code) {
    case "SQLITE_BUSY":
    case "SQLITE_LOCKED":
      return new FlotillaError(
        "E_QUEUE_LOCKED",
        `${what}: the queue file is in use by another process (${message})`,
      );
    case "SQLITE_NOTADB":
    case "SQLITE_CORRUPT":
      return new FlotillaError("E_QUEUE_CORRUPT", `${what}: the queue file is damaged (${message})`);
    case "SQLITE_FULL":
      return new FlotillaError("E_QUEUE_DISK_FULL", `${what}: the disk is full (${message})`);
    case "SQLITE_CANTOPEN":
    case "SQLITE_READONLY":
    case "SQLITE_PERM":
      return new FlotillaError("E_QUEUE_OPEN", `${what}: cannot open or write the queue file (${message})`);
    default:
      return new FlotillaError("E_QUEUE_IO", `${what}: ${message}`);
  }
}
