/**
 * monitoring/azure/: the Flotilla workbook, its ARM template and the alert rules. Without an Azure subscription these
 * are checked for structure (the workbook's Notebook/1.0 items, ARM templates' resources and expressions), their
 * KQL at parse level (test/helpers/kql.ts), and every metric name they use against the real metric sets: the
 * aggregator's (cloud/aggregator/src/telemetry.ts, Application Insights) and the modules' (their prom-client
 * registries, scraped by the metrics-collector into InsightsMetrics).
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AGGREGATOR_METRICS, TELEMETRY_EVENTS } from "../../cloud/aggregator/src/telemetry";
import { ModuleMetrics, moduleMetricLabels } from "../../modules/shared/metrics";
import { linkMetrics } from "../../modules/shared/link-metrics";
import { trainerMetrics } from "../../modules/trainer/src/metrics";
import { quantizerMetrics } from "../../modules/quantizer/src/metrics";
import { profilerMetrics } from "../../modules/profiler/src/metrics";
import { updateQueueMetrics } from "../../modules/update-queue/src/metrics";
import { Outbox } from "../../modules/update-queue/src/outbox";
import { checkKql, TABLES } from "../helpers/kql";

type Json = Record<string, unknown>;
const repoRoot = path.resolve(__dirname, "..", "..", "..");
const dir = path.join(repoRoot, "monitoring", "azure");
const readJson = (f: string): Json => JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")) as Json;

const WORKSPACE = "microsoft.operationalinsights/workspaces";
const APP_INSIGHTS = "microsoft.insights/components";
/** Where each table lives: the metrics-collector's workspace, the Function's Application Insights. */
const TABLE_RESOURCE: Record<string, string> = {
  InsightsMetrics: WORKSPACE,
  customMetrics: APP_INSIGHTS,
  customEvents: APP_INSIGHTS,
};

/** Every metric name a module serves on :9600/metrics, from the modules' own registries. */
function moduleMetricNames(): Set<string> {
  const names = new Set<string>();
  const make = (module: string) => {
    const m = new ModuleMetrics({ module, labels: moduleMetricLabels(module, {}, { edge_device: "d" }) });
    linkMetrics(m);
    return m;
  };
  const t = make("trainer");
  trainerMetrics(t);
  const q = make("quantizer");
  quantizerMetrics(q);
  const p = make("profiler");
  profilerMetrics(p);
  const u = make("update-queue");
  const queueDir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-wb-queue-"));
  const outbox = new Outbox(path.join(queueDir, "outbox.sqlite"));
  updateQueueMetrics(u, {
    outbox,
    dir: queueDir,
    unstored: () => 0,
    lostInputs: () => 0,
    invalidInputs: () => 0,
  });
  for (const m of [t, q, p, u]) for (const metric of m.registry.getMetricsAsArray()) names.add(metric.name);
  outbox.close();
  fs.rmSync(queueDir, { recursive: true, force: true });
  return names;
}

const AGGREGATOR = new Set<string>(Object.values(AGGREGATOR_METRICS));
const EVENTS = new Set<string>(Object.values(TELEMETRY_EVENTS));

