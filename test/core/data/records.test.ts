import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { DataSchema } from "../../../core/data/data-schema";
import { loadDirectory } from "../../../core/data/dirloader";
import { generateSensors, SENSOR_CHANNELS, SENSOR_CLASSES } from "../../../core/data/sensors";
import { isFlotillaError } from "../../../core/errors";

/** Loading with a data schema (core/data/records.ts through loadDirectory): samples, windows, targets, errors. */

const dirs: string[] = [];
process.on("exit", () => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh temp directory holding `files` (name -> content; objects are written as schema.json-style JSON). */
function dirWith(files: Record<string, string | DataSchema>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-records-"));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) {
    fs.writeFileSync(path.join(dir, name), typeof content === "string" ? content : JSON.stringify(content));
  }
  return dir;
}

function error(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    assert.ok(isFlotillaError(e), `expected a FlotillaError, got ${String(e)}`);
    assert.ok(!/[\r\n]/.test(e.message), `message is not one line: ${JSON.stringify(e.message)}`);
    return { code: e.code, message: e.message };
  }
  return assert.fail("expected an error");
}

function rows(x: ArrayLike<number>, width: number): number[][] {
  return Array.from({ length: x.length / width }, (_, i) => Array.from(x).slice(i * width, (i + 1) * width));
}

/** CSV text from a header and rows. */
function csv(header: string[], body: (string | number)[][]): string {
  return [header.join(","), ...body.map((r) => r.join(","))].join("\n") + "\n";
}

test("without a schema nothing changes; schema: false ignores schema.json", () => {
  const dir = dirWith({ "a.csv": "t,v,label\n1,2,0\n3,4,1\n" });
  const plain = loadDirectory(dir);
  assert.deepEqual(rows(plain.x, 2), [
    [1, 2],
    [3, 4],
  ]);
  assert.equal(plain.task, undefined);
  fs.writeFileSync(path.join(dir, "schema.json"), JSON.stringify({ features: ["v"] }));
  assert.deepEqual(Array.from(loadDirectory(dir).x), [2, 4]);
  assert.deepEqual(Array.from(loadDirectory(dir, { schema: false }).x), [1, 2, 3, 4]);
});

test("tabular CSV and JSONL: named features in schema order, extra columns ignored, classes fix the order", () => {
  const dir = dirWith({
    "schema.json": { features: ["b", "a"], label: "state", classes: ["ok", "fault", "unused"] },
    "1.csv": "a,b,note,state\n1,2,x,fault\n3,4,y,ok\n",
    "2.jsonl": '{"state": "ok", "a": 5, "b": 6, "extra": [1]}\n\n{"a": 7, "b": "8", "state": 1}\n',
  });
  const ds = loadDirectory(dir);
  assert.deepEqual(ds.inputShape, [2]);
  assert.deepEqual(rows(ds.x, 2), [
    [2, 1],
    [4, 3],
    [6, 5],
    [8, 7],
  ]);
  assert.deepEqual(Array.from(ds.y), [1, 0, 0, 1]);
  assert.equal(ds.numClasses, 3);
  assert.deepEqual(ds.classNames, ["ok", "fault", "unused"]);
  assert.deepEqual(ds.features, ["b", "a"]);
  assert.equal(ds.task, "classification");
});

test("default features are every column without another role, in the first file's order", () => {
  const dir = dirWith({
    "schema.json": { window: { length: 2, groupBy: "dev", orderBy: "ts" } },
    "a.csv": "ts,x,dev,y,label\n1,10,A,20,0\n2,11,A,21,0\n",
    "b.csv": "label,y,x,ts,dev\n0,31,30,1,B\n0,32,31,2,B\n",
  });
  const ds = loadDirectory(dir);
  assert.deepEqual(ds.features, ["x", "y"]);
  assert.deepEqual(ds.inputShape, [2, 2]);
  assert.deepEqual(Array.from(ds.x), [10, 20, 11, 21, 30, 31, 31, 32]);
  // Another file with other feature columns is refused, as without a schema.
  const bad = dirWith({
    "schema.json": { task: "classification" },
    "a.csv": "x,label\n1,0\n",
    "b.csv": "z,label\n1,0\n",
  });
  const e = error(() => loadDirectory(bad));
  assert.equal(e.code, "E_DATA_SHAPE");
  assert.ok(e.message.startsWith(path.join(bad, "b.csv") + ":1:"), e.message);
});

