/* Native propagation of fault effects through the rest of an int8 flat model (lenetlab.faults.native).
 *
 * Given, for a batch of (fault, image) pairs, the outputs of one stage that a fault changed (sparse: unit
 * index and new value), this runs the rest of the network as exact integer deltas against the fault-free
 * caches and returns, per pair, whether the top-1 class differs from the fault-free one (an SDC).
 *
 * It computes exactly what lenetlab.quant.int8 computes (tested bit for bit against the naive oracle):
 *   - accumulators: the fault-free int64 accumulator plus the exact change sum(dv * w) of the changed
 *     inputs (int32 sums; the Python side checks fan_in * 255 * 128 < 2^31 so they cannot overflow);
 *   - requantisation: sign(a) * ((|a| * M + 2^(n-1)) >> n) in unsigned 64 bits, clamped to int8 or int32;
 *   - activations: 256-entry tables (consecutive ACT layers composed into one on the Python side);
 *   - 2x2 stride-2 max / average pooling (average: sign(s) * ((|s| + 2) >> 2) of the block sum), floor mode;
 *   - argmax: the first largest logit, as numpy.argmax.
 * Only changed values travel: a pair whose changes all vanish at a stage boundary is masked (not an SDC).
 *
 * No global state; every buffer is allocated per call. C99, no dependencies.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t op;              /* 0 conv, 1 dense */
    int32_t rows;            /* R output channels */
    int32_t positions;       /* P output positions (1 for dense) */
    int32_t d_in;            /* inputs of this stage */
    int32_t out_bits;        /* 8 or 32 */
    int32_t has_pool;        /* post layers: pre-pool table, optional 2x2 pool, post-pool table */
    int32_t pool_avg;
    int32_t pool_c, pool_h, pool_w;
    int32_t d_next;          /* size of the next stage's input (after the post layers) */
    int32_t rows_pad;        /* R rounded up to a multiple of 16: the row stride of wt and of the changes */
    const int32_t *wt;       /* conv: (K, rows_pad) tap-major; dense: (d_in, rows_pad) input-major, zero padded */
    const int32_t *feed_off; /* conv: (d_in + 1) offsets into feed_p / feed_k */
    const int32_t *feed_p;
    const int32_t *feed_k;
    const int64_t *mult;     /* (R,) */
    const int64_t *shift;    /* (R,) */
    const int64_t *acc;      /* fault-free accumulators (M, R, P) */
    const int64_t *out;      /* fault-free outputs (M, R * P) */
    const int64_t *in;       /* fault-free inputs (M, d_in) */
    const int64_t *acc_t;    /* the same accumulators position-major (M, P, R) */
    const int64_t *out_t;    /* the same outputs position-major (M, P, R) */
    const int32_t *gather;   /* conv: (K, P) input unit read by tap k at position p, d_in = the zero cell */
    int64_t fan_in;          /* K */
    const int32_t *win_of;   /* pool: the window each output unit falls in, -1 if cropped (R * P) */
    const int32_t *win_base; /* pool: each window's top-left output unit (d_next) */
    const int8_t *out8;      /* pool: the fault-free outputs as int8 (M, R * P) */
    const int64_t *in_z;     /* the inputs with a zero cell appended (M, d_in + 1) */
    const int32_t *lut_pre;  /* 256 entries or NULL: the ACT layers before the pool (or all of them) */
    const int32_t *lut_post; /* 256 entries or NULL: the ACT layers after the pool */
} lf_stage;

/* d[0..rp) += dv * wr[0..rp), rp a multiple of 16: fixed-width blocks the compiler turns into vector code */
static inline void axpy16(int32_t *restrict d, const int32_t *restrict wr, int32_t dv, int32_t rp)
{
    for (int32_t r0 = 0; r0 < rp; r0 += 16)
        for (int32_t r = 0; r < 16; r++) d[r0 + r] += dv * wr[r0 + r];
}

static int64_t table(const int32_t *t, int64_t v) { return t ? (int64_t)t[v + 128] : v; }

static int64_t pool4(int avg, int64_t a, int64_t b, int64_t c, int64_t d)
{
    if (!avg) {
        int64_t m = a > b ? a : b, n = c > d ? c : d;
        return m > n ? m : n;
    }
    int64_t s = (a + b) + (c + d);
    int64_t r = ((s < 0 ? -s : s) + 2) >> 2;
    return s < 0 ? -r : r;
}

