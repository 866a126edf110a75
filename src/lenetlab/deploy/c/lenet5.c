/*
 * lenet5.c - loader and interpreter for lenetlab flat model files.
 *
 * The spec is docs/flat-format.md (version 1); section names below ("Header",
 * "Validation", "int8 files", ...) refer to it. The reference semantics are
 * lenetlab/deploy/runtime.py (NumPy) and the reference validation is
 * lenetlab/deploy/flat.py (decode): this loader makes the same checks in the
 * same order, so it accepts exactly the files decode accepts - except a valid
 * model too large for this build's static buffers (LENET5_E_LIMIT).
 *
 * Design
 *  - No malloc. The blob is copied into a static buffer (aligned for f32/i32,
 *    so no unaligned access); activations live in static ping-pong buffers
 *    (for the multi-threaded calls' helper threads: in the caller's workspace).
 *  - Every multi-byte header/record field is read byte by byte, so validation
 *    is independent of host byte order and alignment; the arrays in the blob
 *    are then used in place, which needs a little-endian host (checked).
 *  - Maps are flat arrays, element (c, y, x) of a C x H x W map at c*H*W + y*W + x
 *    (the spec's opening paragraph).
 *  - Convolutions run "wide": output row i of channel o is computed over the
 *    full padded input width Wp, so that for a kernel tap (c, u, v) the whole
 *    output plane is one contiguous axpy over x[c][u*Wp + v + p], p = i*Wp + j.
 *    The columns j >= out_w are garbage and dropped when the plane is copied
 *    out. Inner loops are therefore long, contiguous and branch-free, which
 *    gcc vectorises (-O3); a 5 x 5 kernel (LeNet-5's) is one pass per
 *    (o, c) pair in float32, one pass per kernel row in int8. A float CONV
 *    with a 1 x 1 output (C5) runs as a DENSE layer instead.
 *  - Float CONVs without a connection table run register-blocked instead
 *    (GCC/clang vector types, LENET5_VEC): MODE_ROWS, the wide plane for 6
 *    output channels x 16 positions at a time (C1), or MODE_LANES, 16 output
 *    channels in the vector lanes x 5 output positions (C3); either way the
 *    sums stay in registers for the whole kernel, so the loops run at the
 *    multiply-add rate instead of the load/store rate.
 *  - Float DENSE/ACT/RBF layers at the end (F5-F7) run on 8 images at a time
 *    (the tail, run_range): each weight row fetched from L2 serves 8 images;
 *    each image's sums keep the single-image order, so grouping changes no bit.
 *  - With -DLENET5_THREADS, lenet5_run_*_mt split a batch across POSIX
 *    threads: the calling thread uses the static buffers, each helper thread
 *    the same buffers (scratch_t) carved from a caller-owned workspace sized
 *    for the loaded model; nothing is allocated, nothing outlives the call,
 *    and every image runs the single-threaded code, so the bits are the same.
 *  - int8 maps are int8 arrays and everything is integer arithmetic. Sums of
 *    products fit in 32 bits because readers reject fan-ins over 65536 (spec,
 *    "int8 files"); the i32 bias is then added in 64 bits and the result
 *    requantised. A convolution runs either wide (int16 products, 16-bit
 *    lanes) or, for small output planes with long kernels, as dot products of
 *    im2col patches (u8 x s8, which gcc maps to vpdpbusd); DENSE layers are
 *    dot products too. prepare() picks per layer at load time.
 *  - Layer kernels never branch per element on the op; an int8 ACT that
 *    follows a layer is applied by that layer as it stores its output.
 *  - Optional AVX-512 paths (compiled in only when the target has them; the
 *    portable C is the fallback and the reference, and both give the same
 *    bits): with VNNI + BW, the u8 x s8 dots keep 16 output channels in the
 *    lanes of one vpdpbusd (dots16, weights re-laid at load by prep_lanes)
 *    and MAXPOOL runs in vectors; with VL + VBMI as well, requantisation and
 *    the ACT LUT (two vpermi2b) run 8 / 64 values an instruction.
 */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define LENET5_VNNI 1
#include <immintrin.h>
#endif
#include "lenet5.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#if CHAR_BIT != 8
#error "lenet5.c needs 8-bit bytes"
#endif
/* C99 compile-time checks: the blob's f32 arrays are used in place. */
typedef char lenet5_float_is_32_bits[sizeof(float) == 4 ? 1 : -1];

/* ------------------------------------------------------------------ format constants (spec) */
#define HEADER_BYTES 64u
#define RECORD_BYTES 64u
#define MAX_LAYERS 64u
#define MAX_DIM 1024u
#define MAX_MAP (1u << 20)
#define MAX_WORK (1u << 26) /* multiply-adds per layer per image */
#define MAX_FILE (64u * 1024u * 1024u)
#define NO_OFFSET 0xFFFFFFFFu

enum { OP_CONV = 1, OP_MAXPOOL = 2, OP_AVGPOOL = 3, OP_SUBSAMPLE = 4, OP_ACT = 5, OP_DENSE = 6, OP_RBF = 7 };
enum { ACT_IDENTITY, ACT_RELU, ACT_TANH, ACT_SIGMOID, ACT_SELU, ACT_SCALED_TANH, ACT_ABS, N_ACTS };
enum { A_W, A_B, A_T, A_M, A_S, N_ARRAYS }; /* the record's (offset, count) pairs, in order */

static const char *const OP_NAMES[8] = {"?", "conv", "maxpool", "avgpool", "subsample", "act", "dense", "rbf"};
static const char ARRAY_NAMES[N_ARRAYS] = {'w', 'b', 't', 'm', 's'};

/* ------------------------------------------------------------------ static storage */
/* Extra elements after every working buffer: the wide convolution reads up to
 * k-1 + 31 elements past the staged input (vector rounding), never more. */
#define SLACK 64u
#define CAP (LENET5_MAX_ACT + SLACK)

typedef struct {
    int op, act, out_bits, has_table;
    uint32_t ic, ih, iw, oc, oh, ow, k, pad;
    const void *arr[N_ARRAYS]; /* into g_blob, NULL when absent (count 0) */
    int wide_out;              /* int8: output kept as int32 (CONV/DENSE/SUBSAMPLE out_bits 32, RBF) */
    /* How the layer runs, chosen at load time by prepare(): */
    int mode;                  /* CONV: MODE_WIDE, MODE_DOT (int8), MODE_DENSE, MODE_LANES or MODE_ROWS (float) */
    int pair16;                /* int8 MODE_WIDE: every weight in [-127, 127] (see taps5_i8) */
    size_t kp;                 /* MODE_DOT: patch length in_c*k*k rounded up to 64 */
    const float *wt;           /* float DENSE / MODE_DENSE: w transposed to n x out_c; MODE_LANES: w in
                                  lane blocks, [out_c / LANES][in_c k k][LANES] (in g_prep) */
    const int8_t *wq;          /* MODE_DOT: w with rows padded to kp, 0 off the table (in g_prep) */
    const int32_t *wsum;       /* int8 MODE_DOT / DENSE: sum of each output channel's weights */
    const int8_t *wl;          /* int8 MODE_DOT / DENSE with VNNI: weights in 16-channel lane blocks (dots16) */
    size_t kl;                 /* length of the dots in wl, a multiple of 4 */
} layer_t;

enum { MODE_WIDE, MODE_DOT, MODE_DENSE, MODE_LANES, MODE_ROWS };

/* Register blocks of the float MODE_LANES / MODE_ROWS kernels, in vectors of
 * VW floats: 8 (AVX) or 4 (SSE, NEON, ...). The kernels are written with GCC
 * vector types (GCC and clang: LENET5_VEC), so that the sums provably stay in
 * registers; built with -DLENET5_NO_VEC or another compiler, every float CONV
 * runs MODE_WIDE / MODE_DENSE as plain C99 instead.
 *   MODE_LANES: LANES = 2 VW output channels x POS output positions;
 *   MODE_ROWS: ROWS_OC output channels x RP = 2 VW wide-plane positions. */
#if defined(__AVX__)
#define VW 8u
#else
#define VW 4u
#endif
#define LANES (2u * VW)
#define POS 5u
#define ROWS_OC 6u
#define RP (2u * VW)
#if (defined(__GNUC__) || defined(__clang__)) && !defined(LENET5_NO_VEC)
#define LENET5_VEC 1
typedef float vf __attribute__((vector_size(VW * 4u)));
#endif

static struct {
    int loaded, dtype;
    uint32_t n_layers, img_h, img_w, pad, num_classes;
    uint32_t in_h, in_w; /* padded input: img + 2 pad */
    float in_f32[256];   /* float files: a*p + b for every pixel value p (spec, Header) */
    float in_pad;        /* float files: the border value b */
    const int8_t *in_lut; /* int8 files: q = lut[p] */
    layer_t layers[MAX_LAYERS];
    size_t buf_bytes;     /* bytes each working buffer needs for this model (scratch_t) */
    uint32_t tail;        /* float files: first layer of the grouped tail (n_layers: none) */
    size_t tail_stride;   /* floats between a group's images in g_grp (0: no tail) */
} g_model;

/* The blob (a union so that f32/i32 arrays are correctly typed and aligned). */
static union {
    uint64_t align;
    float f[LENET5_MAX_FILE_BYTES / 4u + 1u];
    int32_t i[LENET5_MAX_FILE_BYTES / 4u + 1u];
    int8_t b[LENET5_MAX_FILE_BYTES + 4u];
    uint8_t u[LENET5_MAX_FILE_BYTES + 4u];
} g_blob;

/* Prepared copies of weights in the layouts the kernels want (prepare()). */
#define PREP_BYTES (LENET5_MAX_FILE_BYTES + 65536u * 4u + 64u)
static union {
    uint64_t align;
    float f[PREP_BYTES / 4u];
    int32_t i[PREP_BYTES / 4u];
    int8_t b[PREP_BYTES];
} g_prep;

/* A working buffer: CAP elements of 4 bytes, or 4 CAP bytes, viewed by type. */
typedef union {
    uint64_t align;
    float f[CAP];
    int32_t i[CAP];
    int16_t h[2u * CAP];
    int8_t b[4u * CAP];
    uint8_t u[4u * CAP];
} buffer_t;

static buffer_t g_act[2]; /* ping-pong activation maps */
static buffer_t g_stage;  /* zero-padded convolution input */
static buffer_t g_plane;  /* one convolution output plane (rows in the padded width), or im2col patches */
static buffer_t g_acc;    /* int32 sums of an int8 layer before requantisation */

/* Float files: the DENSE/ACT/RBF layers at the end of the model (the "tail",
 * LeNet-5's F5-F7) run on GROUP images at a time, so that each weight row
 * read from memory serves GROUP images (the tail's weights do not fit in L1).
 * Each image's sums are formed in the same order as for a group of one, so
 * the logits do not depend on how a batch is grouped. g_grp holds the group's
 * tail maps (ping-pong), GROUP x tail_stride floats each; a model whose tail
 * maps are too large for it runs image by image (tail = n_layers). */
#define GROUP 8u
#define GROUP_FLOATS 65536u
static float g_grp[2][GROUP_FLOATS];

/* The working buffers one inference uses. The single-threaded entry points
 * use the static buffers above (g_scratch); each helper thread of the
 * multi-threaded ones gets the same five buffers carved from the caller's
 * workspace, sized for the loaded model (g_model.buf_bytes each). The kernels
 * only ever touch what the model's shapes need, so both give the same bits. */
typedef struct {
    void *act[2];
    void *stage, *plane, *acc;
    float *grp[2];
} scratch_t;
static const scratch_t g_scratch = {{&g_act[0], &g_act[1]}, &g_stage, &g_plane, &g_acc, {g_grp[0], g_grp[1]}};

static char g_msg[LENET5_MSG_BYTES];

/* ------------------------------------------------------------------ helpers */
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return code;
}

