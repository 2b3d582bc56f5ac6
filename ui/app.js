// KafFlow console. Plain script, no build step: it talks only to the public API under /api/v1
// with the token the user pasted, and builds every node with textContent (never innerHTML),
// so nothing the API returns can inject markup.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "kafflow.token";
const REFRESH_MS = 2000;
// Frames the Consume page keeps; a busy topic would otherwise fill the browser's memory.
const FEED_CAP = 500;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  roles: new Set(),
  tab: null,
  timer: null,
  auditNext: null,
  feed: null,
  paused: false,
  pausedFrames: [],
  // Routes this server does not have (404 `no such route`): their screens stay hidden.
  missing: new Set(),
  // Who the token is (`GET /me`): the name decides which actions a screen offers.
  me: null,
};

// Readable words for the error codes a person is likely to meet; the API's message follows.
const CODE_TEXT = {
  self_approval: "You cannot decide your own request. Another admin has to approve or reject it.",
  reason_required: "A reason is required.",
  forbidden: "Your token does not have the role this needs.",
  unauthorized: "The token was not accepted. Sign in again.",
  not_pending: "This request has already been decided.",
  topic_exists: "That topic already exists.",
  request_pending: "That topic already has an open request.",
  topic_not_active: "That topic is not active.",
  unknown_topic: "KafFlow does not know that topic. Request it first.",
  topic_closed: "That topic is closed.",
  not_owner: "Only the topic's owner or an admin may do this.",
  not_requester: "Only the requester may withdraw this request.",
  no_access: "You need a grant on that topic: ask for access on the Access tab.",
  already_granted: "You already have that access.",
  already_revoked: "That token is already revoked.",
  name_taken: "A principal of the config file has that name.",
  token_revoked: "This token was revoked. Sign in with another one.",
  token_expired: "This token has expired. Sign in with another one.",
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, code, message) {
    const lead = CODE_TEXT[code];
    super(lead ? `${lead} (${message})` : `${message || "Request failed"} [${status}${code ? " " + code : ""}]`);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (e) {
    throw new ApiError(0, "network", `KafFlow cannot be reached: ${e.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = text;
  }
  if (!response.ok) {
    const err = data && data.error;
    throw new ApiError(response.status, err ? err.code : "", err ? err.message : String(data || response.statusText));
  }
  return data;
}

// ------------------------------------------------------------------ paged lists

// Every list route answers one page and a `next` cursor. A screen shows one page at a time and
// remembers where it starts, so the 2 s refresh reloads the same page; "Next page" moves on with
// the page's cursor and "First page" goes back.
const pages = {};

async function fetchPage(name, path, params) {
  const p = pages[name] || (pages[name] = { after: null, next: null });
  const q = new URLSearchParams(params || {});
  if (p.after) q.set("after", p.after);
  const body = await api("GET", `${path}?${q}`);
  p.next = body.next;
  return body;
}

// The controls under a paged table; `reload` draws the screen again.
function pager(name, reload) {
  const p = pages[name];
  if (!p || (!p.after && !p.next)) return null;
  const go = (after) => guarded(async () => {
    p.after = after;
    await reload();
  });
  return el("div", { class: "row pager", "data-pager": name },
    p.after ? el("button", { class: "first-page", onclick: () => go(null) }, "First page") : null,
    p.next ? el("button", { class: "next-page", onclick: () => go(p.next) }, "Next page") : null);
}

// Every item of a list, following `next` (for screens that must see the whole set).
async function fetchAll(path, field, params) {
  const all = [];
  const q = new URLSearchParams({ ...(params || {}), limit: "1000" });
  for (;;) {
    const body = await api("GET", `${path}?${q}`);
    all.push(...body[field]);
    if (body.next === null || body.next === undefined) return all;
    q.set("after", body.next);
  }
}

// A 404 of the router itself, not of a thing the route looked up.
function isMissingRoute(e) {
  return e.status === 404 && e.code === "not_found" && /no such route/.test(e.message);
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  $("notice").hidden = true;
}

function showNotice(message) {
  const box = $("notice");
  box.textContent = message;
  box.hidden = false;
  $("error").hidden = true;
}

function clearMessages() {
  $("error").hidden = true;
  $("notice").hidden = true;
}

// Runs an action and reports its failure as a readable message instead of an uncaught rejection.
async function guarded(action) {
  try {
    await action();
  } catch (e) {
    showError(e.message);
  }
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleString();
}

function shape(r) {
  const cfg = Object.entries(r.config || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  return `${r.partitions} partitions × RF ${r.replication_factor}${cfg ? "; " + cfg : ""}`;
}

// ------------------------------------------------------------------ sign-in and roles

// There is no "who am I" route, so the roles are learned from which reads the token may make.
async function probeRoles() {
  const roles = new Set();
  const probe = async (role, method, path, body) => {
    try {
      await api(method, path, body);
      roles.add(role);
    } catch (e) {
      if (e.code === "unauthorized") throw e;
      if (e.code !== "forbidden") roles.add(role);
    }
  };
  await api("GET", "/topics");
  await Promise.all([
    probe("admin", "GET", "/subscriptions"),
    probe("consumer", "GET", "/me/subscriptions"),
    // An empty batch changes nothing: a producer gets invalid_record, anyone else forbidden.
    probe("producer", "POST", "/topics/kafflow-ui-probe/records", []),
  ]);
  return roles;
}

// Screens whose routes this server may not have yet: a route that answers 404 hides its tab.
async function probeRoutes() {
  const missing = new Set();
  const probe = async (name, path) => {
    try {
      await api("GET", path);
    } catch (e) {
      if (isMissingRoute(e)) missing.add(name);
    }
  };
  const probes = [probe("access", "/access-requests")];
  if (state.roles.has("admin")) probes.push(probe("tokens", "/tokens"));
  await Promise.all(probes);
  return missing;
}

async function signIn(token) {
  state.token = token;
  try {
    state.roles = await probeRoles();
  } catch (e) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showError(e.message);
    return;
  }
  state.missing = await probeRoutes();
  state.me = await whoAmI();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  const name = state.me ? `as ${state.me.name} ` : "";
  $("who").textContent = `Signed in ${name}· roles: ${[...state.roles].join(", ") || "read-only"}`;
  // Everyone may read; the tabs that act show only for the roles the API would allow.
  for (const b of document.querySelectorAll("#tabs button[data-roles]")) {
    b.hidden = !b.dataset.roles.split(" ").some((r) => state.roles.has(r));
  }
  for (const b of document.querySelectorAll("#tabs button[data-route]")) {
    if (state.missing.has(b.dataset.route)) b.hidden = true;
  }
  clearMessages();
  startRates();
  selectTab("dashboard");
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  closeFeed();
  clearInterval(state.timer);
  stopRates();
  state.token = null;
  state.me = null;
  state.roles = new Set();
  for (const name of Object.keys(pages)) delete pages[name];
  // Boxes drawn for the last user must be drawn again for the next one.
  for (const box of document.querySelectorAll("[data-key], [data-ids]")) {
    delete box.dataset.key;
    delete box.dataset.ids;
  }
  $("app").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("token").value = "";
  hideNewToken();
  clearMessages();
}

// ------------------------------------------------------------------ tabs

const TABS = {
  dashboard: { load: loadDashboard, refresh: true },
  requests: { load: loadRequests, refresh: true },
  topics: { load: loadTopics, refresh: true },
  topic: { load: loadTopicDetail },
  messages: { load: loadMessages },
  audit: { load: () => loadAudit(false) },
  produce: { load: loadPolicy },
  consume: { load: loadConsume },
  drift: { load: loadDrift, refresh: true },
  access: { load: loadAccess, refresh: true },
  tokens: { load: loadTokens },
};

function selectTab(name) {
  state.tab = name;
  clearMessages();
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.tab === name);
  }
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${name}`;
  clearInterval(state.timer);
  const tab = TABS[name];
  guarded(tab.load);
  if (tab.refresh) {
    // Polling keeps the page live (a topic turning active, failing, being deleted) with no reload.
    state.timer = setInterval(() => tab.load().catch((e) => showError(e.message)), REFRESH_MS);
  }
}

// ------------------------------------------------------------------ requests (admin)

// Admins decide others' requests; the requester withdraws their own and never sees Approve.
function requestCard(r) {
  const note = el("input", { placeholder: "note (optional)", class: "note", "aria-label": `note for ${r.topic}` });
  const reason = el("input", { placeholder: "reason (required to reject)", class: "reason", "aria-label": `reason to reject ${r.topic}` });
  const decide = (action, body) => guarded(async () => {
    await api("POST", `/topic-requests/${r.id}/${action}`, body);
    showNotice(`Request for ${r.topic} ${action === "approve" ? "approved" : "rejected"}.`);
    await loadRequests();
  });
  const mine = isMe(r.requested_by);
  const decides = state.roles.has("admin") && !mine;
  return el("article", { class: "card", "data-request": r.id, "data-topic": r.topic },
    el("h3", {}, `${r.kind} ${r.topic}`),
    el("dl", {},
      el("dt", {}, "Requested by"), el("dd", { class: "requester" }, r.requested_by),
      el("dt", {}, "At"), el("dd", {}, when(r.requested_at)),
      el("dt", {}, "Shape"), el("dd", {}, shape(r)),
      el("dt", {}, "Reason"), el("dd", {}, r.reason || "—")),
    !decides ? null : el("div", { class: "row" }, note,
      el("button", { class: "approve", onclick: () => decide("approve", { note: note.value }) }, "Approve")),
    !decides ? null : el("div", { class: "row" }, reason,
      el("button", { class: "reject danger", onclick: () => decide("reject", { reason: reason.value }) }, "Reject")),
    !mine ? null : el("div", { class: "row" }, withdrawButton(r),
      state.roles.has("admin") ? el("span", { class: "hint" }, "Your own request: another admin decides it.") : null));
}

async function loadRequests() {
  const [open, listed] = await Promise.all([
    fetchPage("pending", "/topic-requests", { status: "pending" }),
    fetchPage("decided", "/topic-requests"),
    loadMyRequests(),
  ]);
  const pending = open.requests;
  const decided = listed.requests.filter((r) => r.status !== "pending");
  // Keep what an admin is typing: only redraw the queue when its members changed.
  const box = $("pending");
  const ids = pending.map((r) => r.id).join(",") + `|${pages.pending.after}|${pages.pending.next}`;
  if (box.dataset.ids !== ids) {
    box.dataset.ids = ids;
    box.replaceChildren(...(pending.length ? pending.map(requestCard) : [el("p", { class: "empty" }, "Nothing waits for a decision.")]),
      pager("pending", loadRequests) || "");
  }
  $("decided").replaceChildren(table(
    ["Topic", "Kind", "Requested by", "Status", "Decided by", "Note / error"],
    decided.map((r) => [r.topic, r.kind, r.requested_by, r.status, r.decided_by || "—", r.error || r.decision_note || ""]),
    (r, i) => ({ "data-request": decided[i].id, "data-status": decided[i].status })),
  pager("decided", loadRequests) || "");
}

function table(head, rows, rowAttrs) {
  if (!rows.length) return el("p", { class: "empty" }, "Nothing yet.");
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r, i) => el("tr", rowAttrs ? rowAttrs(r, i) : {},
      r.map((c, j) => el("td", { "data-label": head[j] }, c)))))));
}

