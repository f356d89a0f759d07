// azsim hub dashboard. Presentation only: every action is a call to the hub's REST API through
// the dashboard's /api bridge, and every error shown is the hub's own message.
"use strict";

const $ = (id) => document.getElementById(id);
const AUTH_KEY = "azsim.dashboard.auth";
const MAX_POINTS = 300;
const MAX_MESSAGES = 10;
const MAX_LOG = 200;

const state = {
  hub: null,
  devices: [],
  device: null,        // the device page's id
  twinEtag: null,      // the etag the desired editor edits against
  chart: null,
  series: [],          // numeric field names, in chart order
  points: [[]],        // uPlot data: [times, ...fields]
  telemetryTimes: new Map(),  // device + enqueued time -> ms, for the per-minute counter
  sentC2d: new Map(),  // messageId -> list item, for feedback
  c2dEvents: new Map(),  // messageId -> its outcome events (they may beat the send's answer)
};

// ---- authorization (only beyond loopback) ----------------------------------------------------

function b64ToBytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// A SharedAccessSignature for the hub from a service connection string (Azure's recipe).
async function tokenFromConnectionString(cs) {
  const parts = Object.fromEntries(cs.split(";").filter(Boolean).map((kv) => {
    const i = kv.indexOf("=");
    return [kv.slice(0, i), kv.slice(i + 1)];
  }));
  if (!parts.HostName || !parts.SharedAccessKey || !parts.SharedAccessKeyName) {
    throw new Error("a service connection string needs HostName, SharedAccessKeyName and SharedAccessKey");
  }
  const sr = encodeURIComponent(parts.HostName);
  const se = Math.floor(Date.now() / 1000) + 3600;
  const key = await crypto.subtle.importKey("raw", b64ToBytes(parts.SharedAccessKey),
    { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const sig = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`${sr}\n${se}`));
  const sig64 = btoa(String.fromCharCode(...new Uint8Array(sig)));
  return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig64)}&se=${se}` +
    `&skn=${encodeURIComponent(parts.SharedAccessKeyName)}`;
}

async function authHeader() {
  if (!state.hub || state.hub.auth === "loopback") return {};
  const secret = sessionStorage.getItem(AUTH_KEY);
  if (!secret) return {};
  const token = secret.startsWith("SharedAccessSignature ")
    ? secret : await tokenFromConnectionString(secret);
  return { Authorization: token };
}

// ---- calls -------------------------------------------------------------------------------------

// The hub's error text: Azure's shape nests a JSON string with `message` in `Message`.
function hubMessage(status, text) {
  try {
    const v = JSON.parse(text);
    if (v && typeof v.Message === "string") {
      try { return JSON.parse(v.Message).message || v.Message; } catch (_) { return v.Message; }
    }
    if (v && v.message) return v.message;
  } catch (_) { /* not JSON */ }
  return text || `HTTP ${status}`;
}

class HubError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// `body` is sent as it is when a string (so the hub, not the page, judges the JSON).
async function api(method, path, { body, headers = {} } = {}) {
  const h = { ...(await authHeader()), ...headers };
  if (body !== undefined) h["Content-Type"] = "application/json";
  const r = await fetch(path.startsWith("/hub") ? path : `/api${path}`, {
    method, headers: h,
    body: body === undefined ? undefined : (typeof body === "string" ? body : JSON.stringify(body)),
  });
  const text = await r.text();
  if (r.status === 401 && state.hub && state.hub.auth === "token") showLogin("the hub refused the credentials");
  if (!r.ok) throw new HubError(r.status, hubMessage(r.status, text));
  return { status: r.status, json: text ? JSON.parse(text) : null, headers: r.headers };
}

const enc = encodeURIComponent;

// ---- small DOM helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function setText(id, text) { $(id).textContent = text == null ? "" : String(text); }
function clearErrors(...ids) { for (const id of ids) setText(id, ""); }
function pretty(v) { return JSON.stringify(v, null, 2); }
function timeText(t) {
  if (!t || t.startsWith("0001-")) return "never";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}
function stripMeta(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj || {})) if (!k.startsWith("$")) out[k] = v;
  return out;
}

// ---- views -------------------------------------------------------------------------------------

function showView(name) {
  for (const v of ["login", "view-devices", "view-device", "view-hub"]) $(v).hidden = v !== name;
  $("nav-devices").toggleAttribute("aria-current", name === "view-devices" || name === "view-device");
  $("nav-hub").toggleAttribute("aria-current", name === "view-hub");
}

function showLogin(why) {
  sessionStorage.removeItem(AUTH_KEY);
  showView("login");
  setText("login-error", why || "");
  $("login-secret").focus();
}

async function route() {
  if (state.hub && state.hub.auth === "token" && !sessionStorage.getItem(AUTH_KEY)) {
    showLogin();
    return;
  }
  const hash = location.hash || "#/devices";
  const m = hash.match(/^#\/devices\/(.+)$/);
  if (m) {
    showView("view-device");
    await openDevice(decodeURIComponent(m[1]));
  } else if (hash === "#/hub") {
    state.device = null;
    showView("view-hub");
    renderHub();
  } else {
    state.device = null;
    showView("view-devices");
  }
  await refreshDevices();
}

// ---- devices -----------------------------------------------------------------------------------

function signedIn() {
  return !state.hub || state.hub.auth === "loopback" || !!sessionStorage.getItem(AUTH_KEY);
}

async function refreshDevices() {
  if (!signedIn()) return;
  try {
    const r = await api("GET", "/devices?top=1000");
    state.devices = r.json || [];
    setText("devices-error", "");
  } catch (e) {
    setText("devices-error", e.message);
    return;
  }
  renderDevices();
  renderCounters();
  if (state.device) {
    const d = state.devices.find((x) => x.deviceId === state.device);
    if (d) renderDeviceState(d);
  }
}

function renderDevices() {
  const body = $("devices-body");
  body.replaceChildren();
  for (const d of state.devices) {
    const enabled = d.status === "enabled";
    body.append(el("tr", { "data-device": d.deviceId },
      el("td", {}, el("a", { href: `#/devices/${enc(d.deviceId)}`, text: d.deviceId })),
      el("td", { class: `conn ${d.connectionState}`, text: d.connectionState }),
      el("td", { text: d.status }),
      el("td", { text: timeText(d.lastActivityTime) }),
      el("td", { class: "num", text: d.cloudToDeviceMessageCount }),
      el("td", { text: (d.authentication && d.authentication.type) || "" }),
      el("td", {},
        el("button", { type: "button", text: enabled ? "Disable" : "Enable",
          "aria-label": `${enabled ? "Disable" : "Enable"} ${d.deviceId}`,
          onclick: () => setEnabled(d, !enabled) }),
        el("button", { type: "button", text: "Delete", class: "danger",
          "aria-label": `Delete ${d.deviceId}`, onclick: () => removeDevice(d) }))));
  }
  $("devices-empty").hidden = state.devices.length > 0;
}

