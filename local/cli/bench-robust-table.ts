/**
 * `flotilla bench robust-table` (issue 16): the Byzantine-robustness benchmark table, after Blades (Li et al. 2024):
 * every attack × every aggregator on MNIST (mlp, IID) and the sensors data, with a fraction of the fleet attacking,
 * each cell one simulated job (the memory transport, in this process: local/sim/simulate.ts) run to its final test
 * accuracy (and, under the backdoor attack, its backdoor success rate).
 *
 * Every device takes part in every round (clients per round = devices), so every round has its attackers.
 * Output, in --out: robust-table.json (every finished cell with its own `flotilla simulate` command; a run skips
 * the cells already in it, so an interrupted run resumes), robust-table.md (the tables) and robust-table.html (a
 * heatmap), rewritten after every cell; with --png, a screenshot of the heatmap (headless Chromium, as
 * scripts/dashboard-screenshot.ts takes the dashboard's).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fail } from "../../core/errors";
import { DEFAULT_AGGREGATOR, formatAggregator, parseAggregator } from "../../core/robust/spec";
import { nonNegativeInt, positiveInt, positiveNumber, SIM_LIMITS, type SimConfig } from "../sim/config";
import type { SimulationResult } from "../sim/simulate";
import {
  ATTACK_ORDER,
  cellKey,
  renderHtml,
  renderMarkdown,
  type RobustCell,
  type RobustTableFile,
} from "../report/robust-table";

type RawOptions = Record<string, string | boolean | undefined>;

/** Each dataset's job: model, partition and the rounds it needs to converge (20 devices, all in every round). */
export const TABLE_DATASETS: Record<
  string,
  {
    readonly model: string;
    readonly partition?: string;
    readonly rounds: number;
    readonly localEpochs: number;
  }
> = {
  mnist: { model: "mlp", partition: "iid", rounds: 10, localEpochs: 1 },
  sensors: { model: "mlp", rounds: 8, localEpochs: 1 },
};

/** The attacks of the table: kind[:param] (the fraction of attackers is --attackers). "none": the clean run. */
export const TABLE_ATTACKS = ATTACK_ORDER;
const ATTACK_KINDS = ["none", "sign-flip", "gaussian", "scaling", "label-flip", "alie", "ipm", "backdoor"];

/** The aggregators of the table: Blades' rules with their usual parameters (f = the 20% attackers), and candidates for the default. */
export const TABLE_AGGREGATORS = [
  "mean",
  "median",
  "trimmed-mean:0.2",
  "geomed",
  "krum:0.2",
  "multi-krum:0.2,0.8",
  "centered-clip:1",
  "fltrust",
  "norm:q0.5+mean",
  "norm:q0.5+centered-clip:1",
  "norm:q0.5+trimmed-mean:0.2",
  "norm:q0.5+multi-krum:0.2,0.8",
];

export interface RobustTableOptions {
  readonly datasets: readonly string[];
  readonly attacks: readonly string[];
  readonly aggregators: readonly string[];
  readonly seeds: readonly number[];
  /** Rounds of every dataset's job (unset: each dataset's own, TABLE_DATASETS). */
  readonly rounds?: number;
  readonly devices: number;
  /** Fraction of the devices that attack (default 0.2). */
  readonly attackers: number;
  readonly localEpochs?: number;
  /** Worker threads of each job (0: its devices train in this process's main thread). */
  readonly workers: number;
  readonly out: string;
  /** Write a PNG of the heatmap here. */
  readonly png?: string;
}

const list = (flag: string, raw: string | boolean | undefined, fallback: readonly string[]): string[] => {
  if (raw === undefined) return [...fallback];
  const v = String(raw)
    .split(/[\s,;]+/)
    .map((x) => x.trim())
    .filter(Boolean);
  if (v.length === 0) fail("E_CONFIG_BENCH", `--${flag} needs at least one value`);
  return [...new Set(v)];
};

/**
 * Splits an --aggregators list: specs are separated by spaces or semicolons, or by commas that do not belong to a
 * multi-krum F,M pair ("mean,multi-krum:0.2,0.8,median" is mean, multi-krum:0.2,0.8 and median).
 */