test("windows: length, stride, channels in schema order, groups never crossed, rows sorted by time", () => {
  // Two devices interleaved in one file, out of time order; ISO times for one, numbers for the other.
  const body: (string | number)[][] = [];
  for (let k = 6; k >= 0; k--) body.push(["A", `2026-01-01T00:00:0${k}Z`, k, 100 + k, 0]);
  for (let k = 0; k < 5; k++) body.push(["B", String(k), 10 * k, 1000 + k, 1]);
  const dir = dirWith({
    "schema.json": {
      features: ["c2", "c1"],
      window: { length: 3, stride: 2, groupBy: "device", orderBy: "time" },
    },
    "data.csv": csv(["device", "time", "c1", "c2", "label"], body),
  });
  const ds = loadDirectory(dir);
  assert.deepEqual(ds.inputShape, [3, 2]);
  // A: 7 rows -> windows at 0, 2, 4; B: 5 rows -> windows at 0, 2.
  assert.equal(ds.n, 5);
  assert.deepEqual(rows(ds.x, 6), [
    [100, 0, 101, 1, 102, 2],
    [102, 2, 103, 3, 104, 4],
    [104, 4, 105, 5, 106, 6],
    [1000, 0, 1001, 10, 1002, 20],
    [1002, 20, 1003, 30, 1004, 40],
  ]);
  assert.deepEqual(Array.from(ds.y), [0, 0, 0, 1, 1]);
  // Default stride = length; without groupBy every file is its own series.
  const files = dirWith({
    "schema.json": { window: { length: 2 } },
    "a.jsonl": [1, 2, 3, 4, 5].map((v) => JSON.stringify({ v, label: 0 })).join("\n"),
    "b.jsonl": [6, 7, 8].map((v) => JSON.stringify({ v, label: 1 })).join("\n"),
  });
  const w = loadDirectory(files);
  assert.deepEqual(w.inputShape, [2, 1]);
  assert.deepEqual(rows(w.x, 2), [
    [1, 2],
    [3, 4],
    [6, 7],
  ]);
  assert.deepEqual(Array.from(w.y), [0, 0, 1]);
});

test("window.maxGap cuts a series where the recording pauses (seconds for ISO times, else the column's units)", () => {
  // Times 0, 1, 2, 3, then a pause, 10, 11, 12, 13 (seconds): windows of 3 never span the pause.
  const times = [0, 1, 2, 3, 10, 11, 12, 13];
  const iso = (s: number) => new Date(Date.UTC(2026, 11, 7, 8, 0, s)).toISOString();
  const load = (maxGap: number | undefined, time: (s: number) => string | number) =>
    loadDirectory(
      dirWith({
        "schema.json": { features: ["v"], window: { length: 3, stride: 1, orderBy: "t", maxGap } },
        "a.jsonl": times.map((s) => JSON.stringify({ t: time(s), v: s, label: 0 })).join("\n"),
      }),
    );
  const starts = (ds: ReturnType<typeof load>) => rows(ds.x, 3).map((r) => r[0]);
  assert.deepEqual(starts(load(undefined, iso)), [0, 1, 2, 3, 10, 11]);
  assert.deepEqual(starts(load(1.5, iso)), [0, 1, 10, 11]);
  assert.deepEqual(starts(load(1.5, (s) => s)), [0, 1, 10, 11]);
  assert.deepEqual(starts(load(7, (s) => s)), [0, 1, 2, 3, 10, 11]);
});

test("window label rules: last (default), majority (ties to the latest), constant", () => {
  const labels = ["a", "b", "b", "a", "c", "c", "a", "b"];
  const files = {
    "s.jsonl": labels.map((label, i) => JSON.stringify({ i, v: i, label })).join("\n"),
  };
  const load = (labelRule?: "last" | "majority" | "constant", length = 4) =>
    loadDirectory(dirWith({ ...files, "schema.json": { features: ["v"], window: { length, labelRule } } }));
  const names = (ds: ReturnType<typeof load>) => Array.from(ds.y, (k) => (ds.classNames as string[])[k]);
  assert.deepEqual(names(load()), ["a", "b"]); // last rows: a (index 3), b (index 7)
  assert.deepEqual(names(load("last")), ["a", "b"]);
  // [a b b a] -> a and b tie at 2, a is seen latest; [c c a b] -> c.
  assert.deepEqual(names(load("majority")), ["a", "c"]);
  assert.deepEqual(names(load("constant", 1)), labels);
  const e = error(() => load("constant"));
  assert.equal(e.code, "E_DATA_WINDOW");
  assert.match(e.message, /s\.jsonl:2: label "b" differs from "a" at .*s\.jsonl:1 /);
});

