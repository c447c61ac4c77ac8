/**
 * Contribution quality in the Function (core/robust/quality.ts through cloud/aggregator/src/orchestrator.ts and
 * selection.ts): anomalies in the round record, the quality state in the job document, excluded devices never
 * ordered, their twin tag written and removed, the job spec's `quality` policy.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { jobQuality, validateJob } from "../../../cloud/aggregator/src/jobs/job";
import { JobRepository } from "../../../cloud/aggregator/src/jobs/state";
import { withoutExcluded } from "../../../cloud/aggregator/src/selection";
import { isFlotillaError } from "../../../core/errors";
import { DEFAULT_QUALITY_POLICY } from "../../../core/robust/quality";
import { jobBody, startJob, world } from "./support";

import { DEVICES, participants, runRound } from "./quality-support";

test("the Function flags sign-flipped updates, excludes the devices (never ordered, twin tag with the reason) and readmits them after the cool-down", async () => {
  const w = world(DEVICES);
  const id = await startJob(w, {
    rounds: 5,
    strategyOptions: { clientsPerRound: 6, fit: { epochs: 1, batchSize: 8, lr: 0.1 }, seed: 7 },
    quality: "1/2:2",
  });
  await w.agg.roundTimer({}, { log() {}, warn() {}, error() {}, triggerMetadata: {} } as never);
  assert.deepEqual(await runRound(w, id, 1, true), DEVICES);
  const repo = new JobRepository(w.store);
  let job = (await repo.getJob(id))!;
  const r1 = job.rounds.find((r) => r.round === 1)!;
  assert.deepEqual(r1.quality!.anomalies.map((a) => [a.deviceId, a.code]).sort(), [
    ["dev-e", "E_QUALITY_DIRECTION"],
    ["dev-f", "E_QUALITY_DIRECTION"],
  ]);
  assert.deepEqual(r1.quality!.excluded, []);
  assert.deepEqual(
    r1.quality!.newlyExcluded!.map((e) => [e.deviceId, e.since, e.until]),
    [
      ["dev-e", 2, 3],
      ["dev-f", 2, 3],
    ],
  );
  assert.equal(job.quality!.devices["dev-e"]!.excluded!.since, 2);
  // The twin tags carry the reason; the log has one line per anomaly and exclusion.
  assert.deepEqual(
    w.fleet.qualityTags.map((t) => [
      t.deviceId,
      t.jobId,
      t.tag?.status,
      t.tag?.round,
      t.tag?.since,
      t.tag?.until,
    ]),
    [
      ["dev-e", id, "excluded", 1, 2, 3],
      ["dev-f", id, "excluded", 1, 2, 3],
    ],
  );
  assert.match(w.fleet.qualityTags[0]!.tag!.reason, /E_QUALITY_DIRECTION/);
  assert.ok(
    w.logs.some((l) => /quality: device dev-e round 1 E_QUALITY_DIRECTION: cosine -/.test(l)),
    w.logs.join("\n"),
  );
  assert.ok(w.logs.some((l) => /quality: device dev-f excluded from round 2 \(E_QUALITY_EXCLUDED\)/.test(l)));

  // Rounds 2 and 3: never ordered, and the round records say who was excluded and why.
  for (const round of [2, 3]) {
    const ids = await runRound(w, id, round, false);
    assert.deepEqual(ids, ["dev-a", "dev-b", "dev-c", "dev-d"], `round ${round}`);
    job = (await repo.getJob(id))!;
    const rec = job.rounds.find((r) => r.round === round)!;
    assert.deepEqual(
      rec.quality!.excluded.map((e) => e.deviceId),
      ["dev-e", "dev-f"],
    );
    assert.match(rec.quality!.excluded[0]!.reason, /flagged in 1 of its last 1 contributions/);
    assert.deepEqual(rec.quality!.anomalies, []);
  }
  // The exclusion ended with round 3: the tags are removed, round 4 orders them again.
  assert.deepEqual(
    w.fleet.qualityTags.slice(2).map((t) => [t.deviceId, t.tag]),
    [
      ["dev-e", null],
      ["dev-f", null],
    ],
  );
  assert.deepEqual(job.rounds.find((r) => r.round === 3)!.quality!.released, ["dev-e", "dev-f"]);
  assert.deepEqual(await participants(w, id, 4), DEVICES);
});

test("selection.ts withoutExcluded drops exactly the devices the job's quality state excludes from the round", async () => {
  const w = world(DEVICES);
  const id = await startJob(w, { rounds: 3, quality: { excludeAfter: 1, window: 1, cooldown: null } });
  const job = (await new JobRepository(w.store).getJob(id))!;
  const state = {
    version: 1 as const,
    policy: { excludeAfter: 1, window: 1, cooldown: null },
    round: 2,
    devices: {
      "dev-b": {
        contributions: 1,
        flagged: 1,
        recent: [{ round: 2, flagged: true }],
        good: 0,
        bad: 1,
        reputation: 1 / 3,
        rejections: 0,
        lastRound: 2,
        excluded: {
          deviceId: "dev-b",
          code: "E_QUALITY_EXCLUDED" as const,
          reason: "r",
          since: 3,
          until: null,
        },
      },
    },
  };
  const cands = DEVICES.map((deviceId) => ({ deviceId }));
  const withState = { ...job, quality: state };
  assert.deepEqual(
    withoutExcluded(withState, cands, 2).map((c) => c.deviceId),
    DEVICES,
  );
  assert.deepEqual(
    withoutExcluded(withState, cands, 9).map((c) => c.deviceId),
    DEVICES.filter((d) => d !== "dev-b"),
  );
  // Quality off: nobody is excluded; a damaged state is logged and reads as empty.
  const off = { ...withState, definition: { ...job.definition, quality: false as const } };
  assert.equal(withoutExcluded(off, cands, 9).length, 6);
  const logs: string[] = [];
  const damaged = { ...job, quality: { version: 7 } as never };
  assert.equal(withoutExcluded(damaged, cands, 9, (l) => logs.push(l)).length, 6);
  assert.match(logs[0]!, /E_QUALITY_STATE/);
});

test("the job spec's quality: default policy, text or object form, off; bad values are E_JOB_INVALID", () => {
  assert.deepEqual(validateJob(jobBody()).quality, DEFAULT_QUALITY_POLICY);
  assert.deepEqual(jobQuality("2/4:end"), { excludeAfter: 2, window: 4, cooldown: null });
  assert.deepEqual(jobQuality({ excludeAfter: 2 }), { excludeAfter: 2, window: 5, cooldown: 10 });
  assert.equal(jobQuality(false), false);
  assert.equal(jobQuality("off"), false);
  for (const bad of ["9/2", { excludeAfter: 1.5 }, { k: 1 }, 3, [1]]) {
    assert.throws(
      () => validateJob(jobBody({ quality: bad })),
      (e: unknown) => isFlotillaError(e) && e.code === "E_JOB_INVALID" && /^quality: /.test(e.message),
      JSON.stringify(bad),
    );
  }
});