export function splitAggregators(raw: string): string[] {
  const parts = raw.split(/[\s;]+/).flatMap((chunk) => chunk.split(","));
  const out: string[] = [];
  for (const p of parts.map((x) => x.trim()).filter(Boolean)) {
    const prev = out[out.length - 1];
    // The M of multi-krum:F,M: a bare number after a multi-krum spec that has only its F.
    if (prev !== undefined && /multi-krum:[^,]+$/.test(prev) && /^[\d.eE+-]+$/.test(p))
      out[out.length - 1] = `${prev},${p}`;
    else out.push(p);
  }
  return out;
}

/** Checks one attack of --attacks: kind[:param] with a known kind and a positive number as its parameter. */
export function checkAttack(a: string): string {
  const [kind, param, ...rest] = a.split(":");
  if (!ATTACK_KINDS.includes(kind!) || rest.length > 0 || (kind === "none" && param !== undefined))
    fail(
      "E_CONFIG_BENCH",
      `unknown attack '${a}' in --attacks (expected none or ${ATTACK_KINDS.slice(1).join(", ")}, with an optional :PARAM)`,
    );
  if (param !== undefined && !(Number(param) > 0 && Number.isFinite(Number(param))))
    fail("E_CONFIG_BENCH", `attack '${a}': the parameter must be a positive number, got '${param}'`);
  return a;
}

/** Parses and checks the command's flags: every bad value is one coded line before anything runs. */
export function parseRobustTableOptions(o: RawOptions): RobustTableOptions {
  const datasets = list("datasets", o.datasets, Object.keys(TABLE_DATASETS));
  for (const d of datasets)
    if (!(d in TABLE_DATASETS))
      fail(
        "E_CONFIG_BENCH",
        `unknown dataset '${d}' in --datasets (expected ${Object.keys(TABLE_DATASETS).join(", ")})`,
      );
  const attacks = list("attacks", o.attacks, TABLE_ATTACKS).map(checkAttack);
  const aggregators =
    o.aggregators === undefined
      ? [...TABLE_AGGREGATORS]
      : [...new Set(splitAggregators(String(o.aggregators)))];
  if (aggregators.length === 0) fail("E_CONFIG_BENCH", "--aggregators needs at least one value");
  // One E_CONFIG_AGGREGATOR line for a bad spec; the table names each as written ("default" stays "default").
  const named = aggregators.map((a) =>
    a.toLowerCase() === "default" ? "default" : formatAggregator(parseAggregator(a)),
  );
  const seeds = list("seeds", o.seeds, ["42"]).map((s) => nonNegativeInt("seeds", s, SIM_LIMITS.seed));
  const rounds =
    o.rounds === undefined ? undefined : positiveInt("rounds", o.rounds as string, SIM_LIMITS.rounds);
  const devices = positiveInt("devices", (o.devices as string | undefined) ?? "20", SIM_LIMITS.devices);
  const attackers = positiveNumber("attackers", (o.attackers as string | undefined) ?? "0.2");
  if (!(attackers < 0.5))
    fail("E_CONFIG_BENCH", `--attackers is a fraction of the devices below 0.5, got ${attackers}`);
  const localEpochs =
    o.localEpochs === undefined
      ? undefined
      : positiveInt("local-epochs", o.localEpochs as string, SIM_LIMITS.localEpochs);
  // Default 0: each job trains its devices in this process's main thread (no worker threads to start per cell).
  const workers = nonNegativeInt("workers", (o.workers as string | undefined) ?? "0", SIM_LIMITS.workers);
  const out = (o.out as string | undefined) ?? path.join("bench-out", "robust-table");
  const png =
    o.png === undefined || o.png === false
      ? undefined
      : o.png === true
        ? path.join(out, "robust-table.png")
        : String(o.png);
  return {
    datasets,
    attacks,
    aggregators: named,
    seeds,
    devices,
    attackers,
    out,
    ...(rounds !== undefined ? { rounds } : {}),
    ...(localEpochs !== undefined ? { localEpochs } : {}),
    workers,
    ...(png !== undefined ? { png } : {}),
  };
}

/** One cell to run: its identity (as stored) and the `flotilla simulate` flags that run it. */
export interface PlannedCell {
  readonly cell: Omit<
    RobustCell,
    "finalAccuracy" | "backdoorSuccess" | "accuracyPerRound" | "status" | "wallMs" | "finishedAt"
  >;
  readonly key: string;
  /** The simulate command's options, as commander hands them over (local/cli/main.ts buildSimConfig). */
  readonly simOptions: RawOptions;
}