test("regression: targets per row, per window (last, mean, constant); an optional label column for strata", () => {
  const dir = dirWith({
    "schema.json": { task: "regression", targets: ["rul", "wear"], features: ["v"] },
    "a.csv": "v,rul,wear\n1,10,0.5\n2,9,0.25\n",
  });
  const ds = loadDirectory(dir);
  assert.equal(ds.task, "regression");
  assert.equal(ds.targetSize, 2);
  assert.deepEqual(Array.from(ds.targets as Float32Array), [10, 0.5, 9, 0.25]);
  assert.deepEqual(Array.from(ds.y), [0, 0]);
  assert.equal(ds.numClasses, 1);

  const series =
    "v,rul,site\n" + [0, 1, 2, 3, 4, 5].map((i) => `${i},${10 - i},${i < 3 ? "n" : "s"}`).join("\n");
  const win = (labelRule: "last" | "mean" | "constant", label?: string) =>
    loadDirectory(
      dirWith({
        "schema.json": {
          task: "regression",
          targets: ["rul"],
          features: ["v"],
          label,
          window: { length: 3, labelRule },
        },
        "a.csv": series,
      }),
    );
  assert.deepEqual(Array.from(win("last").targets as Float32Array), [8, 5]);
  assert.deepEqual(Array.from(win("mean").targets as Float32Array), [9, 6]);
  const strata = win("mean", "site");
  assert.deepEqual(strata.classNames, ["n", "s"]);
  assert.deepEqual(Array.from(strata.y), [0, 1]);
  const e = error(() => win("constant"));
  assert.equal(e.code, "E_DATA_WINDOW");
  assert.ok(e.message.includes("a.csv:3:"), e.message);
});

test("binary and reconstruction tasks", () => {
  const bin = loadDirectory(
    dirWith({
      "schema.json": { task: "binary", classes: ["normal", "anomaly"] },
      "a.csv": "v,label\n1,anomaly\n2,normal\n",
      "b.jsonl": '{"v": 3, "label": true}\n{"v": 4, "label": 0}\n',
    }),
  );
  assert.deepEqual(Array.from(bin.y), [1, 0, 1, 0]);
  assert.equal(bin.numClasses, 2);
  const ints = loadDirectory(dirWith({ "schema.json": { task: "binary" }, "a.csv": "v,label\n1,1\n2,1\n" }));
  assert.equal(ints.numClasses, 2);
  // Binary labels must be 0/1 or named by classes.
  let e = error(() =>
    loadDirectory(dirWith({ "schema.json": { task: "binary" }, "a.csv": "v,label\n1,0\n2,2\n" })),
  );
  assert.equal(e.code, "E_DATA_LABEL");
  assert.ok(e.message.includes("a.csv:3:"), e.message);
  e = error(() => loadDirectory(dirWith({ "schema.json": { task: "binary" }, "a.csv": "v,label\n1,ok\n" })));
  assert.equal(e.code, "E_DATA_LABEL");
  assert.ok(e.message.includes("a.csv:2:") && e.message.includes("classes"), e.message);

  // Reconstruction: without a label column every sample is normal and every column is a feature; a column
  // named "label" is the label (0 = normal), not a feature, unless the schema says otherwise.
  const own = dirWith({ "schema.json": { task: "reconstruction" }, "a.csv": "u,label\n1,0\n3,1\n" });
  assert.deepEqual(loadDirectory(own).features, ["u"]);
  assert.deepEqual(Array.from(loadDirectory(own).y), [0, 1]);
  fs.writeFileSync(path.join(own, "schema.json"), JSON.stringify({ task: "reconstruction", label: null }));
  assert.deepEqual(loadDirectory(own).features, ["u", "label"]);
  fs.writeFileSync(
    path.join(own, "schema.json"),
    JSON.stringify({ task: "reconstruction", features: ["label"] }),
  );
  assert.deepEqual(Array.from(loadDirectory(own).x), [0, 1]);
  const rec = loadDirectory(
    dirWith({ "schema.json": { task: "reconstruction" }, "a.csv": "u,v\n1,2\n3,4\n" }),
  );
  assert.deepEqual(rec.features, ["u", "v"]);
  assert.deepEqual(Array.from(rec.y), [0, 0]);
  const labelled = loadDirectory(
    dirWith({ "schema.json": { task: "reconstruction", label: "label" }, "a.csv": "u,label\n1,0\n3,1\n" }),
  );
  assert.deepEqual(Array.from(labelled.y), [0, 1]);
});

