// The live dashboard: our own plain JavaScript, no third-party code. Every value from the
// gateway is put into the page as text (textContent), never as markup.
"use strict";

const HISTORY_S = 300;          // the charts show the last five minutes
const STALE_CYCLES = 5;         // a view older than this many cycles (and at least 1 s) is stale
const SILENCE_S = 2.0;          // no message for this long: the stream is down

let facts = null;               // the site's static facts (from the first message)
let lastMessageAt = 0;          // performance.now() of the last message, ms
let lastAge = null;             // the age of the view in the last message, s
let streamUp = false;
const history = {};             // actuator name -> [[t_wall_s, applied, proposal], ...]
const rows = {};                // "<table>:<name>" -> {cells...}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(x, unit) {
  if (x === null || x === undefined) return "–";
  // Four significant digits, no trailing zeros (2.5, not 2.500); large values to 0.001.
  const s = Math.abs(x) >= 1000 ? String(Math.round(x * 1000) / 1000)
                                : String(Number(x.toPrecision(4)));
  return unit ? s + " " + unit : s;
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function utc(wallS) {
  if (wallS === null || wallS === undefined) return "–";
  return new Date(wallS * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function ageText(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 120) return Math.max(0, Math.round(s)) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function limitsText(lim) {
  if (!lim) return "none";
  const parts = [fmt(lim.min) + " … " + fmt(lim.max)];
  if (lim.allowed) parts.push("allowed " + lim.allowed.join(", "));
  if (lim.max_rate_per_s !== null) parts.push("rate ≤ " + fmt(lim.max_rate_per_s) + "/s");
  if (lim.max_step !== null) parts.push("step ≤ " + fmt(lim.max_step));
  parts.push(lim.policy);
  return parts.join("; ");
}

function build(site) {
  facts = site;
  setText("site", site.site);
  document.title = site.site + ": safety gateway";
  const abody = document.querySelector("#actuators tbody");
  abody.replaceChildren();
  for (const a of site.actuators) {
    const tr = el("tr");
    tr.dataset.name = a.name;
    const r = {name: el("td", a.name + (a.unit ? " (" + a.unit + ")" : "")),
               proposal: el("td", "–", "num proposal"), applied: el("td", "–", "num applied"),
               source: el("td", "–", "source"), limits: el("td", limitsText(a.limits)),
               chart: el("td")};
    r.canvas = el("canvas");
    r.canvas.width = 320; r.canvas.height = 60;
    r.chart.append(r.canvas);
    tr.append(r.name, r.proposal, r.applied, r.source, r.limits, r.chart);
    abody.append(tr);
    rows["a:" + a.name] = r;
    if (!history[a.name]) history[a.name] = [];
  }
  const sbody = document.querySelector("#sensors tbody");
  sbody.replaceChildren();
  for (const s of site.sensors) {
    const tr = el("tr");
    tr.dataset.name = s.name;
    const r = {value: el("td", "–", "num value"), quality: el("td", "–", "quality"),
               age: el("td", "–", "num age"),
               range: el("td", fmt(s.range[0]) + " … " + fmt(s.range[1]) + (s.unit ? " " + s.unit : ""))};
    tr.append(el("td", s.name), r.value, r.quality, r.age, r.range);
    sbody.append(tr);
    rows["s:" + s.name] = r;
  }
}

function showMargins(margins) {
  const body = document.querySelector("#margins tbody");
  if (body.children.length !== margins.length) {
    body.replaceChildren();
    for (const m of margins) {
      const tr = el("tr");
      tr.dataset.name = m.name;
      const r = {margin: el("td", "–", "num margin"), bar: el("td")};
      r.fill = el("span", null, "bar");
      r.bar.append(r.fill);
      tr.append(el("td", m.kind), el("td", m.name), el("td", m.text), r.margin, r.bar);
      body.append(tr);
      rows["m:" + m.name] = r;
    }
  }
  for (const m of margins) {
    const r = rows["m:" + m.name];
    if (!r) continue;
    r.margin.textContent = fmt(m.margin);
    const level = m.margin === null ? "bad" : m.margin < 0 ? "bad"
                : (m.fraction !== null && m.fraction < 0.1) ? "near" : "";
    r.margin.className = "num margin " + level;
    r.fill.className = "bar " + level;
    const frac = m.fraction === null ? null : Math.max(0, Math.min(1, m.fraction * 2));
    r.fill.style.width = frac === null ? "0" : Math.round(frac * 100) + "px";
  }
}

function draw(name, lim) {
  const r = rows["a:" + name];
  const pts = history[name];
  const c = r.canvas, g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (pts.length < 1) return;
  const tEnd = pts[pts.length - 1][0], tStart = tEnd - HISTORY_S;
  let lo = lim ? lim.min : Infinity, hi = lim ? lim.max : -Infinity;
  for (const p of pts) for (const v of [p[1], p[2]]) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!(hi > lo)) { hi = lo + 1; }
  const x = (t) => (t - tStart) / HISTORY_S * (c.width - 2) + 1;
  const y = (v) => c.height - 2 - (v - lo) / (hi - lo) * (c.height - 4);
  g.strokeStyle = "#bbb"; g.lineWidth = 1;
  g.strokeRect(0.5, 0.5, c.width - 1, c.height - 1);
  for (const [k, colour, dash] of [[2, "#1f5fa8", [4, 3]], [1, "#111", []]]) {
    g.beginPath(); g.setLineDash(dash); g.strokeStyle = colour; g.lineWidth = 1.5;
    let pen = false;
    for (const p of pts) {
      if (p[k] === null) { pen = false; continue; }
      if (pen) g.lineTo(x(p[0]), y(p[k])); else g.moveTo(x(p[0]), y(p[k]));
      pen = true;
    }
    g.stroke();
  }
  g.setLineDash([]);
}

function show(msg) {
  if (!facts || facts.site !== msg.site.site) build(msg.site);
  lastAge = msg.age_s;
  showIncidents(msg.incidents, msg.now_wall_s);
  const v = msg.view;
  if (!v) { setText("mode", "waiting for the first cycle"); return; }
  const mode = document.getElementById("mode");
  // The core names modes in lower case ("safe_stop"); people read them as SAFE_STOP.
  mode.textContent = v.mode.toUpperCase();
  mode.dataset.mode = v.mode.toUpperCase();
  document.getElementById("latch").hidden = !v.latched;
  setText("trip-reason", v.trip_reason || "(no reason recorded)");
  incidentId = v.incident_id;
  showHeaderIncident(msg);
  showHealth(v.health);
  showDetectors(v.detectors);
  showCandidate(v.candidate);
  setText("bypasses", v.bypasses.length === 0 ? "none" :
          v.bypasses.map((b) => b.detector + " until " + b.expires).join(", "));
  setText("cycle", String(v.cycle));
  setText("age", fmt(msg.age_s, "s"));
  const limits = {};
  for (const a of facts.actuators) limits[a.name] = a.limits;
  for (const a of v.actuators) {
    const r = rows["a:" + a.name];
    if (!r) continue;
    const unit = facts.actuators.find((f) => f.name === a.name).unit;
    r.proposal.textContent = fmt(a.proposal, unit);
    r.applied.textContent = fmt(a.applied, unit);
    r.source.textContent = a.source;
    r.source.className = "source src-" + a.source;
    const h = history[a.name];
    if (h.length === 0 || h[h.length - 1][0] < v.at_wall_s) h.push([v.at_wall_s, a.applied, a.proposal]);
    while (h.length > 0 && h[0][0] < v.at_wall_s - HISTORY_S) h.shift();
    draw(a.name, limits[a.name]);
  }
  v.sensors.forEach((s, i) => {
    const r = rows["s:" + s.name];
    if (!r) return;
    const unit = facts.sensors[i].unit;
    r.value.textContent = fmt(s.value, unit);
    r.quality.textContent = s.good ? "good" : "BAD";
    r.quality.className = "quality" + (s.good ? "" : " bad");
    r.age.textContent = fmt(v.sensor_age_s[i], "s");
  });
  showMargins(v.margins);
}

// ---------------------------------------------------------------- header: incident and health

function showHeaderIncident(msg) {
  const inc = msg.incident;
  const dd = document.getElementById("incident");
  if (!inc) { dd.textContent = "none"; dd.dataset.level = "ok"; return; }
  const parts = [inc.id];
  if (inc.phase) parts.push(inc.phase.toUpperCase());
  if (inc.opened_wall_s !== null) parts.push(ageText(msg.now_wall_s - inc.opened_wall_s) + " old");
  dd.textContent = parts.join(" · ");
  dd.dataset.level = "bad";
}

function showHealth(h) {
  const audit = document.getElementById("audit-health");
  const devs = document.getElementById("device-health");
  if (!h || !h.counted) {
    audit.textContent = "not counted"; audit.dataset.level = "unknown";
    devs.textContent = "not counted"; devs.dataset.level = "unknown";
    document.getElementById("audit-bad").hidden = true;
    document.getElementById("devices-bad").hidden = true;
    return;
  }
  const a = h.audit;
  const auditText = (a.fault ? "FAULT; " : "") + "backlog " + a.pending + ", lost " + a.lost +
                    ", alarms " + a.alarms;
  audit.textContent = (a.level === "ok" ? "ok: " : "") + auditText;
  audit.dataset.level = a.level;
  document.getElementById("audit-bad").hidden = a.level !== "bad";
  setText("audit-why", auditText);
  const devText = h.devices.map((d) => d.name + " " + d.state + " (" + d.reconnects + " reconnects)");
  devs.textContent = devText.length ? devText.join(", ") : "none";
  const bad = h.devices.filter((d) => d.level === "bad");
  devs.dataset.level = bad.length ? "bad" : h.devices.some((d) => d.level === "unknown") ? "unknown" : "ok";
  document.getElementById("devices-bad").hidden = bad.length === 0;
  setText("devices-why", bad.map((d) => d.name + " " + d.state.toUpperCase() + ", " +
                                 d.reconnects + " reconnects").join("; "));
}

// ---------------------------------------------------------------- detectors

function showDetectors(list) {
  const body = document.querySelector("#detectors tbody");
  if (body.children.length !== list.length ||
      list.some((d, i) => body.children[i].dataset.name !== d.name)) {
    body.replaceChildren();
    for (const d of list) {
      const tr = el("tr");
      tr.dataset.name = d.name;
      const r = {value: el("td", "–", "num value"), limit: el("td", "–", "num limit"), bar: el("td")};
      r.fill = el("span", null, "bar");
      r.bar.append(r.fill);
      tr.append(el("td", d.name), r.value, r.limit, r.bar);
      body.append(tr);
      rows["d:" + d.name] = r;
      r.tr = tr;
    }
  }
  for (const d of list) {
    const r = rows["d:" + d.name];
    r.value.textContent = fmt(d.value);
    r.limit.textContent = fmt(d.limit);
    r.tr.dataset.level = d.level;
    r.fill.className = "bar " + (d.level === "bad" ? "bad" : d.level === "near" ? "near" : "");
    const frac = d.fraction === null ? (d.level === "bad" ? 1 : 0) : Math.max(0, Math.min(1, d.fraction));
    r.fill.style.width = Math.round(frac * 100) + "px";
  }
}

// ---------------------------------------------------------------- candidate

let candidateKey = null;  // the verdict table as last drawn (redrawn when it changes)

function showCandidate(c) {
  const panel = document.getElementById("candidate-panel");
  panel.hidden = !c;
  if (!c) return;
  const status = document.getElementById("candidate-status");
  status.textContent = c.errors ? "OFF: it failed and was switched off (see the log)" :
    c.disagreements ? "judging; it disagrees with the enforced site" : "judging; no disagreement";
  status.dataset.level = c.level;
  setText("candidate-judged", String(c.judged));
  setText("candidate-disagreements", String(c.disagreements) + (c.mode ? " (" + c.mode +
          " cycles in another mode)" : ""));
  setText("candidate-totals", c.clamp + " / " + c.reject + " / " + c.trip);
  setText("candidate-last", c.last_disagreement_utc === null ? "none" :
          utc(c.last_disagreement_utc) + " UTC");
  const key = c.verdicts.map((d) => d.action + " " + d.name + " " + d.count).join("|");
  if (key === candidateKey) return;
  candidateKey = key;
  const body = document.querySelector("#candidate-verdicts tbody");
  body.replaceChildren();
  for (const d of c.verdicts) {
    const tr = el("tr");
    tr.dataset.name = d.name;
    tr.append(el("td", d.name), el("td", d.action), el("td", String(d.count), "num"));
    body.append(tr);
  }
}

// ---------------------------------------------------------------- incidents and events

let selectedIncident = null;    // the incident whose detail is shown (null: the newest open)
let listKey = "";               // the incident list as last drawn (redrawn when it changes)
let eventsKey = "";

let lastNowWall = null;         // the gateway's wall clock in the last message, UTC s
let lastDoc = null;             // the incidents document last received

function showIncidents(doc, nowWall) {
  lastNowWall = nowWall;
  if (doc) lastDoc = doc;       // null in a message: unchanged since the last one
  doc = lastDoc;
  if (!doc) return;
  setText("incidents-status", doc.error ? "Incidents cannot be read: " + doc.error :
          doc.incidents.length === 0 ? "No incidents recorded." : "");
  const key = JSON.stringify(doc.incidents);
  const body = document.querySelector("#incidents tbody");
  if (key !== listKey) {
    listKey = key;
    body.replaceChildren();
    for (const inc of doc.incidents) {
      const tr = el("tr");
      tr.dataset.id = inc.id;
      tr.dataset.open = inc.open ? "true" : "false";
      tr.tabIndex = 0;
      const age = el("td", "–", "age");
      tr.append(el("td", inc.id, "id"), el("td", inc.phase, "phase"), el("td", utc(inc.opened_wall_s)),
                age, el("td", inc.detector + ": " + inc.reason),
                el("td", inc.done + "/" + inc.total, "checklist"));
      tr.addEventListener("click", () => select(inc.id));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") select(inc.id); });
      body.append(tr);
    }
    if (selectedIncident === null && doc.incidents.length) selectedIncident = doc.incidents[0].id;
    if (selectedIncident !== null) loadDetail(selectedIncident);
  }
  for (const tr of body.children) {
    const inc = doc.incidents.find((i) => i.id === tr.dataset.id);
    if (inc) tr.querySelector(".age").textContent = ageText(nowWall - inc.opened_wall_s);
    tr.setAttribute("aria-selected", tr.dataset.id === selectedIncident ? "true" : "false");
  }
  if (selectedDetail) {
    setText("sel-age", ageText(nowWall - selectedDetail.opened_wall_s));
    showDeadlines(selectedDetail, nowWall);
  }
  const ekey = JSON.stringify(doc.events.length ? doc.events[0].seq : null) + doc.events.length;
  if (ekey !== eventsKey) {
    eventsKey = ekey;
    const ebody = document.querySelector("#events tbody");
    ebody.replaceChildren();
    for (const e of doc.events) {
      const tr = el("tr");
      tr.dataset.kind = e.kind;
      tr.append(el("td", utc(e.wall_s)), el("td", e.kind, "kind"), el("td", e.actor), el("td", e.text, "text"));
      ebody.append(tr);
    }
  }
}

let selectedDetail = null;

function select(id) {
  selectedIncident = id;
  loadDetail(id);
}

async function loadDetail(id) {
  let d = null;
  try {
    const r = await fetch("/api/incidents/" + encodeURIComponent(id), {credentials: "same-origin"});
    if (r.ok) d = await r.json();
  } catch (e) { d = null; }
  if (id !== selectedIncident) return;  // another was selected meanwhile
  selectedDetail = d;
  document.getElementById("incident-detail").hidden = d === null;
  if (!d) return;
  setText("sel-id", d.id);
  setText("sel-phase", d.phase.toUpperCase());
  setText("sel-trigger", d.detector + ": " + d.reason);
  setText("sel-age", ageText(lastNowWall - d.opened_wall_s));
  setText("evidence-result", "");
  setText("sel-severity", d.severity || "not set");
  showDeadlines(d, lastNowWall);
  setText("sel-review", d.review ? "recorded by " + d.review.who + " (" + utc(d.review.wall_s) +
          "): root cause: " + d.review.root_cause : "not recorded yet");
  const actions = document.getElementById("sel-actions");
  actions.replaceChildren();
  if (d.actions.length === 0) actions.append(el("li", "none"));
  for (const a of d.actions) {
    const li = el("li", "#" + a.number + " " + a.text + " (" + a.owner + ", due " + a.due + "): " +
                  (a.done ? "done by " + a.done_by : "open"));
    li.dataset.number = String(a.number);
    if (!a.done) {
      const b = el("button", "Done");
      b.type = "button";
      b.className = "action-done";
      b.addEventListener("click", () =>
        act("/api/incident", {action: "action_done", incident_id: d.id, args: [String(a.number), ""]},
            "action item " + a.number + " done", "incident-result"));
      li.append(" ", b);
    }
    actions.append(li);
  }
  setText("sel-requires", !d.open ? "resolved" : d.open_requirements.length === 0 ? "nothing open" :
          d.open_requirements.length + " open: " + d.open_requirements.slice(0, 5).join("; ") +
          (d.open_requirements.length > 5 ? "; …" : ""));
  const list = document.getElementById("sel-checklist");
  list.replaceChildren();
  for (const p of d.checklist) {
    const li = el("li", p.phase + ": " + p.done + "/" + p.total + " done");
    li.dataset.phase = p.phase;
    const ul = el("ul");
    for (const item of p.items) ul.append(el("li", (item.done ? "☑ " : "☐ ") + item.text + (item.by ? " (" + item.by + ")" : "")));
    li.append(ul);
    list.append(li);
  }
  const tbody = document.querySelector("#sel-timeline tbody");
  tbody.replaceChildren();
  for (const e of d.timeline) {
    const tr = el("tr");
    tr.append(el("td", utc(e.wall_s)), el("td", e.kind), el("td", e.who || ""), el("td", e.text));
    tbody.append(tr);
  }
  for (const tr of document.querySelectorAll("#incidents tbody tr"))
    tr.setAttribute("aria-selected", tr.dataset.id === id ? "true" : "false");
}

// Each reporting deadline: reported, overdue, or due in how long (against the gateway's clock).
function showDeadlines(d, nowWall) {
  const ul = document.getElementById("sel-deadlines");
  ul.replaceChildren();
  if (d.deadlines.length === 0) ul.append(el("li", "none runs for this incident"));
  for (const dl of d.deadlines) {
    let state;
    if (dl.reported) state = "reported by " + dl.reported_by + " (" + utc(dl.reported_wall_s) + ")";
    else if (nowWall !== null && nowWall > dl.due_wall_s) state = "OVERDUE by " + ageText(nowWall - dl.due_wall_s);
    else state = "due in " + ageText(nowWall === null ? null : dl.due_wall_s - nowWall) + " (" + utc(dl.due_wall_s) + ")";
    const li = el("li", dl.obligation + ": " + state);
    li.dataset.state = dl.reported ? "reported" : (nowWall !== null && nowWall > dl.due_wall_s ? "overdue" : "due");
    ul.append(li);
  }
}

async function downloadEvidence(e) {
  e.preventDefault();
  const id = selectedIncident;
  if (!id) return;
  const out = document.getElementById("evidence-result");
  out.dataset.ok = "true";
  out.textContent = "building the bundle…";
  let resp;
  try {
    resp = await fetch("/api/incidents/" + encodeURIComponent(id) + "/evidence.zip", {credentials: "same-origin"});
  } catch (err) {
    out.dataset.ok = "false"; out.textContent = "the gateway did not answer"; return;
  }
  if (!resp.ok) {
    const answer = await resp.json().catch(() => ({}));
    out.dataset.ok = "false";
    out.textContent = "refused: " + (answer.error || ("HTTP " + resp.status));
    return;
  }
  const blob = await resp.blob();
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = "evidence-" + id + ".zip";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  out.textContent = "downloaded (" + blob.size + " bytes)";
}

function linkCheck() {
  const cycleS = facts ? facts.cycle_ms / 1000 : 0.1;
  const silent = (performance.now() - lastMessageAt) / 1000;
  let why = null;
  if (!streamUp) why = "the event stream is down (reconnecting)";
  else if (silent > SILENCE_S) why = "no message for " + silent.toFixed(1) + " s";
  else if (lastAge !== null && lastAge > Math.max(1.0, STALE_CYCLES * cycleS))
    why = "the view is " + lastAge.toFixed(1) + " s old: the safety core publishes nothing new";
  document.getElementById("link-lost").hidden = why === null;
  if (why !== null) setText("link-why", why);
  document.body.dataset.link = why === null ? "up" : "lost";
}

function connect() {
  // EventSource reconnects by itself after an error, at the server's `retry:` delay.
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { streamUp = true; });
  source.addEventListener("error", () => { streamUp = false; linkCheck(); });
  source.addEventListener("state", (e) => {
    streamUp = true;
    lastMessageAt = performance.now();
    show(JSON.parse(e.data));
    linkCheck();
  });
}

