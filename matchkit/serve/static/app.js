// matchkit web app: plain JavaScript over the same HTTP API (no CDN, works offline).
// Everything shown from the server is set with textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { gallery: "", file: {}, crop: null, image: null, job: null, report: null,
                review: { keepers: {}, excluded: new Set() }, ids: null, browseOffset: 0 };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function say(text, error = false) { const s = $("status"); s.textContent = text; s.className = error ? "error" : ""; }

function headers() {
  const key = $("key").value.trim();
  sessionStorage.setItem("matchkit-key", key);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, opts = {}) {
  const res = await fetch("/api" + path, { ...opts, headers: { ...headers(), ...(opts.headers || {}) } });
  if (!res.ok) {
    let msg = res.status + "";
    try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res.headers.get("content-type")?.includes("json") ? res.json() : res.blob();
}

const g = (path = "") => "/galleries/" + encodeURIComponent(state.gallery) + path;

async function thumb(id, img) {  // thumbnails need the key, so they are fetched, not linked
  try { img.src = URL.createObjectURL(await api(g("/images/" + id + "/thumbnail"))); }
  catch (e) { img.alt = "no thumbnail: " + e.message; }
}

function card(item, extra = []) {
  const img = el("img", { alt: "" });
  if (item.id != null) thumb(item.id, img);
  const meta = item.meta && Object.keys(item.meta).length ? JSON.stringify(item.meta) : "";
  return el("div", { class: "card", "data-id": item.id ?? "" }, img,
            ...extra, el("div", {}, item.path ? item.path.split("/").pop() : ""), el("div", {}, meta));
}

// --- tabs and galleries ----------------------------------------------------
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("nav button, .tab").forEach((x) => x.classList.remove("on"));
  b.classList.add("on"); $("tab-" + b.dataset.tab).classList.add("on");
}));

async function loadGalleries() {
  try {
    const list = await api("/galleries");
    const sel = $("gallery"); sel.textContent = "";
    for (const x of list) sel.append(el("option", { value: x.name }, `${x.name} (${x.images}, ${x.scope})`));
    state.gallery = sel.value; state.ids = null;
    say(list.length ? "" : "this key opens no gallery");
    await refreshJobs();
  } catch (e) { say(e.message, true); }
}
$("gallery").addEventListener("change", () => { state.gallery = $("gallery").value; state.ids = null; refreshJobs(); });
$("key").addEventListener("change", loadGalleries);

// --- dropping or picking files -------------------------------------------------
function takeFile(kind, file) {
  state.file[kind] = file;
  ({ search: showQuery, add: addImage, check: checkImage, label: labelImage })[kind](file);
}
document.querySelectorAll(".drop").forEach((zone) => {
  const kind = zone.dataset.for;
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    if (e.dataTransfer.files.length) takeFile(kind, e.dataTransfer.files[0]);
  });
  zone.querySelector(".pick").addEventListener("change", (e) => {
    if (e.target.files.length) takeFile(kind, e.target.files[0]);
  });
});

function form(fields) {
  const f = new FormData();
  for (const [k, v] of Object.entries(fields)) {
    if (Array.isArray(v)) v.forEach((x) => f.append(k, x)); else if (v != null && v !== "") f.append(k, v);
  }
  return f;
}