// ------------------------------------------------------------------ topics

async function loadTopics() {
  const { topics } = await fetchPage("topics", "/topics");
  const box = $("topics");
  if (box.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
  box.replaceChildren(table(
    ["Name", "Status", "Visibility", "Partitions", "Owner", "Held", "Published", ""],
    topics.map((t) => [topicLink(t.name), el("span", { class: `status ${t.status}` }, t.status), t.visibility || "open",
      t.partitions, t.owner, t.held, t.published, t.status === "active" ? topicControls(t) : ""]),
    (r, i) => ({ "data-topic": topics[i].name, "data-status": topics[i].status, "data-visibility": topics[i].visibility || "open" })),
  pager("topics", loadTopics) || "");
}

function topicControls(t) {
  // Deletion and handover are the owner's or an admin's: nobody else is offered them.
  if (!mayManageTopic(t)) return "";
  return el("div", {}, deletionControl(t), state.missing.has("access") ? null : handoverControl(t));
}

// Ownership handover: the owner or an admin names who takes the topic over.
function handoverControl(t) {
  const to = el("input", { placeholder: "new owner", class: "handover-to" });
  return el("span", { class: "row" }, to, el("button", {
    class: "handover",
    onclick: () => guarded(async () => {
      await api("POST", `/topics/${encodeURIComponent(t.name)}/ownership-requests`, { to: to.value.trim() });
      showNotice(`Handover of ${t.name} to ${to.value.trim()} requested; an admin or ${to.value.trim()} accepts it.`);
    }),
  }, "Hand over"));
}

function deletionControl(t) {
  const reason = el("input", { placeholder: "reason", class: "reason" });
  return el("span", { class: "row" }, reason, el("button", {
    class: "danger",
    onclick: () => guarded(async () => {
      await api("POST", `/topics/${encodeURIComponent(t.name)}/deletion-requests`, { reason: reason.value });
      showNotice(`Deletion of ${t.name} requested; an admin decides it.`);
    }),
  }, "Request deletion"));
}

// ------------------------------------------------------------------ audit

// The result of `kafflow audit verify`, shown above the trail.
async function loadChain() {
  const p = $("chain");
  p.hidden = !state.roles.has("admin");
  if (p.hidden) return;
  const c = await api("GET", "/audit/verify");
  p.classList.toggle("bad", !c.ok);
  p.textContent = c.ok
    ? `Hash chain intact: ${c.events} events, head ${String(c.head).slice(0, 16)}…`
    : `Hash chain BROKEN at seq ${c.bad_seq}: ${c.error}`;
}

// The policy's limits, shown on the request form and enforced by the form's inputs.
async function loadPolicy() {
  const p = await api("GET", "/policy");
  const partitions = document.querySelector('#request-form input[name="partitions"]');
  partitions.max = String(p.max_partitions);
  partitions.placeholder = `default ${p.default_partitions}`;
  const rf = document.querySelector('#request-form input[name="replication_factor"]');
  rf.max = String(p.max_replication_factor);
  rf.placeholder = `default ${p.default_replication_factor}`;
  const visibility = document.querySelector('#request-form select[name="visibility"] option[value=""]');
  if (p.default_visibility) visibility.textContent = `policy default (${p.default_visibility})`;
  $("policy").textContent =
    `Names must match ${p.topic_name_pattern}; partitions 1 to ${p.max_partitions} ` +
    `(default ${p.default_partitions}); replication factor up to ${p.max_replication_factor} ` +
    `(default ${p.default_replication_factor}); visibility ${p.default_visibility || "open"} unless chosen. ` +
    "Kafka judges the configs when it creates the topic: a value it refuses ends the request failed.";
}

async function loadAudit(more) {
  if (!more) await loadChain();
  const q = auditFilters();
  q.set("limit", "50");
  if (more && state.auditNext !== null) q.set("after", state.auditNext);
  const page = await api("GET", `/audit?${q}`);
  state.auditNext = page.next;
  const rows = page.events.map((e) => el("details", { class: "event", "data-seq": e.seq },
    el("summary", {}, `#${e.seq} ${when(e.at)} · ${e.kind} · ${e.actor}${e.topic ? " · " + e.topic : ""}`),
    el("pre", {}, JSON.stringify(e, null, 2))));
  if (more) $("audit").append(...rows);
  else $("audit").replaceChildren(...(rows.length ? rows : [el("p", { class: "empty" }, "No events match.")]));
  $("audit-more").hidden = page.next === null;
}

// ------------------------------------------------------------------ produce

async function requestTopic(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const body = { topic: String(form.get("topic")).trim() };
  if (form.get("partitions")) body.partitions = Number(form.get("partitions"));
  if (form.get("replication_factor")) body.replication_factor = Number(form.get("replication_factor"));
  if (form.get("visibility")) body.visibility = String(form.get("visibility"));
  const config = requestConfig(form);
  if (config === null) return;
  if (Object.keys(config).length) body.config = config;
  if (String(form.get("reason")).trim()) body.reason = String(form.get("reason")).trim();
  await guarded(async () => {
    const r = await api("POST", "/topic-requests", body);
    showNotice(`Requested ${r.topic} (${shape(r)}); it waits for an admin.`);
    ev.target.reset();
  });
}

function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return text;
  }
}

