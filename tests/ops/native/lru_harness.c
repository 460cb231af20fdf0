/* Stand-alone check of the fused LRU kernels of kernels.h, built without Python.
 *
 * tests/ops/test_native_cross.py compiles this file for the host and, with a cross compiler,
 * for aarch64 (run under qemu-user), and compares what the two builds print: the host build is
 * checked against PyTorch references by the rest of the test suite, so agreement within float
 * rounding checks the NEON path, which no machine here can run natively.
 *
 * The baseline instantiation (16-byte vectors: SSE2 on x86-64, NEON on aarch64) runs the forward
 * and the backward of a random problem and prints every output, one number a line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef long idx;
#define ALWAYS_INLINE __attribute__((always_inline))

#define KERNEL_ARGS
#define REAL float
#define RS f32
#include "kernels.h"
#undef REAL
#undef RS
#undef KERNEL_ARGS

#define REAL float
#define RS f32
#define VW 4
#if defined(__aarch64__)
#define NREG 32
#else
#define NREG 16
#endif
#define SFX f32_base
#include "kernels.h"
#include "harness.h"

int main(int argc, char **argv)
{
    const idx nb = 3, L = 45, Hi = argc > 1 ? atol(argv[1]) : 9, Ho = argc > 2 ? atol(argv[2]) : 10;
    const idx N = argc > 3 ? atol(argv[3]) : 37, T = 8, Np = (N + 15) / 16 * 16, n_chunks = (L + T - 1) / T;
    lru_args_f32 a;
    memset(&a, 0, sizeof a);
    a.nb = nb; a.L = L; a.Hi = Hi; a.Ho = Ho; a.Np = Np; a.T = T; a.n_chunks = n_chunks;
    float *lr = vec(Np, 1, 0), *li = vec(Np, 1, 0);
    for (idx n = 0; n < Np; n++) { /* |lam| < 1; padding states zero */
        const float m = 0.5f + 0.45f * (lr[n] * lr[n]);
        lr[n] = n < N ? m * 0.8f : 0;
        li[n] = n < N ? m * 0.6f * li[n] : 0;
    }
    float *Br = vec(Hi * Np, 0.5f, 0), *Bi = vec(Hi * Np, 0.5f, 0), *Cr = vec(Ho * Np, 0.5f, 0), *Ci = vec(Ho * Np, 0.5f, 0);
    for (idx h = 0; h < Hi; h++) for (idx n = N; n < Np; n++) Br[h * Np + n] = Bi[h * Np + n] = 0;
    for (idx o = 0; o < Ho; o++) for (idx n = N; n < Np; n++) Cr[o * Np + n] = Ci[o * Np + n] = 0;
    a.u = vec(nb * L * Hi, 1, 0); a.lr = lr; a.li = li; a.Br = Br; a.Bi = Bi; a.Cr = Cr; a.Ci = Ci;
    a.h0r = vec(nb * Np, 0.3f, 0); a.h0i = vec(nb * Np, 0.3f, 0);
    a.y = vec(nb * L * Ho, 0, 0); a.hlr = vec(nb * Np, 0, 0); a.hli = vec(nb * Np, 0, 0);
    a.ckr = vec(nb * n_chunks * Np, 0, 0); a.cki = vec(nb * n_chunks * Np, 0, 0);
    float *ws = vec(lru_bwd_ws_f32(Np, T), 0, 0);
    for (idx b = 0; b < nb; b++) lru_fwd_item_f32_base(&a, b, 0, Np / 16, a.y, 0, ws);
    print("y", a.y, nb * L * Ho);
    print("hlr", a.hlr, nb * Np);
    print("hli", a.hli, nb * Np);

    a.gy = vec(nb * L * Ho, 1, 0); a.ghlr = vec(nb * Np, 1, 0); a.ghli = vec(nb * Np, 1, 0);
    a.gu = vec(nb * L * Hi, 0, 0); a.gh0r = vec(nb * Np, 0, 0); a.gh0i = vec(nb * Np, 0, 0);
    const idx acc_len = 2 * Hi * Np + 2 * Ho * Np + 2 * Np;
    float *tacc = vec(acc_len, 0, 0);
    memset(tacc, 0, (size_t)acc_len * sizeof(float));
    for (idx b = 0; b < nb; b++) lru_bwd_item_f32_base(&a, b, 0, Np / 16, a.gu, 0, ws, tacc);
    print("gu", a.gu, nb * L * Hi);
    print("gparams", tacc, acc_len);
    print("gh0r", a.gh0r, nb * Np);
    print("gh0i", a.gh0i, nb * Np);
    return 0;
}
