/**
 * The dashboard page: HTML, CSS and the script, served by ./server.ts beside Chart.js (/chart.js, from
 * node_modules). The script listens to /api/events (server-sent events) and redraws on every snapshot: the job
 * and its open round, accuracy / loss / bytes / ε per round (Chart.js line and bar charts, updated in place), the
 * rounds table and one row per device; a click on a device opens its history (/api/devices/{id}). Text from the
 * sources is only ever set as textContent (never parsed as HTML).
 *
 * Hooks the browser test and the screenshot script use: `#devices tr[data-device]` (with `data-quality` ok | flagged |
 * excluded when the followed job keeps contribution quality), `#history-anomalies tr[data-code]`, `#rounds tr[data-round]`,
 * `#errors .error[data-code]`, `#history[data-device]`, `body[data-live]` (the event stream is open).
 */

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flotilla fleet</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="dashboard.css">
<script src="chart.js" defer></script>
<script src="dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>Flotilla fleet</h1>
  <div id="job" class="job">waiting for the first snapshot…</div>
  <div id="live" class="live">connecting…</div>
</header>
<div id="final" class="final" hidden></div>
<div id="errors"></div>
<section class="charts">
  <figure><figcaption id="acc-title">Accuracy</figcaption><div class="box"><canvas id="acc"></canvas></div></figure>
  <figure><figcaption id="loss-title">Loss</figcaption><div class="box"><canvas id="loss"></canvas></div></figure>
  <figure><figcaption>Bytes received</figcaption><div class="box"><canvas id="bytes"></canvas></div></figure>
  <figure><figcaption>Privacy spent (ε)</figcaption><div class="box"><canvas id="eps"></canvas><p id="eps-none" class="none" hidden>no differential privacy in this job</p></div></figure>
</section>
<section class="tables">
  <div class="panel devices-panel">
    <h2>Devices <span id="fleet-count" class="muted"></span></h2>
    <table id="devices">
      <thead><tr><th>device</th><th>link</th><th>last seen</th><th>state</th><th>job · round</th><th>queue</th><th>samples/s</th><th>memory</th><th>RTT</th><th>uplink</th><th>avail.</th><th>local acc.</th><th>quality</th></tr></thead>
      <tbody></tbody>
    </table>
    <p class="hint">Click a device for its history.</p>
  </div>
  <div class="panel rounds-panel">
    <h2>Rounds</h2>
    <table id="rounds">
      <thead><tr><th>round</th><th></th><th>done</th><th>accuracy</th><th>loss</th><th>bytes</th><th>ε</th><th>time</th></tr></thead>
      <tbody></tbody>
    </table>
  </div>
</section>
<aside id="history" hidden>
  <div class="history-head"><h2 id="history-title">Device</h2><button id="history-close" type="button" aria-label="close">×</button></div>
  <div id="history-caps" class="caps"></div>
  <div class="box small"><canvas id="devchart"></canvas></div>
  <h3>Rounds</h3>
  <table id="history-rounds"><thead><tr><th>job</th><th>round</th><th>update</th><th>samples</th><th>loss</th><th>accuracy</th><th>model acc.</th><th>failure</th></tr></thead><tbody></tbody></table>
  <h3>Anomalies</h3>
  <p id="history-quality" class="muted"></p>
  <table id="history-anomalies"><thead><tr><th>job</th><th>round</th><th>code</th><th>reason</th></tr></thead><tbody></tbody></table>
  <h3>Changes seen</h3>
  <table id="history-events"><thead><tr><th>time</th><th>link</th><th>state</th><th>job · round</th><th>queue</th><th>error</th></tr></thead><tbody></tbody></table>
