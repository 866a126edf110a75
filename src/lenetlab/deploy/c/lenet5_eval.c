/*
 * lenet5_eval - accuracy and speed of the C runtime on an IDX test set.
 *
 *   lenet5_eval IMAGES.idx LABELS.idx [--model FILE.flat] [--logits OUT.bin] [--repeat N] [--batch B] [--threads T]
 *
 * IMAGES: plain (not gzip) IDX, unsigned byte, N x H x W with H x W the
 * model's image size; LABELS: IDX unsigned byte, N. The model is the flat file
 * embedded by lenet5_model.c unless --model names one. Prints one parsable line
 *
 *   accuracy 0.9919 images 10000 seconds 0.41 images_per_s 24390 repeat 1 batch 10000 cpu_seconds 0.41 threads 1
 *
 * (seconds: wall-clock time of all repeats, images_per_s = images * repeat /
 * seconds; cpu_seconds: the process's CPU time, steadier on a busy machine).
 * --logits writes every image's logits, N x num_classes little-endian float32
 * (float model) or int32 (int8 model). --batch B hands the runtime B images
 * per call (default: all of them); --batch 1 measures single-image latency.
 * --threads T splits each call's batch across T threads (lenet5_run_*_mt;
 * default 1, the single-threaded call); T > 1 needs a build with
 * -DLENET5_THREADS -pthread. cpu_seconds then counts every thread.
 * Exit status: 0 ok, 1 bad file or model, 2 bad usage.
 *
 * This harness uses malloc for the data sets and the threads' workspace; the
 * runtime (lenet5.c) does not.
 */
#define _POSIX_C_SOURCE 199309L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lenet5.h"

extern const unsigned char lenet5_model_data[];
extern const size_t lenet5_model_size;

#define LENET5_STR2(x) #x
#define LENET5_STR(x) LENET5_STR2(x)

static const char *const USAGE =
    "usage: lenet5_eval IMAGES.idx LABELS.idx [--model FILE.flat] [--logits OUT.bin] [--repeat N] [--batch B]"
    " [--threads T]\n";

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "lenet5_eval: %s%s%s\n%s", what, arg ? " " : "", arg ? arg : "", USAGE);
    return 2;
}

/* Read a whole file; NULL (and a message on stderr) on failure. */
static unsigned char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;
    if (f == NULL) {
        fprintf(stderr, "lenet5_eval: %s: cannot open (%s)\n", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "lenet5_eval: %s: cannot determine the size (not a regular file?)\n", path);
        fclose(f);
        return NULL;
    }
    buf = (unsigned char *)malloc(n > 0 ? (size_t)n : 1u);
    if (buf == NULL) {
        fprintf(stderr, "lenet5_eval: %s: out of memory for %ld bytes\n", path, n);
        fclose(f);
        return NULL;
    }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "lenet5_eval: %s: read error\n", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Check an IDX header: magic 00 00 08 ndim (unsigned byte data), the dims, and
 * that the payload is exactly the product of the dims (no more, no less).
 * Returns the number of items (dims[0]) or 0 after printing an error. */
static size_t check_idx(const char *path, const unsigned char *d, size_t size, unsigned ndim, uint32_t dims[3])
{
    uint64_t payload = 1;
    unsigned i;
    if (size >= 2u && d[0] == 0x1Fu && d[1] == 0x8Bu) {
        fprintf(stderr, "lenet5_eval: %s: gzip-compressed; decompress it first (gunzip)\n", path);
        return 0;
    }
    if (size < 4u + 4u * ndim) {
        fprintf(stderr, "lenet5_eval: %s: %lu bytes, too short for an IDX header\n", path, (unsigned long)size);
        return 0;
    }
    if (d[0] != 0u || d[1] != 0u || d[2] != 0x08u || d[3] != ndim) {
        fprintf(stderr, "lenet5_eval: %s: bad IDX magic %02x%02x%02x%02x (expected 000008%02x: unsigned bytes, %u dimension%s)\n",
                path, d[0], d[1], d[2], d[3], ndim, ndim, ndim == 1 ? "" : "s");
        return 0;
    }
    for (i = 0; i < ndim; i++) {
        dims[i] = be32(d + 4 + 4 * i);
        if (dims[i] == 0u) {
            fprintf(stderr, "lenet5_eval: %s: dimension %u is 0\n", path, i);
            return 0;
        }
        payload *= dims[i]; /* three factors < 2^32 each can exceed 2^64: check as we go */
        if (payload > (uint64_t)1 << 40) {
            fprintf(stderr, "lenet5_eval: %s: dimensions declare over 2^40 bytes\n", path);
            return 0;
        }
    }
    if ((uint64_t)size != 4u + 4u * ndim + payload) {
        fprintf(stderr, "lenet5_eval: %s: %lu bytes, but the header declares %llu (truncated or trailing data)\n",
                path, (unsigned long)size, (unsigned long long)(4u + 4u * ndim + payload));
        return 0;
    }
    return dims[0];
}

