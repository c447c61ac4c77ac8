import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG } from "../../../local/sim/config";
import { simulate } from "../../../local/sim/simulate";

test("a short simulation in the main thread learns: accuracy rises", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-sim-"));
  const r = await simulate({
    ...DEFAULT_CONFIG,
    devices: 6,
    clientsPerRound: 3,
    rounds: 4,
    samplesPerDevice: 60,
    workers: 0,
    out,
  });
  assert.equal(r.rounds.length, 4);
  const first = r.rounds[0].accuracy;
  const last = r.final.accuracy;
  assert.ok(last > first + 0.05, `accuracy did not rise: ${first} -> ${last}`);
  assert.ok(last > 1 / 5 + 0.2, `accuracy ${last} is not above chance`);
  for (const round of r.rounds) {
    assert.equal(round.participants.length, 3);
    assert.ok(round.uplinkBytes >= 3 * r.config.params * 4, "uplink carries three float32 deltas");
  }
  const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
  assert.deepEqual(Object.keys(json.final), ["accuracy", "loss", "rounds", "wallMs"]);
  assert.ok(Array.isArray(json.rounds[0].participants));
  const html = fs.readFileSync(path.join(out, "report.html"), "utf8");
  assert.match(html, /<canvas id="acc">/);
  assert.doesNotMatch(html, /<script src=/, "report must not load scripts from a CDN");
});

test("the CLI runs a simulation over worker threads and writes the results", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-cli-sim-"));
  const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");
  const r = spawnSync(
    process.execPath,
    [
      bin,
      "simulate",
      "--devices",
      "4",
      "--clients-per-round",
      "2",
      "--rounds",
      "2",
      "--samples-per-device",
      "40",
      "--workers",
      "2",
      "--out",
      out,
    ],
    { encoding: "utf8", timeout: 300_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /round 1\/2 +participants 2\/2/);
  assert.match(r.stdout, /report: +.*report\.html/);
  const json = JSON.parse(fs.readFileSync(path.join(out, "results.json"), "utf8"));
  assert.equal(json.rounds.length, 2);
  assert.equal(json.config.workers, 2);
});

test("--compression and --downlink-compression shrink what crosses the wire; the final model is saved for export", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-cli-simc-"));
  const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");
  const args = ["--devices", "4", "--clients-per-round", "2", "--rounds", "3", "--samples-per-device", "40"];
  const r = spawnSync(
    process.execPath,
    [
      bin,
      "simulate",
      ...args,
      "--workers",
      "2",
      "--compression",
      "topk:0.1+int8",
      "--downlink-compression",
      "fp16",
    ],
    { encoding: "utf8", timeout: 300_000, cwd: out },
  );
  assert.equal(r.status, 0, r.stderr);
  const json = JSON.parse(fs.readFileSync(path.join(out, "out/simulation/results.json"), "utf8"));
  assert.equal(json.config.compression, "topk:0.1+int8");
  const raw = json.config.params * 4;
  for (const round of json.rounds) {
    const n = round.participants.length;
    assert.equal(round.completed, n);
    // Top 10% as int8 with varint indices: well under a tenth of float32 (frame headers included).
    assert.ok(round.uplinkBytes < (n * raw) / 10, `round ${round.round}: uplink ${round.uplinkBytes}`);
    // fp16 model: about half of float32.
    assert.ok(round.downlinkBytes < (n * raw) / 1.8 && round.downlinkBytes > (n * raw) / 2.2);
  }
  assert.ok(json.final.accuracy > 0);
  // The final global model, in the directory `flotilla export` reads.
  const onnx = path.join(out, "model.onnx");
  const e = spawnSync(
    process.execPath,
    [
      bin,
      "export",
      "--model",
      "out/simulation/model",
      "--format",
      "onnx",
      "--quantize",
      "int8",
      "--out",
      onnx,
    ],
    { encoding: "utf8", cwd: out },
  );
  assert.equal(e.status, 0, e.stderr);
  assert.ok(fs.statSync(onnx).size > 0);
});
