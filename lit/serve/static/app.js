// The page of `lit serve`: search by photo or words, results grid, match viewer, live adds.
// Plain JS, no build step, nothing loaded from elsewhere; it talks to the JSON API under /api.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { health: null, query: null, results: [], viewer: null };

function pathOf(name) { return name.split("/").map(encodeURIComponent).join("/"); }
function imageUrl(name, size) { return `/api/images/${pathOf(name)}` + (size ? `?size=${size}` : ""); }
function fmt(x) { return Number(x).toPrecision(4); }

function say(text, error = false) {
  const m = $("message");
  m.textContent = text || "";
  m.classList.toggle("error", !!error);
}

function token() { return localStorage.getItem("lit-token") || ""; }

function askToken() {
  const t = prompt("This service needs its token to add or remove photos:", token());
  if (t !== null) localStorage.setItem("lit-token", t.trim());
  return t !== null;
}

async function api(method, url, body, write = false) {
  const headers = {};
  if (write && token()) headers["Authorization"] = "Bearer " + token();
  let res;
  try {
    res = await fetch(url, { method, body, headers });
  } catch (err) {
    throw new Error("the service does not answer (" + err.message + ")");
  }
  let data = null;
  try { data = await res.json(); } catch (err) { data = null; }
  if (!res.ok) {
    const e = new Error((data && data.error) || `HTTP ${res.status}`);
    e.status = res.status;
    throw e;
  }
  return data;
}

async function writeApi(method, url, body) {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await api(method, url, body, true);
    } catch (err) {
      if ((err.status === 401 || err.status === 403) && askToken()) continue;
      throw err;
    }
  }
  throw new Error("no valid token");
}

async function refreshHealth() {
  try {
    const h = await api("GET", "/api/health");
    state.health = h;
    $("stats").textContent = `${h.images} photo${h.images === 1 ? "" : "s"} indexed · model ${h.model}` +
      (h.text_search ? " · search by words" : "");
    $("token-button").hidden = !h.write_token;
    $("text-input").disabled = !h.text_search;
    if (!h.text_search) $("text-input").placeholder = "(this index has no embeddings for search by words)";
  } catch (err) {
    $("stats").textContent = "service unavailable";
  }
}

// ------------------------------------------------------------------ search
function form(fields) {
  const f = new FormData();
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null) f.append(k, v);
  f.append("topk", $("topk").value);
  return f;
}

async function runSearch(query, fields) {
  say("Searching…");
  const t0 = performance.now();
  try {
    const res = await api("POST", "/api/search", form(fields));
    state.query = query;
    state.results = res.results;
    showQuery(query, res, performance.now() - t0);
    renderResults(res.results);
    say("");
  } catch (err) {
    say(err.message, true);
  }
}

function searchFile(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  runSearch({ kind: "image", file, label: file.name, url },
            { image: file, exclude_self: $("exclude-self").checked ? "true" : "false" });
}

function searchText(text) {
  runSearch({ kind: "text", label: text }, { text });
}

function searchName(name) {
  runSearch({ kind: "name", label: name, name, url: imageUrl(name, 320) },
            { name, exclude_self: $("exclude-self").checked ? "true" : "false" });
}

function showQuery(query, res, ms) {
  $("query").hidden = false;
  const img = $("query-image");
  if (query.url) img.src = query.url; else img.removeAttribute("src");
  $("query-name").textContent = query.kind === "text" ? `“${res.query}”` : res.query;
  const how = { image: "uploaded photo", name: "photo of the index", text: "words" }[query.kind];
  $("query-meta").textContent = `${how} · ${res.results.length} results in ${(ms / 1000).toFixed(2)} s` +
    (query.kind === "text" ? " · score: similarity in the joint image–text space" : " · score: ASMK similarity") +
    " · click a result to see why it matches";
}