async function createDevice(ev) {
  ev.preventDefault();
  clearErrors("create-error");
  const id = $("create-id").value;
  try {
    await api("PUT", `/devices/${enc(id)}`, { body: { deviceId: id } });
    const cs = await api("GET", `/hub/devices/${enc(id)}/connection-string`);
    setText("created-id", id);
    $("created-cs").value = cs.json.connectionString;
    $("created").hidden = false;
    $("create-id").value = "";
  } catch (e) {
    setText("create-error", e.message);
  }
  await refreshDevices();
}

async function setEnabled(d, enabled) {
  try {
    await api("PUT", `/devices/${enc(d.deviceId)}`, {
      body: { deviceId: d.deviceId, status: enabled ? "enabled" : "disabled",
        authentication: d.authentication },
      headers: { "If-Match": `"${d.etag}"` },
    });
  } catch (e) { setText("devices-error", e.message); }
  await refreshDevices();
}

async function removeDevice(d) {
  if (!confirm(`Delete ${d.deviceId}? Its twin and queued messages go with it.`)) return;
  try {
    await api("DELETE", `/devices/${enc(d.deviceId)}`, { headers: { "If-Match": "*" } });
  } catch (e) { setText("devices-error", e.message); }
  await refreshDevices();
}

// ---- one device --------------------------------------------------------------------------------

function renderDeviceState(d) {
  const s = $("device-state");
  s.textContent = `${d.connectionState}, ${d.status}, C2D queue ${d.cloudToDeviceMessageCount}`;
  s.className = `pill conn ${d.connectionState}`;
}

async function openDevice(id) {
  if (state.device !== id) {
    state.device = id;
    state.twinEtag = null;
    state.sentC2d.clear();
    setText("device-name", id);
    setText("device-state", "");
    $("messages-body").replaceChildren();
    $("c2d-feedback").replaceChildren();
    clearErrors("twin-error", "twin-result", "method-error", "method-name-error",
      "method-payload-error", "method-timeout-error", "c2d-error", "c2d-result");
    setText("method-status", "");
    setText("method-response", "");
    resetChart();
    await loadTwin(true);
    await loadRecentTelemetry(id);
  }
}

