// lenetlab flat model format, version 1: validating reader + runtime (docs/flat-format.md).
//
// Dependency-free ES module. parseFlat(arrayBuffer) checks every field the spec's
// "Validation" section lists (the same checks as lenetlab/deploy/flat.py decode)
// and copies each weight array out of the blob; new Runtime(model) preallocates
// every activation buffer once and runs uint8 images through the layers with
// index arithmetic on flat arrays: element (c, y, x) of a C x H x W map is at
// c*H*W + y*W + x.
//
// float32 files: sums are accumulated in double precision and rounded to
// float32 where the NumPy reference rounds (Math.fround), so logits agree to
// ~1e-6 and top-1 agrees with lenetlab.deploy.runtime.
// int8 files: integer-exact. Every product and sum is an integer below 2^53
// (exact in a JS number); requantisation needs |acc| * M up to 2^63, done by an
// exact 16-bit split (requantize below).

export const VERSION = 1;
export const OPS = { 1: "conv", 2: "maxpool", 3: "avgpool", 4: "subsample", 5: "act", 6: "dense", 7: "rbf" };
export const ACTS = ["identity", "relu", "tanh", "sigmoid", "selu", "scaled_tanh", "abs"];
export const DTYPES = { 0: "float32", 1: "int8" };
const MAGIC = "LENET5FL";
const HEADER_BYTES = 64;
const RECORD_BYTES = 64;
const NO_OFFSET = 0xffffffff;
const MAX_LAYERS = 64;
const MAX_MAP = 1 << 20;
const MAX_DIM = 1024;
export const MAX_FILE = 64 * 1024 * 1024;
const ARRAYS = ["w", "b", "t", "m", "s"];
const I32_MIN = -2147483648;
const I32_MAX = 2147483647;
const SELU_ALPHA = 1.6732632423543772;
const SELU_SCALE = 1.0507009873554805;

export class FlatFormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "FlatFormatError";
  }
}

function need(ok, what) {
  if (!ok) throw new FlatFormatError(`invalid flat model: ${what}`);
}

// ------------------------------------------------------------------ CRC-32 (IEEE, as zlib)
let CRC_TABLE = null;

function crcTable() {
  if (CRC_TABLE === null) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  return CRC_TABLE;
}

