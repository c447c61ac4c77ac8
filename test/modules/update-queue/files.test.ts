import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { Outbox, type QuarantineReport } from "../../../modules/update-queue/src/outbox";
import { QUEUE_FILE, REPORTED_KEY, startUpdateQueue } from "../../../modules/update-queue/src/main";
import { FakeModuleClient } from "./fake-client";
import { resultFrame, tempDir, until } from "./helpers";

/**
 * The queue file on disk (modules/update-queue/src/queue-file.ts): modes 0600 in a 0700 directory, and damaged files
 * — truncated, zero-length, bad header, corrupt pages — moved aside and reported instead of silently becoming an
 * empty queue, crash-looping the module or leaking raw SQLITE_CORRUPT.
 */

const Sqlite = require("better-sqlite3") as new (
  file: string,
  o?: { readonly?: boolean },
) => {
  prepare(sql: string): { get(...a: unknown[]): unknown };
  pragma(s: string, o?: { simple?: boolean }): unknown;
  close(): void;
};

function mode(path: string): number {
  return statSync(path).mode & 0o777;
}

/** A closed queue file holding `n` unacknowledged updates of ~16 KB each (several pages, overflow chains). */
function queueWith(dir: string, n: number): { file: string; ids: string[] } {
  const file = join(dir, QUEUE_FILE);
  const box = new Outbox(file);
  const ids = [];
  for (let i = 0; i < n; i++) {
    const { frame, meta } = resultFrame({ floats: 4000, round: i + 1, seed: i + 1 });
    ids.push(box.enqueue(frame, meta));
  }
  box.close();
  return { file, ids };
}

function opened(file: string): { box: Outbox; reports: QuarantineReport[] } {
  const reports: QuarantineReport[] = [];
  const box = new Outbox(file, { onQuarantine: (r) => reports.push(r) });
  return { box, reports };
}

/** The fresh queue works: an update goes in and can be sent. */
function worksFresh(box: Outbox): void {
  assert.equal(box.stats().depth, 0);
  const { frame, meta } = resultFrame({ round: 99 });
  const id = box.enqueue(frame, meta);
  assert.ok(box.beginAttempt(id));
  assert.equal(box.stats().depth, 1);
}

function page(file: string): { pageSize: number; root: (name: string) => number } {
  const db = new Sqlite(file, { readonly: true });
  try {
    const pageSize = Number(db.pragma("page_size", { simple: true }));
    const roots = new Map<string, number>();
    for (const name of ["updates", "updates_by_state", "updates_by_round", "staged_chunks"]) {
      const r = db.prepare("SELECT rootpage FROM sqlite_schema WHERE name = ?").get(name) as {
        rootpage: number;
      };
      roots.set(name, Number(r.rootpage));
    }
    return { pageSize, root: (name) => roots.get(name)! };
  } finally {
    db.close();
  }
}