async function sendRecord(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const topic = String(form.get("topic")).trim();
  const record = { value: parseValue(String(form.get("value"))) };
  if (String(form.get("key"))) record.key = String(form.get("key"));
  $("records-offer").replaceChildren();
  try {
    const r = await api("POST", `/topics/${encodeURIComponent(topic)}/records`, [record]);
    showNotice(`Sent to ${topic}: ${r.published} published, ${r.held} held.`);
  } catch (e) {
    showError(e.message);
    if (e.code === "unknown_topic") offerTopicRequest(topic, record);
  }
}

async function loadHeld(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const q = new URLSearchParams({ topic: String(form.get("topic")).trim(), state: String(form.get("state")), limit: "200" });
  await guarded(async () => {
    const page = await api("GET", `/held?${q}`);
    $("held").replaceChildren(table(["Id", "State", "Producer", "Accepted", "Key", "Value"],
      page.records.map((r) => [r.id, r.state, r.producer, when(r.accepted_at), r.key ?? "—", JSON.stringify(r.value)]),
      (r, i) => ({ "data-held": page.records[i].id })),
    heldActions(String(form.get("topic")).trim(), String(form.get("state")), page.records.length));
  });
}

// ------------------------------------------------------------------ consume

async function loadConsume() {
  // Saving replaces the whole set, so this screen reads every topic and every subscription.
  const [topics, mine] = await Promise.all([fetchAll("/topics", "topics"), fetchAll("/me/subscriptions", "topics")]);
  const subscribed = new Set(mine);
  const names = [...new Set([...topics.filter((t) => t.status === "active").map((t) => t.name), ...mine])].sort();
  $("subscriptions").replaceChildren(...(names.length
    ? names.map((n) => el("label", { class: "check" },
      el("input", { type: "checkbox", value: n, checked: subscribed.has(n), "data-topic": n }), n))
    : [el("p", { class: "empty" }, "No active topics.")]));
  openFeed();
}

async function saveSubscriptions() {
  const topics = [...document.querySelectorAll("#subscriptions input:checked")].map((i) => i.value);
  await guarded(async () => {
    const r = await api("PUT", "/me/subscriptions", { topics });
    showNotice(`Subscribed to: ${r.topics.join(", ") || "nothing"}.`);
  });
}

function setFeedState(text) {
  $("feed-state").textContent = text;
}

function openFeed() {
  if (state.feed || !state.roles.has("consumer")) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const from = encodeURIComponent($("feed-start").value || "latest");
  const ws = new WebSocket(`${scheme}//${location.host}${API}/me/feed?from=${from}`, [`bearer.${state.token}`]);
  state.feed = ws;
  setFeedState("connecting");
  ws.onopen = () => setFeedState(state.paused ? "paused" : "live");
  ws.onmessage = (m) => {
    const frame = JSON.parse(m.data);
    if (state.paused) {
      state.pausedFrames.push(frame);
      // What waits while paused is capped like the page: the oldest go first.
      if (state.pausedFrames.length > FEED_CAP) state.pausedFrames.splice(0, state.pausedFrames.length - FEED_CAP);
    } else showFrame(frame);
  };
  ws.onclose = (c) => {
    if (state.feed !== ws) return;
    state.feed = null;
    setFeedState("closed");
    if (state.token) {
      if (c.code !== 1000) showError(`The live feed closed (${c.code}${c.reason ? ": " + c.reason : ""}); reconnecting.`);
      setTimeout(openFeed, 2000);
    }
  };
}

function closeFeed() {
  const ws = state.feed;
  state.feed = null;
  if (ws) ws.close(1000);
  setFeedState("closed");
}

