/**
 * Child process for crash.test.ts: queues updates `start`, `start+1`, … into the outbox in `dir` as fast as it can
 * (even ones whole with `enqueue`, odd ones as the trainer sends them, chunk by chunk with `stageChunk`) and prints
 * `ok <index> <updateId>` the moment an update is fully stored, until it is killed. Run with no arguments (e.g.
 * picked up by a test runner) it does nothing.
 */
import { writeSync } from "node:fs";
import { join } from "node:path";
import { Outbox } from "../../../modules/update-queue/src/outbox";
import { crashFrame } from "./crash-frames";
import { chunkMetaOf, trainerChunks } from "./helpers";

const [dir, startArg] = process.argv.slice(2);
if (dir !== undefined) {
  const outbox = new Outbox(join(dir, "outbox.sqlite"));
  // The next frame is built before `ok` is printed, so the kill that follows an `ok` lands inside a store.
  let next = crashFrame(Number(startArg ?? 0));
  for (let i = Number(startArg ?? 0); ; i++) {
    const { frame, meta } = next;
    let id: string;
    if (i % 2 === 0) {
      id = outbox.enqueue(frame, meta);
    } else {
      const { updateId, chunks } = trainerChunks(frame, meta);
      for (const c of chunks) outbox.stageChunk(c.body, chunkMetaOf(c.properties));
      id = updateId;
    }
    next = crashFrame(i + 1);
    writeSync(1, `ok ${i} ${id}\n`);
  }
}
