/**
 * Test helpers for Prometheus text (format 0.0.4): `promtool check metrics` (Debian's prometheus package) and a
 * small parser of the samples a /metrics endpoint serves.
 */
import { spawnSync } from "node:child_process";
import { promtool } from "../monitoring/promtool";

/** `promtool check metrics` on the text: its problems (empty when it passes). */
export function promtoolCheckMetrics(text: string): string {
  const r = spawnSync(promtool(), ["check", "metrics"], { input: text, encoding: "utf8" });
  if (r.error) throw r.error;
  return r.status === 0 ? "" : `promtool exit ${r.status}: ${r.stdout}${r.stderr}`.trim();
}

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface Exposition {
  readonly samples: readonly Sample[];
  /** `# TYPE` of each metric family. */
  readonly types: ReadonlyMap<string, string>;
}

/** Parses Prometheus text: the samples (label values unescaped) and the families' types. */
export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      types.set(name, type);
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (let l = re.exec(m[3] ?? ""); l; l = re.exec(m[3] ?? ""))
      labels[l[1]] = l[2].replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return { samples, types };
}

/** The value of the one sample `name` (with `labels` among its labels); undefined when there is none. */
export function sampleValue(
  e: Exposition,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number | undefined {
  const s = e.samples.find(
    (x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
  return s?.value;
}
