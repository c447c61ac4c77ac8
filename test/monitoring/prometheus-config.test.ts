/**
 * Flotilla's Prometheus configuration and Grafana dashboard (monitoring/, docs/prometheus.md), checked by Debian's
 * promtool: every configuration is valid (`promtool check config`, the device's in agent mode), the rules are valid
 * (`promtool check rules`) and behave as their unit tests say (`promtool test rules`: each alert fires on the series
 * it is meant for and stays silent on the others), and every PromQL expression of the dashboard and the rules is
 * valid and reads only documented metrics (docs/metrics.md, the aggregator's table) or recorded ones.
 */
import { expect, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { monitoringDir, runPromtool } from "./promtool";
import { baseName, metricNames, substituteGrafanaVariables } from "./promql";
import { documentedMetricNames } from "./documented";

const prom = path.join(monitoringDir, "prometheus");
const rulesFile = path.join(prom, "rules", "flotilla.yml");
const dashboardFile = path.join(monitoringDir, "grafana", "flotilla-fleet.json");

function ok(args: string[], cwd = monitoringDir): string {
  const r = runPromtool(args, cwd);
  assert.equal(r.code, 0, `promtool ${args.join(" ")}:\n${r.out}`);
  return r.out;
}

test("the local and the fleet's server configurations pass promtool check config", () => {
  for (const f of ["local.yml", "fleet/gateway.yml", "fleet/central.yml"]) {
    const out = ok(["check", "config", f], prom);
    assert.match(out, /SUCCESS: .* is valid prometheus config file syntax/);
  }
  // The central server loads the rules (the local one too: rule_files: rules/*.yml).
  assert.match(ok(["check", "config", "fleet/central.yml"], prom), /SUCCESS: 1 rule files found/);
  assert.match(ok(["check", "config", "local.yml"], prom), /SUCCESS: 1 rule files found/);
});

test("the device's agent configuration passes promtool check config --agent", () => {
  ok(["check", "config", "--agent", "fleet/device-agent.yml"], prom);
});

test("promtool check config fails on a broken configuration (the check is real)", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-promcfg-"));
  const broken = fs
    .readFileSync(path.join(prom, "local.yml"), "utf8")
    .replace("scrape_interval: 2s", "scrape_interval: often");
  fs.writeFileSync(path.join(dir, "prometheus.yml"), broken);
  const r = runPromtool(["check", "config", "prometheus.yml"], dir);
  assert.notEqual(r.code, 0, r.out);
  // An agent may not hold rules: the agent check refuses the server's configuration.
  assert.notEqual(runPromtool(["check", "config", "--agent", "fleet/central.yml"], prom).code, 0);
});

test("the rules pass promtool check rules, and every alert has a for:, a severity and annotations", () => {
  assert.match(ok(["check", "rules", rulesFile]), /SUCCESS: \d+ rules found/);
  const text = fs.readFileSync(rulesFile, "utf8");
  const alerts = [
    ...text.matchAll(/- alert: (\w+)\n([\s\S]*?)(?=\n {6}- (?:alert|record):|\n {2}- name:|$)/g),
  ];
  expect(alerts.map((a) => a[1])).toEqual(
    expect.arrayContaining([
      "FlotillaRoundFailed",
      "FlotillaUpdateQueueStale",
      "FlotillaDeviceNotReporting",
      "FlotillaTrainingFailures",
      "FlotillaDiskLow",
    ]),
  );
  for (const [, name, body] of alerts) {
    assert.match(body, /\n {8}for: \d+m/, `${name} has a for: duration`);
    assert.match(body, /severity: (warning|critical)/, `${name} has a severity`);
    for (const a of ["summary", "description", "runbook"])
      assert.match(body, new RegExp(`${a}:`), `${name}: ${a}`);
  }
});

