/**
 * Debian's promtool / prometheus for the monitoring tests. A test that needs them and cannot find them fails with
 * how to install them (never skips): `.ci/run` installs the package on a fresh machine.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { findPrometheus, PROMETHEUS_INSTALL } from "../../local/monitoring/prometheus";

export const repoRoot = path.resolve(__dirname, "..", "..", "..");
export const monitoringDir = path.join(repoRoot, "monitoring");

/** promtool (next to the prometheus binary, or on the PATH), or an error saying how to install it. */
export function promtool(): string {
  const dirs = [...(process.env.PATH ?? "").split(path.delimiter).filter(Boolean), "/usr/bin"];
  for (const dir of dirs) {
    const p = path.join(dir, "promtool");
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`promtool is not installed: ${PROMETHEUS_INSTALL} (Debian's prometheus package has it)`);
}

/** The prometheus binary, or an error saying how to install it. */
export function prometheusBinary(): string {
  const p = findPrometheus();
  if (!p) throw new Error(`prometheus is not installed: ${PROMETHEUS_INSTALL}`);
  return p;
}

export interface ToolRun {
  readonly code: number | null;
  readonly out: string;
}

/** Runs promtool with `args` in `cwd`; stdout and stderr together. */
export function runPromtool(args: readonly string[], cwd = monitoringDir): ToolRun {
  const r = spawnSync(promtool(), args, { cwd, encoding: "utf8", timeout: 60_000 });
  if (r.error) throw r.error;
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}
