/**
 * The excluded device's twin tag (tags.flotilla.quality) through IotHubFleet, over the local hub with the real
 * azure-iothub Registry: written with the reason, visible to twin queries (a cohort can leave excluded devices
 * out), removed when the exclusion ends — only the job's own tag.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { createRegistry, createServiceClient, startLocalHub } from "../../../local/hub";
import { IotHubFleet, type QualityTag } from "../../../cloud/aggregator/src/fleet/fleet";

test("setQualityTag writes tags.flotilla.quality, keeps the device's other tags, and removes only the job's own tag", async () => {
  const hub = await startLocalHub({ log: () => {} });
  try {
    const registry = createRegistry(hub);
    for (const id of ["edge-1", "edge-2"]) hub.createModule(id, "trainer");
    await registry.updateTwin("edge-1", { tags: { flotilla: { fleet: "line-3" } } }, "*");
    const fleet = new IotHubFleet(registry, createServiceClient(hub));
    const tag: QualityTag = {
      status: "excluded",
      reason: "flagged in 3 of its last 5 contributions (E_QUALITY_NORM ×3)",
      job: "job-q",
      round: 4,
      since: 5,
      until: 14,
    };
    await fleet.setQualityTag("edge-1", "job-q", tag);
    const tags = async (id: string) =>
      ((await registry.getTwin(id)).responseBody as unknown as { tags: Record<string, unknown> }).tags;
    assert.deepEqual(await tags("edge-1"), { flotilla: { fleet: "line-3", quality: tag } });
    // The tag is what the fleet lists and what a cohort condition can test.
    const listed = await fleet.listTrainers();
    assert.deepEqual((listed[0]!.tags as { flotilla: { quality: QualityTag } }).flotilla.quality, tag);
    const ok = await fleet.listTrainers("NOT IS_DEFINED(tags.flotilla.quality)");
    assert.deepEqual(
      ok.map((t) => t.deviceId),
      ["edge-2"],
    );
    // Another job's clear leaves it; the job's own clear removes it and keeps the other tags.
    await fleet.setQualityTag("edge-1", "job-other", null);
    assert.deepEqual(await tags("edge-1"), { flotilla: { fleet: "line-3", quality: tag } });
    await fleet.setQualityTag("edge-1", "job-q", null);
    assert.deepEqual(await tags("edge-1"), { flotilla: { fleet: "line-3" } });
    // Clearing a device without the tag is a no-op.
    await fleet.setQualityTag("edge-2", "job-q", null);
    assert.deepEqual(await tags("edge-2"), {});
  } finally {
    await hub.close();
  }
});