</aside>
</body>
</html>
`;

export const DASHBOARD_CSS = `
:root { --fg: #1d2330; --muted: #6b7280; --line: #e5e7eb; --bg: #f6f7f9; --card: #fff; --accent: #2563eb;
  --ok: #16a34a; --bad: #dc2626; --warn: #d97706; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 18px; padding: 10px 18px; background: #111827; color: #f9fafb; }
header h1 { font-size: 17px; margin: 0; font-weight: 600; }
.job { flex: 1; color: #d1d5db; }
.job b { color: #fff; }
.pill { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 11px; font-weight: 600; background: #374151; color: #fff; }
.pill.running { background: var(--accent); } .pill.completed { background: var(--ok); }
.pill.failed, .pill.stopped { background: var(--bad); }
.live { font-size: 12px; color: #9ca3af; }
body[data-live] .live { color: #86efac; }
.final { margin: 10px 18px 0; padding: 8px 12px; background: #fef3c7; border: 1px solid #fcd34d; border-radius: 6px; }
#errors .error { margin: 10px 18px 0; padding: 8px 12px; background: #fee2e2; border: 1px solid #fca5a5; border-radius: 6px;
  color: #7f1d1d; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 12px; padding: 12px 18px 0; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; }
figcaption { font-weight: 600; font-size: 12px; margin-bottom: 4px; }
.box { position: relative; height: 170px; }
.box.small { height: 140px; }
.none { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center; color: var(--muted); margin: 0; background: var(--card); }
.tables { display: grid; grid-template-columns: minmax(0, 2.25fr) minmax(0, 1fr); gap: 12px; padding: 12px 18px 18px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px; overflow: auto; }
h2 { font-size: 13px; margin: 2px 0 6px; } h3 { font-size: 12px; margin: 10px 0 4px; }
.muted, .hint { color: var(--muted); font-weight: 400; } .hint { margin: 6px 0 0; font-size: 11px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 3px 5px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-size: 11px; color: var(--muted); font-weight: 600; }
#devices tbody tr { cursor: pointer; } #devices tbody tr:hover { background: #eff6ff; }
#devices tbody tr.selected { background: #dbeafe; }
#devices tbody tr.q-excluded td:first-child { box-shadow: inset 3px 0 0 #dc2626; }
#devices tbody tr.q-flagged td:first-child { box-shadow: inset 3px 0 0 #f59e0b; }
.qbadge { display: inline-block; margin-left: 4px; padding: 0 5px; border-radius: 8px; font-size: 10px; color: #fff; background: #f59e0b; }
.qbadge.excluded { background: #dc2626; }
.dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: var(--bad); margin-right: 4px; }
.dot.on { background: var(--ok); }
.state { font-weight: 600; } .state.training, .state.downloading, .state.uploading, .state.secagg { color: var(--accent); }
.state.queued { color: var(--warn); } .state.error { color: var(--bad); } .state.done { color: var(--ok); }
.bar { display: inline-block; width: 26px; height: 6px; background: var(--line); border-radius: 3px; vertical-align: middle; margin-left: 4px; }
.bar i { display: block; height: 100%; background: var(--accent); border-radius: 3px; }
.err { color: var(--bad); }
#history { position: fixed; top: 0; right: 0; bottom: 0; width: 600px; max-width: 100%; background: var(--card);
  border-left: 1px solid var(--line); box-shadow: -6px 0 18px rgba(0,0,0,.12); padding: 12px 16px; overflow: auto; }
.history-head { display: flex; justify-content: space-between; align-items: center; }
.history-head h2 { font-size: 15px; }
#history-close { border: 0; background: none; font-size: 22px; cursor: pointer; color: var(--muted); }
.caps { display: grid; grid-template-columns: repeat(3, 1fr); gap: 4px 12px; margin-bottom: 8px; font-size: 12px; }
.caps span { color: var(--muted); }
@media (max-width: 1100px) { .charts { grid-template-columns: repeat(2, minmax(0, 1fr)); } .tables { grid-template-columns: 1fr; } }
`;

export const DASHBOARD_JS = String.raw`(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var charts = {};
  var selected = null;
  var lastSnapshot = null;
  var historyBusy = false;

  function pct(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(2) + "%"; }
  function fixed(x, d) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }
  function bytes(b) {
    if (b === null || b === undefined) return "–";
    if (b < 1024) return b + " B";
    if (b < 1048576) return (b / 1024).toFixed(1) + " KB";
    if (b < 1073741824) return (b / 1048576).toFixed(1) + " MB";
    return (b / 1073741824).toFixed(1) + " GB";
  }
  function ago(iso, now) {
    if (!iso) return "–";
    var s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  function clock(ms) { return new Date(ms).toLocaleTimeString(); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (c) {
      var td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "–" : String(c);
      tr.appendChild(td);
    });
    return tr;
  }

  function lineChart(id, datasets, yTitle, type) {
    if (typeof Chart === "undefined") return null;
    return new Chart($(id), {
      type: type || "line",
      data: { labels: [], datasets: datasets.map(function (d) {
        return { label: d.label, data: [], borderColor: d.color, backgroundColor: d.fill || d.color, borderWidth: 2,
          pointRadius: 2, tension: 0.25, spanGaps: true, borderDash: d.dash || [] };
      }) },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { display: datasets.length > 1, labels: { boxWidth: 10, font: { size: 10 } } } },
        scales: { x: { title: { display: true, text: "round", font: { size: 10 } }, ticks: { font: { size: 10 } } },
          y: { title: { display: !!yTitle, text: yTitle || "", font: { size: 10 } }, ticks: { font: { size: 10 } } } }
      }
    });
  }
  function setChart(c, labels, series, labelNames) {
    if (!c) return;
    c.data.labels = labels;
    series.forEach(function (s, i) {
      c.data.datasets[i].data = s;
      if (labelNames && labelNames[i]) c.data.datasets[i].label = labelNames[i];
    });
    c.update("none");
  }
  function ensureCharts() {
    if (charts.acc || typeof Chart === "undefined") return;
    charts.acc = lineChart("acc", [{ label: "accuracy", color: "#2563eb" }, { label: "worst 10% of devices", color: "#dc2626", dash: [4, 3] }], "accuracy");
    charts.loss = lineChart("loss", [{ label: "loss", color: "#d97706" }], "loss");
    charts.bytes = lineChart("bytes", [{ label: "bytes received", color: "#7c3aed", fill: "rgba(124,58,237,.55)" }], "MB", "bar");
    charts.eps = lineChart("eps", [{ label: "ε spent", color: "#059669" }], "ε");
    charts.dev = lineChart("devchart", [{ label: "local loss", color: "#d97706" }, { label: "local accuracy", color: "#2563eb" }], "");
  }

  function renderJob(s) {
    var box = $("job");
    box.textContent = "";
    var j = s.job;
    if (!j) {
      box.textContent = s.sources.function ? "no job on the Function yet" : "no Function configured: fleet only";
      return;
    }
    box.appendChild(document.createTextNode("job "));
    box.appendChild(el("b", j.jobId));
    box.appendChild(document.createTextNode(" "));
    box.appendChild(el("span", j.status, "pill " + j.status));
    var parts = [];
    if (j.strategy) parts.push(j.strategy);
    parts.push("round " + j.currentRound + " of " + j.rounds);
    var o = j.openRound;
    if (o && j.status === "running") {
      var left = o.deadline ? Math.max(0, Math.round((o.deadline - s.at) / 1000)) : null;
      parts.push("open round " + o.round + ": " + o.received + "/" + o.participants + " updates in" + (left !== null ? ", deadline in " + left + " s" : ""));
    }
    if (j.privacy && j.privacy.epsilon !== undefined) parts.push("ε " + fixed(j.privacy.epsilon, 3) + (j.privacy.epsilonBudget !== undefined ? " of " + j.privacy.epsilonBudget : ""));
    if (j.stopReason) parts.push(j.stopReason + (j.stopMessage ? ": " + j.stopMessage : ""));
    box.appendChild(document.createTextNode("  ·  " + parts.join("  ·  ")));
  }

  function renderErrors(s) {
    var box = $("errors");
    box.textContent = "";
    s.errors.forEach(function (e) {
      var d = el("div", e.code + ": " + e.message, "error");
      d.setAttribute("data-code", e.code);
      d.setAttribute("data-source", e.source);
      box.appendChild(d);
    });
    var f = $("final");
    f.hidden = !s.final;
    f.textContent = s.final ? "Final state: " + s.final : "";
  }

  function renderCharts(s) {
    ensureCharts();
    var r = s.rounds;
    var labels = r.map(function (p) { return p.round; });
    var fromEval = r.some(function (p) { return p.source === "evaluation"; });
    $("acc-title").textContent = fromEval ? "Accuracy (fleet-wide evaluation)" : "Accuracy (training, devices' reports)";
    $("loss-title").textContent = fromEval ? "Loss (fleet-wide evaluation)" : "Loss (training, devices' reports)";
    if (charts.acc) {
      charts.acc.data.datasets[1].hidden = !fromEval;
      charts.acc.options.plugins.legend.display = fromEval;
    }
    setChart(charts.acc, labels, [
      r.map(function (p) { return p.accuracy; }),
      r.map(function (p) { return p.evaluation && p.evaluation.worstDecile && p.evaluation.accuracy !== undefined ? p.evaluation.worstDecile.value : null; })
    ], [fromEval ? "fleet accuracy" : "training accuracy", "worst 10% of devices"]);
    setChart(charts.loss, labels, [r.map(function (p) { return p.loss; })], [fromEval ? "evaluation loss" : "training loss"]);
    setChart(charts.bytes, labels, [r.map(function (p) { return p.bytes / 1048576; })]);
    var hasEps = r.some(function (p) { return p.epsilon !== null; });
    $("eps-none").hidden = hasEps || r.length === 0;
    setChart(charts.eps, labels, [r.map(function (p) { return p.epsilon; })]);
  }

  function renderRounds(s) {
    var body = document.querySelector("#rounds tbody");
    body.textContent = "";
    s.rounds.slice().reverse().forEach(function (p) {
      var tr = row([p.round, p.status === "aggregated" ? "ok" : p.status, p.completed + "/" + p.participants, pct(p.accuracy), fixed(p.loss, 4), bytes(p.bytes),
        p.epsilon === null ? "–" : fixed(p.epsilon, 3), (p.durationMs / 1000).toFixed(1) + " s"]);
      tr.setAttribute("data-round", p.round);
      tr.setAttribute("data-source", p.source);
      body.appendChild(tr);
    });
  }

  function sps(c) {
    if (!c) return "–";
    var keys = Object.keys(c.samplesPerSecond || {});
    if (!keys.length) return "–";
    return keys.map(function (k) { return (keys.length > 1 ? k + " " : "") + Math.round(c.samplesPerSecond[k]); }).join(", ");
  }

  /** Reputation, and a badge when the device is excluded (the reason in its title) or was flagged. */
  function qualityCell(q) {
    if (!q) return "–";
    var span = el("span", q.reputation === null ? "–" : fixed(q.reputation, 2));
    if (q.excluded) {
      var b = el("span", "excluded", "qbadge excluded");
      b.title = q.excluded.reason;
      span.appendChild(b);
    } else if (q.flagged > 0) {
      var f = el("span", "flagged " + q.flagged, "qbadge");
      if (q.lastAnomaly) f.title = "round " + q.lastAnomaly.round + " " + q.lastAnomaly.code + ": " + q.lastAnomaly.reason;
      span.appendChild(f);
    }
    return span;
  }

  function renderDevices(s) {
    var body = document.querySelector("#devices tbody");
    body.textContent = "";
    var online = 0;
    s.devices.forEach(function (d) {
      if (d.connected) online++;
      var link = el("span", d.connected ? "online" : "offline");
      link.insertBefore(el("i", null, "dot" + (d.connected ? " on" : "")), link.firstChild);
      var state = el("span", d.state || "–", "state " + (d.state || ""));
      if (d.state === "training" && d.progress !== null) {
        var bar = el("span", null, "bar");
        var fill = el("i");
        fill.style.width = Math.round(d.progress * 100) + "%";
        bar.appendChild(fill);
        state.appendChild(bar);
      }
      if (d.error) { state.title = d.error; state.className += " err"; }
      var c = d.capabilities;
      var tr = row([d.deviceId, link, ago(d.lastSeen, s.at), state,
        d.jobId ? d.jobId + " · " + d.round : "–",
        d.queueDepth === null ? "–" : d.queueDepth + (d.queueBytes ? " (" + bytes(d.queueBytes) + ")" : ""),
        sps(c), c ? bytes(c.memoryBytes) : "–", c && c.rttMs !== null ? fixed(c.rttMs, 0) + " ms" : "–",
        c && c.uplinkBytesPerSecond !== null ? bytes(c.uplinkBytesPerSecond) + "/s" : "–",
        c && c.availability !== null ? (c.availability * 100).toFixed(1).replace(/\.0$/, "") + "%" : "–",
        pct(d.inferenceAccuracy !== null ? d.inferenceAccuracy : d.accuracy), qualityCell(s.quality && s.quality[d.deviceId])]);
      var q = s.quality && s.quality[d.deviceId];
      var qs = !q ? "" : q.excluded ? "excluded" : q.flagged > 0 ? "flagged" : "ok";
      tr.setAttribute("data-device", d.deviceId);
      if (qs) tr.setAttribute("data-quality", qs);
      if (qs === "excluded" || qs === "flagged") tr.classList.add("q-" + qs);
      tr.setAttribute("data-state", d.state || "");
      if (d.deviceId === selected) tr.classList.add("selected");
      tr.addEventListener("click", function () { openHistory(d.deviceId); });
      body.appendChild(tr);
    });
    $("fleet-count").textContent = s.devices.length ? s.devices.length + " devices, " + online + " online" : (s.sources.hub ? "none yet" : "no IoT Hub configured");
  }

  function render(s) {
    lastSnapshot = s;
    renderJob(s);
    renderErrors(s);
    renderCharts(s);
    renderRounds(s);
    renderDevices(s);
    document.body.setAttribute("data-rounds", String(s.rounds.length));
    $("live").textContent = (s.final ? "final · " : "live · ") + "updated " + clock(s.at);
    if (selected) loadHistory(selected);
  }

  function openHistory(id) {
    selected = id;
    if (lastSnapshot) renderDevices(lastSnapshot);
    loadHistory(id);
  }
  function loadHistory(id) {
    if (historyBusy) return;
    historyBusy = true;
    fetch("api/devices/" + encodeURIComponent(id), { headers: { accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (h) { if (id === selected) renderHistory(h); })
      .catch(function () { /* the next snapshot retries */ })
      .then(function () { historyBusy = false; });
  }
  function renderHistory(h) {
    var box = $("history");
    box.hidden = false;
    box.setAttribute("data-device", h.deviceId || "");
    $("history-title").textContent = h.code ? h.code + ": " + h.message : "Device " + h.deviceId;
    var caps = $("history-caps");
    caps.textContent = "";
    var d = h.current;
    if (d) {
      var c = d.capabilities || {};
      [["state", d.state || "–"], ["link", d.connected ? "online" : "offline"], ["last seen", ago(d.lastSeen, Date.now())],
       ["samples", d.numSamples === null ? "–" : d.numSamples], ["samples/s", sps(d.capabilities)], ["threads", c.threads === undefined || c.threads === null ? "–" : c.threads],
       ["memory", bytes(c.memoryBytes)], ["free disk", bytes(c.freeDiskBytes)], ["RTT", c.rttMs ? fixed(c.rttMs, 0) + " ms" : "–"],
       ["uplink", c.uplinkBytesPerSecond ? bytes(c.uplinkBytesPerSecond) + "/s" : "–"], ["availability", c.availability === undefined || c.availability === null ? "–" : pct(c.availability)],
       ["queue", d.queueDepth === null ? "–" : d.queueDepth + " (" + bytes(d.queueBytes) + ")"]].forEach(function (kv) {
        var div = el("div");
        div.appendChild(el("span", kv[0] + " "));
        div.appendChild(document.createTextNode(String(kv[1])));
        caps.appendChild(div);
      });
      if (d.error) caps.appendChild(el("div", d.error, "err"));
    }
    var rounds = h.rounds || [];
    setChart(charts.dev, rounds.map(function (r) { return r.round; }), [
      rounds.map(function (r) { return r.loss; }), rounds.map(function (r) { return r.accuracy; })
    ]);
    var rb = document.querySelector("#history-rounds tbody");
    rb.textContent = "";
    rounds.slice().reverse().forEach(function (r) {
      var tr = row([r.jobId, r.round, r.received ? "received" : r.ordered ? "ordered" : "–", r.numSamples, fixed(r.loss, 4), pct(r.accuracy), pct(r.inferenceAccuracy), r.failure || ""]);
      tr.setAttribute("data-round", r.round);
      rb.appendChild(tr);
    });
    var q = h.quality;
    $("history-quality").textContent = !q ? "no quality record in the followed job" :
      "reputation " + (q.reputation === null ? "–" : fixed(q.reputation, 2)) + " · " + q.flagged + " of " + q.contributions +
      " contributions flagged" + (q.excluded ? " · excluded from round " + q.excluded.since +
      (q.excluded.until === null ? " for the rest of the job" : " to " + q.excluded.until) + ": " + q.excluded.reason : "");
    var ab = document.querySelector("#history-anomalies tbody");
    ab.textContent = "";
    (h.anomalies || []).slice().reverse().forEach(function (a) {
      var tr = row([a.jobId, a.round, a.code, a.reason]);
      tr.setAttribute("data-code", a.code);
      ab.appendChild(tr);
    });
    var eb = document.querySelector("#history-events tbody");
    eb.textContent = "";
    (h.events || []).slice().reverse().forEach(function (e) {
      eb.appendChild(row([clock(e.at), e.connected ? "online" : "offline", e.state || "–", e.jobId ? e.jobId + " · " + e.round : "–",
        e.queueDepth === null ? "–" : e.queueDepth, e.error || ""]));
    });
  }
  $("history-close").addEventListener("click", function () {
    selected = null;
    $("history").hidden = true;
    if (lastSnapshot) renderDevices(lastSnapshot);
  });

  function connect() {
    var es = new EventSource("api/events");
    es.addEventListener("snapshot", function (e) {
      document.body.setAttribute("data-live", "");
      try { render(JSON.parse(e.data)); } catch (err) { $("live").textContent = "bad snapshot: " + err; }
    });
    es.onerror = function () {
      document.body.removeAttribute("data-live");
      $("live").textContent = "dashboard server unreachable: retrying…";
    };
  }
  connect();
})();
`;
