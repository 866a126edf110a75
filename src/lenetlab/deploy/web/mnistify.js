// Turn a drawing into an MNIST-like 28 x 28 uint8 digit, the recipe of
// lenetlab/data/images.py `to_mnist` (LeCun et al.): white ink on black, the
// digit's bounding box scaled to fit 20 x 20 keeping its aspect ratio (Lanczos-3,
// 8-bit intermediate like Pillow), placed in a 28 x 28 frame, then shifted by
// whole pixels so that its centre of mass is at the centre.

/** Python's round(): halves go to the even neighbour. */
export function pyRound(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function lanczos(x) {
  if (x === 0) return 1;
  if (x <= -3 || x >= 3) return 0;
  const px = Math.PI * x;
  return (3 * Math.sin(px) * Math.sin(px / 3)) / (px * px);
}

// Normalised Lanczos-3 taps of every output sample of a 1-D resize inSize -> outSize.
function taps(inSize, outSize) {
  const scale = inSize / outSize;
  const fscale = Math.max(scale, 1); // widen the kernel when shrinking (antialiasing)
  const support = 3 * fscale;
  const out = [];
  for (let o = 0; o < outSize; o++) {
    const centre = (o + 0.5) * scale;
    const lo = Math.max(Math.floor(centre - support + 0.5), 0);
    const hi = Math.min(Math.floor(centre + support + 0.5), inSize);
    const w = [];
    let sum = 0;
    for (let i = lo; i < hi; i++) {
      const v = lanczos((i - centre + 0.5) / fscale);
      w.push(v);
      sum += v;
    }
    out.push({ lo, w: w.map((v) => (sum !== 0 ? v / sum : 0)) });
  }
  return out;
}

const clamp8 = (v) => (v < 0 ? 0 : v > 255 ? 255 : Math.round(v));

/** Resize an 8-bit h x w image to nh x nw (horizontal pass, then vertical; 8-bit in between). */
export function resize8(src, h, w, nh, nw) {
  const tx = taps(w, nw);
  const mid = new Uint8ClampedArray(h * nw);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < nw; x++) {
      const { lo, w: k } = tx[x];
      let s = 0;
      for (let i = 0; i < k.length; i++) s += k[i] * src[y * w + lo + i];
      mid[y * nw + x] = clamp8(s);
    }
  }
  const ty = taps(h, nh);
  const out = new Uint8ClampedArray(nh * nw);
  for (let y = 0; y < nh; y++) {
    const { lo, w: k } = ty[y];
    for (let x = 0; x < nw; x++) {
      let s = 0;
      for (let i = 0; i < k.length; i++) s += k[i] * mid[(lo + i) * nw + x];
      out[y * nw + x] = clamp8(s);
    }
  }
  return out;
}

/**
 * gray: Float64Array of h*w values in [0, 1] (any polarity). Returns a Uint8Array(784),
 * white digit on black, or null when the image is blank.
 */
export function toMnist(gray, h, w) {
  const g = Float64Array.from(gray);
  const border = [];
  for (let x = 0; x < w; x++) border.push(g[x]);
  for (let x = 0; x < w; x++) border.push(g[(h - 1) * w + x]);
  for (let y = 0; y < h; y++) border.push(g[y * w]);
  for (let y = 0; y < h; y++) border.push(g[y * w + w - 1]);
  const mean = border.reduce((a, b) => a + b, 0) / border.length;
  const invert = mean > 0.5;
  if (invert) for (let i = 0; i < g.length; i++) g[i] = 1 - g[i];
  const sorted = border.map((v) => (invert ? 1 - v : v)).sort((a, b) => a - b);
  const m = sorted.length;
  const median = m % 2 ? sorted[(m - 1) / 2] : (sorted[m / 2 - 1] + sorted[m / 2]) / 2;
  let max = 0;
  for (let i = 0; i < g.length; i++) {
    g[i] = Math.max(g[i] - median, 0);
    if (g[i] > max) max = g[i];
  }
  if (max <= 1e-6) return null;
  let y0 = h;
  let y1 = -1;
  let x0 = w;
  let x1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      g[y * w + x] /= max;
      if (g[y * w + x] > 0.1) {
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
      }
    }
  }
  const ch = y1 - y0 + 1;
  const cw = x1 - x0 + 1;
  const crop = new Uint8Array(ch * cw);
  for (let y = 0; y < ch; y++) {
    for (let x = 0; x < cw; x++) crop[y * cw + x] = Math.floor(g[(y0 + y) * w + x0 + x] * 255);
  }
  const scale = 20 / Math.max(ch, cw);
  const nh = Math.max(1, pyRound(ch * scale));
  const nw = Math.max(1, pyRound(cw * scale));
  const small = resize8(crop, ch, cw, nh, nw);
  const top = Math.floor((28 - nh) / 2);
  const left = Math.floor((28 - nw) / 2);
  // centre of mass of the placed digit
  let total = 0;
  let sy = 0;
  let sx = 0;
  for (let y = 0; y < nh; y++) {
    for (let x = 0; x < nw; x++) {
      const v = small[y * nw + x] / 255;
      total += v;
      sy += v * (top + y);
      sx += v * (left + x);
    }
  }
  let dy = 0;
  let dx = 0;
  if (total > 0) {
    dy = pyRound(13.5 - sy / total);
    dx = pyRound(13.5 - sx / total);
  }
  dy = Math.min(Math.max(dy, -top), 28 - nh - top);
  dx = Math.min(Math.max(dx, -left), 28 - nw - left);
  const out = new Uint8Array(784);
  for (let y = 0; y < nh; y++) {
    for (let x = 0; x < nw; x++) out[(top + dy + y) * 28 + left + dx + x] = small[y * nw + x];
  }
  return out;
}
