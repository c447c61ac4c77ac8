import * as fs from "node:fs";
import * as path from "node:path";
import type { FleetEvaluation } from "../../core/round/evaluation";

/** The slice of a results.json the report draws. */
export interface ReportInput {
  config: object;
  rounds: {
    round: number;
    accuracy: number;
    loss: number;
    /** Binary models: test AUC; regression and reconstruction: test MAE. */
    auc?: number;
    mae?: number;
    uplinkBytes: number;
    downlinkBytes: number;
    durationMs: number;
    participants: string[];
    completed?: number;
    secagg?: {
      dropouts: Record<"advertise" | "share" | "mask" | "unmask", string[]>;
      included: string[];
      unmaskMs: number;
      aborted?: { code: string; reason: string };
      meanBytesPerDevice?: { up: number; down: number };
    };
    dp?: { epsilon: number; clip: number; noiseStd: number; released: boolean; unclippedFraction?: number };
    /** With a fleet trace: the round's virtual end (s) and its late updates. */
    virtualEndS?: number;
    late?: number;
    /** Fleet-wide evaluation of the round's model on the devices' held-out data (core/round/evaluation.ts). */
    evaluation?: FleetEvaluation;
    /** --attack backdoor: the round's backdoor success rate (local/sim/attacks/data.ts). */
    backdoorSuccess?: number;
  }[];
  final: {
    accuracy: number;
    loss: number;
    auc?: number;
    mae?: number;
    rounds: number;
    wallMs: number;
    virtualTimeS?: number;
    timeToTargetS?: number | null;
    backdoorSuccess?: number;
  };
  /** Per-device participation (local/sim/simulate.ts participationSummary). */
  participation?: {
    devices: Record<string, { selected: number; completed: number }>;
    selected: { min: number; median: number; max: number };
    completed: { min: number; median: number; max: number };
  };
  status?: { state: string; reason?: string };
  /** --attack (simulator): the attack and its attackers. */
  attack?: { kind: string; fraction: number; param?: number; attackers: string[] };
  privacy?: {
    epsilon: number;
    delta: number;
    placement: string;
    noiseMultiplier: number;
    epsilonBudget?: number;
  };
}

let chartJs: string | undefined;
/** Chart.js (UMD build) from node_modules, inlined so the report opens offline with no CDN. */
export function chartLibrary(): string {
  chartJs ??= fs.readFileSync(
    path.join(path.dirname(require.resolve("chart.js")), "chart.umd.min.js"),
    "utf8",
  );
  return chartJs;
}

export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function pct(v: number): string {
  return Number.isFinite(v) ? `${(v * 100).toFixed(2)}%` : "n/a";
}