/** Continue CRC-32 `crc` (0 to start) over bytes[start, end). */
export function crc32(bytes, start = 0, end = bytes.length, crc = 0) {
  const table = crcTable();
  let c = ~crc >>> 0;
  for (let i = start; i < end; i++) c = table[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// ------------------------------------------------------------------ reading
function elemType(dtype, op, name) {
  if (name === "t") return op === "act" ? "i8" : "u8";
  if (name === "m" || name === "s") return "i32";
  if (dtype === "float32") return "f32";
  return name === "w" ? "i8" : "i32";
}

const ITEM = { i8: 1, u8: 1, i32: 4, f32: 4 };

function outShape(op, [c, h, w], outC, k, pad) {
  if (op === "conv") return [outC, h + 2 * pad - k + 1, w + 2 * pad - k + 1];
  if (op === "maxpool" || op === "avgpool" || op === "subsample") return [c, Math.floor(h / 2), Math.floor(w / 2)];
  if (op === "act") return [c, h, w];
  return [outC, 1, 1]; // dense, rbf
}

function expectedCounts(dtype, op, inShape, outC, k, hasTable) {
  const [ic, ih, iw] = inShape;
  const nIn = ic * ih * iw;
  const q = dtype === "int8";
  const n = { w: 0, b: 0, t: 0, m: 0, s: 0 };
  if (op === "conv") Object.assign(n, { w: outC * ic * k * k, b: outC, t: hasTable ? outC * ic : 0 });
  else if (op === "subsample") Object.assign(n, { w: ic, b: ic });
  else if (op === "dense") Object.assign(n, { w: outC * nIn, b: outC });
  else if (op === "rbf") n.w = outC * nIn;
  else if (op === "act" && q) n.t = 256;
  if (q && (op === "conv" || op === "subsample" || op === "dense")) Object.assign(n, { m: outC, s: outC });
  return n;
}

const sameShape = (a, b) => a[0] === b[0] && a[1] === b[1] && a[2] === b[2];
const fmtShape = (s) => `(${s.join(", ")})`;

/**
 * Parse and fully validate a flat file (ArrayBuffer or Uint8Array).
 * Returns a plain model object; throws FlatFormatError naming the failed field.
 */
export function parseFlat(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  const n = bytes.length;
  need(n >= HEADER_BYTES, `file is ${n} bytes, shorter than the ${HEADER_BYTES}-byte header`);
  need(n <= MAX_FILE, "file larger than 64 MiB");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, n);
  const u8 = (o) => dv.getUint8(o);
  const u16 = (o) => dv.getUint16(o, true);
  const u32 = (o) => dv.getUint32(o, true);
  const f32 = (o) => dv.getFloat32(o, true);

  const magic = String.fromCharCode(...bytes.subarray(0, 8));
  need(magic === MAGIC, `bad magic ${JSON.stringify(magic)} (expected "${MAGIC}")`);
  const version = u16(8);
  need(version === VERSION, `unsupported version ${version} (this reader knows ${VERSION})`);
  const endian = u8(10);
  need(endian === 1, `endian flag ${endian} (only 1 = little-endian is defined)`);
  const dtypeCode = u8(11);
  need(dtypeCode in DTYPES, `unknown dtype code ${dtypeCode}`);
  need(u32(12) === HEADER_BYTES && u32(20) === RECORD_BYTES, "header/record size fields");
  const nLayers = u32(16);
  const blobOffset = u32(24);
  const blobBytes = u32(28);
  const fileBytes = u32(56);
  need(fileBytes === n, `file_bytes says ${fileBytes} but the file has ${n} bytes`);
  need(nLayers >= 1 && nLayers <= MAX_LAYERS, `n_layers ${nLayers} not in 1..${MAX_LAYERS}`);
  const align16 = (x) => Math.ceil(x / 16) * 16;
  need(blobOffset === align16(HEADER_BYTES + RECORD_BYTES * nLayers), `blob_offset ${blobOffset}`);
  need(blobOffset + blobBytes === n, "blob_offset + blob_bytes differs from the file length");
  const storedCrc = u32(60);
  need(crc32(bytes, HEADER_BYTES, n, crc32(bytes, 0, 60)) === storedCrc, "CRC mismatch (the file is damaged)");
  const imgH = u16(32);
  const imgW = u16(34);
  const pad = u16(36);
  const numClasses = u16(38);
  const inScale = f32(40);
  const inShift = f32(44);
  const lutOff = u32(48);
  const inQscale = f32(52);
  need(imgH >= 1 && imgH <= MAX_DIM && imgW >= 1 && imgW <= MAX_DIM, `image size ${imgH}x${imgW}`);
  need(pad <= 64, `pad ${pad} > 64`);
  need(numClasses >= 1 && numClasses <= MAX_DIM, `num_classes ${numClasses}`);
  need(Number.isFinite(inScale) && Number.isFinite(inShift), "input scale/shift not finite");
  const dtype = DTYPES[dtypeCode];

  // A copy of `count` elements of `type` at blob offset `off` (bounds, alignment, absence checked).
  const array = (off, count, type, what) => {
    const size = ITEM[type];
    if (count === 0) {
      need(off === 0, `${what}: offset ${off} with count 0`);
      return null;
    }
    need(off % size === 0, `${what}: offset ${off} not aligned to ${size}`);
    need(off <= blobBytes && count <= Math.floor((blobBytes - off) / size),
      `${what}: ${count} x ${size} bytes at ${off} run past the blob (${blobBytes} bytes)`);
    const base = blobOffset + off;
    let out;
    if (type === "u8") out = bytes.slice(base, base + count);
    else if (type === "i8") out = new Int8Array(bytes.slice(base, base + count).buffer);
    else if (type === "i32") {
      out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getInt32(base + 4 * i, true);
    } else {
      out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getFloat32(base + 4 * i, true);
    }
    return out;
  };

  let inLut = null;
  if (dtype === "int8") {
    inLut = array(lutOff, 256, "i8", "input LUT");
    need(Number.isFinite(inQscale) && inQscale > 0, "in_qscale must be positive");
  } else {
    need(lutOff === NO_OFFSET, "float file with an input LUT offset");
  }
  const model = {
    dtype, version, imgH, imgW, pad, numClasses, inScale, inShift, inLut, inQscale, fileBytes: n,
    inputShape: [1, imgH + 2 * pad, imgW + 2 * pad], layers: [],
  };
  let shape = model.inputShape;
  for (let i = 0; i < nLayers; i++) {
    const r = HEADER_BYTES + i * RECORD_BYTES;
    const opCode = u8(r);
    const sub = u8(r + 1);
    const outBits = u8(r + 2);
    const flags = u8(r + 3);
    const ins = [u16(r + 4), u16(r + 6), u16(r + 8)];
    const outs = [u16(r + 10), u16(r + 12), u16(r + 14)];
    const k = u16(r + 16);
    const lpad = u16(r + 18);
    const offs = [];
    for (let j = 0; j < 10; j++) offs.push(u32(r + 20 + 4 * j));
    const outScale = f32(r + 60);
    let where = `layer ${i}`;
    need(opCode in OPS, `${where}: unknown op code ${opCode}`);
    const op = OPS[opCode];
    where = `layer ${i} (${op})`;
    need(op === "act" ? sub < ACTS.length : sub === 0, `${where}: activation code ${sub}`);
    const last = i === nLayers - 1;
    let allowed = dtype === "float32" ? [32] : last ? [8, 32] : [8];
    if (op === "rbf") allowed = [32];
    need(allowed.includes(outBits), `${where}: out_bits ${outBits}`);
    // Stricter than flat.py: in an int8 file only the last layer may give 32-bit values (every later
    // layer indexes LUTs / forms 32-bit sums assuming int8 inputs).
    need(dtype === "float32" || outBits === 8 || last, `${where}: 32-bit output in an int8 file must be the last layer`);
    need((flags === 0 || flags === 1) && (flags === 0 || op === "conv"), `${where}: flags ${flags}`);
    need(sameShape(ins, shape), `${where}: input shape ${fmtShape(ins)} but the previous output is ${fmtShape(shape)}`);
    need(outs.every((d) => d >= 1 && d <= MAX_DIM), `${where}: output shape ${fmtShape(outs)}`);
    if (op === "conv") need(k >= 1 && k <= 16 && lpad < k, `${where}: kernel ${k} pad ${lpad}`);
    else need(k === (op === "maxpool" || op === "avgpool" || op === "subsample" ? 2 : 0) && lpad === 0, `${where}: k/pad`);
    const want = outShape(op, ins, outs[0], k, lpad);
    need(sameShape(outs, want), `${where}: output shape ${fmtShape(outs)}, the op gives ${fmtShape(want)}`);
    need(outs[0] * outs[1] * outs[2] <= MAX_MAP, `${where}: output map too large`);
    need(Number.isFinite(outScale) && (dtype === "float32" || outScale > 0), `${where}: out_scale`);
    const layer = {
      op, act: op === "act" ? ACTS[sub] : "identity", outBits, k, pad: lpad, outScale,
      inShape: ins, outShape: outs, w: null, b: null, t: null, m: null, s: null,
    };
    const counts = expectedCounts(dtype, op, ins, outs[0], k, flags === 1);
    ARRAYS.forEach((name, j) => {
      const off = offs[2 * j];
      const count = offs[2 * j + 1];
      need(count === counts[name], `${where}: array ${name} has ${count} values, expected ${counts[name]}`);
      layer[name] = array(off, count, elemType(dtype, op, name), `${where} array ${name}`);
    });
    if (op === "conv" && flags) need(layer.t.every((v) => v <= 1), `${where}: connection table values must be 0/1`);
    if (dtype === "int8" && (op === "conv" || op === "dense")) {
      const fanIn = op === "conv" ? ins[0] * k * k : ins[0] * ins[1] * ins[2];
      need(fanIn <= 65536, `${where}: fan-in ${fanIn} > 65536 (int8 sums must fit in 32 bits)`);
    }
    if (dtype === "int8" && counts.s) {
      need(layer.s.every((v) => v >= 1 && v <= 62), `${where}: shift not in 1..62`);
      need(layer.m.every((v) => v >= 0), `${where}: negative multiplier`);
    }
    if (dtype === "float32") {
      for (const name of ["w", "b"]) {
        if (layer[name]) need(layer[name].every(Number.isFinite), `${where}: non-finite ${name}`);
      }
    }
    model.layers.push(layer);
    shape = outs;
  }
  const nOut = shape[0] * shape[1] * shape[2];
  need(nOut === numClasses, `the last layer gives ${nOut} values, num_classes is ${numClasses}`);
  return model;
}

/** Number of stored parameters (weights + biases + tables) of a parsed model. */
export function paramCount(model) {
  let total = 0;
  for (const l of model.layers) for (const name of ["w", "b"]) if (l[name]) total += l[name].length;
  return total;
}

// ------------------------------------------------------------------ integer helpers
const TWO16 = 65536;
const TWO53 = 9007199254740992;
const POW2 = Array.from({ length: 64 }, (_, i) => 2 ** i);

/**
 * int8 requantisation, exactly as the spec: r = (|acc| * M + 2^(n-1)) >> n in 64 bits,
 * result sign(acc) * r clamped to [lo, hi]. acc is an integer (|acc| < 2^53), 0 <= M < 2^31,
 * 1 <= n <= 62. The 64-bit product is split as |acc| * M = (|acc| * M_hi) * 2^16 + |acc| * M_lo,
 * every part an integer below 2^53, so no rounding happens anywhere.
 */
export function requantize(acc, M, n, lo, hi) {
  if (acc === 0) return 0;
  const a = acc < 0 ? -acc : acc;
  let r;
  const p = a * M;
  if (p < TWO53) {
    // the product is exact; floor((p + 2^(n-1)) / 2^n) = floor(p / 2^n) + (remainder >= 2^(n-1))
    const q = Math.floor(p / POW2[n]);
    r = q + (p - q * POW2[n] >= POW2[n - 1] ? 1 : 0);
  } else if (a < 68719476736) {
    // |acc| < 2^36: the split parts stay below 2^53
    const mHi = Math.floor(M / TWO16);
    const mLo = M - mHi * TWO16;
    const lo16 = a * mLo; // < 2^52
    const loHi = Math.floor(lo16 / TWO16);
    let H = a * mHi + loHi; // product = H * 2^16 + L
    let L = lo16 - loHi * TWO16;
    if (n - 1 >= 16) H += POW2[n - 17];
    else {
      L += POW2[n - 1];
      if (L >= TWO16) {
        H += 1;
        L -= TWO16;
      }
    }
    r = n >= 16 ? Math.floor(H / POW2[n - 16]) : H * POW2[16 - n] + Math.floor(L / POW2[n]);
  } else {
    r = Number((BigInt(a) * BigInt(M) + (1n << BigInt(n - 1))) >> BigInt(n));
  }
  const v = acc < 0 ? -r : r;
  return v < lo ? lo : v > hi ? hi : v;
}

/** Reference requantisation with BigInt (tests compare requantize against it). */
export function requantizeBig(acc, M, n, lo, hi) {
  const a = BigInt(acc < 0 ? -acc : acc);
  const r = (a * BigInt(M) + (1n << BigInt(n - 1))) >> BigInt(n);
  const v = acc < 0 ? -r : r;
  return Number(v < BigInt(lo) ? BigInt(lo) : v > BigInt(hi) ? BigInt(hi) : v);
}

// ------------------------------------------------------------------ runtime
//
// new Runtime(model) compiles the layers once into "steps": every buffer (activations, padded inputs,
// accumulators) is allocated there, an elementwise ACT that follows a CONV / pool / DENSE layer is fused
// into that layer's output loop, and each step keeps its shapes and arrays as plain fields. run() and
// predictBatch() then allocate nothing and create no closures: per image, a fixed sequence of
// monomorphic kernels over typed arrays.
//
// CONV is a direct convolution without im2col: for each (output channel, input channel, kernel row) the
// k weights sit in locals and one pass over every output row slides along the contiguous input row (5x5
// kernels: the 5 input values in a rotating set of locals, one new load per output). int8 files sum in
// int32 (Int32Array accumulators, `| 0`), exact because the spec bounds every sum of products to 32 bits;
// bias and requantisation then run in exact double arithmetic (requantize's fast path inlined).

const fr = Math.fround;
const F_TWO_THIRDS = fr(2 / 3);
const F_1_7159 = fr(1.7159);
const F_QUARTER = fr(0.25);
const S_CONV = 1;
const S_POOL = 2;
const S_ACT = 3;
const S_DENSE = 4;
const S_RBF = 5;
// elementwise post-ops (a fused ACT): float activation codes 0..6 as ACTS, or LUT for int8 files
const A_IDENTITY = 0;
const A_RELU = 1;
const A_LUT = 7;
const POOLS = { maxpool: 0, avgpool: 1, subsample: 2 };

/** float32 activation `code` (index into ACTS) of a float32 value, rounded to float32 as NumPy stores it. */
function floatAct(code, x) {
  switch (code) {
    case 0: return x;
    case 1: return x > 0 ? x : 0;
    case 2: return fr(Math.tanh(x));
    case 3: return fr(1 / (1 + Math.exp(-x)));
    case 4: return fr(SELU_SCALE * (x > 0 ? x : SELU_ALPHA * Math.expm1(x)));
    case 5: return fr(F_1_7159 * fr(Math.tanh(fr(F_TWO_THIRDS * x))));
    case 6: return x < 0 ? -x : x;
    default: throw new FlatFormatError(`unknown activation code ${code}`);
  }
}

/**
 * Executes a parsed model. Every buffer is allocated here, once; run() and predictBatch() allocate nothing.
 * Activations are Float32Array (float32 files) or Int32Array (int8 files).
 */
export class Runtime {
  constructor(model) {
    this.model = model;
    const integer = model.dtype === "int8";
    this.integer = integer;
    const Buf = integer ? Int32Array : Float32Array;
    const [, ph, pw] = model.inputShape;
    this.input = new Buf(ph * pw);
    // pixel -> input value: float x = fround(fround(p * a) + b); int8 q = lut[p]
    this.pixelLut = new Buf(256);
    for (let p = 0; p < 256; p++) {
      this.pixelLut[p] = integer ? model.inLut[p] : fr(fr(p * fr(model.inScale)) + fr(model.inShift));
    }
    this.input.fill(integer ? model.inLut[0] : fr(model.inShift)); // the padding border, written once
    this.steps = [];
    let src = this.input;
    const layers = model.layers;
    for (let i = 0; i < layers.length; i++) {
      const l = layers[i];
      const next = layers[i + 1];
      let post = A_IDENTITY;
      let table = null;
      let shape = l.outShape;
      if (l.op !== "act" && l.op !== "rbf" && next !== undefined && next.op === "act") {
        post = integer ? A_LUT : ACTS.indexOf(next.act);
        table = integer ? next.t : null;
        shape = next.outShape;
        i++; // the ACT layer runs inside this step
      }
      // int8 CONV then MAXPOOL: requantisation is monotonic, so the pool takes the max of the raw sums (bias
      // added, exact in a double) and requantises one value per 2 x 2 block instead of four
      const raw = integer && l.op === "conv" && post === A_IDENTITY && next !== undefined && next.op === "maxpool";
      const out = raw ? new Float64Array(shape[0] * shape[1] * shape[2]) : new Buf(shape[0] * shape[1] * shape[2]);
      const prev = this.steps[this.steps.length - 1];
      const [C, H, W] = l.inShape;
      const [O, OH, OW] = l.outShape;
      const step = {
        kind: 0, src, out, post, table, C, H, W, O, OH, OW, k: l.k, pad: l.pad, w: l.w, b: l.b, t: l.t, m: l.m,
        s: l.s, lo: l.outBits === 8 ? -128 : I32_MIN, hi: l.outBits === 8 ? 127 : I32_MAX, padded: null,
        acc: null, pool: 0, act: 0, bg: 0, bgMap: null, spanLo: null, spanHi: null, nzIdx: null, nzVal: null,
        raw, rawFrom: prev !== undefined && prev.raw ? prev : null,
      };
      if (l.op === "conv") {
        step.kind = S_CONV;
        const Hp = H + 2 * l.pad;
        const Wp = W + 2 * l.pad;
        step.H = Hp;
        step.W = Wp;
        // the input minus its background value bg (0 in the zero border), and each row's span of non-zeros
        step.bg = src === this.input ? this.pixelLut[0] : 0;
        step.padded = integer ? new Int32Array(C * Hp * Wp) : new Float64Array(C * Hp * Wp);
        step.spanLo = new Int32Array(C * Hp);
        step.spanHi = new Int32Array(C * Hp).fill(-1);
        step.acc = integer ? new Int32Array(OH * OW) : new Float64Array(OH * OW);
        step.bgMap = step.bg === 0 ? null : backgroundMap(l, step.bg, integer);
      } else if (l.op in POOLS) {
        step.kind = S_POOL;
        step.pool = POOLS[l.op];
      } else if (l.op === "act") {
        step.kind = S_ACT;
        step.act = integer ? A_LUT : ACTS.indexOf(l.act);
        step.table = integer ? l.t : null;
      } else if (l.op === "dense") {
        step.kind = S_DENSE;
        step.acc = integer ? new Int32Array(1) : null;
        const N = C * H * W;
        step.nzIdx = new Int32Array(N);
        step.nzVal = integer ? new Int32Array(N) : new Float64Array(N);
      } else if (l.op === "rbf") {
        step.kind = S_RBF;
      } else {
        throw new FlatFormatError(`unknown op ${l.op}`);
      }
      this.steps.push(step);
      src = out;
    }
    this.output = src;
    this.lastScale = integer ? layers[layers.length - 1].outScale : 1;
  }

  /** Logits of the uint8 image pixels[offset .. offset + H*W) (row-major). Returns the shared output buffer. */
  run(pixels, offset = 0) {
    const m = this.model;
    const imgH = m.imgH;
    const imgW = m.imgW;
    const pad = m.pad;
    const pw = imgW + 2 * pad;
    const x0 = this.input;
    const lut = this.pixelLut;
    for (let y = 0; y < imgH; y++) {
      const row = (y + pad) * pw + pad;
      const src = offset + y * imgW;
      for (let x = 0; x < imgW; x++) x0[row + x] = lut[pixels[src + x]];
    }
    const steps = this.steps;
    const integer = this.integer;
    for (let i = 0; i < steps.length; i++) {
      const s = steps[i];
      switch (s.kind) {
        case S_CONV: if (integer) convInt(s); else convFloat(s); break;
        case S_POOL: if (integer) poolInt(s); else poolFloat(s); break;
        case S_ACT: actStep(s); break;
        case S_DENSE: if (integer) denseInt(s); else denseFloat(s); break;
        default: rbf(s, integer);
      }
    }
    return this.output;
  }

  /**
   * Top-1 of `count` images stored one after another from pixels[offset] (H*W uint8 each) into
   * preds[at .. at + count); returns how many of them equal labels[at + i] (when labels is given).
   */
  predictBatch(pixels, offset, count, preds, at = 0, labels = null) {
    const size = this.model.imgH * this.model.imgW;
    const out = this.output;
    const n = out.length;
    let correct = 0;
    for (let i = 0; i < count; i++) {
      this.run(pixels, offset + i * size);
      let best = 0;
      for (let j = 1; j < n; j++) if (out[j] > out[best]) best = j;
      preds[at + i] = best;
      if (labels !== null && labels[at + i] === best) correct++;
    }
    return correct;
  }

  /** Top-1 class (first index of the largest logit, like numpy argmax). */
  predict(pixels, offset = 0) {
    return argmax(this.run(pixels, offset));
  }

  /** Softmax probabilities of a logits buffer (int8 logits are scaled by the last out_scale first). */
  probabilities(logits = this.output) {
    const s = this.lastScale;
    let mx = -Infinity;
    for (let i = 0; i < logits.length; i++) mx = Math.max(mx, logits[i] * s);
    const p = new Float64Array(logits.length);
    let sum = 0;
    for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp(logits[i] * s - mx);
    for (let i = 0; i < p.length; i++) p[i] /= sum;
    return p;
  }
}

/**
 * bg * (the sum of the weights over the in-map part of each receptive field), per output value: the part of
 * a convolution that the input's background value contributes (the zero border contributes nothing).
 */
function backgroundMap(l, bg, integer) {
  const [C, H, W] = l.inShape;
  const [O, OH, OW] = l.outShape;
  const { k, pad, w, t } = l;
  const map = integer ? new Int32Array(O * OH * OW) : new Float64Array(O * OH * OW);
  for (let o = 0; o < O; o++) {
    for (let i = 0; i < OH; i++) {
      for (let j = 0; j < OW; j++) {
        let sum = 0;
        for (let c = 0; c < C; c++) {
          if (t !== null && t[o * C + c] === 0) continue;
          for (let u = 0; u < k; u++) {
            const y = i + u - pad;
            if (y < 0 || y >= H) continue;
            for (let v = 0; v < k; v++) {
              const x = j + v - pad;
              if (x >= 0 && x < W) sum += w[((o * C + c) * k + u) * k + v];
            }
          }
        }
        map[(o * OH + i) * OW + j] = bg * sum; // int8: |bg * sum| <= 128 * 65536 * 128, exact
      }
    }
  }
  return map;
}

/**
 * Writes src - bg into the interior of the step's zero-bordered buffer and records, for every row, the first
 * and last column holding a non-zero (spanHi -1: none). Returns the buffer.
 */
function convInput(s) {
  const p = s.pad;
  const x = s.padded;
  const src = s.src;
  const bg = s.bg;
  const Hp = s.H;
  const W = s.W;
  const h = Hp - 2 * p;
  const w = W - 2 * p;
  const spanLo = s.spanLo;
  const spanHi = s.spanHi;
  for (let c = 0; c < s.C; c++) {
    for (let y = 0; y < h; y++) {
      const d = (c * Hp + y + p) * W + p;
      const r = (c * h + y) * w;
      let lo = -1;
      let hi = -1;
      for (let i = 0; i < w; i++) {
        const v = src[r + i] - bg;
        x[d + i] = v;
        if (v !== 0) {
          if (lo < 0) lo = i;
          hi = i;
        }
      }
      spanLo[c * Hp + y + p] = lo + p;
      spanHi[c * Hp + y + p] = hi < 0 ? -1 : hi + p;
    }
  }
  return x;
}

// y[o, i, j] = b[o] + sum_{c,u,v} w[o,c,u,v] * x[c, i+u, j+v] over the (padded) input; (o, c) pairs with
// table 0 skipped. The input is split into its background value bg and x - bg: acc starts from bg's share
// (bgMap, computed once) and adds the x - bg terms over each input row's span of non-zeros only (MNIST digits
// leave most of every row at the background). float32: acc is double, fround(fround(acc) + b) is stored.
function convFloat(s) {
  const x = convInput(s);
  const { C, H, W, O, OH, OW, k, w, b, t, acc, out, post, bgMap, spanLo, spanHi } = s;
  const HW = H * W;
  const P = OH * OW;
  const kk = k * k;
  for (let o = 0; o < O; o++) {
    if (bgMap === null) acc.fill(0);
    else acc.set(bgMap.subarray(o * P, o * P + P));
    for (let c = 0; c < C; c++) {
      if (t !== null && t[o * C + c] === 0) continue;
      const xc = c * HW;
      const sc = c * H;
      const wc = (o * C + c) * kk;
      if (k === 5) {
        for (let u = 0; u < 5; u++) {
          const wr = wc + u * 5;
          const w0 = w[wr];
          const w1 = w[wr + 1];
          const w2 = w[wr + 2];
          const w3 = w[wr + 3];
          const w4 = w[wr + 4];
          for (let i = 0; i < OH; i++) {
            const hi = spanHi[sc + i + u];
            if (hi < 0) continue; // an all-background input row adds nothing
            const lo = spanLo[sc + i + u];
            const j0 = lo > 4 ? lo - 4 : 0;
            const end = i * OW + (hi < OW ? hi + 1 : OW);
            let xr = xc + (i + u) * W + j0;
            let x0 = x[xr];
            let x1 = x[xr + 1];
            let x2 = x[xr + 2];
            let x3 = x[xr + 3];
            xr += 4;
            for (let a = i * OW + j0; a < end; a++) {
              const x4 = x[xr++];
              acc[a] += w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4;
              x0 = x1;
              x1 = x2;
              x2 = x3;
              x3 = x4;
            }
          }
        }
      } else {
        for (let u = 0; u < k; u++) {
          for (let i = 0; i < OH; i++) {
            const hi = spanHi[sc + i + u];
            if (hi < 0) continue;
            const lo = spanLo[sc + i + u];
            const xr = xc + (i + u) * W;
            const ar = i * OW;
            for (let v = 0; v < k; v++) {
              const wv = w[wc + u * k + v];
              const j0 = lo > v ? lo - v : 0;
              const j1 = hi - v < OW ? hi - v + 1 : OW;
              for (let j = j0; j < j1; j++) acc[ar + j] += wv * x[xr + j + v];
            }
          }
        }
      }
    }
    const bo = b[o];
    const base = o * P;
    if (post === A_IDENTITY) {
      for (let p = 0; p < P; p++) out[base + p] = fr(acc[p]) + bo;
    } else if (post === A_RELU) {
      for (let p = 0; p < P; p++) {
        const v = fr(fr(acc[p]) + bo);
        out[base + p] = v > 0 ? v : 0;
      }
    } else {
      for (let p = 0; p < P; p++) out[base + p] = floatAct(post, fr(fr(acc[p]) + bo));
    }
  }
}

// int8: the same loops in int32. Every term is an exact integer; the spec bounds the sum of products to 32
// bits, so the wrapping int32 sum (`| 0`) of bg's share and the x - bg terms ends exact.
function convInt(s) {
  const x = convInput(s);
  const { C, H, W, O, OH, OW, k, w, b, t, acc, out, post, bgMap, spanLo, spanHi } = s;
  const HW = H * W;
  const P = OH * OW;
  const kk = k * k;
  for (let o = 0; o < O; o++) {
    if (bgMap === null) acc.fill(0);
    else acc.set(bgMap.subarray(o * P, o * P + P));
    for (let c = 0; c < C; c++) {
      if (t !== null && t[o * C + c] === 0) continue;
      const xc = c * HW;
      const sc = c * H;
      const wc = (o * C + c) * kk;
      if (k === 5) {
        for (let u = 0; u < 5; u++) {
          const wr = wc + u * 5;
          const w0 = w[wr];
          const w1 = w[wr + 1];
          const w2 = w[wr + 2];
          const w3 = w[wr + 3];
          const w4 = w[wr + 4];
          for (let i = 0; i < OH; i++) {
            const hi = spanHi[sc + i + u];
            if (hi < 0) continue; // an all-background input row adds nothing
            const lo = spanLo[sc + i + u];
            const j0 = lo > 4 ? lo - 4 : 0;
            const end = i * OW + (hi < OW ? hi + 1 : OW);
            let xr = xc + (i + u) * W + j0;
            let x0 = x[xr];
            let x1 = x[xr + 1];
            let x2 = x[xr + 2];
            let x3 = x[xr + 3];
            xr += 4;
            for (let a = i * OW + j0; a < end; a++) {
              const x4 = x[xr++];
              acc[a] = (acc[a] + (w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4)) | 0;
              x0 = x1;
              x1 = x2;
              x2 = x3;
              x3 = x4;
            }
          }
        }
      } else {
        for (let u = 0; u < k; u++) {
          for (let i = 0; i < OH; i++) {
            const hi = spanHi[sc + i + u];
            if (hi < 0) continue;
            const lo = spanLo[sc + i + u];
            const xr = xc + (i + u) * W;
            const ar = i * OW;
            for (let v = 0; v < k; v++) {
              const wv = w[wc + u * k + v];
              const j0 = lo > v ? lo - v : 0;
              const j1 = hi - v < OW ? hi - v + 1 : OW;
              for (let j = j0; j < j1; j++) acc[ar + j] = (acc[ar + j] + wv * x[xr + j + v]) | 0;
            }
          }
        }
      }
    }
    if (s.raw) {
      const bo = b[o];
      const base = o * P;
      for (let p = 0; p < P; p++) out[base + p] = acc[p] + bo;
    } else {
      requantizeInto(s, o, acc, o * P, P);
    }
  }
}

/**
 * out[base + p] = requantize(acc[p] + b[o], m[o], s[o]) for p < P, then the fused LUT if any. The spec's
 * r = (|acc| * M + 2^(n-1)) >> n is floor((p + half) * 2^-n) whenever p + half < 2^53 (every value an exact
 * integer, the scaling by a power of two exact); larger products take requantize's exact split.
 */
function requantizeInto(s, o, acc, base, P) {
  const out = s.out;
  const bo = s.b[o];
  const M = s.m[o];
  const n = s.s[o];
  const half = POW2[n - 1];
  const inv = 1 / POW2[n];
  const lo = s.lo;
  const hi = s.hi;
  const table = s.post === A_LUT ? s.table : null;
  for (let p = 0; p < P; p++) {
    const v = acc[p] + bo;
    const a = v < 0 ? -v : v;
    const q = a * M + half;
    let r;
    if (q < TWO53) {
      r = Math.floor(q * inv);
      if (v < 0) r = -r;
      r = r < lo ? lo : r > hi ? hi : r;
    } else {
      r = requantize(v, M, n, lo, hi);
    }
    out[base + p] = table === null ? r : table[r + 128];
  }
}

// 2 x 2 blocks, stride 2: max, average, or LeNet-5 subsampling w[c] * sum + b[c]; then the fused act
function poolFloat(s) {
  const { C, H, W, OH, OW, src: x, out: y, pool, post } = s;
  const w = s.w;
  const b = s.b;
  for (let c = 0; c < C; c++) {
    const xc = c * H * W;
    const yc = c * OH * OW;
    const wc = pool === 2 ? w[c] : 0;
    const bc = pool === 2 ? b[c] : 0;
    for (let i = 0; i < OH; i++) {
      let p = xc + 2 * i * W;
      let q = yc + i * OW;
      for (let j = 0; j < OW; j++, p += 2, q++) {
        const a = x[p];
        const bb = x[p + 1];
        const cc = x[p + W];
        const d = x[p + W + 1];
        let v;
        if (pool === 0) {
          const m1 = a > bb ? a : bb;
          const m2 = cc > d ? cc : d;
          v = m1 > m2 ? m1 : m2;
        } else {
          const sum = fr(fr(a + bb) + fr(cc + d));
          v = pool === 1 ? fr(sum * F_QUARTER) : fr(fr(wc * sum) + bc);
        }
        if (post === A_IDENTITY) y[q] = v;
        else if (post === A_RELU) y[q] = v > 0 ? v : 0;
        else y[q] = floatAct(post, v);
      }
    }
  }
}

function poolInt(s) {
  const { C, H, W, OH, OW, src: x, out: y, pool, post, lo, hi } = s;
  const table = post === A_LUT ? s.table : null;
  if (s.rawFrom !== null) {
    maxpoolRaw(s, s.rawFrom, table);
    return;
  }
  for (let c = 0; c < C; c++) {
    const xc = c * H * W;
    const yc = c * OH * OW;
    let wc = 0;
    let bc = 0;
    let M = 0;
    let n = 1;
    if (pool === 2) {
      wc = s.w[c];
      bc = s.b[c];
      M = s.m[c];
      n = s.s[c];
    }
    for (let i = 0; i < OH; i++) {
      let p = xc + 2 * i * W;
      let q = yc + i * OW;
      for (let j = 0; j < OW; j++, p += 2, q++) {
        const a = x[p];
        const bb = x[p + 1];
        const cc = x[p + W];
        const d = x[p + W + 1];
        let v;
        if (pool === 0) {
          const m1 = a > bb ? a : bb;
          const m2 = cc > d ? cc : d;
          v = m1 > m2 ? m1 : m2;
        } else {
          const sum = a + bb + cc + d;
          if (pool === 1) v = sum < 0 ? -Math.floor((2 - sum) / 4) : Math.floor((sum + 2) / 4);
          else v = requantize(wc * sum + bc, M, n, lo, hi);
        }
        y[q] = table === null ? v : table[v + 128];
      }
    }
  }
}

// max of each 2 x 2 block of a CONV's raw sums, then that CONV's requantisation (conv) and the fused LUT
function maxpoolRaw(s, conv, table) {
  const { C, H, W, OH, OW, src: x, out: y } = s;
  const lo = conv.lo;
  const hi = conv.hi;
  for (let c = 0; c < C; c++) {
    const M = conv.m[c];
    const n = conv.s[c];
    const half = POW2[n - 1];
    const inv = 1 / POW2[n];
    const xc = c * H * W;
    const yc = c * OH * OW;
    for (let i = 0; i < OH; i++) {
      let p = xc + 2 * i * W;
      let q = yc + i * OW;
      for (let j = 0; j < OW; j++, p += 2, q++) {
        const a = x[p];
        const bb = x[p + 1];
        const cc = x[p + W];
        const d = x[p + W + 1];
        const m1 = a > bb ? a : bb;
        const m2 = cc > d ? cc : d;
        const v = m1 > m2 ? m1 : m2;
        const av = v < 0 ? -v : v;
        const qq = av * M + half;
        let r;
        if (qq < TWO53) {
          r = Math.floor(qq * inv);
          if (v < 0) r = -r;
          r = r < lo ? lo : r > hi ? hi : r;
        } else {
          r = requantize(v, M, n, lo, hi);
        }
        y[q] = table === null ? r : table[r + 128];
      }
    }
  }
}

function actStep(s) {
  const x = s.src;
  const y = s.out;
  const n = y.length;
  const act = s.act;
  if (act === A_LUT) {
    const t = s.table;
    for (let j = 0; j < n; j++) y[j] = t[x[j] + 128];
  } else if (act === A_RELU) {
    for (let j = 0; j < n; j++) y[j] = x[j] > 0 ? x[j] : 0;
  } else {
    for (let j = 0; j < n; j++) y[j] = floatAct(act, x[j]);
  }
}

/** Gathers the non-zero inputs of a DENSE step (index, value) in order; returns how many. */
function gatherNonZero(s) {
  const x = s.src;
  const idx = s.nzIdx;
  const val = s.nzVal;
  let n = 0;
  for (let j = 0; j < x.length; j++) {
    const v = x[j];
    if (v !== 0) {
      idx[n] = j;
      val[n] = v;
      n++;
    }
  }
  return n;
}

// y[o] = b[o] + sum_n w[o, n] x[n] over the non-zero x[n] only (after a ReLU about half of them; a zero term
// changes no sum): four partial sums (independent adds), in double
function denseFloat(s) {
  const y = s.out;
  const w = s.w;
  const b = s.b;
  const O = s.O;
  const post = s.post;
  const idx = s.nzIdx;
  const val = s.nzVal;
  const N = s.src.length;
  const nz = gatherNonZero(s);
  const nz4 = nz - (nz % 4);
  for (let o = 0; o < O; o++) {
    const wo = o * N;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    let j = 0;
    for (; j < nz4; j += 4) {
      s0 += w[wo + idx[j]] * val[j];
      s1 += w[wo + idx[j + 1]] * val[j + 1];
      s2 += w[wo + idx[j + 2]] * val[j + 2];
      s3 += w[wo + idx[j + 3]] * val[j + 3];
    }
    for (; j < nz; j++) s0 += w[wo + idx[j]] * val[j];
    const v = fr(fr((s0 + s1) + (s2 + s3)) + b[o]);
    if (post === A_IDENTITY) y[o] = v;
    else if (post === A_RELU) y[o] = v > 0 ? v : 0;
    else y[o] = floatAct(post, v);
  }
}

function denseInt(s) {
  const w = s.w;
  const O = s.O;
  const idx = s.nzIdx;
  const val = s.nzVal;
  const N = s.src.length;
  const nz = gatherNonZero(s);
  const nz4 = nz - (nz % 4);
  const acc = s.acc;
  for (let o = 0; o < O; o++) {
    const wo = o * N;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    let j = 0;
    for (; j < nz4; j += 4) {
      s0 = (s0 + w[wo + idx[j]] * val[j]) | 0;
      s1 = (s1 + w[wo + idx[j + 1]] * val[j + 1]) | 0;
      s2 = (s2 + w[wo + idx[j + 2]] * val[j + 2]) | 0;
      s3 = (s3 + w[wo + idx[j + 3]] * val[j + 3]) | 0;
    }
    for (; j < nz; j++) s0 = (s0 + w[wo + idx[j]] * val[j]) | 0;
    acc[0] = (s0 + s1 + s2 + s3) | 0;
    requantizeInto(s, o, acc, o, 1);
  }
}

// y[o] = -sum_n (x[n] - w[o, n])^2, summed in double (float files round the result to float32)
function rbf(s, integer) {
  const x = s.src;
  const y = s.out;
  const w = s.w;
  const O = s.O;
  const N = x.length;
  for (let o = 0; o < O; o++) {
    let sum = 0;
    const wo = o * N;
    for (let j = 0; j < N; j++) {
      const d = x[j] - w[wo + j];
      sum += d * d;
    }
    if (integer) y[o] = sum > -I32_MIN ? I32_MIN : -sum;
    else y[o] = -sum;
  }
}

export function argmax(v) {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

/** Fetch a flat file, validate it and return {model, runtime, bytes}. */
export async function loadFlat(url) {
  const resp = await fetch(url, { cache: "no-store" });
  if (!resp.ok) throw new Error(`cannot fetch ${url}: HTTP ${resp.status}`);
  const buf = await resp.arrayBuffer();
  const model = parseFlat(buf);
  return { model, runtime: new Runtime(model), bytes: buf.byteLength };
}
