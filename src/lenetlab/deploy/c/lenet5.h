/*
 * lenet5.h - plain C99 runtime for lenetlab flat model files (docs/flat-format.md, version 1).
 *
 * No malloc, no dependency beyond libm: the loader copies the file's blob into a
 * static buffer and every activation lives in static buffers whose sizes are the
 * compile-time constants below. A model that does not fit is rejected by the
 * loader (LENET5_E_LIMIT); rebuild with larger -D values to run it.
 *
 * One model is loaded at a time (the state is static, so the runtime is not
 * thread-safe: one call at a time). A build with -DLENET5_THREADS adds
 * lenet5_run_float_mt / lenet5_run_int8_mt, which split one batch across POSIX
 * threads inside the call. Typical use:
 *
 *     char msg[LENET5_MSG_BYTES];
 *     if (lenet5_load(bytes, n_bytes, msg, sizeof msg) != LENET5_OK) { puts(msg); return 1; }
 *     float logits[10];
 *     lenet5_run_float(image_28x28_u8, 1, logits);      (float32 files)
 *     int32_t q[10];
 *     lenet5_run_int8(image_28x28_u8, 1, q);            (int8 files: integer logits)
 */
#ifndef LENET5_H
#define LENET5_H

#include <stddef.h>
#include <stdint.h>

/* Largest flat file this build accepts (bytes). The blob is copied into a
 * static buffer of this size at load time. */
#ifndef LENET5_MAX_FILE_BYTES
#define LENET5_MAX_FILE_BYTES (8u * 1024u * 1024u)
#endif

/* Capacity, in elements, of each static working buffer (activation maps, the
 * zero-padded convolution input, one output plane of a convolution). The spec
 * caps every layer output at 2^20 values, so the default runs every valid
 * model except one whose padded input image is larger than that. */
#ifndef LENET5_MAX_ACT
#define LENET5_MAX_ACT (1u << 20)
#endif

/* Room for one error message (lenet5_load truncates to the size it is given). */
#define LENET5_MSG_BYTES 192

/* Status codes. */
#define LENET5_OK 0
#define LENET5_E_FORMAT 1 /* the file breaks the spec (the message names the field) */
#define LENET5_E_LIMIT 2  /* a valid file that does not fit this build's static buffers */
#define LENET5_E_HOST 3   /* the host is not little-endian / IEEE-754 binary32 */
#define LENET5_E_ARG 4    /* bad call: no model loaded, wrong dtype, NULL pointer */

/* Element type of the loaded file (header field dtype). */
#define LENET5_FLOAT32 0
#define LENET5_INT8 1

/* Validate a flat file (every check of the spec's "Validation" section) and
 * make it the loaded model. Reads only data[0 .. len). On failure no model is
 * loaded and, if msg is not NULL, msg holds a NUL-terminated message. */
int lenet5_load(const unsigned char *data, size_t len, char *msg, size_t msg_size);

/* Facts about the loaded model (0 when none is loaded). */
int lenet5_loaded(void);
int lenet5_dtype(void);
unsigned lenet5_image_h(void);
unsigned lenet5_image_w(void);
unsigned lenet5_num_classes(void);
unsigned lenet5_n_layers(void);

/* Run n raw uint8 images (each image_h x image_w, row-major, back to back).
 * logits receives n x num_classes values. float32 files: lenet5_run_float;
 * int8 files: lenet5_run_int8 (integer-only, bit-exact with the NumPy
 * reference runtime). Returns LENET5_OK or LENET5_E_ARG. */
int lenet5_run_float(const unsigned char *images, size_t n, float *logits);
int lenet5_run_int8(const unsigned char *images, size_t n, int32_t *logits);

/* Most threads one multi-threaded call may use. */
#ifndef LENET5_MAX_THREADS
#define LENET5_MAX_THREADS 64
#endif

/* Bytes of workspace a multi-threaded run of the loaded model with `threads`
 * threads needs (the working buffers of the threads-1 helper threads, sized
 * for this model: about 0.1 MB a thread for LeNet-5; 0 for one thread). 0 when
 * no model is loaded or threads is not in 1..LENET5_MAX_THREADS. */
size_t lenet5_workspace_bytes(unsigned threads);

#ifdef LENET5_THREADS
/* As lenet5_run_float / lenet5_run_int8, with the batch split across `threads`
 * POSIX threads (1..LENET5_MAX_THREADS; more threads than images use one per
 * image). Compiled only with -DLENET5_THREADS (link with -pthread). The
 * calling thread runs one chunk itself; helper threads run the others, each
 * within the call, using `workspace` (at least lenet5_workspace_bytes(threads)
 * bytes, any alignment, owned by the caller; NULL is fine for one thread) for
 * their working buffers, so nothing is allocated here. The helpers are started
 * by the first call that needs them and then wait for the next call (they stay
 * until the process exits; a fork()ed child starts its own). Each image is computed
 * by one thread with the same code as the single-threaded call: the logits
 * are bit-identical for every thread count. Not re-entrant (the calling
 * thread's chunk uses the static buffers). Returns LENET5_OK, or LENET5_E_ARG
 * for a bad thread count, a missing or too small workspace, or the reasons
 * above. */
int lenet5_run_float_mt(const unsigned char *images, size_t n, float *logits, unsigned threads, void *workspace,
                        size_t workspace_bytes);
int lenet5_run_int8_mt(const unsigned char *images, size_t n, int32_t *logits, unsigned threads, void *workspace,
                       size_t workspace_bytes);
#endif

/* Index of the first largest value (the prediction), as numpy.argmax. */
size_t lenet5_argmax_float(const float *v, size_t n);
size_t lenet5_argmax_int32(const int32_t *v, size_t n);

#endif /* LENET5_H */
