// radforge dashboard: reads the last hour of job series from /api/v1/history, then polls it and
// /api/v1/overview with the API token; draws ingest and training charts, job states and the latest jobs.
"use strict";

const POLL_MS = 2000;
// Each poll asks again for the last 30 s: a point recorded while the previous answer was being
// built (its time a little earlier than that answer's newest) still arrives; merge() drops repeats.
const OVERLAP_S = 30;
const MIN_SPAN_S = 120;  // charts span at least two minutes, at most the server's window (an hour)
const BASELINE = "random_init";  // the eval job's random-init backbone (radforge.trainer.eval.run)
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const COLORS = { queued: "#c9a400", running: "#0b5cad", succeeded: "#1f7a3a", failed: "#b3261e", cancelled: "#888" };
const SVGNS = "http://www.w3.org/2000/svg";
// each line chart: the jobs of one kind, one of their series, scaled for display
const LINE_CHARTS = [
  { id: "chart-samples", kind: "ingest", series: "samples_per_second", scale: 1, color: "#0b5cad" },
  { id: "chart-bytes", kind: "ingest", series: "bytes_per_second", scale: 1e-6, color: "#1f7a3a" },
  { id: "chart-train-images", kind: "train", series: "images_per_second", scale: 1, color: "#6a3fb5" },
  { id: "chart-train-loss", kind: "train", series: "loss", scale: 1, color: "#b35c00" },
  { id: "chart-train-wait", kind: "train", series: "data_wait_fraction", scale: 100, color: "#b3261e" },
];

// job id -> {kind, series: {name: [[unix s, value], ...]}}: the server's history, extended by each poll
const history = new Map();
let windowS = 3600;
let serverNow = null;  // the service's clock at the latest history answer: charts end there
let lastT = null;      // the newest point held: the next poll asks only for later ones

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("radforge-token", decodeURIComponent(m[1]));
    window.history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  return sessionStorage.getItem("radforge-token");
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v, digits) {
  return v === null || v === undefined ? "" : Number(v).toFixed(digits);
}

function number(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  return a >= 1 ? v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2) : v.toPrecision(2);
}

// ---- history ------------------------------------------------------------------------------------
function merge(answer) {
  windowS = answer.window_seconds;
  serverNow = answer.time;
  for (const job of answer.jobs) {
    const held = history.get(job.job_id) || { kind: job.kind, series: {} };
    for (const [name, points] of Object.entries(job.series)) {
      const line = held.series[name] || (held.series[name] = []);
      const last = line.length ? line[line.length - 1][0] : -Infinity;
      points.forEach(p => { if (p[0] > last) line.push(p); });
      if (line.length) lastT = Math.max(lastT ?? -Infinity, line[line.length - 1][0]);
    }
    history.set(job.job_id, held);
  }
  const cutoff = serverNow - windowS;
  for (const [id, job] of history) {
    for (const [name, line] of Object.entries(job.series)) {
      const keep = line.findIndex(p => p[0] >= cutoff);
      if (keep < 0) delete job.series[name]; else if (keep > 0) line.splice(0, keep);
    }
    if (!Object.keys(job.series).length) history.delete(id);
  }
}

function lines(kind, series, scale) {
  const out = [];
  for (const [id, job] of history) {
    const points = job.kind === kind && job.series[series];
    if (points && points.length) out.push({ id, points: points.map(p => [p[0], p[1] * scale]) });
  }
  return out;
}

// The seconds every chart spans: back to the oldest point held, within [MIN_SPAN_S, the window].
function chartSpan(now) {
  let first = now;
  history.forEach(job => Object.values(job.series).forEach(line => { first = Math.min(first, line[0][0]); }));
  return Math.min(windowS, Math.max(MIN_SPAN_S, now - first));
}

