import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG } from "../../../local/sim/config";
import { finishResult, type RoundSummary } from "../../../local/sim/simulate";

test('results.json never carries epsilon null: an infinite ε is written as "Infinity"', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-results-"));
  try {
    const dp = {
      placement: "central" as const,
      clip: 1,
      noiseStd: 0,
      count: 2,
      released: true,
      epsilon: Infinity,
      delta: 1e-5,
      order: 2,
    };
    const round: RoundSummary = {
      round: 1,
      participants: ["a", "b"],
      completed: 2,
      failures: [],
      accuracy: NaN,
      loss: NaN,
      trainLoss: 0.5,
      uplinkBytes: 0,
      downlinkBytes: 0,
      durationMs: 1,
      slowestTrainMs: 1,
      epsilon: Infinity,
      dp,
    };
    finishResult(
      { ...DEFAULT_CONFIG, out },
      { kind: "test" },
      { numParams: 1, layout: { hash: "h" } },
      [round],
      {},
      performance.now(),
      undefined,
      {
        status: { state: "completed" },
        privacy: {
          epsilon: Infinity,
          delta: 1e-5,
          order: 2,
          steps: 1,
          placement: "central",
          noiseMultiplier: 0,
          conversion: "tight",
          samplingRate: 0.5,
        },
      },
    );
    const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
    assert.equal(json.privacy.epsilon, "Infinity");
    assert.equal(json.rounds[0].epsilon, "Infinity");
    assert.equal(json.rounds[0].dp.epsilon, "Infinity");
    // Other non-finite numbers (no evaluator: NaN accuracy) are still null.
    assert.equal(json.rounds[0].accuracy, null);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
