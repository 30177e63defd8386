// Store page: filters -> GET /api/rows -> a grid of face thumbnails; a click opens the row.
"use strict";

const form = document.getElementById("filters");
const grid = document.getElementById("grid");
const count = document.getElementById("row-count");
const pageInfo = document.getElementById("page-info");
const dialog = document.getElementById("details");
const fields = {
  status: document.getElementById("f-status"), split: document.getElementById("f-split"),
  task: document.getElementById("f-task"), true: document.getElementById("f-true"),
  pred: document.getElementById("f-pred"), misclassified: document.getElementById("f-misclassified"),
  page_size: document.getElementById("f-page-size"),
};
let info = null;
let page = 1;
let pages = 1;
let request = 0;

function option(value, text) { return el("option", {value, text: text ?? value}); }

async function start() {
  try {
    info = await loadModelInfo();
  } catch (e) { showError(e.message); return; }
  const store = info.store;
  if (!store) {
    showError("No store is loaded: start the server with `faceprobe serve MODEL --store STORE`.");
    form.hidden = true;
    return;
  }
  document.getElementById("store-info").textContent =
    `${store.path}: ${store.rows} rows. Splits: ${store.split_note}. ` +
    (store.images ? "" : `Thumbnails unavailable: ${store.images_note}.`);
  fields.status.append(option("usable", "usable"), option("failed", "failed"),
    ...info.statuses.map(s => option(s, `${s} (${store.status[s] || 0})`)));
  fields.split.append(...info.splits.map(s =>
    option(s, s === "all" ? "all rows" : `${s} (${store.splits[s]})`)));
  const tasks = Object.keys(store.tasks).filter(t => store.tasks[t]);
  fields.task.append(...tasks.map(t => option(t)));
  const params = new URLSearchParams(location.search);
  for (const [name, node] of Object.entries(fields)) {
    if (!params.has(name)) continue;
    if (node.type === "checkbox") node.checked = params.get(name) === "true";
    else node.value = params.get(name);
    if (name === "task") fillClasses();
  }
  page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  form.addEventListener("change", e => {
    if (e.target === fields.task) fillClasses();
    page = 1;
    load();
  });
  document.getElementById("prev").addEventListener("click", () => { if (page > 1) { page--; load(); } });
  document.getElementById("next").addEventListener("click", () => { if (page < pages) { page++; load(); } });
  load();
}

function fillClasses() {
  const task = fields.task.value;
  const trueClasses = (task && info.store.tasks[task]) || [];
  const predClasses = (task && info.bundle.vocabularies[task]) || [];
  for (const [node, classes] of [[fields.true, trueClasses], [fields.pred, predClasses]]) {
    const keep = node.value;
    node.replaceChildren(option("", "any"), ...classes.map(c => option(c)));
    node.value = classes.includes(keep) ? keep : "";
  }
  const predicts = predClasses.length > 0;
  fields.pred.disabled = !predicts;
  fields.misclassified.disabled = !predicts;
  if (!predicts) fields.misclassified.checked = false;
}

function query() {
  const q = new URLSearchParams();
  for (const [name, node] of Object.entries(fields)) {
    if (node.type === "checkbox") { if (node.checked) q.set(name, "true"); }
    else if (node.value && !node.disabled) q.set(name, node.value);
  }
  q.set("page", String(page));
  return q;
}

async function load() {
  const q = query();
  const mine = ++request;
  history.replaceState(null, "", "/store?" + q.toString());
  count.dataset.state = "loading";
  let body;
  try {
    body = await fetchJSON("/api/rows?" + q.toString());
  } catch (e) {
    if (mine !== request) return;
    showError(e.message);
    count.dataset.state = "error";
    return;
  }
  if (mine !== request) return;  // a later filter change won
  showError("");
  pages = body.pages;
  count.textContent = `${body.total} row${body.total === 1 ? "" : "s"}`;
  count.dataset.total = String(body.total);
  count.dataset.query = q.toString();
  pageInfo.textContent = `page ${body.page} of ${body.pages}`;
  document.getElementById("prev").disabled = body.page <= 1;
  document.getElementById("next").disabled = body.page >= body.pages;
  grid.replaceChildren(...body.rows.map(card));
  count.dataset.state = "ready";
}

function card(row) {
  const task = fields.task.value;
  const wrong = task && row.misclassified[task];
  const button = el("button", {type: "button", class: "card" + (wrong ? " wrong" : ""),
    title: row.path, dataset: {shard: String(row.shard), index: String(row.index), status: row.status},
    onclick: () => openDetails(row)});
  const img = el("img", {src: row.thumb, alt: row.path.split("/").pop(), loading: "lazy"});
  img.addEventListener("error", () => img.classList.add("missing"));
  button.append(img, el("span", {class: "badge status-" + row.status, text: row.status}));
  if (task) {
    const truth = row.labels[task];
    const pred = row.predictions[task];
    button.append(el("span", {class: "caption",
      text: `true ${truth ?? "–"}` + (pred ? ` · pred ${predictionText(pred)}` : "")}));
  } else {
    button.append(el("span", {class: "caption", text: row.path.split("/").pop()}));
  }
  return button;
}

async function openDetails(row) {
  const body = document.getElementById("details-body");
  body.replaceChildren(el("p", {class: "muted", text: "loading…"}));
  dialog.showModal();
  let r;
  try {
    r = await fetchJSON(`/api/rows/${row.shard}/${row.index}`);
  } catch (e) {
    body.replaceChildren(el("p", {class: "error", text: e.message}));
    return;
  }
  const parts = [el("h2", {text: r.path.split("/").pop()})];
  if (r.image_size) {
    const [w, h] = r.image_size;
    const stage = el("div", {class: "stage"});
    const img = el("img", {src: `${r.thumb}?full=true`, alt: r.path});
    img.addEventListener("error", () => img.classList.add("missing"));
    stage.append(img, overlay(w, h, [{box: r.box, landmarks: r.landmarks_detected,
                                       datasetLandmarks: r.landmarks_dataset}]));
    parts.push(stage);
  } else {
    parts.push(el("p", {class: "muted", text: "image not available (" + info.store.images_note + ")"}));
  }
  const rows = [
    ["path", r.path], ["status", r.status], ["status message", r.error || "–"],
    ["split", `${r.split || "–"} (evaluation split: ${r.eval_split || "–"})`],
    ["identity", r.identity || "–"], ["face", String(r.face)],
    ["detector score", r.detector_score === null ? "–" : r.detector_score.toFixed(3)],
    ["box", r.box ? r.box.map(v => v.toFixed(1)).join(", ") : "–"],
  ];
  for (const [t, v] of Object.entries(r.labels)) {
    const p = r.predictions[t];
    rows.push([t, `true ${v ?? "–"}` + (p ? ` · predicted ${predictionText(p)}` : "")]);
  }
  const fmt = pts => pts ? pts.map(([x, y]) => `(${x.toFixed(1)}, ${y.toFixed(1)})`).join(" ") : "–";
  rows.push(["landmarks (detected)", fmt(r.landmarks_detected)]);
  rows.push(["landmarks (dataset)", fmt(r.landmarks_dataset)]);
  parts.push(el("table", {class: "details"}, el("tbody", {}, ...rows.map(([k, v]) =>
    el("tr", {}, el("th", {text: k}), el("td", {text: v}))))));
  body.replaceChildren(...parts);
}

start();