static uint32_t rd16(const unsigned char *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
/* Finite iff the exponent is not all ones (IEEE-754 binary32): no FP compare, so
 * it is also right under -ffast-math. */
static int finite_bits(uint32_t u) { return (u & 0x7F800000u) != 0x7F800000u; }

static int host_ok(void)
{
    const uint32_t one = 1u;
    unsigned char b[4];
    uint32_t u;
    const float f = 1.0f;
    memcpy(b, &one, 4);
    memcpy(&u, &f, 4);
    return b[0] == 1u && u == 0x3F800000u;
}

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as zlib.crc32. */
static uint32_t g_crc_table[256];
static int g_crc_ready;

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
    size_t i;
    if (!g_crc_ready) {
        uint32_t b, c;
        int k;
        for (b = 0; b < 256u; b++) {
            c = b;
            for (k = 0; k < 8; k++)
                c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            g_crc_table[b] = c;
        }
        g_crc_ready = 1;
    }
    crc = ~crc;
    for (i = 0; i < n; i++)
        crc = g_crc_table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

/* Element size of array j of an op (spec, "Layer record": element types). */
static uint32_t elem_size(int dtype, int op, int j)
{
    (void)op;
    if (j == A_T)
        return 1u; /* u8 connection table or i8 LUT */
    if (j == A_M || j == A_S)
        return 4u;
    if (dtype == LENET5_FLOAT32)
        return 4u;
    return j == A_W ? 1u : 4u; /* int8 files: i8 weights, i32 biases */
}

/* ------------------------------------------------------------------ loader */
/* Check one (offset, count) pair against the blob; mirrors flat.py's array().
 * 64-bit arithmetic throughout: off and count are u32, so nothing can wrap. */
static int check_array(uint32_t off, uint32_t count, uint32_t size, uint32_t blob_bytes, const char *what)
{
    if (count == 0u) {
        if (off != 0u)
            return fail(LENET5_E_FORMAT, "%s: offset %lu with count 0", what, (unsigned long)off);
        return LENET5_OK;
    }
    if (off % size != 0u)
        return fail(LENET5_E_FORMAT, "%s: offset %lu not aligned to %lu", what, (unsigned long)off,
                    (unsigned long)size);
    if (off > blob_bytes || (uint64_t)count > (uint64_t)(blob_bytes - off) / size)
        return fail(LENET5_E_FORMAT, "%s: %lu x %lu bytes at %lu run past the blob (%lu bytes)", what,
                    (unsigned long)count, (unsigned long)size, (unsigned long)off, (unsigned long)blob_bytes);
    return LENET5_OK;
}

/* Output shape by the op's rule (spec, "Operations"); 64-bit signed so a
 * negative conv size simply fails to match. */
static void rule_shape(int op, const uint32_t in[3], uint32_t out_c, uint32_t k, uint32_t pad, int64_t want[3])
{
    if (op == OP_CONV) {
        want[0] = out_c;
        want[1] = (int64_t)in[1] + 2 * (int64_t)pad - (int64_t)k + 1;
        want[2] = (int64_t)in[2] + 2 * (int64_t)pad - (int64_t)k + 1;
    } else if (op == OP_MAXPOOL || op == OP_AVGPOOL || op == OP_SUBSAMPLE) {
        want[0] = in[0];
        want[1] = in[1] / 2u;
        want[2] = in[2] / 2u;
    } else if (op == OP_ACT) {
        want[0] = in[0];
        want[1] = in[1];
        want[2] = in[2];
    } else { /* dense, rbf */
        want[0] = out_c;
        want[1] = 1;
        want[2] = 1;
    }
}

/* Element counts each array must have (flat.py expected_counts); 64-bit because
 * out_c * in_c * k * k can exceed 2^32 in a hostile record. */
static void expected_counts(int dtype, const layer_t *L, uint64_t want[N_ARRAYS])
{
    const uint64_t ic = L->ic, oc = L->oc, n_in = (uint64_t)L->ic * L->ih * L->iw, kk = (uint64_t)L->k * L->k;
    const int q = dtype == LENET5_INT8;
    int j;
    for (j = 0; j < N_ARRAYS; j++)
        want[j] = 0;
    switch (L->op) {
    case OP_CONV:
        want[A_W] = oc * ic * kk;
        want[A_B] = oc;
        want[A_T] = L->has_table ? oc * ic : 0;
        break;
    case OP_SUBSAMPLE:
        want[A_W] = ic;
        want[A_B] = ic;
        break;
    case OP_DENSE:
        want[A_W] = oc * n_in;
        want[A_B] = oc;
        break;
    case OP_RBF:
        want[A_W] = oc * n_in;
        break;
    case OP_ACT:
        if (q)
            want[A_T] = 256;
        break;
    default:
        break;
    }
    if (q && (L->op == OP_CONV || L->op == OP_SUBSAMPLE || L->op == OP_DENSE)) {
        want[A_M] = oc;
        want[A_S] = oc;
    }
}

/* Validate record i (spec, "Validation"); shape[] is the previous output. */
static int load_layer(const unsigned char *data, uint32_t i, uint32_t n_layers, uint32_t blob_bytes,
                      uint32_t shape[3])
{
    const unsigned char *r = data + HEADER_BYTES + (size_t)i * RECORD_BYTES;
    layer_t *L = &g_model.layers[i];
    const int dtype = g_model.dtype;
    const int last = i + 1u == n_layers;
    const int op = r[0], sub = r[1], out_bits = r[2], flags = r[3];
    uint32_t ins[3], outs[3], off[N_ARRAYS], count[N_ARRAYS], out_scale_bits;
    uint64_t want_count[N_ARRAYS];
    int64_t want[3];
    int j, rc;
    char what[48];

    if (op < OP_CONV || op > OP_RBF)
        return fail(LENET5_E_FORMAT, "layer %lu: unknown op code %d", (unsigned long)i, op);
    if (op == OP_ACT ? sub >= N_ACTS : sub != 0)
        return fail(LENET5_E_FORMAT, "layer %lu (%s): activation code %d", (unsigned long)i, OP_NAMES[op], sub);
    if (op == OP_RBF && !last) /* an output layer only: its 32-bit distances feed nothing */
        return fail(LENET5_E_FORMAT, "layer %lu (rbf): RBF must be the last layer", (unsigned long)i);
    /* out_bits: float files 32; int8 files 8, or 32 on the last layer; RBF always 32 (as flat.py). */
    if ((op == OP_RBF || dtype == LENET5_FLOAT32) ? out_bits != 32
                                                : !(out_bits == 8 || (last && out_bits == 32)))
        return fail(LENET5_E_FORMAT, "layer %lu (%s): out_bits %d", (unsigned long)i, OP_NAMES[op], out_bits);
    if (!(flags == 0 || (flags == 1 && op == OP_CONV)))
        return fail(LENET5_E_FORMAT, "layer %lu (%s): flags %d", (unsigned long)i, OP_NAMES[op], flags);
    for (j = 0; j < 3; j++) {
        ins[j] = rd16(r + 4 + 2 * j);
        outs[j] = rd16(r + 10 + 2 * j);
    }
    if (ins[0] != shape[0] || ins[1] != shape[1] || ins[2] != shape[2])
        return fail(LENET5_E_FORMAT, "layer %lu (%s): input shape (%lu, %lu, %lu) but the previous output is (%lu, %lu, %lu)",
                    (unsigned long)i, OP_NAMES[op], (unsigned long)ins[0], (unsigned long)ins[1],
                    (unsigned long)ins[2], (unsigned long)shape[0], (unsigned long)shape[1], (unsigned long)shape[2]);
    for (j = 0; j < 3; j++)
        if (outs[j] < 1u || outs[j] > MAX_DIM)
            return fail(LENET5_E_FORMAT, "layer %lu (%s): output shape (%lu, %lu, %lu)", (unsigned long)i,
                        OP_NAMES[op], (unsigned long)outs[0], (unsigned long)outs[1], (unsigned long)outs[2]);
    L->k = rd16(r + 16);
    L->pad = rd16(r + 18);
    if (op == OP_CONV) {
        if (L->k < 1u || L->k > 16u || L->pad >= L->k)
            return fail(LENET5_E_FORMAT, "layer %lu (conv): kernel %lu pad %lu", (unsigned long)i,
                        (unsigned long)L->k, (unsigned long)L->pad);
    } else if (L->k != ((op == OP_MAXPOOL || op == OP_AVGPOOL || op == OP_SUBSAMPLE) ? 2u : 0u) || L->pad != 0u) {
        return fail(LENET5_E_FORMAT, "layer %lu (%s): k/pad", (unsigned long)i, OP_NAMES[op]);
    }
    rule_shape(op, ins, outs[0], L->k, L->pad, want);
    for (j = 0; j < 3; j++)
        if (want[j] != (int64_t)outs[j])
            return fail(LENET5_E_FORMAT, "layer %lu (%s): output shape (%lu, %lu, %lu), the op gives (%lld, %lld, %lld)",
                        (unsigned long)i, OP_NAMES[op], (unsigned long)outs[0], (unsigned long)outs[1],
                        (unsigned long)outs[2], (long long)want[0], (long long)want[1], (long long)want[2]);
    if ((uint64_t)outs[0] * outs[1] * outs[2] > MAX_MAP)
        return fail(LENET5_E_FORMAT, "layer %lu (%s): output map too large", (unsigned long)i, OP_NAMES[op]);
    out_scale_bits = rd32(r + 60);
    if (dtype == LENET5_FLOAT32 ? out_scale_bits != 0x3F800000u /* exactly 1.0 */
                                : !(finite_bits(out_scale_bits) && bits_to_f32(out_scale_bits) > 0.0f))
        return fail(LENET5_E_FORMAT, "layer %lu (%s): out_scale %g", (unsigned long)i, OP_NAMES[op],
                    (double)bits_to_f32(out_scale_bits));
    {   /* multiply-adds per image (spec): CONV out values x in_c x k x k; DENSE/RBF out_c x n; others n */
        const uint64_t n_in = (uint64_t)ins[0] * ins[1] * ins[2];
        const uint64_t work = op == OP_CONV ? (uint64_t)outs[0] * outs[1] * outs[2] * ins[0] * L->k * L->k
                              : (op == OP_DENSE || op == OP_RBF) ? (uint64_t)outs[0] * n_in : n_in;
        if (work > MAX_WORK)
            return fail(LENET5_E_FORMAT, "layer %lu (%s): more than 2^26 multiply-adds", (unsigned long)i,
                        OP_NAMES[op]);
    }

    L->op = op;
    L->act = op == OP_ACT ? sub : ACT_IDENTITY;
    L->out_bits = out_bits;
    L->has_table = flags == 1;
    L->ic = ins[0], L->ih = ins[1], L->iw = ins[2];
    L->oc = outs[0], L->oh = outs[1], L->ow = outs[2];
    /* int8: a 32-bit output is kept as int32. Pools and ACTs only move int8
     * values, so their out_bits (8 or 32 on the last layer) changes nothing. */
    L->wide_out = dtype == LENET5_INT8 && out_bits == 32 && op != OP_MAXPOOL && op != OP_AVGPOOL && op != OP_ACT;
    L->mode = MODE_WIDE, L->pair16 = 0, L->kp = 0, L->wt = NULL, L->wq = NULL, L->wsum = NULL, L->wl = NULL, L->kl = 0;

    expected_counts(dtype, L, want_count);
    for (j = 0; j < N_ARRAYS; j++) {
        off[j] = rd32(r + 20 + 8 * j);
        count[j] = rd32(r + 24 + 8 * j);
        if ((uint64_t)count[j] != want_count[j])
            return fail(LENET5_E_FORMAT, "layer %lu (%s): array %c has %lu values, expected %llu", (unsigned long)i,
                        OP_NAMES[op], ARRAY_NAMES[j], (unsigned long)count[j], (unsigned long long)want_count[j]);
        snprintf(what, sizeof what, "layer %lu (%s) array %c", (unsigned long)i, OP_NAMES[op], ARRAY_NAMES[j]);
        rc = check_array(off[j], count[j], elem_size(dtype, op, j), blob_bytes, what);
        if (rc != LENET5_OK)
            return rc;
        L->arr[j] = count[j] ? (const void *)(g_blob.u + off[j]) : NULL;
    }
    /* Array contents (now known to lie inside the blob copy). */
    if (op == OP_CONV && L->has_table) {
        const uint8_t *t = g_blob.u + off[A_T];
        uint32_t n;
        for (n = 0; n < count[A_T]; n++)
            if (t[n] > 1u)
                return fail(LENET5_E_FORMAT, "layer %lu (conv): connection table values must be 0/1",
                            (unsigned long)i);
    }
    if (dtype == LENET5_INT8 && (op == OP_CONV || op == OP_DENSE)) {
        const uint64_t fan_in = op == OP_CONV ? (uint64_t)L->ic * L->k * L->k : (uint64_t)L->ic * L->ih * L->iw;
        if (fan_in > 65536u)
            return fail(LENET5_E_FORMAT, "layer %lu (%s): fan-in %llu > 65536 (int8 sums must fit in 32 bits)",
                        (unsigned long)i, OP_NAMES[op], (unsigned long long)fan_in);
    }
    if (dtype == LENET5_INT8 && count[A_S]) {
        const int32_t *m = g_blob.i + off[A_M] / 4u, *s = g_blob.i + off[A_S] / 4u;
        uint32_t n;
        for (n = 0; n < count[A_S]; n++)
            if (s[n] < 1 || s[n] > 62)
                return fail(LENET5_E_FORMAT, "layer %lu (%s): shift not in 1..62", (unsigned long)i, OP_NAMES[op]);
        for (n = 0; n < count[A_M]; n++)
            if (m[n] < 0)
                return fail(LENET5_E_FORMAT, "layer %lu (%s): negative multiplier", (unsigned long)i, OP_NAMES[op]);
    }
    if (dtype == LENET5_FLOAT32) {
        for (j = A_W; j <= A_B; j++) {
            const unsigned char *p = g_blob.u + off[j];
            uint32_t n;
            for (n = 0; n < count[j]; n++)
                if (!finite_bits(rd32(p + 4u * n)))
                    return fail(LENET5_E_FORMAT, "layer %lu (%s): non-finite %c", (unsigned long)i, OP_NAMES[op],
                                ARRAY_NAMES[j]);
        }
    }
    shape[0] = outs[0], shape[1] = outs[1], shape[2] = outs[2];
    return LENET5_OK;
}

/* This build's static buffers must hold every map (only a smaller
 * -DLENET5_MAX_ACT than the spec's 2^20 can make a valid file fail here). */
static int check_runtime_limits(void)
{
    uint32_t i;
    if ((uint64_t)g_model.in_h * g_model.in_w > LENET5_MAX_ACT)
        return fail(LENET5_E_LIMIT, "the padded %lux%lu input exceeds this build's LENET5_MAX_ACT (%lu)",
                    (unsigned long)g_model.in_h, (unsigned long)g_model.in_w, (unsigned long)LENET5_MAX_ACT);
    for (i = 0; i < g_model.n_layers; i++) {
        const layer_t *L = &g_model.layers[i];
        const uint64_t hp = (uint64_t)L->ih + 2u * L->pad, wp = (uint64_t)L->iw + 2u * L->pad;
        if ((uint64_t)L->oc * L->oh * L->ow > LENET5_MAX_ACT)
            return fail(LENET5_E_LIMIT, "layer %lu: output map exceeds this build's LENET5_MAX_ACT (%lu)",
                        (unsigned long)i, (unsigned long)LENET5_MAX_ACT);
        if (L->op == OP_CONV && ((uint64_t)L->ic * hp * wp > LENET5_MAX_ACT || (uint64_t)L->oh * wp > LENET5_MAX_ACT))
            return fail(LENET5_E_LIMIT, "layer %lu (conv): padded input exceeds this build's LENET5_MAX_ACT (%lu)",
                        (unsigned long)i, (unsigned long)LENET5_MAX_ACT);
    }
    return LENET5_OK;
}

static int prepare(void);
static void size_buffers(void);

int lenet5_load(const unsigned char *data, size_t len, char *msg, size_t msg_size)
{
    uint32_t version, endian, dtype, header_bytes, n_layers, record_bytes, blob_offset, blob_bytes;
    uint32_t img_h, img_w, pad, num_classes, in_scale, in_shift, lut_off, in_qscale, file_bytes, stored_crc;
    uint32_t shape[3], i, crc;
    int rc = LENET5_OK;

    g_model.loaded = 0;
    g_msg[0] = '\0';
    /* The checks below are in flat.py decode's order, so both name the same
     * first problem. */
    if (!host_ok()) {
        rc = fail(LENET5_E_HOST, "this runtime needs a little-endian host with IEEE-754 binary32 floats");
        goto done;
    }
    if (data == NULL && len != 0u) {
        rc = fail(LENET5_E_ARG, "NULL data");
        goto done;
    }
#define NEED(cond, ...)                                  \
    do {                                                 \
        if (!(cond)) {                                   \
            rc = fail(LENET5_E_FORMAT, __VA_ARGS__);     \
            goto done;                                   \
        }                                                \
    } while (0)
    NEED(len <= MAX_FILE, "file is %lu bytes, larger than the 64 MiB limit", (unsigned long)len);
    NEED(len >= HEADER_BYTES, "file is %lu bytes, shorter than the 64-byte header", (unsigned long)len);
    NEED(memcmp(data, "LENET5FL", 8) == 0, "bad magic (expected LENET5FL)");
    version = rd16(data + 8);
    endian = data[10];
    dtype = data[11];
    header_bytes = rd32(data + 12);
    n_layers = rd32(data + 16);
    record_bytes = rd32(data + 20);
    blob_offset = rd32(data + 24);
    blob_bytes = rd32(data + 28);
    img_h = rd16(data + 32);
    img_w = rd16(data + 34);
    pad = rd16(data + 36);
    num_classes = rd16(data + 38);
    in_scale = rd32(data + 40);
    in_shift = rd32(data + 44);
    lut_off = rd32(data + 48);
    in_qscale = rd32(data + 52);
    file_bytes = rd32(data + 56);
    stored_crc = rd32(data + 60);
    NEED(version == 1u, "unsupported version %lu (this reader knows 1)", (unsigned long)version);
    NEED(endian == 1u, "endian flag %lu (only 1 = little-endian is defined)", (unsigned long)endian);
    NEED(dtype <= 1u, "unknown dtype code %lu", (unsigned long)dtype);
    NEED(header_bytes == HEADER_BYTES && record_bytes == RECORD_BYTES, "header/record size fields");
    NEED((uint64_t)file_bytes == (uint64_t)len, "file_bytes says %lu but the file has %lu bytes",
         (unsigned long)file_bytes, (unsigned long)len);
    NEED(n_layers >= 1u && n_layers <= MAX_LAYERS, "n_layers %lu not in 1..64", (unsigned long)n_layers);
    NEED(blob_offset == (HEADER_BYTES + RECORD_BYTES * n_layers + 15u) / 16u * 16u, "blob_offset %lu",
         (unsigned long)blob_offset);
    NEED((uint64_t)blob_offset + blob_bytes == (uint64_t)len, "blob_offset + blob_bytes differs from the file length");
    /* CRC of bytes [0, 60) then [64, file_bytes) (spec, Header). From here on
     * every record lies inside the file: 64 + 64 n_layers <= blob_offset <= len. */
    crc = crc32_update(0u, data, 60u);
    crc = crc32_update(crc, data + HEADER_BYTES, len - HEADER_BYTES);
    NEED(crc == stored_crc, "CRC mismatch (the file is damaged)");
    NEED(img_h >= 1u && img_h <= MAX_DIM && img_w >= 1u && img_w <= MAX_DIM, "image size %lux%lu",
         (unsigned long)img_h, (unsigned long)img_w);
    NEED(pad <= 64u, "pad %lu > 64", (unsigned long)pad);
    NEED(num_classes >= 1u && num_classes <= MAX_DIM, "num_classes %lu", (unsigned long)num_classes);
    NEED(finite_bits(in_scale) && finite_bits(in_shift), "input scale/shift not finite");
    NEED((img_h + 2u * pad) * (img_w + 2u * pad) <= MAX_MAP, "padded input map larger than 2^20 values");
    NEED(dtype == LENET5_INT8 || ((in_qscale & 0x7FFFFFFFu) == 0u && lut_off == NO_OFFSET),
         "float file with int8 input fields"); /* in_qscale == 0 (either sign), no LUT */
    if (len > LENET5_MAX_FILE_BYTES) {
        rc = fail(LENET5_E_LIMIT, "file is %lu bytes, this build holds %lu (rebuild with -DLENET5_MAX_FILE_BYTES=...)",
                  (unsigned long)len, (unsigned long)LENET5_MAX_FILE_BYTES);
        goto done;
    }
    /* Copy the blob: blob_offset is a multiple of 16, so blob offsets keep
     * their alignment and every i32/f32 array (4-aligned, checked) is aligned. */
    memcpy(g_blob.u, data + blob_offset, blob_bytes);
    g_model.dtype = (int)dtype;
    g_model.n_layers = n_layers;
    g_model.img_h = img_h, g_model.img_w = img_w, g_model.pad = pad, g_model.num_classes = num_classes;
    g_model.in_h = img_h + 2u * pad, g_model.in_w = img_w + 2u * pad;
    g_model.in_lut = NULL;
    if (dtype == LENET5_INT8) {
        rc = check_array(lut_off, 256u, 1u, blob_bytes, "input LUT");
        if (rc != LENET5_OK)
            goto done;
        g_model.in_lut = g_blob.b + lut_off;
        NEED(finite_bits(in_qscale) && bits_to_f32(in_qscale) > 0.0f, "in_qscale must be positive");
    } else {
        NEED(lut_off == NO_OFFSET, "float file with an input LUT offset");
        for (i = 0; i < 256u; i++) /* spec, Header: x = a*p + b, in float32 as runtime.py */
            g_model.in_f32[i] = (float)i * bits_to_f32(in_scale) + bits_to_f32(in_shift);
        g_model.in_pad = bits_to_f32(in_shift);
    }
#undef NEED
    shape[0] = 1u, shape[1] = g_model.in_h, shape[2] = g_model.in_w;
    for (i = 0; i < n_layers; i++) {
        rc = load_layer(data, i, n_layers, blob_bytes, shape);
        if (rc != LENET5_OK)
            goto done;
    }
    if ((uint64_t)shape[0] * shape[1] * shape[2] != num_classes) {
        rc = fail(LENET5_E_FORMAT, "the last layer gives %llu values, num_classes is %lu",
                  (unsigned long long)shape[0] * shape[1] * shape[2], (unsigned long)num_classes);
        goto done;
    }
    rc = check_runtime_limits();
    if (rc != LENET5_OK)
        goto done;
    rc = prepare();
    if (rc != LENET5_OK)
        goto done;
    size_buffers();
    g_model.loaded = 1;
done:
    if (msg != NULL && msg_size > 0u) {
        if (rc == LENET5_OK)
            msg[0] = '\0';
        else
            snprintf(msg, msg_size, "%s", g_msg);
    }
    return rc;
}

int lenet5_loaded(void) { return g_model.loaded; }
int lenet5_dtype(void) { return g_model.loaded ? g_model.dtype : 0; }
unsigned lenet5_image_h(void) { return g_model.loaded ? g_model.img_h : 0u; }
unsigned lenet5_image_w(void) { return g_model.loaded ? g_model.img_w : 0u; }
unsigned lenet5_num_classes(void) { return g_model.loaded ? g_model.num_classes : 0u; }
unsigned lenet5_n_layers(void) { return g_model.loaded ? g_model.n_layers : 0u; }

/* ------------------------------------------------------------------ shared helpers */
static size_t round_up(size_t n, size_t to) { return (n + to - 1u) / to * to; }

/* tanh for the float path. libm's tanhf costs ~20 ns a call and LeNet-5 1998
 * squashes ~8000 values per image, so it would dominate the runtime. Instead:
 * tanh(x) ~ x P(x^2) / Q(x^2), degree 5 / 5, evaluated in double with |x|
 * clamped to 9.5 (beyond 9.02, tanh rounds to +-1 in float32). The
 * coefficients are our own fit (Sanathanan-Koerner iterations of a weighted
 * least-squares rational fit of tanh(x)/x on [0, 9.5]; Q's roots are all
 * negative, so no pole on the real line). Relative error before rounding is
 * 1.1e-8, so the float32 result is the correctly rounded tanh except for
 * 0.05% of inputs, which are 1 ulp off - as accurate as libm, and the loop
 * is plain arithmetic that vectorises. -DLENET5_LIBM_TANH uses tanhf. */
static float tanh_f32(float x)
{
#ifdef LENET5_LIBM_TANH
    return tanhf(x);
#else
    const double c = x > 9.5f ? 9.5 : (x < -9.5f ? -9.5 : (double)x); /* NaN passes through */
    const double z = c * c;
    const double p = ((((3.4756516658401036e-11 * z + 1.0796314165850781e-07) * z + 4.1711722460648456e-05) * z +
                       4.404107702265463e-03) * z + 1.4082814065694235e-01) * z + 9.999999999326522e-01;
    const double q = ((((2.832518209042074e-09 * z + 2.551726435890047e-06) * z + 4.966349554148078e-04) * z +
                       2.9124600052333645e-02) * z + 4.7416147327608754e-01) * z + 1.0;
    const double r = c * p / q;
    return (float)(r > 1.0 ? 1.0 : (r < -1.0 ? -1.0 : r));
#endif
}

/* Requantisation (spec, "int8 files"): r = (|acc| * M + 2^(n-1)) >> n in
 * unsigned 64-bit arithmetic, result sign(acc) * r (rounds half away from
 * zero), clamped. The loader checked 1 <= n <= 62 and 0 <= M < 2^31, and
 * |acc| < 2^33 for every int8 layer, so the product cannot wrap (if it did it
 * would wrap exactly as runtime.py's uint64). r < 2^63 because n >= 1.
 * The row versions (one channel: same bias, M, n) vectorise (vpmullq). */
static int64_t requantize(int64_t acc, uint32_t m, uint32_t n)
{
    const uint64_t mag = acc < 0 ? 0u - (uint64_t)acc : (uint64_t)acc;
    const uint64_t r = (mag * m + ((uint64_t)1 << (n - 1u))) >> n;
    return acc < 0 ? -(int64_t)r : (int64_t)r;
}
static int8_t clamp8(int64_t v) { return (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v)); }
static int32_t clamp32(int64_t v) { return (int32_t)(v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : v)); }

