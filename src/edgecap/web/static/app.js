// edgecap review page. No framework, no build step. Every text that comes from the log (captions are model
// output, camera names are user input) reaches the page through textContent or an attribute setter, never HTML.
"use strict";

const PAGE = 500;         // the API's largest page: most logs under review fit on one
const LIVE_PAGE = 100;    // what a live refresh fetches: the newest events, merged into those shown
const REFRESH_MS = 250;   // live writes are gathered this long before the first page is fetched again
const SEARCH_MS = 250;    // typing pauses this long before a search

const state = {
  events: new Map(),      // id -> event (every page loaded so far)
  outages: [],            // source_down events in view, for the timelines
  cameras: new Map(),     // name -> /api/cameras entry
  cursor: null,           // next page
  selected: null,         // id of the selected event
  generation: 0,          // bumps on every new search; answers of older searches are dropped
  fresh: new Set(),       // ids that arrived live, highlighted once
};
const cards = new Map();  // id -> card element, reused across renders so thumbnails are not reloaded

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// -- the view's state in the URL --------------------------------------------------------------------------------

function readUrl() {
  const params = new URLSearchParams(location.search);
  const form = $("#search");
  form.q.value = params.get("q") || "";
  form.since.value = params.get("since") || "";
  form.until.value = params.get("until") || "";
  const id = Number(params.get("event"));
  state.selected = Number.isInteger(id) && id > 0 ? id : null;
}

