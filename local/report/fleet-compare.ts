import * as fs from "node:fs";
import { chartLibrary, esc, pct, virtualSeries, type ReportInput } from "./report";

/** One run of a fleet comparison (bench-fleet): its label and its results.json. */
export interface FleetRun {
  readonly label: string;
  readonly result: ReportInput;
}

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

const hours = (s: number | null | undefined) =>
  s === undefined ? "—" : s === null ? "not reached" : `${(s / 3600).toFixed(3)} h`;

/**
 * Several runs on one fleet trace: test accuracy against virtual time (hours) for every run on one chart, and a
 * table of time to target, virtual time, final accuracy and per-device participation (min/median/max).
 */
export function renderFleetComparison(
  runs: readonly FleetRun[],
  title = "Flotilla fleet comparison",
): string {
  const rows = runs
    .map(({ label, result: r }) => {
      const p = r.participation?.completed;
      return (
        `<tr><td>${esc(label)}</td><td>${r.final.rounds}</td><td>${pct(r.final.accuracy)}</td>` +
        `<td>${hours(r.final.timeToTargetS)}</td><td>${hours(r.final.virtualTimeS)}</td>` +
        `<td>${p ? `${p.min} / ${p.median} / ${p.max}` : "—"}</td></tr>`
      );
    })
    .join("");
  const data = runs.map(({ label, result }) => ({ label, points: virtualSeries(result) ?? [] }));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#1b1f24}
h1{font-size:1.5rem}table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}
canvas{max-height:420px}
</style></head><body>
<h1>${esc(title)}</h1>
<h2>Test accuracy against virtual time</h2><canvas id="accVirtual"></canvas>
<h2>Runs</h2>
<table><tr><th>run</th><th>rounds / flushes</th><th>final accuracy</th><th>time to target</th><th>virtual time</th>
<th>updates per device (min / median / max)</th></tr>${rows}</table>
<script>${chartLibrary()}</script>
<script>
const RUNS = ${JSON.stringify(data)};
const C = ${JSON.stringify(COLORS)};
new Chart(document.getElementById("accVirtual"), { type: "line", data: { datasets: RUNS.map((r, i) => ({
    label: r.label, data: r.points, borderColor: C[i % C.length], backgroundColor: C[i % C.length], pointRadius: 1, tension: 0.1 })) },
  options: { animation: false, scales: { x: { type: "linear", title: { display: true, text: "virtual time (hours)" } },
    y: { title: { display: true, text: "test accuracy (%)" } } } } });
</script>
</body></html>
`;
}

export function writeFleetComparison(file: string, runs: readonly FleetRun[], title?: string): void {
  fs.writeFileSync(file, renderFleetComparison(runs, title));
}
