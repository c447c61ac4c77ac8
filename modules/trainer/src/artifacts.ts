import { promises as fsp } from "node:fs";
import * as path from "node:path";
import { errorText } from "../../shared/module-client";
import type { Logger } from "../../../core/log";

/**
 * The trainer's local training artefacts (FLOTILLA_WORK_DIR), one directory per round under `<workDir>/rounds/`:
 *
 *   round.json    the round's log: job, round, model (sha256, layout, spec), training config, the data directory and
 *                 schema it read, the cap in effect, start and end times, outcome (samples, loss, accuracy, training
 *                 time, whether the cap stopped it, the update id) or the error code and message
 *   weights.f32   the trained local model (the global model plus this device's update, raw little-endian float32 in
 *                 the model's layout: core/tensor/layout.ts), when training finished
 *
 * They are what an operator wants to look at on a device (why a round failed, what the local model looks like) and
 * the cloud never needs: nothing reads them back. They are kept for the `artifactRetentionHours` property: pruned by
 * age when a round ends, when the property changes and with the participation check (every minute); 0 deletes a
 * round's artefacts as soon as it ends (none are written then). The directory's name starts with the round's end
 * time (ms since the epoch), which is what its age is judged by; entries not named so are never touched.
 */
export interface RoundLog {
  readonly jobId: string;
  readonly round: number;
  readonly deviceId: string;
  readonly startedAt: string;
  readonly endedAt: string;
  readonly status: "done" | "error";
  readonly [key: string]: unknown;
}

const ROUND_DIR = /^(\d+)-[A-Za-z0-9._-]{1,80}-r\d+$/;

export class RoundArtifacts {
  private readonly roundsDir: string;
  /** Writes and prunes one at a time. */
  private chain: Promise<void> = Promise.resolve();

  constructor(
    workDir: string,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {
    this.roundsDir = path.join(workDir, "rounds");
  }

  /** Writes a round's artefacts (unless retention is 0), then prunes what is older than `retentionHours`. */
  record(log: RoundLog, weights: Float32Array | undefined, retentionHours: number): Promise<void> {
    return this.enqueue(async () => {
      if (retentionHours > 0) {
        const safeJob = log.jobId.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 80);
        const dir = path.join(this.roundsDir, `${this.now()}-${safeJob}-r${log.round}`);
        await fsp.mkdir(dir, { recursive: true });
        await fsp.writeFile(path.join(dir, "round.json"), JSON.stringify(log, null, 2) + "\n");
        if (weights)
          await fsp.writeFile(
            path.join(dir, "weights.f32"),
            new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength),
          );
      }
      await this.pruneNow(retentionHours);
    });
  }

  /** Deletes round directories older than `retentionHours` (0: all). */
  prune(retentionHours: number): Promise<void> {
    return this.enqueue(() => this.pruneNow(retentionHours));
  }

  /** Resolves when the writes and prunes queued so far are done. */
  settled(): Promise<void> {
    return this.chain;
  }

  /** The round directories kept, oldest first (names). */
  async list(): Promise<string[]> {
    await this.chain;
    try {
      return (await fsp.readdir(this.roundsDir)).filter((n) => ROUND_DIR.test(n)).sort();
    } catch {
      return [];
    }
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    this.chain = this.chain.then(fn).catch((e: unknown) =>
      // A full or read-only disk must not fail a round: the artefacts are a convenience.
      this.log.warn(`local training artefacts in ${this.roundsDir}: ${errorText(e)}`, { err: e }),
    );
    return this.chain;
  }

  private async pruneNow(retentionHours: number): Promise<void> {
    let names: string[];
    try {
      names = await fsp.readdir(this.roundsDir);
    } catch {
      return; // nothing written yet
    }
    const cutoff = this.now() - retentionHours * 3_600_000;
    for (const name of names) {
      const m = ROUND_DIR.exec(name);
      if (!m || (retentionHours > 0 && Number(m[1]) > cutoff)) continue;
      await fsp.rm(path.join(this.roundsDir, name), { recursive: true, force: true });
    }
  }
}