async function loadTwin(intoEditor) {
  const id = state.device;
  try {
    const r = await api("GET", `/twins/${enc(id)}`);
    const t = r.json;
    setText("twin-json", pretty(t));
    setText("twin-reported", pretty(stripMeta(t.properties.reported)));
    if (intoEditor) {
      state.twinEtag = t.etag;
      $("twin-desired").value = pretty(stripMeta(t.properties.desired));
      setText("twin-etag", `editing against etag ${t.etag}`);
    }
  } catch (e) {
    setText("twin-error", e.message);
  }
}

async function saveDesired(ev) {
  ev.preventDefault();
  clearErrors("twin-error", "twin-result");
  // The editor's text goes to the hub as it is: the hub judges it and says what is wrong.
  const body = `{"properties":{"desired":${$("twin-desired").value}}}`;
  try {
    const r = await api("PATCH", `/twins/${enc(state.device)}`, {
      body, headers: { "If-Match": `"${state.twinEtag}"` } });
    state.twinEtag = r.json.etag;
    setText("twin-etag", `editing against etag ${r.json.etag}`);
    setText("twin-result", `desired $version ${r.json.properties.desired.$version}`);
    setText("twin-json", pretty(r.json));
  } catch (e) {
    const msg = e.status === 412
      ? `conflict: the twin changed since you loaded it (etag ${state.twinEtag}); your edit is ` +
        `kept here, nothing was changed. Reload the twin, then apply it again. (${e.message})`
      : e.message;
    $("twin-error").dataset.status = String(e.status);
    setText("twin-error", msg);
  }
}

async function invokeMethod(ev) {
  ev.preventDefault();
  clearErrors("method-error", "method-name-error", "method-payload-error", "method-timeout-error");
  setText("method-status", "…");
  setText("method-response", "");
  const t = $("method-timeout").value.trim();
  // Numbers go as numbers, anything else as a string: the hub says what it accepts.
  const timeout = /^\d+$/.test(t) ? t : JSON.stringify(t);
  const payload = $("method-payload").value.trim() || "null";
  const body = `{"methodName":${JSON.stringify($("method-name").value)},` +
    `"responseTimeoutInSeconds":${timeout},"payload":${payload}}`;
  try {
    const r = await api("POST", `/twins/${enc(state.device)}/methods`, { body });
    setText("method-status", r.json.status);
    setText("method-response", pretty(r.json.payload));
  } catch (e) {
    setText("method-status", e.status);
    const field = /Timeout/.test(e.message) ? "method-timeout-error"
      : /methodName/.test(e.message) ? "method-name-error"
      : /JSON/.test(e.message) ? "method-payload-error" : "method-error";
    setText(field, e.message);
  }
}

async function sendC2d(ev) {
  ev.preventDefault();
  clearErrors("c2d-error", "c2d-result");
  const properties = {};
  for (const line of $("c2d-props").value.split("\n")) {
    if (!line.trim()) continue;
    const i = line.indexOf("=");
    properties[i < 0 ? line.trim() : line.slice(0, i).trim()] = i < 0 ? "" : line.slice(i + 1);
  }
  const ack = $("c2d-ack").value;
  try {
    const r = await api("POST", `/emulator/devices/${enc(state.device)}/c2d`,
      { body: { body: $("c2d-body").value, properties, ack } });
    setText("c2d-result", `queued ${r.json.messageId} (queue depth ${r.json.queueDepth})`);
    const li = el("li", { "data-message-id": r.json.messageId,
      text: `${r.json.messageId}: queued (ack ${ack})` });
    $("c2d-feedback").prepend(li);
    state.sentC2d.set(r.json.messageId, li);
    for (const ev of state.c2dEvents.get(r.json.messageId) || []) showC2dOutcome(li, ev);
  } catch (e) {
    setText("c2d-error", e.message);
  }
  await refreshDevices();
}

// ---- telemetry chart ---------------------------------------------------------------------------

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"];

function resetChart() {
  if (state.chart) state.chart.destroy();
  state.chart = null;
  state.series = [];
  state.points = [[]];
  $("chart").dataset.points = "0";
  $("chart").replaceChildren(el("p", { class: "muted", text: "waiting for numeric telemetry…" }));
}

function buildChart() {
  if (state.chart) state.chart.destroy();
  const box = $("chart");
  box.replaceChildren();
  const opts = {
    width: Math.max(300, box.clientWidth || 600), height: 170,
    series: [{}, ...state.series.map((name, i) => ({
      label: name, stroke: COLORS[i % COLORS.length], width: 2 }))],
    axes: [{}, {}],
    scales: { x: { time: true } },
  };
  state.chart = new uPlot(opts, state.points, box);
}

