import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { loadDirectory, parseCsv } from "../../../core/data/dirloader";
import { isFlotillaError } from "../../../core/errors";

const dirs: string[] = [];
process.on("exit", () => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh temp directory holding `files` (name -> content). */
function dirWith(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-dirloader-"));
  dirs.push(dir);
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  return dir;
}

/** The FlotillaError thrown by fn: its code and message (checked to be one line). */
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

function rows(x: Float32Array, width: number): number[][] {
  return Array.from({ length: x.length / width }, (_, i) =>
    Array.from(x.subarray(i * width, (i + 1) * width)),
  );
}

test("CSV with quoted fields, escaped quotes and CRLF; string labels sorted into classNames", () => {
  const dir = dirWith({
    "a.csv":
      'temp,"vib, rms",label\r\n' +
      '1.5,2,"bearing ""outer"" race"\r\n' +
      "-3,4e-1,normal\r\n" +
      '"7"," 0.25 ","multi\r\nline"\r\n',
  });
  const ds = loadDirectory(dir);
  assert.equal(ds.n, 3);
  assert.deepEqual(ds.inputShape, [2]);
  assert.deepEqual(ds.classNames, ['bearing "outer" race', "multi\r\nline", "normal"]);
  assert.equal(ds.numClasses, 3);
  assert.deepEqual(Array.from(ds.y), [0, 2, 1]);
  assert.deepEqual(rows(ds.x, 2), [
    [1.5, 2],
    [-3, Math.fround(0.4)],
    [7, 0.25],
  ]);
});

test("parseCsv follows RFC 4180 and reports the line each record starts on", () => {
  assert.deepEqual(parseCsv("f", 'a,b\r\n"x,y",""\r\n\r\n"1\n2",3\n4,\n'), [
    [["a", "b"], 1],
    [["x,y", ""], 2],
    [["1\n2", "3"], 4],
    [["4", ""], 6],
  ]);
  assert.deepEqual(parseCsv("f", '\ufeffa\n"q""q"'), [
    [["a"], 1],
    [['q"q'], 2],
  ]);
  assert.deepEqual(parseCsv("f", ""), []);
});

test("numeric CSV labels are used as class indices", () => {
  const dir = dirWith({ "d.csv": "x1,x2,label\n0,1,2\n1,0,0\n1,1,5\n" });
  const ds = loadDirectory(dir);
  assert.deepEqual(Array.from(ds.y), [2, 0, 5]);
  assert.equal(ds.numClasses, 6);
  assert.equal(ds.classNames, undefined);
});

test("JSON lines: flat and nested x, 'features' alias, string labels; files read in name order", () => {
  const dir = dirWith({
    "b.ndjson": '{"features": [[5, 6], [7, 8], [9, 10]], "label": "idle"}\n',
    "a.jsonl":
      '{"x": [[1, 2], [3, 4], [5, 6]], "label": "run"}\r\n\r\n{"x": [0, 0, 0, 0, 0, 1], "label": "idle"}\n',
    "notes.txt": "ignored",
    ".hidden.csv": "garbage",
  });
  fs.mkdirSync(path.join(dir, "sub.csv")); // a directory, ignored
  const ds = loadDirectory(dir);
  assert.equal(ds.n, 3);
  assert.deepEqual(ds.inputShape, [3, 2]);
  assert.deepEqual(ds.classNames, ["idle", "run"]);
  assert.deepEqual(Array.from(ds.y), [1, 0, 0]);
  assert.deepEqual(Array.from(ds.x), [1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 1, 5, 6, 7, 8, 9, 10]);
});

test("CSV and JSONL files combine; CSV columns are matched by name; inputShape and labelColumn options", () => {
  const dir = dirWith({
    "1.csv": "a,b,c,cls\n1,2,3,0\n4,5,6,1\n",
    "2.csv": "cls,c,a,b\n1,30,10,20\n",
    "3.jsonl": '{"x": [7, 8, 9], "label": 2}\n',
  });
  const ds = loadDirectory(dir, { labelColumn: "cls", inputShape: [3, 1] });
  assert.deepEqual(ds.inputShape, [3, 1]);
  assert.deepEqual(rows(ds.x, 3), [
    [1, 2, 3],
    [4, 5, 6],
    [10, 20, 30],
    [7, 8, 9],
  ]);
  assert.deepEqual(Array.from(ds.y), [0, 1, 1, 2]);
  assert.equal(ds.numClasses, 3);
});

test("E_DATA_NOT_FOUND: missing directory, a file instead of a directory, no data files, no samples", () => {
  const missing = path.join(os.tmpdir(), "flotilla-no-such-dir-" + process.pid);
  let e = error(() => loadDirectory(missing));
  assert.equal(e.code, "E_DATA_NOT_FOUND");
  assert.ok(e.message.includes(missing));
  const dir = dirWith({ "readme.md": "# nothing", "x.csv.bak": "a,label\n1,0\n" });
  e = error(() => loadDirectory(path.join(dir, "readme.md")));
  assert.equal(e.code, "E_DATA_NOT_FOUND");
  e = error(() => loadDirectory(dir));
  assert.equal(e.code, "E_DATA_NOT_FOUND");
  assert.ok(e.message.includes(dir));
  e = error(() =>
    loadDirectory(dirWith({ "empty.csv": "", "header.csv": "a,label\n", "blank.jsonl": "\n\n" })),
  );
  assert.equal(e.code, "E_DATA_NOT_FOUND");
});

test("E_DATA_PARSE names the file and line", () => {
  const cases: [Record<string, string>, string][] = [
    [{ "a.csv": "x,label\n1,0\nabc,1\n" }, "a.csv:3"], // non-numeric value
    [{ "a.csv": "x,label\n1,0\n,1\n" }, "a.csv:3"], // empty value
    [{ "a.csv": "x,label\n1,0\nNaN,1\n" }, "a.csv:3"],
    [{ "a.csv": "x,label\n1,0\n1e999,1\n" }, "a.csv:3"], // out of range
    [{ "a.csv": 'x,label\n1,0\n2,"open\n3,1\n' }, "a.csv:3"], // unterminated quote
    [{ "a.csv": 'x,label\n1,0\n2,"a"b\n' }, "a.csv:3"], // text after a closing quote
    [{ "a.csv": 'x,label\n1,0\n2,a"b\n' }, "a.csv:3"], // quote inside an unquoted field
    [{ "a.csv": "x,y\n1,0\n" }, "a.csv:1"], // no label column
    [{ "a.csv": "x,x,label\n1,2,0\n" }, "a.csv:1"], // duplicate column
    [{ "a.csv": "x,label\n1,0\n2,\n" }, "a.csv:3"], // empty label
    [{ "a.jsonl": '{"x": [1], "label": 0}\n{"x": [1], "label": 0\n' }, "a.jsonl:2"], // malformed JSON
    [{ "a.jsonl": '\n\n{"x": [1, "2"], "label": 0}\n' }, "a.jsonl:3"], // non-numeric x
    [{ "a.jsonl": '{"label": 0}\n' }, "a.jsonl:1"], // no x
    [{ "a.jsonl": '{"x": 3, "label": 0}\n' }, "a.jsonl:1"], // x not an array
    [{ "a.jsonl": "[1, 2]\n" }, "a.jsonl:1"], // not an object
    [{ "a.jsonl": '{"x": [1]}\n' }, "a.jsonl:1"], // no label
    [{ "a.jsonl": '{"x": [1], "label": 1.5}\n' }, "a.jsonl:1"], // non-integer label
    [{ "a.jsonl": '{"x": [1], "label": -1}\n' }, "a.jsonl:1"], // negative label
    [{ "a.jsonl": '{"x": [1], "label": null}\n' }, "a.jsonl:1"],
    [{ "a.jsonl": '{"x": [1], "label": 0}\n{"x": [2], "label": "cat"}\n' }, "a.jsonl:2"], // mixed label kinds
    [{ "a.csv": "x,label\n1,dog\n", "b.jsonl": '{"x": [1], "label": 3}\n' }, "b.jsonl:1"], // mixed across files
  ];
  for (const [files, where] of cases) {
    const dir = dirWith(files);
    const e = error(() => loadDirectory(dir));
    assert.equal(e.code, "E_DATA_PARSE", `${JSON.stringify(files)}: ${e.message}`);
    assert.ok(e.message.includes(path.join(dir, where) + ":"), `${JSON.stringify(files)}: ${e.message}`);
  }
});

test("E_DATA_SHAPE: differing feature counts, ragged x, inputShape of another size", () => {
  const cases: [Record<string, string>, string][] = [
    [{ "a.csv": "x,y,label\n1,2,0\n3,1\n" }, "a.csv:3"], // short row
    [{ "a.csv": "x,y,label\n1,2,0\n3,4,5,1\n" }, "a.csv:3"], // long row
    [{ "a.csv": "x,label\n1,0\n", "b.csv": "x,y,label\n1,2,0\n" }, "b.csv:1"], // other columns
    [{ "a.csv": "x,label\n1,0\n", "b.csv": "z,label\n1,0\n" }, "b.csv:1"], // same count, other names
    [{ "a.csv": "label\n0\n" }, "a.csv:1"], // no features
    [{ "a.jsonl": '{"x": [1, 2], "label": 0}\n{"x": [1, 2, 3], "label": 0}\n' }, "a.jsonl:2"],
    [{ "a.jsonl": '{"x": [[1, 2], [3]], "label": 0}\n' }, "a.jsonl:1"], // ragged
    [{ "a.jsonl": '{"x": [1, [2]], "label": 0}\n' }, "a.jsonl:1"], // mixed depth
    [{ "a.jsonl": '{"x": [[1, 2]], "label": 0}\n{"x": [[1], [2]], "label": 0}\n' }, "a.jsonl:2"], // other shape
    [{ "a.jsonl": '{"x": [], "label": 0}\n' }, "a.jsonl:1"], // empty
    [{ "a.csv": "x,y,label\n1,2,0\n", "b.jsonl": '{"x": [1, 2, 3], "label": 1}\n' }, "b.jsonl:1"],
  ];
  for (const [files, where] of cases) {
    const dir = dirWith(files);
    const e = error(() => loadDirectory(dir));
    assert.equal(e.code, "E_DATA_SHAPE", `${JSON.stringify(files)}: ${e.message}`);
    assert.ok(e.message.includes(path.join(dir, where) + ":"), `${JSON.stringify(files)}: ${e.message}`);
  }
  const dir = dirWith({ "a.csv": "a,b,c,d,e,f,label\n1,2,3,4,5,6,0\n" });
  assert.deepEqual(loadDirectory(dir, { inputShape: [2, 3] }).inputShape, [2, 3]);
  const e = error(() => loadDirectory(dir, { inputShape: [4, 2] }));
  assert.equal(e.code, "E_DATA_SHAPE");
  assert.ok(e.message.includes(path.join(dir, "a.csv")));
  assert.equal(error(() => loadDirectory(dir, { inputShape: [0, 6] })).code, "E_DATA_SHAPE");
});