function renderResults(hits) {
  const grid = $("results");
  grid.replaceChildren();
  if (!hits.length) { say("No results."); return; }
  for (const h of hits) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.name = h.name;
    card.innerHTML = `<img loading="lazy" alt=""><span class="rank"></span><div class="info"><div class="name"></div>` +
      `<div class="score"></div></div>`;
    card.querySelector("img").src = imageUrl(h.name, 320);
    card.querySelector(".rank").textContent = `#${h.rank}`;
    card.querySelector(".name").textContent = h.name;
    card.querySelector(".name").title = h.name;
    card.querySelector(".score").textContent = `score ${fmt(h.score)}`;
    card.addEventListener("click", () => openViewer(h));
    grid.appendChild(card);
  }
}

// ------------------------------------------------------------------ viewer
function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot load " + url));
    img.src = url;
  });
}

function colour(t, alpha = 1) {  // t in [0, 1]: blue -> yellow
  const h = 220 - 170 * Math.max(0, Math.min(1, t));
  return `hsla(${h}, 95%, 55%, ${alpha})`;
}

async function openViewer(hit) {
  const q = state.query;
  const v = { hit, match: null, selected: -1, attention: null, imgA: null, imgB: null };
  state.viewer = v;
  $("viewer").hidden = false;
  $("viewer-title").textContent = q.kind === "text" ? hit.name : `${q.label}  ↔  ${hit.name}`;
  $("viewer-meta").textContent = "Matching super-features…";
  $("match-count").parentElement.hidden = q.kind === "text";
  const canvas = $("canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  try {
    if (q.kind === "text") {
      v.imgB = await loadImage(imageUrl(hit.name, 1024));
      $("viewer-meta").textContent = `rank ${hit.rank}, score ${fmt(hit.score)} for the words “${q.label}” ` +
        "(a text query has no super-features to match: “Find similar” searches with this photo)";
      draw();
      return;
    }
    let match;
    if (q.kind === "image") {
      const f = new FormData();
      f.append("image", q.file);
      f.append("b", hit.name);
      match = await api("POST", "/api/match", f);
    } else {
      match = await api("GET", `/api/match?a=${encodeURIComponent(q.name)}&b=${encodeURIComponent(hit.name)}`);
    }
    if (state.viewer !== v) return;
    v.match = match;
    [v.imgA, v.imgB] = await Promise.all([loadImage(q.kind === "image" ? q.url : imageUrl(q.name, 1024)),
                                          loadImage(imageUrl(hit.name, 1024))]);
    const n = match.matches.length;
    $("match-count").max = Math.max(1, n);
    $("match-count").value = Math.min(30, Math.max(1, n));
    $("match-count-value").textContent = $("match-count").value;
    $("match-count").parentElement.hidden = n < 2;
    $("viewer-meta").textContent = `rank ${hit.rank}, search score ${fmt(hit.score)} · ` + (n
      ? `${n} matching super-feature${n === 1 ? "" : "s"} (${match.rule}), match score ${fmt(match.score)}`
      : `no pair of super-features passes the model's match rule (${match.rule}): the photos share visual words, ` +
        "but no super-feature of one is close enough to one of the other");
    draw();
  } catch (err) {
    $("viewer-meta").textContent = err.message;
  }
}

function layout() {
  const v = state.viewer;
  const panel = document.querySelector(".panel");
  const maxW = panel.clientWidth - 36, maxH = Math.min(560, window.innerHeight * 0.68);
  const imgs = [v.imgA, v.imgB].filter(Boolean);
  const gap = imgs.length > 1 ? 16 : 0;
  let h = maxH;
  const widthAt = (hh) => imgs.reduce((s, im) => s + im.naturalWidth * hh / im.naturalHeight, 0) + gap;
  if (widthAt(h) > maxW) h = (maxW - gap) / (widthAt(1) - gap);
  const boxes = [];
  let x = 0;
  for (const im of imgs) {
    const w = im.naturalWidth * h / im.naturalHeight;
    boxes.push({ x, y: 0, w, h });
    x += w + gap;
  }
  return { width: Math.round(x - gap), height: Math.round(h), boxes };
}

