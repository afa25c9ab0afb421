// The fleet page: our own plain JavaScript, no third-party code. Every value from the fleet
// is put into the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 2000;           // how often the page asks for the fleet's status
const STALE_AFTER = 3;          // heartbeats missed before a site is stale (as the server judges)
let selected = null;            // the site whose incidents are shown

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
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
  if (s < 120) return Math.max(0, Math.round(s)) + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}

// The health now: the server's judgement, made stale here too when the heartbeat has aged
// past three periods since (the page must never keep a silent site green).
function healthNow(site, now) {
  if (site.received_wall_s === null || site.heartbeat_s === null) return site.health;
  const age = now - site.received_wall_s;
  if (age > STALE_AFTER * site.heartbeat_s) return "stale";
  return site.health;
}

function modelText(m) {
  if (!m) return "–";
  const name = m.version !== undefined && m.version !== null ? String(m.version)
    : String(m.path || "?").split("/").pop();
  return m.sha256 ? name + " (" + String(m.sha256).slice(0, 12) + ")" : name;
}

function incidentsText(site) {
  if (site.open_incidents === null || site.open_incidents === undefined) return "unknown";
  if (site.open_incidents && site.worst_severity) {
    return site.open_incidents + " (" + site.worst_severity + ")";
  }
  return String(site.open_incidents);
}

function render(doc) {
  const now = doc.now_wall_s;
  const body = document.querySelector("#sites tbody");
  const rows = [];
  const stale = [];
  const counts = {};
  for (const site of doc.sites) {
    const health = healthNow(site, now);
    counts[health] = (counts[health] || 0) + 1;
    if (health === "stale") stale.push(site.site);
    const tr = el("tr");
    tr.dataset.site = site.site;
    tr.dataset.health = health;
    tr.setAttribute("aria-selected", String(site.site === selected));
    const age = site.received_wall_s === null ? null : now - site.received_wall_s;
    const healthText = health === "stale" ? "STALE (unreachable)" : health;
    const modeNow = site.mode === null ? null : String(site.mode).toUpperCase();
    const mode = modeNow === null ? "–" : (health === "stale" ? modeNow + " (last known)"
                                                             : modeNow);
    const cells = [el("td", site.site), el("td", healthText, "health"), el("td", mode),
                   el("td", incidentsText(site)), el("td", ageText(age)),
                   el("td", site.link_state === null ? "–" : (health === "stale"
                     ? site.link_state + " (last known)" : site.link_state)),
                   el("td", site.backlog === null ? "–" : site.backlog, "num"),
                   el("td", modelText(site.model)),
                   el("td", site.gateway_version === null ? "–" : site.gateway_version)];
    for (const c of cells) tr.appendChild(c);
    if (site.problem) tr.title = site.problem;
    tr.addEventListener("click", () => {
      if (selected !== site.site) setText("work-result", "");
      selected = site.site;
      showSite();
    });
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  setText("site-count", String(doc.sites.length));
  setText("read-age", doc.read_at_wall_s === null ? "not yet" : ageText(now - doc.read_at_wall_s));
  const parts = Object.keys(counts).sort().map((k) => counts[k] + " " + k);
  setText("summary", parts.length ? parts.join(", ") : "no site has sent a heartbeat yet");
  document.getElementById("stale-banner").hidden = stale.length === 0;
  setText("stale-sites", stale.join(", "));
  const lost = document.getElementById("link-lost");
  lost.hidden = !doc.error;
  if (doc.error) setText("link-why", doc.error);
}

async function showSite() {
  if (selected === null) return;
  for (const tr of document.querySelectorAll("#sites tbody tr")) {
    tr.setAttribute("aria-selected", String(tr.dataset.site === selected));
  }
  let answer;
  try {
    answer = await fetch("/api/sites/" + encodeURIComponent(selected), {cache: "no-store"});
  } catch (e) {
    return;
  }
  const detail = document.getElementById("site-detail");
  detail.hidden = false;
  setText("detail-site", selected);
  const body = document.querySelector("#site-incidents tbody");
  if (!answer.ok) {
    setText("detail-problem", "cannot show the site: " + answer.status);
    body.replaceChildren();
    return;
  }
  const doc = await answer.json();
  const site = doc.site;
  const health = healthNow(site, doc.now_wall_s);
  setText("detail-problem", health === "stale"
    ? "STALE: as the site last reported (" + (site.problem || "no recent heartbeat") + ")"
    : (site.incidents === null ? "the site cannot read its incidents: " + site.audit_error : ""));
  const rows = [];
  for (const inc of site.incidents || []) {
    const tr = el("tr");
    tr.dataset.open = String(Boolean(inc.open));
    for (const c of [el("td", inc.id), el("td", inc.open ? "open" : "closed"),
                     el("td", inc.phase), el("td", inc.severity === null ? "–" : inc.severity),
                     el("td", utc(inc.opened_wall_s)),
                     el("td", inc.detector + ": " + inc.reason)]) {
      tr.appendChild(c);
    }
    rows.push(tr);
  }
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", "no incidents");
    td.colSpan = 6;
    tr.appendChild(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  // The incidents that can be worked: the open ones (kept selected across refreshes).
  const pick = document.getElementById("work-incident");
  const chosen = pick.value;
  const options = (site.incidents || []).filter((inc) => inc.open).map((inc) => {
    const o = el("option", inc.id);
    o.value = inc.id;
    return o;
  });
  pick.replaceChildren(...options);
  if (options.some((o) => o.value === chosen)) pick.value = chosen;
  document.getElementById("work-send").disabled = options.length === 0;
}

async function sendWork(event) {
  event.preventDefault();
  const result = document.getElementById("work-result");
  const password = document.getElementById("work-password");
  const body = {
    site: selected,
    user: document.getElementById("work-user").value,
    password: password.value,
    action: document.getElementById("work-action").value,
    incident_id: document.getElementById("work-incident").value,
    args: [document.getElementById("work-text").value],
  };
  result.dataset.ok = "";
  result.textContent = "sent to " + selected + "…";
  let answer;
  try {
    answer = await fetch("/api/incident", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body), cache: "no-store"});
  } catch (e) {
    result.dataset.ok = "false";
    result.textContent = "not sent: " + e.message;
    return;
  }
  password.value = "";  // asked again for the next action: kept nowhere
  let doc = {};
  try {
    doc = await answer.json();
  } catch (e) {
    doc = {reason: "HTTP " + answer.status};
  }
  result.dataset.ok = String(doc.accepted === true);
  result.textContent = (doc.accepted ? "accepted by " : "refused: ")
    + (doc.accepted ? doc.site + ": " : "") + (doc.reason || ("HTTP " + answer.status));
  if (doc.accepted) document.getElementById("work-text").value = "";
}

document.getElementById("work-form").addEventListener("submit", sendWork);

async function poll() {
  try {
    const answer = await fetch("/api/fleet", {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
    if (selected !== null) await showSite();
  } catch (e) {
    const lost = document.getElementById("link-lost");
    lost.hidden = false;
    setText("link-why", "the fleet page does not answer (" + e.message + ")");
  }
  setTimeout(poll, POLL_MS);
}

poll();
