/* LeNet-5's feature extractor for training, in one pass each way (lenetlab.models.convblocks): block 1 is a 5x5 convolution of a
 * one-channel image (zero padding `pad`), ReLU and 2x2 max-pooling; block 2 a 5x5 convolution of block 1's
 * maps (no padding), ReLU and 2x2 max-pooling; the output is block 2's maps flattened as torch flattens them
 * (channel, row, column). Forward and backward; the image needs no gradient.
 *
 * ReLU after the pool's maximum is the same value as pooling ReLU's outputs. A window's gradient reaches one
 * convolution output, its winner: the first of tied maxima in row-major order (the element torch's pool
 * picks), and only if that maximum is positive (ReLU's gradient); a window with a NaN gives NaN and no
 * gradient. The forward pass records each window's winner (0-3, row-major; 255: none), so the backward pass
 * visits the winners only - a quarter of the positions at most - instead of dense maps that are mostly zero.
 *
 * Block 1 forward: each map two rows at a time from the padded image's even and odd columns, so each window's
 * four outputs are contiguous vectors along the row (bias, then the taps in row-major order, fused
 * multiply-adds). Block 2 forward: all output channels of two windows at once, 16 channels per vector (bias,
 * then the taps in (input channel, row, column) order).
 *
 * Backward, per image: block 2's winners are listed per output channel; each kernel row's gradient is the sum
 * over them of the input row under the winner times its gradient (eight floats per kernel row, the maps' rows
 * carry padding for that). Block 1's map gradient is built row by row in registers: every winner whose kernel
 * covers the row adds that kernel row, placed at its column by loading it from a zero-padded copy (so no
 * memory is updated twice: updates of partly overlapping memory stall the CPU). Block 1's kernel gradient then
 * as block 2's, without branches (half its windows are dead: they add zeros). Sums run in a fixed order: a
 * given batch always gives the same numbers.
 *
 * Block 1's maps are kept between the passes as B x C1 x H1 x S1 floats (rows padded to S1 with zeros). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define K 5
#define NONE 255
#define XB 16       /* block 1: pooled columns per vector block (pick() works on 16) */
#define CB 16       /* block 2: output channels per vector */

/* n floats as one vector, unaligned loads and stores (GCC / Clang vector extensions: whatever the target's
 * vectors are): v8 / ld8 / st8 and v16 / ld16 / st16 */
#define VECTOR_IO(n)                                                                                        \
    typedef float v##n __attribute__((vector_size(4 * n)));                                                 \
    static inline v##n ld##n(const float *p)                                                                \
    {                                                                                                       \
        v##n v;                                                                                             \
        memcpy(&v, p, sizeof v);                                                                            \
        return v;                                                                                           \
    }                                                                                                       \
    static inline void st##n(float *p, v##n v)                                                              \
    {                                                                                                       \
        memcpy(p, &v, sizeof v);                                                                            \
    }
VECTOR_IO(8)
VECTOR_IO(16)

typedef struct {
    int64_t n, c1, c2, h, w, pad;
    int64_t ph, pw, hw;          /* padded image: rows, row length; half row (even / odd columns) */
    int64_t q1h, q1w, q1r, s1;   /* block 1 pooled maps: rows, columns, columns rounded to XB, row stride */
    int64_t q2h, q2w, nb;        /* block 2 pooled maps; vector blocks of output channels */
    int64_t vr;                  /* block 1 map gradient's row stride: whole vectors of 16 */
} Geo;

static Geo geometry(int64_t n, int64_t c1, int64_t c2, int64_t h, int64_t w, int64_t pad)
{
    Geo g = {.n = n, .c1 = c1, .c2 = c2, .h = h, .w = w, .pad = pad};
    g.ph = h + 2 * pad;
    g.q1h = (g.ph - (K - 1)) / 2;
    g.q1w = (w + 2 * pad - (K - 1)) / 2;
    g.q1r = (g.q1w + XB - 1) / XB * XB;
    g.hw = g.q1r + 4;                     /* even/odd columns read up to q1r + 1 */
    g.pw = 2 * g.hw + 8;                  /* the backward pass reads 8 floats from any output column */
    g.s1 = g.q1w + 8;
    g.q2h = (g.q1h - (K - 1)) / 2;
    g.q2w = (g.q1w - (K - 1)) / 2;
    g.nb = (c2 + CB - 1) / CB;
    g.vr = (g.q1w + 15) / 16 * 16;
    return g;
}