/** Checks one query: KQL at parse level, its table where `resourceType` says, every name it uses exists. */
function checkQuery(query: string, resourceType: string, where: string, modules: Set<string>): string[] {
  let check;
  try {
    check = checkKql(query);
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}\n${query}`, { cause: e });
  }
  assert.equal(
    TABLE_RESOURCE[check.table],
    resourceType.toLowerCase(),
    `${where}: ${check.table} is not in ${resourceType}`,
  );
  const used: string[] = [];
  for (const lit of check.literals) {
    if (check.table === "customEvents" && lit.startsWith("flotilla.")) {
      assert.ok(EVENTS.has(lit), `${where}: event '${lit}' is one the Function emits`);
      used.push(lit);
    }
    if (!/^flotilla_[a-z0-9_]+$/.test(lit)) continue;
    used.push(lit);
    if (check.table === "InsightsMetrics")
      assert.ok(modules.has(lit), `${where}: '${lit}' is not a metric any module serves`);
    else assert.ok(AGGREGATOR.has(lit), `${where}: '${lit}' is not an aggregator metric`);
  }
  return used;
}

const workbook = readJson("flotilla.workbook.json");
const items = workbook.items as Json[];

test("the workbook: Notebook/1.0, named items, parameters, and the views issue 15 asks for", () => {
  assert.equal(workbook.version, "Notebook/1.0");
  assert.match(String(workbook.$schema), /Application-Insights-Workbooks.*workbook\.json$/);
  const names = items.map((i) => i.name);
  assert.equal(new Set(names).size, names.length, "item names are unique");
  for (const item of items)
    assert.ok([1, 3, 9].includes(item.type as number), `item ${String(item.name)} type`);
  const params = items.filter((i) => i.type === 9);
  assert.equal(params.length, 1);
  const declared = ((params[0].content as Json).parameters as Json[]).map((p) => String(p.name));
  assert.deepEqual(declared.sort(), ["AppInsights", "StaleMinutes", "TimeRange", "Workspace"]);
  // Each query names only declared parameters (`{Name}` / `{Name:value}`), and runs on the resource its table is in.
  for (const item of items.filter((i) => i.type === 3)) {
    const c = item.content as Json;
    assert.equal(c.version, "KqlItem/1.0");
    assert.equal(c.queryType, 0, "a Logs (KQL) query");
    for (const m of String(c.query).matchAll(/\{([A-Za-z]+)(:[a-z]+)?\}/g))
      assert.ok(declared.includes(m[1]), `${String(item.name)}: parameter {${m[1]}}`);
    const resources = c.crossComponentResources as string[];
    assert.deepEqual(resources, [c.resourceType === WORKSPACE ? "{Workspace}" : "{AppInsights}"]);
    assert.ok(
      c.timeContextFromParameter === "TimeRange" || (c.timeContext as Json | undefined)?.durationMs,
      `${String(item.name)}: a time range`,
    );
  }
  // The views: participation, rounds, accuracy and ε, queue depth, oldest update, devices not reporting.
  for (const view of ["participation", "rounds", "quality", "queue-depth", "oldest-update", "not-reporting"])
    assert.ok(names.includes(view), `view ${view}`);
});

test("the workbook's KQL: parses, reads real columns, and names metrics the aggregator or the modules serve", () => {
  const modules = moduleMetricNames();
  assert.ok(modules.has("flotilla_update_queue_queue_depth"), [...modules].join(", "));
  const used = new Set<string>();
  for (const item of items.filter((i) => i.type === 3)) {
    const c = item.content as Json;
    for (const n of checkQuery(String(c.query), String(c.resourceType), `item ${String(item.name)}`, modules))
      used.add(n);
  }
  for (const name of [
    "flotilla_update_queue_queue_depth",
    "flotilla_update_queue_oldest_update_age_seconds",
    AGGREGATOR_METRICS.roundsTotal,
    AGGREGATOR_METRICS.evalAccuracy,
    AGGREGATOR_METRICS.epsilon,
    TELEMETRY_EVENTS.roundClosed,
  ])
    assert.ok(used.has(name), `the workbook uses ${name}`);
});

test("the KQL checker is live: it refuses broken queries", () => {
  const bad = [
    "InsightsMetrics | where Name == 'x",
    "InsightsMetrics | where (Name == 'x'",
    "Nope | take 1",
    "InsightsMetrics | wher Name == 'x'",
    "InsightsMetrics | summarize by Name",
    "InsightsMetrics | where Nmae == 'x'",
    "InsightsMetrics | extend d = prase_json(Tags)",
    "customMetrics | summarize n = sum(valueSum) by job",
    "customEvents | project timestamp | where name == 'x'",
    "InsightsMetrics | render sparkles",
  ];
  for (const q of bad) assert.throws(() => checkKql(q), Error, q);
  assert.deepEqual(Object.keys(TABLES).sort(), Object.keys(TABLE_RESOURCE).sort());
});

/** `[parameters('x')]`-style references in an ARM template, and the declared parameters. */
function checkArmExpressions(template: Json, what: string): void {
  const declared = Object.keys(template.parameters as Json);
  const text = JSON.stringify(template);
  for (const m of text.matchAll(/parameters\('([A-Za-z0-9]+)'\)/g))
    assert.ok(declared.includes(m[1]), `${what}: parameters('${m[1]}') is declared`);
  const walk = (v: unknown, at: string): void => {
    if (typeof v === "string" && v.startsWith("[") && !v.startsWith("[[")) {
      assert.ok(v.endsWith("]"), `${what} ${at}: an expression ends with ]`);
      let depth = 0;
      for (const ch of v.slice(1, -1).replace(/'[^']*'/g, "''")) {
        if (ch === "(") depth++;
        if (ch === ")") depth--;
        assert.ok(depth >= 0, `${what} ${at}: parentheses`);
      }
      assert.equal(depth, 0, `${what} ${at}: parentheses`);
    } else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${at}[${i}]`));
    else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) walk(x, `${at}.${k}`);
  };
  walk(template, "$");
  assert.equal(
    template.$schema,
    "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
  );
  assert.match(String(template.contentVersion), /^\d+\.\d+\.\d+\.\d+$/);
}

