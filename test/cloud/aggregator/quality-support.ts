/** The contribution-quality scenario's helpers (test/cloud/aggregator/quality.test.ts, the dashboard's quality test). */
import assert from "node:assert/strict";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import { modelLayout } from "../../../core/engine/models";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { chunkEvents, makeDelta, SPEC, type World } from "./support";

const ctxStub = { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never;
const layout = modelLayout(SPEC as unknown as ModelSpec);
export const DEVICES = ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f"];
export const BAD = new Set(["dev-e", "dev-f"]);

/** Honest devices send the common direction plus a little noise; a bad one sends it sign-flipped. */
export async function deliver(w: World, jobId: string, round: number, deviceId: string, bad: boolean) {
  const base = makeDelta(layout.totalSize, 1000 + round);
  const noise = makeDelta(layout.totalSize, deviceId.charCodeAt(4) * 31 + round);
  const delta = Float32Array.from(base, (b, i) => (bad ? -b : b + 0.2 * noise[i]!));
  const msg = {
    type: "result" as const,
    jobId,
    round,
    deviceId,
    layoutHash: layout.hash,
    numSamples: 50,
    metrics: { loss: 0.5, accuracy: 0.5, trainMs: 10 },
    delta,
  };
  const r = await w.agg.ingestUpdates(chunkEvents(msg).events, ctxStub);
  assert.equal(r.rejected, 0, w.logs.join("\n"));
}

export async function participants(w: World, jobId: string, round: number): Promise<string[]> {
  const st = await new JobRepository(w.store).getRound(jobId, round);
  assert.ok(st, `round ${round} opened`);
  return st.participants.map((p) => p.deviceId).sort();
}

/** Runs one round: every participant delivers (the bad ones flipped while `attack`), the round closes. */
export async function runRound(w: World, jobId: string, round: number, attack: boolean): Promise<string[]> {
  const ids = await participants(w, jobId, round);
  for (const id of ids) await deliver(w, jobId, round, id, attack && BAD.has(id));
  w.now.t += 1_000;
  await w.agg.roundTimer({}, ctxStub);
  return ids;
}