/* The padded image: ph rows of pw floats, zero outside the image. */
static void pad_image(const Geo *g, const float *restrict img, float *restrict p)
{
    memset(p, 0, (size_t)(g->ph * g->pw) * sizeof(float));
    for (int64_t y = 0; y < g->h; y++)
        memcpy(p + (y + g->pad) * g->pw + g->pad, img + y * g->w, (size_t)g->w * sizeof(float));
}

/* Pooling, lane by lane, of four candidates (a, b top; c, d bottom): the first maximum in row-major order,
 * then ReLU. Written as selects, which compilers vectorise. */
static inline void pick(const float *restrict a, const float *restrict b, const float *restrict c,
                        const float *restrict d, float *restrict val, uint8_t *restrict win)
{
    for (int t = 0; t < 16; t++) {
        const int rb = b[t] > a[t], rd = d[t] > c[t];
        const float top = rb ? b[t] : a[t], bot = rd ? d[t] : c[t];
        const int down = bot > top;
        const float m = down ? bot : top;
        const int nan = (a[t] != a[t]) | (b[t] != b[t]) | (c[t] != c[t]) | (d[t] != d[t]);
        const int live = !nan & (m > 0.0f);
        val[t] = live ? m : (nan ? a[t] + b[t] + c[t] + d[t] : 0.0f);
        win[t] = (uint8_t)(live ? (down ? 2 + rd : rb) : NONE);
    }
}

/* One kernel row's five taps into the outputs at even (l) and odd (r) columns of one output row, XB pooled
 * windows wide, from one input row's even (er) and odd (orr) columns. */
static inline void taps_row(float *restrict l, float *restrict r, const float *restrict er,
                            const float *restrict orr, const float *restrict wr)
{
    for (int t = 0; t < XB; t++) {
        l[t] += wr[0] * er[t];
        l[t] += wr[1] * orr[t];
        l[t] += wr[2] * er[t + 1];
        l[t] += wr[3] * orr[t + 1];
        l[t] += wr[4] * er[t + 2];
        r[t] += wr[0] * orr[t];
        r[t] += wr[1] * er[t + 1];
        r[t] += wr[2] * orr[t + 1];
        r[t] += wr[3] * er[t + 2];
        r[t] += wr[4] * orr[t + 2];
    }
}

/* Block 1, one pooled row of one channel. e/o: the padded image's even and odd columns (rows of hw floats)
 * from input row 2i. Window j's outputs at columns 2j and 2j+1 come from e/o shifted by whole elements. */
static void block1_row(const float *restrict e, const float *restrict o, int64_t hw, const float *restrict wk,
                       float bias, int64_t qw, float *restrict val, uint8_t *restrict win)
{
    for (int64_t j0 = 0; j0 < qw; j0 += XB) {
        float a[XB], b[XB], c[XB], d[XB];          /* top-left, top-right, bottom-left, bottom-right */
        for (int t = 0; t < XB; t++)
            a[t] = b[t] = c[t] = d[t] = bias;
        for (int ky = 0; ky < K + 1; ky++) {       /* input row ky: tap row ky of the top, ky - 1 of the bottom */
            const float *er = e + ky * hw + j0, *orr = o + ky * hw + j0;
            if (ky < K)
                taps_row(a, b, er, orr, wk + ky * K);
            if (ky > 0)
                taps_row(c, d, er, orr, wk + (ky - 1) * K);
        }
        pick(a, b, c, d, val + j0, win + j0);
    }
}

