/*
 * lenet5_check - run the loader on each file named and print one line per file:
 *
 *   ok
 *   error: <message>
 *
 * in argument order, exit status 0 (2 on bad usage). Used by the fuzz test to
 * validate thousands of damaged files in one process.
 *
 *   lenet5_check [--run] FILE...
 *
 * --run also runs every file that loads on one synthetic image, so that a
 * sanitizer build exercises the interpreter on every accepted file too.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lenet5.h"

/* One inference on a fixed pseudo-random image (the logits are not printed). */
static void run_once(void)
{
    static unsigned char image[1024u * 1024u];
    static float logits_f[1024];
    static int32_t logits_q[1024];
    const size_t px = (size_t)lenet5_image_h() * lenet5_image_w();
    size_t i;
    for (i = 0; i < px; i++)
        image[i] = (unsigned char)((i * 37u + 11u) & 0xFFu);
    if (lenet5_dtype() == LENET5_INT8)
        lenet5_run_int8(image, 1, logits_q);
    else
        lenet5_run_float(image, 1, logits_f);
}

int main(int argc, char **argv)
{
    char msg[LENET5_MSG_BYTES];
    int a, first = 1, run = 0;
    if (argc > 1 && strcmp(argv[1], "--run") == 0)
        run = 1, first = 2;
    if (argc <= first) {
        fputs("usage: lenet5_check [--run] FILE.flat...\n", stderr);
        return 2;
    }
    for (a = first; a < argc; a++) {
        FILE *f = fopen(argv[a], "rb");
        unsigned char *buf = NULL;
        long n = -1;
        if (f == NULL) {
            printf("error: cannot open %s (%s)\n", argv[a], strerror(errno));
            continue;
        }
        if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
            buf = (unsigned char *)malloc(n > 0 ? (size_t)n : 1u);
        if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n)
            printf("error: cannot read %s\n", argv[a]);
        else if (lenet5_load(buf, (size_t)n, msg, sizeof msg) == LENET5_OK) {
            if (run)
                run_once();
            puts("ok");
        }
        else
            printf("error: %s\n", msg);
        free(buf);
        fclose(f);
    }
    return 0;
}