/* With AVX-512 the LUT of a fused ACT (lut != NULL) is applied in registers
 * too; returns whether it was (else the caller applies it). */
#if defined(LENET5_VNNI) && defined(__AVX512VL__) && defined(__AVX512VBMI__)
static const int8_t g_zero_lut[256]; /* stands in for an absent LUT (never applied) */
#endif
static int requant_row_i8(int8_t *restrict y, const int32_t *restrict acc, size_t n, int64_t bias, uint32_t m,
                          uint32_t sh, const int8_t *lut)
{
    const uint64_t half = (uint64_t)1 << (sh - 1u);
    size_t j = 0;
#if defined(LENET5_VNNI) && defined(__AVX512VL__) && defined(__AVX512VBMI__)
    /* 8 at a time in 64-bit lanes, the same arithmetic: |a| * M as two 32 x 32
     * products (exact modulo 2^64 like the scalar code), the shift, the sign,
     * and vpmovsqb's signed saturation is clamp8. */
    const __m512i vb = _mm512_set1_epi64(bias), vm = _mm512_set1_epi64((long long)m);
    const __m512i vh = _mm512_set1_epi64((long long)half), vs = _mm512_set1_epi64((long long)sh);
    const int8_t *t = lut != NULL ? lut : (const int8_t *)g_zero_lut;
    const __m512i t0 = _mm512_loadu_si512((const void *)t), t1 = _mm512_loadu_si512((const void *)(t + 64));
    const __m512i t2 = _mm512_loadu_si512((const void *)(t + 128)), t3 = _mm512_loadu_si512((const void *)(t + 192));
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (; j < n; j += 8u) {
        const __mmask8 k = (__mmask8)(n - j >= 8u ? 0xFFu : (1u << (n - j)) - 1u);
        const __m512i a = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(k, (const void *)(acc + j))), vb);
        const __m512i mag = _mm512_abs_epi64(a);
        const __m512i prod = _mm512_add_epi64(_mm512_mul_epu32(mag, vm),
                                              _mm512_slli_epi64(_mm512_mul_epu32(_mm512_srli_epi64(mag, 32), vm), 32));
        const __m512i r = _mm512_srlv_epi64(_mm512_add_epi64(prod, vh), vs);
        const __mmask8 neg = _mm512_cmplt_epi64_mask(a, _mm512_setzero_si512());
        __m512i q = _mm512_castsi128_si512(_mm512_cvtsepi64_epi8(_mm512_mask_sub_epi64(r, neg, _mm512_setzero_si512(), r)));
        if (lut != NULL) { /* t[q + 128] as in lut_i8 */
            const __m512i idx = _mm512_xor_si512(q, flip);
            q = _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), _mm512_permutex2var_epi8(t0, idx, t1),
                                       _mm512_permutex2var_epi8(t2, idx, t3));
        }
        _mm_mask_storeu_epi8((void *)(y + j), (__mmask16)k, _mm512_castsi512_si128(q));
    }
    return 1;