/* Block 2, windows (i, j) and (i, j + 1) (their sums side by side: twice the independent chains), output
 * channels cb*16 .. +15: w2t is (block, c1, 5, 5, 16). val / win get 2 x 16 entries; with pair = 0 only the
 * first window is computed. */
static void block2_windows(const Geo *g, const float *restrict m1, const float *restrict w2t,
                           const float *restrict b2, int64_t cb, int64_t i, int64_t j, int pair,
                           float *restrict val, uint8_t *restrict win)
{
    float a[CB], b[CB], c[CB], d[CB], e[CB], f[CB], h[CB], k[CB];
    for (int t = 0; t < CB; t++)
        a[t] = b[t] = c[t] = d[t] = e[t] = f[t] = h[t] = k[t] = b2[cb * CB + t];
    const int64_t j2 = pair ? j + 1 : j;
    for (int64_t ci = 0; ci < g->c1; ci++)
        for (int ky = 0; ky < K; ky++) {
            const float *r0 = m1 + (ci * g->q1h + 2 * i + ky) * g->s1, *r1 = r0 + g->s1;
            const float *wrow = w2t + ((cb * g->c1 + ci) * K + ky) * K * CB;
            for (int kx = 0; kx < K; kx++) {
                const float v0 = r0[2 * j + kx], v1 = r0[2 * j + kx + 1], v2 = r1[2 * j + kx],
                            v3 = r1[2 * j + kx + 1];
                const float u0 = r0[2 * j2 + kx], u1 = r0[2 * j2 + kx + 1], u2 = r1[2 * j2 + kx],
                            u3 = r1[2 * j2 + kx + 1];
                const float *restrict wv = wrow + kx * CB;
                for (int t = 0; t < CB; t++) {
                    a[t] += v0 * wv[t];
                    b[t] += v1 * wv[t];
                    c[t] += v2 * wv[t];
                    d[t] += v3 * wv[t];
                    e[t] += u0 * wv[t];
                    f[t] += u1 * wv[t];
                    h[t] += u2 * wv[t];
                    k[t] += u3 * wv[t];
                }
            }
        }
    pick(a, b, c, d, val, win);
    pick(e, f, h, k, val + CB, win + CB);
}

/* x: B x H x W; w1: C1 x 25; b1: C1; w2: C2 x C1 x 25; b2: C2.
 * Out: m1 (B x C1 x Q1H x S1, block 1's maps), a1 (B x C1 x Q1H x Q1W winners), feat (B x C2 x Q2H x Q2W),
 * a2 (B x C2 x Q2H x Q2W winners). Returns 0, or 1 where scratch memory could not be had. */
