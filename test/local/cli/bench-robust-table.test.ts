/**
 * `flotilla bench robust-table` (issue 16): on a tiny grid (sensors, 2 attacks × 2 aggregators, one round) it writes
 * the JSON, the markdown table and the HTML heatmap with exactly the grid's cells, and a second run over a larger
 * grid runs only the missing cells (the finished ones are kept as they were). Bad flags are one coded line.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { CODED, run, scratch } from "./spawn-cli";
import {
  attackFlag,
  parseRobustTableOptions,
  planCells,
  splitAggregators,
} from "../../../local/cli/bench-robust-table";
import { renderHtml, renderMarkdown, type RobustTableFile } from "../../../local/report/robust-table";
import { isFlotillaError } from "../../../core/errors";

const tiny = [
  "bench",
  "robust-table",
  "--datasets",
  "sensors",
  "--devices",
  "5",
  "--rounds",
  "1",
  "--workers",
  "0",
  "--seeds",
  "7",
];

const read = (dir: string): RobustTableFile =>
  JSON.parse(fs.readFileSync(path.join(dir, "robust-table.json"), "utf8")) as RobustTableFile;

test("a tiny grid writes its cells to JSON, markdown and HTML, and a rerun runs only the missing cells", async () => {
  const tmp = scratch();
  const out = path.join(tmp, "table");
  const first = await run(
    [...tiny, "--attacks", "none,sign-flip", "--aggregators", "mean,median", "--out", out],
    tmp,
    300_000,
  );
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /robust table: 4 cells in the grid, 4 run, 0 already in /);
  const t1 = read(out);
  assert.equal(t1.version, 1);
  assert.deepEqual(
    t1.cells.map((c) => `${c.attack}/${c.aggregator}`),
    ["none/mean", "sign-flip/mean", "none/median", "sign-flip/median"],
  );
  for (const c of t1.cells) {
    assert.equal(c.dataset, "sensors");
    assert.equal(c.devices, 5);
    assert.equal(c.clientsPerRound, 5);
    assert.equal(c.rounds, 1);
    assert.equal(c.seed, 7);
    assert.equal(c.attackers, c.attack === "none" ? 0 : 0.2);
    assert.ok(
      c.finalAccuracy !== null && c.finalAccuracy >= 0 && c.finalAccuracy <= 1,
      String(c.finalAccuracy),
    );
    assert.equal(c.accuracyPerRound.length, 1);
    assert.equal(c.status, "completed");
    assert.match(c.command, /^npx flotilla simulate --dataset sensors --model mlp --devices 5 /);
    assert.match(c.command, / --seed 7 /);
    if (c.aggregator === "median") assert.match(c.command, / --aggregator median /);
    else assert.doesNotMatch(c.command, /--aggregator/);
    if (c.attack === "sign-flip") {
      assert.match(c.command, / --attack sign-flip:0\.2 /);
      // The job's own record: sign-flip's default S = 1, ⌈0.2 · 5⌉ = 1 attacker (the same for both aggregators).
      assert.equal(c.attackParam, 1);
      assert.equal(c.attackerDevices?.length, 1);
    } else {
      assert.doesNotMatch(c.command, /--attack/);
      assert.equal(c.attackerDevices, undefined);
    }
  }
  const md = fs.readFileSync(path.join(out, "robust-table.md"), "utf8");
  assert.match(
    md,
    /^### sensors: mlp, natural partition, 5 devices \(5 per round\), 1 rounds? of 1 local epoch, 20% attackers \(1 of 5 devices\), seed 7$/m,
  );
  assert.match(md, /^\| attack \| `mean` \| `median` \|$/m);
  const pct = (v: number | null) => (v! * 100).toFixed(1);
  const cell = (attack: string, agg: string) =>
    t1.cells.find((c) => c.attack === attack && c.aggregator === agg)!.finalAccuracy;
  // The clean baseline is within 0 points of itself: bold.
  assert.match(md, new RegExp(`^\\| none \\| \\*\\*${pct(cell("none", "mean"))}\\*\\* \\| `, "m"));
  assert.match(
    md,
    new RegExp(`^\\| sign-flip \\| (\\*\\*)?${pct(cell("sign-flip", "mean"))}(\\*\\*)? \\| `, "m"),
  );
  assert.match(md, /^\| worst attack \| /m);
  const html = fs.readFileSync(path.join(out, "robust-table.html"), "utf8");
  assert.match(html, /<th>sign-flip<\/th>/);
  assert.equal((html.match(/<td style=/g) ?? []).length, 4 + 2, "4 cells and the worst-attack row");

  // Resume: a grid with one more aggregator runs its 2 cells only; the 4 finished cells are kept as they were.
  const second = await run(
    [...tiny, "--attacks", "none,sign-flip", "--aggregators", "mean;median;trimmed-mean:1", "--out", out],
    tmp,
    300_000,
  );
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stdout, /robust table: 6 cells in the grid, 2 run, 4 already in /);
  const t2 = read(out);
  assert.equal(t2.cells.length, 6);
  assert.deepEqual(t2.cells.slice(0, 4), t1.cells);
  assert.deepEqual(
    t2.cells.slice(4).map((c) => `${c.attack}/${c.aggregator}`),
    ["none/trimmed-mean:1", "sign-flip/trimmed-mean:1"],
  );
  // A third run of a grid already done runs nothing.
  const third = await run([...tiny, "--attacks", "sign-flip", "--aggregators", "median", "--out", out], tmp);
  assert.equal(third.code, 0, third.stderr);
  assert.match(third.stdout, /robust table: 1 cells in the grid, 0 run, 1 already in /);
  assert.equal(read(out).cells.length, 6);
});

test("bad flags are one coded line, before anything runs", async () => {
  const tmp = scratch();
  const bad = path.join(tmp, "bad");
  fs.mkdirSync(bad);
  fs.writeFileSync(path.join(bad, "robust-table.json"), "{ not json");
  const cases: [string[], RegExp][] = [
    [["--datasets", "cifar"], /E_CONFIG_BENCH: unknown dataset 'cifar'/],
    [["--attacks", "none,teleport"], /E_CONFIG_BENCH: unknown attack 'teleport'/],
    [["--attacks", "ipm:-1"], /E_CONFIG_BENCH: attack 'ipm:-1': the parameter must be a positive number/],
    [["--aggregators", "mean,krum:0.7"], /E_CONFIG_AGGREGATOR: invalid aggregator 'krum:0.7'/],
    [["--aggregators", "avg"], /E_CONFIG_AGGREGATOR: invalid aggregator 'avg': unknown rule 'avg'/],
    [["--seeds", "1,x"], /E_CONFIG_VALUE: --seeds must be a non-negative integer, got 'x'/],
    [["--attackers", "0.5"], /E_CONFIG_BENCH: --attackers is a fraction of the devices below 0.5/],
    [["--rounds", "0"], /E_CONFIG_VALUE: --rounds must be a positive integer/],
    [["--rounds", "1e9"], /E_CONFIG_RANGE: --rounds must be at most/],
    [
      ["--out", bad, "--datasets", "sensors", "--attacks", "none", "--aggregators", "mean"],
      /E_CONFIG_BENCH: .*robust-table\.json: not JSON/,
    ],
    [["--rounds"], /E_CONFIG_MISSING_ARGUMENT/],
  ];
  for (const [args, want] of cases) {
    const r = await run(["bench", "robust-table", "--out", path.join(tmp, "never"), ...args], tmp);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, CODED);
    assert.match(lines[0]!, want);
    assert.equal(r.stdout, "");
  }
  // Nothing ran: the out directory of the refused runs holds no table.
  assert.equal(fs.existsSync(path.join(tmp, "never", "robust-table.json")), false);
});

test("the grid: aggregator lists keep multi-krum's F,M; each cell's simulate flags match its command", () => {
  assert.deepEqual(splitAggregators("mean,multi-krum:0.2,0.8,median"), [
    "mean",
    "multi-krum:0.2,0.8",
    "median",
  ]);
  assert.deepEqual(splitAggregators("norm:q0.5+centered-clip:1 ; geomed"), [
    "norm:q0.5+centered-clip:1",
    "geomed",
  ]);
  assert.equal(attackFlag("ipm:100", 0.2), "ipm:0.2:100");
  assert.equal(attackFlag("alie", 0.25), "alie:0.25");
  const opts = parseRobustTableOptions({
    datasets: "mnist,sensors",
    attacks: "none,ipm:0.1",
    aggregators: "mean,default",
    seeds: "1,2",
  });
  const cells = planCells(opts);
  assert.equal(cells.length, 2 * 2 * 2 * 2);
  assert.equal(new Set(cells.map((c) => c.key)).size, cells.length, "keys are unique");
  for (const c of cells) {
    const flags = c.cell.command.replace(/^npx flotilla simulate /, "");
    for (const [k, v] of Object.entries(c.simOptions)) {
      if (k === "fleetEval") assert.match(flags, / --no-fleet-eval$/);
      else assert.ok(flags.includes(` ${v}`), `${k}=${String(v)} in ${flags}`);
    }
    assert.equal(c.cell.clientsPerRound, c.cell.devices);
  }
  const mnist = cells.find((c) => c.cell.dataset === "mnist" && c.cell.attack === "ipm:0.1")!;
  assert.equal(mnist.simOptions.attack, "ipm:0.2:0.1");
  assert.equal(mnist.simOptions.partition, "iid");
  assert.throws(
    () => parseRobustTableOptions({ datasets: "" }),
    (e: unknown) => isFlotillaError(e) && e.code === "E_CONFIG_BENCH",
  );
});

test("the markdown table: bold within 3 points of the clean mean, div. for a diverged model, the backdoor row", () => {
  const base = {
    dataset: "mnist",
    model: "mlp",
    partition: "iid",
    seed: 1,
    devices: 20,
    clientsPerRound: 20,
    rounds: 12,
    localEpochs: 1,
    accuracyPerRound: [],
    status: "completed",
    wallMs: 1,
    command: "npx flotilla simulate",
    finishedAt: "2026-12-07T00:00:00.000Z",
  };
  const cell = (
    attack: string,
    aggregator: string,
    finalAccuracy: number | null,
    backdoorSuccess?: number,
  ) => ({
    ...base,
    attack,
    aggregator,
    attackers: attack === "none" ? 0 : 0.2,
    finalAccuracy,
    ...(backdoorSuccess !== undefined ? { backdoorSuccess } : {}),
  });
  const cells = [
    cell("none", "mean", 0.92),
    cell("none", "median", 0.885),
    cell("backdoor", "mean", 0.91, 0.97),
    cell("backdoor", "median", 0.9, 0.04),
    cell("alie", "mean", null),
    cell("alie", "median", 0.1),
    // A second seed of one cell: the table shows the mean.
    { ...cell("none", "median", 0.895), seed: 2 },
  ];
  const md = renderMarkdown(cells, "median");
  assert.match(md, /Clean baseline \(mean, no attack\): \*\*92\.0%\*\*/);
  assert.match(md, /The default \(`--aggregator default`\) is `median`\./);
  assert.match(md, /^\| none \| \*\*92\.0\*\* \| \*\*89\.0\*\* \|$/m);
  assert.match(md, /^\| alie \| div\. \| 10\.0 \|$/m);
  assert.match(md, /^\| backdoor \| \*\*91\.0\*\* \| \*\*90\.0\*\* \|$/m);
  assert.match(md, /^\| backdoor success \(%\) \| 97\.0 \| \*\*4\.0\*\* \|$/m);
  assert.match(md, /^\| worst attack \| div\. \| 10\.0 \|$/m);
  // Rows in the attack order of the issue, whatever order the cells came in.
  assert.ok(
    md.indexOf("| none |") < md.indexOf("| alie |") && md.indexOf("| alie |") < md.indexOf("| backdoor |"),
  );
  assert.match(md, /seeds 1, 2/);
  const html = renderHtml(cells, { defaultAggregator: "median" });
  assert.match(html, /<th class="default">median<\/th>/);
  assert.match(html, /<th>backdoor success<\/th>/);
});
