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
const fr = Math.fround;
const F_TWO_THIRDS = fr(2 / 3);
const F_1_7159 = fr(1.7159);
const F_QUARTER = fr(0.25);

function floatAct(name) {
  switch (name) {
    case "identity": return (x) => x;
    case "relu": return (x) => (x > 0 ? x : 0);
    case "tanh": return (x) => Math.tanh(x);
    case "sigmoid": return (x) => 1 / (1 + Math.exp(-x));
    case "selu": return (x) => SELU_SCALE * (x > 0 ? x : SELU_ALPHA * Math.expm1(x));
    case "scaled_tanh": return (x) => fr(F_1_7159 * fr(Math.tanh(fr(F_TWO_THIRDS * x))));
    case "abs": return (x) => Math.abs(x);
    default: throw new FlatFormatError(`unknown activation ${name}`);
  }
}

/**
 * Executes a parsed model. Every buffer is allocated here, once; run() allocates nothing.
 * Activations are Float32Array (float32 files) or Int32Array (int8 files), one per layer.
 */
export class Runtime {
  constructor(model) {
    this.model = model;
    this.integer = model.dtype === "int8";
    const Buf = this.integer ? Int32Array : Float32Array;
    const [, ph, pw] = model.inputShape;
    this.input = new Buf(ph * pw);
    // pixel -> input value: float x = fround(fround(p * a) + b); int8 q = lut[p]
    this.pixelLut = new Buf(256);
    for (let p = 0; p < 256; p++) {
      this.pixelLut[p] = this.integer ? model.inLut[p] : fr(fr(p * fr(model.inScale)) + fr(model.inShift));
    }
    this.input.fill(this.integer ? model.inLut[0] : fr(model.inShift)); // the padding border, written once
    let maxPlane = 1;
    this.outputs = model.layers.map((l) => {
      maxPlane = Math.max(maxPlane, l.outShape[1] * l.outShape[2]);
      return new Buf(l.outShape[0] * l.outShape[1] * l.outShape[2]);
    });
    this.acc = new Float64Array(maxPlane); // conv accumulators (double: exact for int8, ~exact for float)
    this.acts = model.layers.map((l) => (l.op === "act" && !this.integer ? floatAct(l.act) : null));
    this.output = this.outputs[this.outputs.length - 1];
    this.lastScale = this.integer ? model.layers[model.layers.length - 1].outScale : 1;
  }

