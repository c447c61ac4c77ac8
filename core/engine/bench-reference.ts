/**
 * `flotilla bench train --reference pytorch` and `npm run bench`: runs scripts/bench-pytorch.py (the same model, SGD, batch size,
 * synthetic data and median-of-repetitions method as core/engine/bench.ts) right after Flotilla's own measurement,
 * so both rates come from one run on one machine. PyTorch is optional: without it the command fails with one
 * E_BENCH_REFERENCE line before measuring anything.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fail } from "../errors";

export interface PytorchResult {
  readonly model: string;
  readonly batchSize: number;
  readonly params: number;
  readonly threads: number;
  readonly samplesPerSecond: number;
  readonly repetitions: readonly number[];
  readonly torch: string;
}

/** The reference script, in the source tree next to dist/ (…/scripts/bench-pytorch.py). */
export function pytorchScript(): string {
  for (const up of ["../../..", "../.."]) {
    const p = path.resolve(__dirname, up, "scripts", "bench-pytorch.py");
    if (fs.existsSync(p)) return p;
  }
  fail("E_BENCH_REFERENCE", "scripts/bench-pytorch.py was not found next to this installation");
}

/**
 * The first Python that imports torch: $FLOTILLA_PYTHON, else python3 on the PATH, else /usr/bin/python3 (Debian's
 * python3-torch installs for the system Python, which a pyenv/venv python3 on the PATH may hide).
 */
export function findTorchPython(env: NodeJS.ProcessEnv = process.env): string {
  const candidates = env.FLOTILLA_PYTHON ? [env.FLOTILLA_PYTHON] : ["python3", "/usr/bin/python3"];
  for (const py of candidates) {
    const r = spawnSync(py, ["-c", "import torch"], { stdio: "ignore", timeout: 60_000 });
    if (r.status === 0) return py;
  }
  fail(
    "E_BENCH_REFERENCE",
    `PyTorch is not installed for ${candidates.join(" or ")} (Debian: apt-get install python3-torch; ` +
      `or set FLOTILLA_PYTHON to a Python that has torch)`,
  );
}

/** Runs the reference benchmark (blocking: nothing else should run while it measures). */
export function runPytorchReference(
  python: string,
  o: { model: string; batchSize: number; threads: number; seconds: number },
): PytorchResult {
  const args = [
    pytorchScript(),
    "--model",
    o.model,
    "--batch-size",
    String(o.batchSize),
    "--threads",
    String(o.threads),
    "--seconds",
    String(o.seconds),
    "--json",
  ];
  const r = spawnSync(python, args, { encoding: "utf8", timeout: (o.seconds * 4 + 120) * 1000 });
  const last = (r.stdout ?? "").trim().split("\n").pop() ?? "";
  if (r.status !== 0 || last === "") {
    const why = (r.stderr ?? "").trim().split("\n").pop() || r.error?.message || `exit code ${r.status}`;
    fail("E_BENCH_REFERENCE", `the PyTorch reference failed: ${why}`);
  }
  try {
    return JSON.parse(last) as PytorchResult;
  } catch (e) {
    fail("E_BENCH_REFERENCE", `the PyTorch reference printed no JSON result: ${last.slice(0, 200)}`, {
      cause: e,
    });
  }
}
