// The station page: plain JS, no build step, no network beyond this server.
"use strict";

const LANG = (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
const TEXT = {
  en: { line: "Line", drop: "Drop images here or", pick: "choose images", inspect: "Inspect", cases: "Past cases",
        search: "Search", defect: "Defect", prob: "p", meas: "Measurements", similar: "Similar past cases",
        save: "Save as case", saved: "saved as case", normal: "Not a defect", marked: "learned as normal", working: "inspecting…", none: "no images chosen",
        fail: "FAIL", review: "REVIEW", pass: "PASS", match: "matches the instruction",
        nomatch: "does not match", token: "API token for this station:", nohits: "no cases found",
        offset_mm: "offset", length_mm: "length", width_mm: "width", area_mm2: "area", images: "images",
        searchHint: "spatter around the weld" },
  zh: { line: "产线", drop: "拖入图像，或", pick: "选择图像", inspect: "检测", cases: "历史案例",
        search: "搜索", defect: "缺陷", prob: "置信度", meas: "测量", similar: "相似历史案例",
        save: "保存为案例", saved: "已保存为案例", normal: "误报，判为正常", marked: "已学习为正常", working: "检测中…", none: "未选择图像",
        fail: "不合格", review: "复核", pass: "合格", match: "符合指令",
        nomatch: "不符合指令", token: "本工位的 API 令牌：", nohits: "未找到案例",
        offset_mm: "偏移", length_mm: "长度", width_mm: "宽度", area_mm2: "面积", images: "张图像",
        searchHint: "焊点周围的焊渣" },
}[LANG];
const SHOWN = ["offset_mm", "length_mm", "width_mm", "area_mm2"];  // what an operator reads; the rest is internal
const COLOURS = { fail: "#c62828", review: "#e69500", pass: "#2e7d32" };
const $ = (sel) => document.querySelector(sel);
let lines = [];
let chosen = [];

function token() { return localStorage.getItem("defect-agent-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    const t = prompt(TEXT.token);
    if (t) { localStorage.setItem("defect-agent-token", t); return api(path, options); }
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body?.detail || response.statusText);
  return body;
}

async function authedImage(img, url) {
  // images come through fetch so the token travels with them
  const headers = token() ? { Authorization: "Bearer " + token() } : {};
  const response = await fetch(url, { headers });
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
}

function say(text) { $("#status").textContent = text; }

function measurementText(key, value) {
  const unit = key.endsWith("mm2") ? "mm²" : "mm";
  return `${TEXT[key] || key} ${value.toFixed(2)} ${unit}`;
}

function currentLine() { return lines.find((l) => l.name === $("#line").value); }

// what the line's operators call a class, in the page's language
function classLabel(lineName, name) {
  const term = (lines.find((l) => l.name === lineName)?.terms || []).find((t) => t.name === name);
  const words = term ? (LANG === "zh" ? term.zh : term.en) : [];
  return words[0] || name.replace(/_/g, " ");
}

function termsOf(line) {
  const out = [];
  for (const term of line?.terms || []) {
    if (term.role === "part") continue;
    for (const w of LANG === "zh" ? term.zh.concat(term.en) : term.en.concat(term.zh)) out.push(w);
  }
  return out;
}

// completion of the line's defect terms for the word being typed
function suggest() {
  const input = $("#instruction");
  const upto = input.value.slice(0, input.selectionStart ?? input.value.length);
  const m = upto.match(/([A-Za-z-]+|[\u4e00-\u9fff]+)$/);
  const list = $("#suggestions");
  list.innerHTML = "";
  if (!m) return;
  // Chinese has no spaces: the word being typed is the longest tail of the run that begins some term
  const run = m[1].toLowerCase();
  const all = [...new Set(termsOf(currentLine()))];
  let stem = run;
  let words = [];
  for (let start = 0; start < run.length && !words.length; start++) {
    stem = run.slice(start);
    if (/^[a-z-]/.test(stem) && start > 0) break;  // English words complete as a whole
    words = all.filter((w) => w.toLowerCase().startsWith(stem) && w.toLowerCase() !== stem).slice(0, 8);
  }
  m[1] = stem;
  for (const w of words) {
    const li = document.createElement("li");
    li.textContent = w;
    li.setAttribute("role", "option");
    li.addEventListener("mousedown", (e) => {
      e.preventDefault();
      const start = upto.length - m[1].length;
      input.value = input.value.slice(0, start) + w + input.value.slice(upto.length);
      list.innerHTML = "";
      input.focus();
    });
    list.appendChild(li);
  }
}

function choose(files) {
  chosen = [...files].filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|bmp|tiff?|webp)$/i.test(f.name));
  $("#picked").textContent = chosen.length ? `${chosen.length} ${TEXT.images}` : TEXT.none;
}