  /** Logits of the uint8 image pixels[offset .. offset + H*W) (row-major). Returns the shared output buffer. */
  run(pixels, offset = 0) {
    const m = this.model;
    const { imgH, imgW, pad } = m;
    const pw = imgW + 2 * pad;
    const x0 = this.input;
    const lut = this.pixelLut;
    for (let y = 0; y < imgH; y++) {
      const row = (y + pad) * pw + pad;
      const src = offset + y * imgW;
      for (let x = 0; x < imgW; x++) x0[row + x] = lut[pixels[src + x]];
    }
    let x = x0;
    const layers = m.layers;
    for (let i = 0; i < layers.length; i++) {
      const l = layers[i];
      const y = this.outputs[i];
      switch (l.op) {
        case "conv": this.conv(l, x, y); break;
        case "maxpool": case "avgpool": case "subsample": this.pool(l, x, y); break;
        case "act": this.act(l, x, y, i); break;
        case "dense": this.dense(l, x, y); break;
        case "rbf": this.rbf(l, x, y); break;
        default: throw new FlatFormatError(`unknown op ${l.op}`);
      }
      x = y;
    }
    return x;
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

  // y[o, i, j] = b[o] + sum_{c,u,v} w[o,c,u,v] * x[c, i+u-pad, j+v-pad]; skipped (o, c) pairs per table.
  conv(l, x, y) {
    const [C, H, W] = l.inShape;
    const [O, OH, OW] = l.outShape;
    const { k, pad, w, b, t } = l;
    const P = OH * OW;
    const kk = k * k;
    const acc = this.acc;
    for (let o = 0; o < O; o++) {
      acc.fill(0, 0, P);
      for (let c = 0; c < C; c++) {
        if (t !== null && t[o * C + c] === 0) continue;
        const xc = c * H * W;
        const wc = (o * C + c) * kk;
        for (let u = 0; u < k; u++) {
          const i0 = Math.max(0, pad - u);
          const i1 = Math.min(OH, H + pad - u);
          for (let v = 0; v < k; v++) {
            const wv = w[wc + u * k + v];
            if (wv === 0) continue;
            const j0 = Math.max(0, pad - v);
            const j1 = Math.min(OW, W + pad - v);
            for (let i = i0; i < i1; i++) {
              const xr = xc + (i + u - pad) * W + v - pad;
              const ar = i * OW;
              for (let j = j0; j < j1; j++) acc[ar + j] += wv * x[xr + j];
            }
          }
        }
      }
      this.finish(l, o, acc, y, o * P, P);
    }
  }

  // bias + rounding (float) or bias + requantisation (int8) of P accumulators of channel o
  finish(l, o, acc, y, base, P) {
    if (this.integer) {
      const bo = l.b[o];
      const M = l.m[o];
      const n = l.s[o];
      const [lo, hi] = l.outBits === 8 ? [-128, 127] : [I32_MIN, I32_MAX];
      for (let p = 0; p < P; p++) y[base + p] = requantize(acc[p] + bo, M, n, lo, hi);
    } else {
      const bo = l.b[o];
      for (let p = 0; p < P; p++) y[base + p] = fr(acc[p]) + bo; // stored as float32 (one more rounding)
    }
  }

  // 2 x 2 blocks, stride 2: max, average, or LeNet-5 subsampling w[c] * sum + b[c]
  pool(l, x, y) {
    const [C, H, W] = l.inShape;
    const [, OH, OW] = l.outShape;
    const op = l.op;
    const integer = this.integer;
    const [lo, hi] = l.outBits === 8 ? [-128, 127] : [I32_MIN, I32_MAX];
    for (let c = 0; c < C; c++) {
      const xc = c * H * W;
      const yc = c * OH * OW;
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          const p = xc + 2 * i * W + 2 * j;
          const a = x[p];
          const bb = x[p + 1];
          const cc = x[p + W];
          const d = x[p + W + 1];
          const q = yc + i * OW + j;
          if (op === "maxpool") {
            y[q] = Math.max(Math.max(a, bb), Math.max(cc, d));
            continue;
          }
          const s = integer ? a + bb + cc + d : fr(fr(a + bb) + fr(cc + d));
          if (op === "avgpool") {
            if (integer) y[q] = s < 0 ? -Math.floor((2 - s) / 4) : Math.floor((s + 2) / 4);
            else y[q] = s * F_QUARTER;
          } else if (integer) {
            y[q] = requantize(l.w[c] * s + l.b[c], l.m[c], l.s[c], lo, hi);
          } else {
            y[q] = fr(l.w[c] * s) + l.b[c];
          }
        }
      }
    }
  }

  act(l, x, y, i) {
    const n = y.length;
    if (this.integer) {
      const t = l.t;
      for (let j = 0; j < n; j++) y[j] = t[x[j] + 128];
      return;
    }
    const f = this.acts[i];
    if (l.act === "relu") {
      for (let j = 0; j < n; j++) y[j] = x[j] > 0 ? x[j] : 0;
    } else {
      for (let j = 0; j < n; j++) y[j] = f(x[j]);
    }
  }

  dense(l, x, y) {
    const O = l.outShape[0];
    const N = x.length;
    const w = l.w;
    const acc = this.acc;
    for (let o = 0; o < O; o++) {
      let s = 0;
      const wo = o * N;
      for (let j = 0; j < N; j++) s += w[wo + j] * x[j];
      acc[0] = s;
      this.finish(l, o, acc, y, o, 1);
    }
  }

  // y[o] = -sum_n (x[n] - w[o, n])^2, summed in double (float files round the result to float32)
  rbf(l, x, y) {
    const O = l.outShape[0];
    const N = x.length;
    const w = l.w;
    for (let o = 0; o < O; o++) {
      let s = 0;
      const wo = o * N;
      for (let j = 0; j < N; j++) {
        const d = x[j] - w[wo + j];
        s += d * d;
      }
      if (this.integer) y[o] = s > -I32_MIN ? I32_MIN : -s;
      else y[o] = -s;
    }
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