/** Overwrites bytes at `offset` of a file. */
function scribble(file: string, offset: number, bytes: Buffer): void {
  const fd = openSync(file, "r+");
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

test(
  "queue files are 0600 in a 0700 directory: the database, its -wal, the marker; old files are tightened",
  withContext((t) => {
    const dir = join(tempDir(t), "queue");
    mkdirSync(dir, { mode: 0o755 }); // as a volume or an earlier version may leave it
    chmodSync(dir, 0o755);
    const file = join(dir, QUEUE_FILE);
    const box = new Outbox(file);
    const { frame, meta } = resultFrame();
    box.enqueue(frame, meta); // a commit: the -wal file exists while the queue is open
    assert.equal(mode(dir), 0o700);
    assert.equal(mode(file), 0o600);
    assert.ok(existsSync(`${file}-wal`), "WAL file while open");
    assert.equal(mode(`${file}-wal`), 0o600);
    for (const f of readdirSync(dir)) assert.equal(mode(join(dir, f)), 0o600, f);
    box.close();

    // A queue left by an earlier version with world-readable files in a world-readable directory.
    chmodSync(dir, 0o755);
    chmodSync(file, 0o644);
    const again = new Outbox(file);
    t.after(() => again.close());
    assert.equal(mode(dir), 0o700);
    assert.equal(mode(file), 0o600);
    assert.equal(again.stats().depth, 1);
  }),
);

test(
  "the module creates its queue directory 0700 and the file 0600",
  withContext(async (t) => {
    const dir = join(tempDir(t), "nested", "queue");
    const client = new FakeModuleClient();
    const queue = await startUpdateQueue({ client, dir, log: () => {} });
    t.after(() => queue.stop());
    client.deliver("updates", resultFrame().frame);
    await until(() => client.outputs.length === 1);
    assert.equal(mode(dir), 0o700);
    assert.equal(mode(join(dir, QUEUE_FILE)), 0o600);
    for (const f of readdirSync(dir)) assert.equal(mode(join(dir, f)), 0o600, f);
  }),
);

test(
  "a brand-new queue (no file) and an interrupted creation (zero-length, no marker) are not damage",
  withContext((t) => {
    const dir = tempDir(t);
    const file = join(dir, QUEUE_FILE);
    const first = opened(file);
    assert.deepEqual(first.reports, []);
    worksFresh(first.box);
    first.box.close();

    const dir2 = tempDir(t);
    const file2 = join(dir2, QUEUE_FILE);
    writeFileSync(file2, ""); // SQLite's own way of starting a database; no marker: nothing was ever stored
    const second = opened(file2);
    t.after(() => second.box.close());
    assert.deepEqual(second.reports, []);
    worksFresh(second.box);
  }),
);

test(
  "a zero-length queue file that held updates is quarantined and reported, not taken for a new queue",
  withContext((t) => {
    const dir = tempDir(t);
    const { file } = queueWith(dir, 3);
    truncateSync(file, 0);
    const { box, reports } = opened(file);
    t.after(() => box.close());
    assert.equal(reports.length, 1);
    assert.match(reports[0].reason, /zero length/);
    assert.equal(reports[0].lostUpdates, "unknown");
    assert.equal(reports[0].file, file);
    assert.match(reports[0].movedTo!, /outbox\.sqlite\.quarantined-\d{8}T\d{6}Z$/);
    assert.equal(statSync(reports[0].movedTo!).size, 0); // kept aside, as found
    assert.deepEqual(box.quarantined, reports[0]);
    worksFresh(box);
  }),
);

test(
  "a truncated queue file (mid-page, and at a page boundary) is quarantined",
  withContext((t) => {
    for (const cut of ["mid-page", "page boundary"] as const) {
      const dir = tempDir(t);
      const { file } = queueWith(dir, 3);
      const { pageSize } = page(file);
      const size = statSync(file).size;
      truncateSync(file, cut === "mid-page" ? size - 1000 : pageSize * 2);
      const { box, reports } = opened(file);
      assert.equal(reports.length, 1, cut);
      assert.match(reports[0].reason, /truncated/, cut);
      assert.ok(existsSync(reports[0].movedTo!));
      worksFresh(box);
      box.close();
    }
  }),
);

test(
  "a bad header is quarantined at open; the module starts instead of crash-looping, and reports it",
  withContext(async (t) => {
    const dir = tempDir(t);
    const { file } = queueWith(dir, 2);
    scribble(file, 0, Buffer.from("definitely not SQLite"));
    const client = new FakeModuleClient();
    const logged: string[] = [];
    const queue = await startUpdateQueue({
      client,
      dir,
      reportIntervalMs: 10,
      log: (level, message) => logged.push(`${level} ${message}`),
    });
    t.after(() => queue.stop());
    const q = queue.status().quarantined;
    assert.ok(q);
    assert.match(q.reason, /no SQLite header/);
    assert.equal(q.lostUpdates, "unknown");
    assert.ok(readFileSync(q.movedTo!).subarray(0, 21).equals(Buffer.from("definitely not SQLite")));
    assert.ok(
      logged.some((l) => /^error .*E_QUEUE_CORRUPT: .*no SQLite header.*updates lost: unknown/.test(l)),
      logged.join("\n"),
    );
    // The reported property carries it, and the fresh queue takes updates.
    queue.reportNow();
    await until(() =>
      client.twin.reportedPatches.some(
        (p) => (p[REPORTED_KEY] as { quarantined?: QuarantineReport })?.quarantined?.reason === q.reason,
      ),
    );
    client.deliver("updates", resultFrame().frame);
    await until(() => client.outputs.length === 1);
    // And the metrics count it (docs/metrics.md), next to the fresh queue's depth.
    const text = await queue.metrics.text();
    assert.match(text, /^flotilla_update_queue_quarantines_total\{[^}]*\} 1$/m);
    assert.match(text, /^flotilla_update_queue_enqueued_total\{[^}]*\} 1$/m);
    assert.match(text, /^flotilla_update_queue_queue_depth\{[^}]*\} 1$/m);
  }),
);

