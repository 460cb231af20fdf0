/* Stand-alone check of the SSD-scan kernels of ssd_kernels.h, built without Python.
 *
 * tests/ops/test_native_cross.py compiles this file for the host and, with a cross compiler,
 * for aarch64 (run under qemu-user), and compares what the two builds print: the host build's
 * kernels are checked against PyTorch references by tests/ops/test_ssd_native.py, so agreement
 * within float rounding checks the NEON path, which no machine here can run natively.
 *
 * The baseline instantiation (16-byte vectors: SSE2 on x86-64, NEON on aarch64), float32, runs
 * the forward and the backward of one random problem (sizes from the command line: b L H P G N T)
 * and prints every output, one number a line.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef long idx;
#define ALWAYS_INLINE __attribute__((always_inline))

#define SSD_ARGS
#define REAL float
#define SFX f32
#include "ssd_kernels.h"
#undef SSD_ARGS

#define ITYPE int32_t
#define SEL_FLT 1
#define VW 4
#define RS f32_base
#define SEL_MATH
#include "selective_kernels.h"
#undef SEL_MATH
#define KSFX f32_base
#define SSD_EXP expf
#include "ssd_kernels.h"
#include "harness.h"

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: %s b L H P G N T\n", argv[0]);
        return 2;
    }
    idx v[7];
    for (int i = 0; i < 7; i++) v[i] = atol(argv[i + 1]);
    const idx nb = v[0], L = v[1], H = v[2], P = v[3], G = v[4], N = v[5], T = v[6];
    const idx Np = (N + 15) / 16 * 16, R = H / G, nc = (L + T - 1) / T;
    ssd_args_f32 a;
    memset(&a, 0, sizeof a);
    a.nb = nb; a.L = L; a.H = H; a.P = P; a.G = G; a.N = N; a.Np = Np; a.T = T; a.n_chunks = nc;
    a.x = vec(nb * L * H * P, 1, 0);
    a.dt = vec(nb * L * H, 0.25f, 0.3f);                 /* step sizes in [0.05, 0.55) */
    a.A = vec(H, 0.5f, -1.0f);                           /* in [-1.5, -0.5) */
    a.B = vec(nb * L * G * N, 1, 0);
    a.C = vec(nb * L * G * N, 1, 0);
    a.S0 = vec(nb * H * P * N, 1, 0);
    a.y = vec(nb * L * H * P, 0, 0);
    a.fin = vec(nb * H * P * N, 0, 0);
    a.ck = vec(nb * H * nc * P * Np, 0, 0);
    a.gy = vec(nb * L * H * P, 1, 0);
    a.gfin = vec(nb * H * P * N, 1, 0);
    a.gx = vec(nb * L * H * P, 0, 0);
    a.gdt = vec(nb * L * H, 0, 0);
    a.gB = vec(nb * L * G * N, 0, 0);
    a.gC = vec(nb * L * G * N, 0, 0);
    a.gA = vec(nb * H, 0, 0);
    a.gS0 = vec(nb * H * P * N, 0, 0);
    float *ws = vec(ssd_ws_bwd_f32(R, P, Np, T) + ssd_ws_fwd_f32(R, P, Np, T), 0, 0);
    for (idx item = 0; item < nb * G; item++) ssd_fwd_item_f32_base(&a, item, ws);
    for (idx item = 0; item < nb * G; item++) ssd_bwd_item_f32_base(&a, item, ws);
    print("y", a.y, nb * L * H * P);
    print("fin", a.fin, nb * H * P * N);
    print("gx", a.gx, nb * L * H * P);
    print("gdt", a.gdt, nb * L * H);
    print("gB", a.gB, nb * L * G * N);
    print("gC", a.gC, nb * L * G * N);
    print("gA", a.gA, nb * H);
    print("gS0", a.gS0, nb * H * P * N);
    return 0;
}
