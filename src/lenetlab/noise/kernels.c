/* Kernels of the noise sweep's stacked forwards (lenetlab.noise.kernels): a 2x2 max-pool and a ReLU, each
 * with the noise of its output site added in the same pass.
 *
 * The rows of x are k copies of a piece of `rows` rows (copy kk at sigma f[kk]); z holds the piece's standard
 * normals, shared by the copies. The arithmetic is torch's, so the results equal the torch path's bit for bit
 * (tests/test_noise_fast.py): torch.maximum (NaN wins; where -0 and +0 tie the sign of the zero may differ
 * from torch's vector code, no value does) for the pool, rows first and then columns; clamp_min(x, 0) (NaN
 * and -0 kept) for ReLU; torch.addcmul(y, z, factor) is one fused multiply-add in torch's AVX2 / AVX-512
 * kernels, y + z * factor rounded once (fmaf; the sweep checks that torch's rounds once before it lets these
 * kernels add noise: lenetlab.noise.kernels.fma_like_torch); relative noise scales by max|y| over the row's output
 * (a NaN anywhere gives NaN), factor = f[kk] * max|y| rounded to float first.
 *
 * mode 0: no noise (z, f unused); 1: absolute, y + z * f[kk]; 2: relative, y + z * (f[kk] * max|y|).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Written as selects the compiler vectorises. */
static inline float max_t(float a, float b)    /* torch.maximum without NaN (a tie keeps a) */
{
    return b > a ? b : a;
}

/* torch's 2x2 pool, rows first: maximum(maximum(a0, b0), maximum(a1, b1)), where maximum gives NaN if either
 * operand is NaN (then the sum of all four is NaN too) */
static inline float pool4(float a0, float a1, float b0, float b1)
{
    const float m = max_t(max_t(a0, b0), max_t(a1, b1));
    const int nan = __builtin_isunordered(a0, b0) | __builtin_isunordered(a1, b1);
    return nan ? (a0 + b0) + (a1 + b1) : m;
}

static inline float absmax_t(float m, float v)  /* amax of |v|, NaN propagated */
{
    const float a = fabsf(v);
    const float r = a > m ? a : m;
    return (a != a || m != m) ? a + m : r;
}

/* The noise of an output site on one output row of n values: mode 1 absolute, 2 relative (see above). */
static void noise_row(float *restrict o, int64_t n, const float *restrict zr, float fac, int mode)
{
    if (mode == 0)
        return;
    if (mode == 2) {
        float m = 0.0f;
        for (int64_t i = 0; i < n; i++)
            m = absmax_t(m, o[i]);
        fac = fac * m;
    }
    for (int64_t i = 0; i < n; i++)
        o[i] = fmaf(zr[i], fac, o[i]);
}

/* x: (k*rows, planes, H, W), out: (k*rows, planes, H/2, W/2), z: (rows, planes, H/2, W/2); all contiguous. */
void ln_pool2x2(const float *restrict x, float *restrict out, const float *restrict z, const float *restrict f,
                int64_t k, int64_t rows, int64_t planes, int64_t H, int64_t W, int mode)
{
    const int64_t h = H / 2, w = W / 2, per_row = planes * h * w;
    for (int64_t kk = 0; kk < k; kk++) {
        for (int64_t r = 0; r < rows; r++) {
            const int64_t row = kk * rows + r;
            float *o = out + row * per_row;
            for (int64_t p = 0; p < planes; p++) {
                const float *xp = x + (row * planes + p) * H * W;
                float *op = o + p * h * w;
                for (int64_t i = 0; i < h; i++) {
                    const float *a = xp + 2 * i * W, *b = a + W;
                    float *oi = op + i * w;
                    for (int64_t j = 0; j < w; j++)
                        oi[j] = pool4(a[2 * j], a[2 * j + 1], b[2 * j], b[2 * j + 1]);
                }
            }
            noise_row(o, per_row, z + r * per_row, mode ? f[kk] : 0.0f, mode);
        }
    }
}

/* ln_pool2x2 of an input that is never written out: x[kk*rows + r] = fmaf(v[r], g[kk*rows + r], base[r])
 * (the first layer's output: its clean values plus each copy's noise; v NULL: x[kk*rows + r] = base[r]).
 * base, v: (rows, planes, H, W); g: k*rows factors. */
void ln_pool2x2_fma(const float *restrict base, const float *restrict v, const float *restrict g,
                    float *restrict out, const float *restrict z, const float *restrict f,
                    int64_t k, int64_t rows, int64_t planes, int64_t H, int64_t W, int mode)
{
    const int64_t h = H / 2, w = W / 2, per_row = planes * h * w;
    for (int64_t kk = 0; kk < k; kk++) {
        for (int64_t r = 0; r < rows; r++) {
            const int64_t row = kk * rows + r;
            const float gr = v != NULL ? g[row] : 0.0f;
            float *o = out + row * per_row;
            for (int64_t p = 0; p < planes; p++) {
                const float *bp = base + (r * planes + p) * H * W;
                float *op = o + p * h * w;
                if (v == NULL) {
                    for (int64_t i = 0; i < h; i++) {
                        const float *a = bp + 2 * i * W, *b = a + W;
                        for (int64_t j = 0; j < w; j++)
                            op[i * w + j] = pool4(a[2 * j], a[2 * j + 1], b[2 * j], b[2 * j + 1]);
                    }
                    continue;
                }
                const float *vp = v + (r * planes + p) * H * W;
                for (int64_t i = 0; i < h; i++) {
                    const float *a = bp + 2 * i * W, *b = a + W, *c = vp + 2 * i * W, *d = c + W;
                    for (int64_t j = 0; j < w; j++)
                        op[i * w + j] = pool4(fmaf(c[2 * j], gr, a[2 * j]), fmaf(c[2 * j + 1], gr, a[2 * j + 1]),
                                              fmaf(d[2 * j], gr, b[2 * j]), fmaf(d[2 * j + 1], gr, b[2 * j + 1]));
                }
            }
            noise_row(o, per_row, z + r * per_row, mode ? f[kk] : 0.0f, mode);
        }
    }
}

/* x, out: (k*rows, n) (any shape with that many values per row), z: (rows, n). out may be x. */
void ln_relu(const float *x, float *out, const float *restrict z, const float *restrict f, int64_t k,
             int64_t rows, int64_t n, int mode)
{
    for (int64_t kk = 0; kk < k; kk++) {
        for (int64_t r = 0; r < rows; r++) {
            const int64_t row = kk * rows + r;
            const float *xr = x + row * n;
            float *o = out + row * n;
            for (int64_t i = 0; i < n; i++)
                o[i] = xr[i] < 0.0f ? 0.0f : xr[i];
            noise_row(o, n, z + r * n, mode ? f[kk] : 0.0f, mode);
        }
    }
}