function showFrame(frame) {
  const list = $("messages");
  let item;
  if (frame.type === "subscriptions") {
    item = el("li", { class: "notice-frame" }, `Subscriptions now: ${frame.topics.join(", ") || "none"}`);
  } else if (frame.type === "topic_deleted") {
    item = el("li", { class: "notice-frame" }, `Topic ${frame.topic} was deleted; its subscription ended.`);
  } else {
    const value = typeof frame.value === "string" ? frame.value : JSON.stringify(frame.value);
    item = el("li", { class: "message", "data-topic": frame.topic },
      el("span", { class: "meta" }, `${frame.topic}[${frame.partition}]@${frame.offset}${frame.key !== null ? " key=" + frame.key : ""}`),
      el("code", {}, value));
  }
  list.prepend(item);
  let dropped = false;
  while (list.children.length > FEED_CAP) {
    list.lastChild.remove();
    dropped = true;
  }
  if (dropped) $("feed-cap").textContent = `Showing the last ${FEED_CAP} messages; older ones were dropped from this page.`;
}

function togglePause() {
  state.paused = !state.paused;
  $("feed-pause").textContent = state.paused ? "Resume" : "Pause";
  setFeedState(state.paused ? "paused" : state.feed ? "live" : "closed");
  if (!state.paused) {
    state.pausedFrames.splice(0).forEach(showFrame);
  }
}

// ------------------------------------------------------------------ consume: where the feed starts

// A new start applies to a new feed: the open one is closed and the page starts over.
// The new feed waits for the old one's close: a feed opened while another is open joins its
// stream and the server ignores its start.
async function restartFeed() {
  const old = state.feed;
  closeFeed();
  $("messages").replaceChildren();
  $("feed-cap").textContent = "";
  state.pausedFrames = [];
  if (old && old.readyState !== WebSocket.CLOSED) {
    await new Promise((done) => {
      old.addEventListener("close", done, { once: true });
      setTimeout(done, 2000);
    });
  }
  if (state.tab === "consume") openFeed();
}

// ------------------------------------------------------------------ topic detail

const detail = { topic: null };

function openTopic(name) {
  detail.topic = name;
  selectTab("topic");
}

// A topic's name in a list: a real button, so the keyboard reaches it.
function topicLink(name) {
  return el("button", { type: "button", class: "link topic-link", "data-open-topic": name, onclick: () => openTopic(name) }, name);
}

