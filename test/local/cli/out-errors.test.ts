/** Issue 11: bad --out / --state-dir / --model paths are coded errors before the job starts, never E_INTERNAL. */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { check, scratch } from "./spawn-cli";

test("bad --out and other file flags are coded config errors, never E_INTERNAL, and lose no run", async () => {
  const tmp = scratch();
  const file = path.join(tmp, "a-file");
  fs.writeFileSync(file, "not a directory\n");
  const cases: [string[], RegExp][] = [
    [
      ["simulate", "--devices", "3", "--rounds", "1", "--out", file],
      /^flotilla: E_CONFIG_OUT: .*not a directory/,
    ],
    [
      ["simulate", "--devices", "3", "--rounds", "1", "--out", path.join(file, "sub")],
      /^flotilla: E_CONFIG_OUT: .*a-file/,
    ],
    [
      ["simulate", "--transport", "iothub", "--devices", "3", "--rounds", "1", "--out", file],
      /^flotilla: E_CONFIG_OUT: /,
    ],
    [
      ["hub", "--mqtt-port", "0", "--https-port", "0", "--state-dir", path.join(file, "hub")],
      /^flotilla: E_CONFIG_OUT: /,
    ],
    [
      ["simulate", "--devices", "3", "--rounds", "1", "--out", ""],
      /^flotilla: E_CONFIG_OUT: --out must name a directory/,
    ],
    [
      ["export", "--model", path.join(tmp, "missing"), "--format", "onnx", "--out", "m.onnx"],
      /^flotilla: E_MODEL_DIR: /,
    ],
    [["export", "--model", file, "--format", "onnx", "--out", "m.onnx"], /^flotilla: E_MODEL_DIR: /],
  ];
  assert.deepEqual(await check(cases, tmp), []);
  assert.ok(!fs.existsSync(path.join(tmp, "out")), "no default output directory was written");
});