test("each alert reading a recorded series sits after its recording rule in the same group", () => {
  // Groups are evaluated concurrently (and in no fixed order by promtool): an alert in another group could see a
  // recorded value one evaluation late, which made FlotillaUpdateQueueStale's unit test flaky at its boundary.
  const { recorded } = rulesExpressions();
  const groups = fs
    .readFileSync(rulesFile, "utf8")
    .split(/\n {2}- name: /)
    .slice(1);
  let checked = 0;
  for (const g of groups) {
    for (const m of g.matchAll(/- alert: (\w+)\n(?:\s+#.*\n)*\s+expr: (\|\n((?:\s{10,}.*\n)+)|(.*)\n)/g)) {
      for (const name of metricNames((m[3] ?? m[4]).trim())) {
        if (!recorded.has(name)) continue;
        const at = g.indexOf(`- record: ${name}\n`);
        assert.ok(at >= 0 && at < m.index, `${m[1]} reads ${name}: record it earlier in the same group`);
        checked++;
      }
    }
  }
  assert.ok(checked >= 5, `${checked} alert inputs checked`);
});

test("promtool test rules: each alert fires on its input series and stays silent on the others", () => {
  const tests = fs.readdirSync(path.join(prom, "tests")).filter((f) => f.endsWith(".yml"));
  assert.ok(tests.length > 0);
  const text = tests.map((f) => fs.readFileSync(path.join(prom, "tests", f), "utf8")).join("\n");
  // Every alert of the rules file is exercised, firing (exp_alerts with labels) and not firing (exp_alerts: []).
  for (const alert of fs.readFileSync(rulesFile, "utf8").matchAll(/- alert: (\w+)/g)) {
    const cases = [...text.matchAll(new RegExp(`alertname: ${alert[1]}\\n\\s+exp_alerts:(.*)`, "g"))];
    assert.ok(
      cases.some((c) => c[1].trim() === ""),
      `${alert[1]}: a case where it fires`,
    );
    assert.ok(
      cases.some((c) => c[1].trim() === "[]"),
      `${alert[1]}: a case where it does not fire`,
    );
  }
  const out = ok(["test", "rules", ...tests], path.join(prom, "tests"));
  assert.match(out, /SUCCESS/);
});

test("promtool test rules fails when an alert's expectation is wrong (the unit tests are real)", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-promtest-"));
  const wrong = fs
    .readFileSync(path.join(prom, "tests", "flotilla-alerts.yml"), "utf8")
    .replace("../rules/flotilla.yml", rulesFile)
    .replace(
      "exp_labels: { severity: critical, iothub: h, edge_device: dev-1 }",
      "exp_labels: { severity: critical, iothub: h, edge_device: dev-2 }",
    );
  fs.writeFileSync(path.join(dir, "t.yml"), wrong);
  const r = runPromtool(["test", "rules", "t.yml"], dir);
  assert.notEqual(r.code, 0, r.out);
  assert.match(r.out, /FlotillaDiskLow/);
});

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: Array<{ expr: string; refId: string; datasource?: { uid: string } }>;
  panels?: Panel[];
}

function dashboard(): {
  uid: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query: unknown; datasource?: { uid: string } }> };
} {
  return JSON.parse(fs.readFileSync(dashboardFile, "utf8"));
}

function panels(): Panel[] {
  return dashboard()
    .panels.flatMap((p) => [p, ...(p.panels ?? [])])
    .filter((p) => p.type !== "row");
}

test("the Grafana dashboard is provisionable: a uid, its datasource a variable used by every panel and query", () => {
  const d = dashboard();
  assert.equal(d.uid, "flotilla-fleet");
  const ds = d.templating.list.find((v) => v.name === "datasource");
  assert.equal(ds?.type, "datasource");
  assert.equal(ds?.query, "prometheus");
  for (const v of d.templating.list.filter((x) => x.type === "query"))
    assert.equal(v.datasource?.uid, "${datasource}");
  const ps = panels();
  assert.ok(ps.length >= 15, `${ps.length} panels`);
  for (const p of ps) {
    assert.equal(p.datasource?.uid, "${datasource}", p.title);
    assert.ok(p.targets && p.targets.length > 0, `${p.title} has queries`);
    for (const t of p.targets) assert.equal(t.datasource?.uid, "${datasource}", `${p.title} ${t.refId}`);
  }
  const titles = ps.map((p) => p.title).join("\n");
  for (const want of [
    /participation/i,
    /^Round$/m,
    /Accuracy/,
    /Loss/,
    /ε/,
    /queue depth/i,
    /Oldest/,
    /Training seconds/,
    /Compression ratio/,
    /not reporting/i,
  ]) {
    assert.match(titles, want);
  }
  // The provisioning files name the dashboard's directory and a Prometheus datasource.
  const prov = path.join(monitoringDir, "grafana", "provisioning");
  assert.match(fs.readFileSync(path.join(prov, "dashboards", "flotilla.yml"), "utf8"), /type: file/);
  assert.match(
    fs.readFileSync(path.join(prov, "datasources", "flotilla-prometheus.yml"), "utf8"),
    /type: prometheus/,
  );
});

