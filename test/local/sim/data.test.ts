import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DEFAULT_CONFIG } from "../../../local/sim/config";
import { loadFleetData } from "../../../local/sim/data";
import { errorCode } from "../../helpers/errors";

/** The simulator's `dir:PATH` data source reads the directory's schema.json (docs/data.md). */

const dirs: string[] = [];
process.on("exit", () => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function dirWith(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-simdata-"));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  return dir;
}

test("dir: with a windowed schema gives [T, C] windows to cnn1d; regression data needs a regression model, its targets survive split and partition", () => {
  const rows = Array.from(
    { length: 200 },
    (_, i) => `${i % 2 === 0 ? "a" : "b"},${i},${i * 0.5},${-i},${i % 3}`,
  );
  const csv = "dev,t,c1,c2,label\n" + rows.join("\n") + "\n";
  const windows = dirWith({
    "schema.json": JSON.stringify({ window: { length: 4, stride: 2, groupBy: "dev", orderBy: "t" } }),
    "d.csv": csv,
  });
  const w = loadFleetData({ ...DEFAULT_CONFIG, dataset: `dir:${windows}`, devices: 4, model: "cnn1d" });
  assert.deepEqual(w.spec.inputShape, [4, 2]);
  assert.deepEqual(w.test.inputShape, [4, 2]);
  // Per device 100 rows -> 49 windows, two devices: 98; 20% held out.
  assert.equal(w.test.n + w.devices.reduce((a, d) => a + d.n, 0), 98);
  assert.equal(w.test.n, 19);

  const regression = dirWith({
    "schema.json": JSON.stringify({ task: "regression", features: ["c1", "c2"], targets: ["t"] }),
    "d.csv": csv,
  });
  // A built-in preset classifies: regression data is refused, not trained on silently.
  const e = errorCode(() => loadFleetData({ ...DEFAULT_CONFIG, dataset: `dir:${regression}`, model: "mlp" }));
  assert.equal(e, "E_DATA_TASK");
  // An autoencoder learns its inputs from any data.
  const r = loadFleetData({
    ...DEFAULT_CONFIG,
    dataset: `dir:${regression}`,
    devices: 5,
    model: "autoencoder",
  });
  for (const d of [r.test, ...r.devices]) {
    assert.equal(d.task, "regression");
    assert.equal(d.targetSize, 1);
    assert.equal(d.targets?.length, d.n);
    // Row i is [i / 2, -i] with target i: the targets stay with their samples through the split and partition.
    for (let i = 0; i < d.n; i++) assert.equal(d.targets?.[i], 2 * d.x[2 * i]);
  }
  assert.equal(r.test.n + r.devices.reduce((a, d) => a + d.n, 0), 200);
});