// --- search: image with a crop box, or text --------------------------------
function showQuery(file) {
  const img = new Image();
  img.onload = () => {
    const c = $("search-canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
    state.image = img; state.crop = null; draw();
    document.documentElement.setAttribute("data-mk-query", "1");
  };
  img.src = URL.createObjectURL(file);
}

function draw() {
  const c = $("search-canvas"), ctx = c.getContext("2d");
  if (!state.image) return;
  ctx.drawImage(state.image, 0, 0);
  const r = state.crop;
  $("crop-text").textContent = r ? `crop ${r.join(",")}` : "";
  if (r) { ctx.strokeStyle = "#f30"; ctx.lineWidth = Math.max(2, c.width / 200); ctx.strokeRect(...r); }
}

(function cropDrag() {
  const c = $("search-canvas"); let start = null;
  const at = (e) => { const b = c.getBoundingClientRect();
    return [Math.round((e.clientX - b.left) * c.width / b.width), Math.round((e.clientY - b.top) * c.height / b.height)]; };
  const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
  c.addEventListener("mousedown", (e) => { start = at(e); });
  c.addEventListener("mousemove", (e) => {
    if (!start) return;
    const p = at(e), x = clamp(Math.min(start[0], p[0]), c.width), y = clamp(Math.min(start[1], p[1]), c.height);
    const w = clamp(Math.max(start[0], p[0]), c.width) - x, h = clamp(Math.max(start[1], p[1]), c.height) - y;
    state.crop = w > 2 && h > 2 ? [x, y, w, h] : null; draw();
  });
  window.addEventListener("mouseup", () => { start = null; });
  $("crop-clear").addEventListener("click", () => { state.crop = null; draw(); });
})();

$("search-go").addEventListener("click", async () => {
  const text = $("search-text").value.trim();
  const where = $("search-where").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const fields = { k: $("search-k").value, where };
  if (text) fields.text = text; else if (state.file.search) {
    fields.file = state.file.search; if (state.crop) fields.crop = state.crop.join(",");
  } else return say("drop an image or type a text first", true);
  const out = $("search-results"); out.textContent = "";
  try {
    const hits = await api(g("/search"), { method: "POST", body: form(fields) });
    hits.forEach((h, i) => out.append(card(h, [el("div", { class: "score" }, `#${i + 1}  ${h.score.toFixed(3)}`)])));
    say(`${hits.length} results`);
    document.documentElement.setAttribute("data-mk-searched", String(hits.length));
  } catch (e) { say(e.message, true); }
});

// --- browse and add --------------------------------------------------------
async function browse(more = false) {
  const where = $("browse-where").value.trim();
  state.browseOffset = more ? state.browseOffset + 60 : 0;
  const q = new URLSearchParams({ offset: state.browseOffset, limit: 60 });
  if (where) q.append("where", where);
  try {
    const page = await api(g("/images?" + q));
    if (!more) $("browse-results").textContent = "";
    page.images.forEach((im) => $("browse-results").append(card(im, [el("div", {}, (im.labels || []).join(", "))])));
    $("browse-count").textContent = `${page.total} images`;
  } catch (e) { say(e.message, true); }
}
$("browse-go").addEventListener("click", () => browse(false));
$("browse-more").addEventListener("click", () => browse(true));

async function addImage(file) {
  const labels = $("add-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const out = await api(g("/images"), { method: "POST", body: form({ file,
      meta: $("add-meta").value.trim(), labels: labels.length ? JSON.stringify(labels) : "" }) });
    say(out.added ? `added image ${out.image.id}` : `already there: image ${out.image.id}`);
    document.documentElement.setAttribute("data-mk-added", String(out.image.id));
    state.ids = null; await browse(false);
  } catch (e) { say(e.message, true); }
}

// --- check and label -----------------------------------------------------------
async function checkImage(file) {
  const out = $("check-results"); out.textContent = "";
  try {
    const rep = await api(g("/check"), { method: "POST", body: form({ file, k: 8, include_all: "true" }) });
    for (const r of rep.results) {
      out.append(el("h3", {}, `${r.path}: ${r.matched ? "a copy" : "no copy found"}`));
      const grid = el("div", { class: "grid" }); out.append(grid);
      for (const m of r.matches) {
        const ev = m.evidence || {};
        grid.append(card(m, [el("div", { class: "score" }, `${m.matched ? m.relation || m.kind : "no match"} ${m.score.toFixed(3)}`),
          el("div", {}, `rule ${m.rule}; pHash ${ev.phash_distance ?? "-"}; inliers ${ev.inliers ?? "-"}`)]));
      }
    }
    for (const s of rep.skipped) out.append(el("p", { class: "error" }, `${s.path}: ${s.reason}`));
    document.documentElement.setAttribute("data-mk-checked", "1");
  } catch (e) { say(e.message, true); }
}

async function labelImage(file) {
  const out = $("label-results"); out.textContent = "";
  try {
    const rep = await api(g("/label"), { method: "POST", body: form({ file }) });
    for (const a of rep.answers) {
      out.append(el("h3", {}, `${a.label} (confidence ${a.confidence}${a.calibrated ? "" : ", uncalibrated"}; best: ${a.best ?? "-"})`));
      const grid = el("div", { class: "grid" }); out.append(grid);
      for (const n of a.neighbours) grid.append(card(n, [el("div", { class: "score" }, `${n.labels.join(", ")} ${n.score}`)]));
    }
    document.documentElement.setAttribute("data-mk-labelled", "1");
  } catch (e) { say(e.message, true); }
}

// --- dedupe review -----------------------------------------------------------
async function pathIds() {  // thumbnails are by id; clusters list paths
  if (state.ids) return state.ids;
  const ids = {}; let offset = 0, total = 1;
  while (offset < total) {
    const page = await api(g(`/images?offset=${offset}&limit=1000`));
    page.images.forEach((im) => { ids[im.path] = im.id; }); total = page.total; offset += 1000;
  }
  return (state.ids = ids);
}

async function refreshJobs(select) {
  if (!state.gallery) return;
  try {
    const jobs = await api(g("/dedupe")), sel = $("dedupe-jobs"); sel.textContent = "";
    for (const j of jobs) sel.append(el("option", { value: j.id }, `${j.created} ${j.state}`));
    if (select) sel.value = select;
    if (sel.value) await openJob(sel.value);
  } catch (e) { say(e.message, true); }
}
$("dedupe-jobs").addEventListener("change", () => openJob($("dedupe-jobs").value));

