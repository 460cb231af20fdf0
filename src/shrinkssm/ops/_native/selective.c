/* shrinkssm.ops._native_scan, selective part: the fused CPU selective scan (Mamba-style SSM).
 *
 *   h[t, i] = exp(delta[t, c(i)] alpha[i]) h[t-1, i] + delta[t, c(i)] u[t, c(i)] B[t, i]
 *   y[t, c] = sum over the states i of channel c of Re(C[t, i] h[t, i])
 *
 * with real or complex states in the bucket layout described in selective_kernels.h. The
 * forward computes exp(delta alpha) on the fly (vectorised exp / sincos), so no (B, L, states)
 * tensor is ever written; it stores the state at the start of every chunk of T steps, and the
 * backward recomputes each chunk from that checkpoint before running the adjoint recurrence
 * backwards through it (as the LRU kernels in scan_module.c do).
 *
 * Work is split over batch rows; every row is computed by one thread from start to end and writes
 * only its own slices of the outputs (the gradient of alpha goes into a per-row buffer that
 * Python sums in a fixed order), so results do not depend on the thread count. Threads are those
 * of the OpenMP pool when the module is built with OpenMP, plain pthreads otherwise. The
 * instruction set follows scan_module.c's choice (set_isa), so tests can run every variant.
 *
 * Entry points (registered in scan_module.c's method table): sel_forward, sel_backward. They take
 * the data pointers of contiguous tensors as integers; shrinkssm/ops/selective_scan.py checks
 * shapes, dtypes, index ranges and contiguity before calling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"

/* Argument structs, one per real type and state kind, shared by every instruction set. */
#define SEL_ARGS
#define REAL float
#define W 16
#define CPLX 0
#define SFX f32r
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#define CPLX 1
#define SFX f32c
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#undef REAL
#undef W
#define REAL double
#define W 8
#define CPLX 0
#define SFX f64r
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#define CPLX 1
#define SFX f64c
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#undef REAL
#undef W
#undef SEL_ARGS

/* The kernels, once per instruction set, each with vectors one register wide. */
#define EACH_ISA_HEADER "selective_isa.h"
#include "each_isa.h"
#undef EACH_ISA_HEADER