export function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(2)} MB`;
}

/** Accuracy (%) against virtual hours, one point per round that has both (a fleet-trace run), or null. */
export function virtualSeries(r: Pick<ReportInput, "rounds">): { x: number; y: number }[] | null {
  if (!r.rounds.some((x) => x.virtualEndS !== undefined)) return null;
  return r.rounds
    .filter((x) => x.virtualEndS !== undefined && Number.isFinite(x.accuracy))
    .map((x) => ({ x: x.virtualEndS! / 3600, y: x.accuracy * 100 }));
}

/** Completed (and selected) updates per device, sorted by completed, most first; null without participation. */
export function participationSeries(
  r: Pick<ReportInput, "participation">,
): { ids: string[]; completed: number[]; selected: number[] } | null {
  const p = r.participation;
  if (!p) return null;
  const rows = Object.entries(p.devices).sort(
    ([a, x], [b, y]) => y.completed - x.completed || y.selected - x.selected || (a < b ? -1 : 1),
  );
  return {
    ids: rows.map(([id]) => id),
    completed: rows.map(([, d]) => d.completed),
    selected: rows.map(([, d]) => d.selected),
  };
}

/**
 * The fleet-wide evaluation curve (docs/evaluation.md): per round, the sample-weighted metric on the devices'
 * held-out data, its p10–p90 band and min/max across devices, and the worst decile; in % for accuracy, raw for
 * MAE (regressions). Null when no round has one. Rounds without one are gaps (null).
 */
export function evaluationSeries(r: Pick<ReportInput, "rounds">): {
  metric: "accuracy" | "mae";
  fleet: (number | null)[];
  p10: (number | null)[];
  p90: (number | null)[];
  min: (number | null)[];
  max: (number | null)[];
  worst: (number | null)[];
  devices: (number | null)[];
} | null {
  const evals = r.rounds.map((x) => x.evaluation);
  if (!evals.some((e) => e?.spread)) return null;
  const metric = evals.some((e) => e?.accuracy !== undefined) ? "accuracy" : "mae";
  const scale = metric === "accuracy" ? 100 : 1;
  const v = (x: number | undefined) => (x !== undefined && Number.isFinite(x) ? x * scale : null);
  return {
    metric,
    fleet: evals.map((e) => v(e?.[metric])),
    p10: evals.map((e) => v(e?.spread?.p10)),
    p90: evals.map((e) => v(e?.spread?.p90)),
    min: evals.map((e) => v(e?.spread?.min)),
    max: evals.map((e) => v(e?.spread?.max)),
    worst: evals.map((e) => v(e?.worstDecile?.value)),
    devices: evals.map((e) => e?.devices ?? null),
  };
}

/** A self-contained HTML report: summary, configuration, and charts of accuracy, loss, bytes and time per round. */
export function renderReport(r: ReportInput, title = "Flotilla federated training report"): string {
  const rounds = r.rounds.map((x) => x.round);
  const series = {
    rounds,
    accuracy: r.rounds.map((x) => (Number.isFinite(x.accuracy) ? x.accuracy * 100 : null)),
    loss: r.rounds.map((x) => (Number.isFinite(x.loss) ? x.loss : null)),
    up: r.rounds.map((x) => x.uplinkBytes / 1e6),
    down: r.rounds.map((x) => x.downlinkBytes / 1e6),
    seconds: r.rounds.map((x) => x.durationMs / 1000),
    secagg: r.rounds.some((x) => x.secagg)
      ? {
          steps: (["advertise", "share", "mask", "unmask"] as const).map((step) =>
            r.rounds.map((x) => x.secagg?.dropouts[step].length ?? 0),
          ),
          included: r.rounds.map((x) => x.secagg?.included.length ?? 0),
          up: r.rounds.map((x) => (x.secagg?.meanBytesPerDevice?.up ?? 0) / 1e6),
          down: r.rounds.map((x) => (x.secagg?.meanBytesPerDevice?.down ?? 0) / 1e6),
        }
      : null,
  };
  const dpSeries = r.rounds.some((x) => x.dp)
    ? {
        epsilon: r.rounds.map((x) => x.dp?.epsilon ?? null),
        clip: r.rounds.map((x) => x.dp?.clip ?? null),
        unclipped: r.rounds.map((x) =>
          x.dp?.unclippedFraction !== undefined
            ? Math.max(0, Math.min(1, x.dp.unclippedFraction)) * 100
            : null,
        ),
        budget: r.privacy?.epsilonBudget ?? null,
      }
    : null;
  const notReleased = r.rounds.filter((x) => x.dp && !x.dp.released).map((x) => x.round);
  const p = r.privacy;
  const dpHtml = dpSeries
    ? `<h2>Differential privacy</h2>
<p>${p ? `(ε = ${p.epsilon.toFixed(3)}, δ = ${p.delta})-DP for every device's data, ${esc(p.placement)} noise with multiplier z = ${p.noiseMultiplier}${p.epsilonBudget !== undefined ? `, budget ε = ${p.epsilonBudget}` : ""}.` : ""}
${notReleased.length ? ` Rounds that released nothing (model kept): ${notReleased.join(", ")}.` : ""}
${r.status && r.status.state !== "completed" ? ` Job stopped: <b>${esc(r.status.state)}</b> — ${esc(r.status.reason ?? "")}` : ""}</p>
<div class="grid">
<div><h2>Privacy spent (ε) per round</h2><canvas id="dpEps"></canvas></div>
<div><h2>Clip norm${dpSeries.unclipped.some((v) => v !== null) ? " and unclipped fraction" : ""}</h2><canvas id="dpClip"></canvas></div>
</div>`
    : "";
  const aborted = r.rounds.filter((x) => x.secagg?.aborted).map((x) => x.round);
  const secaggHtml = series.secagg
    ? `<h2>Secure aggregation</h2>