int ln_convblocks_fwd(const float *restrict x, const float *restrict w1, const float *restrict b1,
                 const float *restrict w2, const float *restrict b2, float *restrict m1, uint8_t *restrict a1,
                 float *restrict feat, uint8_t *restrict a2, int64_t n, int64_t c1, int64_t c2, int64_t h,
                 int64_t w, int64_t pad)
{
    const Geo g = geometry(n, c1, c2, h, w, pad);
    const int64_t taps = c1 * K * K;
    float *p = malloc((size_t)(2 * g.ph * g.pw + g.q1r + g.nb * (taps + 1) * CB + 3 * CB) * sizeof(float));
    uint8_t *wins = malloc((size_t)(g.q1r + 2 * CB));
    if (!p || !wins) {
        free(p);
        free(wins);
        return 1;
    }
    float *ev = p + g.ph * g.pw, *od = ev + g.ph * g.hw, *vals = od + g.ph * g.hw;
    float *w2t = vals + g.q1r, *b2p = w2t + g.nb * taps * CB, *v2 = b2p + g.nb * CB;
    for (int64_t cb = 0; cb < g.nb; cb++)        /* (block, tap, lane), zero past C2 */
        for (int64_t k = 0; k < taps; k++)
            for (int t = 0; t < CB; t++) {
                const int64_t co = cb * CB + t;
                w2t[(cb * taps + k) * CB + t] = co < c2 ? w2[co * taps + k] : 0.0f;
            }
    for (int64_t t = 0; t < g.nb * CB; t++)
        b2p[t] = t < c2 ? b2[t] : 0.0f;
    const int64_t m1size = c1 * g.q1h * g.s1, a1size = c1 * g.q1h * g.q1w, fsize = c2 * g.q2h * g.q2w;
    for (int64_t b = 0; b < n; b++) {
        pad_image(&g, x + b * h * w, p);
        for (int64_t y = 0; y < g.ph; y++)
            for (int64_t xx = 0; xx < g.hw; xx++) {
                ev[y * g.hw + xx] = p[y * g.pw + 2 * xx];
                od[y * g.hw + xx] = p[y * g.pw + 2 * xx + 1];
            }
        float *mb = m1 + b * m1size;
        uint8_t *ab = a1 + b * a1size;
        memset(mb, 0, (size_t)m1size * sizeof(float));
        for (int64_t ch = 0; ch < c1; ch++)
            for (int64_t i = 0; i < g.q1h; i++) {
                block1_row(ev + 2 * i * g.hw, od + 2 * i * g.hw, g.hw, w1 + ch * K * K, b1[ch], g.q1w, vals, wins);
                memcpy(mb + (ch * g.q1h + i) * g.s1, vals, (size_t)g.q1w * sizeof(float));
                memcpy(ab + (ch * g.q1h + i) * g.q1w, wins, (size_t)g.q1w);
            }
        float *fb = feat + b * fsize;
        uint8_t *a2b = a2 + b * fsize;
        for (int64_t cb = 0; cb < g.nb; cb++)
            for (int64_t i = 0; i < g.q2h; i++)
                for (int64_t j = 0; j < g.q2w; j += 2) {
                    const int pair = j + 1 < g.q2w;
                    block2_windows(&g, mb, w2t, b2p, cb, i, j, pair, v2, wins);
                    for (int u = 0; u <= pair; u++)
                        for (int64_t t = 0; t < CB && cb * CB + t < c2; t++) {
                            const int64_t at = ((cb * CB + t) * g.q2h + i) * g.q2w + j + u;
                            fb[at] = v2[u * CB + t];
                            a2b[at] = wins[u * CB + t];
                        }
                }
    }
    free(p);
    free(wins);
    return 0;
}

/* Block 1's backward for one window whose winner code is k (NONE: adds zeros) and gradient gv: the 5 x 8
 * input patch under the winner times the gradient into acc; returns the gradient the bias takes. */
static inline float patch(float *restrict acc, const float *restrict pr, int64_t pw, int k, float gv, int64_t x0)
{
    const int live = k != NONE;
    const float gl = live ? gv : 0.0f;
    const float *restrict src = pr + ((k >> 1) & live) * pw + x0 + (k & live);
    for (int ky = 0; ky < K; ky++)
        for (int kx = 0; kx < 8; kx++)
            acc[ky * 8 + kx] += gl * src[ky * pw + kx];
    return gl;
}

/* gfeat: B x C2 x Q2H x Q2W, the features' gradient; x, w2 and the forward pass's m1, a1, a2. dw1 (C1 x 25),
 * db1, dw2 (C2 x C1 x 25), db2 overwritten. Returns 0, or 1 where scratch memory could not be had. */
