/**
 * local/monitoring/prometheus.ts, the starter of `--prometheus`: it runs the repository's local.yml and rules as
 * they are over file_sd targets it writes, Prometheus picks up target changes, stops cleanly, and a missing binary
 * is one clear error (E_PROMETHEUS, with how to install it). And the CLI flag: validated, and without Prometheus
 * the stack still runs.
 */
import { afterAll, expect, test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  findPrometheus,
  moduleTargetGroups,
  PROMETHEUS_CONFIG_DIR,
  startPrometheus,
  type LocalPrometheus,
} from "../../../local/monitoring/prometheus";
import { ModuleMetrics, serveMetrics, type MetricsServer } from "../../../modules/shared/metrics";
import { prometheusBinary } from "../../monitoring/promtool";
import { waitFor } from "../stack/fault-support";
import { CODED, run } from "../cli/spawn-cli";

const tmp = (p: string) => fs.mkdtempSync(path.join(os.tmpdir(), p));
const cleanup: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

test("file_sd groups: one target per distinct URL, labelled with its device and module", () => {
  const groups = moduleTargetGroups([
    { deviceId: "d1", module: "trainer", url: "http://127.0.0.1:4001/metrics" },
    { deviceId: "d1", module: "quantizer", url: "http://127.0.0.1:4002/metrics" },
    // A launcher serving a device's modules at one URL: listed once, with its device only.
    { deviceId: "d2", module: "trainer", url: "http://127.0.0.1:4003/metrics" },
    { deviceId: "d2", module: "profiler", url: "http://127.0.0.1:4003/metrics" },
  ]);
  assert.deepEqual(groups, [
    { targets: ["127.0.0.1:4001"], labels: { edge_device: "d1", module_name: "trainer" } },
    { targets: ["127.0.0.1:4002"], labels: { edge_device: "d1", module_name: "quantizer" } },
    { targets: ["127.0.0.1:4003"], labels: { edge_device: "d2" } },
  ]);
  expect(() =>
    moduleTargetGroups([{ deviceId: "d", module: "trainer", url: "http://127.0.0.1:1/other" }]),
  ).toThrow(/E_CONFIG_VALUE|must be served at \/metrics/);
});

test("a missing prometheus is one coded error saying how to install it", async () => {
  assert.equal(findPrometheus({ FLOTILLA_PROMETHEUS: "/nonexistent/prometheus", PATH: "" }), undefined);
  await expect(
    startPrometheus(
      { modules: [] },
      { dir: tmp("flotilla-prom-missing-"), binary: "/nonexistent/prometheus" },
    ),
  ).rejects.toMatchObject({
    code: "E_PROMETHEUS",
    message: expect.stringMatching(/exited before it was ready/),
  });
  const saved = { ...process.env };
  try {
    process.env.FLOTILLA_PROMETHEUS = "/nonexistent/prometheus";
    await expect(
      startPrometheus({ modules: [] }, { dir: tmp("flotilla-prom-missing-") }),
    ).rejects.toMatchObject({
      code: "E_PROMETHEUS",
      message: expect.stringContaining("apt-get install -y prometheus"),
    });
  } finally {
    process.env.FLOTILLA_PROMETHEUS = saved.FLOTILLA_PROMETHEUS;
    if (saved.FLOTILLA_PROMETHEUS === undefined) delete process.env.FLOTILLA_PROMETHEUS;
  }
});

test("the starter runs local.yml as it is over module endpoints, follows target changes, and stops", async () => {
  const binary = prometheusBinary();
  const servers: MetricsServer[] = [];
  cleanup.push(async () => {
    for (const s of servers) await s.close();
  });
  const endpoint = async (device: string) => {
    const m = new ModuleMetrics({
      module: "trainer",
      labels: { iothub: "hub", edge_device: device, instance_number: "i", module_name: "trainer" },
    });
    m.counter("rounds_started_total", "Rounds").inc(3);
    const s = await serveMetrics(() => [m], { port: 0, host: "127.0.0.1" });
    servers.push(s);
    return { deviceId: device, module: "trainer", url: s.url };
  };
  const a = await endpoint("dev-a");
  const dir = tmp("flotilla-prom-starter-");
  const prom: LocalPrometheus = await startPrometheus({ modules: [a] }, { dir, binary });
  cleanup.push(() => prom.close());
  // The run directory holds the repository's configuration unchanged.
  assert.equal(
    fs.readFileSync(path.join(dir, "prometheus.yml"), "utf8"),
    fs.readFileSync(path.join(PROMETHEUS_CONFIG_DIR, "local.yml"), "utf8"),
  );
  assert.ok(fs.existsSync(path.join(dir, "rules", "flotilla.yml")));
  const q = async (expr: string) => {
    const r = (await (await fetch(`${prom.url}/api/v1/query?query=${encodeURIComponent(expr)}`)).json()) as {
      data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
    };
    return r.data.result;
  };
  const seen = await waitFor(
    "dev-a's counter in Prometheus",
    async () =>
      (await q("flotilla_trainer_rounds_started_total")).find((s) => s.metric.edge_device === "dev-a"),
    30_000,
    250,
  );
  assert.equal(seen.value[1], "3");
  assert.equal(seen.metric.module_name, "trainer");
  assert.equal(seen.metric.iothub, "hub");
  // `up` gets the device from its target.
  const up = await waitFor("up of dev-a", async () => (await q('up{edge_device="dev-a"}'))[0], 30_000, 250);
  assert.equal(up.metric.job, "flotilla-modules");
  // A second device's endpoint written later is scraped too (file_sd refresh).
  const b = await endpoint("dev-b");
  prom.setTargets({ modules: [a, b] });
  await waitFor(
    "dev-b's counter",
    async () => (await q('flotilla_trainer_rounds_started_total{edge_device="dev-b"}')).length === 1,
    30_000,
    250,
  );
  const pid = prom.pid!;
  await prom.close();
  assert.throws(() => process.kill(pid, 0), /ESRCH/);
  assert.match(
    fs.readFileSync(path.join(dir, "prometheus.log"), "utf8"),
    /Server is ready to receive web requests/,
  );
}, 120_000);