function addPoint(tSec, fields) {
  let grew = false;
  for (const name of Object.keys(fields)) {
    if (!state.series.includes(name)) {
      state.series.push(name);
      state.points.push(state.points[0].map(() => null));
      grew = true;
    }
  }
  state.points[0].push(tSec);
  state.series.forEach((name, i) => state.points[i + 1].push(name in fields ? fields[name] : null));
  if (state.points[0].length > MAX_POINTS) for (const s of state.points) s.shift();
  if (grew || !state.chart) buildChart(); else state.chart.setData(state.points);
  $("chart").dataset.points = String(state.points[0].length);
}

function numericFields(body) {
  try {
    const v = JSON.parse(body);
    if (!v || typeof v !== "object" || Array.isArray(v)) return {};
    return Object.fromEntries(Object.entries(v).filter(([, x]) => typeof x === "number"));
  } catch (_) { return {}; }
}

function showTelemetry(ev) {
  const t = Date.parse(ev.enqueuedTime) || Date.now();
  const body = ev.body != null ? ev.body : `(binary, base64) ${ev.bodyBase64}`;
  const fields = numericFields(ev.body || "");
  if (Object.keys(fields).length) addPoint(t / 1000, fields);
  const props = { ...(ev.systemProperties || {}), ...(ev.properties || {}) };
  const propText = Object.entries(props).filter(([, v]) => v != null)
    .map(([k, v]) => `${k}=${v}`).join("  ");
  const tbody = $("messages-body");
  tbody.prepend(el("tr", {}, el("td", { text: new Date(t).toLocaleTimeString() }),
    el("td", { class: "mono", text: body }), el("td", { class: "mono small", text: propText })));
  while (tbody.children.length > MAX_MESSAGES) tbody.lastChild.remove();
}

async function loadRecentTelemetry(id) {
  try {
    const r = await api("GET", `/emulator/events/recent?deviceId=${enc(id)}&limit=${MAX_MESSAGES}`);
    const evs = (r.json || []).filter((e) => e.type === "telemetry" && !e.moduleId);
    evs.sort((a, b) => Date.parse(a.enqueuedTime) - Date.parse(b.enqueuedTime));
    for (const e of evs) showTelemetry(e);
  } catch (_) { /* the live stream still fills it */ }
}

// ---- hub view ----------------------------------------------------------------------------------

function renderHub() {
  const h = state.hub;
  if (!h) return;
  setText("hub-hostname", h.hostname);
  setText("hub-mqtt", `mqtts://${h.mqttHost}`);
  setText("hub-https", `https://${h.hostname}:${h.httpsPort}`);
  setText("hub-ca-file", h.caFile);
  setText("hub-amqp", h.amqpPort ? `amqps://${h.hostname}:${h.amqpPort}` : "not served");
  setText("hub-idscope", h.idScope ? `${h.idScope} (provisioning host ${h.provisioningHost})` : "");
  $("hub-eh-block").hidden = !h.eventHubConnectionString;
  $("hub-eh").value = h.eventHubConnectionString || "";
  $("hub-cs-block").hidden = !h.serviceConnectionString;
  $("hub-cs").value = h.serviceConnectionString || "";
  renderCounters();
}

function renderCounters() {
  const now = Date.now();
  for (const [k, t] of state.telemetryTimes) if (now - t >= 60000) state.telemetryTimes.delete(k);
  setText("count-connected", state.devices.filter((d) => d.connectionState === "Connected").length);
  setText("count-devices", state.devices.length);
  setText("count-minute", state.telemetryTimes.size);
}

function logEvent(ev) {
  const what = {
    telemetry: () => (ev.body || "").slice(0, 120),
    connected: () => "connected",
    disconnected: () => `disconnected${ev.reason ? ` (${ev.reason})` : ""}`,
    twinDesired: () => `desired v${ev.version}: ${JSON.stringify(ev.patch)}`,
    twinReported: () => `reported v${ev.version}: ${JSON.stringify(ev.patch)}`,
    c2dCompleted: () => `c2d ${ev.messageId} completed`,
    c2dFeedback: () => `c2d ${ev.messageId} feedback ${ev.description || ev.statusCode}`,
  }[ev.type];
  const who = ev.moduleId ? `${ev.deviceId}/${ev.moduleId}` : ev.deviceId;
  const li = el("li", { "data-type": ev.type },
    el("time", { text: new Date().toLocaleTimeString() }), " ",
    el("strong", { text: ev.type }), " ", el("span", { text: who }), " ",
    el("span", { class: "mono", text: what ? what() : JSON.stringify(ev) }));
  const log = $("event-log");
  log.prepend(li);
  while (log.children.length > MAX_LOG) log.lastChild.remove();
}