function drawBoxes(svg, img, defects) {
  svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
  svg.innerHTML = "";
  for (const d of defects) {
    const faint = d.probability < 0.35;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    r.setAttribute("x", d.box.x1); r.setAttribute("y", d.box.y1);
    r.setAttribute("width", d.box.x2 - d.box.x1); r.setAttribute("height", d.box.y2 - d.box.y1);
    r.setAttribute("fill", "none");
    r.setAttribute("stroke", faint ? "#999" : COLOURS[d.verdict]);
    r.setAttribute("stroke-width", faint ? 1 : 3);
    r.classList.add("box", d.verdict);
    svg.appendChild(r);
  }
}

function similarThumbs(cases) {
  const wrap = document.createElement("div");
  wrap.className = "similar";
  for (const c of cases.slice(0, 3)) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = `case ${c.case_id}`;
    authedImage(img, `/cases/${c.case_id}/image`);
    const cap = document.createElement("figcaption");
    cap.textContent = `#${c.case_id} ${classLabel(c.line, c.defect_class)} ${c.similarity.toFixed(2)} ${c.disposition}`;
    fig.append(img, cap);
    wrap.appendChild(fig);
  }
  return wrap;
}

function render(result) {
  const results = $("#results");
  results.innerHTML = "";
  const c = result.counts;
  $("#summary").textContent =
    `${TEXT.fail} ${c.fail} · ${TEXT.review} ${c.review} · ${TEXT.pass} ${c.pass} · ${TEXT.match} ${c.matching}`;
  for (const item of result.images) {
    const v = item.verdict;
    const card = $("#card").content.firstElementChild.cloneNode(true);
    card.dataset.verdict = v.verdict;
    card.querySelector(".name").textContent = item.name;
    const verdict = card.querySelector(".verdict");
    verdict.textContent = TEXT[v.verdict];
    verdict.classList.add(v.verdict);
    card.querySelector(".match").textContent = (v.matches_query ? TEXT.match : TEXT.nomatch) +
      (v.match_uncertain ? " ?" : "") + ` (${v.score.toFixed(2)})`;
    const reasons = card.querySelector(".reasons");
    for (const r of [...(v.error ? [v.error] : v.verdict_reasons), ...v.query_reasons.slice(-1)]) {
      const li = document.createElement("li"); li.textContent = r; reasons.appendChild(li);
    }
    const img = card.querySelector("img");
    const svg = card.querySelector("svg");
    img.addEventListener("load", () => drawBoxes(svg, img, v.defects));
    authedImage(img, `/images/${item.image_id}`);
    const body = card.querySelector("tbody");
    for (const d of v.defects.filter((d) => d.probability >= 0.35)) {
      const tr = document.createElement("tr");
      tr.className = "defect-row";
      const cells = [classLabel(v.line, d.defect_class), d.probability.toFixed(2),
        Object.entries(d.measurements).filter(([k]) => SHOWN.includes(k)).map(([k, x]) => measurementText(k, x)).join(", ")];
      for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
      const sim = document.createElement("td"); sim.appendChild(similarThumbs(d.similar_cases)); tr.appendChild(sim);
      const act = document.createElement("td");
      const button = document.createElement("button");
      button.className = "save"; button.type = "button"; button.textContent = TEXT.save;
      button.addEventListener("click", () => saveCase(button, v, item.image_id, d));
      act.appendChild(button);
      if (d.source === "anomaly") {
        // a region of the line's anomaly model: the engineer may declare it normal (a false alarm)
        const normal = document.createElement("button");
        normal.className = "normal"; normal.type = "button"; normal.textContent = TEXT.normal;
        normal.addEventListener("click", () => markNormal(normal, v, item.image_id));
        act.appendChild(normal);
      }
      tr.appendChild(act);
      body.appendChild(tr);
    }
    results.appendChild(card);
  }
}

