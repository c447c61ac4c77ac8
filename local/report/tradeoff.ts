import * as fs from "node:fs";
import { chartLibrary, esc, mb, pct } from "./report";

/** One run of a compression sweep: a codec on one scenario. */
export interface TradeoffRun {
  readonly scenario: string;
  readonly compression: string;
  readonly rounds: number;
  readonly finalAccuracy: number;
  /** Mean uplink bytes per round (all participants' encoded updates). */
  readonly uplinkBytesPerRound: number;
  readonly downlinkBytesPerRound: number;
  /** float32 uplink bytes per round ÷ this run's (1 for the reference). */
  readonly uplinkReduction: number;
  /** Accuracy points lost against the float32 reference at the same round count (negative = gained). */
  readonly accuracyLossPoints: number;
  readonly accuracyPerRound: readonly number[];
  readonly wallS: number;
}

const COLORS = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
];

/**
 * The compression trade-off report: per scenario, final accuracy against uplink bytes per round (log scale), one
 * point per codec, and the accuracy curves; with the table of reductions and accuracy losses.
 */
export function renderTradeoffReport(
  runs: readonly TradeoffRun[],
  title = "Flotilla update compression",
): string {
  const scenarios = [...new Set(runs.map((r) => r.scenario))];
  const rows = runs
    .map(
      (r) =>
        `<tr><td>${esc(r.scenario)}</td><td>${esc(r.compression)}</td><td>${r.rounds}</td>` +
        `<td>${pct(r.finalAccuracy)}</td><td>${r.accuracyLossPoints.toFixed(2)}</td>` +
        `<td>${mb(r.uplinkBytesPerRound)}</td><td>${r.uplinkReduction.toFixed(1)}×</td>` +
        `<td>${mb(r.downlinkBytesPerRound)}</td><td>${r.wallS.toFixed(0)}</td></tr>`,
    )
    .join("");
  const charts = scenarios
    .map(
      (s, i) =>
        `<div><h2>${esc(s)}: accuracy vs uplink</h2><canvas id="t${i}"></canvas></div>` +
        `<div><h2>${esc(s)}: accuracy per round</h2><canvas id="c${i}"></canvas></div>`,
    )
    .join("");
  const data = scenarios.map((s) => runs.filter((r) => r.scenario === s));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#1b1f24}
h1{font-size:1.5rem}h2{font-size:1.05rem}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1.5rem;margin:1.5rem 0}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}
canvas{max-height:340px}
</style></head><body>
<h1>${esc(title)}</h1>
<p>Each point is one federated run at a fixed round count; the reference is float32 FedAvg (compression none).
Reduction = float32 uplink bytes ÷ encoded uplink bytes, both measured on the wire (frame bytes).</p>
<div class="grid">${charts}</div>
<h2>Runs</h2>
<table><tr><th>scenario</th><th>compression</th><th>rounds</th><th>final accuracy</th><th>loss vs float32 (points)</th>
<th>uplink / round</th><th>reduction</th><th>downlink / round</th><th>wall s</th></tr>${rows}</table>
<script>${chartLibrary()}</script>
<script>
const D = ${JSON.stringify(data)};
const C = ${JSON.stringify(COLORS)};
D.forEach((runs, i) => {
  new Chart(document.getElementById("t" + i), { type: "scatter", data: { datasets: runs.map((r, j) => ({
      label: r.compression, data: [{ x: r.uplinkBytesPerRound / 1e6, y: r.finalAccuracy * 100 }],
      backgroundColor: C[j % C.length], pointRadius: 6 })) },
    options: { animation: false, scales: { x: { type: "logarithmic", title: { display: true, text: "uplink MB per round (log)" } },
      y: { title: { display: true, text: "final test accuracy (%)" } } } } });
  new Chart(document.getElementById("c" + i), { type: "line", data: {
      labels: runs[0].accuracyPerRound.map((_, k) => k + 1),
      datasets: runs.map((r, j) => ({ label: r.compression, data: r.accuracyPerRound.map((a) => a * 100),
        borderColor: C[j % C.length], backgroundColor: C[j % C.length], pointRadius: 0, tension: 0.1 })) },
    options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { title: { display: true, text: "%" } } } } });
});
</script>
</body></html>
`;
}

export function writeTradeoffReport(file: string, runs: readonly TradeoffRun[]): void {
  fs.writeFileSync(file, renderTradeoffReport(runs));
}
