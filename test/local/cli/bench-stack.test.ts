/**
 * `flotilla bench stack --json` (issue 12): one JSON object with exactly the documented keys, after a real run over
 * the local stack (2 devices, 1 round); progress goes to stderr, never into the JSON on stdout.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { run, scratch } from "./spawn-cli";

test("bench stack --json prints {devices, rounds, roundWallMs, trainingSpanMs, overheadMs, peakRssBytes}", async () => {
  const tmp = scratch();
  const r = await run(["bench", "stack", "--devices", "2", "--rounds", "1", "--json"], tmp, 300_000);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 1, r.stdout);
  const out = JSON.parse(lines[0]) as Record<string, unknown>;
  assert.deepEqual(Object.keys(out), [
    "devices",
    "rounds",
    "roundWallMs",
    "trainingSpanMs",
    "overheadMs",
    "peakRssBytes",
  ]);
  assert.equal(out.devices, 2);
  assert.equal(out.rounds, 1);
  for (const k of ["roundWallMs", "trainingSpanMs", "overheadMs", "peakRssBytes"])
    assert.ok(Number.isInteger(out[k]), `${k} = ${String(out[k])}`);
  assert.ok((out.roundWallMs as number) > 0);
  assert.ok((out.peakRssBytes as number) > 0);
  // One round: its medians are that round's figures.
  assert.equal(out.overheadMs, (out.roundWallMs as number) - (out.trainingSpanMs as number));
  assert.match(r.stderr, /2 devices, round 1\/1: \d+ ms, training \d+ ms, overhead -?\d+ ms/);
});

test("bench stack refuses a bad count before starting anything", async () => {
  const tmp = scratch();
  const r = await run(["bench", "stack", "--devices", "1e9", "--json"], tmp);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /^flotilla: E_CONFIG_RANGE: --devices/);
  assert.equal(r.stdout, "");
});