/* Strict decimal in [1, max]. */
static int parse_count(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1u || v > max)
        return 0;
    *out = v;
    return 1;
}

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL}, *model_path = NULL, *logits_path = NULL;
    unsigned long repeat = 1, batch = 0, threads = 1;
    unsigned char *images = NULL, *labels = NULL, *model_file = NULL;
    size_t n_pos = 0, img_size = 0, lab_size = 0, model_size = 0, n, nc, px, i, r, correct = 0;
    uint32_t img_dims[3], lab_dims[3];
    void *logits = NULL, *workspace = NULL;
    size_t workspace_bytes = 0;
    char msg[LENET5_MSG_BYTES];
    int rc = 1, a, is_int8;
    double t0, seconds, cpu_seconds;
    clock_t c0;

    for (a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--model") == 0 || strcmp(arg, "--logits") == 0 || strcmp(arg, "--repeat") == 0 ||
            strcmp(arg, "--batch") == 0 || strcmp(arg, "--threads") == 0) {
            if (a + 1 >= argc)
                return usage_error("missing value after", arg);
            if (strcmp(arg, "--model") == 0)
                model_path = argv[++a];
            else if (strcmp(arg, "--logits") == 0)
                logits_path = argv[++a];
            else if (strcmp(arg, "--repeat") == 0) {
                if (!parse_count(argv[++a], 1000000ul, &repeat))
                    return usage_error("--repeat takes a whole number 1..1000000, got", argv[a]);
            } else if (strcmp(arg, "--threads") == 0) {
                if (!parse_count(argv[++a], LENET5_MAX_THREADS, &threads))
                    return usage_error("--threads takes a whole number 1.." LENET5_STR(LENET5_MAX_THREADS) ", got",
                                       argv[a]);
#ifndef LENET5_THREADS
                if (threads > 1u)
                    return usage_error("--threads > 1 needs a build with -DLENET5_THREADS -pthread, got", argv[a]);
#endif
            } else if (!parse_count(argv[++a], 1ul << 30, &batch))
                return usage_error("--batch takes a whole number >= 1, got", argv[a]);
        } else if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(USAGE, stdout);
            return 0;
        } else if (arg[0] == '-' && arg[1] == '-') {
            return usage_error("unknown option", arg);
        } else {
            if (n_pos == 2)
                return usage_error("unexpected argument", arg);
            pos[n_pos++] = arg;
        }
    }
    if (n_pos != 2)
        return usage_error("need IMAGES.idx and LABELS.idx", NULL);

    /* the model */
    if (model_path != NULL) {
        model_file = read_file(model_path, &model_size);
        if (model_file == NULL)
            goto out;
        if (lenet5_load(model_file, model_size, msg, sizeof msg) != LENET5_OK) {
            fprintf(stderr, "lenet5_eval: %s: %s\n", model_path, msg);
            goto out;
        }
    } else if (lenet5_load(lenet5_model_data, lenet5_model_size, msg, sizeof msg) != LENET5_OK) {
        fprintf(stderr, "lenet5_eval: embedded model: %s\n", msg);
        goto out;
    }
    is_int8 = lenet5_dtype() == LENET5_INT8;
    nc = lenet5_num_classes();
    px = (size_t)lenet5_image_h() * lenet5_image_w();

    /* the data set */
    images = read_file(pos[0], &img_size);
    if (images == NULL)
        goto out;
    labels = read_file(pos[1], &lab_size);
    if (labels == NULL)
        goto out;
    n = check_idx(pos[0], images, img_size, 3u, img_dims);
    if (n == 0u)
        goto out;
    if (img_dims[1] != lenet5_image_h() || img_dims[2] != lenet5_image_w()) {
        fprintf(stderr, "lenet5_eval: %s: images are %lux%lu, the model takes %ux%u\n", pos[0],
                (unsigned long)img_dims[1], (unsigned long)img_dims[2], lenet5_image_h(), lenet5_image_w());
        goto out;
    }
    if (check_idx(pos[1], labels, lab_size, 1u, lab_dims) == 0u)
        goto out;
    if (lab_dims[0] != n) {
        fprintf(stderr, "lenet5_eval: %lu images but %lu labels\n", (unsigned long)n, (unsigned long)lab_dims[0]);
        goto out;
    }
    if (batch == 0u || batch > n)
        batch = n;
    logits = malloc(n * nc * 4u);
    if (logits == NULL) {
        fprintf(stderr, "lenet5_eval: out of memory for the logits\n");
        goto out;
    }

    if (threads > 1u) {
        workspace_bytes = lenet5_workspace_bytes((unsigned)threads);
        workspace = malloc(workspace_bytes);
        if (workspace == NULL) {
            fprintf(stderr, "lenet5_eval: out of memory for the threads' workspace\n");
            goto out;
        }
    }

    c0 = clock();
    t0 = now_seconds();
    for (r = 0; r < repeat; r++)
        for (i = 0; i < n; i += batch) {
            const size_t b = n - i < batch ? n - i : batch;
            const unsigned char *img = images + 16u + i * px;
            int st;
#ifdef LENET5_THREADS
            if (threads > 1u)
                st = is_int8 ? lenet5_run_int8_mt(img, b, (int32_t *)logits + i * nc, (unsigned)threads, workspace,
                                                  workspace_bytes)
                             : lenet5_run_float_mt(img, b, (float *)logits + i * nc, (unsigned)threads, workspace,
                                                   workspace_bytes);
            else
#endif
                st = is_int8 ? lenet5_run_int8(img, b, (int32_t *)logits + i * nc)
                             : lenet5_run_float(img, b, (float *)logits + i * nc);
            if (st != LENET5_OK) {
                fprintf(stderr, "lenet5_eval: the runtime refused the batch (status %d)\n", st);
                goto out;
            }
        }
    seconds = now_seconds() - t0;
    cpu_seconds = (double)(clock() - c0) / CLOCKS_PER_SEC;

    for (i = 0; i < n; i++) {
        const size_t pred = is_int8 ? lenet5_argmax_int32((const int32_t *)logits + i * nc, nc)
                                    : lenet5_argmax_float((const float *)logits + i * nc, nc);
        correct += pred == labels[8u + i];
    }
    if (logits_path != NULL) {
        /* the host is little-endian (lenet5_load checked), so the values are written as they are */
        FILE *f = fopen(logits_path, "wb");
        if (f == NULL || fwrite(logits, 4u, n * nc, f) != n * nc || fclose(f) != 0) {
            fprintf(stderr, "lenet5_eval: %s: cannot write the logits\n", logits_path);
            goto out;
        }
    }
    printf("accuracy %.4f images %lu seconds %.6f images_per_s %.0f repeat %lu batch %lu cpu_seconds %.6f threads %lu\n",
           (double)correct / (double)n, (unsigned long)n, seconds,
           seconds > 0.0 ? (double)n * (double)repeat / seconds : 0.0, repeat, batch, cpu_seconds, threads);
    rc = 0;
out:
    free(images);
    free(labels);
    free(model_file);
    free(logits);
    free(workspace);
    return rc;
}
