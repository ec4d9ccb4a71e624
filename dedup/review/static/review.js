// dedup review: pages through a run's pairs and groups; labels go to the server as they are made.
// Text from the run (keys, captions) is only ever set as textContent: captions come from the web.
"use strict";

const TOKEN = document.querySelector('meta[name="dedup-token"]').content;
const state = {
  view: "pairs", offset: 0, limit: 24, groupLimit: 10, total: 0, focus: 0, items: [],
  signal: "", relation: "", band: "", unlabelled: false, group: null,
};
const $ = (id) => document.getElementById(id);

const RELATION_TEXT = {
  exact: "exact: the same bytes",
  copy: "copy: one capture, edited",
  partial: "partial: a region of one is the other",
  same_scene: "same scene: another shot of the same place",
  similar: "similar: alike, no shared geometry",
  unknown: "unknown: not examined",
};

function percent(value) { return `${Math.round(value * 100)}%`; }

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function showMessage(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("error", isError);
  box.hidden = !text;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  return response.json();
}

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Dedup-Token": TOKEN },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  return response.json();
}

function setLabelled(count) {
  $("labelled").textContent = `${count.toLocaleString()} labelled`;
}

async function loadSummary() {
  const summary = await getJSON("/api/summary");
  const threshold = summary.threshold === null ? "none" : summary.threshold;
  $("stats").textContent =
    `${summary.samples.toLocaleString()} samples · ${summary.found_pairs.toLocaleString()} pairs found · ` +
    `${summary.near_misses.toLocaleString()} near misses · ${summary.groups.toLocaleString()} groups · ` +
    `threshold ${threshold}` +
    (summary.labels_elsewhere ? ` · ${summary.labels_elsewhere} labels name pairs not shown here` : "");
  setLabelled(summary.labelled);
  for (const signal of summary.signals) $("signal").append(element("option", { value: signal, text: signal }));
  for (const name of summary.relations) $("relation").append(element("option", { value: name, text: RELATION_TEXT[name] || name }));
  for (const [low, high] of summary.bands) {
    const text = high > 1 ? `≥ ${low}` : `${low} – ${high}`;
    $("band").append(element("option", { value: `${low},${high}`, text }));
  }
}

function figure(record) {
  const size = record.width && record.height ? `${record.width}×${record.height}` : "";
  return element(
    "figure", { className: record.status || "" },
    element("img", { src: `/thumb/${record.row}`, alt: `sample ${record.key}`, loading: "lazy" }),
    element("figcaption", {},
      element("b", { text: record.key }),
      element("div", { className: "muted", text: [record.shard_name, size, record.status].filter(Boolean).join(" · ") })),
    element("p", { className: "caption", text: record.caption || "" }),
  );
}

function pairCard(pair, index) {
  const card = element("article", {
    className: "pair", "data-testid": "pair-card", "data-pair": pair.id, "data-label": pair.label || "",
  });
  const similarity = pair.similarity === null ? "–" : pair.similarity.toFixed(4);
  const details = [`signal ${pair.signal}`];
  if (pair.hamming >= 0) details.push(`hash distance ${pair.hamming}`);
  if (pair.inliers >= 0) details.push(`${pair.inliers} matching keypoints`);
  const evidence = pair.evidence || {};
  const evidenceText = [];
  if ("coverage_a" in evidence) evidenceText.push(`overlap covers ${percent(evidence.coverage_a)} / ${percent(evidence.coverage_b)}`);
  if ("changed" in evidence) evidenceText.push(`most changed part ${percent(evidence.changed)}`);
  if ("misfit" in evidence) evidenceText.push(`keypoints off by ${evidence.misfit.toFixed(2)} px`);
  if ("sharpness_ratio" in evidence) evidenceText.push(`sharpness ratio ${evidence.sharpness_ratio.toFixed(2)}`);
  if ("dense" in evidence) evidenceText.push(`thumbnails' edges agree ${evidence.dense.toFixed(2)}`);
  const badge = element("span", { className: `badge ${pair.label || ""}`, "data-testid": "label-badge",
    text: pair.label === "duplicate" ? "duplicate" : pair.label === "distinct" ? "not a duplicate" : "" });
  const named = pair.named_relation && pair.named_relation !== pair.relation;
  const relationText = (name) => RELATION_TEXT[name] || name;
  const actions = element("div", { className: "actions" },
    element("button", { "data-testid": "mark-duplicate", text: "Duplicate (d)" }),
    element("button", { "data-testid": "mark-distinct", text: "Not a duplicate (n)" }),
    element("button", { "data-testid": "skip", text: "Skip (s)" }),
    element("button", { "data-testid": "show-overlay", text: "Aligned (o)" }));
  actions.children[0].addEventListener("click", () => { focusOn(index); label("duplicate"); });
  actions.children[1].addEventListener("click", () => { focusOn(index); label("distinct"); });
  actions.children[2].addEventListener("click", () => { focusOn(index); skip(); });
  actions.children[3].addEventListener("click", () => { focusOn(index); toggleOverlay(); });
  card.append(
    element("div", { className: "images" }, figure(pair.a), figure(pair.b)),
    overlayFigure(pair),
    element("div", { className: "meta" },
      element("div", {}, element("span", { className: "similarity", text: similarity }), badge),
      element("div", { className: "relation", "data-testid": "relation",
        "data-relation": pair.named_relation || pair.relation || "", "data-found": pair.relation || "",
        text: named ? `${relationText(pair.named_relation)} (named by you; found: ${pair.relation || "none"})`
          : pair.relation ? relationText(pair.relation) : "" }),
      element("div", { className: "muted", text: details.join(" · ") }),
      element("div", { className: "muted", "data-testid": "evidence", text: evidenceText.join(" · ") }),
      element("div", { className: "muted", text: `group ${pair.a.group_id} (${pair.a.group_size}) · group ${pair.b.group_id} (${pair.b.group_size})` }),
      actions),
  );
  card.addEventListener("click", () => focusOn(index));
  return card;
}

