/**
 * The metric tables of docs/metrics.md, parsed: "every documented metric" for the tests (the doc-vs-registry test
 * here, and the Prometheus scrape tests). Rows of "Every module (module host)" name `flotilla_<module>_...` and are
 * expanded for each module.
 */
import * as fs from "node:fs";
import * as path from "node:path";

export const METRICS_DOC = path.resolve(__dirname, "..", "..", "..", "docs", "metrics.md");
export const DOC_MODULES = ["trainer", "quantizer", "update-queue", "profiler"] as const;
export type DocModule = (typeof DOC_MODULES)[number];

export interface DocumentedMetric {
  /** trainer | quantizer | update-queue | profiler */
  readonly module: DocModule;
  /** The full name, e.g. flotilla_update_queue_queue_depth (histograms: without _bucket/_sum/_count). */
  readonly name: string;
  readonly type: "counter" | "gauge" | "histogram" | "summary";
  /** Label names besides the four every sample carries (iothub, edge_device, instance_number, module_name). */
  readonly labels: readonly string[];
  /** Whether the series exists from the module's start (false: it appears with the first event of its kind). */
  readonly always: boolean;
  readonly meaning: string;
}

const SECTION: Record<string, DocModule | "every"> = {
  "Every module (module host)": "every",
  trainer: "trainer",
  quantizer: "quantizer",
  "update-queue": "update-queue",
  profiler: "profiler",
};

/** Every metric the tables of docs/metrics.md document (from `text`, default: the file). */
export function documentedMetrics(text: string = fs.readFileSync(METRICS_DOC, "utf8")): DocumentedMetric[] {
  const out: DocumentedMetric[] = [];
  let section: DocModule | "every" | undefined;
  for (const line of text.split("\n")) {
    const h = /^### (.+)$/.exec(line);
    if (h) {
      section = SECTION[h[1].trim()];
      continue;
    }
    if (/^## /.test(line)) section = undefined;
    if (!section || !line.startsWith("| `flotilla_")) continue;
    const cells = line
      .split("|")
      .slice(1, -1)
      .map((c) => c.trim());
    if (cells.length !== 5) throw new Error(`docs/metrics.md: a metric row needs 5 cells: ${line}`);
    const [nameCell, type, labels, present, meaning] = cells;
    const name = nameCell.replace(/`/g, "");
    if (!["counter", "gauge", "histogram", "summary"].includes(type))
      throw new Error(`docs/metrics.md: ${name}: unknown type ${type}`);
    const row = {
      type: type as DocumentedMetric["type"],
      labels: labels === "" ? [] : labels.split(",").map((l) => l.trim()),
      always: present === "always",
      meaning,
    };
    if (!row.always && !present.startsWith("after "))
      throw new Error(`docs/metrics.md: ${name}: Present must be "always" or "after …"`);
    const modules = section === "every" ? DOC_MODULES : [section];
    for (const module of modules) {
      const prefix = `flotilla_${module.replace(/-/g, "_")}_`;
      const full = section === "every" ? name.replace("flotilla_<module>_", prefix) : name;
      if (!full.startsWith(prefix)) throw new Error(`docs/metrics.md: ${full} is not under ${prefix}`);
      out.push({ module, name: full, ...row });
    }
  }
  return out;
}