test(
  "corrupt bytes in a page of a real queue file: quarantined at open with a best-effort count",
  withContext((t) => {
    const dir = tempDir(t);
    const { file } = queueWith(dir, 3);
    const { pageSize, root } = page(file);
    // The round index's b-tree page: its page-type byte becomes garbage (quick_check finds it).
    scribble(file, (root("updates_by_round") - 1) * pageSize, Buffer.from([0x55, 0x55, 0x55, 0x55]));
    const { box, reports } = opened(file);
    t.after(() => box.close());
    assert.equal(reports.length, 1);
    assert.match(reports[0].reason, /quick_check|malformed|corrupt/i);
    // The updates table itself is intact: the count read it (3 unacknowledged updates lost).
    assert.equal(reports[0].lostUpdates, 3);
    worksFresh(box);
  }),
);

test(
  "page corruption found while running: E_QUEUE_CORRUPT (no raw SQLITE_CORRUPT), quarantined, next call works",
  withContext((t) => {
    const dir = tempDir(t);
    const { file } = queueWith(dir, 3);
    const { pageSize, root } = page(file);
    const { box, reports } = opened(file);
    t.after(() => box.close());
    assert.equal(box.stats().depth, 3);
    // Damage under the open queue, then drop its page cache so the next read goes to the file.
    scribble(file, (root("updates") - 1) * pageSize, Buffer.alloc(pageSize, 0x55));
    (box as unknown as { db: { pragma(s: string): unknown } }).db.pragma("shrink_memory");
    let code: string | undefined;
    let msg = "";
    try {
      box.due(Date.now(), 10);
    } catch (e) {
      code = (e as { code?: string }).code;
      msg = (e as Error).message;
    }
    assert.equal(code, "E_QUEUE_CORRUPT");
    assert.doesNotMatch(msg, /^SQLITE/);
    assert.equal(reports.length, 1);
    assert.ok(existsSync(reports[0].movedTo!));
    worksFresh(box);
  }),
);

test(
  "a crash that leaves the updates in the write-ahead log is recovered, not quarantined",
  withContext(async (t) => {
    const dir = tempDir(t);
    const file = join(dir, QUEUE_FILE);
    // crash-writer.ts stores updates until it is SIGKILLed; killed after its first, nothing is checkpointed yet, and
    // the main file holds only the header page (the WAL switch) while the marker says the queue exists.
    const stored = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, [join(__dirname, "crash-writer.js"), dir, "0"], {
        stdio: ["ignore", "pipe", "ignore"],
      });
      let out = "";
      let id = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /^ok 0 (\S+)\n/.exec(out);
        if (m && !id) {
          id = m[1];
          child.kill("SIGKILL");
        }
      });
      child.on("error", reject);
      child.on("exit", (_code, signal) =>
        signal === "SIGKILL" && id ? resolve(id) : reject(new Error(`writer ended with ${signal ?? _code}`)),
      );
    });
    assert.ok(statSync(`${file}-wal`).size > 0, "the update is in the write-ahead log");
    // As a checkpoint interrupted after writing page 1 leaves it: the header counts pages the file does not have yet
    // (they are still in the log). Not truncation: SQLite reads them from the log.
    const header = readFileSync(file).subarray(0, 100);
    const counted = Buffer.alloc(4);
    counted.writeUInt32BE(Math.ceil(statSync(file).size / header.readUInt16BE(16)) + 4);
    scribble(file, 28, counted);
    scribble(file, 92, header.subarray(24, 28)); // version-valid-for = change counter: the count is "valid"
    const { box, reports } = opened(file);
    t.after(() => box.close());
    assert.deepEqual(reports, []);
    assert.equal(box.get(stored)?.state, "pending");
  }),
);