#else
    (void)lut;
#endif
    for (; j < n; j++) {
        const int64_t a = bias + acc[j];
        const uint64_t mag = a < 0 ? 0u - (uint64_t)a : (uint64_t)a;
        const int64_t r = (int64_t)((mag * m + half) >> sh);
        y[j] = clamp8(a < 0 ? -r : r);
    }
    return 0;
}

/* y[i] = t[y[i] + 128]: an int8 ACT (spec, "int8 files"), applied in place. */
static void lut_i8(int8_t *y, size_t n, const int8_t *restrict t)
{
    size_t i = 0;
#if defined(LENET5_VNNI) && defined(__AVX512VBMI__)
    /* 64 lookups at a time: two 128-entry permutes, chosen by the index's top bit */
    const __m512i t0 = _mm512_loadu_si512((const void *)t), t1 = _mm512_loadu_si512((const void *)(t + 64));
    const __m512i t2 = _mm512_loadu_si512((const void *)(t + 128)), t3 = _mm512_loadu_si512((const void *)(t + 192));
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (; i + 64u <= n; i += 64u) {
        const __m512i idx = _mm512_xor_si512(_mm512_loadu_si512((const void *)(y + i)), flip); /* x + 128 */
        const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1), hi = _mm512_permutex2var_epi8(t2, idx, t3);
        _mm512_storeu_si512((void *)(y + i), _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi));
    }
    if (i < n) { /* the last n - i < 64 values, masked */
        const __mmask64 m = (__mmask64)(~0ULL >> (64u - (n - i)));
        const __m512i idx = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, (const void *)(y + i)), flip);
        const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1), hi = _mm512_permutex2var_epi8(t2, idx, t3);
        _mm512_mask_storeu_epi8((void *)(y + i), m, _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi));
        i = n;
    }
#endif
    for (; i < n; i++)
        y[i] = t[y[i] + 128];
}

static void requant_row_i32(int32_t *restrict y, const int32_t *restrict acc, size_t n, int64_t bias, uint32_t m,
                            uint32_t sh)
{
    size_t j;
    for (j = 0; j < n; j++)
        y[j] = clamp32(requantize(bias + acc[j], m, sh));
}

/* Requantise n int32 sums of channel o into y[at ..] (an int8 or int32 map); a
 * following int8 ACT layer's LUT (lut != NULL) is applied while the row is hot. */
static void requant_out(const layer_t *L, void *y, size_t at, const int32_t *acc, size_t n, int64_t bias, size_t o,
                        const int8_t *lut)
{
    const uint32_t m = (uint32_t)((const int32_t *)L->arr[A_M])[o], sh = (uint32_t)((const int32_t *)L->arr[A_S])[o];
    if (L->wide_out) {
        requant_row_i32((int32_t *)y + at, acc, n, bias, m, sh);
    } else {
        if (!requant_row_i8((int8_t *)y + at, acc, n, bias, m, sh, lut) && lut != NULL)
            lut_i8((int8_t *)y + at, n, lut);
    }
}

/* ------------------------------------------------------------------ load-time preparation */
static size_t g_prep_used; /* bytes of g_prep handed out */

/* Offset of `bytes` fresh bytes of g_prep (8-aligned), or (size_t)-1 when full. */
static size_t prep_alloc(size_t bytes)
{
    const size_t at = round_up(g_prep_used, 8u);
    if (bytes > PREP_BYTES || at > PREP_BYTES - bytes)
        return (size_t)-1;
    g_prep_used = at + bytes;
    return at;
}

/* w (out_c x n, row-major) transposed into g_prep as n x out_c; NULL if full. */
static const float *prep_transpose(const float *w, size_t oc, size_t n)
{
    const size_t at = prep_alloc(oc * n * sizeof(float));
    float *wt;
    size_t o, k;
    if (at == (size_t)-1)
        return NULL;
    wt = g_prep.f + at / 4u;
    for (o = 0; o < oc; o++)
        for (k = 0; k < n; k++)
            wt[k * oc + o] = w[o * n + k];
    return wt;
}

#ifdef LENET5_VNNI
/* Weight rows src[o * stride + i] (i < klen, zero past it) re-laid for dots16:
 * block ob of 16 output channels, group g of 4 inputs: 64 bytes holding
 * w[ob*16 + lane][4g + b] at lane*4 + b (zero for lanes past oc). */
static void prep_lanes(layer_t *L, const int8_t *src, size_t stride, size_t klen, size_t oc)
{
    const size_t kl = round_up(klen, 4u), nb = (oc + 15u) / 16u, at = prep_alloc(nb * kl * 16u + 64u);
    int8_t *d;
    size_t ob, g, lane, b;
    if (at == (size_t)-1)
        return;
    d = g_prep.b + round_up(at, 64u) ;
    for (ob = 0; ob < nb; ob++)
        for (g = 0; g < kl / 4u; g++)
            for (lane = 0; lane < 16u; lane++)
                for (b = 0; b < 4u; b++) {
                    const size_t o = ob * 16u + lane, i = 4u * g + b;
                    d[((ob * (kl / 4u) + g) * 16u + lane) * 4u + b] = (int8_t)(o < oc && i < klen ? src[o * stride + i] : 0);
                }
    L->wl = d, L->kl = kl;
}
#endif

/* Choose how an int8 CONV runs and prepare its weights.
 *  - MODE_WIDE: the wide plane (see the file comment), 16-bit products; good
 *    for big output planes (C1: 28 x 32 outputs per pass).
 *  - MODE_DOT: im2col - each output position's receptive field is copied into
 *    a patch of in_c*k*k bytes (as x + 128, unsigned), and every output is one
 *    dot product of a weight row with a patch, which gcc turns into vpdpbusd /
 *    pmaddubsw-class code (64 MACs an instruction). Sum w*(x+128) - 128*sum(w)
 *    is exactly sum w*x. Good for small planes with long kernels (C3, C5).
 * The choice is a rough count of vector instructions for each. In MODE_DOT the
 * pairs (o, c) off the connection table get zero weights in the patch-shaped
 * copy (exact in integers; the padded dot costs the same either way). */
static void prepare_conv_i8(layer_t *L)
{
    const size_t ic = L->ic, oc = L->oc, k = L->k, kk = k * k, kpatch = ic * kk, kp = round_up(kpatch, 64u);
    const size_t wp = L->iw + 2u * L->pad, npos = (size_t)L->oh * L->ow;
    const int8_t *w = (const int8_t *)L->arr[A_W];
    const uint8_t *t = (const uint8_t *)L->arr[A_T];
    size_t pairs = 0, o, c, i, at_w, at_s;
    uint64_t wide_cost, dot_cost;
    for (o = 0; o < oc; o++)
        for (c = 0; c < ic; c++)
            pairs += t == NULL || t[o * ic + c] != 0u;
    wide_cost = (uint64_t)pairs * k * ((uint64_t)(L->oh * wp + 31u) / 32u * 22u + 30u);
    dot_cost = (uint64_t)npos * oc * (kp / 64u * 2u + 10u) + (uint64_t)npos * ic * k * 4u;
    if (dot_cost < wide_cost && (uint64_t)npos * kp + 16u <= (uint64_t)CAP * 4u) {
        at_w = prep_alloc(oc * kp);
        at_s = prep_alloc(oc * sizeof(int32_t));
        if (at_w != (size_t)-1 && at_s != (size_t)-1) {
            int8_t *wq = g_prep.b + at_w;
            int32_t *wsum = g_prep.i + at_s / 4u;
            memset(wq, 0, oc * kp);
            for (o = 0; o < oc; o++) {
                int32_t sum = 0;
                for (c = 0; c < ic; c++) {
                    if (t != NULL && t[o * ic + c] == 0u)
                        continue;
                    for (i = 0; i < kk; i++) {
                        wq[o * kp + c * kk + i] = w[(o * ic + c) * kk + i];
                        sum += w[(o * ic + c) * kk + i];
                    }
                }
                wsum[o] = sum; /* |sum| <= 65536 * 128 */
            }
            L->mode = MODE_DOT, L->kp = kp, L->wq = wq, L->wsum = wsum;
#ifdef LENET5_VNNI
            prep_lanes(L, wq, kp, kpatch, oc);
#endif
            return;
        }
    }
    L->mode = MODE_WIDE;
    L->pair16 = 1;
    for (i = 0; i < oc * ic * kk; i++)
        if (w[i] == -128)
            L->pair16 = 0;
}

/* Float CONV without a connection table: MODE_ROWS (conv_rows_f32) or
 * MODE_LANES (conv_lanes_f32), by a rough count of VW-float multiply-add
 * vectors: the rows blocks compute ROWS_OC channels over oh x padded-width
 * positions, the lane blocks LANES channels over the oh x ow real positions.
 * MODE_LANES wins for small planes with many channels (LeNet-5's C3, with AVX:
 * 30k against 49k), MODE_ROWS for few output channels (C1: 17k against 39k). Both
 * keep their sums in registers. With a table the layer stays MODE_WIDE, which
 * skips the missing (o, c) pairs: the blocks would multiply them by zero
 * weights, not the same as skipping them for inf/NaN inputs. */
#ifdef LENET5_VEC
static void prepare_conv_lanes_f32(layer_t *L)
{
    const size_t oc = L->oc, ic = L->ic, kk = (size_t)L->k * L->k, ntaps = ic * kk, nb = (oc + LANES - 1u) / LANES;
    const size_t wp = L->iw + 2u * L->pad, npos = (size_t)L->oh * L->ow;
    const uint64_t rows = (uint64_t)(oc + ROWS_OC - 1u) / ROWS_OC * ROWS_OC * ntaps *
                          ((L->oh * wp + 15u) / 16u * (16u / VW));
    const uint64_t lanes = (uint64_t)nb * 2u * ((npos + POS - 1u) / POS * POS) * ntaps;
    const float *w = (const float *)L->arr[A_W];
    size_t at, o, t;
    float *d;
    if ((uint64_t)ROWS_OC * (L->oh * wp + 16u) <= CAP) /* its planes fit the static buffer (else MODE_WIDE) */
        L->mode = MODE_ROWS;
    if (lanes >= rows)
        return;
    at = prep_alloc(nb * ntaps * LANES * sizeof(float));
    if (at == (size_t)-1)
        return; /* g_prep is full: stays MODE_ROWS (or MODE_WIDE) */
    d = g_prep.f + at / 4u;
    for (o = 0; o < nb * LANES; o++)
        for (t = 0; t < ntaps; t++)
            d[((o / LANES) * ntaps + t) * LANES + o % LANES] = o < oc ? w[o * ntaps + t] : 0.0f;
    L->wt = d, L->mode = MODE_LANES;
}
#endif

static int prepare(void)
{
    uint32_t l;
    g_prep_used = 0;
    /* First what must fit (it always does: no larger than the blob, plus one
     * int32 per output channel), then the optional MODE_DOT copies. */
    for (l = 0; l < g_model.n_layers; l++) {
        layer_t *L = &g_model.layers[l];
        const size_t n = (size_t)L->ic * L->ih * L->iw, oc = L->oc;
        if (L->op != OP_DENSE)
            continue;
        if (g_model.dtype == LENET5_FLOAT32) {
            /* DENSE runs as axpys over output channels: it wants w transposed */
            L->wt = prep_transpose((const float *)L->arr[A_W], oc, n);
            if (L->wt == NULL)
                return fail(LENET5_E_LIMIT, "layer %lu: no room for prepared weights", (unsigned long)l);
        } else {
            const size_t at = prep_alloc(oc * sizeof(int32_t));
            const int8_t *w = (const int8_t *)L->arr[A_W];
            int32_t *wsum;
            size_t o, i;
            if (at == (size_t)-1)
                return fail(LENET5_E_LIMIT, "layer %lu: no room for prepared weights", (unsigned long)l);
            wsum = g_prep.i + at / 4u;
            for (o = 0; o < oc; o++) {
                int32_t sum = 0; /* |sum| <= 65536 * 128 (fan-in check) */
                for (i = 0; i < n; i++)
                    sum += w[o * n + i];
                wsum[o] = sum;
            }
            L->wsum = wsum;
        }
    }
    for (l = 0; l < g_model.n_layers; l++) {
        layer_t *L = &g_model.layers[l];
        if (L->op != OP_CONV)
            continue;
        if (g_model.dtype == LENET5_INT8) {
            prepare_conv_i8(L);
        } else if (L->oh == 1u && L->ow == 1u && !L->has_table) {
            /* A CONV with a 1 x 1 output (LeNet-5's C5) is a DENSE layer over
             * its staged (padded) input, which is exactly the in_c x k x k patch
             * in the weights' order. Stays MODE_WIDE if g_prep is full. */
            L->wt = prep_transpose((const float *)L->arr[A_W], L->oc, (size_t)L->ic * L->k * L->k);
            if (L->wt != NULL)
                L->mode = MODE_DENSE;
        } else if (!L->has_table) {
#ifdef LENET5_VEC
            prepare_conv_lanes_f32(L);
#endif
        }
    }
    /* Optional (skipped when g_prep is full): DENSE weights in lane blocks. */
#ifdef LENET5_VNNI
    for (l = 0; l < g_model.n_layers; l++) {
        layer_t *L = &g_model.layers[l];
        if (L->op == OP_DENSE && g_model.dtype == LENET5_INT8)
            prep_lanes(L, (const int8_t *)L->arr[A_W], (size_t)L->ic * L->ih * L->iw, (size_t)L->ic * L->ih * L->iw,
                       L->oc);
    }
#endif
    return LENET5_OK;
}

