// The demo page: draw a digit, see LeNet-5's prediction; evaluate the test set in the browser.
// Everything runs on this machine with flat.js; nothing but the files next to this page is fetched.

import { argmax, paramCount, parseFlat, Runtime } from "./flat.js";
import { toMnist } from "./mnistify.js";
import { WasmRuntime } from "./wasm.js";

const $ = (id) => document.getElementById(id);
const state = { model: null, runtime: null, manifest: null, classes: [], busy: false };
// read by the browser tests (and handy in the devtools console)
window.lenetlab = { state, lastEval: null, parseFlat, Runtime, WasmRuntime };

function setState(s) {
  document.body.dataset.state = s;
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = false;
  if (!state.model) $("model-info").textContent = "the model could not be loaded";
  setState("error");
  for (const id of ["clear", "run-test"]) $(id).disabled = true;
}

window.addEventListener("error", (e) => showError(`error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => showError(`error: ${e.reason?.message ?? e.reason}`));

async function fetchBytes(url) {
  const resp = await fetch(url, { cache: "no-store" });
  if (!resp.ok) throw new Error(`cannot fetch ${url}: HTTP ${resp.status}`);
  let bytes = new Uint8Array(await resp.arrayBuffer());
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    // a gzip file (a server that added Content-Encoding: gzip hands us the bytes already inflated)
    if (typeof DecompressionStream === "undefined") throw new Error("this browser has no DecompressionStream");
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  }
  return bytes;
}

// ------------------------------------------------------------------ model
const fmt = (n) => n.toLocaleString("en-US");

function showModelInfo(model, manifest) {
  const [c, h, w] = model.inputShape;
  $("model-info").textContent = `${manifest.arch ?? "model"} · ${model.dtype} · ${fmt(model.fileBytes)} bytes · `
    + `${model.layers.length} layers · ${fmt(paramCount(model))} stored weights · input ${model.imgH}x${model.imgW}`
    + (model.pad ? ` padded to ${h}x${w}` : "") + (c !== 1 ? ` x ${c}` : "");
  const info = $("model-info");
  info.dataset.dtype = model.dtype;
  info.dataset.bytes = String(model.fileBytes);
  info.dataset.layers = String(model.layers.length);
  const body = $("layers").querySelector("tbody");
  body.replaceChildren();
  model.layers.forEach((l, i) => {
    const tr = document.createElement("tr");
    const params = (l.w ? l.w.length : 0) + (l.b ? l.b.length : 0);
    const op = l.op === "act" ? `act ${l.act}` : l.op === "conv" ? `conv ${l.k}x${l.k}${l.pad ? ` pad ${l.pad}` : ""}`
      + (l.t ? " (table)" : "") : l.op;
    const cells = [i, op, l.inShape.join("x"), l.outShape.join("x"), params ? fmt(params) : "",
      model.dtype === "int8" ? `${l.outBits}-bit, scale ${l.outScale.toPrecision(4)}` : "float32"];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  });
}

async function loadModel() {
  setState("loading");
  const resp = await fetch("manifest.json", { cache: "no-store" });
  if (!resp.ok) throw new Error(`cannot fetch manifest.json: HTTP ${resp.status}`);
  const manifest = await resp.json();
  state.manifest = manifest;
  const bytes = await fetchBytes(manifest.model);
  let model;
  try {
    model = parseFlat(bytes);
  } catch (e) {
    throw new Error(`${manifest.model}: ${e.message}`);
  }
  state.model = model;
  state.runtime = new Runtime(model);
  // the C runtime as WebAssembly where the browser runs it (?runtime=js: the JavaScript one)
  const want = new URLSearchParams(location.search).get("runtime");
  if (manifest.wasm && want !== "js") {
    try {
      state.runtime = await WasmRuntime.create(manifest.wasm, bytes, model);
    } catch (e) {
      state.wasmError = e.message;
      if (want === "wasm") throw e;
    }
  }
  document.body.dataset.runtime = state.runtime.name ?? "js";
  state.classes = Array.from({ length: model.numClasses }, (_, i) => manifest.classes?.[i] ?? String(i));
  showModelInfo(model, manifest);
  $("model-info").textContent += state.runtime.name === "wasm" ? " · runtime: C as WebAssembly (?runtime=js: JavaScript)"
    : ` · runtime: JavaScript${state.wasmError ? ` (WebAssembly unavailable: ${state.wasmError})` : ""}`;
  buildBars();
  $("run-test").disabled = !manifest.test_images;
  if (manifest.test_images) {
    const title = manifest.dataset_title ?? manifest.dataset;
    $("run-test").textContent = `Evaluate the ${title} test set`;
    $("data-note").textContent = `Test images: the ${title} test set (see data/README.md for its license).`;
  } else {
    $("test-status").textContent = `no test set is bundled with this page${manifest.test_note ? `: ${manifest.test_note}` : ""}`;
  }
  $("clear").disabled = false;
  setState("ready");
}

// ------------------------------------------------------------------ prediction bars
function buildBars() {
  const probs = $("probs");
  probs.replaceChildren();
  state.classes.forEach((name, i) => {
    const row = document.createElement("div");
    row.className = "bar-row";
    row.id = `prob-${i}`;
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "bar-track";
    const bar = document.createElement("span");
    bar.className = "bar";
    track.appendChild(bar);
    const value = document.createElement("span");
    value.className = "bar-value";
    row.append(label, track, value);
    probs.appendChild(row);
  });
  showPrediction(null);
}

function showPrediction(probs) {
  const pred = $("prediction");
  const rows = $("probs").children;
  if (probs === null) {
    pred.textContent = "–";
    pred.dataset.class = "";
    delete pred.dataset.confidence;
    $("confidence").textContent = "draw a digit";
    for (const row of rows) {
      row.classList.remove("top");
      row.querySelector(".bar").style.width = "0%";
      row.querySelector(".bar-value").textContent = "";
    }
    return;
  }
  const best = argmax(probs);
  pred.textContent = state.classes[best];
  pred.dataset.class = String(best);
  pred.dataset.confidence = probs[best].toFixed(6);
  $("confidence").textContent = `${(100 * probs[best]).toFixed(1)}% sure`;
  for (let i = 0; i < rows.length; i++) {
    rows[i].classList.toggle("top", i === best);
    rows[i].querySelector(".bar").style.width = `${(100 * probs[i]).toFixed(2)}%`;
    rows[i].querySelector(".bar-value").textContent = `${(100 * probs[i]).toFixed(1)}%`;
    rows[i].dataset.p = probs[i].toFixed(6);
  }
}

// ------------------------------------------------------------------ drawing pad
const pad = $("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
let drawing = false;
let last = null;
let inked = false;
let pending = false;

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
  const pv = $("preview").getContext("2d");
  pv.fillStyle = "#000";
  pv.fillRect(0, 0, 28, 28);
  if (state.model) showPrediction(null);
}

function padPoint(e) {
  const r = pad.getBoundingClientRect();
  return [((e.clientX - r.left) * pad.width) / r.width, ((e.clientY - r.top) * pad.height) / r.height];
}

function stroke(from, to) {
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = pad.width / 12;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
  inked = true;
}

function schedulePredict() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    predictDrawing();
  });
}

function predictDrawing() {
  if (!state.runtime || !inked) return;
  const { width: w, height: h } = pad;
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const gray = new Float64Array(w * h);
  for (let i = 0; i < gray.length; i++) gray[i] = rgba[4 * i] / 255;
  const digit = toMnist(gray, h, w);
  const pv = $("preview").getContext("2d");
  const img = pv.createImageData(28, 28);
  if (digit !== null) {
    for (let i = 0; i < 784; i++) {
      img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = digit[i];
      img.data[4 * i + 3] = 255;
    }
  }
  pv.putImageData(img, 0, 0);
  if (digit === null) {
    showPrediction(null);
    return;
  }
  const m = state.model;
  if (m.imgH !== 28 || m.imgW !== 28) {
    $("confidence").textContent = `this model takes ${m.imgH}x${m.imgW} images, drawing needs 28x28`;
    return;
  }
  const logits = state.runtime.run(digit);
  window.lenetlab.lastDigit = { pixels: Array.from(digit), logits: Array.from(logits), predicted: argmax(logits) };
  showPrediction(state.runtime.probabilities());
}

pad.addEventListener("pointerdown", (e) => {
  if (!state.runtime || (e.pointerType === "mouse" && e.button !== 0)) return;
  e.preventDefault();
  pad.setPointerCapture?.(e.pointerId);
  drawing = true;
  last = padPoint(e);
  stroke(last, last);
  schedulePredict();
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  e.preventDefault();
  const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
  for (const ev of events.length ? events : [e]) {
    const p = padPoint(ev);
    stroke(last, p);
    last = p;
  }
  schedulePredict();
});
for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
  pad.addEventListener(type, () => {
    if (!drawing) return;
    drawing = false;
    predictDrawing();
  });
}
$("clear").addEventListener("click", clearPad);

// ------------------------------------------------------------------ test set
function parseIdx(bytes, what, ndim) {
  if (bytes.length < 4 + 4 * ndim) throw new Error(`${what}: ${bytes.length} bytes is too short for an IDX file`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  if (dv.getUint16(0) !== 0 || bytes[2] !== 0x08) throw new Error(`${what}: not an IDX file of unsigned bytes`);
  if (bytes[3] !== ndim) throw new Error(`${what}: ${bytes[3]} dimensions, expected ${ndim}`);
  const dims = [];
  let count = 1;
  for (let i = 0; i < ndim; i++) {
    dims.push(dv.getUint32(4 + 4 * i));
    count *= dims[i];
  }
  const header = 4 + 4 * ndim;
  if (header + count !== bytes.length) {
    throw new Error(`${what}: dimensions ${dims.join("x")} need ${header + count} bytes, the file has ${bytes.length}`);
  }
  return { dims, data: bytes.subarray(header) };
}

async function loadTestSet() {
  const [ib, lb] = await Promise.all([fetchBytes(state.manifest.test_images), fetchBytes(state.manifest.test_labels)]);
  const images = parseIdx(ib, "test images", 3);
  const labels = parseIdx(lb, "test labels", 1);
  const [n, h, w] = images.dims;
  const m = state.model;
  if (labels.dims[0] !== n) throw new Error(`test set: ${n} images but ${labels.dims[0]} labels`);
  if (h !== m.imgH || w !== m.imgW) throw new Error(`test images are ${h}x${w}, the model takes ${m.imgH}x${m.imgW}`);
  for (const v of labels.data) if (v >= m.numClasses) throw new Error(`test labels: label ${v} >= ${m.numClasses} classes`);
  return { n, images: images.data, labels: labels.data };
}

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));
const BATCH = 64; // images per predictBatch call (a few ms), between checks of the time slice

function showMistakes(test, preds) {
  const box = $("mistakes");
  box.replaceChildren();
  $("mistakes-title").hidden = false;
  const size = state.model.imgH * state.model.imgW;
  for (let i = 0, shown = 0; i < test.n && shown < 24; i++) {
    if (preds[i] === test.labels[i]) continue;
    shown++;
    const fig = document.createElement("figure");
    const c = document.createElement("canvas");
    c.width = state.model.imgW;
    c.height = state.model.imgH;
    const g = c.getContext("2d");
    const img = g.createImageData(c.width, c.height);
    for (let p = 0; p < size; p++) {
      const v = test.images[i * size + p];
      img.data[4 * p] = img.data[4 * p + 1] = img.data[4 * p + 2] = v;
      img.data[4 * p + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    const cap = document.createElement("figcaption");
    cap.textContent = `#${i}: ${state.classes[test.labels[i]]}→${state.classes[preds[i]]}`;
    fig.append(c, cap);
    box.appendChild(fig);
  }
}