function lineChart(svg, chartLines, color, now, span) {
  const box = svg.viewBox.baseVal, w = box.width, h = box.height;
  const left = 44, right = 8, top = 8, bottom = 18;
  let first = Infinity, hi = 0, lo = 0, count = 0;
  chartLines.forEach(l => l.points.forEach(([t, v]) => {
    first = Math.min(first, t); hi = Math.max(hi, v); lo = Math.min(lo, v); count += 1;
  }));
  if (hi - lo < 1e-12) hi = lo + 1;  // nothing yet, or a flat zero line: a unit scale
  const x = t => left + (w - left - right) * (1 - (now - t) / span);
  const y = v => top + (h - top - bottom) * (1 - (v - lo) / (hi - lo));
  const kids = [
    svgEl("path", { class: "axis", d: `M${left} ${top} V${h - bottom} H${w - right}` }),
    svgEl("text", { class: "tick", x: 2, y: top + 8 }, number(hi)),
    svgEl("text", { class: "tick", x: 2, y: h - bottom }, number(lo)),
    svgEl("text", { class: "tick", x: left, y: h - 4 }, `-${Math.round(span / 60)} min`),
    svgEl("text", { class: "tick", x: w - right - 24, y: h - 4 }, "now"),
  ];
  if (!count) kids.push(svgEl("text", { class: "empty", x: w / 2, y: h / 2 }, "nothing in the last hour"));
  chartLines.forEach(l => {
    const xy = l.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    kids.push(svgEl("polyline", {
      class: "line", stroke: color, points: xy.join(" "), "data-job-id": l.id, "data-points": l.points.length,
    }));
    const [t, v] = l.points[l.points.length - 1];
    kids.push(svgEl("circle", { class: "last", fill: color, cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 3 }));
  });
  svg.replaceChildren(...kids);
  svg.dataset.points = count;
  svg.dataset.first = count ? first : "";
}

function barChart(svg, counts) {
  const box = svg.viewBox.baseVal, w = box.width, h = box.height;
  const max = Math.max(1, ...STATES.map(s => counts[s] || 0));
  const bw = (w - 20) / STATES.length;
  svg.replaceChildren(...STATES.flatMap((s, i) => {
    const n = counts[s] || 0, bh = (h - 40) * n / max, x = 10 + i * bw;
    return [
      svgEl("rect", { fill: COLORS[s], x: x + 8, y: h - 22 - bh, width: bw - 16, height: bh }),
      svgEl("text", { class: "label", x: x + 8, y: h - 6 }, `${s} ${n}`),
    ];
  }));
}

// ---- rows -----------------------------------------------------------------------------------------
function progressText(j) {
  const p = j.progress || {};
  if (j.kind === "train" && p.step !== null && p.step !== undefined) return `step ${p.step}/${p.total_steps ?? "?"}`;
  if (j.kind === "eval" && p.tasks_total !== null && p.tasks_total !== undefined) {
    return `${p.phase || "eval"} ${p.tasks_done ?? 0}/${p.tasks_total} evaluations`;
  }
  const parts = [];
  if (p.series_total !== null && p.series_total !== undefined) parts.push(`${p.series_done ?? 0}/${p.series_total} series`);
  if (p.samples_written !== null && p.samples_written !== undefined) parts.push(`${p.samples_written} slices`);
  return parts.join(", ") || p.phase || "";
}

function rateText(j) {
  const p = j.progress || {};
  if (p.images_per_second !== null && p.images_per_second !== undefined) return `${fmt(p.images_per_second, 1)} img/s`;
  if (p.samples_per_second !== null && p.samples_per_second !== undefined) return `${fmt(p.samples_per_second, 1)} slices/s`;
  return "";
}

// Mean over tasks of each probe's primary metric (accuracy, r2: higher is better) and the tasks won
// against the random-init baseline, for the backbone under evaluation.
function headline(result) {
  const scores = (result && result.scores) || {};
  const names = Object.keys(scores);
  const main = names.find(n => n !== BASELINE) ?? names[0];
  if (main === undefined) return "";
  const probes = {};
  for (const [task, byProbe] of Object.entries(scores[main])) {
    for (const [probe, v] of Object.entries(byProbe)) {
      const s = probes[probe] || (probes[probe] = { mine: [], base: [], won: 0 });
      const b = main === BASELINE ? null : ((scores[BASELINE] || {})[task] || {})[probe];
      if (v === null) continue;
      s.mine.push(v);
      if (b !== null && b !== undefined) { s.base.push(b); if (v > b) s.won += 1; }
    }
  }
  const mean = xs => xs.reduce((a, b) => a + b, 0) / xs.length;
  return Object.entries(probes).filter(([, s]) => s.mine.length).map(([probe, s]) => {
    const vs = s.base.length ? ` vs ${mean(s.base).toFixed(3)} random init, ${s.won}/${s.base.length} tasks won` : "";
    return `${probe} ${mean(s.mine).toFixed(3)}${vs}`;
  }).join(" · ");
}

