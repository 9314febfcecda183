// The bridge explorer page: fetches this node's JSON views and renders them.
//
// Every string from the server is untrusted (a burn destination, a refusal reason, a peer's name
// can be anything), so text only ever reaches the page through textContent / createTextNode, and
// attributes are set only for names chosen here. No innerHTML, no eval, no inline handlers: the
// page's Content-Security-Policy forbids them anyway.
"use strict";

const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";

// -- building blocks ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    node.setAttribute(name, String(value));
  }
}

// a table cell holding text, tagged with the field it shows (data-field) for readers and tests
function cell(field, value, cls) {
  const shown = value === null || value === undefined || value === "" ? "—" : value;
  return el("td", {"data-field": field, "class": cls}, shown);
}

function when(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fill(tableId, rows, emptyText, columns) {
  const body = document.querySelector(`#${tableId} tbody`);
  if (rows.length === 0) {
    body.replaceChildren(el("tr", {"class": "empty"}, el("td", {"colspan": columns, "class": "muted"}, emptyText)));
  } else {
    body.replaceChildren(...rows);
  }
}

async function getJSON(path) {
  const response = await fetch(path, {cache: "no-store", credentials: "omit"});
  if (!response.ok) {
    let reason = `${response.status}`;
    try { reason += ": " + (await response.json()).error; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${reason}`);
  }
  return response.json();
}

// -- deposits -------------------------------------------------------------------------------------

function depositsQuery() {
  const params = new URLSearchParams({limit: "100"});
  const q = document.getElementById("deposit-search").value.trim();
  const state = document.getElementById("deposit-state").value;
  if (q) params.set("q", q);
  if (state) params.set("state", state);
  return "/api/deposits?" + params.toString();
}

function renderDeposits(doc) {
  const rows = doc.deposits.map((d) => el("tr", {"data-deposit-id": d.deposit_id, "data-state": d.state},
    cell("state", d.state, "state-" + d.state),
    cell("asset", d.asset),
    el("td", {"data-field": "amount", "data-raw": d.amount}, `${d.amount_display} ${d.asset}`),
    cell("confirmations", `${d.confirmations} / ${d.required_confirmations}`),
    cell("outpoint", d.outpoint, "mono"),
    cell("address", d.address, "mono"),
    cell("recipient", d.recipient, "mono"),
    cell("mint_tx", d.mint_tx, "mono"),
    cell("deposit_id", d.deposit_id, "mono"),
    cell("reason", d.reason),
    cell("updated_at", when(d.updated_at))));
  fill("deposits", rows, "No deposit matches.", 11);
  const counts = Object.entries(doc.counts).filter(([, n]) => n > 0).map(([s, n]) => `${s}: ${n}`);
  document.getElementById("deposit-counts").textContent = counts.length ? "On this node — " + counts.join(", ")
    : "No deposits on this node yet.";
}

// -- withdrawals ----------------------------------------------------------------------------------

function renderWithdrawals(doc) {
  const rows = doc.withdrawals.map((w) => {
    const variants = el("td", {"data-field": "payouts", "class": "mono"});
    for (const v of w.payouts) {
      const line = v.replaces ? `${v.txid} (bump of ${v.replaces}, fee ${v.fee})` : `${v.txid} (fee ${v.fee})`;
      variants.appendChild(el("div", {"data-txid": v.txid}, line));
    }
    if (w.payouts.length === 0) variants.textContent = "—";
    return el("tr", {"data-burn-id": w.burn_id, "data-state": w.state},
      cell("kind", w.kind === "account" ? "account" : "burn"),
      cell("state", w.state, "state-" + w.state),
      el("td", {"data-field": "amount", "data-raw": w.amount}, w.amount_display),
      cell("destination", w.destination, "mono"),
      cell("txid", w.txid, "mono"),
      cell("confirmations", `${w.confirmations} / ${w.required_confirmations}`),
      cell("bumps", String(w.bumps)),
      variants,
      cell("burn_id", w.burn_id, "mono"),
      cell("reason", w.reason),
      cell("updated_at", when(w.updated_at)));
  });
  fill("withdrawals", rows, "No withdrawals on this node yet.", 11);
}

// -- reserves chart -------------------------------------------------------------------------------

function chart(asset) {
  const width = 900, height = 260, left = 90, right = 16, top = 14, bottom = 34;
  const samples = asset.samples;
  const series = [["liabilities", "liabilities_display"], ["supply", "supply_display"], ["custody", "custody_display"]];
  const times = samples.map((s) => s.at);
  const values = samples.flatMap((s) => series.map(([, key]) => Number(s[key])));
  let t0 = Math.min(...times), t1 = Math.max(...times);
  if (t1 === t0) { t0 -= 30; t1 += 30; }
  let v0 = 0, v1 = Math.max(...values);
  if (!(v1 > v0)) v1 = 1;
  v1 *= 1.1;
  const x = (t) => left + (t - t0) / (t1 - t0) * (width - left - right);
  const y = (v) => height - bottom - (v - v0) / (v1 - v0) * (height - top - bottom);
  const root = svg("svg", {"class": "chart", "viewBox": `0 0 ${width} ${height}`, "role": "img",
    "data-chart": asset.symbol, "data-samples": samples.length});
  root.appendChild(svg("title", {}, `${asset.symbol}: custody against liabilities, ${samples.length} samples`));
  root.appendChild(svg("line", {"x1": left, "y1": height - bottom, "x2": width - right, "y2": height - bottom,
    "stroke": "#999"}));
  root.appendChild(svg("line", {"x1": left, "y1": top, "x2": left, "y2": height - bottom, "stroke": "#999"}));
  for (const frac of [0, 0.5, 1]) {
    const v = v0 + frac * (v1 - v0);
    root.appendChild(svg("text", {"x": left - 6, "y": y(v) + 4, "text-anchor": "end"}, formatNumber(v)));
  }
  root.appendChild(svg("text", {"x": left, "y": height - 10}, when(t0)));
  root.appendChild(svg("text", {"x": width - right, "y": height - 10, "text-anchor": "end"}, when(t1)));
  for (const [name, key] of series) {
    const points = samples.map((s) => `${x(s.at).toFixed(1)},${y(Number(s[key])).toFixed(1)}`).join(" ");
    root.appendChild(svg("polyline", {"class": name, "data-series": name, "points": points, "fill": "none",
      "stroke-width": 2}));
    const last = samples[samples.length - 1];
    const dot = svg("circle", {"class": name, "cx": x(last.at), "cy": y(Number(last[key])), "r": 3});
    dot.appendChild(svg("title", {}, `${name}: ${last[key]} ${asset.symbol}`));
    root.appendChild(dot);
  }
  return root;
}

function formatNumber(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  return v.toPrecision(4);
}

function renderReserves(doc) {
  const host = document.getElementById("reserves");
  if (doc.assets.length === 0) {
    host.replaceChildren(el("p", {"class": "muted"}, "No reserve samples yet: they start with this node's first " +
      "solvency judgement (withdrawals enabled)."));
    return;
  }
  const blocks = doc.assets.map((a) => {
    const latest = a.latest;
    const facts = el("dl", {"data-field": "latest"});
    const fact = (label, field, raw, shown) => {
      facts.appendChild(el("dt", {}, label));
      facts.appendChild(el("dd", {"data-field": field, "data-raw": raw}, shown));
    };
    fact("Custody", "custody", latest.custody, `${latest.custody_display} ${a.symbol}`);
    fact("Wrapped supply", "supply", latest.supply, `${latest.supply_display} ${a.symbol}`);
    fact("Burns in flight", "in_flight", latest.in_flight, `${latest.in_flight_display} ${a.symbol}`);
    fact("Settlement accounts", "ledger", latest.ledger, `${latest.ledger_display} ${a.symbol}`);
    fact("Tolerance", "tolerance", latest.tolerance, `${latest.tolerance_display} ${a.symbol}`);
    fact("Verdict", "solvent", String(latest.solvent), latest.solvent ? "solvent" : "INSOLVENT");
    fact("Heights", "heights", "", `source ${latest.source_height ?? "—"}, supply read at ` +
      `${latest.destination_height ?? "—"}`);
    fact("Sampled", "at", String(latest.at), when(latest.at));
    const legend = el("p", {"class": "legend"}, el("span", {"class": "custody"}, "— custody"),
      el("span", {"class": "liabilities"}, "— liabilities"), el("span", {"class": "supply"}, "- - wrapped supply"));
    return el("div", {"class": "asset", "data-asset-symbol": a.symbol, "data-asset": a.asset},
      el("h3", {}, `${a.symbol} on ${a.chain}`), chart(a), legend, facts);
  });
  host.replaceChildren(...blocks);
}

// -- health ---------------------------------------------------------------------------------------

function renderHealth(doc) {
  document.getElementById("node-id").textContent = doc.node ? `— ${doc.node}` : "";
  const signer = doc.signer || {};
  const pool = signer.pool || {};
  const facts = [["Node", doc.node], ["Status", signer.status], ["Version", signer.version],
    ["Active sessions", signer.active_sessions], ["Buffered envelopes", signer.buffered_envelopes],
    ["Pool state", pool.state], ["Unverified presignatures", pool.unverified_presignatures],
    ["Quarantine", pool.quarantine_reason], ["Bridge schema", doc.schema_version], ["Event log", doc.event_seq],
    ["Errata", (doc.errata || []).length]];
  const dl = document.getElementById("signer");
  dl.replaceChildren();
  for (const [label, value] of facts) {
    if (value === undefined) continue;
    dl.appendChild(el("dt", {}, label));
    dl.appendChild(el("dd", {"data-field": label.toLowerCase().replace(/ /g, "_")}, value === null ? "—" : value));
  }
  const keys = (doc.pool && doc.pool.keys) || [];
  fill("pool", keys.map((k) => el("tr", {"data-key-id": k.key_id, "data-bridge-key": String(k.bridge_key)},
    cell("key_id", k.key_id + (k.bridge_key ? " (bridge)" : ""), "mono"),
    cell("available", String(k.available)),
    cell("reserved", String(k.reserved)),
    cell("target_depth", String(doc.pool.target_depth)))), "No key on this node yet.", 4);
  fill("peers", (doc.peers || []).map((p) => el("tr", {"data-peer": p.node_id, "data-status": p.status},
    cell("node_id", p.node_id),
    cell("address", p.address, "mono"),
    cell("status", p.status, "status-" + p.status),
    cell("rtt_ms", p.rtt_ms === undefined ? null : `${p.rtt_ms} ms`),
    cell("active_sessions", p.active_sessions === undefined ? null : String(p.active_sessions)),
    cell("envelopes_sent", String(p.envelopes_sent)),
    cell("delivery_failures", String(p.delivery_failures)),
    cell("last_serving_at", when(p.last_serving_at)))), "Peers not probed yet.", 8);
  fill("chains", (doc.chains || []).map((c) => el("tr", {"data-chain": c.chain},
    cell("chain", c.chain, "mono"),
    cell("height", c.height === null ? null : String(c.height)),
    cell("tip", c.tip === null || c.tip === undefined ? null : String(c.tip)),
    cell("paused", c.paused ? `paused: ${c.pause_reason}` : "minting", c.paused ? "bad" : "ok"),
    cell("updated_at", when(c.updated_at)))), "No chain followed yet.", 5);
  fill("solvency", Object.entries(doc.solvency || {}).map(([symbol, s]) => el("tr", {"data-symbol": symbol},
    cell("symbol", symbol),
    cell("chain", s.chain, "mono"),
    cell("solvent", s.solvent ? "solvent" : "INSOLVENT", s.solvent ? "ok" : "bad"),
    cell("reason", s.reason))), "No solvency judgement yet.", 4);
}

// -- sessions -------------------------------------------------------------------------------------

function renderSessions(doc) {
  fill("sessions", doc.sessions.map((s) => el("tr", {"data-session-id": s.session_id, "data-phase": s.phase,
    "data-state": s.state},
    cell("created_at", when(s.created_at)),
    cell("phase", s.phase),
    cell("state", s.state, s.state === "done" ? "ok" : (s.state === "running" ? "" : "bad")),
    cell("coordinator", s.coordinator),
    cell("participants", s.participants.join(", ")),
    cell("duration", s.finished_at ? `${(s.finished_at - s.created_at).toFixed(2)} s` : null),
    cell("culprits", s.culprits.join(", "), s.culprits.length ? "bad" : ""),
    cell("reason", s.reason),
    cell("session_id", s.session_id, "mono"))), "No sessions yet.", 9);
  fill("blames", doc.blames.map((b) => el("tr", {"data-blamed": b.node},
    cell("node", b.node, "bad"),
    cell("sessions", String(b.sessions)),
    cell("last_at", when(b.last_at)),
    cell("last_phase", b.last_phase),
    cell("last_reason", b.last_reason))), "Nobody blamed.", 5);
  const counts = Object.entries(doc.counts).map(([s, n]) => `${s}: ${n}`);
  document.getElementById("session-counts").textContent = counts.length ? "All sessions — " + counts.join(", ") : "";
}

// -- the loop -------------------------------------------------------------------------------------

const views = [
  [depositsQuery, renderDeposits],
  [() => "/api/withdrawals?limit=100", renderWithdrawals],
  [() => "/api/reserves", renderReserves],
  [() => "/api/health", renderHealth],
  [() => "/api/sessions?limit=50", renderSessions],
];

let timer = null;

async function refresh() {
  clearTimeout(timer);
  const problems = [];
  await Promise.all(views.map(async ([path, render]) => {
    try {
      render(await getJSON(path()));
    } catch (e) {
      problems.push(String(e.message || e));
    }
  }));
  const error = document.getElementById("error");
  error.hidden = problems.length === 0;
  error.textContent = problems.join("; ");
  document.getElementById("refreshed").textContent = `Updated ${when(Date.now() / 1000)}.`;
  document.body.setAttribute("data-loaded", "true");
  timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("deposit-filter");
  form.addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  document.getElementById("deposit-search").addEventListener("change", refresh);
  document.getElementById("deposit-state").addEventListener("change", refresh);
  refresh();
});
