/* What the stand-alone kernel harnesses share: a fixed pseudo-random stream, buffers filled from
 * it, and output one number a line ("name value"), which tests/ops/test_native_cross.py compares
 * between the host build and the aarch64 build. Needs idx defined. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rng = 88172645463325252ull;
static float uniform(void) /* in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* n floats shift + scale * uniform(), 64-byte aligned (scale 0: a buffer of shift). */
static float *vec(idx n, float scale, float shift)
{
    float *p = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64 + 64));
    for (idx i = 0; i < n; i++) p[i] = shift + scale * uniform();
    return p;
}

static void print(const char *name, const float *p, idx n)
{
    for (idx i = 0; i < n; i++) printf("%s %.9g\n", name, p[i]);
}