/** Every PromQL expression of the dashboard, Grafana's variables substituted. */
function dashboardExpressions(): Array<{ where: string; expr: string }> {
  const out: Array<{ where: string; expr: string }> = [];
  for (const p of panels()) {
    for (const t of p.targets ?? [])
      out.push({ where: `panel "${p.title}" ${t.refId}`, expr: substituteGrafanaVariables(t.expr) });
  }
  for (const v of dashboard().templating.list) {
    const q = (v.query as { query?: string } | undefined)?.query;
    const m = q ? /^label_values\((.+),\s*\w+\)$/.exec(q) : null;
    if (m) out.push({ where: `variable ${v.name}`, expr: m[1] });
  }
  return out;
}

/** The rules' expressions and recorded names. */
function rulesExpressions(): { exprs: Array<{ where: string; expr: string }>; recorded: Set<string> } {
  const text = fs.readFileSync(rulesFile, "utf8");
  const recorded = new Set([...text.matchAll(/- record: (\S+)/g)].map((m) => m[1]));
  const exprs: Array<{ where: string; expr: string }> = [];
  for (const m of text.matchAll(
    /- (record|alert): (\S+)\n(?:\s+#.*\n)*\s+expr: (\|\n((?:\s{10,}.*\n)+)|(.*)\n)/g,
  )) {
    exprs.push({ where: `${m[1]} ${m[2]}`, expr: (m[4] ?? m[5]).trim() });
  }
  return { exprs, recorded };
}

test("every panel's PromQL is valid: promtool check rules on a rules file made of them", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-dashrules-"));
  const exprs = dashboardExpressions();
  const rules = exprs.map(
    (e, i) => `      - record: dashboard:query_${i}\n        expr: ${JSON.stringify(e.expr)}\n`,
  );
  fs.writeFileSync(
    path.join(dir, "dashboard.yml"),
    `groups:\n  - name: dashboard\n    rules:\n${rules.join("")}`,
  );
  const r = runPromtool(["check", "rules", "dashboard.yml"], dir);
  assert.equal(r.code, 0, `${r.out}\n${exprs.map((e, i) => `${i}: ${e.where}: ${e.expr}`).join("\n")}`);
  assert.match(r.out, new RegExp(`SUCCESS: ${exprs.length} rules found`));
  // The check is real: a broken expression is refused.
  fs.writeFileSync(
    path.join(dir, "bad.yml"),
    `groups:\n  - name: d\n    rules:\n      - record: x\n        expr: "sum(rate(up[5m])"\n`,
  );
  assert.notEqual(runPromtool(["check", "rules", "bad.yml"], dir).code, 0);
});

test("the dashboard and the rules read only documented metrics and recording rules", () => {
  const documented = documentedMetricNames();
  const { exprs, recorded } = rulesExpressions();
  // Every rule's expression is parsed (records and alerts).
  assert.equal(
    exprs.length,
    recorded.size + [...fs.readFileSync(rulesFile, "utf8").matchAll(/- alert: /g)].length,
  );
  // Prometheus' own series: `up` of every target, ALERTS of the firing alerts.
  const builtin = new Set(["up", "ALERTS"]);
  const unknown: string[] = [];
  const used = new Set<string>();
  for (const { where, expr } of [...dashboardExpressions(), ...exprs]) {
    for (const n of metricNames(expr)) {
      const name = baseName(n, documented);
      used.add(name);
      if (!documented.has(name) && !recorded.has(name) && !builtin.has(name)) unknown.push(`${where}: ${n}`);
    }
  }
  assert.deepEqual(
    unknown,
    [],
    "metrics named by the dashboard or the rules that are neither documented nor recorded",
  );
  // The extraction sees names (not vacuous): module and aggregator metrics both.
  assert.ok(used.has("flotilla_update_queue_oldest_update_age_seconds"));
  assert.ok(used.has("flotilla_aggregator_eval_accuracy"));
  assert.deepEqual(
    [
      ...metricNames(
        'sum by (edge_device) (rate(a_total{x="y"}[5m])) / on (edge_device) b unless c offset 5m > 1e3',
      ),
    ].sort(),
    ["a_total", "b", "c"],
  );
});