function draw() {
  const v = state.viewer;
  if (!v) return;
  const canvas = $("canvas");
  const L = layout();
  const ratio = window.devicePixelRatio || 1;
  canvas.width = L.width * ratio; canvas.height = L.height * ratio;
  canvas.style.width = L.width + "px"; canvas.style.height = L.height + "px";
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  const imgs = [v.imgA, v.imgB].filter(Boolean);
  imgs.forEach((im, i) => ctx.drawImage(im, L.boxes[i].x, L.boxes[i].y, L.boxes[i].w, L.boxes[i].h));
  v.layout = L;
  if (!v.match || !v.imgA) return;
  const [A, B] = L.boxes;
  const sa = A.w / v.match.size_a[0], sb = B.w / v.match.size_b[0];
  if (v.attention) {
    drawHeat(ctx, v.attention[0], A);
    drawHeat(ctx, v.attention[1], B);
  }
  const shown = Number($("match-count").value);
  const ms = v.match.matches.slice(0, shown);
  const sims = ms.map((m) => m.similarity);
  const lo = Math.min(...sims), hi = Math.max(...sims);
  v.points = [];
  ms.forEach((m, i) => {
    const p = [A.x + m.xa * sa, A.y + m.ya * sa, B.x + m.xb * sb, B.y + m.yb * sb];
    v.points.push(p);
    const t = hi > lo ? (m.similarity - lo) / (hi - lo) : 1;
    const selected = i === v.selected, dim = v.selected >= 0 && !selected;
    ctx.strokeStyle = colour(t, dim ? 0.18 : 0.9);
    ctx.lineWidth = selected ? 3 : 1.6;
    ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(p[2], p[3]); ctx.stroke();
    for (const [x, y] of [[p[0], p[1]], [p[2], p[3]]]) {
      ctx.beginPath(); ctx.arc(x, y, selected ? 6 : 3.5, 0, 2 * Math.PI);
      ctx.fillStyle = colour(t, dim ? 0.25 : 1); ctx.fill();
      ctx.lineWidth = 1; ctx.strokeStyle = dim ? "rgba(0,0,0,.2)" : "#000"; ctx.stroke();
    }
  });
}

function drawHeat(ctx, att, box) {
  const [h, w] = att.grid;
  const bytes = Uint8Array.from(atob(att.maps[0].data), (c) => c.charCodeAt(0));
  const off = document.createElement("canvas");
  off.width = w; off.height = h;
  const octx = off.getContext("2d");
  const img = octx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const t = bytes[i] / 255;
    img.data[4 * i] = 255 * Math.min(1, 1.6 * t);
    img.data[4 * i + 1] = 255 * Math.max(0, Math.min(1, 1.8 * t - 0.5));
    img.data[4 * i + 2] = 40 * (1 - t);
    img.data[4 * i + 3] = 215 * Math.sqrt(t);
  }
  octx.putImageData(img, 0, 0);
  // the map covers the photo as the model saw it; darken the rest so the attention stands out
  ctx.fillStyle = "rgba(0,0,0,.45)";
  ctx.fillRect(box.x, box.y, box.w, box.h);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(off, box.x, box.y, box.w, box.h);
}

async function selectMatch(i) {
  const v = state.viewer;
  const m = v.match.matches[i];
  v.selected = i;
  v.attention = null;
  draw();
  const q = state.query;
  try {
    let a;
    if (q.kind === "image") {
      const f = new FormData();
      f.append("image", q.file); f.append("scale", m.scale_a); f.append("ids", m.id_a);
      a = api("POST", "/api/attention", f);
    } else {
      a = api("GET", `/api/attention/${pathOf(q.name)}?scale=${m.scale_a}&ids=${m.id_a}`);
    }
    const b = api("GET", `/api/attention/${pathOf(v.hit.name)}?scale=${m.scale_b}&ids=${m.id_b}`);
    const both = await Promise.all([a, b]);
    if (state.viewer !== v || v.selected !== i) return;
    v.attention = both;
    $("viewer-meta").textContent = `match ${i + 1}: super-feature ${m.id_a} at scale ${fmt(m.scale_a)} ↔ ` +
      `super-feature ${m.id_b} at scale ${fmt(m.scale_b)}, cosine ${fmt(m.similarity)} · ` +
      "their attention maps (each divided by its peak); click elsewhere to clear";
    draw();
  } catch (err) {
    $("viewer-meta").textContent = err.message;
  }
}

