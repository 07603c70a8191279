// warden dashboard: plain DOM, no framework. Every request carries the
// token in an Authorization header; the token lives in sessionStorage.
"use strict";

const KEY = "warden-token";
const $ = (id) => document.getElementById(id);
let lastEventId = null;
let streamAbort = null;
let refreshTimer = null;

function token() { return sessionStorage.getItem(KEY); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = (data.error && data.error.message) || r.statusText;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return data;
}

function showLogin(message) {
  $("login").hidden = false;
  $("main").hidden = true;
  $("halt-open").hidden = true;
  $("signout").hidden = true;
  $("login-error").textContent = message || "";
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("halt-open").hidden = false;
  $("signout").hidden = false;
}

function fmtBytes(b) {
  if (b === null || b === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + u[i];
}

function dl(pairs) {
  const d = el("dl");
  for (const [k, v] of pairs) {
    d.append(el("dt", null, k), el("dd", null, v === null || v === undefined ? "-" : v));
  }
  return d;
}

function agentCard(a) {
  const c = el("article", "card agent");
  c.dataset.agent = a.name;
  const h = el("h2");
  h.append(el("span", null, a.name + " "), el("span", "pill " + a.state, a.state));
  c.append(h);
  c.append(dl([
    ["pid", a.pid],
    ["pids", (a.pids || []).join(" ")],
    ["cpu", a.cpu_usec === null || a.cpu_usec === undefined ? "-" : (a.cpu_usec / 1e6).toFixed(2) + " s"],
    ["memory", fmtBytes(a.memory_bytes)],
    ["restarts", a.restarts],
    ["last exit", a.last_exit],
  ]));
  const mons = a.monitors || {};
  for (const name of Object.keys(mons)) {
    const m = mons[name];
    const row = el("div", "monitor");
    const frac = m.threshold > 0 ? Math.min(m.value / m.threshold, 1) : 0;
    row.append(el("div", null, name + ": " + Number(m.value).toFixed(2) + " / " + m.threshold + " " + (m.unit || "")));
    const meter = el("div", "meter");
    const fill = el("span", frac >= 1 ? "over" : frac >= 0.8 ? "warn" : "");
    fill.style.width = (frac * 100).toFixed(1) + "%";
    meter.append(fill);
    row.append(meter);
    c.append(row);
  }
  return c;
}

function renderHalt(h) {
  const box = $("last-halt");
  box.replaceChildren();
  if (!h) { box.textContent = "none"; return; }
  box.append(dl([["id", h.id], ["trigger", h.trigger], ["reason", h.reason], ["processes", h.processes], ["survivors", (h.survivors || []).length]]));
  const t = h.timings || {};
  const phases = [
    ["freeze", t.frozen_us || 0],
    ["evidence", (t.evidence_us || 0) - (t.frozen_us || 0)],
    ["kill", (t.killed_us || 0) - (t.evidence_us || 0)],
    ["empty", (t.empty_us || 0) - (t.killed_us || 0)],
  ];
  const max = Math.max(1, ...phases.map((p) => p[1]));
  const bars = el("div", "bars");
  for (const [name, us] of phases) {
    const bar = el("div", "bar");
    bar.style.width = Math.max(0, (us / max) * 100).toFixed(1) + "%";
    const wrap = el("div");
    wrap.append(bar);
    bars.append(el("span", null, name), wrap, el("span", null, (Math.max(0, us) / 1000).toFixed(2) + " ms"));
  }
  box.append(bars);
}

function renderApprovals(list) {
  const ul = $("approvals");
  ul.replaceChildren();
  if (!list.length) { ul.append(el("li", null, "nothing waiting")); return; }
  for (const r of list) {
    const li = el("li");
    li.append(el("span", "what", r.agent + " wants " + r.tool + " " + JSON.stringify(r.args || {})));
    const ok = el("button", null, "Approve");
    ok.addEventListener("click", () => act(() => api("POST", "/api/approvals/" + encodeURIComponent(r.id) + "/approve", {})));
    const no = el("button", null, "Reject");
    no.addEventListener("click", () => {
      const reason = prompt("Why reject this call?");
      if (reason) act(() => api("POST", "/api/approvals/" + encodeURIComponent(r.id) + "/reject", { reason }));
    });
    li.append(ok, no);
    ul.append(li);
  }
}

function renderAuthorizations(list) {
  const ul = $("authorizations");
  ul.replaceChildren();
  const armed = list.filter((a) => a.state === "armed");
  if (!armed.length) { ul.append(el("li", null, "none armed")); return; }
  for (const a of armed) {
    const target = typeof a.target === "string" ? a.target : JSON.stringify(a.target);
    const li = el("li");
    li.append(el("span", "what", a.id + ": " + target + " levels " + JSON.stringify(a.levels) + " - " + a.reason));
    const ex = el("button", "danger", "Execute");
    ex.addEventListener("click", () => { if (confirm("Execute " + a.id + "?")) act(() => api("POST", "/api/authorizations/" + encodeURIComponent(a.id) + "/execute")); });
    const dis = el("button", null, "Disarm");
    dis.addEventListener("click", () => act(() => api("POST", "/api/authorizations/" + encodeURIComponent(a.id) + "/disarm")));
    li.append(ex, dis);
    ul.append(li);
  }
}

async function act(fn) {
  try { await fn(); } catch (e) { alert(e.message); }
  refresh();
}

async function refresh() {
  if (!token()) return;
  try {
    const s = await api("GET", "/api/status");
    showMain();
    const state = s.daemon.state;
    const pill = $("host-state");
    pill.textContent = state === "safe_mode" ? "SAFE MODE" : state;
    pill.className = "pill " + state;
    const safe = s.daemon.safe_mode;
    $("safe-banner").hidden = !safe;
    if (safe) {
      $("safe-trigger").textContent = safe.trigger;
      $("safe-reason").textContent = safe.reason;
    }
    const grid = $("agents");
    grid.replaceChildren(...(s.agents || []).map(agentCard));
    renderHalt(s.last_halt);
  } catch (e) {
    if (e.status === 401) { sessionStorage.removeItem(KEY); stopStream(); showLogin("token refused: " + e.message); return; }
    $("host-state").textContent = "error: " + e.message;
    return;
  }
  api("GET", "/api/approvals").then((a) => renderApprovals(a.pending || [])).catch(() => renderApprovals([]));
  api("GET", "/api/authorizations").then((a) => renderAuthorizations(a.authorizations || [])).catch(() => renderAuthorizations([]));
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 150);
}