test("--prometheus: a bad port or the memory transport is one coded line", async () => {
  const cwd = tmp("flotilla-prom-cli-");
  for (const [args, pattern] of [
    [
      ["simulate", "--prometheus", "http"],
      /E_CONFIG_VALUE: --prometheus must be a non-negative integer, got 'http'/,
    ],
    [["simulate", "--prometheus", "70000", "--transport", "iothub"], /E_CONFIG_RANGE: --prometheus/],
    [["simulate", "--prometheus"], /E_CONFIG_CONFLICT: --prometheus .*needs --transport iothub/],
  ] as const) {
    const r = await run([...args], cwd);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], CODED);
    assert.match(lines[0], pattern);
  }
});

test("npm start --prometheus without Prometheus installed: one line how to install it, and the stack runs", async () => {
  const cwd = tmp("flotilla-prom-none-");
  const out = path.join(cwd, "out");
  const r = await runWithEnv(
    [
      ...["simulate", "--preset", "default", "--prometheus", "--devices", "3", "--clients-per-round", "2"],
      ...["--rounds", "1", "--samples-per-device", "30", "--out", out],
    ],
    cwd,
    { FLOTILLA_PROMETHEUS: "/nonexistent/prometheus" },
  );
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("prometheus:"));
  assert.deepEqual(lines, [
    "prometheus: not installed, the stack runs without it (apt-get install -y prometheus)",
  ]);
  assert.match(r.stdout, /done: 1 rounds/);
}, 240_000);

async function runWithEnv(args: string[], cwd: string, env: Record<string, string>) {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    return await run(args, cwd, 200_000);
  } finally {
    for (const k of Object.keys(env)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}

test("npm start --prometheus: Prometheus runs beside the job, its URL printed, and stops with the stack", async () => {
  prometheusBinary();
  const cwd = tmp("flotilla-prom-run-");
  const out = path.join(cwd, "out");
  const r = await run(
    [
      ...[
        "simulate",
        "--preset",
        "default",
        "--prometheus",
        "0",
        "--devices",
        "3",
        "--clients-per-round",
        "2",
      ],
      ...["--rounds", "2", "--samples-per-device", "30", "--out", out],
    ],
    cwd,
    200_000,
  );
  assert.equal(r.code, 0, r.stderr);
  const line = r.stdout.split("\n").find((l) => l.startsWith("prometheus:"));
  assert.match(
    line ?? "",
    /^prometheus: http:\/\/127\.0\.0\.1:\d+ \(12 module endpoints and the Function, every 2 s; data in .*out\/prometheus\)$/,
  );
  assert.match(r.stdout, /done: 2 rounds/);
  // Its run directory: the configuration, rules, targets (3 devices × 4 modules, and the Function), and a TSDB.
  const dir = path.join(out, "prometheus");
  const targets = JSON.parse(fs.readFileSync(path.join(dir, "targets", "modules.json"), "utf8")) as unknown[];
  assert.equal(targets.length, 12);
  assert.equal(
    (JSON.parse(fs.readFileSync(path.join(dir, "targets", "function.json"), "utf8")) as unknown[]).length,
    1,
  );
  assert.ok(fs.existsSync(path.join(dir, "data")));
  // It stopped cleanly with the stack (Prometheus logs this last on SIGTERM).
  assert.match(fs.readFileSync(path.join(dir, "prometheus.log"), "utf8"), /See you next time!/);
}, 240_000);
