// The dashboard's only script: polls /api/state and draws it. No library, no CDN (a hub may be offline).
"use strict";
const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => token ? `${path}?token=${encodeURIComponent(token)}` : path;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const ago = (s) => s < 120 ? `${Math.round(s)} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
const time = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "-";
const SVG = "http://www.w3.org/2000/svg";

function rows(id, html) { document.querySelector(`#${id} tbody`).innerHTML = html.join(""); }

function chart(svg, series, opts) {
  // series: [{values: [number|null], color, bars?}], one value per x. y from 0 to the max (opts.max for
  // fractions), or on a log scale (opts.log: bytes span 100 B to megabytes); bars sit in bands, lines on points.
  const W = 520, H = 200, L = 52, B = 20, T = 8;
  svg.innerHTML = "";
  const n = Math.max(0, ...series.map((s) => s.values.length));
  if (!n) return;
  const top = opts.max ?? Math.max(opts.log ? 10 : 1e-9, ...series.flatMap((s) => s.values.filter((v) => v != null)));
  const bands = series.some((s) => s.bars);
  const x = (i) => bands ? L + ((i + 0.5) * (W - L)) / n : L + (n === 1 ? (W - L) / 2 : (i * (W - L - 10)) / (n - 1));
  const frac = (v) => opts.log ? Math.log10(Math.max(v, 1)) / Math.log10(top) : v / top;
  const y = (v) => H - B - (H - B - T) * frac(v);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text != null) el.textContent = text;
    svg.appendChild(el);
  };
  const ticks = opts.log ? Array.from({length: Math.floor(Math.log10(top)) + 1}, (_, k) => 10 ** k) : [0, top / 2, top];
  for (const v of ticks) {
    add("line", {x1: L, x2: W, y1: y(v), y2: y(v), stroke: "#e3e7ee"});
    add("text", {x: 2, y: y(v) + 4}, opts.format(v));
  }
  for (const [i, label] of opts.labels.entries()) {
    if (n <= 12 || i % Math.ceil(n / 12) === 0) add("text", {x: x(i) - 4, y: H - 4}, label);
  }
  const width = Math.max(2, (W - L) / n / (series.length + 1));
  series.forEach((s, k) => {
    if (s.bars) {
      s.values.forEach((v, i) => v != null && add("rect", {x: x(i) - (width * series.length) / 2 + k * width,
        y: y(v), width: width, height: Math.max(0, H - B - y(v)), fill: s.color}));
      return;
    }
    const pts = s.values.map((v, i) => v == null ? null : `${x(i)},${y(v)}`).filter(Boolean);
    if (pts.length) add("polyline", {points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 2});
    s.values.forEach((v, i) => v != null && add("circle", {cx: x(i), cy: y(v), r: 3, fill: s.color}));
  });
}

const bytes = (b) => b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : b >= 1e3 ? `${(b / 1e3).toFixed(1)} kB` : `${Math.round(b)} B`;

function render(s) {
  $("federation").textContent = s.federation;
  $("round").textContent = s.round;
  let phase = s.phase;
  if (phase === "idle" && s.next_round_at) phase = `next round at ${time(s.next_round_at)}`;
  $("phase").textContent = phase;
  $("model").textContent = (s.current_version || "-").slice(0, 12);
  $("gateway").textContent = s.gateway.running ? `running${s.gateway.pid ? " (pid " + s.gateway.pid + ")" : ""}` : "not running";
  $("updated").textContent = time(s.generated);
  const training = s.rounds.filter((r) => r.mode !== "eval");
  const evaluated = s.rounds.filter((r) => r.accuracy != null || r.loss != null);
  const maxLoss = Math.max(1e-9, ...evaluated.map((r) => r.loss ?? 0));
  chart($("quality"), [
    {values: evaluated.map((r) => r.accuracy), color: "var(--acc)"},
    {values: evaluated.map((r) => r.loss == null ? null : r.loss / maxLoss), color: "var(--loss)"},
  ], {max: 1, labels: evaluated.map((r) => r.round), format: (v) => v.toFixed(2)});
  chart($("bytes"), [
    {values: training.map((r) => r.uplink_bytes), color: "var(--up)", bars: true},
    {values: training.map((r) => r.downlink_bytes_estimate), color: "var(--down)", bars: true},
  ], {log: true, labels: training.map((r) => r.round), format: bytes});
  rows("devices", s.devices.map((d) => `<tr data-device="${esc(d.device)}"><td class="mono">${esc(d.device)}</td>` +
    `<td class="state-${d.state}">${d.state}</td><td>${ago(d.seen_ago_s)}</td>` +
    `<td class="mono">${esc((d.model_version || "-").slice(0, 12))}</td><td>${d.samples ?? "-"}</td>` +
    `<td>${d.failures}</td><td>${d.refusals}</td><td>${esc(d.failure || d.last_refusal || "")}</td></tr>`));
  rows("rounds", s.rounds.slice(-15).reverse().map((r) => `<tr><td>${r.round}</td><td>${r.mode}</td>` +
    `<td>${r.status}</td><td>${r.mode === "eval" ? r.reports : r.updates}</td><td>${r.refused}</td>` +
    `<td>${r.uplink_bytes}</td><td>${r.seconds == null ? "-" : r.seconds.toFixed(1)}</td>` +
    `<td>${r.accuracy == null ? "-" : r.accuracy.toFixed(4)}</td></tr>`));
  const p = s.privacy;
  $("privacy").innerHTML = p ? `${esc(p.mode)}: &epsilon; spent <b>${p.epsilon.toFixed(3)}</b> of ${p.target} ` +
    `(&delta; = ${p.delta}), ${p.rounds_left} ${p.mode === "central-dp" ? "rounds" : "updates"} left` :
    "differential privacy is off";
  rows("models", s.models.slice().reverse().map((m) => `<tr><td class="mono">${m.version.slice(0, 12)}` +
    `${m.current ? " <b>current</b>" : ""}</td><td>${m.round ?? "initial"}</td><td>${time(m.created)}</td>` +
    `<td>${m.size}</td><td>${m.on_disk ? `<a href="${withToken("models/" + m.version + ".tflite")}">.tflite</a>` : ""}</td></tr>`));
  const events = [...s.refusals.map((r) => ({round: r.round, device: r.device, what: `refused: ${r.reason}`, t: r.received})),
    ...s.failures.map((f) => ({round: f.round, device: f.device, what: `failed ${f.kind}: ${f.reason} ${f.detail}`, t: f.received}))]
    .sort((a, b) => b.t - a.t).slice(0, 15);
  rows("refusals", events.map((e) => `<tr><td>${e.round ?? "-"}</td><td class="mono">${esc(e.device)}</td><td>${esc(e.what)}</td></tr>`));
}

async function poll() {
  try {
    const response = await fetch(withToken("api/state"), {cache: "no-store"});
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    render(await response.json());
    $("error").textContent = "";
  } catch (err) {
    $("error").textContent = `cannot read the gateway's state: ${err.message}`;
  }
  setTimeout(poll, 2000);
}
poll();