typedef struct {
    int8_t *y;         /* a stage's outputs with the changes applied (max R * P) */
    int32_t *delta;    /* accumulator changes, position-major (max P * R) */
    int32_t *cu;       /* current changes: unit, value */
    int64_t *cv;
    int32_t *nu;       /* next changes */
    int64_t *nv;
    uint8_t *mark;     /* touched positions (max P) */
    uint8_t *wmark;    /* touched pool windows (max windows), slot maxbuf: cropped units, always set */
    int32_t *list;
    int64_t *q;        /* one position's requantised outputs (max R) */
    int64_t *half;     /* 2^(n-1) per row of the current stage */
} lf_work;

/* The post layers of stage s on the changed outputs (n of them, in w->cu / w->cv; y holds the full outputs
 * with the changes applied): the next stage's input changes (unit, dv) into w->nu / w->nv. */
static int32_t next_input(const lf_stage *st, int64_t img, int32_t n, lf_work *w)
{
    const int64_t *nxt = (st + 1)->in + img * (int64_t)st->d_next;
    int32_t k = 0;
    if (!st->has_pool) {
        for (int32_t e = 0; e < n; e++) {
            int64_t v = table(st->lut_post, table(st->lut_pre, w->cv[e]));
            int64_t dv = v - nxt[w->cu[e]];
            if (dv) { w->nu[k] = w->cu[e]; w->nv[k] = dv; k++; }
        }
        return k;
    }
    int32_t wd = st->pool_w, nw = 0, size = st->rows * st->positions;
    memcpy(w->y, st->out8 + img * (int64_t)size, (size_t)size);
    for (int32_t e = 0; e < n; e++) {        /* branch-free: the window list grows by its new windows */
        int32_t u = w->cu[e], win = st->win_of[u];
        w->y[u] = (int8_t)w->cv[e];
        int32_t fresh = !w->wmark[win];
        w->wmark[win] = 1;
        w->list[nw] = win;
        nw += fresh;
    }
    const int32_t *lp = st->lut_pre;
    for (int32_t q = 0; q < nw; q++) {
        int32_t win = w->list[q];
        const int8_t *b = w->y + st->win_base[win];
        int64_t v = lp ? pool4(st->pool_avg, lp[b[0] + 128], lp[b[1] + 128], lp[b[wd] + 128], lp[b[wd + 1] + 128])
                       : pool4(st->pool_avg, b[0], b[1], b[wd], b[wd + 1]);
        v = table(st->lut_post, v);
        w->wmark[win] = 0;
        int64_t dv = v - nxt[win];
        w->nu[k] = win;
        w->nv[k] = dv;
        k += dv != 0;
    }
    return k;
}

/* The touched positions w->list[0..np) of stage st (accumulator changes in w->delta, position-major): the
 * outputs that requantise differently, into w->cu / w->cv */
static int32_t requant_positions(const lf_stage *st, int64_t img, int32_t np_, lf_work *w)
{
    int32_t R = st->rows, P = st->positions, k = 0;
    const int64_t *acc_t = st->acc_t + img * (int64_t)R * P;
    const int64_t *out_t = st->out_t + img * (int64_t)R * P;
    int64_t lo = st->out_bits == 8 ? -128 : -2147483648LL, hi = st->out_bits == 8 ? 127 : 2147483647LL;
    int64_t *q = w->q;
    for (int32_t r = 0; r < R; r++) w->half[r] = (int64_t)1 << (st->shift[r] - 1);
    for (int32_t t = 0; t < np_; t++) {
        int32_t p = w->list[t];
        const int32_t *d = w->delta + (int64_t)p * st->rows_pad;
        const int64_t *a0 = acc_t + (int64_t)p * R;
        if (st->op == 0) w->mark[p] = 0;
        for (int32_t r = 0; r < R; r++) {         /* branch-free, so the compiler can vectorise it */
            int64_t a = a0[r] + d[r];
            uint64_t neg = (uint64_t)(a >> 63);
            uint64_t mag = ((uint64_t)a ^ neg) - neg;
            uint64_t v = (mag * (uint64_t)st->mult[r] + (uint64_t)w->half[r]) >> (uint64_t)st->shift[r];
            int64_t sv = (int64_t)((v ^ neg) - neg);
            sv = sv < lo ? lo : sv;
            q[r] = sv > hi ? hi : sv;
        }
        const int64_t *o = out_t + (int64_t)p * R;
        for (int32_t r = 0; r < R; r++) {        /* branch-free append of the changed outputs */
            w->cu[k] = r * P + p;
            w->cv[k] = q[r];
            k += q[r] != o[r];
        }
    }
    return k;
}

/* Stage s's outputs for one image given its input changes (w->nu / w->nv, n of them): the changed outputs
 * into w->cu / w->cv (returns their count). */
