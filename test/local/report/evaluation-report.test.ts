/** The report's fleet-wide evaluation section (local/report/report.ts evaluationSeries). */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { foldEvaluations } from "../../../core/round/evaluation";
import { evaluationSeries, renderReport, type ReportInput } from "../../../local/report/report";

const input = (withEval: boolean): ReportInput => ({
  config: {},
  rounds: [1, 2, 3].map((round) => ({
    round,
    accuracy: 0.5 + round / 10,
    loss: 1 / round,
    uplinkBytes: 10,
    downlinkBytes: 10,
    durationMs: 5,
    participants: ["a", "b"],
    completed: 2,
    // Round 3's model has no evaluation (over IoT Hub no device receives the last model).
    ...(withEval && round < 3
      ? {
          evaluation: foldEvaluations(round, [
            { deviceId: "a", round, samples: 10, accuracy: 0.4 + round / 10, loss: 1 },
            { deviceId: "b", round, samples: 30, accuracy: 0.8, loss: 2 },
          ]),
        }
      : {}),
  })),
  final: { accuracy: 0.8, loss: 0.3, rounds: 3, wallMs: 15 },
});

test("the fleet evaluation curve: weighted accuracy, p10–p90 band, min/max, worst decile, gaps", () => {
  const s = evaluationSeries(input(true))!;
  assert.equal(s.metric, "accuracy");
  // Round 1: (10 × 0.5 + 30 × 0.8) / 40 = 72.5 %; worst decile = device a (50 %).
  assert.ok(Math.abs(s.fleet[0]! - 72.5) < 1e-9);
  assert.ok(Math.abs(s.worst[0]! - 50) < 1e-9);
  assert.ok(Math.abs(s.min[0]! - 50) < 1e-9);
  assert.ok(Math.abs(s.max[0]! - 80) < 1e-9);
  assert.ok(Math.abs(s.p10[0]! - 53) < 1e-9);
  assert.ok(Math.abs(s.p90[0]! - 77) < 1e-9);
  assert.deepEqual(s.devices, [2, 2, null]);
  assert.equal(s.fleet[2], null);
  const html = renderReport(input(true));
  assert.match(html, /<canvas id="fleetEval">/);
  assert.match(html, /Fleet-wide evaluation/);
  assert.match(html, /worst 10% of devices<b>60\.00%<\/b>/);
});

test("no evaluation, no section", () => {
  assert.equal(evaluationSeries(input(false)), null);
  assert.doesNotMatch(renderReport(input(false)), /<canvas id="fleetEval">|Fleet-wide evaluation/);
});