// ---------------------------------------------------------------- login and actions

let csrf = null;                // the session's CSRF token; null when not logged in
let incidentId = "";            // the open incident the actions apply to

function showSession(info) {
  csrf = info ? info.csrf : null;
  document.getElementById("login-form").hidden = info !== null;
  document.getElementById("who").hidden = info === null;
  if (info) { setText("who-user", info.user); setText("who-role", info.role); }
}

function result(ok, text, where) {
  const r = document.getElementById(where || "action-result");
  r.dataset.ok = ok ? "true" : "false";
  r.textContent = text;
}

async function post(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (csrf) headers["X-CSRF-Token"] = csrf;
  try {
    const resp = await fetch(path, {method: "POST", headers, body: JSON.stringify(body),
                                    credentials: "same-origin"});
    const answer = await resp.json().catch(() => ({}));
    return {status: resp.status, answer};
  } catch (e) {
    return {status: 0, answer: {error: "the gateway did not answer"}};
  }
}

async function act(path, body, what, where) {
  const {status, answer} = await post(path, body);
  if (status === 401) { showSession(null); result(false, what + ": refused: log in first", where); return; }
  if (status === 200 && answer.accepted) { result(true, what + ": " + (answer.reason || "applied"), where); return; }
  // A refusal shows the core's reason (for resolve: what is still open), never "accepted".
  result(false, what + ": refused: " + (answer.reason || answer.error || ("HTTP " + status)), where);
}