/** The attack flag of the simulator for a table attack: KIND:FRACTION[:PARAM]. */
export function attackFlag(attack: string, fraction: number): string {
  const [kind, param] = attack.split(":");
  return param === undefined ? `${kind}:${fraction}` : `${kind}:${fraction}:${param}`;
}

const FLAG_OF: Record<string, string> = {
  dataset: "--dataset",
  model: "--model",
  partition: "--partition",
  devices: "--devices",
  clientsPerRound: "--clients-per-round",
  rounds: "--rounds",
  localEpochs: "--local-epochs",
  seed: "--seed",
  workers: "--workers",
  aggregator: "--aggregator",
  attack: "--attack",
};

const shellWord = (s: string) => (/^[\w:.,+=/@%-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/**
 * The cells of the grid, dataset by dataset, then aggregator by aggregator (a column at a time, in the order
 * given: a run stopped early has whole columns), attack by attack, seed by seed.
 */
export function planCells(opts: RobustTableOptions): PlannedCell[] {
  const cells: PlannedCell[] = [];
  for (const dataset of opts.datasets) {
    const d = TABLE_DATASETS[dataset]!;
    for (const aggregator of opts.aggregators)
      for (const attack of opts.attacks)
        for (const seed of opts.seeds) {
          const cell = {
            dataset,
            model: d.model,
            partition: d.partition ?? "natural",
            attack,
            aggregator,
            seed,
            devices: opts.devices,
            clientsPerRound: opts.devices,
            rounds: opts.rounds ?? d.rounds,
            localEpochs: opts.localEpochs ?? d.localEpochs,
            attackers: attack === "none" ? 0 : opts.attackers,
          };
          const flags: Record<string, string> = {
            dataset,
            model: d.model,
            ...(d.partition ? { partition: d.partition } : {}),
            devices: String(cell.devices),
            clientsPerRound: String(cell.clientsPerRound),
            rounds: String(cell.rounds),
            localEpochs: String(cell.localEpochs),
            seed: String(seed),
            workers: String(opts.workers),
            ...(aggregator !== "mean" ? { aggregator } : {}),
            ...(attack !== "none" ? { attack: attackFlag(attack, opts.attackers) } : {}),
          };
          const command = [
            "npx flotilla simulate",
            ...Object.entries(flags).map(([k, v]) => `${FLAG_OF[k]} ${shellWord(v)}`),
            "--no-fleet-eval",
          ].join(" ");
          cells.push({
            cell: { ...cell, command },
            key: cellKey(cell),
            simOptions: { ...flags, fleetEval: false },
          });
        }
  }
  return cells;
}

export const TABLE_FILES = {
  json: "robust-table.json",
  md: "robust-table.md",
  html: "robust-table.html",
} as const;

/** Reads the table's JSON (a missing file is an empty table; anything else unreadable is one E_CONFIG_BENCH line). */
export function readTable(file: string): RobustTableFile {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, cells: [] };
    fail("E_CONFIG_BENCH", `${file}: cannot read: ${(e as Error).message.split("\n")[0]}`, { cause: e });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    fail(
      "E_CONFIG_BENCH",
      `${file}: not JSON (${(e as Error).message.split("\n")[0]}); move it away to start a new table`,
      {
        cause: e,
      },
    );
  }
  const t = parsed as Partial<RobustTableFile>;
  if (!t || t.version !== 1 || !Array.isArray(t.cells))
    fail("E_CONFIG_BENCH", `${file}: not a robust table (expected {"version": 1, "cells": [...]})`);
  return t as RobustTableFile;
}

/** Writes the JSON (atomically: a half-written file never replaces a good one), the markdown and the HTML. */
export function writeTable(out: string, table: RobustTableFile): void {
  const json = path.join(out, TABLE_FILES.json);
  fs.writeFileSync(`${json}.tmp`, JSON.stringify(table, null, 2) + "\n");
  fs.renameSync(`${json}.tmp`, json);
  const def = formatAggregator(parseAggregator(DEFAULT_AGGREGATOR));
  fs.writeFileSync(path.join(out, TABLE_FILES.md), renderMarkdown(table.cells, def));
  fs.writeFileSync(path.join(out, TABLE_FILES.html), renderHtml(table.cells, { defaultAggregator: def }));
}