async function runTest() {
  if (state.busy) return;
  state.busy = true;
  const button = $("run-test");
  const status = $("test-status");
  const progress = $("test-progress");
  const acc = $("test-accuracy");
  button.disabled = true;
  delete acc.dataset.accuracy;
  acc.textContent = "";
  $("test-speed").textContent = "";
  status.classList.remove("bad");
  document.body.dataset.test = "running";
  try {
    status.textContent = "loading the test set…";
    const t0 = performance.now();
    const test = await loadTestSet();
    const loadMs = performance.now() - t0;
    const rt = state.runtime;
    const size = state.model.imgH * state.model.imgW;
    const preds = new Uint8Array(test.n);
    progress.max = test.n;
    progress.value = 0;
    let correct = 0;
    let busyMs = 0;
    const start = performance.now();
    for (let i = 0; i < test.n;) {
      const sliceStart = performance.now();
      const deadline = sliceStart + 40; // ~40 ms of work, then give the page a turn
      do {
        // a batch per call: the runtime's buffers are reused, nothing is allocated per image
        const count = Math.min(BATCH, test.n - i);
        correct += rt.predictBatch(test.images, i * size, count, preds, i, test.labels);
        i += count;
      } while (i < test.n && performance.now() < deadline);
      busyMs += performance.now() - sliceStart;
      progress.value = i;
      status.textContent = `${fmt(i)} / ${fmt(test.n)} images, ${fmt(correct)} correct`;
      await nextTask();
    }
    const wallMs = performance.now() - start;
    const accuracy = correct / test.n;
    const ips = test.n / (wallMs / 1000);
    acc.dataset.accuracy = String(accuracy);
    acc.dataset.correct = String(correct);
    acc.dataset.total = String(test.n);
    acc.textContent = `${(100 * accuracy).toFixed(2)}% (${fmt(correct)} / ${fmt(test.n)})`;
    const speed = $("test-speed");
    speed.dataset.ips = ips.toFixed(1);
    speed.textContent = `${fmt(Math.round(ips))} images/s (${(wallMs / 1000).toFixed(2)} s; `
      + `${fmt(Math.round(test.n / (busyMs / 1000)))} images/s of compute; test set loaded in ${loadMs.toFixed(0)} ms)`;
    status.textContent = `done: ${fmt(test.n)} images`;
    window.lenetlab.lastEval = { correct, total: test.n, predictions: preds, imagesPerSecond: ips };
    showMistakes(test, preds);
    document.body.dataset.test = "done";
  } catch (e) {
    status.textContent = `test set: ${e.message}`;
    status.classList.add("bad");
    document.body.dataset.test = "error";
  } finally {
    state.busy = false;
    button.disabled = false;
  }
}

$("run-test").addEventListener("click", runTest);

clearPad();
loadModel().catch((e) => showError(e.message));