<p>The server saw only each round's sum. ${aborted.length ? `Rounds aborted with too few survivors (model kept): ${aborted.join(", ")}.` : "No round aborted."}</p>
<div class="grid">
<div><h2>Devices in the sum and dropouts per step</h2><canvas id="secagg"></canvas></div>
<div><h2>Bytes per device (mean)</h2><canvas id="secaggBytes"></canvas></div>
</div>`
    : "";
  const evalSeries = evaluationSeries(r);
  const lastEval = [...r.rounds].reverse().find((x) => x.evaluation?.worstDecile);
  const fmtEval = (x: number) => (evalSeries?.metric === "mae" ? x.toFixed(4) : pct(x));
  const evalHtml =
    evalSeries && lastEval?.evaluation
      ? `<h2>Fleet-wide evaluation</h2>
<p>Each round's global model on the devices' own held-out data (docs/evaluation.md): the sample-weighted
${evalSeries.metric === "mae" ? "MAE" : "accuracy"} over the devices, its spread across devices (p10–p90 band, min and
max) and the worst 10% of devices, beside the central test set. Round ${lastEval.round}: ${fmtEval(lastEval.evaluation[evalSeries.metric] ?? NaN)}
over ${lastEval.evaluation.devices} devices (${lastEval.evaluation.samples} samples), worst 10%
${fmtEval(lastEval.evaluation.worstDecile!.value)} (${lastEval.evaluation.worstDecile!.devices.map(esc).join(", ")}).</p>
<div class="grid">
<div><h2>Fleet ${evalSeries.metric === "mae" ? "MAE" : "accuracy"} per round</h2><canvas id="fleetEval"></canvas></div>
<div><h2>Devices evaluating per round</h2><canvas id="fleetEvalDevices"></canvas></div>
</div>`
      : "";
  const attackHtml = attackSection(r);
  const backdoor = r.rounds.some((x) => x.backdoorSuccess !== undefined)
    ? r.rounds.map((x) => (x.backdoorSuccess !== undefined ? x.backdoorSuccess * 100 : null))
    : null;
  const virtual = virtualSeries(r);
  const part = participationSeries(r);
  const pc = r.participation?.completed;
  const ps = r.participation?.selected;
  const fleetHtml =
    virtual || part
      ? `<h2>Fleet</h2>
