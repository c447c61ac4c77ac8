import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname } from "node:path";

/**
 * The queue file on disk: permissions, the "this queue existed" marker, the header check at open and quarantine
 * (moving a damaged file aside).
 *
 * Permissions. Updates are model deltas trained on the device's private data, so the queue directory is 0700 and
 * the database, its `-wal`/`-shm` and the marker are 0600. A new database file is created here with mode 0600
 * before SQLite opens it; SQLite creates its `-wal` and `-shm` files with the database file's mode (os_unix.c,
 * findCreateFileMode: "the same permissions as the database file"), so those are 0600 as well. Existing files of an
 * earlier version are chmod-ed at open.
 *
 * New or damaged. SQLite treats a zero-length file as a new, empty database, so a queue file truncated to nothing
 * would silently come back empty. A brand-new queue is told apart from a damaged one by a marker file next to it
 * (`<file>.marker`), written once the schema is committed and before any update can be stored: a zero-length or
 * truncated file *with* the marker is damaged (updates were lost); a zero-length file without it is a queue whose
 * creation was interrupted (nothing can have been stored in it). A missing file with the marker is reported too.
 *
 * Header (SQLite file format, https://www.sqlite.org/fileformat2.html §1.3): 16 bytes "SQLite format 3\0", the page
 * size at offset 16 (big-endian; 1 means 65,536), the change counter at 24, the in-header database size in pages at
 * 28, valid when the "version-valid-for" number at 92 equals the change counter. A file shorter than one page, not a
 * whole number of pages, or shorter than its valid in-header size is truncated.
 */

export const FILE_MODE = 0o600;
export const DIR_MODE = 0o700;
const HEADER = Buffer.from("SQLite format 3\0", "latin1");

export interface QuarantineReport {
  /** The damaged queue file (its path before it was moved). */
  readonly file: string;
  /** Where it was moved to (null when there was nothing to move: the file was missing). */
  readonly movedTo: string | null;
  /** ISO time of the quarantine. */
  readonly at: string;
  readonly reason: string;
  /** Unacknowledged updates (and partly received ones) in the damaged file: a best-effort count, or "unknown". */
  readonly lostUpdates: number | "unknown";
}

export function markerPath(file: string): string {
  return `${file}.marker`;
}

/**
 * Creates the directory 0700 (or tightens it) and the database file 0600 if absent; fixes the modes of old files.
 * Returns whether the database file existed before.
 */
export function prepareQueueFiles(file: string): boolean {
  const dir = dirname(file);
  const existed = existsSync(file);
  mkdirSync(dir, { recursive: true, mode: DIR_MODE });
  tighten(dir, DIR_MODE);
  if (!existsSync(file)) {
    // 'wx': created here with 0600 (umask can only take bits away), never truncating a file created meanwhile.
    try {
      closeSync(openSync(file, "wx", FILE_MODE));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }
  for (const f of [file, `${file}-wal`, `${file}-shm`, markerPath(file)])
    if (existsSync(f)) tighten(f, FILE_MODE);
  return existed;
}

function tighten(path: string, mode: number): void {
  try {
    if ((statSync(path).mode & 0o777) !== mode) chmodSync(path, mode);
  } catch {
    // Not the owner (e.g. a volume mounted by someone else): the open below still works or reports its own error.
  }
}

/** Records that the queue at `file` exists (after its schema is committed), durably. */
export function writeMarker(file: string, now: number): void {
  const marker = markerPath(file);
  if (existsSync(marker)) return;
  writeFileSync(marker, `${JSON.stringify({ createdAt: new Date(now).toISOString() })}\n`, {
    mode: FILE_MODE,
  });
  const fd = openSync(marker, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  fsyncDir(dirname(file));
}

/**
 * What the file looks like before SQLite opens it: `null` if it is fine (or new), else why it is damaged. Must be
 * called after prepareQueueFiles (so a missing file was just created, zero-length, and the marker decides).
 */
export function inspectQueueFile(file: string, existedBefore: boolean): string | null {
  const marked = existsSync(markerPath(file));
  if (!existedBefore) return marked ? "the queue file is missing" : null;
  const size = statSync(file).size;
  if (size === 0) return marked ? "the queue file is empty (zero length)" : null;
  const head = Buffer.alloc(100);
  const fd = openSync(file, "r");
  let n: number;
  try {
    n = readSync(fd, head, 0, 100, 0);
  } finally {
    closeSync(fd);
  }
  if (n < 16 || !head.subarray(0, 16).equals(HEADER)) {
    return n < 16 && HEADER.subarray(0, n).equals(head.subarray(0, n))
      ? `the queue file is truncated (${size} bytes)`
      : "the queue file has no SQLite header";
  }
  // With a write-ahead log left by a crash, the main file may legitimately be shorter than its header says (a
  // checkpoint writes page 1 first and was interrupted; the log still holds the pages): SQLite recovers it, and
  // quick_check judges the result. (A zero-length main file is damage even then: SQLite deletes the log of an empty
  // database — pagerOpenWalIfPresent — so it is moved aside with its log above.)
  if (existsSync(`${file}-wal`) && statSync(`${file}-wal`).size > 0) return null;
  if (n < 100) return `the queue file is truncated (${size} bytes)`;
  const raw = head.readUInt16BE(16);
  const pageSize = raw === 1 ? 65536 : raw;
  if (pageSize < 512 || (pageSize & (pageSize - 1)) !== 0)
    return `the queue file header has a bad page size (${raw})`;
  if (size % pageSize !== 0) return `the queue file is truncated (${size} bytes, pages of ${pageSize})`;
  const pages = head.readUInt32BE(28);
  const valid = head.readUInt32BE(92) === head.readUInt32BE(24);
  if (valid && pages > 0 && size < pages * pageSize) {
    return `the queue file is truncated (${size} bytes, its header says ${pages} pages of ${pageSize})`;
  }
  return null;
}

/**
 * Moves the damaged queue file aside with a timestamp suffix — `<file>.quarantined-<time>`, and its `-wal`/`-shm` to
 * `<that>-wal`/`-shm`, so the pair can still be opened for forensics — and removes the marker (a fresh queue follows).
 * Returns the new path of the database file (null if it was missing).
 */
export function quarantineFiles(file: string, now: number): string | null {
  const stamp = new Date(now)
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  let target = `${file}.quarantined-${stamp}`;
  for (let i = 1; existsSync(target); i++) target = `${file}.quarantined-${stamp}-${i}`;
  let moved: string | null = null;
  if (existsSync(file)) {
    renameSync(file, target);
    moved = target;
  }
  for (const suffix of ["-wal", "-shm", "-journal"]) {
    if (existsSync(file + suffix)) renameSync(file + suffix, target + suffix);
  }
  if (existsSync(markerPath(file))) renameSync(markerPath(file), `${target}.marker`);
  fsyncDir(dirname(file));
  return moved;
}

function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Some file systems do not fsync directories; the rename itself is atomic.
  }
}