function writeUrl() {
  const form = $("#search");
  const params = new URLSearchParams();
  if (form.q.value.trim()) params.set("q", form.q.value.trim());
  if (form.since.value) params.set("since", form.since.value);
  if (form.until.value) params.set("until", form.until.value);
  if (state.selected !== null) params.set("event", String(state.selected));
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

// -- talking to the API -----------------------------------------------------------------------------------------

async function api(path) {
  const response = await fetch(path, {credentials: "same-origin", cache: "no-store"});
  if (response.status === 401) {
    throw new Error("Not logged in: open the URL with ?token= that `edgecap serve` printed.");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

// The search box holds free words plus camera:/kind: tokens; the server reads them (so the page and the API
// always agree). Without a kind: token the page lists scenes; system events appear as outages on the timeline.
function filterParams() {
  const form = $("#search");
  const params = new URLSearchParams();
  const q = form.q.value.trim();
  if (q) params.set("q", q);
  if (!/(^|\s)kind:/.test(q)) params.set("kind", "scene");
  const since = toIso(form.since.value), until = toIso(form.until.value);
  if (since) params.set("since", since);
  if (until) params.set("until", until);
  return params;
}

function toIso(local) {
  if (!local) return null;
  const t = new Date(local);  // datetime-local is the browser's local time
  return Number.isNaN(t.getTime()) ? null : t.toISOString();
}

async function loadFirstPage() {
  const generation = ++state.generation;
  const params = filterParams();
  params.set("limit", String(PAGE));
  try {
    const [page, outages] = await Promise.all([api(`/api/events?${params}`), loadOutages()]);
    if (generation !== state.generation) return;
    state.events = new Map(page.events.map((ev) => [ev.id, ev]));
    state.cursor = page.next_cursor;
    state.outages = outages;
    showError(null);
  } catch (err) {
    if (generation === state.generation) showError(err.message);
  }
  render();
  if (state.selected !== null) openDetail(state.selected, {scroll: true});
}

async function loadOutages() {
  const form = $("#search");
  const params = new URLSearchParams({kind: "source_down", limit: "500"});
  const since = toIso(form.since.value), until = toIso(form.until.value);
  if (since) params.set("since", since);
  if (until) params.set("until", until);
  return (await api(`/api/events?${params}`)).events;
}

async function loadMore() {
  if (!state.cursor) return;
  const generation = state.generation;
  const params = filterParams();
  params.set("limit", String(PAGE));
  params.set("cursor", state.cursor);
  state.cursor = null;  // one request per cursor
  try {
    const page = await api(`/api/events?${params}`);
    if (generation !== state.generation) return;
    for (const ev of page.events) state.events.set(ev.id, ev);
    state.cursor = page.next_cursor;
  } catch (err) {
    showError(err.message);
  }
  render();
}

// Live writes: merge the newest page again (the server decides what matches the search), update what is shown.
let refreshTimer = null;
function scheduleRefresh() {
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const generation = state.generation;
    const params = filterParams();
    params.set("limit", String(LIVE_PAGE));
    try {
      const [page, outages] = await Promise.all([api(`/api/events?${params}`), loadOutages(), loadCameras()]);
      if (generation !== state.generation) return;
      if (page.next_cursor && state.events.size && !page.events.some((ev) => state.events.has(ev.id))) {
        loadFirstPage();  // more arrived than one refresh holds: start over rather than leave a gap
        return;
      }
      for (const ev of page.events) {
        if (!state.events.has(ev.id)) state.fresh.add(ev.id);
        state.events.set(ev.id, ev);
      }
      if (state.events.size === page.events.length) state.cursor = page.next_cursor;
      state.outages = outages;
      showError(null);
    } catch (err) {
      showError(err.message);
    }
    render();
    if (state.selected !== null && state.events.has(state.selected)) openDetail(state.selected, {scroll: false});
  }, REFRESH_MS);
}

async function loadCameras() {
  const body = await api("/api/cameras");
  state.cameras = new Map(body.cameras.map((c) => [c.camera, c]));
}

function connectLive() {
  const live = $("#live");
  const setLive = (name, label) => { live.dataset.state = name; $(".label", live).textContent = label; };
  const source = new EventSource("/api/stream");
  // a write between the first page and the stream's start would be missed: look again once connected
  source.onopen = () => { setLive("live", "live"); scheduleRefresh(); };
  source.onerror = () => setLive("connecting", source.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
  source.onmessage = (message) => {
    let ev;
    try { ev = JSON.parse(message.data); } catch { return; }
    if (state.events.has(ev.id)) state.events.set(ev.id, {...state.events.get(ev.id), ...ev});
    scheduleRefresh();
  };
}

// -- formatting -------------------------------------------------------------------------------------------------

const timeFormat = new Intl.DateTimeFormat(undefined,
  {hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});
const dayFormat = new Intl.DateTimeFormat(undefined, {weekday: "short", day: "numeric", month: "short"});

function fmtTime(iso) { return iso ? timeFormat.format(new Date(iso)) : ""; }
function fmtDay(iso) { return iso ? dayFormat.format(new Date(iso)) : ""; }
function fmtFull(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  return `${fmtDay(iso)} ${timeFormat.format(t)}  (${iso.replace("T", " ").replace("Z", " UTC")})`;
}

function fmtPos(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  const ms = `${m}:${s.toFixed(1).padStart(4, "0")}`;
  return h ? `${h}:${ms.padStart(6, "0")}` : ms;
}

function fmtSpan(a, b) {
  if (a === null || a === undefined || b === null || b === undefined) return "";
  const s = Math.max(0, b - a);
  return s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`
    : `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

const seconds = (iso) => (iso ? Date.parse(iso) / 1000 : null);
const isFileEvent = (ev) => ev.source_start_s !== null && ev.source_start_s !== undefined;

function describe(ev) {
  if (ev.caption) return ev.caption;
  const d = ev.details || {};
  return String(d.message || d.last_error || ev.kind);
}

function stateLabel(cam) {
  const names = {source_up: "streaming", drops: "streaming, dropping frames", finished: "finished", down: "down",
                 source_error: "error", reconnecting: "down", unknown: "no status yet"};
  return names[cam.state] || cam.state;
}

// -- rendering --------------------------------------------------------------------------------------------------

function sortedEvents() {
  return [...state.events.values()].sort((a, b) => (seconds(b.start) - seconds(a.start)) || (b.id - a.id));
}

function render() {
  const events = sortedEvents();
  const byCamera = new Map();
  for (const ev of events) {
    if (!byCamera.has(ev.camera)) byCamera.set(ev.camera, []);
    byCamera.get(ev.camera).push(ev);
  }
  const root = $("#cameras");
  const sections = [...byCamera.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  root.replaceChildren(...sections.map(([camera, list]) => renderCamera(camera, list)));
  for (const id of [...cards.keys()]) if (!state.events.has(id)) cards.delete(id);
  state.fresh.clear();

  const scenes = events.filter((ev) => ev.kind === "scene").length;
  const q = $("#search").q.value.trim();
  const what = scenes === events.length ? "scene events" : "events";
  $("#summary").textContent = events.length
    ? `${events.length}${state.cursor ? "+" : ""} ${what} on ${byCamera.size} camera${byCamera.size === 1 ? "" : "s"}`
      + (q ? ` matching \u201c${q}\u201d` : "")
    : "";
  const empty = $("#empty");
  empty.hidden = events.length > 0;
  empty.textContent = q || $("#search").since.value || $("#search").until.value
    ? "No events match this search."
    : "No events yet. This page updates by itself while `edgecap run` writes to the log.";
  $("#more").hidden = !state.cursor;
  markSelected();
}

function renderCamera(camera, list) {
  const section = el("section", "camera");
  section.dataset.camera = camera;
  const head = el("header", "camera-head");
  head.append(el("h2", "camera-name", camera));
  const cam = state.cameras.get(camera);
  if (cam) {
    const badge = el("span", `state state-${cam.state}`, stateLabel(cam));
    if (cam.open_outage) badge.title = `down since ${fmtFull(cam.open_outage.start)}`;
    head.append(badge);
  }
  head.append(el("span", "count", `${list.length} event${list.length === 1 ? "" : "s"}`));
  section.append(head, renderTimeline(camera, list));
  const grid = el("div", "cards");
  grid.append(...list.map(card));
  section.append(grid);
  return section;
}

// One lane per camera. A camera read from a file is drawn on the file's own clock (source_start_s): the runtime
// reads a file faster than real time, so on the wall clock every scene of a demo run would be a sliver.
function renderTimeline(camera, list) {
  const lane = el("div", "timeline");
  const byFile = list.every(isFileEvent);
  const span = (ev) => byFile ? [ev.source_start_s, ev.source_end_s ?? ev.source_start_s]
    : [seconds(ev.start), seconds(ev.end) ?? seconds(ev.start)];
  const outages = byFile ? [] : state.outages.filter((o) => o.camera === camera);
  const spans = [...list.map(span), ...outages.map((o) => [seconds(o.start), o.closed ? seconds(o.end) : Date.now() / 1000])];
  if (!spans.length) return lane;
  let lo = Math.min(...spans.map((s) => s[0])), hi = Math.max(...spans.map((s) => s[1]));
  if (byFile) lo = Math.min(lo, 0);
  if (hi - lo < 1e-6) hi = lo + 1;
  const place = (node, a, b) => {
    node.style.left = `${(100 * (a - lo)) / (hi - lo)}%`;
    node.style.width = `max(3px, ${(100 * (b - a)) / (hi - lo)}%)`;
  };
  const track = el("div", "track");
  for (const o of outages) {
    const seg = el("div", `seg outage${o.closed ? "" : " open"}`);
    const d = o.details || {};
    seg.title = `outage ${fmtFull(o.start)} to ${o.closed ? fmtFull(o.end) : "now"}`
      + `${d.attempts ? `, ${d.attempts} attempts` : ""}${d.last_error ? `; last: ${d.last_error}` : ""}`;
    place(seg, seconds(o.start), o.closed ? seconds(o.end) : Date.now() / 1000);
    track.append(seg);
  }
  for (const ev of list) {
    const seg = el("button", `seg ${ev.kind === "scene" ? "scene" : "system"}`);
    seg.type = "button";
    seg.dataset.segment = String(ev.id);  // not data-event-id: that marks the cards only
    seg.title = `${byFile ? `${fmtPos(ev.source_start_s)}-${fmtPos(ev.source_end_s)}` : fmtTime(ev.start)}  ${describe(ev)}`;
    const [a, b] = span(ev);
    place(seg, a, b);
    seg.addEventListener("click", () => select(ev.id));
    track.append(seg);
  }
  const axis = el("div", "axis");
  axis.append(el("span", "", byFile ? fmtPos(lo) : `${fmtDay(new Date(lo * 1000).toISOString())} ${fmtTime(new Date(lo * 1000).toISOString())}`),
              el("span", "axis-kind", byFile ? "position in the file" : "wall clock"),
              el("span", "", byFile ? fmtPos(hi) : fmtTime(new Date(hi * 1000).toISOString())));
  lane.append(track, axis);
  return lane;
}

function card(ev) {
  let node = cards.get(ev.id);
  const signature = JSON.stringify(ev);
  if (node && node.dataset.signature === signature) return node;
  if (!node) {
    node = el("article", "card");
    node.dataset.eventId = String(ev.id);
    node.tabIndex = -1;
    node.addEventListener("click", () => select(ev.id));
    cards.set(ev.id, node);
  }
  node.dataset.signature = signature;
  node.classList.toggle("system", ev.kind !== "scene");
  node.classList.toggle("open-scene", !ev.closed);
  node.classList.toggle("fresh", state.fresh.has(ev.id));
  const thumb = el("div", "thumb");
  if (ev.thumbnail_url) {
    const img = el("img");
    img.alt = ev.caption || "";
    img.decoding = "async";
    img.src = `${ev.thumbnail_url}?v=${encodeURIComponent(ev.thumbnail || "")}`;
    thumb.append(img);
  } else {
    thumb.append(el("span", "kind-badge", ev.kind.replace("_", " ")));
  }
  const meta = el("div", "meta");
  const time = el("time", "when", fmtTime(ev.start));
  time.dateTime = ev.start;
  time.title = fmtFull(ev.start);
  meta.append(time);
  if (isFileEvent(ev)) meta.append(el("span", "pos", `\u25b6 ${fmtPos(ev.source_start_s)}\u2013${fmtPos(ev.source_end_s)}`));
  else if (ev.end && ev.end !== ev.start) meta.append(el("span", "pos", fmtSpan(seconds(ev.start), seconds(ev.end))));
  if (!ev.closed) meta.append(el("span", "open-badge", "ongoing"));
  node.replaceChildren(thumb, meta, el("p", "caption", describe(ev)));
  return node;
}

// -- selection, detail panel, keyboard --------------------------------------------------------------------------

function select(id, {scroll = true} = {}) {
  state.selected = id;
  writeUrl();
  openDetail(id, {scroll});
}

function markSelected() {
  for (const [id, node] of cards) node.classList.toggle("selected", id === state.selected);
  for (const seg of document.querySelectorAll(".seg.selected")) seg.classList.remove("selected");
  if (state.selected !== null) {
    const seg = document.querySelector(`.seg[data-segment="${state.selected}"]`);
    if (seg) seg.classList.add("selected");
  }
}

async function openDetail(id, {scroll}) {
  let ev = state.events.get(id);
  if (!ev) {
    try { ev = await api(`/api/events/${id}`); } catch (err) { showError(err.message); return; }
  }
  if (state.selected !== id) return;
  const panel = $("#detail");
  panel.hidden = false;
  document.body.classList.add("with-detail");
  $(".detail-camera", panel).textContent = `${ev.camera} \u00b7 ${ev.kind.replace("_", " ")} \u00b7 #${ev.id}`;
  const img = $(".detail-image img", panel);
  $(".detail-image", panel).hidden = !ev.thumbnail_url;
  if (ev.thumbnail_url) {
    const src = `${ev.thumbnail_url}?v=${encodeURIComponent(ev.thumbnail || "")}`;
    if (img.getAttribute("src") !== src) img.src = src;
    img.alt = ev.caption || "";
  } else {
    img.removeAttribute("src");
  }
  $(".detail-caption", panel).textContent = describe(ev);
  const fields = $(".detail-fields", panel);
  fields.replaceChildren();
  const add = (name, value) => {
    if (value === null || value === undefined || value === "") return;
    fields.append(el("dt", "", name), el("dd", "", value));
  };
  const d = ev.details || {};
  // a file is read faster than real time: its own clock says how long a scene lasted, the wall clock when it was read
  const file = isFileEvent(ev);
  if (file) add("In the file", `${fmtPos(ev.source_start_s)} to ${fmtPos(ev.source_end_s)} (${fmtSpan(ev.source_start_s, ev.source_end_s)})`);
  add(file ? "Read at" : "Start", fmtFull(ev.start));
  add(file ? "Read until" : "End", ev.end && ev.end !== ev.start ? fmtFull(ev.end) : "");
  if (!file) add("Duration", fmtSpan(seconds(ev.start), seconds(ev.end)));
  add("Status", ev.closed ? "closed" : "ongoing");
  if (ev.confidence !== null && ev.confidence !== undefined) {
    add("Confidence", `${ev.confidence.toFixed(3)} mean token log-prob (\u2248 ${(100 * Math.exp(ev.confidence)).toFixed(1)}% per token)`);
  }
  add("Observations", ev.observations > 1 ? `${ev.observations} sampled frames` : ev.observations === 1 && ev.kind === "scene" ? "1 sampled frame" : "");
  add("Model", [d.model, d.precision, d.model_sha256 ? `sha256 ${d.model_sha256}` : ""].filter(Boolean).join(" \u00b7 "));
  if (d.ms && typeof d.ms === "object") {
    add("Timings", Object.entries(d.ms).map(([k, v]) => `${k.replace("_", " ")} ${Number(v).toFixed(1)} ms`).join(", "));
  }
  add("Batch", d.batch);
  add("Prompt", d.prompt);
  // detection answers (Florence-2 <OD>): each label with its box in the frame's pixels; [] means none were found
  const box = (o) => (o && typeof o.label === "string" && [o.x0, o.y0, o.x1, o.y1].every(Number.isFinite)
    ? `${o.label} (${[o.x0, o.y0, o.x1, o.y1].map((v) => Math.round(v)).join(", ")})`
    : typeof o === "string" ? o : JSON.stringify(o));
  if (Array.isArray(d.objects)) add("Objects (x0, y0, x1, y1 px)", d.objects.length ? d.objects.map(box).join("; ") : "none found");
  else if (d.objects) add("Objects", JSON.stringify(d.objects));
  add("Message", d.message);
  add("Attempts", d.attempts);
  add("Last error", d.last_error);
  const shown = new Set(["model", "precision", "model_sha256", "ms", "batch", "prompt", "objects", "message", "attempts", "last_error"]);
  for (const [k, v] of Object.entries(d)) if (!shown.has(k)) add(k, typeof v === "object" ? JSON.stringify(v) : v);
  add("Event uid", ev.uid);
  resetSimilar(ev);
  markSelected();
  const node = cards.get(id);
  if (scroll && node) node.scrollIntoView({block: "nearest"});
  if (node && document.activeElement !== $("#search").q) node.focus({preventScroll: true});
}

// "Find similar": the nearest scenes by image embedding. Results are buttons, not cards: they carry no
// data-event-id (only cards of the list do), and choosing one selects that event.

function resetSimilar(ev) {
  const box = $("#detail .similar");
  if (box.dataset.forEvent === String(ev.id)) return;  // a live refresh of the same event keeps the answer
  box.dataset.forEvent = String(ev.id);
  box.hidden = ev.kind !== "scene";
  $(".similar-list", box).replaceChildren();
  $(".similar-note", box).hidden = true;
}

async function findSimilar() {
  const box = $("#detail .similar");
  const id = Number(box.dataset.forEvent);
  const note = $(".similar-note", box);
  note.hidden = false;
  note.textContent = "Searching\u2026";
  let body;
  try { body = await api(`/api/events/${id}/similar?limit=12`); } catch (err) { note.textContent = err.message; return; }
  if (box.dataset.forEvent !== String(id)) return;  // another event was opened meanwhile
  note.textContent = body.reason || (body.events.length ? "" : "No other scene has an embedding of this model.");
  note.hidden = !note.textContent;
  $(".similar-list", box).replaceChildren(...body.events.map((ev) => {
    const item = el("li");
    const pick = el("button", "similar-pick");
    pick.type = "button";
    pick.title = `${ev.camera} \u00b7 ${fmtFull(ev.start)}`;
    if (ev.thumbnail_url) {
      const img = el("img");
      img.alt = "";
      img.decoding = "async";
      img.src = `${ev.thumbnail_url}?v=${encodeURIComponent(ev.thumbnail || "")}`;
      pick.append(img);
    }
    pick.append(el("span", "similar-caption", describe(ev)),
                el("span", "similar-score", `${ev.camera} \u00b7 ${fmtTime(ev.start)} \u00b7 cos ${ev.similarity.toFixed(3)}`));
    pick.addEventListener("click", () => select(ev.id));
    item.append(pick);
    return item;
  }));
}

function closeDetail() {
  state.selected = null;
  $("#detail").hidden = true;
  document.body.classList.remove("with-detail");
  writeUrl();
  markSelected();
}

function move(step) {
  const order = [...document.querySelectorAll("#cameras [data-event-id]")].map((n) => Number(n.dataset.eventId));
  if (!order.length) return;
  const at = order.indexOf(state.selected);
  const next = at < 0 ? (step > 0 ? 0 : order.length - 1) : Math.min(order.length - 1, Math.max(0, at + step));
  select(order[next]);
}

function onKey(e) {
  const inField = e.target instanceof HTMLInputElement;
  if (inField) {
    if (e.key === "Escape") e.target.blur();
    if (e.key === "ArrowDown" && e.target.name === "q") { e.preventDefault(); e.target.blur(); move(+1); }
    return;
  }
  if (e.altKey || e.ctrlKey || e.metaKey) return;
  const keys = {j: 1, ArrowDown: 1, ArrowRight: 1, k: -1, ArrowUp: -1, ArrowLeft: -1};
  if (e.key in keys) { e.preventDefault(); move(keys[e.key]); }
  else if (e.key === "Home") { e.preventDefault(); state.selected = null; move(1); }
  else if (e.key === "End") { e.preventDefault(); state.selected = null; move(-1); }
  else if (e.key === "Escape") closeDetail();
  else if (e.key === "/") { e.preventDefault(); $("#search").q.focus(); $("#search").q.select(); }
}

// -- start ------------------------------------------------------------------------------------------------------

function start() {
  readUrl();
  const form = $("#search");
  let typing = null;
  const research = () => { clearTimeout(typing); writeUrl(); loadFirstPage(); };
  form.addEventListener("submit", (e) => { e.preventDefault(); research(); });
  form.q.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(research, SEARCH_MS); });
  form.since.addEventListener("change", research);
  form.until.addEventListener("change", research);
  $("#clear").addEventListener("click", () => { form.q.value = form.since.value = form.until.value = ""; research(); });
  $("#load-more").addEventListener("click", loadMore);
  $("#detail .close").addEventListener("click", closeDetail);
  $("#find-similar").addEventListener("click", findSimilar);
  document.addEventListener("keydown", onKey);
  new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); })
    .observe($("#more"));
  loadCameras().catch(() => {}).finally(loadFirstPage);
  connectLive();
}

document.addEventListener("DOMContentLoaded", start);