test("normalize: z-score from the local data (recorded), or fixed statistics", () => {
  const dir = dirWith({
    "schema.json": { features: ["a", "b", "k"], normalize: "zscore", window: { length: 2 } },
    "a.csv": "a,b,k,label\n1,10,5,0\n3,10,5,0\n5,30,5,0\n7,30,5,0\n",
  });
  const ds = loadDirectory(dir);
  assert.deepEqual(ds.normalization, { source: "zscore", mean: [4, 20, 5], std: [Math.sqrt(5), 10, 1] });
  const s5 = Math.sqrt(5);
  const expect = [-3 / s5, -1, 0, -1 / s5, -1, 0, 1 / s5, 1, 0, 3 / s5, 1, 0].map(Math.fround);
  assert.deepEqual(Array.from(ds.x), expect);
  const fixed = loadDirectory(
    dirWith({
      "schema.json": { normalize: { mean: [1, 2], std: [2, 4] } },
      "a.jsonl": '{"a": 3, "b": 10, "label": 0}\n',
    }),
  );
  assert.deepEqual(Array.from(fixed.x), [1, 2]);
  assert.deepEqual(fixed.normalization, { source: "fixed", mean: [1, 2], std: [2, 4] });
  // Fixed statistics for another number of features.
  const d3 = dirWith({
    "schema.json": { normalize: { mean: [0], std: [1] } },
    "a.csv": "a,b,label\n1,2,0\n",
  });
  const e = error(() => loadDirectory(d3));
  assert.equal(e.code, "E_DATA_SCHEMA");
  assert.ok(e.message.startsWith(path.join(d3, "schema.json") + ": normalize.mean:"), e.message);
});

test("inputShape reshapes a windowed dataset of the same size, else E_DATA_SHAPE", () => {
  const dir = dirWith({
    "schema.json": { window: { length: 2 } },
    "a.csv": "a,b,label\n1,2,0\n3,4,0\n",
  });
  assert.deepEqual(loadDirectory(dir, { inputShape: [4] }).inputShape, [4]);
  const e = error(() => loadDirectory(dir, { inputShape: [3] }));
  assert.equal(e.code, "E_DATA_SHAPE");
  assert.ok(e.message.includes("schema.json"), e.message);
});