function wireActions() {
  document.getElementById("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const user = document.getElementById("login-user").value;
    const password = document.getElementById("login-password").value;
    const {status, answer} = await post("/api/login", {user, password});
    document.getElementById("login-password").value = "";
    if (status === 200) { showSession(answer); result(true, "logged in as " + answer.user); }
    else result(false, "login refused: " + (answer.error || ("HTTP " + status)));
  });
  document.getElementById("logout").addEventListener("click", async () => {
    await post("/api/logout", {});
    showSession(null);
    result(true, "logged out");
  });
  document.getElementById("request-mode").addEventListener("click", () => {
    const kind = document.getElementById("mode-request").value;
    act("/api/request", {kind}, "mode request " + kind);
  });
  document.getElementById("reset-trip").addEventListener("click", () =>
    act("/api/request", {kind: "reset_trip"}, "reset trip"));
  for (const [id, action] of [["acknowledge", "acknowledge"], ["note", "note"]]) {
    document.getElementById(id).addEventListener("click", () => {
      if (!incidentId) { result(false, action + ": no open incident"); return; }
      const text = document.getElementById("incident-text").value;
      act("/api/incident", {action, incident_id: incidentId, args: [text]}, action);
    });
  }
  document.getElementById("evidence").addEventListener("click", downloadEvidence);
  // Severity and resolve apply to the incident whose detail is shown.
  document.getElementById("raise-severity").addEventListener("click", () => {
    if (!selectedIncident) return;
    const level = document.getElementById("severity-level").value;
    const reason = document.getElementById("severity-reason").value;
    act("/api/incident", {action: "severity", incident_id: selectedIncident, args: [level, reason]},
        "severity " + level, "incident-result");
  });
  document.getElementById("resolve").addEventListener("click", () => {
    if (!selectedIncident) return;
    const summary = document.getElementById("resolve-summary").value;
    act("/api/incident", {action: "resolve", incident_id: selectedIncident, args: [summary]},
        "resolve", "incident-result");
  });
  // A page reloaded while logged in picks its session up again.
  fetch("/api/session", {credentials: "same-origin"})
    .then((r) => (r.ok ? r.json() : null)).then(showSession).catch(() => showSession(null));
}

wireActions();
connect();
setInterval(linkCheck, 250);
