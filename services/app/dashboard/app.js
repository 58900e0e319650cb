// radforge dashboard: polls /api/v1/overview with the API token and draws throughput and job states.
"use strict";

const POLL_MS = 2000;
const WINDOW_MS = 10 * 60 * 1000;
const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const COLORS = { queued: "#c9a400", running: "#0b5cad", succeeded: "#1f7a3a", failed: "#b3261e", cancelled: "#888" };
const points = [];  // {t, samples, mbytes}: the last 10 minutes

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

function lineChart(canvas, points, key, color) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 32;
  ctx.clearRect(0, 0, w, h);
  const now = Date.now();
  const max = Math.max(1e-9, ...points.map(p => p[key]));
  ctx.strokeStyle = "#ccd"; ctx.fillStyle = "#556"; ctx.font = "11px sans-serif";
  ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, h - pad + 4); ctx.lineTo(w - 4, h - pad + 4); ctx.stroke();
  ctx.fillText(max.toFixed(max < 10 ? 2 : 0), 2, 12);
  ctx.fillText("0", 2, h - pad + 4);
  ctx.fillText("-10 min", pad, h - 8);
  ctx.fillText("now", w - 30, h - 8);
  ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach((p, i) => {
    const x = pad + (w - pad - 4) * (1 - (now - p.t) / WINDOW_MS);
    const y = h - pad + 4 - (h - pad) * (p[key] / max);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
}

function barChart(canvas, counts) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...STATES.map(s => counts[s] || 0));
  const bw = (w - 20) / STATES.length;
  ctx.font = "12px sans-serif";
  STATES.forEach((s, i) => {
    const n = counts[s] || 0, bh = (h - 40) * n / max, x = 10 + i * bw;
    ctx.fillStyle = COLORS[s]; ctx.fillRect(x + 8, h - 22 - bh, bw - 16, bh);
    ctx.fillStyle = "#223"; ctx.fillText(`${s} ${n}`, x + 8, h - 6);
  });
}

function progressText(j) {
  const p = j.progress || {};
  if (p.series_total) return `${p.series_done || 0}/${p.series_total} series, ${p.samples_written || 0} slices`;
  if (p.samples_written !== undefined) return `${p.series_done || 0} series, ${p.samples_written} slices`;
  if (p.step !== undefined) return `step ${p.step}/${p.total_steps || "?"}`;
  if (p.tasks_total) return `${p.phase || "eval"} ${p.tasks_done || 0}/${p.tasks_total} evaluations`;
  return p.phase || "";
}

function render(data) {
  const states = document.getElementById("states");
  states.replaceChildren(...STATES.map(s => {
    const c = el("div", { class: "card" }); c.append(el("b", { class: `state-${s}` }, data.jobs_by_state[s] || 0), s);
    return c;
  }));
  const t = Date.now();
  points.push({ t, samples: data.throughput.ingest_samples_per_second, mbytes: data.throughput.ingest_bytes_per_second / 1e6 });
  while (points.length && t - points[0].t > WINDOW_MS) points.shift();
  lineChart(document.getElementById("chart-samples"), points, "samples", "#0b5cad");
  lineChart(document.getElementById("chart-bytes"), points, "mbytes", "#1f7a3a");
  barChart(document.getElementById("chart-states"), data.jobs_by_state);
  const rows = data.recent.map(j => {
    const tr = el("tr", { "data-job-id": j.id });
    const where = j.archive || (j.result && j.result.archive_id) || (j.spec.source_uri || "").split("/").pop();
    [[j.id.slice(0, 12), "mono"], [j.kind], [j.state, `state-${j.state}`], [j.origin], [where],
     [progressText(j)], [((j.progress || {}).samples_per_second || 0).toFixed(1)],
     [j.duration_seconds === null ? "" : `${j.duration_seconds.toFixed(1)} s`]]
      .forEach(([text, cls]) => tr.append(el("td", cls ? { class: cls } : {}, text)));
    tr.firstChild.title = j.id;
    return tr;
  });
  document.getElementById("jobs").replaceChildren(...rows);
  document.getElementById("status").textContent = `updated ${new Date(data.time).toLocaleTimeString()} · ${data.running.length} running · ${data.sources} source(s)`;
}

async function poll() {
  const tok = token();
  if (!tok) { document.getElementById("login").hidden = false; return; }
  try {
    const r = await fetch("/api/v1/overview", { headers: { Authorization: `Bearer ${tok}` } });
    if (r.status === 401 || r.status === 403) {
      sessionStorage.removeItem("radforge-token");
      document.getElementById("login").hidden = false;
      document.getElementById("status").textContent = "token refused";
      return;
    }
    render(await r.json());
  } catch (e) {
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