test("every bad file is a coded one-line error with the file and line", () => {
  const win = { window: { length: 2, groupBy: "dev", orderBy: "ts" } };
  const cases: [Record<string, string | DataSchema>, string, string][] = [
    [{ "schema.json": { features: ["a", "z"] }, "d.csv": "a,label\n1,0\n" }, "E_DATA_COLUMN", "d.csv:1"],
    [
      { "schema.json": { features: ["a", "z"] }, "d.jsonl": '{"a": 1, "label": 0}\n' },
      "E_DATA_COLUMN",
      "d.jsonl:1",
    ],
    [{ "schema.json": { label: "cls" }, "d.csv": "a,label\n1,0\n" }, "E_DATA_COLUMN", "d.csv:1"],
    [{ "schema.json": {}, "d.jsonl": '{"a": 1, "label": 0}\n{"label": 0}\n' }, "E_DATA_COLUMN", "d.jsonl:2"],
    [{ "schema.json": win, "d.csv": "a,ts,label\n1,1,0\n" }, "E_DATA_COLUMN", "d.csv:1"],
    [{ "schema.json": {}, "d.csv": "a,label\n1,0\nx,0\n" }, "E_DATA_PARSE", "d.csv:3"],
    [{ "schema.json": {}, "d.csv": "a,label\n1,0\n1e39,0\n" }, "E_DATA_PARSE", "d.csv:3"],
    [{ "schema.json": {}, "d.csv": "a,label\n1,0\n2\n" }, "E_DATA_SHAPE", "d.csv:3"],
    [{ "schema.json": {}, "d.csv": "a,a,label\n1,1,0\n" }, "E_DATA_PARSE", "d.csv:1"],
    [{ "schema.json": {}, "d.csv": 'a,label\n"1,0\n' }, "E_DATA_PARSE", "d.csv:2"],
    [{ "schema.json": {}, "d.csv": "a,label\n1,\n" }, "E_DATA_PARSE", "d.csv:2"],
    [
      { "schema.json": {}, "d.jsonl": '{"a": 1, "label": 0}\n{"a": [1], "label": 0}\n' },
      "E_DATA_PARSE",
      "d.jsonl:2",
    ],
    [
      { "schema.json": {}, "d.jsonl": '{"a": 1, "label": 0}\n{"a": 1, "label": 1.5}\n' },
      "E_DATA_PARSE",
      "d.jsonl:2",
    ],
    [{ "schema.json": {}, "d.jsonl": '{"a": 1, "label": 0}\n\n{"a": 1,\n' }, "E_DATA_PARSE", "d.jsonl:3"],
    [{ "schema.json": {}, "d.jsonl": "[1]\n" }, "E_DATA_PARSE", "d.jsonl:1"],
    [{ "schema.json": {}, "d.csv": "a,label\n1,0\n2,cat\n" }, "E_DATA_PARSE", "d.csv:3"],
    [{ "schema.json": { classes: ["x"] }, "d.csv": "a,label\n1,x\n2,y\n" }, "E_DATA_LABEL", "d.csv:3"],
    [{ "schema.json": { classes: ["x"] }, "d.csv": "a,label\n1,0\n2,1\n" }, "E_DATA_LABEL", "d.csv:3"],
    [{ "schema.json": win, "d.csv": "a,ts,dev,label\n1,1,A,0\n2,noon,A,0\n" }, "E_DATA_PARSE", "d.csv:3"],
    [
      { "schema.json": win, "d.jsonl": '{"a": 1, "ts": 1, "dev": null, "label": 0}\n' },
      "E_DATA_PARSE",
      "d.jsonl:1",
    ],
    [{ "schema.json": win, "d.csv": "a,ts,dev,label\n1,1,A,0\n2,1,B,0\n" }, "E_DATA_WINDOW", "d.csv:2"],
  ];
  for (const [files, code, where] of cases) {
    const dir = dirWith(files);
    const e = error(() => loadDirectory(dir));
    assert.equal(e.code, code, `${JSON.stringify(files)}: ${e.message}`);
    assert.ok(e.message.includes(path.join(dir, where) + ":"), `${JSON.stringify(files)}: ${e.message}`);
  }
  // No rows at all.
  const empty = dirWith({ "schema.json": {}, "d.csv": "a,label\n" });
  assert.equal(error(() => loadDirectory(empty)).code, "E_DATA_NOT_FOUND");
});

test("a bad schema is E_DATA_SCHEMA naming the schema file and the field", () => {
  const cases: [unknown, string][] = [
    [{ task: "ranking" }, "task: must be one of"],
    [{ window: { length: 0 } }, "window.length: must be >= 1"],
    [{ window: { length: 2.5 } }, "window.length: must be integer"],
    [{ window: { stride: 2 } }, "window.length: is required"],
    [{ window: { length: 2, labelRule: "first" } }, "window.labelRule: must be one of"],
    [{ window: { length: 2, groupBy: [] } }, "window.groupBy: must NOT have fewer than 1 items"],
    [{ window: { length: 2, size: 3 } }, "window.size: unknown field"],
    [{ featurs: ["a"] }, "featurs: unknown field"],
    [{ features: ["a", 3] }, "features[1]: must be string"],
    [{ features: ["a", "a"] }, "features: must NOT have duplicate items"],
    [{ features: [] }, "features: must NOT have fewer than 1 items"],
    [{ label: 5 }, "label: must be string or null"],
    [{ label: null }, "label: task classification needs a label column"],
    [{ normalize: "minmax" }, 'normalize: must be "zscore"'],
    [{ normalize: { mean: [0] } }, "normalize.std: is required"],
    [{ normalize: { mean: [0], std: [0] } }, "normalize.std[0]: must be > 0"],
    [{ normalize: { mean: [0, 1], std: [1] } }, "normalize.std: has 1 values"],
    [
      { features: ["a"], normalize: { mean: [0, 1], std: [1, 1] } },
      "normalize.mean: has 2 values for 1 features",
    ],
    [{ task: "regression" }, "targets: is required for task regression"],
    [{ targets: ["y"] }, "targets: only task regression has targets"],
    [{ task: "binary", classes: ["a", "b", "c"] }, "classes: task binary has 2 classes"],
    [{ window: { length: 2, labelRule: "mean" } }, 'window.labelRule: "mean" is for task regression only'],
    [
      { task: "regression", targets: ["y"], window: { length: 2, labelRule: "majority" } },
      'window.labelRule: "majority" does not fit task regression',
    ],
    [{ features: ["a", "label"] }, 'features[1]: column "label" is already label'],
    [
      { window: { length: 2, groupBy: "d", orderBy: "d" } },
      'window.orderBy: column "d" is already window.groupBy',
    ],
    [{ window: { length: 2, orderBy: "t", maxGap: 0 } }, "window.maxGap: must be > 0"],
    [{ window: { length: 2, maxGap: 5 } }, "window.maxGap: needs window.orderBy"],
    [[], "(top level): must be object"],
  ];
  for (const [schema, what] of cases) {
    const dir = dirWith({ "schema.json": JSON.stringify(schema), "d.csv": "a,label\n1,0\n" });
    const e = error(() => loadDirectory(dir));
    assert.equal(e.code, "E_DATA_SCHEMA", `${JSON.stringify(schema)}: ${e.message}`);
    const prefix = `${path.join(dir, "schema.json")}: ${what}`;
    assert.ok(e.message.startsWith(prefix), `${JSON.stringify(schema)}: ${e.message}\n  expected ${prefix}`);
  }
  // Invalid JSON names the file (and the line where Node reports a position).
  const dir = dirWith({ "schema.json": '{\n  "task": "binary",\n  oops\n}', "d.csv": "a,label\n1,0\n" });
  const e = error(() => loadDirectory(dir));
  assert.equal(e.code, "E_DATA_SCHEMA");
  assert.ok(e.message.startsWith(path.join(dir, "schema.json")), e.message);
  assert.ok(e.message.includes("invalid JSON"), e.message);
  // A schema path that does not exist; a schema object given directly.
  const data = dirWith({ "d.csv": "a,label\n1,0\n" });
  assert.equal(
    error(() => loadDirectory(data, { schema: path.join(data, "nope.json") })).code,
    "E_DATA_NOT_FOUND",
  );
  const obj = error(() => loadDirectory(data, { schema: { window: { length: -1 } } }));
  assert.equal(obj.code, "E_DATA_SCHEMA");
  assert.ok(obj.message.startsWith("data schema: window.length:"), obj.message);
});

