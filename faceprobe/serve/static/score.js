// Score page: send the chosen or dropped photos in one request, draw every face found.
"use strict";

const input = document.getElementById("file-input");
const drop = document.getElementById("drop");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
let limits = null;

loadModelInfo().then(info => {
  limits = info.limits;
  const mb = limits.max_file_bytes / (1024 * 1024);
  document.getElementById("limits").textContent =
    `Up to ${limits.max_files} photos of at most ${mb} MB each per batch. ` +
    (info.gallery ? `Gallery: ${info.gallery.identities} identities.` : "");
}).catch(e => showError(e.message));

input.addEventListener("change", () => { score(Array.from(input.files)); input.value = ""; });
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault();
  drop.classList.remove("over");
  score(Array.from(e.dataTransfer.files));
});

async function score(files) {
  if (!files.length) return;
  showError("");
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  statusLine.textContent = `Scoring ${files.length} photo${files.length > 1 ? "s" : ""}…`;
  document.body.dataset.state = "busy";
  try {
    const body = await fetchJSON("/api/score", {method: "POST", body: form});
    render(body);
    statusLine.textContent = `${body.images.length} photo${body.images.length > 1 ? "s" : ""}, ` +
      `${body.faces} face${body.faces === 1 ? "" : "s"} in ${body.seconds.toFixed(1)} s`;
  } catch (e) {
    statusLine.textContent = "";
    showError(e.message);
    if (e.body && e.body.images) render(e.body);
  } finally {
    document.body.dataset.state = "done";
  }
}

function render(body) {
  results.replaceChildren(...body.images.map(renderImage));
}

function renderImage(im) {
  const card = el("article", {class: "result", dataset: {status: im.status}});
  const faces = im.faces || [];
  card.append(el("h2", {}, im.name, el("span", {class: "muted",
    text: im.width ? `  ${im.width}×${im.height}, ${faces.length} face${faces.length === 1 ? "" : "s"}` : ""})));
  if (im.error) card.append(el("p", {class: "error image-error", text: im.error}));
  if (!im.width) return card;
  const stage = el("div", {class: "stage"});
  if (im.preview) stage.append(el("img", {src: im.preview, alt: im.name}));
  stage.append(overlay(im.width, im.height, faces.map((f, i) => ({
    box: f.box, landmarks: f.landmarks, label: String(i + 1)}))));
  const list = el("div", {class: "faces"});
  faces.forEach((f, i) => list.append(renderFace(f, i)));
  card.append(el("div", {class: "result-body"}, stage, list));
  return card;
}

function renderFace(f, i) {
  const colour = FACE_COLOURS[i % FACE_COLOURS.length];
  const box = el("section", {class: "face", dataset: {face: String(i)}});
  const swatch = el("span", {class: "swatch"});
  swatch.style.background = colour;
  box.append(el("h3", {}, swatch, `Face ${i + 1}`,
    el("span", {class: "muted", text: `  ${f.status}` +
      (f.detector_score !== null ? `, detector ${f.detector_score.toFixed(3)}` : "")})));
  const rows = Object.entries(f.predictions).map(([task, p]) =>
    el("tr", {class: "prediction", dataset: {task, label: p.label ?? "", p: p.p ?? p.years ?? ""}},
      el("th", {text: task}), el("td", {text: predictionText(p)}),
      el("td", {}, p.p !== undefined ? bar(p.p) : "")));
  box.append(el("table", {class: "predictions"}, el("tbody", {}, ...rows)));
  if (f.identities) {
    box.append(el("p", {class: "muted", text: "closest identities (cosine similarity)"}));
    box.append(el("ol", {class: "identities"}, ...f.identities.map(m =>
      el("li", {class: "identity", dataset: {similarity: m.similarity}},
        m.identity, el("span", {class: "muted", text: `  ${m.similarity.toFixed(3)}`})))));
  }
  return box;
}

function bar(p) {
  const outer = el("span", {class: "bar"});
  const inner = el("span");
  inner.style.width = (100 * p).toFixed(1) + "%";
  outer.append(inner);
  return outer;
}