<div class="grid">
${virtual ? `<div><h2>Test accuracy against virtual time</h2><canvas id="accVirtual"></canvas></div>` : ""}
${
  part && pc && ps
    ? `<div><h2>Updates per device (sorted)</h2><p>completed: min ${pc.min}, median ${pc.median}, max ${pc.max}; ` +
      `selected: min ${ps.min}, median ${ps.median}, max ${ps.max}</p><canvas id="participation"></canvas></div>`
    : ""
}
</div>`
      : "";
  const virtualCards =
    r.final.virtualTimeS !== undefined
      ? `<div class="card">virtual time<b>${(r.final.virtualTimeS / 3600).toFixed(2)} h</b></div>` +
        (r.final.timeToTargetS !== undefined
          ? `<div class="card">time to target<b>${r.final.timeToTargetS === null ? "not reached" : `${(r.final.timeToTargetS / 3600).toFixed(2)} h`}</b></div>`
          : "")
      : "";
  const totalUp = r.rounds.reduce((a, x) => a + x.uplinkBytes, 0);
  const totalDown = r.rounds.reduce((a, x) => a + x.downlinkBytes, 0);
  const configRows = Object.entries(r.config)
    .filter(([, v]) => typeof v !== "object")
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(String(v))}</td></tr>`)
    .join("");
  const hasDp = r.rounds.some((x) => x.dp);
  // The task's own metrics (AUC for binary models, MAE for regression/reconstruction), when the model has them.
  const hasAuc = r.rounds.some((x) => x.auc !== undefined);
  const hasMae = r.rounds.some((x) => x.mae !== undefined);
  const num = (v: number | undefined, digits: number) =>
    v !== undefined && Number.isFinite(v) ? v.toFixed(digits) : "n/a";
  const roundRows = r.rounds
    .map(
      (x) =>
        `<tr><td>${x.round}</td><td>${x.completed ?? x.participants.length}/${x.participants.length}</td>` +
        `<td>${pct(x.accuracy)}</td><td>${Number.isFinite(x.loss) ? x.loss.toFixed(4) : "n/a"}</td>` +
        (hasAuc ? `<td>${num(x.auc, 4)}</td>` : "") +
        (hasMae ? `<td>${num(x.mae, 4)}</td>` : "") +
        `<td>${mb(x.uplinkBytes)}</td><td>${mb(x.downlinkBytes)}</td><td>${(x.durationMs / 1000).toFixed(1)}</td>` +
        (hasDp
          ? `<td>${x.dp ? x.dp.epsilon.toFixed(3) + (x.dp.released ? "" : " (not released)") : ""}</td>`
          : "") +
        `</tr>`,
    )
    .join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#1b1f24}
h1{font-size:1.5rem}.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:8px;padding:.8rem 1.2rem}
.card b{display:block;font-size:1.4rem}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1.5rem;margin:1.5rem 0}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}
canvas{max-height:320px}
</style></head><body>
<h1>${esc(title)}</h1>
<div class="cards">
<div class="card">final test accuracy<b>${pct(r.final.accuracy)}</b></div>
<div class="card">final test loss<b>${Number.isFinite(r.final.loss) ? r.final.loss.toFixed(4) : "n/a"}</b></div>
${r.final.auc !== undefined ? `<div class="card">final test AUC<b>${num(r.final.auc, 4)}</b></div>` : ""}
${r.final.mae !== undefined ? `<div class="card">final test MAE<b>${num(r.final.mae, 4)}</b></div>` : ""}
${
  lastEval?.evaluation && evalSeries
    ? `<div class="card">fleet ${evalSeries.metric === "mae" ? "MAE" : "accuracy"} (round ${lastEval.round})<b>${fmtEval(lastEval.evaluation[evalSeries.metric] ?? NaN)}</b></div>` +
      `<div class="card">worst 10% of devices<b>${fmtEval(lastEval.evaluation.worstDecile!.value)}</b></div>`
    : ""
}
<div class="card">rounds<b>${r.final.rounds}</b></div>
<div class="card">wall time<b>${(r.final.wallMs / 1000).toFixed(1)} s</b></div>
<div class="card">uplink total<b>${mb(totalUp)}</b></div>
<div class="card">downlink total<b>${mb(totalDown)}</b></div>
${virtualCards}
</div>
<div class="grid">
<div><h2>Test accuracy per round</h2><canvas id="acc"></canvas></div>
<div><h2>Test loss per round</h2><canvas id="loss"></canvas></div>
<div><h2>Bytes per round</h2><canvas id="bytes"></canvas></div>
<div><h2>Round wall time</h2><canvas id="time"></canvas></div>
</div>
${attackHtml}
${evalHtml}
${fleetHtml}
${secaggHtml}
${dpHtml}
<h2>Rounds</h2>
<table><tr><th>round</th><th>updates</th><th>accuracy</th><th>loss</th>${hasAuc ? "<th>AUC</th>" : ""}${hasMae ? "<th>MAE</th>" : ""}<th>uplink</th><th>downlink</th><th>seconds</th>${hasDp ? "<th>ε spent</th>" : ""}</tr>${roundRows}</table>
<h2>Configuration</h2><table>${configRows}</table>
<script>${chartLibrary()}</script>
<script>
const S = ${JSON.stringify(series)};
const DP = ${JSON.stringify(dpSeries)};
const VT = ${JSON.stringify(virtual)};
const PART = ${JSON.stringify(part)};
const EV = ${JSON.stringify(evalSeries)};
const BD = ${JSON.stringify(backdoor)};
const line = (id, label, data, color, y) => new Chart(document.getElementById(id), {
  type: "line", data: { labels: S.rounds, datasets: [{ label, data, borderColor: color, backgroundColor: color, tension: 0.1 }] },
  options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { title: { display: true, text: y } } } } });