function canvasClick(ev) {
  const v = state.viewer;
  if (!v || !v.points) return;
  const r = $("canvas").getBoundingClientRect();
  const x = ev.clientX - r.left, y = ev.clientY - r.top;
  let best = -1, bestD = 14 * 14;
  v.points.forEach((p, i) => {
    for (const [px, py] of [[p[0], p[1]], [p[2], p[3]]]) {
      const d = (px - x) ** 2 + (py - y) ** 2;
      if (d < bestD) { bestD = d; best = i; }
    }
  });
  if (best < 0) {
    v.selected = -1; v.attention = null;
    draw();
    return;
  }
  selectMatch(best);
}

function closeViewer() {
  $("viewer").hidden = true;
  state.viewer = null;
}

// ------------------------------------------------------------------ adds and removals
function chip(text, error = false) {
  const c = document.createElement("span");
  c.className = "chip" + (error ? " error" : "");
  c.textContent = text;
  $("adds").appendChild(c);
  return c;
}

async function addFiles(files) {
  for (const file of files) {
    const c = chip(`adding ${file.name}…`);
    const f = new FormData();
    f.append("image", file);
    f.append("name", file.name);
    try {
      const res = await writeApi("POST", "/api/images", f);
      c.textContent = `${res.replaced ? "replaced" : "added"} ${res.name}`;
    } catch (err) {
      c.textContent = `${file.name}: ${err.message}`;
      c.classList.add("error");
    }
    refreshHealth();
  }
}

async function removeShown() {
  const v = state.viewer;
  if (!v || !confirm(`Remove ${v.hit.name} from the index?`)) return;
  try {
    await writeApi("DELETE", `/api/images/${pathOf(v.hit.name)}`);
    closeViewer();
    const card = [...document.querySelectorAll(".card")].find((c) => c.dataset.name === v.hit.name);
    if (card) card.remove();
    say(`removed ${v.hit.name}`);
    refreshHealth();
  } catch (err) {
    $("viewer-meta").textContent = err.message;
  }
}

// ------------------------------------------------------------------ wiring
function wire() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => { searchFile(e.target.files[0]); e.target.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file-input").click(); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); e.stopPropagation(); drop.classList.remove("over");
    searchFile(e.dataTransfer.files[0]);
  });
  const add = $("add-zone");
  $("add-input").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  $("add-zone-input").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  add.addEventListener("dragover", (e) => { e.preventDefault(); add.classList.add("over"); });
  add.addEventListener("dragleave", () => add.classList.remove("over"));
  add.addEventListener("drop", (e) => {
    e.preventDefault(); e.stopPropagation(); add.classList.remove("over");
    addFiles([...e.dataTransfer.files]);
  });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());  // never navigate away to a dropped file
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("text-input").value.trim();
    if (t) searchText(t); else say("Type some words first.", true);
  });
  $("close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) closeViewer(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeViewer(); });
  $("canvas").addEventListener("click", canvasClick);
  $("match-count").addEventListener("input", (e) => { $("match-count-value").textContent = e.target.value; draw(); });
  $("similar").addEventListener("click", () => { const n = state.viewer.hit.name; closeViewer(); searchName(n); });
  $("remove").addEventListener("click", removeShown);
  $("token-button").addEventListener("click", askToken);
  window.addEventListener("resize", draw);
  refreshHealth();
}

wire();