function dl(pairs) {
  return el("dl", {}, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// One part of the detail screen; its failure is shown in its place and spares the others.
async function detailPart(box, load) {
  try {
    $(box).replaceChildren(...[].concat(await load()));
  } catch (e) {
    $(box).replaceChildren(el("p", { class: "empty" }, e.message));
  }
}

async function loadTopicDetail() {
  const name = detail.topic;
  if (!name) {
    selectTab("topics");
    return;
  }
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === "topics");
  $("topic-title").textContent = `Topic ${name}`;
  for (const box of ["topic-config", "topic-partitions", "topic-access", "topic-positions", "topic-held", "topic-audit"]) {
    $(box).replaceChildren(el("p", { class: "empty" }, "Loading…"));
  }
  $("topic-browse").hidden = !(state.roles.has("consumer") || state.roles.has("admin"));
  const path = `/topics/${encodeURIComponent(name)}`;
  const topic = await api("GET", path).catch((e) => {
    $("topic-config").replaceChildren(el("p", { class: "empty" }, e.message));
    return null;
  });
  if (!topic) return;
  const cfg = Object.entries(topic.config || {});
  $("topic-config").replaceChildren(el("div", { class: "card" }, dl([
    ["Status", el("span", { class: `status ${topic.status}` }, topic.status)],
    ["Owner", topic.owner],
    ["Visibility", topic.visibility || "open"],
    ["Partitions", String(topic.partitions)],
    ["Replication factor", String(topic.replication_factor)],
    ["Configuration", cfg.length ? el("ul", { class: "plain" }, cfg.map(([k, v]) => el("li", {}, `${k} = ${v}`))) : "broker defaults"],
    ["Created", topic.created_at ? when(topic.created_at) : "not yet"],
    ["Records", `${topic.published} published, ${topic.held} held, ${topic.dead} dead-lettered`],
  ])));
  await Promise.all([
    detailPart("topic-partitions", async () => {
      const p = await api("GET", `${path}/partitions`);
      const positions = p.positions === null
        ? el("p", { class: "empty" }, "Only admins see each subscriber's position.")
        : table(["User", "Committed next offsets", "Lag"],
          p.positions.map((u) => [u.user,
            Object.entries(u.committed).map(([part, o]) => `p${part}: ${o}`).join(", ") || "nothing committed yet",
            String(u.lag)]),
          (r, i) => ({ "data-user": p.positions[i].user }));
      $("topic-positions").replaceChildren(positions);
      return table(["Partition", "Leader", "Replicas", "In sync", "Low watermark", "High watermark"],
        p.partitions.map((x) => [String(x.partition), String(x.leader), x.replicas.join(", "), x.isr.join(", "),
          String(x.low_watermark), String(x.high_watermark)]),
        (r, i) => ({ "data-partition": p.partitions[i].partition, "data-high": p.partitions[i].high_watermark }));
    }).then(() => {
      // Without partitions there are no positions either; say so rather than leave it blank.
      if (!$("topic-positions").childNodes.length) $("topic-positions").textContent = "—";
    }),
    detailPart("topic-access", async () => {
      const grants = await fetchAll("/grants", "grants", { topic: name }).catch(() => []);
      const holders = (access) => grants.filter((g) => g.access === access).map((g) => g.user);
      const produce = [`${topic.owner} (owner)`, "admins", ...holders("produce")];
      const consume = (topic.visibility || "open") === "open"
        ? ["any consumer (open topic)"]
        : ["admins", ...holders("consume")];
      return [el("div", { class: "card" }, dl([["Produce", produce.join(", ")], ["Consume", consume.join(", ")]])),
        el("p", { class: "hint" }, "Grants listed are those you may see: all for admins and the owner, your own otherwise.")];
    }),
    detailPart("topic-held", async () => {
      const [held, dead] = await Promise.all(["held", "dead"].map((s) =>
        api("GET", `/held?${new URLSearchParams({ topic: name, state: s, limit: "20" })}`)));
      const rows = [...held.records, ...dead.records];
      return [el("p", { class: "hint" }, `${topic.held} held, ${topic.dead} dead-lettered; the first 20 of each you may see:`),
        table(["Id", "State", "Producer", "Accepted", "Key", "Value"],
          rows.map((r) => [String(r.id), r.state, r.producer, when(r.accepted_at), r.key ?? "—", JSON.stringify(r.value)]))];
    }),
    detailPart("topic-audit", async () => {
      const page = await api("GET", `/audit?${new URLSearchParams({ topic: name, limit: "100" })}`);
      const events = [...page.events].sort((a, b) => b.seq - a.seq);
      if (!events.length) return el("p", { class: "empty" }, "No events you may read.");
      return events.map((e) => el("details", { class: "event", "data-seq": e.seq },
        el("summary", {}, `#${e.seq} ${when(e.at)} · ${e.kind} · ${e.actor}`),
        el("pre", {}, JSON.stringify(e, null, 2))));
    }),
  ]);
}

// ------------------------------------------------------------------ messages (browse a topic)

// The page on screen: its topic and query, the cursor it was read at and the next one.
const browse = { topic: null, query: null, after: null, next: null };

async function loadMessages() {
  const topics = await fetchAll("/topics", "topics");
  const names = topics.filter((t) => t.status === "active").map((t) => t.name).sort();
  const select = document.querySelector("#browse-form [name=topic]");
  const chosen = browse.topic || select.value;
  select.replaceChildren(...names.map((n) => el("option", { value: n, selected: n === chosen }, n)));
  if (!names.length) {
    $("browse-summary").textContent = "No active topics to browse.";
    return;
  }
  if (browse.topic && names.includes(browse.topic)) await showRecords(browse.after);
}

// The form's choice as the route's query: an offset wins over a time; neither is the newest.
function browseQuery() {
  const form = new FormData($("browse-form"));
  const q = new URLSearchParams({ limit: String(form.get("limit") || "20") });
  const partition = String(form.get("partition") || "").trim();
  const offset = String(form.get("offset") || "").trim();
  const time = String(form.get("time") || "").trim();
  if (partition) q.set("partition", partition);
  if (offset) q.set("offset", offset);
  else if (time) q.set("timestamp", new Date(time).toISOString());
  return q;
}

async function showRecords(after) {
  const q = new URLSearchParams(browse.query || { limit: "20" });
  if (after) q.set("after", after);
  const page = await api("GET", `/topics/${encodeURIComponent(browse.topic)}/messages?${q}`);
  browse.after = after;
  browse.next = page.next;
  $("browse-records").replaceChildren(...page.records.map(recordItem));
  const where = q.get("partition") !== null ? `partition ${q.get("partition")}` : "all partitions";
  $("browse-summary").textContent = page.records.length
    ? `${browse.topic}, ${where}: ${page.records.length} records, newest first${page.next ? "" : "; the oldest are shown"}.`
    : `${browse.topic}, ${where}: no records here.`;
  $("browse-older").hidden = !page.next;
  $("browse-newest").hidden = !after;
}

function encoded(text, encoding) {
  if (text === null || text === undefined) return "null";
  return encoding === "base64" ? `${text} (base64)` : text;
}

function recordItem(r) {
  const value = r.value_encoding === "json" ? JSON.stringify(r.value, null, 2) : encoded(r.value, r.value_encoding);
  const headers = r.headers.length
    ? el("ul", { class: "plain" }, r.headers.map((h) => el("li", {}, `${h.name}: ${encoded(h.value, h.encoding)}`)))
    : "none";
  return el("li", { class: "record card", "data-partition": r.partition, "data-offset": r.offset },
    el("span", { class: "meta" },
      `partition ${r.partition} · offset ${r.offset} · ${r.timestamp === null ? "no timestamp" : when(r.timestamp)} · ${r.size} bytes`),
    dl([
      ["Key", el("span", { class: "key" }, encoded(r.key, r.key_encoding))],
      ["Headers", headers],
      [`Value (${r.value_encoding})`, el("pre", { class: "value" }, value)],
    ]));
}

function browseTopic(name) {
  browse.topic = name;
  browse.query = new URLSearchParams({ limit: "20" });
  browse.after = null;
  $("browse-form").reset();
  selectTab("messages");
}

async function submitBrowse(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  browse.topic = String(form.get("topic") || "");
  if (!browse.topic) return;
  browse.query = browseQuery();
  await guarded(() => showRecords(null));
}

// ------------------------------------------------------------------ drift

async function loadDrift() {
  const d = await api("GET", "/drift");
  const list = (title, items) => el("div", {}, el("h3", {}, title),
    items.length ? el("ul", {}, items.map((i) => el("li", {}, i))) : el("p", { class: "empty" }, "none"));
  $("drift").replaceChildren(
    el("p", {}, d.checked_at ? `Last compared with Kafka: ${when(d.checked_at)}` : "Not compared with Kafka yet."),
    list("Active in KafFlow, missing in Kafka", d.missing_in_kafka),
    list("In Kafka, not managed by KafFlow", d.unmanaged_in_kafka),
    el("h3", {}, "Config differs"),
    table(["Topic", "Key", "Expected", "Actual"],
      d.config_differs.map((c) => [c.topic, c.key, c.expected, c.actual ?? "not reported"])));
}

// ------------------------------------------------------------------ access (requests and grants)

async function askAccess(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const body = { topic: String(form.get("topic")).trim(), access: String(form.get("access")) };
  if (String(form.get("reason")).trim()) body.reason = String(form.get("reason")).trim();
  await guarded(async () => {
    const r = await api("POST", "/access-requests", body);
    showNotice(`Asked for ${r.access} access to ${r.topic}; the owner or an admin decides.`);
    ev.target.reset();
    await loadAccess();
  });
}

function accessCard(r) {
  const note = el("input", { placeholder: "note (optional)", class: "note" });
  const reason = el("input", { placeholder: "reason (required to reject)", class: "reason" });
  const act = (action, body, done) => guarded(async () => {
    await api("POST", `/access-requests/${r.id}/${action}`, body);
    showNotice(`Request of ${r.requested_by} for ${r.access} on ${r.topic} ${done}.`);
    await loadAccess();
  });
  const what = r.access === "ownership" ? `ownership of ${r.topic} to ${r.to}` : `${r.access} access to ${r.topic}`;
  return el("article", { class: "card", "data-access-request": r.id, "data-topic": r.topic, "data-access": r.access },
    el("h3", {}, what),
    el("dl", {},
      el("dt", {}, "Requested by"), el("dd", { class: "requester" }, r.requested_by),
      el("dt", {}, "At"), el("dd", {}, when(r.requested_at)),
      el("dt", {}, "Reason"), el("dd", {}, r.reason || "—")),
    el("div", { class: "row" }, note,
      el("button", { class: "approve", onclick: () => act("approve", { note: note.value }, "approved") }, "Approve")),
    el("div", { class: "row" }, reason,
      el("button", { class: "reject danger", onclick: () => act("reject", { reason: reason.value }, "rejected") }, "Reject"),
      el("button", { class: "withdraw", onclick: () => act("withdraw", {}, "withdrawn") }, "Withdraw")));
}

async function loadAccess() {
  const [open, listed, { grants }] = await Promise.all([
    fetchPage("access-pending", "/access-requests", { status: "pending" }),
    fetchPage("access-decided", "/access-requests"),
    fetchPage("grants", "/grants"),
  ]);
  const pending = open.requests;
  const decided = listed.requests.filter((r) => r.status !== "pending");
  // Keep what someone is typing: redraw the open requests only when they changed.
  const box = $("access-pending");
  const ids = pending.map((r) => r.id).join(",") + `|${pages["access-pending"].after}|${pages["access-pending"].next}`;
  if (box.dataset.ids !== ids) {
    box.dataset.ids = ids;
    box.replaceChildren(...(pending.length ? pending.map(accessCard) : [el("p", { class: "empty" }, "No open access requests.")]),
      pager("access-pending", loadAccess) || "");
  }
  $("grants").replaceChildren(table(
    ["Topic", "User", "Access", "Granted by", "Since", ""],
    grants.map((g) => [g.topic, g.user, g.access, g.granted_by, when(g.granted_at), el("button", {
      class: "revoke danger",
      onclick: () => guarded(async () => {
        await api("DELETE", `/grants/${g.id}`);
        showNotice(`Revoked ${g.access} access of ${g.user} to ${g.topic}.`);
        await loadAccess();
      }),
    }, "Revoke")]),
    (r, i) => ({ "data-grant": grants[i].id, "data-topic": grants[i].topic })),
  pager("grants", loadAccess) || "");
  $("access-decided").replaceChildren(table(
    ["Topic", "Access", "Requested by", "Status", "Decided by", "Note"],
    decided.map((r) => [r.topic, r.access === "ownership" ? `ownership → ${r.to}` : r.access, r.requested_by,
      r.status, r.decided_by || "—", r.decision_note || ""]),
    (r, i) => ({ "data-access-request": decided[i].id, "data-status": decided[i].status })),
  pager("access-decided", loadAccess) || "");
}

// ------------------------------------------------------------------ tokens (admin)

async function issueToken(ev) {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const body = { name: String(form.get("name")).trim(), roles: form.getAll("role").map(String) };
  if (form.get("expires_in_days")) body.expires_in_days = Number(form.get("expires_in_days"));
  await guarded(async () => {
    const t = await api("POST", "/tokens", body);
    // Shown once, in the page only: never in a URL, never kept in storage.
    $("new-token-value").textContent = t.token;
    $("new-token").hidden = false;
    ev.target.reset();
    showNotice(`Issued a token for ${t.name} (${t.roles.join(", ")}).`);
    await loadTokens();
  });
}

function hideNewToken() {
  $("new-token-value").textContent = "";
  $("new-token").hidden = true;
}

async function loadTokens() {
  const { tokens } = await fetchPage("tokens", "/tokens");
  $("tokens").replaceChildren(table(
    ["Name", "Roles", "Status", "Issued by", "Issued", "Expires", ""],
    tokens.map((t) => [t.name, t.roles.join(", "), el("span", { class: `status ${t.status}` }, t.status),
      t.issued_by, when(t.issued_at), t.expires_at ? when(t.expires_at) : "never",
      t.status === "revoked" ? "" : el("button", {
        class: "revoke danger",
        onclick: () => guarded(async () => {
          await api("DELETE", `/tokens/${t.id}`);
          showNotice(`Revoked the token ${t.name}; its open feeds and connections are closed.`);
          await loadTokens();
        }),
      }, "Revoke")]),
    (r, i) => ({ "data-token": tokens[i].id, "data-status": tokens[i].status })),
  pager("tokens", loadTokens) || "");
}

// ------------------------------------------------------------------ who am I

// `GET /me` names the caller; on a server without it the console falls back to the roles it
// probed and offers every action those roles allow (the API still refuses what it must).
async function whoAmI() {
  try {
    return await api("GET", "/me");
  } catch (e) {
    if (isMissingRoute(e)) return null;
    throw e;
  }
}

function isMe(name) {
  return state.me !== null && state.me.name === name;
}

// Deletion and handover of a topic are its owner's or an admin's.
function mayManageTopic(t) {
  return state.roles.has("admin") || state.me === null || isMe(t.owner);
}

// Saves a reply body (a Blob) as a file: the API needs the token in a header, so a plain link
// cannot download it.
function saveFile(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Fetches an NDJSON route with the token and saves it; returns the number of lines.
async function downloadNdjson(path, name) {
  let response;
  try {
    response = await fetch(API + path, { headers: { Authorization: `Bearer ${state.token}`, Accept: "application/x-ndjson" } });
  } catch (e) {
    throw new ApiError(0, "network", `KafFlow cannot be reached: ${e.message}`);
  }
  if (!response.ok) {
    let err = null;
    try {
      err = (await response.json()).error;
    } catch (_) { /* not JSON: the status says enough */ }
    throw new ApiError(response.status, err ? err.code : "", err ? err.message : response.statusText);
  }
  const blob = await response.blob();
  saveFile(blob, name);
  const text = await blob.text();
  return text.split("\n").filter((l) => l.trim()).length;
}

// ------------------------------------------------------------------ my requests

function withdrawButton(r) {
  return el("button", {
    class: "withdraw",
    onclick: () => guarded(async () => {
      await api("POST", `/topic-requests/${r.id}/withdraw`, {});
      showNotice(`Request for ${r.topic} withdrawn.`);
      await loadRequests();
    }),
  }, "Withdraw");
}

// The requester's own view of a request: its state and, once decided, who decided and why.
function myRequestCard(r) {
  const decision = r.status === "rejected" ? `Rejected by ${r.decided_by}: ${r.decision_note || "no reason given"}`
    : r.status === "failed" ? `Kafka refused it: ${r.error || "no detail"}`
    : r.status === "withdrawn" ? "You withdrew it."
    : r.status === "pending" ? "Waiting for an admin."
    : `Approved by ${r.decided_by}${r.decision_note ? ": " + r.decision_note : ""}`;
  return el("article", { class: `card mine ${r.status}`, "data-request": r.id, "data-topic": r.topic, "data-status": r.status },
    el("h3", {}, `${r.kind} ${r.topic} `, el("span", { class: `status ${r.status}` }, r.status)),
    el("dl", {},
      el("dt", {}, "At"), el("dd", {}, when(r.requested_at)),
      el("dt", {}, "Shape"), el("dd", {}, shape(r)),
      el("dt", {}, "Your reason"), el("dd", {}, r.reason || "—"),
      el("dt", {}, "Decision"), el("dd", { class: "decision" }, decision)),
    r.status === "pending" ? el("div", { class: "row" }, withdrawButton(r)) : null);
}

async function loadMyRequests() {
  const box = $("mine");
  $("mine-section").hidden = state.me === null;
  if (state.me === null) return;
  const { requests } = await fetchPage("mine", "/topic-requests", { requested_by: state.me.name });
  // Newest first within the page; redraw only on a change so keyboard focus stays put.
  const shown = [...requests].reverse();
  const key = shown.map((r) => `${r.id}:${r.status}`).join(",") + `|${pages.mine.after}|${pages.mine.next}`;
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren(...(shown.length ? shown.map(myRequestCard) : [el("p", { class: "empty" }, "You have filed no topic requests.")]),
    pager("mine", loadRequests) || "");
}

// ------------------------------------------------------------------ dashboard

// Counters charted as rates; the page polls `/metrics` (no token needed) and charts deltas.
const RATE_SERIES = [
  { metric: "kafflow_ingested_records_total", label: "ingested/s", stroke: "#1f6feb" },
  { metric: "kafflow_published_records_total", label: "published/s", stroke: "#2da44e" },
  { metric: "kafflow_delivered_records_total", label: "delivered/s", stroke: "#bf8700" },
];
const RATE_POLL_MS = 5000;
const RATE_KEEP = 60; // five minutes of samples

const rates = { timer: null, last: null, samples: RATE_SERIES.map(() => []), times: [], chart: null };

function parseCounters(text) {
  const values = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const [name, value] = line.split(" ");
    values[name] = Number(value);
  }
  return values;
}

async function sampleRates() {
  let response;
  try {
    response = await fetch("/metrics");
  } catch (_) {
    return; // the next poll tries again; the dashboard's other panels report the outage
  }
  if (!response.ok) return;
  const values = parseCounters(await response.text());
  const now = Date.now() / 1000;
  if (rates.last) {
    const dt = Math.max(now - rates.last.at, 0.001);
    rates.times.push(now);
    RATE_SERIES.forEach((s, i) => {
      // A restarted server starts its counters again at 0: chart that step as no traffic.
      const delta = (values[s.metric] ?? 0) - (rates.last.values[s.metric] ?? 0);
      rates.samples[i].push(Math.max(delta, 0) / dt);
    });
    if (rates.times.length > RATE_KEEP) {
      rates.times.shift();
      rates.samples.forEach((s) => s.shift());
    }
  }
  rates.last = { at: now, values };
  drawRates();
}

function startRates() {
  stopRates();
  sampleRates();
  // A second sample soon after the first gives the chart its first point without a 5 s wait.
  setTimeout(() => rates.timer && sampleRates(), 1000);
  rates.timer = setInterval(sampleRates, RATE_POLL_MS);
}

function stopRates() {
  clearInterval(rates.timer);
  rates.timer = null;
  rates.last = null;
  rates.times = [];
  rates.samples = RATE_SERIES.map(() => []);
  if (rates.chart) rates.chart.destroy();
  rates.chart = null;
}

function drawRates() {
  const box = $("dash-rates");
  if (!box || box.offsetParent === null) return; // hidden: drawn when the dashboard shows
  // An empty point at the window's start keeps the x axis at five minutes from the first
  // sample on (one point alone would stretch it over years).
  const t = rates.times;
  const data = t.length
    ? [[t[t.length - 1] - (RATE_POLL_MS / 1000) * RATE_KEEP, ...t], ...rates.samples.map((s) => [null, ...s])]
    : [[], ...rates.samples];
  const width = Math.max(Math.min(box.clientWidth, 720), 260);
  if (rates.chart && rates.chart.root.isConnected && rates.chart.width === width) {
    rates.chart.setData(data);
    return;
  }
  if (rates.chart) rates.chart.destroy();
  if (typeof uPlot === "undefined") {
    box.replaceChildren(el("p", { class: "empty" }, "Charts are not available."));
    return;
  }
  box.replaceChildren();
  rates.chart = new uPlot({
    width,
    height: 180,
    scales: { y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
    axes: [{}, { label: "records/s", size: 60 }],
    legend: { live: false },
    series: [{}, ...RATE_SERIES.map((s) => ({ label: s.label, stroke: s.stroke, width: 2 }))],
  }, data, box);
  const canvas = box.querySelector("canvas");
  if (canvas) {
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Records ingested, published and delivered per second over the last five minutes");
  }
}

function ageOf(ts) {
  const ms = Date.now() - new Date(ts).getTime();
  if (isNaN(ms)) return "";
  const m = Math.floor(ms / 60000);
  if (m < 1) return `${Math.max(Math.floor(ms / 1000), 0)} s`;
  if (m < 120) return `${m} min`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h} h` : `${Math.floor(h / 24)} d`;
}

// How many held records wait for a pending topic, and since when (the oldest one).
async function heldFor(topic) {
  const [t, oldest] = await Promise.all([
    api("GET", `/topics/${encodeURIComponent(topic)}`).catch(() => null),
    api("GET", `/held?${new URLSearchParams({ topic, state: "held", limit: "1" })}`).catch(() => null),
  ]);
  const first = oldest && oldest.records[0];
  return { topic, held: t ? t.held : null, oldest: first ? first.accepted_at : null };
}

// Replaces a box's content only when what it shows changed, so that the 2 s refresh does not
// take keyboard focus away from a button the user has reached.
function redraw(box, key, build) {
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren(build());
}

function stat(id, label, value, hint) {
  return el("div", { class: "stat", id },
    el("span", { class: "stat-value", "data-count": value }, String(value)),
    el("span", { class: "stat-label" }, label),
    hint ? el("span", { class: "hint" }, hint) : null);
}

// Access and ownership requests this user may decide: an admin any but their own, a topic's
// owner those on the topic, and whoever a handover names the handover.
async function accessWaitingForMe(admin) {
  if (state.missing.has("access") || state.me === null) return [];
  const open = await fetchAll("/access-requests", "requests", { status: "pending" });
  const others = open.filter((r) => !isMe(r.requested_by));
  if (admin) return others;
  // The owner is on the topic, not on the request: look up a few topics, not every topic.
  const topics = [...new Set(others.map((r) => r.topic))].slice(0, 20);
  const owners = new Map(await Promise.all(topics.map(async (t) => {
    const topic = await api("GET", `/topics/${encodeURIComponent(t)}`).catch(() => null);
    return [t, topic && topic.owner];
  })));
  return others.filter((r) => owners.get(r.topic) === state.me.name || (r.access === "ownership" && isMe(r.to)));
}

async function loadDashboard() {
  const admin = state.roles.has("admin");
  const holder = admin || state.roles.has("producer");
  const [pending, access, drift] = await Promise.all([
    fetchAll("/topic-requests", "requests", { status: "pending" }),
    accessWaitingForMe(admin),
    api("GET", "/drift"),
  ]);
  // What waits for this user's decision, and what of theirs waits for someone else's.
  const waiting = [
    ...pending.filter((r) => admin && !isMe(r.requested_by))
      .map((r) => ({ id: r.id, what: `${r.kind} ${r.topic}`, by: r.requested_by, at: r.requested_at, tab: "requests" })),
    ...access.map((r) => ({
      id: r.id,
      what: r.access === "ownership" ? `ownership of ${r.topic} to ${r.to}` : `${r.access} access to ${r.topic}`,
      by: r.requested_by, at: r.requested_at, tab: "access",
    })),
  ].sort((a, b) => String(a.at).localeCompare(String(b.at)));
  const mineOpen = pending.filter((r) => isMe(r.requested_by));
  const driftCount = drift.missing_in_kafka.length + drift.unmanaged_in_kafka.length + drift.config_differs.length;
  // Held records are read only for the topics this user may see them for, and a few of them.
  const creates = pending.filter((r) => r.kind === "create" && (admin || isMe(r.requested_by))).slice(0, 20);
  const held = holder ? await Promise.all(creates.map((r) => heldFor(r.topic))) : [];

  const heldTotal = held.reduce((n, h) => n + (h.held || 0), 0);
  const driftHint = drift.checked_at ? `checked ${when(drift.checked_at)}` : "not compared yet";
  redraw($("dash-stats"), JSON.stringify([waiting.length, mineOpen.length, heldTotal, driftCount, driftHint]), () => el("div", { class: "stats" },
    stat("dash-pending", "requests wait for your decision", waiting.length),
    stat("dash-mine", `of your requests wait for ${admin ? "another admin" : "a decision"}`, mineOpen.length),
    stat("dash-held", "records held for pending topics", heldTotal),
    stat("dash-drift", "drift findings", driftCount, driftHint)));

  const list = waiting.slice(0, 10);
  redraw($("dash-pending-list"), JSON.stringify(list.map((w) => [w.id, ageOf(w.at)])), () => (list.length
    ? el("ul", {}, list.map((w) => el("li", { "data-request": w.id },
      el("button", { class: "link", onclick: () => selectTab(w.tab) }, w.what),
      ` by ${w.by}, ${ageOf(w.at)} ago`)))
    : el("p", { class: "empty" }, "Nothing waits for your decision.")));

  redraw($("dash-held-list"), JSON.stringify([holder, held.map((h) => [h.topic, h.held, h.oldest && ageOf(h.oldest)])]), () => (!holder
    ? el("p", { class: "empty" }, "Held records are shown to producers and admins.")
    : table(["Topic", "Held", "Waiting since", "For"],
      held.map((h) => [h.topic, h.held ?? "—", h.oldest ? when(h.oldest) : "—", h.oldest ? ageOf(h.oldest) : "—"]),
      (r, i) => ({ "data-topic": held[i].topic }))));
  drawRates();
}

// ------------------------------------------------------------------ audit options

// The audit form as query parameters; times typed in the local zone go out in UTC.
function auditFilters() {
  const form = new FormData($("audit-form"));
  const q = new URLSearchParams();
  for (const key of ["topic", "actor", "kind"]) {
    const v = String(form.get(key) || "").trim();
    if (v) q.set(key, v);
  }
  for (const key of ["since", "until"]) {
    const v = String(form.get(key) || "").trim();
    if (!v) continue;
    const d = new Date(v);
    q.set(key, isNaN(d) ? v : d.toISOString());
  }
  q.set("order", String(form.get("order") || "desc"));
  return q;
}

async function exportAudit() {
  await guarded(async () => {
    const n = await downloadNdjson(`/audit/export?${auditFilters()}`, "kafflow-audit.ndjson");
    showNotice(`Exported ${n} audit events as NDJSON.`);
  });
}

// ------------------------------------------------------------------ produce: first send

// A send to a topic KafFlow does not know offers to ask for it; the record then waits, held,
// for the decision.
function offerTopicRequest(topic, record) {
  $("records-offer").replaceChildren(el("div", { class: "row offer" },
    el("span", {}, `${topic} is not known. Ask for it with the policy's defaults and hold this record until an admin decides?`),
    el("button", {
      class: "request-topic",
      onclick: () => guarded(async () => {
        const r = await api("POST", `/topics/${encodeURIComponent(topic)}/records?request=true`, [record]);
        $("records-offer").replaceChildren();
        showNotice(`Requested ${topic}; ${r.held} record held until an admin decides.`);
      }),
    }, `Request ${topic}`)));
}

