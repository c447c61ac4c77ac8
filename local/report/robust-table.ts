/**
 * The robustness benchmark table (issue 16; `flotilla bench robust-table`, local/cli/bench-robust-table.ts): one
 * simulated job per cell (dataset × attack × aggregator × seed), laid out as in Blades (Li et al., "Blades: A
 * Unified Benchmark Suite for Byzantine Attacks and Defenses in Federated Learning", 2024): rows the attacks,
 * columns the aggregators, the final test accuracy in each cell, and the clean baseline (plain FedAvg's mean, no
 * attack) that a cell must stay within 3 points of. The backdoor row adds the backdoor success rate.
 *
 * This module only lays out the cells it is given (markdown and a self-contained HTML heatmap); it runs nothing.
 */
import { esc } from "./report";

/** One finished cell of the table: a simulated job and what it ended at. */
export interface RobustCell {
  readonly dataset: string;
  readonly model: string;
  readonly partition: string;
  /** "none" (no attack), or the attack as the grid names it (kind[:param], e.g. "ipm:0.1"). */
  readonly attack: string;
  /** The aggregator as the grid names it ("default" stays "default"). */
  readonly aggregator: string;
  readonly seed: number;
  readonly devices: number;
  readonly clientsPerRound: number;
  readonly rounds: number;
  readonly localEpochs: number;
  /** Fraction of the fleet that attacks (0 for "none"). */
  readonly attackers: number;
  /** Final test accuracy in [0, 1]; null when the model diverged (not finite). */
  readonly finalAccuracy: number | null;
  /** The attack's parameter in force (its default when the grid names none), as the job recorded it. */
  readonly attackParam?: number;
  /** The attacking devices, as the job chose them (by seed). */
  readonly attackerDevices?: readonly string[];
  /** Backdoor attacks: the fraction of triggered test samples classified as the attacker's target (final model). */
  readonly backdoorSuccess?: number;
  /** Backdoor attacks: the backdoor success after each round. */
  readonly backdoorPerRound?: readonly (number | null)[];
  /** Test accuracy after each round (null: not finite). */
  readonly accuracyPerRound: readonly (number | null)[];
  /** How the job ended: completed, or diverged. */
  readonly status: string;
  readonly wallMs: number;
  /** The `flotilla simulate` command that runs this cell alone. */
  readonly command: string;
  /** When the cell finished (ISO 8601). */
  readonly finishedAt: string;
}

/** The table's JSON file: every finished cell (a run adds to it; a cell already in it is not run again). */
export interface RobustTableFile {
  readonly version: 1;
  readonly cells: RobustCell[];
}

/** The order attacks are listed in (others follow in order of appearance). */
export const ATTACK_ORDER = [
  "none",
  "sign-flip",
  "gaussian",
  "scaling",
  "label-flip",
  "alie",
  "ipm:0.1",
  "ipm:100",
  "backdoor",
];

/** Accuracy points a cell may lose against the clean baseline and still count as defended. */
export const WITHIN_POINTS = 3;

/** The key a cell is stored and resumed under: everything that defines its job. */
export function cellKey(
  c: Pick<
    RobustCell,
    | "dataset"
    | "model"
    | "partition"
    | "attack"
    | "aggregator"
    | "seed"
    | "devices"
    | "clientsPerRound"
    | "rounds"
    | "localEpochs"
    | "attackers"
  >,
): string {
  return [
    c.dataset,
    c.model,
    c.partition,
    c.attack,
    c.aggregator,
    c.seed,
    c.devices,
    c.clientsPerRound,
    c.rounds,
    c.localEpochs,
    c.attack === "none" ? 0 : c.attackers,
  ].join("|");
}

/** One table: the cells of one dataset run with the same settings. */
export interface TableSection {
  readonly title: string;
  readonly dataset: string;
  readonly attacks: readonly string[];
  readonly aggregators: readonly string[];
  /** Mean final accuracy over the seeds (null: some seed diverged, or the cell is missing). */
  accuracy(attack: string, aggregator: string): number | null | undefined;
  /** Mean backdoor success over the seeds of the backdoor row (undefined: not run). */
  backdoor(aggregator: string): number | undefined;
  /** The clean baseline: mean aggregator, no attack (undefined when that cell is not there). */
  readonly clean: number | undefined;
  readonly seeds: readonly number[];
  readonly cells: readonly RobustCell[];
}

const mean = (v: readonly number[]) => v.reduce((a, x) => a + x, 0) / v.length;