/* ------------------------------------------------------------------------------------------ */
/* Per-ISA workers                                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef shrinkssm_row_fn sel_row_fn;

#define SEL_WORKERS(SFXv, TY, ISA, ATTR)                                                        \
    ATTR static void sel_fwd_##SFXv##_##ISA(const void *a, idx b, void *ws)                     \
    {                                                                                           \
        sel_fwd_row_##SFXv##_##ISA((const sel_args_##SFXv *)a, b, (TY *)ws);                    \
    }                                                                                           \
    ATTR static void sel_bwd_##SFXv##_##ISA(const void *a, idx b, void *ws)                     \
    {                                                                                           \
        sel_bwd_row_##SFXv##_##ISA((const sel_args_##SFXv *)a, b, (TY *)ws);                    \
    }

#define SEL_ALL_WORKERS(ISA, ATTR)                                                              \
    SEL_WORKERS(f32r, float, ISA, ATTR)                                                         \
    SEL_WORKERS(f32c, float, ISA, ATTR)                                                         \
    SEL_WORKERS(f64r, double, ISA, ATTR)                                                        \
    SEL_WORKERS(f64c, double, ISA, ATTR)

#ifdef HAVE_X86_VARIANTS
SEL_ALL_WORKERS(avx512, __attribute__((target(TARGET_AVX512))))
SEL_ALL_WORKERS(avx2, __attribute__((target(TARGET_AVX2))))
#endif
SEL_ALL_WORKERS(base, )

enum { SEL_F32R, SEL_F32C, SEL_F64R, SEL_F64C, SEL_VARIANTS };

/* sel_table[isa][variant][0 forward, 1 backward]; isa as in common.h (base, avx2, avx512) */
#define SEL_ROW(ISA) \
    {{sel_fwd_f32r_##ISA, sel_bwd_f32r_##ISA}, {sel_fwd_f32c_##ISA, sel_bwd_f32c_##ISA}, \
     {sel_fwd_f64r_##ISA, sel_bwd_f64r_##ISA}, {sel_fwd_f64c_##ISA, sel_bwd_f64c_##ISA}}
static const sel_row_fn sel_table[ISA_COUNT][SEL_VARIANTS][2] = {
    SEL_ROW(base),
#ifdef HAVE_X86_VARIANTS
    SEL_ROW(avx2),
    SEL_ROW(avx512),
#else
    SEL_ROW(base),
    SEL_ROW(base),
#endif
};

/* ------------------------------------------------------------------------------------------ */
/* Threads                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    sel_row_fn fn;
    const void *args;
    idx nb;
    size_t ws_bytes;
    idx next; /* next unclaimed row */
    idx done; /* rows finished */
} sel_job;

static void sel_work(sel_job *j)
{
    void *ws = aligned_alloc(64, (j->ws_bytes + 63) / 64 * 64);
    if (!ws) return; /* other threads take the rows; sel_run reports a failure if none could */
    const fp_mode_t fpm = fp_flush_subnormals();
    for (idx b = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED); b < j->nb;
         b = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) {
        j->fn(j->args, b, ws);
        __atomic_fetch_add(&j->done, 1, __ATOMIC_RELAXED);
    }
    fp_restore(fpm);
    free(ws);
}

#ifndef _OPENMP
static void *sel_thread_main(void *p)
{
    sel_work((sel_job *)p);
    return NULL;
}
#endif

/* Run fn over the batch rows on up to n_threads threads; returns 0 if every row was done. */
static int sel_run(sel_job *j, int n_threads)
{
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    if ((idx)n_threads > j->nb) n_threads = (int)j->nb;
    if (n_threads <= 1) {
        sel_work(j);
    } else {
#ifdef _OPENMP
        #pragma omp parallel num_threads(n_threads)
        sel_work(j);
#else
        pthread_t th[64];
        int started[64] = {0};
        for (int t = 1; t < n_threads; t++) started[t] = pthread_create(&th[t], NULL, sel_thread_main, j) == 0;
        sel_work(j);
        for (int t = 1; t < n_threads; t++)
            if (started[t]) pthread_join(th[t], NULL);
#endif
    }
    return j->done == j->nb ? 0 : -1;
}

/* The row runner for other kernels of the module (ssd.c): fn(args, item, ws) for every item in
 * [0, n), each thread with a 64-byte aligned workspace of ws_bytes; 0 if every item was done. */
int shrinkssm_run_rows(shrinkssm_row_fn fn, const void *args, idx n, size_t ws_bytes, int n_threads)
{
    sel_job j = {fn, args, n, ws_bytes, 0, 0};
    return sel_run(&j, n_threads);
}

/* ------------------------------------------------------------------------------------------ */
/* Python entry points                                                                        */
/* ------------------------------------------------------------------------------------------ */

#define PTR(x) ((void *)(uintptr_t)(x))

#define FILL_SEL_ARGS(a, TY)                                                                    \
    a.nb = nb; a.L = L; a.E = E; a.K = K; a.G = G; a.R = R; a.T = T;                            \
    a.n_chunks = (L + T - 1) / T; a.shared = shared;                                            \
    a.bchan = (const int64_t *)PTR(p_bchan); a.boff = (const int64_t *)PTR(p_boff);             \
    a.kidx = (const int64_t *)PTR(p_kidx);                                                      \
    a.u = (const TY *)PTR(p_u); a.dl = (const TY *)PTR(p_dl);                                   \
    a.alr = (const TY *)PTR(p_alr); a.ali = (const TY *)PTR(p_ali);                             \
    a.Br = (const TY *)PTR(p_Br); a.Bi = (const TY *)PTR(p_Bi);                                 \
    a.Cr = (const TY *)PTR(p_Cr); a.Ci = (const TY *)PTR(p_Ci);

static int sel_check(const char *name, int dbl, int cplx, int shared, idx nb, idx L, idx E, idx K, idx G,
                     idx R, idx T, unsigned long long p_kidx, unsigned long long p_ali)
{
    const idx w = dbl ? 8 : 16;
    if (nb < 1 || L < 1 || E < 1 || G < 1 || R < w || R % w || T < 1 || (shared && (K < 1 || !p_kidx)) ||
        (cplx && (shared || !p_ali))) {
        PyErr_Format(PyExc_ValueError, "%s: invalid sizes or arguments", name);
        return -1;
    }
    return 0;
}

/* Run the forward (dir 0) or backward (dir 1) kernel of one variant over the batch rows, each
 * thread with its own workspace; threads only pay off above ~1e5 state updates. */
static PyObject *sel_launch(int variant, int dir, const void *argp, idx nb, idx L, idx R, idx T, idx K,
                            int dbl, int n_threads)
{
    idx ws_len;
    switch (variant) {
        case SEL_F32R: ws_len = sel_ws_f32r(R, T, K); break;
        case SEL_F32C: ws_len = sel_ws_f32c(R, T, K); break;
        case SEL_F64R: ws_len = sel_ws_f64r(R, T, K); break;
        default: ws_len = sel_ws_f64c(R, T, K);
    }
    sel_job j = {sel_table[shrinkssm_native_isa_index()][variant][dir], argp, nb,
                 (size_t)ws_len * (dbl ? sizeof(double) : sizeof(float)), 0, 0};
    const int nt = (double)nb * L * R < 1e5 ? 1 : n_threads;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sel_run(&j, nt);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

PyObject *shrinkssm_sel_forward(PyObject *self, PyObject *args)
{
    int dbl, cplx, shared, n_threads;
    idx nb, L, E, K, G, R, T;
    unsigned long long p_bchan, p_boff, p_kidx, p_u, p_dl, p_alr, p_ali, p_Br, p_Bi, p_Cr, p_Ci, p_y, p_ck,
        p_dsum;
    if (!PyArg_ParseTuple(args, "iiiinnnnnnnKKKKKKKKKKKKKK", &dbl, &cplx, &shared, &n_threads, &nb, &L, &E,
                          &K, &G, &R, &T, &p_bchan, &p_boff, &p_kidx, &p_u, &p_dl, &p_alr, &p_ali, &p_Br,
                          &p_Bi, &p_Cr, &p_Ci, &p_y, &p_ck, &p_dsum))
        return NULL;
    if (sel_check("sel_forward", dbl, cplx, shared, nb, L, E, K, G, R, T, p_kidx, p_ali)) return NULL;
    const int variant = dbl ? (cplx ? SEL_F64C : SEL_F64R) : (cplx ? SEL_F32C : SEL_F32R);
    sel_args_f32r a32r; sel_args_f32c a32c; sel_args_f64r a64r; sel_args_f64c a64c;
    memset(&a32r, 0, sizeof a32r); memset(&a32c, 0, sizeof a32c);
    memset(&a64r, 0, sizeof a64r); memset(&a64c, 0, sizeof a64c);
    const void *argp;
#define SEL_FWD_CASE(V, a, TY)                                                                  \
    case V:                                                                                     \
        FILL_SEL_ARGS(a, TY)                                                                    \
        a.y = (TY *)PTR(p_y); a.ck = (TY *)PTR(p_ck); a.dsum = (TY *)PTR(p_dsum);               \
        argp = &a;                                                                              \
        break;
    switch (variant) {
        SEL_FWD_CASE(SEL_F32R, a32r, float)
        SEL_FWD_CASE(SEL_F32C, a32c, float)
        SEL_FWD_CASE(SEL_F64R, a64r, double)
        default: SEL_FWD_CASE(SEL_F64C, a64c, double)
    }
    return sel_launch(variant, 0, argp, nb, L, R, T, K, dbl, n_threads);
}

PyObject *shrinkssm_sel_backward(PyObject *self, PyObject *args)
{
    int dbl, cplx, shared, n_threads;
    idx nb, L, E, K, G, R, T;
    unsigned long long p_bchan, p_boff, p_kidx, p_u, p_dl, p_alr, p_ali, p_Br, p_Bi, p_Cr, p_Ci, p_ck, p_gy,
        p_gu, p_gdl, p_gBr, p_gBi, p_gCr, p_gCi, p_gal;
    if (!PyArg_ParseTuple(args, "iiiinnnnnnnKKKKKKKKKKKKKKKKKKKK", &dbl, &cplx, &shared, &n_threads, &nb, &L,
                          &E, &K, &G, &R, &T, &p_bchan, &p_boff, &p_kidx, &p_u, &p_dl, &p_alr, &p_ali,
                          &p_Br, &p_Bi, &p_Cr, &p_Ci, &p_ck, &p_gy, &p_gu, &p_gdl, &p_gBr, &p_gBi, &p_gCr,
                          &p_gCi, &p_gal))
        return NULL;
    if (sel_check("sel_backward", dbl, cplx, shared, nb, L, E, K, G, R, T, p_kidx, p_ali)) return NULL;
    if (!p_ck || !p_gy || !p_gu || !p_gdl || !p_gBr || !p_gCr || !p_gal || (cplx && (!p_gBi || !p_gCi))) {
        PyErr_SetString(PyExc_ValueError, "sel_backward: missing checkpoints or gradient buffers");
        return NULL;
    }
    const int variant = dbl ? (cplx ? SEL_F64C : SEL_F64R) : (cplx ? SEL_F32C : SEL_F32R);
    sel_args_f32r a32r; sel_args_f32c a32c; sel_args_f64r a64r; sel_args_f64c a64c;
    memset(&a32r, 0, sizeof a32r); memset(&a32c, 0, sizeof a32c);
    memset(&a64r, 0, sizeof a64r); memset(&a64c, 0, sizeof a64c);
    const void *argp;
#define SEL_BWD_CASE(V, a, TY)                                                                  \
    case V:                                                                                     \
        FILL_SEL_ARGS(a, TY)                                                                    \
        a.ck = (TY *)PTR(p_ck); a.gy = (const TY *)PTR(p_gy); a.gu = (TY *)PTR(p_gu);           \
        a.gdl = (TY *)PTR(p_gdl); a.gBr = (TY *)PTR(p_gBr); a.gBi = (TY *)PTR(p_gBi);           \
        a.gCr = (TY *)PTR(p_gCr); a.gCi = (TY *)PTR(p_gCi); a.gal = (TY *)PTR(p_gal);           \
        argp = &a;                                                                              \
        break;
    switch (variant) {
        SEL_BWD_CASE(SEL_F32R, a32r, float)
        SEL_BWD_CASE(SEL_F32C, a32c, float)
        SEL_BWD_CASE(SEL_F64R, a64r, double)
        default: SEL_BWD_CASE(SEL_F64C, a64c, double)
    }
    return sel_launch(variant, 1, argp, nb, L, R, T, K, dbl, n_threads);
}