/** The backdoor success rate a job reports (the attack's own figure in results.json), if any. */
export function backdoorSuccessOf(result: SimulationResult): number | undefined {
  const v = result.final.backdoorSuccess ?? result.rounds[result.rounds.length - 1]?.backdoorSuccess;
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

const finite = (v: number) => (Number.isFinite(v) ? Math.round(v * 1e4) / 1e4 : null);

export interface RobustTableProgress {
  /** The run starts: the cells to run (not already in the table) and their rounds in all. */
  onStart?(cells: number, rounds: number): void;
  /** A cell starts: its index among the cells to run, how many there are, and its planned rounds. */
  onCellStart?(i: number, total: number, c: PlannedCell): void;
  /** A round of the running cell closed. */
  onRound?(round: number, accuracy: number): void;
  onCellEnd?(i: number, total: number, c: RobustCell): void;
}

export interface RobustTableRun {
  readonly planned: number;
  /** Cells already in the JSON, not run again. */
  readonly reused: number;
  readonly ran: number;
  readonly table: RobustTableFile;
  readonly files: string[];
}

/**
 * Runs the grid's missing cells one after the other and rewrites the table's files after each. `buildConfig`
 * turns a cell's simulate options into its SimConfig exactly as `flotilla simulate` does (local/cli/main.ts).
 */
export async function runRobustTable(
  opts: RobustTableOptions,
  buildConfig: (o: RawOptions) => SimConfig,
  progress: RobustTableProgress = {},
): Promise<RobustTableRun> {
  const planned = planCells(opts);
  // Every cell's config is checked before the first one runs (one E_CONFIG_* line for a bad combination).
  for (const p of planned) buildConfig({ ...p.simOptions, out: os.tmpdir() });
  fs.mkdirSync(opts.out, { recursive: true });
  const jsonFile = path.join(opts.out, TABLE_FILES.json);
  const table = readTable(jsonFile);
  const done = new Set(table.cells.map((c) => cellKey(c)));
  const todo = planned.filter((p) => !done.has(p.key));
  const { simulate } = await import("../sim/simulate.js");
  progress.onStart?.(
    todo.length,
    todo.reduce((a, p) => a + p.cell.rounds, 0),
  );
  let ran = 0;
  for (const [i, p] of todo.entries()) {
    progress.onCellStart?.(i, todo.length, p);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-robust-cell-"));
    const t0 = performance.now();
    let result: SimulationResult;
    try {
      const config = buildConfig({ ...p.simOptions, out: dir });
      result = await simulate(config, { onRoundEnd: (r) => progress.onRound?.(r.round, r.accuracy) });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const bd = p.cell.attack.split(":")[0] === "backdoor" ? backdoorSuccessOf(result) : undefined;
    const attack = result.attack;
    const cell: RobustCell = {
      ...p.cell,
      ...(attack?.param !== undefined ? { attackParam: attack.param } : {}),
      ...(attack ? { attackerDevices: attack.attackers } : {}),
      finalAccuracy: finite(result.final.accuracy),
      ...(bd !== undefined
        ? {
            backdoorSuccess: finite(bd) ?? undefined,
            backdoorPerRound: result.rounds.map((r) => finite(r.backdoorSuccess ?? NaN)),
          }
        : {}),
      accuracyPerRound: result.rounds.map((r) => finite(r.accuracy)),
      status: result.status?.state ?? "completed",
      wallMs: Math.round(performance.now() - t0),
      finishedAt: new Date().toISOString(),
    };
    table.cells.push(cell);
    writeTable(opts.out, table);
    ran++;
    progress.onCellEnd?.(i, todo.length, cell);
  }
  writeTable(opts.out, table);
  const files = Object.values(TABLE_FILES).map((f) => path.join(opts.out, f));
  if (opts.png) {
    await renderPng(path.join(opts.out, TABLE_FILES.html), opts.png);
    files.push(opts.png);
  }
  return { planned: planned.length, reused: planned.length - todo.length, ran, table, files };
}

/** A PNG of the heatmap page, by headless Chromium (Debian's chromium through playwright-core). */
export async function renderPng(htmlFile: string, pngFile: string): Promise<void> {
  const { chromiumPath } = await import("../dashboard/chromium.js");
  const executablePath = chromiumPath();
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({ executablePath, headless: true });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 }, deviceScaleFactor: 1 });
    await page.goto(`file://${path.resolve(htmlFile)}`);
    fs.mkdirSync(path.dirname(path.resolve(pngFile)), { recursive: true });
    // The page's content only (its body shrinks to the tables), not the whole viewport.
    await page.locator("body").screenshot({ path: pngFile });
  } finally {
    await browser.close();
  }
}
