/** Issue 11: commander's own parse errors follow `flotilla: E_CODE: …` on one line; --help/--version exit 0. */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import { check, run, scratch } from "./spawn-cli";

test("commander's own errors are one coded line; --help and --version still work", async () => {
  const tmp = scratch();
  const cases: [string[], RegExp][] = [
    [["simulate", "--bogus"], /^flotilla: E_CONFIG_UNKNOWN_OPTION: unknown option '--bogus'$/],
    [["--bogus"], /^flotilla: E_CONFIG_UNKNOWN_OPTION: unknown option '--bogus'$/],
    // commander adds "(Did you mean --devices?)" on a second line; it is kept, on the same line.
    [
      ["simulate", "--device", "5"],
      /^flotilla: E_CONFIG_UNKNOWN_OPTION: unknown option '--device' \(Did you mean --devices\?\)$/,
    ],
    [["frobnicate"], /^flotilla: E_CONFIG_UNKNOWN_COMMAND: unknown command 'frobnicate'$/],
    [["bench", "frobnicate"], /^flotilla: E_CONFIG_UNKNOWN_COMMAND: unknown command 'frobnicate'/],
    [["help", "frobnicate"], /^flotilla: E_CONFIG_UNKNOWN_COMMAND: unknown command 'frobnicate'/],
    [[], /^flotilla: E_CONFIG_MISSING_COMMAND: .*simulate.*bench/],
    [["bench"], /^flotilla: E_CONFIG_MISSING_COMMAND: .*train, aggregate, secagg, compress/],
    [["simulate", "extra"], /^flotilla: E_CONFIG_UNEXPECTED_ARGUMENT: /],
    [["export", "--format", "onnx", "--out", "m.onnx"], /^flotilla: E_CONFIG_MISSING_OPTION: .*--model/],
    [["export", "--model"], /^flotilla: E_CONFIG_MISSING_ARGUMENT: .*--model/],
    [["privacy", "--rounds"], /^flotilla: E_CONFIG_MISSING_ARGUMENT: .*--rounds/],
    [["simulate", "--transport", "pigeon"], /^flotilla: E_CONFIG_VALUE: .*'pigeon'.*memory, iothub/],
  ];
  assert.deepEqual(await check(cases, tmp), []);

  for (const args of [["--help"], ["simulate", "--help"], ["bench", "--help"], ["help", "bench"]]) {
    const r = await run(args, tmp);
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stdout, /^Usage: flotilla/);
    assert.equal(r.stderr, "");
  }
  const v = await run(["--version"], tmp);
  assert.equal(v.code, 0);
  assert.match(v.stdout.trim(), /^\d+\.\d+\.\d+$/);
  assert.equal(v.stderr, "");
});
