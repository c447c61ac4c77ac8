import { test } from "@jest/globals";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { CODED, run } from "./spawn-cli";

const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-threads-cli-"));

function assertCoded(r: { code: number | null; stderr: string }, code: string): void {
  assert.notEqual(r.code, 0);
  assert.match(r.stderr.trim(), CODED);
  assert.ok(r.stderr.includes(`${code}:`), r.stderr);
  assert.equal(r.stderr.trim().split("\n").length, 1, `one line: ${r.stderr}`);
}

test("--threads outside 1..8 is one E_CONFIG_THREADS line (bench train, simulate)", async () => {
  assertCoded(await run(["bench", "train", "--threads", "0"], cwd), "E_CONFIG_THREADS");
  assertCoded(await run(["simulate", "--threads", "9", "--rounds", "1"], cwd), "E_CONFIG_THREADS");
});

test("bench train --reference: only pytorch, and a missing torch is one E_BENCH_REFERENCE line", async () => {
  assertCoded(await run(["bench", "train", "--reference", "tensorflow"], cwd), "E_CONFIG_BENCH");
  assertCoded(
    await run(["bench", "train", "--model", "cnn1d", "--reference", "pytorch"], cwd),
    "E_CONFIG_BENCH",
  );
  process.env.FLOTILLA_PYTHON = path.join(cwd, "no-such-python");
  try {
    const r = await run(
      ["bench", "train", "--model", "mlp", "--reference", "pytorch", "--seconds", "0.2"],
      cwd,
    );
    assertCoded(r, "E_BENCH_REFERENCE");
    assert.equal(r.stdout, "", "nothing is measured without the reference");
  } finally {
    delete process.env.FLOTILLA_PYTHON;
  }
});