/* Bytes each working buffer (scratch_t) needs for the loaded model, from the
 * same shapes and modes the kernels use, 4 bytes an element whatever the
 * dtype (an over-estimate for int8 maps), plus the SLACK the wide convolution
 * reads past its input, rounded to 64 bytes. check_runtime_limits() has
 * already checked that all of it fits the static buffers (CAP elements). */
static void size_buffers(void)
{
    size_t need = (size_t)g_model.in_h * g_model.in_w, l;
    for (l = 0; l < g_model.n_layers; l++) {
        const layer_t *L = &g_model.layers[l];
        const size_t hp = (size_t)L->ih + 2u * L->pad, wp = (size_t)L->iw + 2u * L->pad;
        const size_t n_in = (size_t)L->ic * L->ih * L->iw, n_out = (size_t)L->oc * L->oh * L->ow;
        size_t m = n_out > n_in ? n_out : n_in;               /* act maps; DENSE/pool/acc sums */
        if (L->op == OP_CONV) {
            const size_t npos = (size_t)L->oh * L->ow;
            m = m > L->ic * hp * wp ? m : L->ic * hp * wp;   /* stage */
            m = m > L->oh * wp + 32u ? m : L->oh * wp + 32u; /* wide plane, rounded up to vectors */
            if (L->mode == MODE_ROWS)                         /* ROWS_OC wide planes */
                m = m > ROWS_OC * (L->oh * wp + 16u) ? m : ROWS_OC * (L->oh * wp + 16u);
            if (L->mode == MODE_DOT) {
                const size_t patches = (npos * L->kp + 16u + 3u) / 4u;
                m = m > patches ? m : patches;
                m = m > L->oc * npos ? m : L->oc * npos;     /* acc */
            }
        }
        need = need > m ? need : m;
    }
    g_model.buf_bytes = round_up((need + SLACK) * 4u, 64u);
    /* the float tail: the longest run of DENSE / ACT / RBF layers at the end
     * that starts with a DENSE (whose input is the front's last map) */
    g_model.tail = g_model.n_layers, g_model.tail_stride = 0;
    if (g_model.dtype == LENET5_FLOAT32) {
        size_t t = g_model.n_layers, most = 0;
        while (t > 0u && (g_model.layers[t - 1u].op == OP_DENSE || g_model.layers[t - 1u].op == OP_ACT ||
                          g_model.layers[t - 1u].op == OP_RBF))
            t--;
        while (t < g_model.n_layers && g_model.layers[t].op != OP_DENSE)
            t++;
        for (l = t; l < g_model.n_layers; l++) {
            const layer_t *L = &g_model.layers[l];
            const size_t n_in = (size_t)L->ic * L->ih * L->iw, n_out = (size_t)L->oc * L->oh * L->ow;
            most = most > n_in ? most : n_in;
            most = most > n_out ? most : n_out;
        }
        most = round_up(most, 16u);
        if (t < g_model.n_layers && GROUP * most <= GROUP_FLOATS)
            g_model.tail = (uint32_t)t, g_model.tail_stride = most;
    }
}

/* ------------------------------------------------------------------ float32 kernels */
/* acc[p] += sum_{v<5} w[v] x[p+v], p < n: one row of a 5-wide kernel. */
static void taps5_f32(float *restrict acc, const float *restrict x, const float *restrict w, size_t n)
{
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4];
    size_t p;
    for (p = 0; p < n; p++)
        acc[p] += ((w0 * x[p] + w1 * x[p + 1]) + (w2 * x[p + 2] + w3 * x[p + 3])) + w4 * x[p + 4];
}

static void taps1_f32(float *restrict acc, const float *restrict x, float w, size_t n)
{
    size_t p;
    for (p = 0; p < n; p++)
        acc[p] += w * x[p];
}

/* A whole 5 x 5 kernel in one pass (LeNet-5's kernel size): acc is loaded and
 * stored once per 25 taps and the 25 weights stay in registers. */
#define ROW5(r, xr)                                                                                  \
    (((w[5 * (r)] * xr[p] + w[5 * (r) + 1] * xr[p + 1]) + (w[5 * (r) + 2] * xr[p + 2] + w[5 * (r) + 3] * xr[p + 3])) + \
     w[5 * (r) + 4] * xr[p + 4])
static void taps25_f32(float *restrict acc, const float *restrict x, const float *restrict w, size_t wp, size_t n)
{
    const float *x0 = x, *x1 = x + wp, *x2 = x + 2u * wp, *x3 = x + 3u * wp, *x4 = x + 4u * wp;
    size_t p;
    for (p = 0; p < n; p++)
        acc[p] += ((ROW5(0, x0) + ROW5(1, x1)) + (ROW5(2, x2) + ROW5(3, x3))) + ROW5(4, x4);
}
#undef ROW5

/* Copy a C x H x W map into the staging buffer with a zero border of `pad`
 * (spec, CONV: x is 0 outside the map); the slack after it is zeroed too. */
static void stage_f32(const scratch_t *s, const float *x, size_t c_n, size_t h, size_t w, size_t pad)
{
    const size_t hp = h + 2u * pad, wp = w + 2u * pad;
    float *xs = (float *)s->stage;
    size_t c, i;
    memset(xs, 0, (c_n * hp * wp + SLACK) * sizeof *xs);
    for (c = 0; c < c_n; c++)
        for (i = 0; i < h; i++)
            memcpy(xs + (c * hp + i + pad) * wp + pad, x + (c * h + i) * w, w * sizeof *xs);
}

/* y[o] = b[o] + sum_i x[i] wt[i][o] over weights transposed to n x oc: axpys
 * contiguous in o, four inputs per pass. Groups of four zero inputs (ReLU
 * output is mostly zeros) are skipped: the weights are finite (validated), so
 * they would add exact zeros. */
static void gemv_t_f32(const float *restrict wt, const float *restrict b, const float *restrict x,
                       float *restrict y, size_t n, size_t oc)
{
    size_t i, o;
    for (o = 0; o < oc; o++)
        y[o] = b[o];
    for (i = 0; i + 4u <= n; i += 4u) {
        const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
        const float *w0 = wt + i * oc, *w1 = w0 + oc, *w2 = w1 + oc, *w3 = w2 + oc;
        if (x0 == 0.0f && x1 == 0.0f && x2 == 0.0f && x3 == 0.0f)
            continue;
        for (o = 0; o < oc; o++)
            y[o] += (x0 * w0[o] + x1 * w1[o]) + (x2 * w2[o] + x3 * w3[o]);
    }
    for (; i < n; i++) {
        const float xi = x[i], *wi = wt + i * oc;
        for (o = 0; o < oc; o++)
            y[o] += xi * wi[o];
    }
}

/* gemv_t_f32 for m images at once (x and y: one vector every `stride` floats).
 * Every image's y gets exactly gemv_t_f32's operations in gemv_t_f32's order
 * (the same zero groups skipped), so a group of m gives the bits of m calls;
 * the loop over the images is inside the loop over the weights, so each
 * 4 x oc block of weights is read from memory once per group. */
static void gemv_t_f32_group(const float *restrict wt, const float *restrict b, const float *restrict x,
                             float *restrict y, size_t n, size_t oc, size_t m, size_t stride)
{
    size_t i, o, q;
    for (q = 0; q < m; q++)
        for (o = 0; o < oc; o++)
            y[q * stride + o] = b[o];
    for (i = 0; i + 4u <= n; i += 4u) {
        const float *w0 = wt + i * oc, *w1 = w0 + oc, *w2 = w1 + oc, *w3 = w2 + oc;
        for (q = 0; q < m; q++) {
            const float *xq = x + q * stride;
            const float x0 = xq[i], x1 = xq[i + 1], x2 = xq[i + 2], x3 = xq[i + 3];
            float *yq = y + q * stride;
            if (x0 == 0.0f && x1 == 0.0f && x2 == 0.0f && x3 == 0.0f)
                continue;
            for (o = 0; o < oc; o++)
                yq[o] += (x0 * w0[o] + x1 * w1[o]) + (x2 * w2[o] + x3 * w3[o]);
        }
    }
    for (q = 0; q < m; q++) {
        float *yq = y + q * stride;
        size_t r;
        for (r = i; r < n; r++) {
            const float xi = x[q * stride + r], *wi = wt + r * oc;
            for (o = 0; o < oc; o++)
                yq[o] += xi * wi[o];
        }
    }
}

/* CONV, spec "Operations": y[o,i,j] = b[o] + sum_{c,u,v} w[o,c,u,v] x[c, i+u-pad, j+v-pad],
 * pairs (o, c) off the connection table skipped. Computed "wide" (file comment). */
static void conv_f32(const scratch_t *s, const layer_t *L, const float *x, float *y)
{
    const size_t ic = L->ic, k = L->k, oh = L->oh, ow = L->ow;
    const size_t wp = L->iw + 2u * L->pad, plane = (L->ih + 2u * L->pad) * wp;
    const size_t n = round_up(oh * wp, 16u); /* whole vectors; the tail reads land in the slack */
    const float *w = (const float *)L->arr[A_W], *b = (const float *)L->arr[A_B];
    const uint8_t *t = (const uint8_t *)L->arr[A_T];
    const float *xs = (const float *)s->stage;
    float *acc = (float *)s->plane;
    size_t o, c, u, v, i, p;

    stage_f32(s, x, ic, L->ih, L->iw, L->pad);
    if (L->mode == MODE_DENSE) { /* 1 x 1 output: a dense layer over the staged patch */
        gemv_t_f32(L->wt, b, xs, y, ic * plane, L->oc);
        return;
    }
    for (o = 0; o < L->oc; o++) {
        for (p = 0; p < n; p++)
            acc[p] = b[o];
        for (c = 0; c < ic; c++) {
            const float *wc = w + (o * ic + c) * k * k, *xc = xs + c * plane;
            if (t != NULL && t[o * ic + c] == 0u)
                continue;
            if (k == 5u) {
                taps25_f32(acc, xc, wc, wp, n);
                continue;
            }
            for (u = 0; u < k; u++) {
                const float *row = xc + u * wp, *wr = wc + u * k;
                for (v = 0; v + 5u <= k; v += 5u)
                    taps5_f32(acc, row + v, wr + v, n);
                for (; v < k; v++)
                    taps1_f32(acc, row + v, wr[v], n);
            }
        }
        for (i = 0; i < oh; i++) /* drop the garbage columns j >= out_w */
            memcpy(y + (o * oh + i) * ow, acc + i * wp, ow * sizeof *y);
    }
}

#ifdef LENET5_VEC
/* CONV in MODE_ROWS (prepare_conv_lanes_f32): as the wide plane (file
 * comment), but ROWS_OC output channels x RP consecutive wide-plane positions
 * at a time, the sums held in registers: per tap (c, u, v) two VW-float loads
 * of the staged input and one broadcast weight per channel. The last channel
 * block repeats the last channel. The block's planes go to s->plane, then the
 * valid columns (+ bias) to y. */
static void conv_rows_f32(const scratch_t *s, const layer_t *L, const float *x, float *y)
{
    const size_t ic = L->ic, k = L->k, oh = L->oh, ow = L->ow, oc = L->oc, kk = k * k, ntaps = ic * kk;
    const size_t wp = L->iw + 2u * L->pad, plane = (L->ih + 2u * L->pad) * wp;
    const size_t n = round_up(oh * wp, 16u); /* whole blocks; the tail reads land in the slack */
    const float *w = (const float *)L->arr[A_W], *b = (const float *)L->arr[A_B], *xs = (const float *)s->stage;
    float *pl = (float *)s->plane;
    size_t ob, p, r, c, u, v, i, j;

    stage_f32(s, x, ic, L->ih, L->iw, L->pad);
    for (ob = 0; ob < oc; ob += ROWS_OC) {
        const float *wo[ROWS_OC];
        for (r = 0; r < ROWS_OC; r++)
            wo[r] = w + (ob + r < oc ? ob + r : oc - 1u) * ntaps;
        for (p = 0; p < n; p += RP) {
            vf a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0};
            vf a30 = {0}, a31 = {0}, a40 = {0}, a41 = {0}, a50 = {0}, a51 = {0};
            size_t t = 0;
            for (c = 0; c < ic; c++)
                for (u = 0; u < k; u++)
                    for (v = 0; v < k; v++, t++) {
                        const float *xp = xs + c * plane + u * wp + v + p;
                        vf x0, x1;
                        memcpy(&x0, xp, sizeof x0), memcpy(&x1, xp + VW, sizeof x1);
                        a00 += wo[0][t] * x0, a01 += wo[0][t] * x1;
                        a10 += wo[1][t] * x0, a11 += wo[1][t] * x1;
                        a20 += wo[2][t] * x0, a21 += wo[2][t] * x1;
                        a30 += wo[3][t] * x0, a31 += wo[3][t] * x1;
                        a40 += wo[4][t] * x0, a41 += wo[4][t] * x1;
                        a50 += wo[5][t] * x0, a51 += wo[5][t] * x1;
                    }
            memcpy(pl + p, &a00, sizeof a00), memcpy(pl + p + VW, &a01, sizeof a01);
            memcpy(pl + n + p, &a10, sizeof a10), memcpy(pl + n + p + VW, &a11, sizeof a11);
            memcpy(pl + 2u * n + p, &a20, sizeof a20), memcpy(pl + 2u * n + p + VW, &a21, sizeof a21);
            memcpy(pl + 3u * n + p, &a30, sizeof a30), memcpy(pl + 3u * n + p + VW, &a31, sizeof a31);
            memcpy(pl + 4u * n + p, &a40, sizeof a40), memcpy(pl + 4u * n + p + VW, &a41, sizeof a41);
            memcpy(pl + 5u * n + p, &a50, sizeof a50), memcpy(pl + 5u * n + p + VW, &a51, sizeof a51);
        }
        for (r = 0; r < ROWS_OC && ob + r < oc; r++)
            for (i = 0; i < oh; i++) /* drop the garbage columns j >= out_w */
                for (j = 0; j < ow; j++)
                    y[((ob + r) * oh + i) * ow + j] = pl[r * n + i * wp + j] + b[ob + r];
    }
}

