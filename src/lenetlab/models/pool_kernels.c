/* The forward pass of 2x2 max-pooling (stride 2, floor) for training: the maxima and, for torch's backward
 * kernel (max_pool2d_with_indices_backward), the index of each winner in its H x W plane
 * (lenetlab.models.pooling). The rule is torch's max_pool2d on the CPU: scan the window row by row and take
 * a value if it is greater than the best so far or if it is NaN, so the first of tied maxima wins and the
 * last NaN wins. Computed here in two steps, first within each row of the window and then between the rows'
 * winners, which picks the same element (the first maximum in row-major order, or the last NaN), and it
 * always moves the chosen element itself, so even the sign of a zero is torch's.
 *
 * Channels-last maps only (torch's kernel for those vectorises over the channels and so crawls where their
 * number is not a multiple of the vector width, e.g. LeNet-5's 6): a row of the map is W * C floats,
 * horizontal neighbours C apart. Every step is a pass over contiguous arrays with selects, which compilers
 * turn into vector blends. */
#include <stdint.h>
#include <stdlib.h>

/* One output row: top and bottom input rows, horizontal neighbours `unit` apart, w windows; writes w * unit
 * values and choices. rt/kt/rb scratch of (2w - 1) * unit entries. */
static void pool_row(const float *restrict top, const float *restrict bot, int64_t unit, int64_t w,
                     int64_t y, int64_t W, float *restrict out, int64_t *restrict arg, float *restrict rt,
                     uint8_t *restrict kt, float *restrict rb, uint8_t *restrict kb)
{
    const int64_t len = (2 * w - 1) * unit;
    for (int64_t p = 0; p < len; p++) {           /* within each row: left, then right if greater or NaN */
        const float a = top[p], b = top[p + unit], c = bot[p], d = bot[p + unit];
        const int tr = (b > a) | (b != b), br = (d > c) | (d != d);
        rt[p] = tr ? b : a;
        kt[p] = (uint8_t)tr;
        rb[p] = br ? d : c;
        kb[p] = (uint8_t)(2 + br);
    }
    for (int64_t p = 0; p < len; p++) {           /* the top row's winner, then the bottom's if greater or NaN */
        const float a = rt[p], b = rb[p];
        const int t = (b > a) | (b != b);
        rt[p] = t ? b : a;
        kt[p] = t ? kb[p] : kt[p];
    }
    for (int64_t z = 0; z < w; z++)               /* window z starts at 2 z unit */
        for (int64_t u = 0; u < unit; u++) {
            const int k = kt[2 * z * unit + u];
            out[z * unit + u] = rt[2 * z * unit + u];
            arg[z * unit + u] = (2 * y + (k >> 1)) * W + 2 * z + (k & 1);   /* torch's index: in the H x W plane */
        }
}

/* x: (n, c, H, W) channels-last; out and arg (n, c, H/2, W/2) channels-last. Returns 0, or -1 when the
 * scratch memory cannot be had. */
int ln_maxpool2x2_fwd(const float *x, float *out, int64_t *arg, int64_t n, int64_t c, int64_t H, int64_t W)
{
    const int64_t h = H / 2, w = W / 2;
    if (h == 0 || w == 0)
        return 0;
    const int64_t unit = c, len = (2 * w - 1) * unit;
    float *rt = malloc((size_t)len * 2 * sizeof(float));
    uint8_t *kt = malloc((size_t)len * 2);
    if (rt == NULL || kt == NULL) {
        free(rt);
        free(kt);
        return -1;
    }
    const int64_t in_row = W * unit, out_row = w * unit;
    for (int64_t q = 0; q < n; q++)
        for (int64_t y = 0; y < h; y++) {
            const float *top = x + (q * H + 2 * y) * in_row;
            const int64_t o = (q * h + y) * out_row;
            pool_row(top, top + in_row, unit, w, y, W, out + o, arg + o, rt, kt, rt + len, kt + len);
        }
    free(rt);
    free(kt);
    return 0;
}
