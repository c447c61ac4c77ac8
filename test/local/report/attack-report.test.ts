/** The report's attack section (--attack): the attackers, and the backdoor success chart when there is one. */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { renderReport, type ReportInput } from "../../../local/report/report";

const run = (backdoor: boolean): ReportInput => ({
  config: { attack: backdoor ? "backdoor:0.2" : "sign-flip:0.2" },
  rounds: [1, 2].map((round) => ({
    round,
    accuracy: 0.8,
    loss: 0.5,
    uplinkBytes: 10,
    downlinkBytes: 10,
    durationMs: 5,
    participants: ["device-000", "device-001"],
    ...(backdoor ? { backdoorSuccess: round / 4 } : {}),
  })),
  final: { accuracy: 0.8, loss: 0.5, rounds: 2, wallMs: 10, ...(backdoor ? { backdoorSuccess: 0.5 } : {}) },
  attack: {
    kind: backdoor ? "backdoor" : "sign-flip",
    fraction: 0.2,
    param: backdoor ? 0.5 : 1,
    attackers: ["device-001"],
  },
});

test("the report names the attack and its attackers, and charts the backdoor success per round", () => {
  const html = renderReport(run(true));
  assert.match(html, /<h2>Attack<\/h2>/);
  assert.match(html, /<b>backdoor<\/b> by 1 device\(s\) \(fraction 0\.2, parameter 0\.5/);
  assert.match(html, /device-001\./);
  assert.match(html, /Final backdoor success rate: <b>50\.00%<\/b>/);
  assert.match(html, /<canvas id="backdoor">/);
  assert.match(html, /const BD = \[25,50\];/);
});

test("a model attack has the section without a backdoor chart; no attack, no section", () => {
  const html = renderReport(run(false));
  assert.match(html, /<b>sign-flip<\/b>/);
  assert.doesNotMatch(html, /<canvas id="backdoor">/);
  assert.match(html, /const BD = null;/);
  const { attack: _a, ...clean } = run(false);
  assert.doesNotMatch(renderReport(clean), /<h2>Attack<\/h2>/);
});