/* CONV in MODE_LANES (prepare_conv_lanes_f32): output channels in the lanes.
 * A block of POS output positions x LANES output channels is held in
 * registers (acc); for every kernel tap (c, u, v) each position's input value
 * is broadcast against the tap's LANES weights (contiguous in L->wt), so a
 * tap costs POS x LANES multiply-adds and no acc traffic. Positions run over
 * the oh x ow plane in order; the last block repeats the last position and
 * stores only the real ones. */
static void conv_lanes_f32(const scratch_t *s, const layer_t *L, const float *x, float *y)
{
    const size_t ic = L->ic, k = L->k, ow = L->ow, npos = (size_t)L->oh * ow, oc = L->oc;
    const size_t wp = L->iw + 2u * L->pad, plane = (L->ih + 2u * L->pad) * wp, ntaps = ic * k * k;
    const float *b = (const float *)L->arr[A_B], *xs = (const float *)s->stage;
    size_t ob, p0, q, l, c, u, v;

    stage_f32(s, x, ic, L->ih, L->iw, L->pad);
    for (ob = 0; ob < oc; ob += LANES) {
        const size_t nl = oc - ob < LANES ? oc - ob : LANES;
        for (p0 = 0; p0 < npos; p0 += POS) {
            const float *xq[POS], *wt = L->wt + ob * ntaps;
            float acc[POS][LANES];
            vf a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
            vf a40 = {0}, a41 = {0};
            for (q = 0; q < POS; q++) {
                const size_t p = p0 + q < npos ? p0 + q : npos - 1u;
                xq[q] = xs + p / ow * wp + p % ow;
            }
            for (c = 0; c < ic; c++)
                for (u = 0; u < k; u++) {
                    const size_t row = c * plane + u * wp;
                    for (v = 0; v < k; v++, wt += LANES) {
                        const size_t off = row + v;
                        const float x0 = xq[0][off], x1 = xq[1][off], x2 = xq[2][off], x3 = xq[3][off], x4 = xq[4][off];
                        vf w0, w1;
                        memcpy(&w0, wt, sizeof w0), memcpy(&w1, wt + VW, sizeof w1);
                        a00 += x0 * w0, a01 += x0 * w1;
                        a10 += x1 * w0, a11 += x1 * w1;
                        a20 += x2 * w0, a21 += x2 * w1;
                        a30 += x3 * w0, a31 += x3 * w1;
                        a40 += x4 * w0, a41 += x4 * w1;
                    }
                }
            memcpy(acc[0], &a00, sizeof a00), memcpy(acc[0] + VW, &a01, sizeof a01);
            memcpy(acc[1], &a10, sizeof a10), memcpy(acc[1] + VW, &a11, sizeof a11);
            memcpy(acc[2], &a20, sizeof a20), memcpy(acc[2] + VW, &a21, sizeof a21);
            memcpy(acc[3], &a30, sizeof a30), memcpy(acc[3] + VW, &a31, sizeof a31);
            memcpy(acc[4], &a40, sizeof a40), memcpy(acc[4] + VW, &a41, sizeof a41);
            for (q = 0; q < POS && p0 + q < npos; q++)
                for (l = 0; l < nl; l++)
                    y[(ob + l) * npos + p0 + q] = acc[q][l] + b[ob + l];
        }
    }
}
#endif /* LENET5_VEC */

/* RBF: y[o] = -sum_n (x[n] - w[o,n])^2, summed in double (spec, RBF). */
static void rbf_f32(const layer_t *L, const float *x, float *y)
{
    const size_t n = (size_t)L->ic * L->ih * L->iw;
    const float *w = (const float *)L->arr[A_W];
    size_t o, i;
    for (o = 0; o < L->oc; o++) {
        const float *wo = w + o * n;
        double s = 0.0;
        for (i = 0; i < n; i++) {
            const double d = (double)x[i] - (double)wo[i];
            s += d * d;
        }
        y[o] = (float)-s;
    }
}

/* MAXPOOL / AVGPOOL / SUBSAMPLE: 2 x 2 blocks, stride 2, corners summed as
 * runtime.py does: (top-left + top-right) + (bottom-left + bottom-right). */
static void pool_f32(const layer_t *L, const float *x, float *y)
{
    const size_t h = L->ih, w = L->iw, oh = L->oh, ow = L->ow;
    const float *sw = (const float *)L->arr[A_W], *sb = (const float *)L->arr[A_B];
    size_t c, i, j;
    for (c = 0; c < L->oc; c++)
        for (i = 0; i < oh; i++) {
            const float *r0 = x + (c * h + 2u * i) * w, *r1 = r0 + w;
            float *yr = y + (c * oh + i) * ow;
            if (L->op == OP_MAXPOOL) {
                for (j = 0; j < ow; j++) {
                    const float a = r0[2 * j] > r0[2 * j + 1] ? r0[2 * j] : r0[2 * j + 1];
                    const float d = r1[2 * j] > r1[2 * j + 1] ? r1[2 * j] : r1[2 * j + 1];
                    yr[j] = a > d ? a : d;
                }
            } else if (L->op == OP_AVGPOOL) {
                for (j = 0; j < ow; j++)
                    yr[j] = ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1])) * 0.25f;
            } else { /* SUBSAMPLE: y = w[c] * (block sum) + b[c] */
                const float wc = sw[c], bc = sb[c];
                for (j = 0; j < ow; j++)
                    yr[j] = wc * ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1])) + bc;
            }
        }
}

/* ACT (spec codes); sigmoid and SELU in double as runtime.py. */
static void act_f32(const layer_t *L, const float *restrict x, float *restrict y)
{
    const size_t n = (size_t)L->oc * L->oh * L->ow;
    size_t i;
    switch (L->act) {
    case ACT_RELU:
        for (i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case ACT_TANH:
        for (i = 0; i < n; i++)
            y[i] = tanh_f32(x[i]);
        break;
    case ACT_SIGMOID:
        for (i = 0; i < n; i++)
            y[i] = (float)(1.0 / (1.0 + exp(-(double)x[i])));
        break;
    case ACT_SELU:
        for (i = 0; i < n; i++) {
            const double v = x[i];
            y[i] = (float)(1.0507009873554805 * (v > 0.0 ? v : 1.6732632423543772 * expm1(v)));
        }
        break;
    case ACT_SCALED_TANH: /* 1.7159 tanh(2x/3), constants rounded to float32 first as runtime.py */
        for (i = 0; i < n; i++)
            y[i] = 1.7159f * tanh_f32((float)(2.0 / 3.0) * x[i]);
        break;
    case ACT_ABS:
        for (i = 0; i < n; i++)
            y[i] = fabsf(x[i]);
        break;
    default: /* identity */
        memcpy(y, x, n * sizeof *y);
        break;
    }
}

/* One image through a float32 model; returns the last map. */
/* Layers 0 .. upto-1 of a float model on one image; returns the last map. */
static const float *forward_f32(const scratch_t *s, const unsigned char *img, uint32_t upto)
{
    const size_t h = g_model.img_h, w = g_model.img_w, pad = g_model.pad, wp = g_model.in_w;
    float *x = (float *)s->act[0];
    size_t i, j, cur = 0;
    uint32_t l;
    /* Input (spec, Header): x = a*p + b, the border filled with b. */
    if (pad)
        for (i = 0; i < g_model.in_h * wp; i++)
            x[i] = g_model.in_pad;
    for (i = 0; i < h; i++)
        for (j = 0; j < w; j++)
            x[(i + pad) * wp + j + pad] = g_model.in_f32[img[i * w + j]];
    for (l = 0; l < upto; l++) {
        const layer_t *L = &g_model.layers[l];
        const float *in = (const float *)s->act[cur];
        float *out = (float *)s->act[cur ^ 1u];
        switch (L->op) {
        case OP_CONV:
#ifdef LENET5_VEC
            if (L->mode == MODE_LANES)
                conv_lanes_f32(s, L, in, out);
            else if (L->mode == MODE_ROWS)
                conv_rows_f32(s, L, in, out);
            else
#endif
                conv_f32(s, L, in, out);
            break;
        case OP_DENSE: gemv_t_f32(L->wt, (const float *)L->arr[A_B], in, out, (size_t)L->ic * L->ih * L->iw, L->oc); break;
        case OP_RBF: rbf_f32(L, in, out); break;
        case OP_ACT: act_f32(L, in, out); break;
        default: pool_f32(L, in, out); break;
        }
        cur ^= 1u;
    }
    return (const float *)s->act[cur];
}

/* ------------------------------------------------------------------ int8 kernels (integers only) */
/* acc[p] += sum_{v<5} w[v] x[p+v]. A product of two int8 values fits in int16
 * (|w x| <= 128 * 128 = 2^14), so it is formed in 16-bit lanes and widened to
 * the int32 accumulator. With every weight in [-127, 127] (pair16, checked at
 * load) two products even sum in int16: |w0 x0 + w1 x1| <= 2 * 127 * 128 < 2^15,
 * which saves widenings. */
static void taps5_i8(int32_t *restrict acc, const int16_t *restrict x, const int8_t *restrict w, size_t n,
                     int pair16)
{
    const int16_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4];
    size_t p;
    if (pair16)
        for (p = 0; p < n; p++)
            acc[p] += (int16_t)(w0 * x[p] + w1 * x[p + 1]) + (int16_t)(w2 * x[p + 2] + w3 * x[p + 3]) +
                      (int16_t)(w4 * x[p + 4]);
    else
        for (p = 0; p < n; p++)
            acc[p] += ((int16_t)(w0 * x[p]) + (int16_t)(w1 * x[p + 1])) +
                      ((int16_t)(w2 * x[p + 2]) + (int16_t)(w3 * x[p + 3])) + (int16_t)(w4 * x[p + 4]);
}

static void taps1_i8(int32_t *restrict acc, const int16_t *restrict x, int16_t w, size_t n)
{
    size_t p;
    for (p = 0; p < n; p++)
        acc[p] += (int16_t)(w * x[p]);
}

/* out[o * stride] = sum_i xu[i] w[o * n + i] for o < oc: dot products of one
 * unsigned vector xu (x + 128) with oc signed weight rows. gcc turns each sum
 * into vpdpbusd (AVX-512 VNNI / AVX-VNNI: 64 products an instruction); four
 * rows per pass share the loads of xu. |sum| <= 65536 * 255 * 128 < 2^31. */
static void dots_u8s8(int32_t *restrict out, size_t stride, const uint8_t *restrict xu, const int8_t *restrict w,
                      size_t n, size_t oc)
{
    size_t o = 0, i;
    for (; o + 4u <= oc; o += 4u) {
        const int8_t *w0 = w + o * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (i = 0; i < n; i++) {
            s0 += xu[i] * w0[i];
            s1 += xu[i] * w1[i];
            s2 += xu[i] * w2[i];
            s3 += xu[i] * w3[i];
        }
        out[o * stride] = s0, out[(o + 1u) * stride] = s1, out[(o + 2u) * stride] = s2, out[(o + 3u) * stride] = s3;
    }
    for (; o < oc; o++) {
        const int8_t *wo = w + o * n;
        int32_t s0 = 0;
        for (i = 0; i < n; i++)
            s0 += xu[i] * wo[i];
        out[o * stride] = s0;
    }
}

#ifdef LENET5_VNNI
/* The same sums as dots_u8s8 with the output channels in the 16 int32 lanes of
 * a vector: out[o * cstride + p * pstride] = sum_{i < kl} x[p * xstride + i] w[o][i]
 * for p < npos, o < oc. Each vpdpbusd takes 4 bytes of x (broadcast) against 4
 * weights of 16 channels (prep_lanes); the weights past the real length are 0,
 * so the (up to 3) bytes of x read past it do not matter. */