// The pair aligned by its keypoints: the first laid over the second, and their difference (review/overlay.py).
// Hidden until asked for; the picture is made on the server only then.
function overlayFigure(pair) {
  const caption = element("figcaption", { className: "muted", "data-testid": "overlay-caption",
    text: "left: the first image laid over the second · right: their difference (dark where they agree)" });
  return element("figure", { className: "overlay", "data-testid": "overlay", "data-a": pair.a.row, "data-b": pair.b.row,
    "data-keys": `${pair.a.key} and ${pair.b.key}`, hidden: true }, caption);
}

function toggleOverlay() {
  const card = cards()[state.focus];
  if (!card || state.view !== "pairs") return;
  const shown = card.querySelector('[data-testid="overlay"]');
  const images = card.querySelector(".images");
  if (!shown.hidden) { shown.hidden = true; images.hidden = false; return; }
  shown.hidden = false; images.hidden = true;
  if (shown.querySelector("img") || "unaligned" in shown.dataset) return;
  const picture = element("img", { alt: `samples ${shown.dataset.keys} aligned` });
  shown.prepend(picture);
  const url = `/overlay/${shown.dataset.a}/${shown.dataset.b}`;
  picture.addEventListener("error", async () => {  // not aligned, or unreadable: the server says which
    const response = await fetch(url);
    picture.remove();
    shown.dataset.unaligned = "";
    shown.querySelector("figcaption").textContent = await response.text();
  }, { once: true });
  picture.src = url;
}

function groupSection(group) {
  const link = element("button", { text: "pairs of this group", "data-testid": "group-pairs" });
  link.addEventListener("click", () => { state.group = group.group_id; switchView("pairs"); });
  return element("section", { className: "group", "data-testid": "group-card" },
    element("h3", { text: `group ${group.group_id} · ${group.size} samples` }, link),
    element("div", { className: "strip" }, ...group.members.map(figure)));
}

function pairsQuery() {
  const query = new URLSearchParams({ offset: state.offset, limit: state.limit });
  if (state.signal) query.set("signal", state.signal);
  if (state.relation) query.set("relation", state.relation);
  if (state.band) { const [low, high] = state.band.split(","); query.set("low", low); query.set("high", high); }
  if (state.unlabelled) query.set("unlabelled", "1");
  if (state.group !== null) query.set("group", state.group);
  return query;
}

async function load() {
  const list = $("list");
  try {
    if (state.view === "pairs") {
      const page = await getJSON(`/api/pairs?${pairsQuery()}`);
      state.total = page.total;
      state.items = page.pairs;
      list.replaceChildren(...page.pairs.map(pairCard));
      if (!page.pairs.length) list.append(element("p", { className: "empty muted", text: "No pairs here." }));
      state.focus = Math.min(state.focus, Math.max(0, page.pairs.length - 1));
      focusOn(state.focus, false);
      showPosition(state.limit);
    } else {
      const page = await getJSON(`/api/groups?offset=${state.offset}&limit=${state.groupLimit}`);
      state.total = page.total;
      state.items = [];
      list.replaceChildren(...page.groups.map(groupSection));
      if (!page.groups.length) list.append(element("p", { className: "empty muted", text: "No duplicate groups." }));
      showPosition(state.groupLimit);
    }
    const chip = $("group-filter");
    chip.hidden = state.group === null || state.view !== "pairs";
    chip.textContent = state.group === null ? "" : `group ${state.group} ✕`;
  } catch (error) {
    showMessage(String(error), true);
  }
}

