// The predictor dashboard: plain JS, no build step. Two views on one page:
//   #/            the fleet, riskiest first, with a sparkline of each node's recent risk
//   #/node/NAME   one node: risk over time, the "why", its state, its action log, undrain
// Every data call goes to the /v1 API with the operator's key as a Bearer token.
"use strict";

const REFRESH_MS = 5000;
const FLEET_TOP = 500; // rows on the fleet page
const SPARK_POINTS = 120; // risk points per sparkline
const NODE_HISTORY = 2000; // risk points on a node's chart
const ACTION_ROWS = 50;
const KEY_STORAGE = "predictor.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";

// Colour bands for display only; the policy's thresholds live in the service settings.
const riskClass = (r) => (r >= 0.8 ? "high" : r >= 0.4 ? "mid" : "low");

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// -- the API ------------------------------------------------------------------------------
const apiKey = () => localStorage.getItem(KEY_STORAGE) || "";

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      const doc = await resp.json();
      detail = typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc.detail);
    } catch (_) {
      /* not JSON: keep the status text */
    }
    throw new ApiError(resp.status, detail);
  }
  return resp.json();
}

// null instead of an error for "not there (yet)".
async function apiOptional(path) {
  try {
    return await api(path);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

const nodePath = (node) => `/v1/nodes/${encodeURIComponent(node)}`;

// -- small DOM helpers (text always goes in as text, never as HTML) -----------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

const $ = (id) => document.getElementById(id);

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// -- formatting ---------------------------------------------------------------------------
const fmtTime = (ts) => new Date(ts * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";
const fmtNum = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

function fmtAge(seconds) {
  if (seconds < 90) return `${Math.round(seconds)}s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86400)}d`;
}

function trendArrow(trend) {
  if (trend > 0.05) return el("span", { className: "trend up", title: fmtNum(trend) }, "↑");
  if (trend < -0.05) return el("span", { className: "trend down", title: fmtNum(trend) }, "↓");
  return el("span", { className: "trend flat", title: fmtNum(trend) }, "→");
}

const stateBadge = (state) => el("span", { className: `badge ${state}` }, state);

function riskCell(risk) {
  return el(
    "td",
    { className: `num risk ${riskClass(risk)}`, "data-risk": risk },
    el("span", { className: "value" }, fmtNum(risk)),
    el("span", { className: "gauge" }, el("span", { style: `width:${Math.round(risk * 100)}%` })),
  );
}

const whyText = (why) =>
  why
    .slice(0, 3)
    .map((w) => `${w.metric} ${fmtNum(w.score)}`)
    .join(", ");

// -- charts -------------------------------------------------------------------------------
// x by event time, y = risk in [0, 1]; returns the polyline's points attribute.
function linePoints(points, key, x0, x1, width, height, pad) {
  const span = Math.max(x1 - x0, 1e-9);
  return points
    .map((p) => {
      const x = pad + ((p.ts - x0) / span) * (width - 2 * pad);
      const y = pad + (1 - Math.min(Math.max(p[key], 0), 1)) * (height - 2 * pad);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

function sparkline(points, risk) {
  const width = 120;
  const height = 26;
  const box = svg("svg", {
    class: `spark ${riskClass(risk)}`,
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
  });
  if (points.length < 2) return box;
  const x0 = points[0].ts;
  const x1 = points[points.length - 1].ts;
  box.append(
    svg("title", {}, `${points.length} points, ${fmtTime(x0)} – ${fmtTime(x1)}`),
    svg("polyline", { points: linePoints(points, "risk", x0, x1, width, height, 2) }),
  );
  return box;
}

const ACTION_COLOURS = { drain: "#c0392b", failover: "#c0392b", undrain: "#1e8449" };

function riskChart(points, actions) {
  const width = 900;
  const height = 220;
  const pad = 28;
  const chart = svg("svg", {
    class: "risk-chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
  });
  if (points.length < 2) {
    chart.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no history yet"));
    return chart;
  }
  const x0 = points[0].ts;
  const x1 = points[points.length - 1].ts;
  for (const level of [0, 0.5, 1]) {
    const y = pad + (1 - level) * (height - 2 * pad);
    chart.append(
      svg("line", { x1: pad, x2: width - pad, y1: y, y2: y, class: "grid" }),
      svg("text", { x: 2, y: y + 4, class: "axis" }, level.toFixed(1)),
    );
  }
  for (const [i, ts] of [x0, (x0 + x1) / 2, x1].entries()) {
    const x = pad + (i / 2) * (width - 2 * pad);
    const anchor = ["start", "middle", "end"][i];
    chart.append(svg("text", { x, y: height - 6, class: "axis", "text-anchor": anchor }, fmtTime(ts)));
  }
  // Decisions as vertical marks, so a drain can be read against the risk that caused it.
  for (const a of actions) {
    if (a.ts < x0 || a.ts > x1 || !(a.action in ACTION_COLOURS)) continue;
    const x = pad + ((a.ts - x0) / Math.max(x1 - x0, 1e-9)) * (width - 2 * pad);
    chart.append(
      svg(
        "line",
        { x1: x, x2: x, y1: pad, y2: height - pad, stroke: ACTION_COLOURS[a.action], class: "mark" },
        svg("title", {}, `${a.action} (${a.status}) at ${fmtTime(a.ts)}: ${a.reason}`),
      ),
    );
  }
  chart.append(
    svg("polyline", { class: "online", points: linePoints(points, "online", x0, x1, width, height, pad) }),
    svg("polyline", { class: "risk", points: linePoints(points, "risk", x0, x1, width, height, pad) }),
  );
  return chart;
}

// -- the action log -----------------------------------------------------------------------
// drained: node -> true for nodes currently drained; only their latest drain gets a button.
function actionRows(actions, drained) {
  const seen = new Set();
  return actions.map((a) => {
    const latest = !seen.has(a.node);
    seen.add(a.node);
    const canUndrain =
      latest && drained.has(a.node) && (a.action === "drain" || a.action === "failover");
    return el(
      "tr",
      { className: `action ${a.action}`, "data-action": a.action },
      el("td", {}, fmtTime(a.ts)),
      el("td", {}, el("a", { href: `#/node/${encodeURIComponent(a.node)}` }, a.node)),
      el("td", {}, a.action),
      el("td", {}, el("span", { className: `badge ${a.status}` }, a.status)),
      el("td", { className: "num" }, fmtNum(a.risk)),
      el("td", { className: "reason" }, a.reason, a.detail ? el("div", { className: "muted" }, a.detail) : null),
      el("td", {}, canUndrain ? undrainButton(a.node) : null),
    );
  });
}

function undrainButton(node) {
  return el("button", { type: "button", className: "undrain-btn", onclick: () => undrain(node) }, "Undrain");
}

async function undrain(node) {
  if (!window.confirm(`Undrain ${node}? It goes back into service now.`)) return;
  try {
    await api(`${nodePath(node)}/undrain`, {
      method: "POST",
      body: { reason: "operator override from the dashboard" },
    });
    setStatus(`${node} undrained`, "ok");
  } catch (err) {
    reportError(err, `undrain ${node}`);
  }
  await refresh();
}

// -- views --------------------------------------------------------------------------------
const histories = new Map(); // node -> recent {ts, risk} points, grown incrementally

async function sparkPoints(node) {
  const known = histories.get(node) || [];
  const since = known.length ? known[known.length - 1].ts : 0;
  const fresh = await api(`${nodePath(node)}/history?since=${since}&limit=${SPARK_POINTS}`);
  // `since` is inclusive; the last known point comes back and is dropped here.
  const merged = known.concat(fresh.filter((p) => p.ts > since)).slice(-SPARK_POINTS);
  histories.set(node, merged);
  return merged;
}

async function renderFleet() {
  const [fleet, actions] = await Promise.all([
    api(`/v1/risk?top=${FLEET_TOP}`),
    api(`/v1/actions?limit=${ACTION_ROWS}`),
  ]);
  const points = await Promise.all(fleet.map((r) => sparkPoints(r.node)));
  $("fleet-count").textContent = `${fleet.length} node${fleet.length === 1 ? "" : "s"}, riskiest first`;
  $("fleet-empty").hidden = fleet.length > 0;
  fill(
    $("fleet-table").tBodies[0],
    fleet.map((r, i) =>
      el(
        "tr",
        { "data-node": r.node, className: r.state },
        el("td", {}, el("a", { href: `#/node/${encodeURIComponent(r.node)}` }, r.node)),
        riskCell(r.risk),
        el("td", {}, sparkline(points[i], r.risk)),
        el("td", {}, trendArrow(r.trend)),
        el("td", {}, stateBadge(r.state)),
        el("td", { className: "why" }, whyText(r.why)),
        el("td", { className: "num" }, fmtAge(r.staleness_s)),
      ),
    ),
  );
  const drained = new Set(fleet.filter((r) => r.state === "drained").map((r) => r.node));
  fill($("fleet-actions").tBodies[0], actionRows(actions, drained));
}

async function renderNode(node) {
  const [risk, meta, history, actions] = await Promise.all([
    apiOptional(`${nodePath(node)}/risk`),
    apiOptional(nodePath(node)),
    api(`${nodePath(node)}/history?limit=${NODE_HISTORY}`),
    api(`/v1/actions?node=${encodeURIComponent(node)}&limit=${ACTION_ROWS}`),
  ]);
  $("node-name").textContent = node;
  $("node-missing").hidden = risk !== null || meta !== null;
  $("node-missing").textContent = `No node ${node} is registered or scored.`;
  const state = risk ? risk.state : "unscored";
  const badge = $("node-state");
  badge.className = `badge ${state}`;
  badge.textContent = state;
  $("node-risk").textContent = risk ? fmtNum(risk.risk) : "–";
  $("node-risk").className = `big ${risk ? riskClass(risk.risk) : ""}`;
  $("node-parts").textContent = risk
    ? `${fmtNum(risk.online)} / ${fmtNum(risk.batch)} / ${fmtNum(risk.p_fail)}`
    : "–";
  $("node-trend").replaceChildren(risk ? trendArrow(risk.trend) : "–", risk ? ` ${fmtNum(risk.trend)}` : "");
  $("node-ts").textContent = risk ? `${fmtTime(risk.ts)} (${fmtAge(risk.staleness_s)} ago)` : "–";
  $("node-meta").textContent = meta ? `${meta.pool} / ${meta.standby || "none"}` : "not registered";

  const drainedBox = $("node-undrain-box");
  drainedBox.hidden = state !== "drained";
  const lastDrain = actions.find((a) => a.action === "drain" || a.action === "failover");
  $("node-drained-since").textContent =
    state === "drained" && lastDrain ? ` since ${fmtTime(lastDrain.ts)} (${lastDrain.status})` : "";

  $("node-chart").replaceChildren(riskChart(history, actions));
  const why = risk ? risk.why : [];
  $("node-why-empty").hidden = why.length > 0;
  fill(
    $("node-why").tBodies[0],
    why.map((w) =>
      el(
        "tr",
        { "data-metric": w.metric },
        el("td", {}, w.metric),
        el("td", { className: "num" }, fmtNum(w.score)),
        el(
          "td",
          { className: "whybar" },
          el("span", { className: `bar ${riskClass(w.score)}`, style: `width:${Math.round(w.score * 100)}%` }),
        ),
        el("td", { className: "num" }, fmtNum(w.z, 1)),
        el("td", { className: "num" }, fmtNum(w.value, 3)),
      ),
    ),
  );
  fill($("node-actions").tBodies[0], actionRows(actions, new Set(state === "drained" ? [node] : [])));
}

// -- routing, refresh, the key ------------------------------------------------------------
function route() {
  const match = location.hash.match(/^#\/node\/(.+)$/);
  return match ? { view: "node", node: decodeURIComponent(match[1]) } : { view: "fleet" };
}

function setStatus(text, kind = "") {
  const status = $("status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

function reportError(err, what) {
  if (err instanceof ApiError && err.status === 401) {
    askForKey("The API did not accept this key.");
  } else if (err instanceof ApiError && err.status === 403) {
    setStatus(`${what}: this key may not do that (${err.message})`, "error");
  } else {
    setStatus(`${what} failed: ${err.message}`, "error");
  }
}

let timer = null;
let running = false;
let again = false; // a refresh was asked for while one ran (a click, a new route)

async function refresh() {
  clearTimeout(timer);
  if (running) {
    again = true;
    return;
  }
  // A hidden tab does not poll; visibilitychange starts it again.
  if (document.hidden) return;
  running = true;
  const where = route();
  $("fleet-view").hidden = where.view !== "fleet";
  $("node-view").hidden = where.view !== "node";
  try {
    if (where.view === "node") await renderNode(where.node);
    else await renderFleet();
    document.body.dataset.loaded = where.view;
    setStatus(`updated ${new Date().toLocaleTimeString()}`, "ok");
  } catch (err) {
    reportError(err, "refresh");
  } finally {
    running = false;
    if (again) {
      again = false;
      refresh();
    } else {
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }
}

function askForKey(message = "") {
  const error = $("key-error");
  error.hidden = !message;
  error.textContent = message;
  $("key-input").value = apiKey();
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
}

function setUp() {
  $("key-form").addEventListener("submit", () => {
    localStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
    histories.clear();
    refresh();
  });
  $("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    $("key-input").value = "";
  });
  $("change-key").addEventListener("click", () => askForKey());
  $("undrain").addEventListener("click", () => {
    const where = route();
    if (where.view === "node") undrain(where.node);
  });
  window.addEventListener("hashchange", refresh);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  if (!apiKey()) askForKey();
  else refresh();
}

setUp();