static int32_t stage_changes(const lf_stage *st, int64_t img, int32_t n, lf_work *w)
{
    int32_t Rp = st->rows_pad, np_ = 0;
    if (st->op == 1) {                                  /* dense: P == 1 */
        int32_t *d = w->delta;
        memset(d, 0, sizeof(int32_t) * (size_t)Rp);
        for (int32_t e = 0; e < n; e++) axpy16(d, st->wt + (int64_t)w->nu[e] * Rp, (int32_t)w->nv[e], Rp);
        w->list[np_++] = 0;
    } else {
        memset(w->delta, 0, sizeof(int32_t) * (size_t)Rp * (size_t)st->positions);
        for (int32_t e = 0; e < n; e++) {
            int32_t u = w->nu[e], dv = (int32_t)w->nv[e];
            for (int32_t f = st->feed_off[u]; f < st->feed_off[u + 1]; f++) {
                int32_t p = st->feed_p[f];
                int32_t fresh = !w->mark[p];
                w->mark[p] = 1;
                w->list[np_] = p;
                np_ += fresh;
                axpy16(w->delta + (int64_t)p * Rp, st->wt + (int64_t)st->feed_k[f] * Rp, dv, Rp);
            }
        }
    }
    return requant_positions(st, img, np_, w);
}

static int64_t argmax_changed(const lf_stage *st, int64_t img, int32_t n, lf_work *w)
{
    int32_t R = st->rows * st->positions;
    int64_t *y = w->q;
    memcpy(y, st->out + img * (int64_t)R, sizeof(int64_t) * (size_t)R);
    for (int32_t e = 0; e < n; e++) y[w->cu[e]] = w->cv[e];
    int64_t best = 0;
    for (int32_t r = 1; r < R; r++)
        if (y[r] > y[best]) best = r;
    return best;
}

static void work_free(lf_work *w)
{
    free(w->y); free(w->delta); free(w->cu); free(w->cv); free(w->nu); free(w->nv); free(w->mark); free(w->wmark); free(w->list);
    free(w->q); free(w->half);
}

static int work_alloc(lf_work *w, int64_t maxbuf)
{
    size_t mb = (size_t)maxbuf;
    w->y = malloc(mb);
    w->delta = malloc(sizeof(int32_t) * mb);
    w->cu = malloc(sizeof(int32_t) * mb);
    w->cv = malloc(sizeof(int64_t) * mb);
    w->nu = malloc(sizeof(int32_t) * mb);
    w->nv = malloc(sizeof(int64_t) * mb);
    w->mark = calloc(mb, 1);
    w->wmark = calloc(mb + 1, 1);
    if (w->wmark) w->wmark[mb] = 1;
    w->list = malloc(sizeof(int32_t) * mb);
    w->q = malloc(sizeof(int64_t) * 2 * mb);
    w->half = malloc(sizeof(int64_t) * mb);
    if (w->y && w->delta && w->cu && w->cv && w->nu && w->nv && w->mark && w->wmark && w->list && w->q && w->half) return 0;
    work_free(w);
    return -1;
}

/* Stage s's outputs of image m changed at w->cu / w->cv (n entries): carry the
 * change to the logits. Returns 1 for an SDC. */
static uint8_t carry(const lf_stage *stages, int32_t n_stages, int32_t s, int64_t m, int32_t n,
                     const int64_t *pred, lf_work *w)
{
    while (n > 0) {
        if (s == n_stages - 1) return argmax_changed(stages + s, m, n, w) != pred[m];
        n = next_input(stages + s, m, n, w);
        s++;
        if (n == 0) break;
        n = stage_changes(stages + s, m, n, w);
    }
    return 0;
}

/* For pairs i = 0..n_pairs-1: image img[i]; the outputs of stage `start` changed at units
 * units[off[i] .. off[i+1]) to vals[...]. sdc[i] = 1 if the logits' top-1 differs from pred[img[i]].
 * `maxbuf` bounds R * P, d_in and pool windows over all stages. Returns 0, or -1 if out of memory. */
int lf_propagate(const lf_stage *stages, int32_t n_stages, int32_t start, int64_t maxbuf, const int64_t *pred,
                 int64_t n_pairs, const int64_t *img, const int64_t *off, const int32_t *units,
                 const int64_t *vals, uint8_t *sdc)
{
    lf_work w;
    if (work_alloc(&w, maxbuf)) return -1;
    for (int64_t i = 0; i < n_pairs; i++) {
        int64_t m = img[i];
        int32_t n = (int32_t)(off[i + 1] - off[i]);
        for (int32_t e = 0; e < n; e++) {
            w.cu[e] = units[off[i] + e];
            w.cv[e] = vals[off[i] + e];
        }
        sdc[i] = carry(stages, n_stages, start, m, n, pred, &w);
    }
    work_free(&w);
    return 0;
}