/** Groups cells into sections (dataset + settings), attacks in ATTACK_ORDER, aggregators in order of appearance. */
export function sections(cells: readonly RobustCell[]): TableSection[] {
  const groups = new Map<string, RobustCell[]>();
  for (const c of cells) {
    const k = [c.dataset, c.model, c.partition, c.devices, c.clientsPerRound, c.rounds, c.localEpochs].join(
      "|",
    );
    const g = groups.get(k) ?? [];
    g.push(c);
    groups.set(k, g);
  }
  return [...groups.values()].map((g) => section(g));
}

function section(g: RobustCell[]): TableSection {
  const c0 = g[0]!;
  const seen = (f: (c: RobustCell) => string) => [...new Set(g.map(f))];
  const attacks = seen((c) => c.attack).sort((a, b) => rank(a) - rank(b));
  const aggregators = seen((c) => c.aggregator);
  const seeds = [...new Set(g.map((c) => c.seed))].sort((a, b) => a - b);
  const fractions = [...new Set(g.filter((c) => c.attack !== "none").map((c) => c.attackers))];
  const at = (attack: string, aggregator: string) =>
    g.filter((c) => c.attack === attack && c.aggregator === aggregator);
  const accuracy = (attack: string, aggregator: string) => {
    const cs = at(attack, aggregator);
    if (cs.length === 0) return undefined;
    if (cs.some((c) => c.finalAccuracy === null)) return null;
    return mean(cs.map((c) => c.finalAccuracy!));
  };
  const backdoor = (aggregator: string) => {
    const v = at("backdoor", aggregator)
      .map((c) => c.backdoorSuccess)
      .filter((x): x is number => x !== undefined);
    return v.length ? mean(v) : undefined;
  };
  const clean = accuracy("none", "mean") ?? undefined;
  const title =
    `${c0.dataset}: ${c0.model}, ${c0.partition} partition, ${c0.devices} devices (${c0.clientsPerRound} per round), ` +
    `${c0.rounds} rounds of ${c0.localEpochs} local epoch${c0.localEpochs === 1 ? "" : "s"}, ` +
    (fractions.length
      ? `${fractions.map((f) => `${Math.round(f * 100)}%`).join("/")} attackers ` +
        `(${fractions.map((f) => Math.ceil(f * c0.devices)).join("/")} of ${c0.devices} devices)`
      : "no attackers") +
    `, seed${seeds.length === 1 ? "" : "s"} ${seeds.join(", ")}`;
  return { title, dataset: c0.dataset, attacks, aggregators, accuracy, backdoor, clean, seeds, cells: g };
}

function rank(attack: string): number {
  const i = ATTACK_ORDER.indexOf(attack);
  return i < 0 ? ATTACK_ORDER.length : i;
}

/** True when `acc` is within WITHIN_POINTS of the clean baseline (or above it). */
export function withinClean(acc: number | null | undefined, clean: number | undefined): boolean {
  return (
    acc !== null && acc !== undefined && clean !== undefined && acc >= clean - WITHIN_POINTS / 100 - 1e-9
  );
}

const pct1 = (v: number) => (v * 100).toFixed(1);

/** The worst accuracy of an aggregator over the attacks of a section (null: it diverged under one). */
export function worstCase(s: TableSection, aggregator: string): number | null | undefined {
  const v = s.attacks.filter((a) => a !== "none").map((a) => s.accuracy(a, aggregator));
  if (v.length === 0 || v.some((x) => x === undefined)) return undefined;
  if (v.some((x) => x === null)) return null;
  return Math.min(...(v as number[]));
}

/**
 * The markdown tables, one per section: final accuracy (%) per attack and aggregator, **bold** within 3 points of
 * the clean baseline; "div." a diverged model; "–" a cell not run. Then the backdoor success row and the worst case.
 */
export function renderMarkdown(cells: readonly RobustCell[], defaultAggregator?: string): string {
  const out: string[] = [];
  for (const s of sections(cells)) {
    out.push(`### ${s.title}`, "");
    out.push(
      `Final test accuracy (%). Clean baseline (mean, no attack): ` +
        `${s.clean === undefined ? "not run" : `**${pct1(s.clean)}%**`}. ` +
        `**Bold**: within ${WITHIN_POINTS} points of it; div.: the model diverged; –: not run.` +
        (defaultAggregator && s.aggregators.includes(defaultAggregator)
          ? ` The default (\`--aggregator default\`) is \`${defaultAggregator}\`.`
          : ""),
      "",
    );
    const head = ["attack", ...s.aggregators.map((a) => `\`${a}\``)];
    out.push(`| ${head.join(" | ")} |`, `| --- | ${s.aggregators.map(() => "---:").join(" | ")} |`);
    const accText = (v: number | null | undefined) =>
      v === undefined ? "–" : v === null ? "div." : withinClean(v, s.clean) ? `**${pct1(v)}**` : pct1(v);
    for (const attack of s.attacks)
      out.push(`| ${attack} | ${s.aggregators.map((a) => accText(s.accuracy(attack, a))).join(" | ")} |`);
    if (s.attacks.includes("backdoor")) {
      const bd = (v: number | undefined) => (v === undefined ? "–" : v <= 0.05 ? `**${pct1(v)}**` : pct1(v));
      out.push(`| backdoor success (%) | ${s.aggregators.map((a) => bd(s.backdoor(a))).join(" | ")} |`);
    }
    if (s.attacks.some((a) => a !== "none"))
      out.push(`| worst attack | ${s.aggregators.map((a) => accText(worstCase(s, a))).join(" | ")} |`);
    out.push("");
  }
  return out.join("\n");
}

