/* shrinkssm.ops._native_scan, SSD part: the fused CPU scan of Mamba-2 heads (one scalar decay per
 * head and step, B and C shared by the heads of a group).
 *
 *   S[t] = exp(dt[t, h] A[h]) S[t-1] + (dt[t, h] x[t, h]) B[t, g]^T,   y[t, h] = S[t] C[t, g]
 *
 * A sequential scan: every step costs 2 P N multiply-adds per head (forward) and about three
 * times that (backward), with one exp per head and step, so its cost falls in proportion with the state
 * size N. The forward stores the state entering every chunk of T steps; the backward recomputes
 * a chunk's states from that checkpoint and runs the adjoint backwards through it (as the LRU and
 * selective kernels do). The layout and the recurrences are described in ssd_kernels.h.
 *
 * Work items are (batch row, group) pairs, spread over threads by shrinkssm_run_rows
 * (selective.c); every item writes only its own slices of the outputs, so results do not depend
 * on the thread count. The instruction set follows scan_module.c's choice (set_isa).
 *
 * Entry points (registered in scan_module.c's method table): ssd_forward, ssd_backward. They
 * take the data pointers of contiguous tensors as integers; shrinkssm/ops/_ssd_native.py checks
 * shapes and dtypes before calling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

/* Argument structs, one per real type, shared by every instruction set. */
#define SSD_ARGS
#define REAL float
#define SFX f32
#include "ssd_kernels.h"
#undef REAL
#undef SFX
#define REAL double
#define SFX f64
#include "ssd_kernels.h"
#undef REAL
#undef SFX
#undef SSD_ARGS

/* The kernels, once per instruction set, each with vectors one register wide. */
#define EACH_ISA_HEADER "ssd_isa.h"
#include "each_isa.h"
#undef EACH_ISA_HEADER

/* ------------------------------------------------------------------------------------------ */
/* Per-ISA workers                                                                            */
/* ------------------------------------------------------------------------------------------ */

#define SSD_WORKERS(SFXv, TY, ISA, ATTR)                                                        \
    ATTR static void ssd_fwd_##SFXv##_##ISA(const void *a, idx item, void *ws)                  \
    {                                                                                           \
        ssd_fwd_item_##SFXv##_##ISA((const ssd_args_##SFXv *)a, item, (TY *)ws);                \
    }                                                                                           \
    ATTR static void ssd_bwd_##SFXv##_##ISA(const void *a, idx item, void *ws)                  \
    {                                                                                           \
        ssd_bwd_item_##SFXv##_##ISA((const ssd_args_##SFXv *)a, item, (TY *)ws);                \
    }

#ifdef HAVE_X86_VARIANTS
SSD_WORKERS(f32, float, avx512, __attribute__((target(TARGET_AVX512))))
SSD_WORKERS(f64, double, avx512, __attribute__((target(TARGET_AVX512))))
SSD_WORKERS(f32, float, avx2, __attribute__((target(TARGET_AVX2))))
SSD_WORKERS(f64, double, avx2, __attribute__((target(TARGET_AVX2))))
#endif
SSD_WORKERS(f32, float, base, )
SSD_WORKERS(f64, double, base, )

/* ssd_table[isa][0 float, 1 double][0 forward, 1 backward]; isa as in common.h */
#define SSD_ROW(ISA) {{ssd_fwd_f32_##ISA, ssd_bwd_f32_##ISA}, {ssd_fwd_f64_##ISA, ssd_bwd_f64_##ISA}}
static const shrinkssm_row_fn ssd_table[ISA_COUNT][2][2] = {
    SSD_ROW(base),
#ifdef HAVE_X86_VARIANTS
    SSD_ROW(avx2),
    SSD_ROW(avx512),
#else
    SSD_ROW(base),
    SSD_ROW(base),
#endif
};

/* ------------------------------------------------------------------------------------------ */
/* Python entry points                                                                        */
/* ------------------------------------------------------------------------------------------ */

#define PTR(x) ((void *)(uintptr_t)(x))

/* N rounded up to 64 bytes of REAL: the padded width of a state row (ssd_kernels.h). */
static idx ssd_padded(idx N, int dbl)
{
    const idx w = dbl ? 8 : 16;
    return (N + w - 1) / w * w;
}

static int ssd_check(const char *name, idx nb, idx L, idx H, idx P, idx G, idx N, idx T)
{
    if (nb < 1 || L < 1 || H < 1 || P < 1 || G < 1 || H % G || N < 1 || T < 1) {
        PyErr_Format(PyExc_ValueError, "%s: invalid sizes", name);
        return -1;
    }
    return 0;
}

#define FILL_SSD_ARGS(a, TY)                                                                    \
    memset(&a, 0, sizeof a);                                                                    \
    a.nb = nb; a.L = L; a.H = H; a.P = P; a.G = G; a.N = N; a.T = T;                            \
    a.Np = ssd_padded(N, dbl); a.n_chunks = (L + T - 1) / T;                                    \
    a.x = (const TY *)PTR(p_x); a.dt = (const TY *)PTR(p_dt); a.A = (const TY *)PTR(p_A);       \
    a.B = (const TY *)PTR(p_B); a.C = (const TY *)PTR(p_C);