// One telemetry message, counted once whether it came from the log or the live stream.
function countMessage(ev) {
  const t = Date.parse(ev.enqueuedTime) || Date.now();
  state.telemetryTimes.set(`${ev.deviceId}/${ev.moduleId || ""}@${ev.enqueuedTime}`, t);
}

// Messages of the last minute that arrived before the page opened, from the hub's telemetry log.
async function seedMinuteCounter() {
  try {
    const r = await api("GET", "/emulator/events/recent?limit=1000");
    const since = Date.now() - 60000;
    for (const e of r.json || []) {
      const t = Date.parse(e.enqueuedTime);
      if (e.type === "telemetry" && t > since) countMessage(e);
    }
    renderCounters();
  } catch (_) { /* the live stream still counts */ }
}

// ---- the event stream --------------------------------------------------------------------------

function showC2dOutcome(li, ev) {
  li.textContent += ev.type === "c2dCompleted" ? "; completed by the device"
    : `; feedback: ${ev.description || ev.statusCode}`;
  li.dataset.outcome = ev.type === "c2dCompleted" ? "completed" : String(ev.description || ev.statusCode);
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshDevices, 150);
}

function onEvent(ev) {
  logEvent(ev);
  const mine = state.device && ev.deviceId === state.device && !ev.moduleId;
  switch (ev.type) {
    case "telemetry":
      countMessage(ev);
      renderCounters();
      if (mine) showTelemetry(ev);
      break;
    case "connected": case "disconnected":
      refreshSoon();
      break;
    case "twinReported": case "twinDesired":
      if (mine) loadTwin(false);
      break;
    case "c2dCompleted": case "c2dFeedback": {
      const seen = state.c2dEvents.get(ev.messageId) || [];
      seen.push(ev);
      state.c2dEvents.set(ev.messageId, seen);
      if (state.c2dEvents.size > 500) state.c2dEvents.delete(state.c2dEvents.keys().next().value);
      const li = state.sentC2d.get(ev.messageId);
      if (li) showC2dOutcome(li, ev);
      refreshSoon();
      break;
    }
    default: break;
  }
}

async function streamEvents() {
  if (state.streaming) return;
  state.streaming = true;
  let delay = 500;
  for (;;) {
    if (!signedIn()) {
      await new Promise((res) => setTimeout(res, 1000));
      continue;
    }
    try {
      const r = await fetch("/api/emulator/events", { headers: await authHeader() });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      setText("stream-state", "live");
      $("stream-state").className = "pill conn Connected";
      delay = 500;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (data) { try { onEvent(JSON.parse(data)); } catch (_) { /* not ours */ } }
        }
      }
    } catch (_) { /* retried below */ }
    setText("stream-state", "reconnecting…");
    $("stream-state").className = "pill conn Disconnected";
    await new Promise((res) => setTimeout(res, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// ---- start -------------------------------------------------------------------------------------

function copyButtons() {
  for (const b of document.querySelectorAll("button.copy")) {
    b.addEventListener("click", async () => {
      const input = $(b.dataset.copy);
      try { await navigator.clipboard.writeText(input.value); } catch (_) {
        input.select(); document.execCommand("copy");
      }
      b.textContent = "Copied";
      setTimeout(() => { b.textContent = "Copy"; }, 1500);
    });
  }
}

async function start() {
  const r = await fetch("/hub");
  state.hub = await r.json();
  $("create-form").addEventListener("submit", createDevice);
  $("twin-form").addEventListener("submit", saveDesired);
  $("twin-reload").addEventListener("click", () => { clearErrors("twin-error"); loadTwin(true); });
  $("method-form").addEventListener("submit", invokeMethod);
  $("c2d-form").addEventListener("submit", sendC2d);
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const secret = $("login-secret").value.trim();
    try {
      if (!secret.startsWith("SharedAccessSignature ")) await tokenFromConnectionString(secret);
    } catch (e) { setText("login-error", e.message); return; }
    sessionStorage.setItem(AUTH_KEY, secret);
    $("login-secret").value = "";
    await route();
  });
  copyButtons();
  window.addEventListener("hashchange", route);
  setInterval(refreshDevices, 5000);
  setInterval(renderCounters, 5000);
  await route();
  streamEvents();
  if (signedIn()) seedMinuteCounter();
  document.body.dataset.ready = "1";
}

start();