/** Heat colour of an accuracy: red at chance or below, green within 3 points of the clean baseline. */
function accColour(v: number | null | undefined, clean: number | undefined, chance: number): string {
  if (v === undefined) return "#eeeeee";
  if (v === null) return "hsl(0, 70%, 60%)";
  const top = (clean ?? 1) - WITHIN_POINTS / 100;
  const t = Math.max(0, Math.min(1, (v - chance) / Math.max(1e-9, top - chance)));
  return `hsl(${Math.round(120 * t)}, 65%, ${Math.round(62 + 10 * t)}%)`;
}

/** A self-contained HTML page (no script): each section's table as a heatmap, the backdoor row coloured apart. */
export function renderHtml(
  cells: readonly RobustCell[],
  opts: { title?: string; defaultAggregator?: string; chance?: (dataset: string) => number } = {},
): string {
  const title = opts.title ?? "Flotilla: Byzantine robustness benchmark";
  const chance = opts.chance ?? ((d: string) => (d === "sensors" ? 0.2 : 0.1));
  const body = sections(cells)
    .map((s) => {
      const ch = chance(s.dataset);
      const head = s.aggregators
        .map((a) => `<th${a === opts.defaultAggregator ? ' class="default"' : ""}>${esc(a)}</th>`)
        .join("");
      const cell = (v: number | null | undefined) =>
        `<td style="background:${accColour(v, s.clean, ch)}"${withinClean(v, s.clean) ? ' class="ok"' : ""}>` +
        `${v === undefined ? "–" : v === null ? "div." : pct1(v)}</td>`;
      const rows = s.attacks
        .map(
          (attack) =>
            `<tr><th>${esc(attack)}</th>${s.aggregators.map((a) => cell(s.accuracy(attack, a))).join("")}</tr>`,
        )
        .join("");
      const bd = s.attacks.includes("backdoor")
        ? `<tr class="sep"><th>backdoor success</th>${s.aggregators
            .map((a) => {
              const v = s.backdoor(a);
              const bg =
                v === undefined
                  ? "#eeeeee"
                  : `hsl(${Math.round(120 * (1 - v))}, 65%, ${Math.round(62 + 10 * (1 - v))}%)`;
              return `<td style="background:${bg}"${v !== undefined && v <= 0.05 ? ' class="ok"' : ""}>${v === undefined ? "–" : pct1(v)}</td>`;
            })
            .join("")}</tr>`
        : "";
      const worst = s.attacks.some((a) => a !== "none")
        ? `<tr class="sep"><th>worst attack</th>${s.aggregators.map((a) => cell(worstCase(s, a))).join("")}</tr>`
        : "";
      return (
        `<h2>${esc(s.title)}</h2>` +
        `<p>Final test accuracy (%). Clean baseline (mean, no attack): ` +
        `<b>${s.clean === undefined ? "not run" : `${pct1(s.clean)}%`}</b>. ` +
        `Outlined: within ${WITHIN_POINTS} points of it (backdoor row: success ≤ 5%). Red: chance (${pct1(ch)}%) or below.</p>` +
        `<table><thead><tr><th>attack \\ aggregator</th>${head}</tr></thead><tbody>${rows}${bd}${worst}</tbody></table>`
      );
    })
    .join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;padding:24px;color:#222;background:#fff;display:inline-block}
h1{font-size:20px}h2{font-size:15px;margin-top:28px}p{font-size:13px;color:#444}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #fff;padding:5px 8px;text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f3f3f3;text-align:center;max-width:120px;word-break:break-all;font-weight:600}
tbody th{text-align:left;background:#f3f3f3;white-space:nowrap}
th.default{background:#d8e6ff}
td.ok{outline:2px solid #1b5e20;outline-offset:-3px;font-weight:600}
tr.sep th,tr.sep td{border-top:3px solid #fff}
</style></head><body>
<h1>${esc(title)}</h1>
${body || "<p>No cells yet.</p>"}
</body></html>
`;
}