static void dots16(int32_t *out, size_t cstride, size_t pstride, const uint8_t *x, size_t xstride, size_t npos,
                   const int8_t *wl, size_t kl, size_t oc)
{
    const size_t ng = kl / 4u;
    int32_t tmp[4][16];
    size_t ob, p, g, q, lane;
    for (ob = 0; ob * 16u < oc; ob++) {
        const int8_t *wb = wl + ob * ng * 64u;
        const size_t nl = oc - ob * 16u < 16u ? oc - ob * 16u : 16u;
        if (npos == 1u) { /* one vector (DENSE): four chains over the groups hide the latency */
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
            int32_t v0, v1, v2, v3;
            for (g = 0; g + 4u <= ng; g += 4u) {
                memcpy(&v0, x + 4u * g, 4u), memcpy(&v1, x + 4u * g + 4u, 4u);
                memcpy(&v2, x + 4u * g + 8u, 4u), memcpy(&v3, x + 4u * g + 12u, 4u);
                a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(v0), _mm512_loadu_si512((const void *)(wb + g * 64u)));
                a1 = _mm512_dpbusd_epi32(a1, _mm512_set1_epi32(v1), _mm512_loadu_si512((const void *)(wb + g * 64u + 64u)));
                a2 = _mm512_dpbusd_epi32(a2, _mm512_set1_epi32(v2), _mm512_loadu_si512((const void *)(wb + g * 64u + 128u)));
                a3 = _mm512_dpbusd_epi32(a3, _mm512_set1_epi32(v3), _mm512_loadu_si512((const void *)(wb + g * 64u + 192u)));
            }
            for (; g < ng; g++) {
                memcpy(&v0, x + 4u * g, 4u);
                a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(v0), _mm512_loadu_si512((const void *)(wb + g * 64u)));
            }
            a0 = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
            _mm512_storeu_si512((void *)tmp[0], a0);
            for (lane = 0; lane < nl; lane++)
                out[(ob * 16u + lane) * cstride] = tmp[0][lane];
            continue;
        }
        for (p = 0; p < npos; p += 4u) {
            const size_t np = npos - p < 4u ? npos - p : 4u;
            const uint8_t *x0 = x + p * xstride, *x1 = x0 + (np > 1u ? xstride : 0u);
            const uint8_t *x2 = x0 + (np > 2u ? 2u * xstride : 0u), *x3 = x0 + (np > 3u ? 3u * xstride : 0u);
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
            for (g = 0; g < ng; g++) {
                const __m512i wv = _mm512_loadu_si512((const void *)(wb + g * 64u));
                int32_t v0, v1, v2, v3;
                memcpy(&v0, x0 + 4u * g, 4u), memcpy(&v1, x1 + 4u * g, 4u);
                memcpy(&v2, x2 + 4u * g, 4u), memcpy(&v3, x3 + 4u * g, 4u);
                a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(v0), wv);
                a1 = _mm512_dpbusd_epi32(a1, _mm512_set1_epi32(v1), wv);
                a2 = _mm512_dpbusd_epi32(a2, _mm512_set1_epi32(v2), wv);
                a3 = _mm512_dpbusd_epi32(a3, _mm512_set1_epi32(v3), wv);
            }
            _mm512_storeu_si512((void *)tmp[0], a0), _mm512_storeu_si512((void *)tmp[1], a1);
            _mm512_storeu_si512((void *)tmp[2], a2), _mm512_storeu_si512((void *)tmp[3], a3);
            for (q = 0; q < np; q++)
                for (lane = 0; lane < nl; lane++)
                    out[(ob * 16u + lane) * cstride + (p + q) * pstride] = tmp[q][lane];
        }
    }
}
#endif

/* int8 CONV in MODE_WIDE (prepare_conv_i8): int32 sums (fan-in <= 65536, so
 * |sum| <= 2^30), the i32 bias added in 64 bits, requantised per channel. */
static void conv_wide_i8(const scratch_t *s, const layer_t *L, const int8_t *x, void *y, const int8_t *lut)
{
    const size_t ic = L->ic, k = L->k, oh = L->oh, ow = L->ow, pad = L->pad, h = L->ih, w_in = L->iw;
    const size_t wp = w_in + 2u * pad, hp = h + 2u * pad, plane = hp * wp;
    const size_t n = round_up(oh * wp, 32u);
    const int8_t *w = (const int8_t *)L->arr[A_W];
    const int32_t *b = (const int32_t *)L->arr[A_B];
    const uint8_t *t = (const uint8_t *)L->arr[A_T];
    int16_t *xs = (int16_t *)s->stage;
    int32_t *acc = (int32_t *)s->plane;
    size_t o, c, u, v, i, j;

    /* stage as int16 with the zero border (q = 0 is the real value 0) */
    memset(xs, 0, (ic * plane + SLACK) * sizeof *xs);
    for (c = 0; c < ic; c++)
        for (i = 0; i < h; i++) {
            int16_t *dst = xs + (c * hp + i + pad) * wp + pad;
            const int8_t *src = x + (c * h + i) * w_in;
            for (j = 0; j < w_in; j++)
                dst[j] = src[j];
        }
    for (o = 0; o < L->oc; o++) {
        memset(acc, 0, n * sizeof *acc);
        for (c = 0; c < ic; c++) {
            const int8_t *wc = w + (o * ic + c) * k * k;
            if (t != NULL && t[o * ic + c] == 0u)
                continue;
            for (u = 0; u < k; u++) {
                const int16_t *row = xs + c * plane + u * wp;
                const int8_t *wr = wc + u * k;
                for (v = 0; v + 5u <= k; v += 5u)
                    taps5_i8(acc, row + v, wr + v, n, L->pair16);
                for (; v < k; v++)
                    taps1_i8(acc, row + v, wr[v], n);
            }
        }
        /* Requantise the whole wide plane in one long (vectorised) run into a
         * scratch row, then keep the valid columns j < out_w of each row. */
        requant_out(L, s->acc, 0u, acc, oh * wp, b[o], o, lut);
        for (i = 0; i < oh; i++) {
            if (L->wide_out)
                memcpy((int32_t *)y + (o * oh + i) * ow, (const int32_t *)s->acc + i * wp, ow * sizeof(int32_t));
            else
                memcpy((int8_t *)y + (o * oh + i) * ow, (const int8_t *)s->acc + i * wp, ow);
        }
    }
}

/* int8 CONV in MODE_DOT (prepare_conv_i8): im2col, then one u8 x s8 dot per output. */
static void conv_dot_i8(const scratch_t *s, const layer_t *L, const int8_t *x, void *y, const int8_t *lut)
{
    const size_t ic = L->ic, k = L->k, oh = L->oh, ow = L->ow, pad = L->pad, h = L->ih, w_in = L->iw;
    const size_t wp = w_in + 2u * pad, hp = h + 2u * pad, plane = hp * wp, kp = L->kp, npos = oh * ow;
    const int32_t *b = (const int32_t *)L->arr[A_B];
    uint8_t *xs = (uint8_t *)s->stage, *patch = (uint8_t *)s->plane;
    int32_t *acc = (int32_t *)s->acc;
    size_t o, c, u, i, j, pos;

    /* stage x + 128 (unsigned) with the border at 0 + 128, plus 16 bytes of slack */
    memset(xs, 128, ic * plane + 16u);
    for (c = 0; c < ic; c++)
        for (i = 0; i < h; i++) {
            uint8_t *dst = xs + (c * hp + i + pad) * wp + pad;
            const int8_t *src = x + (c * h + i) * w_in;
            for (j = 0; j < w_in; j++)
                dst[j] = (uint8_t)(src[j] + 128);
        }
    /* patches: row u of channel c under output (i, j) is k bytes at xs[c][i+u][j].
     * Each copy moves 16 bytes (k <= 16; a fixed size compiles to one move) and
     * the next copy overwrites the excess; bytes past in_c*k*k meet zero
     * weights, so their values do not matter. */
    for (i = 0, pos = 0; i < oh; i++)
        for (j = 0; j < ow; j++, pos++) {
            uint8_t *dst = patch + pos * kp;
            for (c = 0; c < ic; c++)
                for (u = 0; u < k; u++, dst += k)
                    memcpy(dst, xs + c * plane + (i + u) * wp + j, 16u);
        }
#ifdef LENET5_VNNI
    if (L->wl != NULL)
        dots16(acc, npos, 1u, patch, kp, npos, L->wl, L->kl, L->oc);
    else
#endif
    for (pos = 0; pos < npos; pos++) /* kp is a multiple of 64: whole vectors, no remainder loop */
        dots_u8s8(acc + pos, npos, patch + pos * kp, L->wq, kp, L->oc);
    for (o = 0; o < L->oc; o++) /* sum w (x + 128) - 128 sum w = sum w x */
        requant_out(L, y, o * npos, acc + o * npos, npos, (int64_t)b[o] - 128 * (int64_t)L->wsum[o], o, lut);
}

/* DENSE on an int8 vector: u8 x s8 dots as in MODE_DOT, bias in 64 bits, requantised. */
static void dense_i8(const scratch_t *s, const layer_t *L, const int8_t *x, void *y, const int8_t *lut)
{
    const size_t n = (size_t)L->ic * L->ih * L->iw;
    const int8_t *w = (const int8_t *)L->arr[A_W];
    const int32_t *b = (const int32_t *)L->arr[A_B];
    uint8_t *xu = (uint8_t *)s->stage;
    int32_t *acc = (int32_t *)s->acc;
    size_t o, i;
    for (i = 0; i < n; i++)
        xu[i] = (uint8_t)(x[i] + 128);
#ifdef LENET5_VNNI
    if (L->wl != NULL)
        dots16(acc, 1u, 0u, xu, 0u, 1u, L->wl, L->kl, L->oc);
    else
#endif
    dots_u8s8(acc, 1u, xu, w, n, L->oc);
    for (o = 0; o < L->oc; o++) /* sum w (x + 128) - 128 sum w = sum w x */
        requant_out(L, y, o, acc + o, 1u, (int64_t)b[o] - 128 * (int64_t)L->wsum[o], o, lut);
}

/* RBF on int8: acc = -sum (x - w)^2 in 64 bits, clamped to i32. A squared
 * difference is at most 255^2, so 32768 of them still fit an int32 partial. */
static void rbf_i8(const layer_t *L, const int8_t *x, int32_t *y)
{
    const size_t n = (size_t)L->ic * L->ih * L->iw;
    const int8_t *w = (const int8_t *)L->arr[A_W];
    size_t o, i0, i;
    for (o = 0; o < L->oc; o++) {
        const int8_t *wo = w + o * n;
        int64_t total = 0;
        for (i0 = 0; i0 < n; i0 += 32768u) {
            const size_t end = n - i0 < 32768u ? n : i0 + 32768u;
            int32_t part = 0;
            for (i = i0; i < end; i++) {
                const int32_t d = (int32_t)x[i] - (int32_t)wo[i];
                part += d * d;
            }
            total += part;
        }
        y[o] = clamp32(-total);
    }
}

/* MAXPOOL (exact), AVGPOOL sign(s) ((|s| + 2) >> 2), SUBSAMPLE w[c] s + b[c]
 * requantised; s is the 2 x 2 block sum. lut: a following ACT, fused. */
static void pool_i8(const scratch_t *s, const layer_t *L, const int8_t *x, void *y, const int8_t *lut)
{
    const size_t h = L->ih, w = L->iw, oh = L->oh, ow = L->ow;
    int32_t *acc = (int32_t *)s->acc;
    int8_t vmax[2u * MAX_DIM];
    int16_t vsum[2u * MAX_DIM];
    size_t c, i, j;
    for (c = 0; c < L->oc; c++) {
        for (i = 0; i < oh; i++) {
            const int8_t *r0 = x + (c * h + 2u * i) * w, *r1 = r0 + w;
            int8_t *yr = (int8_t *)y + (c * oh + i) * ow;
            if (L->op == OP_MAXPOOL) { /* vertical max over contiguous rows, then pairs */
#if defined(LENET5_VNNI) && defined(__AVX512VL__)
                /* 32 outputs a step: the row max, then each 16-bit lane's max of
                 * its two bytes in the low byte, kept by vpmovwb */
                for (j = 0; j < ow; j += 32u) {
                    const size_t nb = 2u * (ow - j < 32u ? ow - j : 32u);
                    const __mmask64 m = (__mmask64)(~0ULL >> (64u - nb));
                    const __m512i v = _mm512_max_epi8(_mm512_maskz_loadu_epi8(m, (const void *)(r0 + 2u * j)),
                                                      _mm512_maskz_loadu_epi8(m, (const void *)(r1 + 2u * j)));
                    _mm256_mask_storeu_epi8((void *)(yr + j), (__mmask32)(~0u >> (32u - nb / 2u)),
                                            _mm512_cvtepi16_epi8(_mm512_max_epi8(v, _mm512_srli_epi16(v, 8))));
                }
                continue;
#endif
                for (j = 0; j < 2u * ow; j++)
                    vmax[j] = r0[j] > r1[j] ? r0[j] : r1[j];
                for (j = 0; j < ow; j++)
                    yr[j] = vmax[2 * j] > vmax[2 * j + 1] ? vmax[2 * j] : vmax[2 * j + 1];
            } else if (L->op == OP_AVGPOOL) {
                for (j = 0; j < ow; j++) {
                    const int s = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
                    yr[j] = (int8_t)(s < 0 ? -((-s + 2) >> 2) : (s + 2) >> 2); /* |s| <= 512: in range */
                }
            } else { /* SUBSAMPLE: |w s| <= 128 * 512, so w s fits int32; + b in 64 bits */
                const int32_t wc = ((const int8_t *)L->arr[A_W])[c];
                for (j = 0; j < 2u * ow; j++) /* vertical sums first, contiguous */
                    vsum[j] = (int16_t)(r0[j] + r1[j]);
                for (j = 0; j < ow; j++)
                    acc[i * ow + j] = wc * (vsum[2 * j] + vsum[2 * j + 1]);
                continue;
            }
        }
        if (L->op == OP_SUBSAMPLE) /* requantise the channel's plane in one run */
            requant_out(L, y, c * oh * ow, acc, oh * ow, ((const int32_t *)L->arr[A_B])[c], c, lut);
    }
    if (lut != NULL && L->op != OP_SUBSAMPLE) /* the fused ACT over the whole map */
        lut_i8((int8_t *)y, L->oc * oh * ow, lut);
}