line("acc", "test accuracy (%)", S.accuracy, "#1f77b4", "%");
line("loss", "test loss", S.loss, "#d62728", "loss");
line("time", "seconds", S.seconds, "#2ca02c", "s");
new Chart(document.getElementById("bytes"), { type: "bar", data: { labels: S.rounds, datasets: [
  { label: "uplink (MB)", data: S.up, backgroundColor: "#ff7f0e" }, { label: "downlink (MB)", data: S.down, backgroundColor: "#9467bd" }] },
  options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { title: { display: true, text: "MB" } } } } });
if (BD) new Chart(document.getElementById("backdoor"), { type: "line", data: { labels: S.rounds, datasets: [
  { label: "backdoor success (%)", data: BD, borderColor: "#d62728", backgroundColor: "#d62728", tension: 0.1 },
  { label: "test accuracy (%)", data: S.accuracy, borderColor: "#1f77b4", backgroundColor: "#1f77b4", borderDash: [6, 3], tension: 0.1 }] },
  options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { min: 0, max: 100, title: { display: true, text: "%" } } } } });
if (VT) new Chart(document.getElementById("accVirtual"), { type: "line", data: { datasets: [
  { label: "test accuracy (%)", data: VT, borderColor: "#1f77b4", backgroundColor: "#1f77b4", tension: 0.1 }] },
  options: { animation: false, scales: { x: { type: "linear", title: { display: true, text: "virtual time (hours)" } }, y: { title: { display: true, text: "%" } } } } });
if (PART) new Chart(document.getElementById("participation"), { type: "bar", data: { labels: PART.ids, datasets: [
  { label: "completed", data: PART.completed, backgroundColor: "#2ca02c" }, { label: "selected", data: PART.selected, backgroundColor: "#c7c7c7" }] },
  options: { animation: false, scales: { x: { ticks: { display: PART.ids.length <= 50 }, title: { display: true, text: "devices (sorted)" } }, y: { beginAtZero: true, title: { display: true, text: "updates" } } } } });