function showPosition(limit) {
  const first = state.total ? state.offset + 1 : 0;
  const last = Math.min(state.total, state.offset + limit);
  $("position").textContent = `${first.toLocaleString()}–${last.toLocaleString()} of ${state.total.toLocaleString()}`;
}

function cards() { return Array.from(document.querySelectorAll('[data-testid="pair-card"]')); }

function focusOn(index, scroll = true) {
  const all = cards();
  if (!all.length) return;
  state.focus = Math.max(0, Math.min(index, all.length - 1));
  all.forEach((card, i) => card.classList.toggle("focused", i === state.focus));
  if (scroll) all[state.focus].scrollIntoView({ block: "nearest" });
}

function updateCard(pair) {
  const card = document.querySelector(`[data-testid="pair-card"][data-pair="${pair.id}"]`);
  if (!card) return null;
  const index = cards().indexOf(card);
  const fresh = pairCard(pair, index);
  card.replaceWith(fresh);
  return index;
}

// 1-5 name the pair's relation, correcting find's; select then judges the pair by the name (drop_relations)
const NAMED_BY_KEY = { 1: "exact", 2: "copy", 3: "partial", 4: "same_scene", 5: "similar" };

async function label(verdict, relation) {
  const pair = state.items[state.focus];
  if (!pair || state.view !== "pairs") return;
  try {
    const answer = await postJSON("/api/label", relation ? { pair: pair.id, relation } : { pair: pair.id, label: verdict });
    state.items[state.focus] = answer.pair;
    updateCard(answer.pair);
    setLabelled(answer.labelled);
    showMessage("");
    focusOn(relation ? state.focus : state.focus + 1);
  } catch (error) {
    showMessage(`not saved: ${error}`, true);
  }
}

function skip() { focusOn(state.focus + 1); }

async function undo() {
  try {
    const answer = await postJSON("/api/undo", {});
    setLabelled(answer.labelled);
    if (!answer.pair) { showMessage("nothing to undo in this session"); return; }
    const index = updateCard(answer.pair);
    if (index === null) { showMessage(`undone: pair ${answer.pair.id} (not on this page)`); return; }
    state.items[index] = answer.pair;
    focusOn(index);
    showMessage("");
  } catch (error) {
    showMessage(`undo failed: ${error}`, true);
  }
}

function page(step) {
  const limit = state.view === "pairs" ? state.limit : state.groupLimit;
  const next = state.offset + step * limit;
  if (next < 0 || next >= state.total) return;
  state.offset = next;
  state.focus = 0;
  load().then(() => window.scrollTo(0, 0));
}

function switchView(view) {
  state.view = view;
  state.offset = 0;
  state.focus = 0;
  $("tab-pairs").setAttribute("aria-selected", String(view === "pairs"));
  $("tab-groups").setAttribute("aria-selected", String(view === "groups"));
  $("filters").hidden = view !== "pairs";
  load();
}

function refilter() { state.offset = 0; state.focus = 0; load(); }

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName)) return;
  const actions = {
    d: () => label("duplicate"), n: () => label("distinct"), s: skip, u: undo, o: toggleOverlay,
    j: () => focusOn(state.focus + 1), k: () => focusOn(state.focus - 1),
    "]": () => page(1), "[": () => page(-1), ArrowRight: () => page(1), ArrowLeft: () => page(-1),
  };
  if (event.key in NAMED_BY_KEY) actions[event.key] = () => label(null, NAMED_BY_KEY[event.key]);
  const action = actions[event.key];
  if (action) { event.preventDefault(); action(); }
});

$("tab-pairs").addEventListener("click", () => switchView("pairs"));
$("tab-groups").addEventListener("click", () => { state.group = null; switchView("groups"); });
$("next-page").addEventListener("click", () => page(1));
$("prev-page").addEventListener("click", () => page(-1));
$("undo").addEventListener("click", undo);
$("signal").addEventListener("change", (event) => { state.signal = event.target.value; event.target.blur(); refilter(); });
$("relation").addEventListener("change", (event) => { state.relation = event.target.value; event.target.blur(); refilter(); });
$("band").addEventListener("change", (event) => { state.band = event.target.value; event.target.blur(); refilter(); });
$("unlabelled").addEventListener("change", (event) => { state.unlabelled = event.target.checked; event.target.blur(); refilter(); });
$("group-filter").addEventListener("click", () => { state.group = null; refilter(); });

loadSummary().then(load).catch((error) => showMessage(String(error), true));