function details(j, reportLink) {
  const p = j.progress || {};
  const td = el("td", { class: "details" });
  if (j.kind === "train") {
    const parts = [];
    if (p.loss !== null && p.loss !== undefined) parts.push(el("span", { class: "loss" }, `loss ${fmt(p.loss, 3)}`));
    if (p.data_wait_fraction !== null && p.data_wait_fraction !== undefined) {
      parts.push(el("span", { class: "data-wait" }, `data wait ${fmt(100 * p.data_wait_fraction, 0)}%`));
    }
    parts.forEach((x, i) => { if (i) td.append(" · "); td.append(x); });
  } else if (j.kind === "eval" && j.state === "succeeded") {
    const text = headline(j.result);
    if (text) {
      td.append(el("span", { class: "headline", title: "mean over tasks of the primary metric (full training set)" }, text));
    }
    if (reportLink) {
      if (text) td.append(" · ");
      td.append(el("a", { class: "report-link", href: reportLink, target: "_blank", rel: "noopener noreferrer" }, "report"));
    }
  }
  return td;
}

function jobRows(j, reportLink) {
  const tr = el("tr", { "data-job-id": j.id, "data-kind": j.kind });
  const where = j.archive || (j.result && j.result.archive_id) ||
    (j.spec.source_uri || j.spec.output_uri || "").replace(/\/+$/, "").split("/").pop();
  [[j.id.slice(0, 12), "mono"], [j.kind], [j.state, `state-${j.state}`], [j.origin], [where],
   [progressText(j), "progress"], [rateText(j), "rate"]]
    .forEach(([text, cls]) => tr.append(el("td", cls ? { class: cls } : {}, text)));
  tr.append(details(j, reportLink));
  tr.append(el("td", {}, j.duration_seconds === null ? "" : `${j.duration_seconds.toFixed(1)} s`));
  tr.firstChild.title = j.id;
  if (j.state !== "failed" || !j.error) return [tr];
  const err = el("tr", { class: "error-row", "data-error-for": j.id });
  err.append(el("td", { class: "error-line", colspan: 9 }, j.error));
  return [tr, err];
}

// ---- page -----------------------------------------------------------------------------------------
function render(data) {
  const states = document.getElementById("states");
  states.replaceChildren(...STATES.map(s => {
    const c = el("div", { class: "card" }); c.append(el("b", { class: `state-${s}` }, data.jobs_by_state[s] || 0), s);
    return c;
  }));
  const now = serverNow ?? Date.parse(data.time) / 1000, span = chartSpan(now);
  LINE_CHARTS.forEach(c => {
    lineChart(document.getElementById(c.id), lines(c.kind, c.series, c.scale), c.color, now, span);
  });
  barChart(document.getElementById("chart-states"), data.jobs_by_state);
  const links = data.report_links || {};
  document.getElementById("jobs").replaceChildren(...data.recent.flatMap(j => jobRows(j, links[j.id])));
  document.getElementById("status").textContent = `updated ${new Date(data.time).toLocaleTimeString()} · ${data.running.length} running · ${data.sources} source(s)`;
}

async function get(path, tok) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${tok}` } });
  if (r.status === 401 || r.status === 403) throw new Error("refused");
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function poll() {
  const tok = token();
  if (!tok) { document.getElementById("login").hidden = false; return; }
  try {
    const since = lastT === null ? "" : `?since=${lastT - OVERLAP_S}`;
    const [overview, recent] = await Promise.all([get("/api/v1/overview", tok), get(`/api/v1/history${since}`, tok)]);
    merge(recent);
    render(overview);
  } catch (e) {
    if (e.message === "refused") {
      sessionStorage.removeItem("radforge-token");
      document.getElementById("login").hidden = false;
      document.getElementById("status").textContent = "token refused";
      return;
    }
    document.getElementById("status").textContent = `unreachable (${e})`;
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", ev => {
    ev.preventDefault();
    sessionStorage.setItem("radforge-token", document.getElementById("token").value);
    document.getElementById("login").hidden = true;
    poll();
  });
  poll();
});
