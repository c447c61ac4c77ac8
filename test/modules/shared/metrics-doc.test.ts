import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ModuleMetrics, moduleMetricLabels } from "../../../modules/shared/metrics";
import { linkMetrics } from "../../../modules/shared/link-metrics";
import { trainerMetrics } from "../../../modules/trainer/src/metrics";
import { quantizerMetrics } from "../../../modules/quantizer/src/metrics";
import { updateQueueMetrics } from "../../../modules/update-queue/src/metrics";
import { profilerMetrics } from "../../../modules/profiler/src/metrics";
import { Outbox } from "../../../modules/update-queue/src/outbox";
import { DOC_MODULES, documentedMetrics, type DocModule } from "../../helpers/metrics-doc";

/**
 * docs/metrics.md's tables and the modules' registries, both ways: every metric a module registers is documented
 * with its type and labels, and every documented metric is registered (the definitions of each module's
 * metrics.ts and the module host's link metrics, in a registry like the one a module instance makes).
 */

function registryOf(module: DocModule, dir: string): { metrics: ModuleMetrics; close(): void } {
  const metrics = new ModuleMetrics({ module, labels: moduleMetricLabels(module, {}, { edge_device: "d" }) });
  linkMetrics(metrics);
  let close = (): void => undefined;
  if (module === "trainer") trainerMetrics(metrics);
  else if (module === "quantizer") quantizerMetrics(metrics);
  else if (module === "profiler") profilerMetrics(metrics);
  else {
    const outbox = new Outbox(path.join(dir, "outbox.sqlite"));
    close = () => outbox.close();
    updateQueueMetrics(metrics, {
      outbox,
      dir,
      unstored: () => 0,
      lostInputs: () => 0,
      invalidInputs: () => 0,
    });
  }
  return { metrics, close };
}

test("docs/metrics.md documents every module metric with its type and labels, and nothing else", async () => {
  const documented = documentedMetrics();
  assert.ok(documented.length > 40, `${documented.length} documented metrics`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-metrics-doc-"));
  try {
    for (const module of DOC_MODULES) {
      const { metrics, close } = registryOf(module, dir);
      try {
        const registered = new Map(
          (await metrics.registry.getMetricsAsJSON()).map((m) => [
            m.name,
            { type: String(m.type), labels: [] as string[] },
          ]),
        );
        for (const metric of metrics.registry.getMetricsAsArray()) {
          const labelNames = (metric as unknown as { labelNames?: string[] }).labelNames ?? [];
          const entry = registered.get((metric as unknown as { name: string }).name);
          if (entry) entry.labels = [...labelNames].sort();
        }
        const docs = documented.filter((d) => d.module === module);
        for (const [name, r] of registered) {
          const d = docs.find((x) => x.name === name);
          assert.ok(d, `${module}: ${name} (${r.type}) is registered but not in docs/metrics.md`);
          assert.equal(d.type, r.type, `${name}: type`);
          assert.deepEqual([...d.labels].sort(), r.labels, `${name}: labels`);
        }
        for (const d of docs)
          assert.ok(registered.has(d.name), `${module}: ${d.name} is documented but not registered`);
        // "always": the series is there before anything happened (labelled ones pre-initialised).
        const text = await metrics.text();
        for (const d of docs.filter((x) => x.always)) {
          const sample = d.type === "histogram" ? `${d.name}_count` : d.name;
          assert.ok(
            text.split("\n").some((l) => l.startsWith(`${sample}{`) || l.startsWith(`${sample} `)),
            `${d.name} is documented as present always but has no sample at start`,
          );
        }
      } finally {
        close();
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the docs/metrics.md parser expands the module host's rows and refuses malformed ones", () => {
  const doc = [
    "### Every module (module host)",
    "| Metric | Type | Labels | Present | Meaning |",
    "|---|---|---|---|---|",
    "| `flotilla_<module>_link_up` | gauge | | always | up |",
    "### update-queue",
    "| `flotilla_update_queue_drops_total` | counter | reason | after a drop | drops |",
  ].join("\n");
  const rows = documentedMetrics(doc);
  assert.deepEqual(
    rows.map((r) => r.name),
    [
      "flotilla_trainer_link_up",
      "flotilla_quantizer_link_up",
      "flotilla_update_queue_link_up",
      "flotilla_profiler_link_up",
      "flotilla_update_queue_drops_total",
    ],
  );
  assert.deepEqual(rows[4].labels, ["reason"]);
  assert.equal(rows[4].always, false);
  assert.throws(() => documentedMetrics("### trainer\n| `flotilla_trainer_x` | gauge | | sometimes | x |"));
  assert.throws(() => documentedMetrics("### trainer\n| `flotilla_quantizer_x` | gauge | | always | x |"));
  assert.throws(() => documentedMetrics("### trainer\n| `flotilla_trainer_x` | meter | | always | x |"));
});