/* Weight faults of stage j (conv or dense): fault f adds dw[f] (the corrupted minus the stored weight) to
 * weight (row[f], tap[f]). For every fault and each of the M images: sdc[f * M + i]. */
int lf_weight_faults(const lf_stage *stages, int32_t n_stages, int32_t j, int64_t maxbuf, const int64_t *pred,
                     int64_t n_faults, const int64_t *row, const int64_t *tap, const int64_t *dw, int64_t n_images,
                     uint8_t *sdc)
{
    lf_work w;
    if (work_alloc(&w, maxbuf)) return -1;
    const lf_stage *st = stages + j;
    int32_t P = st->positions, R = st->rows;
    int64_t lo = st->out_bits == 8 ? -128 : -2147483648LL, hi = st->out_bits == 8 ? 127 : 2147483647LL;
    for (int64_t m = 0; m < n_images; m++) {          /* images outer: one image's caches stay hot */
        for (int64_t f = 0; f < n_faults; f++) {
            int64_t r = row[f], k = tap[f], mult = st->mult[r], shift = st->shift[r];
            uint64_t half = (uint64_t)1 << (uint64_t)(shift - 1);
            uint8_t *res = sdc + f * n_images + m;
            *res = 0;
            if (!dw[f]) continue;
            const int64_t *x = st->in_z + m * (int64_t)(st->d_in + 1);
            const int64_t *acc = st->acc + (m * R + r) * (int64_t)P;
            const int64_t *out = st->out + (m * R + r) * (int64_t)P;
            int64_t *xs = w.q, *qv = w.q + P, d = dw[f];
            for (int32_t p = 0; p < P; p++)                /* x[d_in] is the zero (padding) cell */
                xs[p] = x[st->op == 0 ? st->gather[k * P + p] : k];
            for (int32_t p = 0; p < P; p++) {             /* branch-free, vectorisable requantisation */
                int64_t a = acc[p] + d * xs[p];
                uint64_t neg = (uint64_t)(a >> 63);
                uint64_t mag = ((uint64_t)a ^ neg) - neg;
                uint64_t v = (mag * (uint64_t)mult + half) >> (uint64_t)shift;
                int64_t sv = (int64_t)((v ^ neg) - neg);
                sv = sv < lo ? lo : sv;
                qv[p] = sv > hi ? hi : sv;
            }
            int32_t n = 0;
            for (int32_t p = 0; p < P; p++) {
                w.cu[n] = (int32_t)(r * P + p);
                w.cv[n] = qv[p];
                n += qv[p] != out[p];
            }
            if (!n) continue;
            *res = carry(stages, n_stages, j, m, n, pred, &w);
        }
    }
    work_free(&w);
    return 0;
}

/* Input (activation) faults of stage j (conv or dense): fault f makes input unit[f] read v[f * M + m] on image
 * m. For every fault and image: sdc[f * M + m]. */
int lf_input_faults(const lf_stage *stages, int32_t n_stages, int32_t j, int64_t maxbuf, const int64_t *pred,
                    int64_t n_faults, const int64_t *unit, const int64_t *v, int64_t n_images, uint8_t *sdc)
{
    lf_work w;
    if (work_alloc(&w, maxbuf)) return -1;
    const lf_stage *st = stages + j;
    int32_t Rp = st->rows_pad;
    for (int64_t m = 0; m < n_images; m++) {          /* images outer: one image's caches stay hot */
        for (int64_t f = 0; f < n_faults; f++) {
            int32_t u = (int32_t)unit[f];
            uint8_t *res = sdc + f * n_images + m;
            int32_t dv = (int32_t)(v[f * n_images + m] - st->in[m * (int64_t)st->d_in + u]);
            *res = 0;
            if (!dv) continue;
            int32_t np_ = 0;
            if (st->op == 1) {
                const int32_t *wr = st->wt + (int64_t)u * Rp;
                for (int32_t r = 0; r < Rp; r++) w.delta[r] = dv * wr[r];
                w.list[np_++] = 0;
            } else {
                for (int32_t e = st->feed_off[u]; e < st->feed_off[u + 1]; e++) {
                    int32_t p = st->feed_p[e];
                    int32_t *d = w.delta + (int64_t)p * Rp;
                    const int32_t *wr = st->wt + (int64_t)st->feed_k[e] * Rp;
                    for (int32_t r = 0; r < Rp; r++) d[r] = dv * wr[r];
                    w.list[np_++] = p;
                }
            }
            int32_t n = requant_positions(st, m, np_, &w);
            if (n) *res = carry(stages, n_stages, j, m, n, pred, &w);
        }
    }
    work_free(&w);
    return 0;
}
