import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { renderFleetComparison } from "../../../local/report/fleet-compare";
import {
  participationSeries,
  renderReport,
  virtualSeries,
  type ReportInput,
} from "../../../local/report/report";

const run = (speed: number): ReportInput => ({
  config: { fleetTrace: "synthetic" },
  rounds: [1, 2, 3].map((round) => ({
    round,
    accuracy: 0.5 + round / 10,
    loss: 1 / round,
    uplinkBytes: 10,
    downlinkBytes: 10,
    durationMs: 5,
    participants: ["a", "b"],
    completed: 2,
    virtualEndS: (round * 3600) / speed,
    late: 0,
  })),
  final: {
    accuracy: 0.8,
    loss: 0.3,
    rounds: 3,
    wallMs: 15,
    virtualTimeS: 10_800 / speed,
    timeToTargetS: 7200 / speed,
  },
  participation: {
    devices: {
      a: { selected: 3, completed: 3 },
      b: { selected: 3, completed: 1 },
      c: { selected: 0, completed: 0 },
    },
    selected: { min: 0, median: 3, max: 3 },
    completed: { min: 0, median: 1, max: 3 },
  },
});

/** The JSON the page hands to Chart.js under `name`. */
const embedded = (html: string, name: string): unknown => {
  const m = new RegExp(`const ${name} = (.*);\\n`).exec(html);
  assert.ok(m, `no ${name} in the page`);
  return JSON.parse(m[1]);
};

test("the report charts accuracy against virtual hours and the per-device participation", () => {
  const html = renderReport(run(1));
  assert.match(html, /<canvas id="accVirtual">/);
  assert.match(html, /<canvas id="participation">/);
  const vt = embedded(html, "VT") as { x: number; y: number }[];
  assert.deepEqual(
    vt.map((p) => p.x),
    [1, 2, 3],
  );
  vt.forEach((p, i) => assert.ok(Math.abs(p.y - [60, 70, 80][i]) < 1e-9));
  assert.deepEqual(embedded(html, "PART"), {
    ids: ["a", "b", "c"],
    completed: [3, 1, 0],
    selected: [3, 3, 0],
  });
  assert.match(html, /completed: min 0, median 1, max 3/);
  assert.match(html, /time to target<b>2\.00 h/);
});

test("a run without a fleet trace has no virtual-time chart", () => {
  const r = run(1);
  const plain: ReportInput = {
    ...r,
    rounds: r.rounds.map((x) => ({ ...x, virtualEndS: undefined })),
    final: { accuracy: 0.8, loss: 0.3, rounds: 3, wallMs: 15 },
    participation: undefined,
  };
  assert.equal(virtualSeries(plain), null);
  assert.equal(participationSeries(plain), null);
  assert.doesNotMatch(renderReport(plain), /<canvas id="(accVirtual|participation)">/);
});

test("the fleet comparison puts every run's accuracy against virtual time on one chart", () => {
  const html = renderFleetComparison([
    { label: "random+sync", result: run(1) },
    { label: "oort+async", result: run(2) },
  ]);
  const runs = embedded(html, "RUNS") as { label: string; points: { x: number; y: number }[] }[];
  assert.deepEqual(
    runs.map((r) => [r.label, r.points.map((p) => p.x)]),
    [
      ["random+sync", [1, 2, 3]],
      ["oort+async", [0.5, 1, 1.5]],
    ],
  );
  assert.match(html, /oort\+async<\/td><td>3<\/td><td>80\.00%<\/td><td>1\.000 h/);
  assert.match(html, /0 \/ 1 \/ 3/);
});