test("the workbook's ARM template deploys exactly monitoring/azure/flotilla.workbook.json", () => {
  const arm = readJson("flotilla-workbook.arm.json");
  checkArmExpressions(arm, "flotilla-workbook.arm.json");
  const resources = arm.resources as Json[];
  assert.equal(resources.length, 1);
  const r = resources[0];
  assert.equal(r.type, "Microsoft.Insights/workbooks");
  assert.match(String(r.apiVersion), /^\d{4}-\d{2}-\d{2}(-preview)?$/);
  assert.equal(r.kind, "shared");
  const props = r.properties as Json;
  assert.equal(props.category, "workbook");
  assert.equal(typeof props.displayName, "string");
  assert.equal(typeof props.sourceId, "string");
  // serializedData is the workbook as a string: not an ARM expression, and the same workbook as the file.
  assert.equal(typeof props.serializedData, "string");
  assert.ok(!String(props.serializedData).startsWith("["));
  assert.deepEqual(
    JSON.parse(String(props.serializedData)),
    workbook,
    "regenerate it from the workbook (docs/azure-monitor.md)",
  );
});

test("the alert rules: round failures (Application Insights) and queue age (InsightsMetrics) as scheduled query rules", () => {
  const arm = readJson("flotilla-alerts.arm.json");
  checkArmExpressions(arm, "flotilla-alerts.arm.json");
  const modules = moduleMetricNames();
  const rules = arm.resources as Json[];
  assert.deepEqual(
    rules.map((r) => r.name),
    ["flotilla-round-failures", "flotilla-queue-age"],
  );
  const params = arm.parameters as Json;
  for (const [rule, scopeParam, resourceType, metric, measure] of [
    [rules[0], "appInsightsResourceId", APP_INSIGHTS, AGGREGATOR_METRICS.roundsTotal, "failedRounds"],
    [
      rules[1],
      "workspaceResourceId",
      WORKSPACE,
      "flotilla_update_queue_oldest_update_age_seconds",
      "oldestAgeSeconds",
    ],
  ] as const) {
    const where = String(rule.name);
    assert.equal(rule.type, "Microsoft.Insights/scheduledQueryRules");
    assert.match(String(rule.apiVersion), /^\d{4}-\d{2}-\d{2}(-preview)?$/);
    const p = rule.properties as Json;
    assert.ok([0, 1, 2, 3, 4].includes(p.severity as number), `${where}: severity 0..4`);
    assert.equal(p.enabled, true);
    assert.deepEqual(p.scopes, [`[parameters('${scopeParam}')]`]);
    assert.ok(scopeParam in params);
    for (const k of ["evaluationFrequency", "windowSize"])
      assert.match(String(p[k]), /^PT\d+[MH]$/, `${where}: ${k}`);
    const criteria = ((p.criteria as Json).allOf as Json[])[0];
    const used = checkQuery(String(criteria.query), resourceType, where, modules);
    assert.ok(used.includes(metric), `${where} reads ${metric}`);
    assert.equal(criteria.metricMeasureColumn, measure);
    assert.match(
      String(criteria.query),
      new RegExp(`summarize ${measure} = `),
      `${where}: the query yields ${measure}`,
    );
    assert.ok(["Total", "Maximum", "Average", "Minimum", "Count"].includes(String(criteria.timeAggregation)));
    assert.ok(
      ["GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual", "Equal"].includes(
        String(criteria.operator),
      ),
    );
    assert.match(String(criteria.threshold), /^\[parameters\('[A-Za-z]+'\)\]$/);
    for (const d of criteria.dimensions as Json[])
      assert.match(
        String(criteria.query),
        new RegExp(`by ${String(d.name)}\\b`),
        `${where}: dimension ${String(d.name)} is a group`,
      );
    const fp = criteria.failingPeriods as Json;
    assert.ok((fp.minFailingPeriodsToAlert as number) <= (fp.numberOfEvaluationPeriods as number));
  }
});