test("a windowed CSV export of the sensors data loads as the same [T, C] windows and labels", () => {
  const s = generateSensors({ devices: 3, samplesPerDevice: 12, seed: 7, testSamples: 1 });
  const [T, C] = s.devices[0].inputShape;
  const files: Record<string, string | DataSchema> = {
    "schema.json": {
      features: [...SENSOR_CHANNELS],
      classes: [...SENSOR_CLASSES],
      window: { length: T, stride: T, labelRule: "constant", groupBy: "device", orderBy: "timestamp" },
    },
  };
  // One stream per device (window after window, 1/512 s apart), written in a scrambled row order; device 2 as
  // JSON lines. The channel columns are written in reverse to show the schema's order is what counts.
  const t0 = Date.parse("2026-12-01T00:00:00Z");
  s.devices.forEach((d, dev) => {
    const records: Record<string, string | number>[] = [];
    for (let j = 0; j < d.n; j++) {
      for (let k = 0; k < T; k++) {
        const r: Record<string, string | number> = {
          device: `dev-${dev}`,
          timestamp: new Date(t0 + ((j * T + k) * 1000) / 512).toISOString(),
        };
        for (let c = C - 1; c >= 0; c--) r[SENSOR_CHANNELS[c]] = d.x[(j * T + k) * C + c];
        r.label = SENSOR_CLASSES[d.y[j]];
        records.push(r);
      }
    }
    const order = records.map((_, i) => (i * 37) % records.length);
    assert.equal(new Set(order).size, records.length);
    const scrambled = order.map((i) => records[i]);
    if (dev === 2) {
      files[`dev-${dev}.jsonl`] = scrambled.map((r) => JSON.stringify(r)).join("\n") + "\n";
    } else {
      const header = Object.keys(scrambled[0]);
      files[`dev-${dev}.csv`] = csv(
        header,
        scrambled.map((r) => header.map((h) => r[h])),
      );
    }
  });
  const ds = loadDirectory(dirWith(files));
  const want = s.devices;
  assert.deepEqual(ds.inputShape, want[0].inputShape);
  assert.equal(
    ds.n,
    want.reduce((a, d) => a + d.n, 0),
  );
  assert.deepEqual(ds.classNames, want[0].classNames);
  assert.equal(ds.numClasses, want[0].numClasses);
  let o = 0;
  for (const d of want) {
    assert.deepEqual(Array.from(ds.y.subarray(o, o + d.n)), Array.from(d.y));
    assert.deepEqual(ds.x.subarray(o * T * C, (o + d.n) * T * C), d.x);
    o += d.n;
  }
});
