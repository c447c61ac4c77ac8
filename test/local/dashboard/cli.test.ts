/**
 * `flotilla dashboard` and `simulate --dashboard` from the command line: bad flags are one coded line (exit 2); a
 * dashboard whose sources are wrong (a Function nothing answers at, a malformed hub connection string) still
 * serves, prints one coded line per source on stderr, shows both on the page, and stops cleanly on SIGINT.
 */
import { expect, test } from "@jest/globals";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { check } from "../cli/spawn-cli";

const bin = path.join(__dirname, "..", "..", "..", "..", "bin", "flotilla.js");

/** The environment without the dashboard's variables (so the cases do not depend on the caller's). */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of ["FLOTILLA_FUNCTION_URL", "FLOTILLA_FUNCTION_KEY", "IOTHUB_SERVICE_CONNECTION_STRING"])
    delete env[k];
  return env;
}

test("bad dashboard flags are one coded line, before anything starts", async () => {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-dash-cli-"));
  // check() spawns with this process's environment: without the dashboard's variables for the first case.
  const saved = { ...process.env };
  for (const k of Object.keys(process.env)) if (!(k in cleanEnv())) delete process.env[k];
  try {
    const problems = await check(
      [
        [["dashboard"], /^flotilla: E_DASHBOARD_CONFIG: nothing to show/],
        [["dashboard", "--function-url", "http://x", "--port", "70000"], /E_CONFIG_RANGE/],
        [["dashboard", "--function-url", "http://x", "--interval", "0"], /E_CONFIG_RANGE|E_CONFIG_VALUE/],
        [["dashboard", "--hub-info", "a.json", "--hub-connection-string", "x"], /E_CONFIG_CONFLICT/],
        [["simulate", "--dashboard"], /E_CONFIG_CONFLICT: --dashboard .* --transport iothub/],
        [["simulate", "--transport", "iothub", "--keep-dashboard"], /E_CONFIG_CONFLICT: --keep-dashboard/],
        [["simulate", "--transport", "iothub", "--dashboard", "http"], /E_CONFIG_VALUE|E_CONFIG_RANGE/],
      ],
      cwd,
    );
    expect(problems).toEqual([]);
  } finally {
    Object.assign(process.env, saved);
    fs.rmSync(cwd, { recursive: true, force: true });
  }
});

test("wrong sources: the dashboard serves, says what is wrong in one coded line each, and stops on SIGINT", async () => {
  const child = spawn(
    process.execPath,
    [
      bin,
      "dashboard",
      "--function-url",
      "http://127.0.0.1:9",
      "--hub-connection-string",
      "bogus",
      "--port",
      "0",
    ],
    { env: cleanEnv(), stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
  child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const poll = setInterval(() => {
        const m = /^dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/m.exec(stdout);
        if (m) {
          clearInterval(poll);
          resolve(m[1]);
        }
      }, 50);
      void exited.then((code) => {
        clearInterval(poll);
        reject(new Error(`the dashboard exited (${code}): ${stderr}`));
      });
    });
    // Poll the snapshot until the Function's poll has failed too.
    let codes: string[] = [];
    while (codes.length < 2) {
      const snap = (await (await fetch(`${url}api/snapshot`)).json()) as { errors: { code: string }[] };
      codes = snap.errors.map((e) => e.code);
      if (codes.length < 2) await new Promise((r) => setTimeout(r, 100));
    }
    expect(codes).toEqual(["E_DASHBOARD_FUNCTION_UNREACHABLE", "E_HUB_CONNECTION_STRING"]);
    const lines = stderr.trim().split("\n");
    expect(lines.map((l) => /^flotilla dashboard: (E_[A-Z_]+): /.exec(l)?.[1]).sort()).toEqual([
      "E_DASHBOARD_FUNCTION_UNREACHABLE",
      "E_HUB_CONNECTION_STRING",
    ]);
    child.kill("SIGINT");
    expect(await exited).toBe(0);
  } finally {
    child.kill("SIGKILL");
  }
});
