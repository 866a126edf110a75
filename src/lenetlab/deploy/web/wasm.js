// The C runtime (lenet5.c, built for WebAssembly with SIMD by `python -m lenetlab.deploy.wasm`) behind the
// interface of flat.js's Runtime: run(pixels, offset) -> logits, predictBatch(...), probabilities(). The page
// uses it when the browser can instantiate it (?runtime=js forces the JavaScript runtime). The module has no
// imports; the flat file is validated again by the C loader, which copies it into its own static buffer.

import { Runtime } from "./flat.js";

const MSG_BYTES = 192;
const BATCH = 256;

export class WasmRuntime {
  static async create(url, bytes, model) {
    if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly");
    const resp = await fetch(url);
    if (!resp.ok) throw new Error(`cannot fetch ${url}: HTTP ${resp.status}`);
    const { instance } = await WebAssembly.instantiate(await resp.arrayBuffer(), {});
    return new WasmRuntime(instance.exports, bytes, model);
  }

  constructor(ex, bytes, model) {
    this.ex = ex;
    this.model = model;
    this.name = "wasm";
    if (typeof ex._initialize === "function") ex._initialize();
    this.integer = model.dtype === "int8";
    this.size = model.imgH * model.imgW;
    this.classes = model.numClasses;
    this.lastScale = this.integer ? model.layers[model.layers.length - 1].outScale : 1;
    const msg = ex.malloc(MSG_BYTES);
    const file = ex.malloc(bytes.length);
    if (!msg || !file) throw new Error("WebAssembly runtime: out of memory");
    new Uint8Array(ex.memory.buffer, file, bytes.length).set(bytes);
    const rc = ex.lenet5_load(file, bytes.length, msg, MSG_BYTES);
    ex.free(file);
    if (rc !== 0) {
      const m = new Uint8Array(ex.memory.buffer, msg, MSG_BYTES);
      const end = m.indexOf(0);
      ex.free(msg);
      throw new Error(`WebAssembly runtime: ${new TextDecoder().decode(m.subarray(0, end < 0 ? MSG_BYTES : end))}`);
    }
    ex.free(msg);
    this.images = ex.malloc(BATCH * this.size);
    this.logits = ex.malloc(BATCH * this.classes * 4);
    if (!this.images || !this.logits) throw new Error("WebAssembly runtime: out of memory");
    this.output = this.integer ? new Int32Array(this.classes) : new Float32Array(this.classes);
  }

  // run `count` (<= BATCH) images starting at pixels[offset]; a view of their logits in the module's memory
  _batch(pixels, offset, count) {
    const ex = this.ex;
    new Uint8Array(ex.memory.buffer, this.images, count * this.size).set(
      pixels.subarray(offset, offset + count * this.size));
    const rc = this.integer ? ex.lenet5_run_int8(this.images, count, this.logits)
      : ex.lenet5_run_float(this.images, count, this.logits);
    if (rc !== 0) throw new Error(`WebAssembly runtime: run failed (status ${rc})`);
    const View = this.integer ? Int32Array : Float32Array;
    return new View(ex.memory.buffer, this.logits, count * this.classes);
  }

  run(pixels, offset = 0) {
    const px = pixels instanceof Uint8Array ? pixels : Uint8Array.from(pixels);
    this.output.set(this._batch(px, offset, 1));
    return this.output;
  }

  predictBatch(pixels, offset, count, preds, at = 0, labels = null) {
    const n = this.classes;
    let correct = 0;
    for (let done = 0; done < count;) {
      const k = Math.min(BATCH, count - done);
      const out = this._batch(pixels, offset + done * this.size, k);
      for (let i = 0; i < k; i++) {
        let best = 0;
        for (let j = 1; j < n; j++) if (out[i * n + j] > out[i * n + best]) best = j;
        preds[at + done + i] = best;
        if (labels !== null && labels[at + done + i] === best) correct++;
      }
      done += k;
    }
    return correct;
  }

  probabilities(logits = this.output) {
    return Runtime.prototype.probabilities.call(this, logits);
  }
}