$("dedupe-start").addEventListener("click", async () => {
  try {
    const job = await api(g("/dedupe"), { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ level: $("dedupe-level").value }) });
    await refreshJobs(job.id);
  } catch (e) { say(e.message, true); }
});

async function openJob(id) {
  const job = await api(g("/dedupe/" + id));
  state.job = job; $("dedupe-state").textContent = job.state + (job.error ? ": " + job.error : "");
  const opt = [...$("dedupe-jobs").options].find((o) => o.value === id);
  if (opt) opt.textContent = `${job.created} ${job.state}`;
  if (job.state === "queued" || job.state === "running") { setTimeout(() => openJob(id), 500); return; }
  if (job.state !== "done") return;
  state.report = await api(g(`/dedupe/${id}/result`));
  const r = job.review || {};
  state.review = { keepers: { ...(r.keepers || {}) }, excluded: new Set(r.excluded || []) };
  const rels = new Set(state.report.clusters.flatMap((c) => c.pairs.map((p) => p.relation)).filter(Boolean));
  const sel = $("dedupe-relation"), keep = sel.value; sel.textContent = "";
  sel.append(el("option", { value: "" }, "any"));
  for (const x of [...rels].sort()) sel.append(el("option", { value: x }, x));
  sel.value = rels.has(keep) ? keep : "";
  await renderClusters();
}
$("dedupe-relation").addEventListener("change", renderClusters);
$("dedupe-score").addEventListener("input", renderClusters);

async function renderClusters() {
  const out = $("clusters"); out.textContent = "";
  if (!state.report) return;
  const ids = await pathIds(), rel = $("dedupe-relation").value, low = +$("dedupe-score").value || 0;
  let shown = 0;
  state.report.clusters.forEach((c, i) => {
    const pairs = c.pairs.filter((p) => (!rel || p.relation === rel) && p.score >= low);
    if (!pairs.length) return;
    shown++;
    const keeper = state.review.keepers[i] ?? c.keep;
    const box = el("div", { class: "cluster", "data-cluster": i },
                   el("h3", {}, `Cluster ${i + 1}: ${c.members.length} images`));
    for (const m of c.members) {
      const toKeep = c.pairs.find((p) => (p.a === m && p.b === c.keep) || (p.b === m && p.a === c.keep));
      const img = el("img", { alt: m, title: "make this the keeper" });
      if (ids[m] != null) thumb(ids[m], img);
      img.addEventListener("click", () => { state.review.keepers[i] = m; state.review.excluded.delete(m); renderClusters(); });
      const tick = el("input", { type: "checkbox", "data-path": m });
      tick.checked = !state.review.excluded.has(m);
      tick.disabled = m === keeper;
      tick.addEventListener("change", () => { if (tick.checked) state.review.excluded.delete(m); else state.review.excluded.add(m); renderClusters(); });
      box.append(el("div", { class: "member" + (m === keeper ? " keeper" : "") + (state.review.excluded.has(m) ? " excluded" : ""), "data-path": m },
        img, el("label", {}, tick, m === keeper ? " keeper" : " move"),
        el("div", {}, m.split("/").pop()),
        el("div", {}, toKeep ? `${toKeep.relation || toKeep.kind} ${toKeep.score.toFixed(3)}` : (m === c.keep ? c.keep_reason : ""))));
    }
    out.append(box);
  });
  document.documentElement.setAttribute("data-mk-clusters", String(shown));
}

async function saveReview() {
  const body = { keepers: Object.fromEntries(Object.entries(state.review.keepers).map(([k, v]) => [String(k), v])),
                 excluded: [...state.review.excluded] };
  await api(g(`/dedupe/${state.job.id}/review`), { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}
function logMoves(what, out) {
  $("dedupe-log").textContent = `${what}: ${JSON.stringify(out.counts)}\n` +
    out.moves.map((m) => `${m.state}: ${m.src}${m.dst ? " -> " + m.dst : ""}${m.error ? " (" + m.error + ")" : ""}`).join("\n");
  document.documentElement.setAttribute("data-mk-moves", what);
}
$("review-save").addEventListener("click", async () => {
  try { await saveReview(); say("review saved"); } catch (e) { say(e.message, true); }
});
$("review-apply").addEventListener("click", async () => {
  try { await saveReview(); logMoves("applied", await api(g(`/dedupe/${state.job.id}/apply`), { method: "POST" })); }
  catch (e) { say(e.message, true); }
});
$("review-undo").addEventListener("click", async () => {
  try { logMoves("undone", await api(g(`/dedupe/${state.job.id}/undo`), { method: "POST" })); }
  catch (e) { say(e.message, true); }
});

$("key").value = sessionStorage.getItem("matchkit-key") || "";
loadGalleries().then(() => document.documentElement.setAttribute("data-mk-ready", "1"));
