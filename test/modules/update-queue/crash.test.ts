import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { Outbox } from "../../../modules/update-queue/src/outbox";
import { crashFrame } from "./crash-frames";
import { reassemble, tempDir } from "./helpers";

const Sqlite = require("better-sqlite3") as new (file: string) => {
  pragma(s: string, o?: { simple?: boolean }): unknown;
  close(): void;
};

/**
 * Simulates a power cut during a write nobody was told had succeeded: right after the WAL's last valid frame,
 * writes a frame header with the WAL's salts but a wrong checksum, followed by half a page (a torn write).
 * Format: sqlite.org/fileformat2.html §4 (WAL header 32 bytes: page size at 8, salts at 16 and 20; frame header
 * 24 bytes: page number, commit size, salts, checksums). Recovery must stop at the bad frame.
 */
function tearWalTail(file: string): void {
  const wal = readFileSync(file);
  const pageSize = wal.readUInt32BE(8);
  const salt1 = wal.readUInt32BE(16);
  const salt2 = wal.readUInt32BE(20);
  let end = 32;
  while (end + 24 + pageSize <= wal.length) {
    if (wal.readUInt32BE(end + 8) !== salt1 || wal.readUInt32BE(end + 12) !== salt2) break;
    end += 24 + pageSize;
  }
  const torn = randomBytes(24 + pageSize / 2);
  torn.writeUInt32BE(1, 0); // page 1 (the schema page)
  torn.writeUInt32BE(1, 4); // claims to commit
  torn.writeUInt32BE(salt1, 8);
  torn.writeUInt32BE(salt2, 12);
  const fd = openSync(file, "r+");
  try {
    writeSync(fd, torn, 0, torn.length, end);
  } finally {
    closeSync(fd);
  }
}

/**
 * Runs the writer until it has acknowledged `acks` more updates, then SIGKILLs it `delayMs` later, mid-stream.
 * Updates acknowledged in between count too.
 */
function writeUntilKilled(
  dir: string,
  start: number,
  acks: number,
  delayMs: number,
): Promise<{ index: number; id: string }[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(__dirname, "crash-writer.js"), dir, String(start)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const acked: { index: number; id: string }[] = [];
    let buf = "";
    let stderr = "";
    const guard = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stdout.on("data", (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const [word, index, id] = buf.slice(0, nl).split(" ");
        buf = buf.slice(nl + 1);
        if (word === "ok") acked.push({ index: Number(index), id });
        // Kill wherever the writer is: hashing, inside a multi-MB transaction, between two staged chunks.
        if (acked.length === acks) setTimeout(() => child.kill("SIGKILL"), delayMs);
      }
    });
    child.on("error", reject);
    child.on("exit", (_code, signal) => {
      clearTimeout(guard);
      if (signal !== "SIGKILL" || acked.length < acks) {
        reject(new Error(`writer ended with ${signal ?? _code} after ${acked.length} acks: ${stderr}`));
      } else {
        resolve(acked);
      }
    });
  });
}

test(
  "SIGKILL in the middle of enqueueing: every acknowledged update survives intact, nothing half-written",
  withContext(async (t) => {
    const dir = tempDir(t);
    const acknowledged: { index: number; id: string }[] = [];
    let next = 0;
    for (let run = 0; run < 3; run++) {
      const acked = await writeUntilKilled(dir, next, 15, [0, 4, 9][run]);
      acknowledged.push(...acked);
      // The writer never closed the file, so its write-ahead log is still there (WAL mode).
      const walFile = join(dir, "outbox.sqlite-wal");
      assert.ok(existsSync(walFile), "no -wal file after the kill");
      if (run === 1) tearWalTail(walFile);
      next = acked[acked.length - 1].index + 1;
      // The next writer restarts after the last acknowledged update: one that was committed but not yet
      // acknowledged at the kill is enqueued again, a no-op (counted as a duplicate, not as enqueued).
      // Reopen after each crash: the file must be usable (the WAL is replayed) before the next writer starts.
      const outbox = new Outbox(join(dir, "outbox.sqlite"));
      const stored = outbox.pending();
      const ids = new Set(stored.map((u) => u.updateId));
      for (const a of acknowledged)
        assert.ok(ids.has(a.id), `acknowledged update ${a.index} lost after crash ${run}`);
      // At most the one update in flight at the kill may be there beyond the acknowledged ones, and only whole.
      assert.ok(
        stored.length <= acknowledged.length + 1,
        `${stored.length} stored, ${acknowledged.length} acked`,
      );
      for (const u of stored) {
        const { frame } = crashFrame(u.round);
        assert.ok(
          reassemble(outbox.chunksOf(u.updateId)).equals(Buffer.from(frame)),
          `update ${u.round} damaged`,
        );
      }
      const s = outbox.stats();
      assert.equal(s.counters.enqueued, stored.length);
      t.diagnostic(
        `crash ${run}: ${stored.length} queued, ${s.stagedUpdates} partly staged (${s.stagedBytes} bytes)`,
      );
      outbox.close();
    }
    const raw = new Sqlite(join(dir, "outbox.sqlite"));
    assert.equal(raw.pragma("integrity_check", { simple: true }), "ok");
    raw.close();
    assert.ok(acknowledged.length >= 45);
  }),
);