int ln_convblocks_bwd(const float *restrict x, const float *restrict w2, const float *restrict m1,
                 const uint8_t *restrict a1, const uint8_t *restrict a2, const float *restrict gfeat,
                 float *restrict dw1, float *restrict db1, float *restrict dw2, float *restrict db2, int64_t n,
                 int64_t c1, int64_t c2, int64_t h, int64_t w, int64_t pad)
{
    const Geo g = geometry(n, c1, c2, h, w, pad);
    const int64_t m1size = c1 * g.q1h * g.s1, a1size = c1 * g.q1h * g.q1w, fsize = c2 * g.q2h * g.q2w;
    const int64_t rows1 = c1 * K * 8, rows2 = c2 * c1 * K * 8;    /* kernels as rows of 8 */
    const int64_t wins = g.q2h * g.q2w, dmsize = c1 * g.q1h * g.vr, zlen = 2 * g.vr + 8;
    const int64_t cap = c2 * g.q2w;                              /* winners per row of block 2's output */
    float *p = malloc((size_t)(g.ph * g.pw + dmsize + rows2 + rows1 + c1 + c2 + wins + c2 * c1 * K * zlen
                               + 2 * g.q2h * cap) * sizeof(float));
    int64_t *ys = malloc((size_t)(2 * wins + 2 * g.q2h * (1 + 2 * cap)) * sizeof(int64_t));
    if (!p || !ys) {
        free(p);
        free(ys);
        return 1;
    }
    float *dm = p + g.ph * g.pw, *acc2 = dm + dmsize, *acc1 = acc2 + rows2;
    float *bacc1 = acc1 + rows1, *bacc2 = bacc1 + c1, *gl = bacc2 + c2, *zr = gl + wins;
    float *rg = zr + c2 * c1 * K * zlen;
    int64_t *xs = ys + wins, *byrow = xs + wins, *rx = byrow + 2 * g.q2h, *rc = rx + 2 * g.q2h * cap;
    memset(acc2, 0, (size_t)(rows2 + rows1 + c1 + c2) * sizeof(float));
    for (int64_t r = 0; r < c2 * c1 * K; r++) {      /* each kernel row inside zeros: vr, 5 taps, vr + 3 */
        float *z = zr + r * zlen;
        memset(z, 0, (size_t)zlen * sizeof(float));
        memcpy(z + g.vr, w2 + r * K, K * sizeof(float));
    }
    for (int64_t b = 0; b < n; b++) {
        const float *mb = m1 + b * m1size, *gb = gfeat + b * fsize;
        const uint8_t *a2b = a2 + b * fsize, *a1b = a1 + b * a1size;
        memset(byrow, 0, (size_t)(2 * g.q2h) * sizeof(int64_t));
        for (int64_t co = 0; co < c2; co++) {             /* block 2: winners -> dw2, db2, block 1's maps */
            int64_t live = 0;                             /* the live windows, compacted: no branches below */
            for (int64_t i = 0; i < g.q2h; i++)
                for (int64_t j = 0; j < g.q2w; j++) {
                    const int64_t at = (co * g.q2h + i) * g.q2w + j;
                    const int k = a2b[at];
                    if (k == NONE)
                        continue;
                    gl[live] = gb[at];
                    ys[live] = 2 * i + (k >> 1);
                    xs[live] = 2 * j + (k & 1);
                    bacc2[co] += gb[at];
                    live++;
                }
            for (int64_t r = 0; r < c1 * K; r++) {        /* kernel row r = (ci, ky): its gradient */
                const float *restrict mr = mb + (r / K * g.q1h + r % K) * g.s1;
                v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};     /* four chains of sums */
                int64_t e = 0;
                for (; e + 3 < live; e += 4) {
                    s0 += gl[e] * ld8(mr + ys[e] * g.s1 + xs[e]);
                    s1 += gl[e + 1] * ld8(mr + ys[e + 1] * g.s1 + xs[e + 1]);
                    s2 += gl[e + 2] * ld8(mr + ys[e + 2] * g.s1 + xs[e + 2]);
                    s3 += gl[e + 3] * ld8(mr + ys[e + 3] * g.s1 + xs[e + 3]);
                }
                for (; e < live; e++)
                    s0 += gl[e] * ld8(mr + ys[e] * g.s1 + xs[e]);
                s0 = (s0 + s1) + (s2 + s3);
                float *restrict da = acc2 + (co * c1 * K + r) * 8;
                st8(da, ld8(da) + s0);
            }
            for (int64_t e = 0; e < live; e++) {          /* the winners by row, for block 1's maps below */
                const int64_t y = ys[e], q = byrow[y]++;
                rg[y * cap + q] = gl[e];
                rx[y * cap + q] = xs[e];
                rc[y * cap + q] = co;
            }
        }
        /* block 1's map gradient, row by row in registers: each winner adds its kernel row (ci, R - y) at its
         * column, a load from the row's zero-padded copy; no memory is updated twice */
        for (int64_t c0 = 0; c0 < c1; c0 += 2) {         /* two channels at a time (the last twice if odd) */
            const int64_t cj = c0 + 1 < c1 ? c0 + 1 : c0;
            for (int64_t rr = 0; rr < g.q1h; rr++)
                for (int64_t t = 0; t < g.vr; t += 16) {
                    v16 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};      /* channel c0 / cj, even / odd winners */
                    for (int64_t y = rr - (K - 1) > 0 ? rr - (K - 1) : 0; y <= rr && y < 2 * g.q2h; y++) {
                        const float *ga = rg + y * cap;
                        const int64_t *xa = rx + y * cap, *ca = rc + y * cap, nq = byrow[y];
                        const int64_t zo = (rr - y) * zlen + g.vr + t;
                        int64_t q = 0;
                        for (; q + 1 < nq; q += 2) {
                            const float *z0 = zr + ca[q] * c1 * K * zlen + zo - xa[q];
                            const float *z1 = zr + ca[q + 1] * c1 * K * zlen + zo - xa[q + 1];
                            a0 += ga[q] * ld16(z0 + c0 * K * zlen);
                            b0 += ga[q] * ld16(z0 + cj * K * zlen);
                            a1 += ga[q + 1] * ld16(z1 + c0 * K * zlen);
                            b1 += ga[q + 1] * ld16(z1 + cj * K * zlen);
                        }
                        if (q < nq) {
                            const float *z0 = zr + ca[q] * c1 * K * zlen + zo - xa[q];
                            a0 += ga[q] * ld16(z0 + c0 * K * zlen);
                            b0 += ga[q] * ld16(z0 + cj * K * zlen);
                        }
                    }
                    st16(dm + (c0 * g.q1h + rr) * g.vr + t, a0 + a1);
                    st16(dm + (cj * g.q1h + rr) * g.vr + t, b0 + b1);
                }
        }
        pad_image(&g, x + b * h * w, p);                  /* block 1: winners -> dw1, db1 */
        for (int64_t ch = 0; ch < c1; ch++) {             /* no branches: half the windows are dead */
            float e0[K * 8] = {0}, e1[K * 8] = {0}, bs0 = 0.0f, bs1 = 0.0f;   /* even / odd windows */
            for (int64_t i = 0; i < g.q1h; i++) {
                const uint8_t *ar = a1b + (ch * g.q1h + i) * g.q1w;
                const float *gr = dm + (ch * g.q1h + i) * g.vr;
                const float *pr = p + 2 * i * g.pw;
                int64_t j = 0;
                for (; j + 1 < g.q1w; j += 2) {
                    bs0 += patch(e0, pr, g.pw, ar[j], gr[j], 2 * j);
                    bs1 += patch(e1, pr, g.pw, ar[j + 1], gr[j + 1], 2 * j + 2);
                }
                if (j < g.q1w)
                    bs0 += patch(e0, pr, g.pw, ar[j], gr[j], 2 * j);
            }
            for (int e = 0; e < K * 8; e++)
                acc1[ch * K * 8 + e] += e0[e] + e1[e];
            bacc1[ch] += bs0 + bs1;
        }
    }
    for (int64_t r = 0; r < c1 * K; r++)
        for (int kx = 0; kx < K; kx++)
            dw1[r * K + kx] = acc1[r * 8 + kx];
    for (int64_t r = 0; r < c2 * c1 * K; r++)
        for (int kx = 0; kx < K; kx++)
            dw2[r * K + kx] = acc2[r * 8 + kx];
    memcpy(db1, bacc1, (size_t)c1 * sizeof(float));
    memcpy(db2, bacc2, (size_t)c2 * sizeof(float));
    free(p);
    free(ys);
    return 0;
}