/* ACT on int8: y = t[x + 128] (the LUT folds the activation and the rescale). */
static void act_i8(const layer_t *L, const int8_t *restrict x, int8_t *restrict y)
{
    const size_t n = (size_t)L->oc * L->oh * L->ow;
    const int8_t *t = (const int8_t *)L->arr[A_T];
    size_t i;
    for (i = 0; i < n; i++)
        y[i] = t[x[i] + 128];
}

/* One image through an int8 model; returns the buffer holding the last map
 * (int8, or int32 when the last layer has a 32-bit output). */
static const void *forward_i8(const scratch_t *s, const unsigned char *img)
{
    const size_t h = g_model.img_h, w = g_model.img_w, pad = g_model.pad, wp = g_model.in_w;
    const int8_t *in_lut = g_model.in_lut;
    int8_t *x = (int8_t *)s->act[0];
    size_t i, j, cur = 0;
    uint32_t l;
    /* Input (spec, "int8 files"): q = lut[p]; padding cells hold lut[0]. */
    if (pad)
        memset(x, (unsigned char)in_lut[0], g_model.in_h * wp);
    for (i = 0; i < h; i++)
        for (j = 0; j < w; j++)
            x[(i + pad) * wp + j + pad] = in_lut[img[i * w + j]];
    for (l = 0; l < g_model.n_layers; l++) {
        const layer_t *L = &g_model.layers[l];
        const int8_t *in = (const int8_t *)s->act[cur];
        void *out = s->act[cur ^ 1u];
        /* An ACT right after a layer with an int8 output is applied by that
         * layer as it stores (the same values, one pass fewer). */
        const int8_t *lut = NULL;
        if (l + 1u < g_model.n_layers && g_model.layers[l + 1u].op == OP_ACT && L->op != OP_ACT &&
            L->op != OP_RBF && !L->wide_out)
            lut = (const int8_t *)g_model.layers[l + 1u].arr[A_T];
        switch (L->op) {
        case OP_CONV:
            if (L->mode == MODE_DOT)
                conv_dot_i8(s, L, in, out, lut);
            else
                conv_wide_i8(s, L, in, out, lut);
            break;
        case OP_DENSE: dense_i8(s, L, in, out, lut); break;
        case OP_RBF: rbf_i8(L, in, (int32_t *)out); break;
        case OP_ACT: act_i8(L, in, (int8_t *)out); break;
        default: pool_i8(s, L, in, out, lut); break;
        }
        if (lut != NULL)
            l++; /* the ACT is done */
        cur ^= 1u;
    }
    return s->act[cur];
}

/* ------------------------------------------------------------------ public entry points */
/* Images first .. first + count - 1 of a batch through the loaded model with
 * scratch s (the single- and multi-threaded paths both come here). */
static void run_range(const scratch_t *s, const unsigned char *images, size_t first, size_t count, void *logits)
{
    const size_t px = (size_t)g_model.img_h * g_model.img_w, nc = g_model.num_classes;
    size_t i, c;
    if (g_model.dtype == LENET5_FLOAT32 && g_model.tail == g_model.n_layers) {
        for (i = first; i < first + count; i++)
            memcpy((float *)logits + i * nc, forward_f32(s, images + i * px, g_model.n_layers), nc * sizeof(float));
        return;
    }
    if (g_model.dtype == LENET5_FLOAT32) { /* the front image by image, the tail GROUP images at a time */
        const size_t st = g_model.tail_stride;
        const layer_t *T = &g_model.layers[g_model.tail];
        const size_t n_in = (size_t)T->ic * T->ih * T->iw;
        for (i = first; i < first + count; i += GROUP) {
            const size_t m = first + count - i < GROUP ? first + count - i : GROUP;
            size_t q, cur = 0;
            uint32_t l;
            for (q = 0; q < m; q++)
                memcpy(s->grp[0] + q * st, forward_f32(s, images + (i + q) * px, g_model.tail), n_in * sizeof(float));
            for (l = g_model.tail; l < g_model.n_layers; l++, cur ^= 1u) {
                const layer_t *L = &g_model.layers[l];
                const float *in = s->grp[cur];
                float *out = s->grp[cur ^ 1u];
                if (L->op == OP_DENSE)
                    gemv_t_f32_group(L->wt, (const float *)L->arr[A_B], in, out, (size_t)L->ic * L->ih * L->iw, L->oc,
                                     m, st);
                else
                    for (q = 0; q < m; q++) {
                        if (L->op == OP_ACT)
                            act_f32(L, in + q * st, out + q * st);
                        else
                            rbf_f32(L, in + q * st, out + q * st);
                    }
            }
            for (q = 0; q < m; q++)
                memcpy((float *)logits + (i + q) * nc, s->grp[cur] + q * st, nc * sizeof(float));
        }
        return;
    }
    for (i = first; i < first + count; i++) {
        const void *out = forward_i8(s, images + i * px);
        int32_t *q = (int32_t *)logits + i * nc;
        if (g_model.layers[g_model.n_layers - 1u].wide_out)
            memcpy(q, out, nc * sizeof *q);
        else
            for (c = 0; c < nc; c++)
                q[c] = ((const int8_t *)out)[c];
    }
}

static int run_check(int dtype, const unsigned char *images, size_t n, const void *logits)
{
    return g_model.loaded && g_model.dtype == dtype && (n == 0u || (images != NULL && logits != NULL));
}

int lenet5_run_float(const unsigned char *images, size_t n, float *logits)
{
    if (!run_check(LENET5_FLOAT32, images, n, logits))
        return LENET5_E_ARG;
    run_range(&g_scratch, images, 0u, n, logits);
    return LENET5_OK;
}

int lenet5_run_int8(const unsigned char *images, size_t n, int32_t *logits)
{
    if (!run_check(LENET5_INT8, images, n, logits))
        return LENET5_E_ARG;
    run_range(&g_scratch, images, 0u, n, logits);
    return LENET5_OK;
}

/* Seven working buffers per helper thread (the five of scratch_t and the two
 * group buffers of the float tail), each followed by a 64-byte gap (poisoned
 * under AddressSanitizer, so an overrun is reported), plus 63 bytes to align
 * the start. */
#define WS_GAP 64u
static size_t grp_bytes(void) { return round_up(GROUP * g_model.tail_stride * sizeof(float), 64u); }
static size_t thread_bytes(void) { return 5u * (g_model.buf_bytes + WS_GAP) + 2u * (grp_bytes() + WS_GAP); }

size_t lenet5_workspace_bytes(unsigned threads)
{
    if (!g_model.loaded || threads < 1u || threads > LENET5_MAX_THREADS)
        return 0u;
    return threads == 1u ? 0u : (size_t)(threads - 1u) * thread_bytes() + 63u;
}

#ifdef LENET5_THREADS
#include <pthread.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define WS_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define WS_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define WS_POISON(p, n) ((void)(p), (void)(n))
#define WS_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

typedef struct {
    scratch_t s;
    const unsigned char *images;
    void *logits;
    size_t first, count;
} job_t;

static void *worker(void *arg)
{
    const job_t *j = (const job_t *)arg;
    run_range(&j->s, j->images, j->first, j->count, j->logits);
    return NULL;
}

/* The helper threads: started by the first multi-threaded call that needs
 * them and then kept, each waiting for the next batch (a thread started per
 * call is queued on the caller's core by the scheduler and reaches the other
 * core late, which cost a third of the 2-thread throughput). Helper `slot`
 * (1..pool_size) runs jobs[slot] of each batch published with slot <=
 * pool_active. All state is static: nothing is allocated. A child of fork()
 * has no helpers: pool_forked resets the pool there. */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_go = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER;
static pthread_t pool_tid[LENET5_MAX_THREADS];
static unsigned long pool_seen0[LENET5_MAX_THREADS]; /* the batch count when each helper was started */
static unsigned pool_size, pool_active, pool_left;
static unsigned long pool_batch;                     /* batches published so far */
static const job_t *pool_jobs;
static int pool_atfork;

static void pool_forked(void)
{
    pthread_mutex_init(&pool_mu, NULL);
    pthread_cond_init(&pool_go, NULL);
    pthread_cond_init(&pool_done, NULL);
    pool_size = pool_active = pool_left = 0u;
    pool_batch = 0u;
    pool_jobs = NULL;
}

static void *pool_main(void *arg)
{
    unsigned slot = (unsigned)(uintptr_t)arg;
    unsigned long seen;
    pthread_mutex_lock(&pool_mu);
    seen = pool_seen0[slot];
    for (;;) {
        while (pool_batch == seen)
            pthread_cond_wait(&pool_go, &pool_mu);
        seen = pool_batch;
        if (slot <= pool_active) {
            const job_t *j = &pool_jobs[slot];
            pthread_mutex_unlock(&pool_mu);
            run_range(&j->s, j->images, j->first, j->count, j->logits);
            pthread_mutex_lock(&pool_mu);
            if (--pool_left == 0u)
                pthread_cond_signal(&pool_done);
        }
    }
    return NULL;
}

/* Split the batch into `threads` contiguous chunks (as even as can be, none
 * empty): the calling thread runs the first with the static buffers, the pool's
 * helper threads the others, each with its own buffers carved from the
 * workspace. Every image is computed by one thread with the same code, so the
 * logits do not depend on the thread count. A helper that cannot be started
 * has its chunk run by the calling thread afterwards (slower, same result). */
static int run_mt(int dtype, const unsigned char *images, size_t n, void *logits, unsigned threads, void *workspace,
                  size_t workspace_bytes)
{
    job_t jobs[LENET5_MAX_THREADS];
    unsigned char *base;
    size_t t, b, nt;
    if (!run_check(dtype, images, n, logits) || threads < 1u || threads > LENET5_MAX_THREADS)
        return LENET5_E_ARG;
    nt = threads < n ? threads : n; /* never an empty chunk */
    if (nt <= 1u) {
        run_range(&g_scratch, images, 0u, n, logits);
        return LENET5_OK;
    }
    if (workspace == NULL || workspace_bytes < lenet5_workspace_bytes((unsigned)nt))
        return LENET5_E_ARG;
    base = (unsigned char *)workspace + (64u - (size_t)((uintptr_t)workspace % 64u)) % 64u;
    for (t = 0; t < nt; t++) {
        job_t *j = &jobs[t];
        j->images = images, j->logits = logits;
        j->first = n * t / nt, j->count = n * (t + 1u) / nt - j->first;
        if (t == 0u) {
            j->s = g_scratch;
            continue;
        }
        for (b = 0; b < 5u; b++) {
            unsigned char *p = base + (t - 1u) * thread_bytes() + b * (g_model.buf_bytes + WS_GAP);
            void **slot = b < 2u ? &j->s.act[b] : b == 2u ? &j->s.stage : b == 3u ? &j->s.plane : &j->s.acc;
            *slot = p;
            WS_POISON(p + g_model.buf_bytes, WS_GAP);
        }
        for (b = 0; b < 2u; b++) {
            unsigned char *p = base + (t - 1u) * thread_bytes() + 5u * (g_model.buf_bytes + WS_GAP) +
                               b * (grp_bytes() + WS_GAP);
            j->s.grp[b] = (float *)(void *)p;
            WS_POISON(p + grp_bytes(), WS_GAP);
        }
    }
    pthread_mutex_lock(&pool_mu);
    if (!pool_atfork)
        pool_atfork = pthread_atfork(NULL, NULL, pool_forked) == 0;
    while (pool_size + 1u < nt) { /* start the helpers this batch needs and the pool lacks */
        pool_seen0[pool_size + 1u] = pool_batch;
        if (pthread_create(&pool_tid[pool_size + 1u], NULL, pool_main, (void *)(uintptr_t)(pool_size + 1u)) != 0)
            break;
        pool_size++;
    }
    pool_active = pool_size + 1u < nt ? pool_size : (unsigned)nt - 1u;
    pool_left = pool_active;
    pool_jobs = jobs;
    pool_batch++;
    pthread_cond_broadcast(&pool_go);
    pthread_mutex_unlock(&pool_mu);
    worker(&jobs[0]);
    for (t = (size_t)pool_active + 1u; t < nt; t++) { /* helpers that could not be started */
        jobs[t].s = g_scratch; /* the calling thread is done with the static buffers */
        worker(&jobs[t]);
    }
    pthread_mutex_lock(&pool_mu);
    while (pool_left > 0u)
        pthread_cond_wait(&pool_done, &pool_mu);
    pool_jobs = NULL;
    pthread_mutex_unlock(&pool_mu);
    WS_UNPOISON(base, (nt - 1u) * thread_bytes());
    return LENET5_OK;
}

int lenet5_run_float_mt(const unsigned char *images, size_t n, float *logits, unsigned threads, void *workspace,
                        size_t workspace_bytes)
{
    return run_mt(LENET5_FLOAT32, images, n, logits, threads, workspace, workspace_bytes);
}

int lenet5_run_int8_mt(const unsigned char *images, size_t n, int32_t *logits, unsigned threads, void *workspace,
                       size_t workspace_bytes)
{
    return run_mt(LENET5_INT8, images, n, logits, threads, workspace, workspace_bytes);
}
#endif /* LENET5_THREADS */

size_t lenet5_argmax_float(const float *v, size_t n)
{
    size_t i, best = 0;
    for (i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

size_t lenet5_argmax_int32(const int32_t *v, size_t n)
{
    size_t i, best = 0;
    for (i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}
