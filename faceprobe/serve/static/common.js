// Shared helpers for the faceprobe pages. The DOM is built with textContent only, never
// innerHTML: file names, paths and labels come from users and stores.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const FACE_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
                      "#f032e6", "#9a6324"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function fetchJSON(url, options) {
  let res;
  try {
    res = await fetch(url, options);
  } catch (e) {
    throw new Error("the server could not be reached (" + e.message + ")");
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.error) || ("HTTP " + res.status));
    err.status = res.status;
    err.body = body;
    throw err;
  }
  return body;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function pct(p) { return p === null || p === undefined ? "–" : (100 * p).toFixed(1) + "%"; }

// One line per task: "male 93.1%", "31.2 years", "20-29 72.0% (≈ 27.5 years)".
function predictionText(pred) {
  if (pred.years !== undefined) return pred.years === null ? "–" : pred.years.toFixed(1) + " years";
  let text = pred.label + " " + pct(pred.p);
  if (pred.expected_age !== undefined && pred.expected_age !== null) {
    text += " (≈ " + pred.expected_age.toFixed(1) + " years)";
  }
  return text;
}

// An SVG laid over an image, in image pixel coordinates: a box per face, its 5 landmarks and
// a number. faces: [{box, landmarks, colour?, className?}], dataset points drawn hollow.
function overlay(width, height, faces) {
  const svg = svgEl("svg", {viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
                            class: "overlay", "aria-hidden": "true"});
  const r = Math.max(1.5, Math.max(width, height) / 110);
  faces.forEach((f, i) => {
    const colour = f.colour || FACE_COLOURS[i % FACE_COLOURS.length];
    const g = svgEl("g", {class: "face-overlay", "data-face": String(i)});
    if (f.box) {
      const [x1, y1, x2, y2] = f.box;
      g.append(svgEl("rect", {class: "face-box", x: x1, y: y1, width: x2 - x1, height: y2 - y1,
                              stroke: colour}));
      if (f.label !== undefined) {
        const t = svgEl("text", {class: "face-number", x: x1 + r, y: y1 + 4 * r, fill: colour,
                                 "font-size": 4 * r});
        t.textContent = f.label;
        g.append(t);
      }
    }
    for (const [x, y] of (f.landmarks || [])) {
      g.append(svgEl("circle", {class: "landmark", cx: x, cy: y, r: r, fill: colour}));
    }
    for (const [x, y] of (f.datasetLandmarks || [])) {
      g.append(svgEl("circle", {class: "landmark-dataset", cx: x, cy: y, r: r * 1.3,
                                stroke: "#ffd700"}));
    }
    svg.append(g);
  });
  return svg;
}

async function loadModelInfo() {
  const info = await fetchJSON("/api/info");
  const b = info.bundle;
  document.getElementById("model-info").textContent =
    `bundle ${b.name}: ${b.head} head on ${b.backbone}, tasks ${b.tasks.join(", ")}`;
  return info;
}