// ------------------------------------------------------------------ held: export and discard

function heldActions(topic, which, shown) {
  const exportButton = el("button", {
    class: "held-export",
    onclick: () => guarded(async () => {
      const q = new URLSearchParams({ topic, state: which, format: "ndjson", limit: "100000" });
      const n = await downloadNdjson(`/held?${q}`, `${topic}-${which}.ndjson`);
      // One call exports at most 100,000 records; the API pages past that (`after`).
      showNotice(`Exported ${n} ${which} records of ${topic}${n >= 100000 ? " (the first 100,000: use the API's after= for the rest)" : ""}.`);
    }),
  }, "Export NDJSON");
  if (!(state.roles.has("admin") && which === "dead" && shown > 0)) return el("div", { class: "row" }, exportButton);
  // Discarding cannot be undone: the first press asks, the second discards.
  const sure = el("button", {
    class: "held-discard-confirm danger",
    hidden: true,
    onclick: () => guarded(async () => {
      const r = await api("DELETE", `/held?${new URLSearchParams({ topic, state: "dead" })}`);
      showNotice(`Discarded ${r.discarded} dead records of ${topic}.`);
      $("held").replaceChildren();
    }),
  }, `Discard every dead record of ${topic}`);
  const ask = el("button", {
    class: "held-discard danger",
    onclick: () => {
      ask.hidden = true;
      sure.hidden = false;
      sure.focus();
    },
  }, "Discard dead records…");
  return el("div", { class: "row" }, exportButton, ask, sure);
}