async function saveCase(button, verdict, imageId, defect) {
  button.disabled = true;
  try {
    const out = await api("/cases", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        line: verdict.line, defect_class: defect.defect_class, image_id: imageId, box: defect.box,
        disposition: defect.verdict === "fail" ? "scrap" : "rework",
        report: `${defect.defect_class} confirmed at the station: ${verdict.query_reasons[0] || ""}`.slice(0, 4000),
        measurements: defect.measurements, author: "station",
      }),
    });
    const note = document.createElement("span");
    note.className = "saved";
    note.textContent = `${TEXT.saved} #${out.case.id}`;
    button.replaceWith(note);
  } catch (err) { button.disabled = false; say(err.message); }
}

async function markNormal(button, verdict, imageId) {
  button.disabled = true;
  try {
    const out = await api(`/lines/${encodeURIComponent(verdict.line)}/normal`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: imageId, author: "station" }),
    });
    const note = document.createElement("span");
    note.className = "saved";
    note.textContent = `${TEXT.marked} (${out.patches_added})`;
    button.replaceWith(note);
  } catch (err) { button.disabled = false; say(err.message); }
}

async function inspect(event) {
  event.preventDefault();
  if (!chosen.length) { say(TEXT.none); return; }
  const form = new FormData();
  form.append("instruction", $("#instruction").value);
  form.append("line", $("#line").value);
  for (const f of chosen) form.append("files", f, f.name);
  say(TEXT.working);
  $("#run").disabled = true;
  try { render(await api("/inspect", { method: "POST", body: form })); say(""); }
  catch (err) { say(err.message); }
  finally { $("#run").disabled = false; }
}

async function search(event) {
  event.preventDefault();
  const q = new URLSearchParams({ text: $("#search").value, k: "8" });
  try {
    const out = await api(`/cases/search?${q}`);
    const hits = $("#hits");
    hits.innerHTML = out.hits.length ? "" : TEXT.nohits;
    for (const h of out.hits) {
      const row = document.createElement("div");
      row.className = "hit";
      row.dataset.caseId = h.case_id;
      const img = document.createElement("img");
      authedImage(img, `/cases/${h.case_id}/image`);
      const text = document.createElement("span");
      text.textContent = `#${h.case_id} ${h.line} ${h.defect_class} (${h.disposition}) ${h.report}`;
      row.append(img, text);
      hits.appendChild(row);
    }
  } catch (err) { say(err.message); }
}

async function start() {
  document.documentElement.lang = LANG;
  const translatable = [...document.querySelectorAll("[data-t]"), ...$("#card").content.querySelectorAll("[data-t]")];
  for (const el of translatable) el.textContent = TEXT[el.dataset.t] || el.textContent;
  $("#search").placeholder = TEXT.searchHint;
  lines = await api("/lines");
  const select = $("#line");
  for (const l of lines) {
    const o = document.createElement("option");
    o.value = l.name; o.textContent = LANG === "zh" ? l.title_zh : l.title_en;
    select.appendChild(o);
  }
  const placeholder = () => {
    const l = currentLine();
    $("#instruction").placeholder = LANG === "zh" ? l.example_zh : l.example_en;
  };
  select.addEventListener("change", placeholder);
  placeholder();
  $("#instruction").addEventListener("input", suggest);
  $("#instruction").addEventListener("blur", () => setTimeout(() => ($("#suggestions").innerHTML = ""), 100));
  $("#files").addEventListener("change", (e) => choose(e.target.files));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files); });
  $("#inspect-form").addEventListener("submit", inspect);
  $("#search-form").addEventListener("submit", search);
  document.body.dataset.ready = "1";
}

start().catch((err) => say(err.message));