function addEvent(e) {
  const li = el("li", /halt|safe|breach|violation/.test(e.kind) ? "safety" : "");
  li.value = e.seq;
  const when = new Date(e.timestamp).toISOString().slice(11, 23);
  li.textContent = when + " " + e.kind + (e.agent ? " [" + e.agent + "]" : "") + " " + JSON.stringify(e.data);
  const log = $("events");
  log.prepend(li);
  while (log.children.length > 300) log.lastChild.remove();
}

function stopStream() {
  if (streamAbort) streamAbort.abort();
  streamAbort = null;
  $("live").textContent = "events: off";
  $("live").className = "pill off";
}

// Server-Sent Events over fetch(): EventSource cannot send the
// Authorization header. Reconnects with Last-Event-ID, so nothing is missed.
async function stream() {
  stopStream();
  const ctl = new AbortController();
  streamAbort = ctl;
  const headers = { Authorization: "Bearer " + token(), Accept: "text/event-stream" };
  if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
  try {
    const r = await fetch("/api/events", { headers, signal: ctl.signal });
    if (!r.ok) throw new Error("events: HTTP " + r.status);
    $("live").textContent = "events: live";
    $("live").className = "pill on";
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let id = null;
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("id:")) id = line.slice(3).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        if (id !== null) lastEventId = id;
        try { addEvent(JSON.parse(data.join("\n"))); } catch (_) { /* not JSON: skip */ }
        scheduleRefresh();
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (streamAbort === ctl && token()) {
    $("live").textContent = "events: reconnecting";
    $("live").className = "pill off";
    setTimeout(() => { if (streamAbort === ctl) stream(); }, 1000);
  }
}

async function start() {
  showMain();
  await refresh();
  try {
    const tail = await api("GET", "/api/audit?n=20");
    const entries = tail.entries || [];
    for (const e of entries) addEvent(e);
    if (entries.length) lastEventId = String(entries[entries.length - 1].seq);
  } catch (_) { /* a token may not read the audit: live events still come */ }
  stream();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); stopStream(); showLogin(""); });
  $("halt-open").addEventListener("click", () => { $("halt-error").textContent = ""; $("halt-dialog").showModal(); });
  $("halt-cancel").addEventListener("click", () => $("halt-dialog").close());
  $("halt-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const reason = $("halt-reason").value.trim();
    if (!reason || !$("halt-confirm").checked) { $("halt-error").textContent = "a reason and the confirmation are required"; return; }
    $("halt-go").disabled = true;
    try {
      await api("POST", "/api/halt", { reason });
      $("halt-dialog").close();
      $("halt-reason").value = "";
      $("halt-confirm").checked = false;
    } catch (e) {
      $("halt-error").textContent = e.message;
    } finally {
      $("halt-go").disabled = false;
    }
  });
  $("resume-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { reason: $("resume-reason").value.trim() };
    const authz = $("resume-authz").value.trim();
    try {
      if (authz) body.authorization = JSON.parse(authz);
      await api("POST", "/api/resume", body);
      $("resume-error").textContent = "";
      $("resume-reason").value = "";
      $("resume-authz").value = "";
    } catch (e) {
      $("resume-error").textContent = e.message;
    }
    refresh();
  });
  setInterval(refresh, 5000);
  if (token()) start(); else showLogin("");
});