if (EV) {
  const acc = EV.metric === "accuracy";
  const band = (label, data, fill, color) => ({ label, data, borderColor: color, backgroundColor: "rgba(31,119,180,0.15)", pointRadius: 0, borderWidth: 1, fill, spanGaps: false });
  new Chart(document.getElementById("fleetEval"), { type: "line", data: { labels: S.rounds, datasets: [
    band("", EV.p10, false, "rgba(31,119,180,0.4)"),
    band("p10–p90 across devices", EV.p90, "-1", "rgba(31,119,180,0.4)"),
    { label: "min / max device", data: EV.min, borderColor: "#aec7e8", borderDash: [4, 4], pointRadius: 0, borderWidth: 1 },
    { label: "", data: EV.max, borderColor: "#aec7e8", borderDash: [4, 4], pointRadius: 0, borderWidth: 1 },
    { label: acc ? "fleet accuracy (weighted, %)" : "fleet MAE (weighted)", data: EV.fleet, borderColor: "#1f77b4", backgroundColor: "#1f77b4", tension: 0.1 },
    { label: "worst 10% of devices", data: EV.worst, borderColor: "#d62728", backgroundColor: "#d62728", tension: 0.1 },
    ...(acc ? [{ label: "central test set (%)", data: S.accuracy, borderColor: "#7f7f7f", backgroundColor: "#7f7f7f", borderDash: [6, 3], tension: 0.1 }] : [])] },
    options: { animation: false, plugins: { legend: { labels: { filter: (i) => i.text !== "" } } },
      scales: { x: { title: { display: true, text: "round" } }, y: { title: { display: true, text: acc ? "%" : "MAE" } } } } });
  new Chart(document.getElementById("fleetEvalDevices"), { type: "bar", data: { labels: S.rounds, datasets: [
    { label: "devices", data: EV.devices, backgroundColor: "#2ca02c" }] },
    options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { beginAtZero: true, title: { display: true, text: "devices" } } } } });
}
if (DP) {
  const eps = [{ label: "ε spent", data: DP.epsilon, borderColor: "#d62728", backgroundColor: "#d62728", tension: 0.1 }];
  if (DP.budget !== null) eps.push({ label: "budget", data: S.rounds.map(() => DP.budget), borderColor: "#7f7f7f", borderDash: [6, 4], pointRadius: 0 });
  new Chart(document.getElementById("dpEps"), { type: "line", data: { labels: S.rounds, datasets: eps },
    options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { beginAtZero: true, title: { display: true, text: "ε" } } } } });
  const clipSets = [{ label: "clip norm C", data: DP.clip, borderColor: "#1f77b4", backgroundColor: "#1f77b4", yAxisID: "y" }];
  if (DP.unclipped.some((v) => v !== null)) clipSets.push({ label: "unclipped updates (%, noisy)", data: DP.unclipped, borderColor: "#2ca02c", backgroundColor: "#2ca02c", yAxisID: "y1" });
  new Chart(document.getElementById("dpClip"), { type: "line", data: { labels: S.rounds, datasets: clipSets },
    options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { title: { display: true, text: "C" } },
      y1: { position: "right", min: 0, max: 100, display: DP.unclipped.some((v) => v !== null), title: { display: true, text: "%" } } } } });
}
if (S.secagg) {
  const names = ["advertise", "share", "mask", "unmask"], colors = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  new Chart(document.getElementById("secagg"), { type: "bar", data: { labels: S.rounds, datasets: [
    { label: "in the sum", data: S.secagg.included, backgroundColor: "#1f77b4" },
    ...names.map((n, i) => ({ label: "dropped at " + n, data: S.secagg.steps[i], backgroundColor: colors[i] }))] },
    options: { animation: false, scales: { x: { stacked: true, title: { display: true, text: "round" } }, y: { stacked: true, title: { display: true, text: "devices" } } } } });
  new Chart(document.getElementById("secaggBytes"), { type: "bar", data: { labels: S.rounds, datasets: [
    { label: "up (MB)", data: S.secagg.up, backgroundColor: "#ff7f0e" }, { label: "down (MB)", data: S.secagg.down, backgroundColor: "#9467bd" }] },
    options: { animation: false, scales: { x: { title: { display: true, text: "round" } }, y: { title: { display: true, text: "MB per device" } } } } });
}
</script>
</body></html>
`;
}

/** The attack's section (simulator --attack): who attacked, how, and the backdoor's success rate per round. */
function attackSection(r: Pick<ReportInput, "attack" | "rounds" | "final">): string {
  const a = r.attack;
  if (!a) return "";
  const bd = r.final.backdoorSuccess;
  return `<h2>Attack</h2>
<p><b>${esc(a.kind)}</b> by ${a.attackers.length} device(s) (fraction ${a.fraction}${a.param !== undefined ? `, parameter ${a.param}` : ""}; docs/robustness.md):
${a.attackers.map(esc).join(", ")}.${bd !== undefined ? ` Final backdoor success rate: <b>${pct(bd)}</b> of the triggered test samples of other classes classified as the target.` : ""}</p>
${bd !== undefined ? `<div class="grid"><div><h2>Backdoor success per round</h2><canvas id="backdoor"></canvas></div></div>` : ""}`;
}

export function writeReport(file: string, r: ReportInput, title?: string): void {
  fs.writeFileSync(file, renderReport(r, title));
}
