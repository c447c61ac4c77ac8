/**
 * Spawns the real CLI (bin/flotilla.js) for the issue 11 ("Hardening") tests: every bad flag, including
 * commander's own parse errors, is one coded stderr line `flotilla: E_CODE: …` with exit code 2, checked before
 * anything is allocated or run.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");
export const CODED = /^flotilla: E_[A-Z_]+: /;

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the CLI; a process still running after `killAfterMs` is SIGKILLed (code null), so a flag that makes the CLI
 * allocate without bound fails its case instead of hanging the test.
 */
export function run(args: string[], cwd: string, killAfterMs = 90_000): Promise<Run> {
  return runScript(bin, args, cwd, killAfterMs);
}

/** Runs `node script ...args` (a compiled script, or bin/flotilla.js), SIGKILLed after `killAfterMs`. */
export function runScript(script: string, args: string[], cwd: string, killAfterMs = 90_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs every case (a few at a time: the machine has 2 cores) and returns the failures as readable lines. */
export async function check(cases: [string[], RegExp][], cwd: string): Promise<string[]> {
  const problems: string[] = [];
  const queue = [...cases];
  const worker = async () => {
    for (let c = queue.shift(); c; c = queue.shift()) {
      const [args, pattern] = c;
      const r = await run(args, cwd);
      const lines = r.stderr.replace(/\n$/, "").split("\n");
      const what = `flotilla ${args.join(" ")}: exit ${r.code ?? r.signal}, stderr ${JSON.stringify(r.stderr)}`;
      if (r.code !== 2) problems.push(`${what}: expected exit code 2`);
      else if (lines.length !== 1 || !CODED.test(lines[0]) || !pattern.test(lines[0]))
        problems.push(`${what}: expected one line matching ${CODED} and ${pattern}`);
      else if (/round 1\//.test(r.stdout)) problems.push(`${what}: the job ran before the error`);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  return problems;
}

/** A scratch working directory, removed when the test process exits. */
export function scratch(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-hardening-"));
  process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}