// ------------------------------------------------------------------ request form: configs

// The Kafka configs of the request form; null (after saying why) when one is malformed.
function requestConfig(form) {
  const config = {};
  const retention = String(form.get("retention_hours") || "").trim();
  if (retention) config["retention.ms"] = String(Math.round(Number(retention) * 3600000));
  const cleanup = String(form.get("cleanup_policy") || "");
  if (cleanup) config["cleanup.policy"] = cleanup;
  for (const line of String(form.get("config_more") || "").split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) {
      showError(`Other configs: "${line.trim()}" is not key=value.`);
      return null;
    }
    config[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return config;
}

// ------------------------------------------------------------------ wiring

$("sign-in-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("token").value.trim());
});
$("sign-out").addEventListener("click", signOut);
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => selectTab(b.dataset.tab));
}
$("audit-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guarded(() => loadAudit(false));
});
$("audit-more").addEventListener("click", () => guarded(() => loadAudit(true)));
$("audit-export").addEventListener("click", exportAudit);
$("request-form").addEventListener("submit", requestTopic);
$("records-form").addEventListener("submit", sendRecord);
$("held-form").addEventListener("submit", loadHeld);
$("save-subscriptions").addEventListener("click", saveSubscriptions);
$("feed-pause").addEventListener("click", togglePause);
$("feed-clear").addEventListener("click", () => $("messages").replaceChildren());
$("access-form").addEventListener("submit", askAccess);
$("token-form").addEventListener("submit", issueToken);
$("new-token-done").addEventListener("click", hideNewToken);

// Topic detail, Messages, and where the live feed starts.
$("topic-back").addEventListener("click", () => selectTab("topics"));
$("topic-browse").addEventListener("click", () => browseTopic(detail.topic));
$("browse-form").addEventListener("submit", submitBrowse);
$("browse-older").addEventListener("click", () => guarded(() => showRecords(browse.next)));
$("browse-newest").addEventListener("click", () => guarded(() => showRecords(null)));
$("feed-start").addEventListener("change", restartFeed);

if (state.token) signIn(state.token);