/* Run one direction over the nb * G items; threads only pay off above ~1e5 state updates. */
static PyObject *ssd_launch(int dbl, int dir, const void *argp, idx nb, idx L, idx H, idx P, idx G,
                            idx N, idx T, int n_threads)
{
    const idx Np = ssd_padded(N, dbl);
    const idx R = H / G;
    const idx ws_len = dir ? (dbl ? ssd_ws_bwd_f64(R, P, Np, T) : ssd_ws_bwd_f32(R, P, Np, T))
                           : (dbl ? ssd_ws_fwd_f64(R, P, Np, T) : ssd_ws_fwd_f32(R, P, Np, T));
    const shrinkssm_row_fn fn = ssd_table[shrinkssm_native_isa_index()][dbl][dir];
    const int nt = (double)nb * L * H * P * N < 1e5 ? 1 : n_threads;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = shrinkssm_run_rows(fn, argp, nb * G, (size_t)ws_len * (dbl ? sizeof(double) : sizeof(float)), nt);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyObject *shrinkssm_ssd_forward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx nb, L, H, P, G, N, T;
    unsigned long long p_x, p_dt, p_A, p_B, p_C, p_S0, p_y, p_fin, p_ck;
    if (!PyArg_ParseTuple(args, "iinnnnnnnKKKKKKKKK", &dbl, &n_threads, &nb, &L, &H, &P, &G, &N, &T, &p_x,
                          &p_dt, &p_A, &p_B, &p_C, &p_S0, &p_y, &p_fin, &p_ck))
        return NULL;
    if (ssd_check("ssd_forward", nb, L, H, P, G, N, T)) return NULL;
    if (!p_x || !p_dt || !p_A || !p_B || !p_C || !p_y || !p_fin) {
        PyErr_SetString(PyExc_ValueError, "ssd_forward: missing input or output buffers");
        return NULL;
    }
    ssd_args_f32 a32;
    ssd_args_f64 a64;
    const void *argp;
#define SSD_FWD_FILL(a, TY)                                                                     \
    FILL_SSD_ARGS(a, TY)                                                                        \
    a.S0 = (const TY *)PTR(p_S0); a.y = (TY *)PTR(p_y); a.fin = (TY *)PTR(p_fin);               \
    a.ck = (TY *)PTR(p_ck); argp = &a;
    if (dbl) {
        SSD_FWD_FILL(a64, double)
    } else {
        SSD_FWD_FILL(a32, float)
    }
    return ssd_launch(dbl, 0, argp, nb, L, H, P, G, N, T, n_threads);
}

PyObject *shrinkssm_ssd_backward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx nb, L, H, P, G, N, T;
    unsigned long long p_x, p_dt, p_A, p_B, p_C, p_ck, p_gy, p_gfin, p_gx, p_gdt, p_gB, p_gC, p_gA, p_gS0;
    if (!PyArg_ParseTuple(args, "iinnnnnnnKKKKKKKKKKKKKK", &dbl, &n_threads, &nb, &L, &H, &P, &G, &N, &T,
                          &p_x, &p_dt, &p_A, &p_B, &p_C, &p_ck, &p_gy, &p_gfin, &p_gx, &p_gdt, &p_gB, &p_gC,
                          &p_gA, &p_gS0))
        return NULL;
    if (ssd_check("ssd_backward", nb, L, H, P, G, N, T)) return NULL;
    if (!p_x || !p_dt || !p_A || !p_B || !p_C || !p_ck || !p_gy || !p_gx || !p_gdt || !p_gB || !p_gC ||
        !p_gA) {
        PyErr_SetString(PyExc_ValueError, "ssd_backward: missing checkpoints, inputs or gradient buffers");
        return NULL;
    }
    ssd_args_f32 a32;
    ssd_args_f64 a64;
    const void *argp;
#define SSD_BWD_FILL(a, TY)                                                                     \
    FILL_SSD_ARGS(a, TY)                                                                        \
    a.ck = (TY *)PTR(p_ck); a.gy = (const TY *)PTR(p_gy); a.gfin = (const TY *)PTR(p_gfin);     \
    a.gx = (TY *)PTR(p_gx); a.gdt = (TY *)PTR(p_gdt); a.gB = (TY *)PTR(p_gB);                   \
    a.gC = (TY *)PTR(p_gC); a.gA = (TY *)PTR(p_gA); a.gS0 = (TY *)PTR(p_gS0); argp = &a;
    if (dbl) {
        SSD_BWD_FILL(a64, double)
    } else {
        SSD_BWD_FILL(a32, float)
    }
    return ssd_launch(dbl, 1, argp, nb, L, H, P, G, N, T, n_threads);
}
