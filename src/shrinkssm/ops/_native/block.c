/* shrinkssm.ops._native_scan, block part: the elementwise tail of an SSM block, fused.
 *
 * After its mixer, a block of shrinkssm.nn.model computes, at every position m (H channels):
 *
 *   z = y + D * u                      skip term (D elementwise; absent for mixers without one)
 *   g = GELU(z) = z Phi(z)             Phi the standard normal CDF, 0.5 (1 + erf(z / sqrt 2))
 *   a = W[:H] g + bias[:H]             the GLU's linear layer, W: (2H, H) as torch.nn.Linear
 *   c = W[H:] g + bias[H:]
 *   out = x + a * sigmoid(c)           GLU, then the residual x
 *
 * torch runs this as ~6 kernels forward and ~12 backward, each a full pass over (M, H) arrays,
 * and F.glu's strided halves are slow on a CPU. Here the forward is one pass that reads y, u, x
 * and writes out; the backward is one pass that recomputes g, a, c from y and u (nothing else is
 * saved) and writes dL/dy and dL/du, accumulating dL/dW, dL/dbias and dL/dD per thread.
 *
 * Layout: every (M, H) array is row-major, positions m = 0..M-1 (batch and time flattened), H
 * contiguous channels each. Positions are processed in tiles of BLK_P; inside a tile all
 * elementwise work runs over BLK_P * H contiguous values (vectorised by the compiler at the width
 * of the instruction set it is compiled for) and the linear layer is H broadcast-multiply-adds of
 * 2H-wide rows per position. H = 8 and 16 get specialised copies (constant H).
 *
 * float: erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7) and exp by a Taylor polynomial
 * after range reduction, both branch-free so that they vectorise; double: libm's erf and exp (the
 * double path is for tests against torch in float64). The backward derivatives are the exact
 * ones of GELU and sigmoid, as torch's.
 *
 * Threads: positions are split into contiguous ranges (four per thread, claimed dynamically, so
 * that a thread the OS descheduled on a shared machine delays only the range it holds); the
 * parameter gradients of each range are reduced in range order afterwards, so results are
 * reproducible for a given thread count. Instruction set: scan_module.c's choice (set_isa), as the selective scan does.
 *
 * The same file holds the block's training-mode batch norm over the rows of an (M, H) array:
 * two passes forward (sums about a shift, then the normalisation), two backward (sums, then the
 * input gradient, into which the gradients of the output's second consumer and of the input's
 * residual consumer are summed), sums in double.
 *
 * Entry points (registered in scan_module.c's method table): block_forward, block_pool_forward, block_backward,
 * block_max_width, bn_forward, bn_backward, enc1_forward, enc1_backward, enc_bn_forward, enc_bn_backward. They take the data pointers of contiguous tensors as
 * integers; shrinkssm/ops/block.py checks shapes, dtypes and contiguity before calling.
 */
#ifndef BLOCK_BODY

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"

#define BLK_INLINE static inline __attribute__((always_inline))
#define BLK_P 32           /* positions per tile */
#define BLK_MAX_THREADS 64
#define BLK_PARTS_PER_THREAD 4 /* parts claimed dynamically: a descheduled thread delays only its part */
#define BLK_MAX_PARTS (BLK_MAX_THREADS * BLK_PARTS_PER_THREAD)
/* Threads only above this many values (M x H). These passes are short (about 1 ms for the sMNIST
 * block, M x H = 3e5, one thread), and a parallel region waits for its slowest thread: with the
 * other core of a 2-core machine busy, 2 threads measured 12-17 ms for what 1 thread does in
 * 1.2 ms. Above the threshold a pass is long enough for a scheduling delay not to dominate. */
#define BLK_THREAD_MIN_VALUES 4e6
#define BLK_MAX_H 64        /* widest block the kernels take */

/* ---- double maths: libm (the double path is for tests against torch in float64) ---- */

BLK_INLINE void blk_gelu_arr_f64(const double *z, double *g, double *dg, idx n)
{
    for (idx k = 0; k < n; k++) {
        const double phi = 0.5 * (1.0 + erf(z[k] * 0.70710678118654752440));
        g[k] = z[k] * phi;
        if (dg) dg[k] = phi + z[k] * exp(-0.5 * z[k] * z[k]) * 0.39894228040143267794;
    }
}

BLK_INLINE void blk_sigmoid_arr_f64(const double *c, double *s, idx n)
{
    for (idx k = 0; k < n; k++) s[k] = 1.0 / (1.0 + exp(-c[k]));
}

/* ---- the kernels, once per real type ---- */

/* Kernels for each real type (REAL, suffix SFX) and vector width VB in bytes (16: SSE2 / NEON
 * baseline, 32: AVX2, 64: AVX-512), so that every variant uses the registers its target has.
 * BLK_TYPES marks the first instantiation of a type, which also defines its argument struct. */
#define BLOCK_BODY
#define REAL float
#define SFX f32
#define BLK_FLOAT 1
#define BLK_TYPES 1
#define VB 16
#include "block.c"
#undef VB
#undef BLK_TYPES
#define BLK_TYPES 0
#define VB 32
#include "block.c"
#undef VB
#define VB 64
#include "block.c"
#undef VB
#undef BLK_TYPES
#undef BLK_FLOAT
#undef REAL
#undef SFX
#define REAL double
#define SFX f64
#define BLK_FLOAT 0
#define BLK_TYPES 1
#define VB 16
#include "block.c"
#undef VB
#undef BLK_TYPES
#define BLK_TYPES 0
#define VB 32
#include "block.c"
#undef VB
#define VB 64
#include "block.c"
#undef VB
#undef BLK_TYPES
#undef BLK_FLOAT
#undef REAL
#undef SFX
#undef BLOCK_BODY

/* ------------------------------------------------------------------------------------------ */
/* Per-ISA workers                                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef void (*blk_range_fn)(const void *args, idx m0, idx m1, void *ws);

#define BLK_WORKERS(SFXv, VBv, ISA, ATTR)                                                       \
    ATTR static void blk_fwd_##SFXv##_##ISA(const void *a, idx m0, idx m1, void *ws)            \
    {                                                                                           \
        blk_fwd_range_##SFXv##_##VBv((const blk_args_##SFXv *)a, m0, m1, ws);                   \
    }                                                                                           \
    ATTR static void blk_bwd_##SFXv##_##ISA(const void *a, idx m0, idx m1, void *ws)            \
    {                                                                                           \
        blk_bwd_range_##SFXv##_##VBv((const blk_args_##SFXv *)a, m0, m1, ws);                   \
    }                                                                                           \
    ATTR static void bn_pass_##SFXv##_##ISA(const void *a, idx m0, idx m1, void *ws)            \
    {                                                                                           \
        bn_range_##SFXv##_##VBv((const bn_args_##SFXv *)a, m0, m1, ws);                         \
    }

#if defined(__x86_64__) || defined(__i386__)
#define BLK_ATTR_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))
#define BLK_ATTR_AVX2 __attribute__((target("avx2,fma")))
BLK_WORKERS(f32, 64, avx512, BLK_ATTR_AVX512)
BLK_WORKERS(f64, 64, avx512, BLK_ATTR_AVX512)
BLK_WORKERS(f32, 32, avx2, BLK_ATTR_AVX2)
BLK_WORKERS(f64, 32, avx2, BLK_ATTR_AVX2)
#define BLK_HAVE_X86 1
#endif
BLK_WORKERS(f32, 16, base, )
BLK_WORKERS(f64, 16, base, )

/* blk_table[isa][0 float, 1 double][kernel]; isa as in scan_module.c */
#define BLK_ROW(ISA)                                                                            \
    {{blk_fwd_f32_##ISA, blk_bwd_f32_##ISA, bn_pass_f32_##ISA},                                 \
     {blk_fwd_f64_##ISA, blk_bwd_f64_##ISA, bn_pass_f64_##ISA}}
enum { BLK_K_FWD, BLK_K_BWD, BLK_K_BN, BLK_K_COUNT };
static const blk_range_fn blk_table[3][2][BLK_K_COUNT] = {
    BLK_ROW(base),
#ifdef BLK_HAVE_X86
    BLK_ROW(avx2),
    BLK_ROW(avx512),
#else
    BLK_ROW(base),
    BLK_ROW(base),
#endif
};

int shrinkssm_native_isa_index(void); /* scan_module.c: the instruction set in use */

/* ------------------------------------------------------------------------------------------ */
/* Threads                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    blk_range_fn fn;
    const void *args;
    idx M;
    idx align;     /* part boundaries are multiples of align positions (BLK_P, or a pooled run) */
    int n_parts;   /* contiguous ranges of positions, each with its own workspace */
    int n_threads;
    void **ws;
} blk_job;

/* Parts for nt threads: one when single-threaded, else BLK_PARTS_PER_THREAD per thread. The
 * parameter gradients are summed per part and then in part order, so results depend only on
 * the number of parts (that is, on the thread count). */
static int blk_n_parts(int nt) { return nt <= 1 ? 1 : nt * BLK_PARTS_PER_THREAD; }

static void blk_part(const blk_job *j, int t)
{
    /* part t: positions [t M / n, (t + 1) M / n), boundaries on whole units of align positions */
    const idx units = (j->M + j->align - 1) / j->align;
    const idx m0 = (idx)t * units / j->n_parts * j->align;
    idx m1 = (idx)(t + 1) * units / j->n_parts * j->align;
    if (m1 > j->M) m1 = j->M;
    if (m0 < m1) {
        const fp_mode_t fpm = fp_flush_subnormals(); /* see common.h */
        j->fn(j->args, m0, m1, j->ws[t]);
        fp_restore(fpm);
    }
}

#ifndef _OPENMP
typedef struct {
    const blk_job *job;
    int t;
} blk_thread_arg;

static void blk_thread_parts(const blk_job *j, int t)
{
    for (int p = t; p < j->n_parts; p += j->n_threads) blk_part(j, p);
}

static void *blk_thread_main(void *p)
{
    blk_thread_arg *a = (blk_thread_arg *)p;
    blk_thread_parts(a->job, a->t);
    return NULL;
}
#endif

static void blk_run(const blk_job *j)
{
    if (j->n_threads <= 1) {
        for (int p = 0; p < j->n_parts; p++) blk_part(j, p);
        return;
    }
#ifdef _OPENMP
    #pragma omp parallel for num_threads(j->n_threads) schedule(dynamic, 1)
    for (int p = 0; p < j->n_parts; p++) blk_part(j, p);
#else
    pthread_t th[BLK_MAX_THREADS];
    blk_thread_arg ta[BLK_MAX_THREADS];
    int started[BLK_MAX_THREADS];
    for (int t = 1; t < j->n_threads; t++) {
        ta[t].job = j;
        ta[t].t = t;
        started[t] = pthread_create(&th[t], NULL, blk_thread_main, &ta[t]) == 0;
    }
    blk_thread_parts(j, 0);
    for (int t = 1; t < j->n_threads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else blk_thread_parts(j, t); /* could not start a thread: do its share here */
    }
#endif
}

/* Allocate one workspace per part, run, and (backward) reduce the parts' parameter gradients
 * in part order into the outputs. Returns 0, or -1 when out of memory. */
static int blk_launch(int dbl, int dir, const void *args, idx M, idx H, int n_threads,
                      void *gW, void *gbias, void *gD, int has_D, idx align)
{
    const size_t rs = dbl ? sizeof(double) : sizeof(float);
    const idx ws_len = dbl ? blk_ws_len_f64(H) : blk_ws_len_f32(H);
    int nt = n_threads < 1 ? 1 : (n_threads > BLK_MAX_THREADS ? BLK_MAX_THREADS : n_threads);
    if ((double)M * H < BLK_THREAD_MIN_VALUES) nt = 1;
    const int np = blk_n_parts(nt);
    void *ws[BLK_MAX_PARTS] = {0};
    int rc = 0;
    for (int t = 0; t < np; t++) {
        ws[t] = calloc((size_t)ws_len + 16, rs); /* zeroed: tile tails are computed, never used */
        if (!ws[t]) rc = -1;
    }
    if (!rc) {
        blk_job j = {blk_table[shrinkssm_native_isa_index()][dbl][dir ? BLK_K_BWD : BLK_K_FWD], args, M,
                     align, np, nt, ws};
        blk_run(&j);
        if (dir == 1) {
            if (dbl) blk_reduce_f64(ws, np, M, H, has_D, (double *)gW, (double *)gbias, (double *)gD);
            else blk_reduce_f32(ws, np, M, H, has_D, (float *)gW, (float *)gbias, (float *)gD);
        }
    }
    for (int t = 0; t < np; t++) free(ws[t]);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Python entry points                                                                        */
/* ------------------------------------------------------------------------------------------ */

#define BLK_PTR(x) ((void *)(uintptr_t)(x))

static int blk_check(const char *name, idx M, idx H, unsigned long long p_u, unsigned long long p_D)
{
    if (M < 1 || H < 1 || H > BLK_MAX_H || (p_D && !p_u)) {
        PyErr_Format(PyExc_ValueError, "%s: invalid sizes or arguments (M=%zd, H=%zd, at most %d)",
                     name, M, H, BLK_MAX_H);
        return -1;
    }
    return 0;
}

/* The forward of block_forward (pool_rep = 0: out (M, H)) and block_pool_forward (pool_rep = L:
 * pooled (M / L, H), the means over runs of L positions; the parts then hold whole runs). */
static PyObject *blk_forward_entry(const char *name, int dbl, int n_threads, idx M, idx H, idx pool_rep,
                                   unsigned long long p_y, unsigned long long p_u, unsigned long long p_D,
                                   unsigned long long p_W, unsigned long long p_b, unsigned long long p_x,
                                   unsigned long long p_out)
{
    if (blk_check(name, M, H, p_u, p_D)) return NULL;
    if (pool_rep < 0 || (pool_rep > 0 && M % pool_rep)) {
        PyErr_Format(PyExc_ValueError, "%s: L=%zd must divide M=%zd", name, pool_rep, M);
        return NULL;
    }
    blk_args_f32 a32;
    blk_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
#define BLK_FILL(a, TY)                                                                         \
    a.M = M; a.H = H; a.y = (const TY *)BLK_PTR(p_y);                                           \
    a.u = p_D ? (const TY *)BLK_PTR(p_u) : NULL; a.D = (const TY *)BLK_PTR(p_D);                \
    a.W = (const TY *)BLK_PTR(p_W); a.bias = (const TY *)BLK_PTR(p_b);
#define BLK_FILL_FWD(a, TY)                                                                     \
    BLK_FILL(a, TY)                                                                             \
    a.x = (const TY *)BLK_PTR(p_x); a.pool_rep = pool_rep;                                      \
    if (pool_rep) a.pooled = (TY *)BLK_PTR(p_out); else a.out = (TY *)BLK_PTR(p_out);
    if (dbl) {
        BLK_FILL_FWD(a64, double)
    } else {
        BLK_FILL_FWD(a32, float)
    }
#undef BLK_FILL_FWD
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = blk_launch(dbl, 0, dbl ? (const void *)&a64 : (const void *)&a32, M, H, n_threads, NULL, NULL,
                    NULL, p_D != 0, pool_rep ? pool_rep : BLK_P);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* block_forward(dbl, n_threads, M, H, y, u, D, W, bias, x, out); u and D may be 0 (no skip). */
PyObject *shrinkssm_block_forward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx M, H;
    unsigned long long p_y, p_u, p_D, p_W, p_b, p_x, p_out;
    if (!PyArg_ParseTuple(args, "iinnKKKKKKK", &dbl, &n_threads, &M, &H, &p_y, &p_u, &p_D, &p_W, &p_b,
                          &p_x, &p_out))
        return NULL;
    return blk_forward_entry("block_forward", dbl, n_threads, M, H, 0, p_y, p_u, p_D, p_W, p_b, p_x, p_out);
}

/* block_pool_forward(dbl, n_threads, M, H, L, y, u, D, W, bias, x, pooled): the means over runs
 * of L positions (L divides M) of block_forward's output, pooled (M / L, H), without writing the
 * output itself (the mean pooling of the last block of a classifier). */
PyObject *shrinkssm_block_pool_forward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx M, H, L;
    unsigned long long p_y, p_u, p_D, p_W, p_b, p_x, p_pooled;
    if (!PyArg_ParseTuple(args, "iinnnKKKKKKK", &dbl, &n_threads, &M, &H, &L, &p_y, &p_u, &p_D, &p_W,
                          &p_b, &p_x, &p_pooled))
        return NULL;
    if (L < 1) {
        PyErr_Format(PyExc_ValueError, "block_pool_forward: L=%zd must be positive", L);
        return NULL;
    }
    return blk_forward_entry("block_pool_forward", dbl, n_threads, M, H, L, p_y, p_u, p_D, p_W, p_b,
                             p_x, p_pooled);
}

/* block_backward(dbl, n_threads, M, H, y, u, D, W, bias, gout, go_rep, gy, gu, gD, gW, gbias); u, D,
 * gu and gD are 0 without a skip term. gW: (2H, H), gbias: (2H,), gD: (H,) are overwritten.
 * go_rep = 0: gout is (M, H); go_rep = L > 0 (a divisor of M): gout is (M / L, H), the gradient of
 * position m being row m / L (the broadcast gradient of a mean over runs of L positions). */
PyObject *shrinkssm_block_backward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx M, H;
    idx go_rep;
    unsigned long long p_y, p_u, p_D, p_W, p_b, p_go, p_gy, p_gu, p_gD, p_gW, p_gb;
    if (!PyArg_ParseTuple(args, "iinnKKKKKKnKKKKK", &dbl, &n_threads, &M, &H, &p_y, &p_u, &p_D, &p_W,
                          &p_b, &p_go, &go_rep, &p_gy, &p_gu, &p_gD, &p_gW, &p_gb))
        return NULL;
    if (blk_check("block_backward", M, H, p_u, p_D)) return NULL;
    if (go_rep < 0 || (go_rep > 0 && M % go_rep)) {
        PyErr_Format(PyExc_ValueError, "block_backward: go_rep=%zd must be 0 or divide M=%zd", go_rep, M);
        return NULL;
    }
    if (p_D && (!p_gu || !p_gD)) {
        PyErr_SetString(PyExc_ValueError, "block_backward: a skip term needs gu and gD");
        return NULL;
    }
    blk_args_f32 a32;
    blk_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
    if (dbl) {
        BLK_FILL(a64, double)
        a64.gout = (const double *)BLK_PTR(p_go);
        a64.go_rep = go_rep;
        a64.gy = (double *)BLK_PTR(p_gy);
        a64.gu = p_D ? (double *)BLK_PTR(p_gu) : NULL;
    } else {
        BLK_FILL(a32, float)
        a32.gout = (const float *)BLK_PTR(p_go);
        a32.go_rep = go_rep;
        a32.gy = (float *)BLK_PTR(p_gy);
        a32.gu = p_D ? (float *)BLK_PTR(p_gu) : NULL;
    }
#undef BLK_FILL
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = blk_launch(dbl, 1, dbl ? (const void *)&a64 : (const void *)&a32, M, H, n_threads,
                    BLK_PTR(p_gW), BLK_PTR(p_gb), p_D ? BLK_PTR(p_gD) : NULL, p_D != 0, BLK_P);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* Batch norm over the rows of an (M, H) array, training mode (batch statistics)              */
/* ------------------------------------------------------------------------------------------ */

/* Run one pass of the batch norm (a->pass) over the rows in parts; each part's workspace starts
 * with its double partial sums (2 x BLK_P x H) when the pass makes them, which are then summed in part
 * order into s1, s2 (H each). Returns 0, or -1 when out of memory. */
static int bn_run(int dbl, const void *args, idx M, idx H, int nt, double *s1, double *s2)
{
    const idx TH = BLK_P * H;
    const size_t bytes = (size_t)TH * (3 * sizeof(double) + 6 * (dbl ? sizeof(double) : sizeof(float))) + 64;
    const int np = blk_n_parts(nt);
    void *ws[BLK_MAX_PARTS] = {0};
    int rc = 0;
    for (int t = 0; t < np; t++) {
        ws[t] = calloc(1, bytes);
        if (!ws[t]) rc = -1;
    }
    if (!rc) {
        blk_job j = {blk_table[shrinkssm_native_isa_index()][dbl][BLK_K_BN], args, M, BLK_P, np, nt, ws};
        blk_run(&j);
        if (s1) {
            memset(s1, 0, sizeof(double) * (size_t)H);
            memset(s2, 0, sizeof(double) * (size_t)H);
            const idx tiles = (M + BLK_P - 1) / BLK_P;
            for (int t = 0; t < np; t++) {
                if ((idx)t * tiles / np == (idx)(t + 1) * tiles / np) continue;
                const double *a1 = (const double *)ws[t], *a2 = a1 + TH;
                for (idx p = 0; p < BLK_P; p++)
                    for (idx j = 0; j < H; j++) {
                        s1[j] += a1[p * H + j];
                        s2[j] += a2[p * H + j];
                    }
            }
        }
    }
    for (int t = 0; t < np; t++) free(ws[t]);
    return rc;
}

#define BN_FILL(a, TY)                                                                          \
    a.M = M; a.H = H; a.x = (const TY *)BLK_PTR(p_x);

/* bn_forward(dbl, n_threads, M, H, x, weight, bias, running_mean, running_var, momentum, eps, v,
 *            mean, invstd): v = (x - mean) invstd weight + bias with the biased batch variance;
 * mean and invstd (H each) are written for the backward; running_mean / running_var (0 for none)
 * move by momentum towards the batch mean and the unbiased batch variance, as torch's. */
PyObject *shrinkssm_bn_forward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx M, H;
    double momentum, eps;
    unsigned long long p_x, p_w, p_b, p_rm, p_rv, p_v, p_mean, p_inv;
    if (!PyArg_ParseTuple(args, "iinnKKKKKddKKK", &dbl, &n_threads, &M, &H, &p_x, &p_w, &p_b, &p_rm, &p_rv,
                          &momentum, &eps, &p_v, &p_mean, &p_inv))
        return NULL;
    if (M < 1 || H < 1 || H > 4096) {
        PyErr_Format(PyExc_ValueError, "bn_forward: invalid sizes (M=%zd, H=%zd)", M, H);
        return NULL;
    }
    double *K = malloc(sizeof(double) * (size_t)(6 * H));
    if (!K) return PyErr_NoMemory();
    double *s1 = K + H, *s2 = s1 + H, *c1 = s2 + H, *c2 = c1 + H, *mean = c2 + H;
    int nt = n_threads < 1 ? 1 : (n_threads > BLK_MAX_THREADS ? BLK_MAX_THREADS : n_threads);
    if ((double)M * H < BLK_THREAD_MIN_VALUES) nt = 1;
    bn_args_f32 a32;
    bn_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    /* statistics about a shift K = the first row (no cancellation when |mean| >> std) */
    for (idx j = 0; j < H; j++)
        K[j] = dbl ? ((const double *)BLK_PTR(p_x))[j] : ((const float *)BLK_PTR(p_x))[j];
    if (dbl) { BN_FILL(a64, double) a64.pass = 0; a64.K = K; }
    else { BN_FILL(a32, float) a32.pass = 0; a32.K = K; }
    rc = bn_run(dbl, dbl ? (const void *)&a64 : (const void *)&a32, M, H, nt, s1, s2);
    if (!rc) {
        for (idx j = 0; j < H; j++) {
            const double d = s1[j] / (double)M;
            double var = s2[j] / (double)M - d * d;
            var = var > 0 ? var : 0;
            mean[j] = K[j] + d;
            const double inv = 1.0 / sqrt(var + eps);
            const double w = dbl ? ((const double *)BLK_PTR(p_w))[j] : ((const float *)BLK_PTR(p_w))[j];
            const double b = dbl ? ((const double *)BLK_PTR(p_b))[j] : ((const float *)BLK_PTR(p_b))[j];
            c1[j] = w * inv;
            c2[j] = b;
            const double unbiased = var * (double)M / (double)(M > 1 ? M - 1 : 1);
            if (dbl) {
                ((double *)BLK_PTR(p_mean))[j] = mean[j];
                ((double *)BLK_PTR(p_inv))[j] = inv;
                if (p_rm) { double *r = (double *)BLK_PTR(p_rm); r[j] += momentum * (mean[j] - r[j]); }
                if (p_rv) { double *r = (double *)BLK_PTR(p_rv); r[j] += momentum * (unbiased - r[j]); }
            } else {
                ((float *)BLK_PTR(p_mean))[j] = (float)mean[j];
                ((float *)BLK_PTR(p_inv))[j] = (float)inv;
                if (p_rm) { float *r = (float *)BLK_PTR(p_rm); r[j] += (float)(momentum * (mean[j] - r[j])); }
                if (p_rv) { float *r = (float *)BLK_PTR(p_rv); r[j] += (float)(momentum * (unbiased - r[j])); }
            }
        }
        for (idx j = 0; j < H; j++) K[j] = mean[j];
        if (dbl) { a64.pass = 1; a64.c1 = c1; a64.c2 = c2; a64.out = (double *)BLK_PTR(p_v); }
        else { a32.pass = 1; a32.c1 = c1; a32.c2 = c2; a32.out = (float *)BLK_PTR(p_v); }
        rc = bn_run(dbl, dbl ? (const void *)&a64 : (const void *)&a32, M, H, nt, NULL, NULL);
    }
    Py_END_ALLOW_THREADS
    free(K);
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* bn_backward(dbl, n_threads, M, H, x, gv, gv2, gres, gres_rep, weight, mean, invstd, gx, gweight,
 * gbias), gres_rep = 0: gres (M, H); = L > 0 (a divisor of M): gres (M / L, H), row m / L for
 * position m (a gradient broadcast over runs of L positions),
 * with g = gv + gv2 (gv2 0 for none) and xhat = (x - mean) invstd:  gbias = sum g,
 * gweight = sum g xhat,  gx = weight invstd (g - gbias / M - xhat gweight / M) + gres (gres 0 for
 * none): the gradients of two consumers of the output and one of the input, summed in the passes
 * instead of by separate additions. */
PyObject *shrinkssm_bn_backward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx M, H;
    idx gres_rep;
    unsigned long long p_x, p_gv, p_gv2, p_gres, p_w, p_mean, p_inv, p_gx, p_gw, p_gb;
    if (!PyArg_ParseTuple(args, "iinnKKKKnKKKKKK", &dbl, &n_threads, &M, &H, &p_x, &p_gv, &p_gv2, &p_gres,
                          &gres_rep, &p_w, &p_mean, &p_inv, &p_gx, &p_gw, &p_gb))
        return NULL;
    if (M < 1 || H < 1 || H > 4096 || gres_rep < 0 || (gres_rep > 0 && M % gres_rep)) {
        PyErr_Format(PyExc_ValueError, "bn_backward: invalid sizes (M=%zd, H=%zd, gres_rep=%zd)", M, H, gres_rep);
        return NULL;
    }
    double *K = malloc(sizeof(double) * (size_t)(6 * H));
    if (!K) return PyErr_NoMemory();
    double *s1 = K + H, *s2 = s1 + H, *c1 = s2 + H, *c2 = c1 + H, *c3 = c2 + H;
    int nt = n_threads < 1 ? 1 : (n_threads > BLK_MAX_THREADS ? BLK_MAX_THREADS : n_threads);
    if ((double)M * H < BLK_THREAD_MIN_VALUES) nt = 1;
    bn_args_f32 a32;
    bn_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    for (idx j = 0; j < H; j++)
        K[j] = dbl ? ((const double *)BLK_PTR(p_mean))[j] : ((const float *)BLK_PTR(p_mean))[j];
    if (dbl) {
        BN_FILL(a64, double) a64.pass = 2; a64.K = K; a64.gv = (const double *)BLK_PTR(p_gv);
        a64.gv2 = (const double *)BLK_PTR(p_gv2); a64.gres = (const double *)BLK_PTR(p_gres);
        a64.gres_rep = gres_rep;
    } else {
        BN_FILL(a32, float) a32.pass = 2; a32.K = K; a32.gv = (const float *)BLK_PTR(p_gv);
        a32.gv2 = (const float *)BLK_PTR(p_gv2); a32.gres = (const float *)BLK_PTR(p_gres);
        a32.gres_rep = gres_rep;
    }
    rc = bn_run(dbl, dbl ? (const void *)&a64 : (const void *)&a32, M, H, nt, s1, s2);
    if (!rc) {
        for (idx j = 0; j < H; j++) {
            const double inv = dbl ? ((const double *)BLK_PTR(p_inv))[j] : ((const float *)BLK_PTR(p_inv))[j];
            const double w = dbl ? ((const double *)BLK_PTR(p_w))[j] : ((const float *)BLK_PTR(p_w))[j];
            const double gb = s1[j], gw = s2[j] * inv; /* s2 = sum gv (x - mean) */
            const double scale = w * inv;
            /* gx = scale gv - (x - mean) scale inv gw / M - scale gb / M */
            c1[j] = scale;
            c2[j] = -scale * inv * gw / (double)M;
            c3[j] = -scale * gb / (double)M;
            if (dbl) {
                ((double *)BLK_PTR(p_gw))[j] = gw;
                ((double *)BLK_PTR(p_gb))[j] = gb;
            } else {
                ((float *)BLK_PTR(p_gw))[j] = (float)gw;
                ((float *)BLK_PTR(p_gb))[j] = (float)gb;
            }
        }
        if (dbl) { a64.pass = 3; a64.c1 = c1; a64.c2 = c2; a64.c3 = c3; a64.out = (double *)BLK_PTR(p_gx); }
        else { a32.pass = 3; a32.c1 = c1; a32.c2 = c2; a32.c3 = c3; a32.out = (float *)BLK_PTR(p_gx); }
        rc = bn_run(dbl, dbl ? (const void *)&a64 : (const void *)&a32, M, H, nt, NULL, NULL);
    }
    Py_END_ALLOW_THREADS
    free(K);
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}
#undef BN_FILL

/* ------------------------------------------------------------------------------------------ */
/* The encoder of a one-channel input: out = x w^T + b                                        */
/* ------------------------------------------------------------------------------------------ */

/* A linear layer with one input channel (the encoder of pixel sequences): x (M,), w (H,), b (H,),
 * out (M, H) row-major. Memory-bound passes, written for the compiler to vectorise at the
 * extension's base target; the parameter gradients are summed in REAL over runs of ENC_RUN rows
 * (per channel) and the runs in double, so that rounding grows with log(M) rather than M. */
#define ENC_RUN 256

#define ENC_KERNELS(REALT, SFXT)                                                                \
    static void enc1_fwd_##SFXT(idx M, idx H, const REALT *x, const REALT *w, const REALT *b,   \
                                REALT *out)                                                     \
    {                                                                                           \
        for (idx m = 0; m < M; m++) {                                                           \
            const REALT xm = x[m];                                                              \
            REALT *o = out + m * H;                                                             \
            for (idx j = 0; j < H; j++) o[j] = xm * w[j] + b[j];                                \
        }                                                                                       \
    }                                                                                           \
    /* gw[j] = sum_m x[m] g[m, j], gb[j] = sum_m g[m, j]; gx[m] = sum_j g[m, j] w[j] (gx may be \
     * NULL); acc: 2 H REALs of workspace */                                                    \
    static void enc1_bwd_##SFXT(idx M, idx H, const REALT *x, const REALT *w, const REALT *g,   \
                                REALT *gx, REALT *gw, REALT *gb, REALT *acc, double *sum)       \
    {                                                                                           \
        REALT *aw = acc, *ab = acc + H;                                                         \
        for (idx j = 0; j < 2 * H; j++) sum[j] = 0;                                             \
        for (idx m0 = 0; m0 < M; m0 += ENC_RUN) {                                               \
            const idx m1 = M - m0 < ENC_RUN ? M : m0 + ENC_RUN;                                 \
            for (idx j = 0; j < 2 * H; j++) acc[j] = 0;                                         \
            for (idx m = m0; m < m1; m++) {                                                     \
                const REALT xm = x[m];                                                          \
                const REALT *gm = g + m * H;                                                    \
                for (idx j = 0; j < H; j++) {                                                   \
                    aw[j] += xm * gm[j];                                                        \
                    ab[j] += gm[j];                                                             \
                }                                                                               \
                if (gx) {                                                                       \
                    REALT s = 0;                                                                \
                    for (idx j = 0; j < H; j++) s += gm[j] * w[j];                              \
                    gx[m] = s;                                                                  \
                }                                                                               \
            }                                                                                   \
            for (idx j = 0; j < 2 * H; j++) sum[j] += (double)acc[j];                           \
        }                                                                                       \
        for (idx j = 0; j < H; j++) {                                                           \
            gw[j] = (REALT)sum[j];                                                              \
            gb[j] = (REALT)sum[H + j];                                                          \
        }                                                                                       \
    }
ENC_KERNELS(float, f32)
ENC_KERNELS(double, f64)
#undef ENC_KERNELS

/* enc1_forward(dbl, M, H, x, w, b, out): out[m, j] = x[m] w[j] + b[j] */
PyObject *shrinkssm_enc1_forward(PyObject *self, PyObject *args)
{
    int dbl;
    idx M, H;
    unsigned long long p_x, p_w, p_b, p_out;
    if (!PyArg_ParseTuple(args, "innKKKK", &dbl, &M, &H, &p_x, &p_w, &p_b, &p_out)) return NULL;
    if (M < 1 || H < 1) {
        PyErr_Format(PyExc_ValueError, "enc1_forward: invalid sizes (M=%zd, H=%zd)", M, H);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dbl) enc1_fwd_f64(M, H, BLK_PTR(p_x), BLK_PTR(p_w), BLK_PTR(p_b), BLK_PTR(p_out));
    else enc1_fwd_f32(M, H, BLK_PTR(p_x), BLK_PTR(p_w), BLK_PTR(p_b), BLK_PTR(p_out));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* enc1_backward(dbl, M, H, x, w, g, gx, gw, gb): the gradients of enc1_forward from g (M, H);
 * gx (M,) is 0 when not wanted; gw, gb (H,) are overwritten. */
PyObject *shrinkssm_enc1_backward(PyObject *self, PyObject *args)
{
    int dbl;
    idx M, H;
    unsigned long long p_x, p_w, p_g, p_gx, p_gw, p_gb;
    if (!PyArg_ParseTuple(args, "innKKKKKK", &dbl, &M, &H, &p_x, &p_w, &p_g, &p_gx, &p_gw, &p_gb))
        return NULL;
    if (M < 1 || H < 1) {
        PyErr_Format(PyExc_ValueError, "enc1_backward: invalid sizes (M=%zd, H=%zd)", M, H);
        return NULL;
    }
    double *sum = malloc(sizeof(double) * (size_t)(2 * H) + (dbl ? sizeof(double) : sizeof(float)) * (size_t)(2 * H));
    if (!sum) return PyErr_NoMemory();
    void *acc = sum + 2 * H;
    const fp_mode_t fpm = fp_flush_subnormals(); /* see common.h */
    Py_BEGIN_ALLOW_THREADS
    if (dbl) enc1_bwd_f64(M, H, BLK_PTR(p_x), BLK_PTR(p_w), BLK_PTR(p_g), BLK_PTR(p_gx), BLK_PTR(p_gw),
                          BLK_PTR(p_gb), acc, sum);
    else enc1_bwd_f32(M, H, BLK_PTR(p_x), BLK_PTR(p_w), BLK_PTR(p_g), BLK_PTR(p_gx), BLK_PTR(p_gw),
                      BLK_PTR(p_gb), acc, sum);
    Py_END_ALLOW_THREADS
    fp_restore(fpm);
    free(sum);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* The one-channel encoder and the batch norm after it, fused: v = BN(h), h = x w^T + b        */
/* ------------------------------------------------------------------------------------------ */

/* With one input channel, channel j of h = x w^T + b is an affine map of x: its batch mean and
 * variance are w_j mean(x) + b_j and w_j^2 var(x), so the statistics need one pass over x (M
 * values) instead of one over h (M x H); h and v are then written in one pass. Backward: the
 * gradient of h (the batch norm's input gradient plus the residual's gres) is only needed through
 * its sums over the rows, sum_m gh[m, j] and sum_m x[m] gh[m, j] (the encoder's parameter
 * gradients); both follow in closed form from sums over one pass that reads g = gv + gv2 and x,
 * so gh is never written. Sums about the shift K = x[0] (no cancellation when |mean x| >> std
 * x), in REAL over runs of ENC_RUN rows and in double across runs, as the encoder's backward. */
#define ENCBN_KERNELS(REALT, SFXT)                                                              \
    /* s[0] = sum (x - K), s[1] = sum (x - K)^2, in double */                                   \
    static void encbn_xstats_##SFXT(idx M, const REALT *x, double K, double *s)                 \
    {                                                                                           \
        double a = 0, b = 0;                                                                    \
        for (idx m0 = 0; m0 < M; m0 += ENC_RUN) {                                               \
            const idx m1 = M - m0 < ENC_RUN ? M : m0 + ENC_RUN;                                 \
            REALT ra = 0, rb = 0;                                                               \
            for (idx m = m0; m < m1; m++) {                                                     \
                const REALT d = x[m] - (REALT)K;                                                \
                ra += d;                                                                        \
                rb += d * d;                                                                    \
            }                                                                                   \
            a += (double)ra;                                                                    \
            b += (double)rb;                                                                    \
        }                                                                                       \
        s[0] = a;                                                                               \
        s[1] = b;                                                                               \
    }                                                                                           \
    /* h[m, j] = x[m] w[j] + b[j] (as enc1_fwd), v[m, j] = r1[j] ((h - Khi[j]) - Klo[j]) + r2[j] */ \
    BLK_INLINE void encbn_fwd_body_##SFXT(idx M, const idx H, const REALT *restrict x,          \
                                          const REALT *restrict w, const REALT *restrict b,     \
                                          const REALT *restrict Khi, const REALT *restrict Klo, \
                                          const REALT *restrict r1, const REALT *restrict r2,   \
                                          REALT *restrict h, REALT *restrict v)                 \
    {                                                                                           \
        for (idx m = 0; m < M; m++) {                                                           \
            const REALT xm = x[m];                                                              \
            REALT *hm = h + m * H, *vm = v + m * H;                                             \
            for (idx j = 0; j < H; j++) {                                                       \
                const REALT hj = xm * w[j] + b[j];                                              \
                hm[j] = hj;                                                                     \
                vm[j] = r1[j] * ((hj - Khi[j]) - Klo[j]) + r2[j];                               \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    /* Sums over rows of g = gv + gv2 (gv2 may be NULL): S[j] = sum g, S[H + j] = sum (x - K) g; \
     * with gres (M, H) (rep == 0) also S[2H + j] = sum gres, S[3H + j] = sum (x - K) gres; with \
     * gres given per run of rep rows ((M / rep, H)), those two from the rows' sums of x - K.   \
     * acc: 4 H REALs of workspace; S: 4 H doubles. */                                          \
    BLK_INLINE void encbn_bwd_body_##SFXT(idx M, const idx H, const REALT *restrict x, double K, \
                                          const REALT *restrict gv, const REALT *restrict gv2,  \
                                          const REALT *restrict gres, idx rep,                  \
                                          REALT *restrict acc, double *restrict S)              \
    {                                                                                           \
        REALT *restrict ag = acc, *restrict agx = acc + H, *restrict ar = acc + 2 * H;          \
        REALT *restrict arx = acc + 3 * H;                                                      \
        const REALT Kr = (REALT)K;                                                              \
        for (idx j = 0; j < 4 * H; j++) S[j] = 0;                                               \
        for (idx m0 = 0; m0 < M; m0 += ENC_RUN) {                                               \
            const idx m1 = M - m0 < ENC_RUN ? M : m0 + ENC_RUN;                                 \
            for (idx j = 0; j < 4 * H; j++) acc[j] = 0;                                         \
            for (idx m = m0; m < m1; m++) {                                                     \
                const REALT xc = x[m] - Kr;                                                     \
                const REALT *a = gv + m * H;                                                    \
                if (gv2) {                                                                      \
                    const REALT *c = gv2 + m * H;                                               \
                    for (idx j = 0; j < H; j++) {                                               \
                        const REALT g = a[j] + c[j];                                            \
                        ag[j] += g;                                                             \
                        agx[j] += xc * g;                                                       \
                    }                                                                           \
                } else {                                                                        \
                    for (idx j = 0; j < H; j++) {                                               \
                        ag[j] += a[j];                                                          \
                        agx[j] += xc * a[j];                                                    \
                    }                                                                           \
                }                                                                               \
                if (gres && !rep) {                                                             \
                    const REALT *r = gres + m * H;                                              \
                    for (idx j = 0; j < H; j++) {                                               \
                        ar[j] += r[j];                                                          \
                        arx[j] += xc * r[j];                                                    \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            for (idx j = 0; j < 4 * H; j++) S[j] += (double)acc[j];                             \
        }                                                                                       \
        if (gres && rep) {                                                                      \
            for (idx r0 = 0; r0 < M / rep; r0++) {                                              \
                double sx = 0;                                                                  \
                for (idx m = r0 * rep; m < (r0 + 1) * rep; m++) sx += (double)(x[m] - Kr);     \
                const REALT *row = gres + r0 * H;                                               \
                for (idx j = 0; j < H; j++) {                                                   \
                    S[2 * H + j] += (double)rep * (double)row[j];                               \
                    S[3 * H + j] += sx * (double)row[j];                                        \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    } \
    static void encbn_fwd_##SFXT(idx M, idx H, const REALT *x, const REALT *w, const REALT *b,  \
                                 const REALT *Khi, const REALT *Klo, const REALT *r1,           \
                                 const REALT *r2, REALT *h, REALT *v)                           \
    {                                                                                           \
        if (H == 8) encbn_fwd_body_##SFXT(M, 8, x, w, b, Khi, Klo, r1, r2, h, v);                \
        else if (H == 16) encbn_fwd_body_##SFXT(M, 16, x, w, b, Khi, Klo, r1, r2, h, v);         \
        else encbn_fwd_body_##SFXT(M, H, x, w, b, Khi, Klo, r1, r2, h, v);                       \
    }                                                                                           \
    static void encbn_bwd_##SFXT(idx M, idx H, const REALT *x, double K, const REALT *gv,       \
                                 const REALT *gv2, const REALT *gres, idx rep, REALT *acc,      \
                                 double *S)                                                     \
    {                                                                                           \
        if (H == 8) encbn_bwd_body_##SFXT(M, 8, x, K, gv, gv2, gres, rep, acc, S);              \
        else if (H == 16) encbn_bwd_body_##SFXT(M, 16, x, K, gv, gv2, gres, rep, acc, S);       \
        else encbn_bwd_body_##SFXT(M, H, x, K, gv, gv2, gres, rep, acc, S);                     \
    }
ENCBN_KERNELS(float, f32)
ENCBN_KERNELS(double, f64)
#undef ENCBN_KERNELS

#define ENCBN_LD(p, j) (dbl ? ((const double *)BLK_PTR(p))[j] : (double)((const float *)BLK_PTR(p))[j])
#define ENCBN_ST(p, j, val)                                                                     \
    do {                                                                                        \
        if (dbl) ((double *)BLK_PTR(p))[j] = (val);                                             \
        else ((float *)BLK_PTR(p))[j] = (float)(val);                                           \
    } while (0)

/* enc_bn_forward(dbl, M, H, x, ew, eb, bw, bb, running_mean, running_var, momentum, eps, h, v,
 *                mean, invstd): h = x ew^T + eb (x: (M,), ew, eb: (H,)), v = the training-mode
 * batch norm of h over its M rows with weight bw and bias bb (biased batch variance); mean and
 * invstd (H each) of h are written for the backward, the running statistics (0 for none) move by
 * momentum towards the batch mean and the unbiased batch variance, as torch's. */
PyObject *shrinkssm_enc_bn_forward(PyObject *self, PyObject *args)
{
    int dbl;
    idx M, H;
    double momentum, eps;
    unsigned long long p_x, p_ew, p_eb, p_bw, p_bb, p_rm, p_rv, p_h, p_v, p_mean, p_inv;
    if (!PyArg_ParseTuple(args, "innKKKKKKKddKKKK", &dbl, &M, &H, &p_x, &p_ew, &p_eb, &p_bw, &p_bb, &p_rm,
                          &p_rv, &momentum, &eps, &p_h, &p_v, &p_mean, &p_inv))
        return NULL;
    if (M < 1 || H < 1 || H > 4096) {
        PyErr_Format(PyExc_ValueError, "enc_bn_forward: invalid sizes (M=%zd, H=%zd)", M, H);
        return NULL;
    }
    const size_t rs = dbl ? sizeof(double) : sizeof(float);
    char *buf = malloc(4 * rs * (size_t)H);
    if (!buf) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    const double K = ENCBN_LD(p_x, 0);
    double s[2];
    if (dbl) encbn_xstats_f64(M, BLK_PTR(p_x), K, s);
    else encbn_xstats_f32(M, BLK_PTR(p_x), K, s);
    const double d = s[0] / (double)M;
    double var_x = s[1] / (double)M - d * d;
    var_x = var_x > 0 ? var_x : 0;
    const double mean_x = K + d;
    for (idx j = 0; j < H; j++) {
        const double w = ENCBN_LD(p_ew, j), mean = w * mean_x + ENCBN_LD(p_eb, j), var = w * w * var_x;
        const double inv = 1.0 / sqrt(var + eps);
        const double unbiased = var * (double)M / (double)(M > 1 ? M - 1 : 1);
        ENCBN_ST(p_mean, j, mean);
        ENCBN_ST(p_inv, j, inv);
        if (p_rm) ENCBN_ST(p_rm, j, ENCBN_LD(p_rm, j) + momentum * (mean - ENCBN_LD(p_rm, j)));
        if (p_rv) ENCBN_ST(p_rv, j, ENCBN_LD(p_rv, j) + momentum * (unbiased - ENCBN_LD(p_rv, j)));
        const double c1 = ENCBN_LD(p_bw, j) * inv, c2 = ENCBN_LD(p_bb, j);
        if (dbl) {
            double *q = (double *)buf;
            q[j] = mean; q[H + j] = 0; q[2 * H + j] = c1; q[3 * H + j] = c2;
        } else {
            float *q = (float *)buf;
            q[j] = (float)mean; q[H + j] = (float)(mean - (double)(float)mean);
            q[2 * H + j] = (float)c1; q[3 * H + j] = (float)c2;
        }
    }
    if (dbl) {
        const double *q = (const double *)buf;
        encbn_fwd_f64(M, H, BLK_PTR(p_x), BLK_PTR(p_ew), BLK_PTR(p_eb), q, q + H, q + 2 * H, q + 3 * H,
                      BLK_PTR(p_h), BLK_PTR(p_v));
    } else {
        const float *q = (const float *)buf;
        encbn_fwd_f32(M, H, BLK_PTR(p_x), BLK_PTR(p_ew), BLK_PTR(p_eb), q, q + H, q + 2 * H, q + 3 * H,
                      BLK_PTR(p_h), BLK_PTR(p_v));
    }
    Py_END_ALLOW_THREADS
    free(buf);
    Py_RETURN_NONE;
}

/* enc_bn_backward(dbl, M, H, x, gv, gv2, gres, gres_rep, ew, bw, invstd, g_ew, g_eb, g_bw, g_bb):
 * the parameter gradients of enc_bn_forward (v consumed with gradients gv and gv2, gv2 0 for
 * none; h consumed by a residual with gradient gres, 0 for none, (M, H) for gres_rep = 0 and
 * (M / gres_rep, H) rows repeated over runs of gres_rep positions otherwise). No gradient of x.
 * With g = gv + gv2, xc = x - K, mxc its mean, vx = mean xc^2 - mxc^2 (the variance of x):
 *   g_bb = sum g, g_bw = invstd sum g (h - mean) = invstd ew (sum xc g - mxc sum g),
 *   gh = s g + c2 (h - mean) + c3 + gres,  s = bw invstd, c2 = -s invstd g_bw / M, c3 = -s g_bb / M,
 *   g_eb = sum gh = s sum g + M c3 + sum gres           (the first two cancel),
 *   g_ew = sum x gh = sum xc gh + K g_eb,  sum xc gh = s sum xc g + c2 ew M vx + c3 sum xc + sum xc gres. */
PyObject *shrinkssm_enc_bn_backward(PyObject *self, PyObject *args)
{
    int dbl;
    idx M, H, rep;
    unsigned long long p_x, p_gv, p_gv2, p_gres, p_ew, p_bw, p_inv, p_gew, p_geb, p_gbw, p_gbb;
    if (!PyArg_ParseTuple(args, "innKKKKnKKKKKKK", &dbl, &M, &H, &p_x, &p_gv, &p_gv2, &p_gres, &rep, &p_ew,
                          &p_bw, &p_inv, &p_gew, &p_geb, &p_gbw, &p_gbb))
        return NULL;
    if (M < 1 || H < 1 || H > 4096 || !p_gv || rep < 0 || (rep > 0 && M % rep)) {
        PyErr_Format(PyExc_ValueError, "enc_bn_backward: invalid sizes or arguments (M=%zd, H=%zd, gres_rep=%zd)",
                     M, H, rep);
        return NULL;
    }
    const size_t rs = dbl ? sizeof(double) : sizeof(float);
    double *S = malloc(sizeof(double) * (size_t)(4 * H) + 4 * rs * (size_t)H);
    if (!S) return PyErr_NoMemory();
    void *acc = S + 4 * H;
    const fp_mode_t fpm = fp_flush_subnormals(); /* see common.h */
    Py_BEGIN_ALLOW_THREADS
    const double K = ENCBN_LD(p_x, 0);
    double s[2];
    if (dbl) {
        encbn_xstats_f64(M, BLK_PTR(p_x), K, s);
        encbn_bwd_f64(M, H, BLK_PTR(p_x), K, BLK_PTR(p_gv), BLK_PTR(p_gv2), BLK_PTR(p_gres), rep, acc, S);
    } else {
        encbn_xstats_f32(M, BLK_PTR(p_x), K, s);
        encbn_bwd_f32(M, H, BLK_PTR(p_x), K, BLK_PTR(p_gv), BLK_PTR(p_gv2), BLK_PTR(p_gres), rep, acc, S);
    }
    const double Mf = (double)M, mxc = s[0] / Mf;
    double vx = s[1] / Mf - mxc * mxc;
    vx = vx > 0 ? vx : 0;
    for (idx j = 0; j < H; j++) {
        const double ew = ENCBN_LD(p_ew, j), inv = ENCBN_LD(p_inv, j), sc = ENCBN_LD(p_bw, j) * inv;
        const double Sg = S[j], Sgx = S[H + j], Sr = S[2 * H + j], Srx = S[3 * H + j];
        const double gbb = Sg, gbw = inv * ew * (Sgx - mxc * Sg);
        const double c2 = -sc * inv * gbw / Mf, c3 = -sc * gbb / Mf;
        const double geb = sc * Sg + Mf * c3 + Sr;
        const double gxc = sc * Sgx + c2 * ew * Mf * vx + c3 * s[0] + Srx;
        ENCBN_ST(p_gbb, j, gbb);
        ENCBN_ST(p_gbw, j, gbw);
        ENCBN_ST(p_geb, j, geb);
        ENCBN_ST(p_gew, j, gxc + K * geb);
    }
    Py_END_ALLOW_THREADS
    fp_restore(fpm);
    free(S);
    Py_RETURN_NONE;
}
#undef ENCBN_LD
#undef ENCBN_ST

/* The widest H the kernels accept (block.py falls back to torch above its own crossover). */
PyObject *shrinkssm_block_max_width(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(BLK_MAX_H);
}

#else /* BLOCK_BODY: kernels for one real type REAL (names with SFX) and vector width VB */

#define BCAT_(a, b) a##_##b
#define BCAT(a, b) BCAT_(a, b)
#define BN(x) BCAT(x, SFX)                  /* per type */
#define KN(x) BCAT(BCAT(x, SFX), VB)        /* per type and vector width */

#if BLK_TYPES
typedef struct {
    idx M, H;
    const REAL *y, *u, *D, *W, *bias, *x; /* u, D NULL without a skip term */
    REAL *out;                            /* forward */
    idx pool_rep;                         /* forward, > 0: write the means of runs of pool_rep */
    REAL *pooled;                         /*   positions, pooled (M / pool_rep, H), not out */
    const REAL *gout;                     /* backward */
    idx go_rep;                           /* 0: gout is (M, H); L > 0: gout is (M / L, H), row m / L for position m */
    REAL *gy, *gu;
} BN(blk_args);

/* Workspace of one part, in REALs (TH = BLK_P * H, H2 = 2H):
 *   z, g, dg, a, c, dL/dg, D repeated over a tile: 7 x TH
 *   W^T (H x H2), the accumulator of dL/dW^T (H x H2)
 *   tile-shaped partial sums of dL/dbias[:H], dL/dbias[H:], dL/dD: 3 x TH
 *   the rows [dL/da_p, dL/dc_p] of a tile, H2 each: 2 x TH
 *   the tile of dL/dout gathered from per-row gradients (go_rep > 0): TH */
static idx BN(blk_ws_len)(idx H) { return 13 * BLK_P * H + 4 * H * H; }

#ifndef BLK_WS_OFFSETS
#define BLK_WS_OFFSETS(ws, H)                                                                   \
    const idx TH = BLK_P * (H), H2 = 2 * (H);                                                   \
    REAL *z = (ws), *g = z + TH, *dg = g + TH, *av = dg + TH, *cv = av + TH, *gg = cv + TH;     \
    REAL *Drep = gg + TH, *WT = Drep + TH, *accW = WT + (H) * H2, *accA = accW + (H) * H2;      \
    REAL *accC = accA + TH, *accD = accC + TH, *dr = accD + TH, *gob = dr + 2 * TH;             \
    (void)z; (void)g; (void)dg; (void)av; (void)cv; (void)gg; (void)Drep; (void)WT;             \
    (void)accW; (void)accA; (void)accC; (void)accD; (void)dr; (void)gob;
#endif

/* Sum the parts' accumulators in part order: gW (2H, H), gbias (2H,), gD (H,) (if has_D).
 * A part that had no positions (more parts than tiles) contributes nothing. */
static void BN(blk_reduce)(void **ws, int n_parts, idx M, idx H, int has_D, REAL *gW, REAL *gbias,
                           REAL *gD)
{
    memset(gW, 0, sizeof(REAL) * (size_t)(2 * H * H));
    memset(gbias, 0, sizeof(REAL) * (size_t)(2 * H));
    if (has_D) memset(gD, 0, sizeof(REAL) * (size_t)H);
    const idx tiles = (M + BLK_P - 1) / BLK_P;
    for (int t = 0; t < n_parts; t++) {
        if ((idx)t * tiles / n_parts == (idx)(t + 1) * tiles / n_parts) continue;
        BLK_WS_OFFSETS((REAL *)ws[t], H)
        for (idx i = 0; i < H; i++)
            for (idx j = 0; j < H2; j++) gW[j * H + i] += accW[i * H2 + j];
        for (idx j = 0; j < H; j++) {
            REAL sa = 0, sc = 0, sd = 0;
            for (idx p = 0; p < BLK_P; p++) {
                sa += accA[p * H + j];
                sc += accC[p * H + j];
                sd += accD[p * H + j];
            }
            gbias[j] += sa;
            gbias[H + j] += sc;
            if (has_D) gD[j] += sd;
        }
    }
}

/* One pass of the batch norm over rows (see shrinkssm_bn_forward / _backward):
 *   pass 0: partial sums of d = x - K and d^2        (K: per-channel shift, the first row)
 *   pass 1: out = c1 (x - K) + c2                    (the normalisation; K: the batch mean)
 *   pass 2: partial sums of g and g (x - K)          (g = gv + gv2; K: the batch mean)
 *   pass 3: out = c1 g + c2 (x - K) + c3 + gres      (the input gradient; K: the batch mean)
 * Per-channel vectors K, c1, c2, c3 are double; sums are accumulated in double. */
typedef struct {
    idx M, H;
    int pass;
    const REAL *x, *gv, *gv2, *gres; /* gv2, gres: NULL or added (backward passes) */
    idx gres_rep;                    /* 0: gres is (M, H); L > 0: gres is (M / L, H), row m / L for position m */
    REAL *out;
    const double *K, *c1, *c2, *c3;
} BN(bn_args);
#endif /* BLK_TYPES */

/* Vectors of VB bytes: the linear layer's rows and (float) the elementwise maths. */
typedef REAL KN(blk_vec) __attribute__((vector_size(VB)));
#define BV KN(blk_vec)
#define BVW ((idx)(VB / sizeof(REAL)))

BLK_INLINE BV KN(blk_vld)(const REAL *p)
{
    BV v;
    memcpy(&v, p, sizeof v);
    return v;
}

BLK_INLINE void KN(blk_vst)(REAL *p, BV v) { memcpy(p, &v, sizeof v); }

/* Rows of the linear layer: vectors of at most 32 bytes, so that H = 8 floats is one of them. */
#define RB (VB > 32 ? 32 : VB)
typedef REAL KN(blk_row) __attribute__((vector_size(RB)));
#define BR KN(blk_row)
#define BRW ((idx)(RB / sizeof(REAL)))

BLK_INLINE BR KN(blk_rld)(const REAL *p)
{
    BR v;
    memcpy(&v, p, sizeof v);
    return v;
}

BLK_INLINE void KN(blk_rst)(REAL *p, BR v) { memcpy(p, &v, sizeof v); }

#if BLK_FLOAT
/* float maths, branch-free on vectors; arrays given to the *_arr functions are padded to a
 * multiple of the vector width (the tile buffers are). */
typedef int32_t KN(blk_veci) __attribute__((vector_size(VB)));
#define BVI KN(blk_veci)

/* where mask (all bits set), a, else b */
BLK_INLINE BV KN(blk_sel)(BVI mask, BV a, BV b) { return (BV)(((BVI)a & mask) | ((BVI)b & ~mask)); }

/* exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln2 / 2, exp(r) by Taylor to degree 7
 * (relative error < 6e-9 before rounding); x is clamped to [-87, 88] (exp(-87) = 1.6e-38). */
BLK_INLINE BV KN(blk_exp)(BV x)
{
    const BV lo = (BV){0} - 87.0f, hi = (BV){0} + 88.0f;
    x = KN(blk_sel)(x < lo, lo, x);
    x = KN(blk_sel)(x > hi, hi, x);
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const BV n = (x * 1.44269504088896341f + shift) - shift;
    BV r = x - n * 0.693145751953125f; /* ln2 in two parts (Cody & Waite) */
    r = r - n * 1.42860682030941723e-6f;
    BV q = (BV){0} + 1.0f / 5040.0f;
    q = q * r + 1.0f / 720.0f;
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
    const BVI bits = (__builtin_convertvector(n, BVI) + 127) << 23;
    return q * (BV)bits;
}

/* Phi(z) = 0.5 (1 + erf(z / sqrt 2)) and e = exp(-z^2 / 2); erf by Abramowitz & Stegun 7.1.26
 * (|error| <= 1.5e-7, the approximation torch's own vectorised erf uses). */
BLK_INLINE BV KN(blk_phi)(BV z, BV *e)
{
    const BVI absmask = (BVI){0} + 0x7fffffff;
    const BV s = z * 0.70710678118654752f;
    const BV as = (BV)((BVI)s & absmask);
    const BV t = 1.0f / (1.0f + 0.3275911f * as);
    BV q = (BV){0} + 1.061405429f;
    q = q * t - 1.453152027f;
    q = q * t + 1.421413741f;
    q = q * t - 0.284496736f;
    q = q * t + 0.254829592f;
    q = q * t;
    const BV ex = KN(blk_exp)(-(s * s));
    *e = ex;
    const BV erf_abs = 1.0f - q * ex;
    const BV erf = (BV)(((BVI)erf_abs & absmask) | ((BVI)s & ~absmask));
    return 0.5f + 0.5f * erf;
}

/* g = GELU(z) and (dg non-NULL) dg = GELU'(z) = Phi(z) + z exp(-z^2 / 2) / sqrt(2 pi) */
BLK_INLINE void KN(blk_gelu_arr)(const float *z, float *g, float *dg, idx n)
{
    for (idx k = 0; k < n; k += BVW) {
        const BV zk = KN(blk_vld)(z + k);
        BV e;
        const BV phi = KN(blk_phi)(zk, &e);
        KN(blk_vst)(g + k, zk * phi);
        if (dg) KN(blk_vst)(dg + k, phi + zk * e * 0.39894228040143267794f);
    }
}

BLK_INLINE void KN(blk_sigmoid_arr)(const float *c, float *s, idx n)
{
    for (idx k = 0; k < n; k += BVW) KN(blk_vst)(s + k, 1.0f / (1.0f + KN(blk_exp)(-KN(blk_vld)(c + k))));
}
#undef BVI
#else
#define blk_gelu_arr_f64_16 blk_gelu_arr_f64
#define blk_gelu_arr_f64_32 blk_gelu_arr_f64
#define blk_gelu_arr_f64_64 blk_gelu_arr_f64
#define blk_sigmoid_arr_f64_16 blk_sigmoid_arr_f64
#define blk_sigmoid_arr_f64_32 blk_sigmoid_arr_f64
#define blk_sigmoid_arr_f64_64 blk_sigmoid_arr_f64
#endif

/* dst[p] = rows[(m + p) / rep] for p < np (H values each): a per-row gradient broadcast over
 * runs of rep positions, for the tile starting at position m; one division per tile. */
BLK_INLINE void KN(blk_gather_rows)(REAL *dst, const REAL *rows, idx m, idx np, idx rep, const idx H)
{
    idx row = m / rep, left = rep - m % rep;
    for (idx p = 0; p < np; p++) {
        memcpy(dst + p * H, rows + row * H, sizeof(REAL) * (size_t)H);
        if (--left == 0) {
            row++;
            left = rep;
        }
    }
}

/* Shared by both passes: W^T and the repeated skip vector into the workspace. */
BLK_INLINE void KN(blk_prepare)(const BN(blk_args) *a, REAL *ws, const idx H)
{
    BLK_WS_OFFSETS(ws, H)
    for (idx i = 0; i < H; i++)
        for (idx j = 0; j < H2; j++) WT[i * H2 + j] = a->W[j * H + i];
    if (a->D)
        for (idx k = 0; k < TH; k++) Drep[k] = a->D[k % H];
}

/* z = y + D u and GELU over the n values of a tile; dg = GELU'(z) when want_dg. */
BLK_INLINE void KN(blk_gelu_tile)(const BN(blk_args) *a, idx m, idx n, REAL *ws, const idx H, int want_dg)
{
    BLK_WS_OFFSETS(ws, H)
    const REAL *y = a->y + m * H;
    if (a->D) {
        const REAL *u = a->u + m * H;
        for (idx k = 0; k < n; k++) z[k] = y[k] + Drep[k] * u[k];
    } else {
        for (idx k = 0; k < n; k++) z[k] = y[k];
    }
    KN(blk_gelu_arr)(z, g, want_dg ? dg : NULL, n);
}

/* a = W[:H] g + bias[:H], c = W[H:] g + bias[H:] for the np positions of a tile: per position,
 * H broadcast-multiply-adds of the rows of W^T (vector code when 2H is a multiple of BRW). */
BLK_INLINE void KN(blk_linear_tile)(const BN(blk_args) *a, idx np, REAL *ws, const idx H)
{
    BLK_WS_OFFSETS(ws, H)
    REAL tmp[2 * BLK_MAX_H];
    if (H2 % BVW == 0 && BVW > BRW) { /* full-width rows (2H = 16 floats: one AVX-512 register) */
        const idx nv = H2 / BVW;
        for (idx p = 0; p < np; p++) {
            BV acc[2 * BLK_MAX_H / (VB / sizeof(REAL)) + 1];
            for (idx q = 0; q < nv; q++) acc[q] = KN(blk_vld)(a->bias + q * BVW);
            for (idx i = 0; i < H; i++) {
                const REAL gi = g[p * H + i];
                const REAL *w = WT + i * H2;
                for (idx q = 0; q < nv; q++) acc[q] += gi * KN(blk_vld)(w + q * BVW);
            }
            for (idx q = 0; q < nv; q++) KN(blk_vst)(tmp + q * BVW, acc[q]);
            memcpy(av + p * H, tmp, sizeof(REAL) * (size_t)H);
            memcpy(cv + p * H, tmp + H, sizeof(REAL) * (size_t)H);
        }
        return;
    }
    if (H2 % BRW == 0) {
        const idx nv = H2 / BRW;
        for (idx p = 0; p < np; p++) {
            BR acc[2 * BLK_MAX_H / (RB / sizeof(REAL)) + 1];
            for (idx q = 0; q < nv; q++) acc[q] = KN(blk_rld)(a->bias + q * BRW);
            for (idx i = 0; i < H; i++) {
                const REAL gi = g[p * H + i];
                const REAL *w = WT + i * H2;
                for (idx q = 0; q < nv; q++) acc[q] += gi * KN(blk_rld)(w + q * BRW);
            }
            for (idx q = 0; q < nv; q++) KN(blk_rst)(tmp + q * BRW, acc[q]);
            memcpy(av + p * H, tmp, sizeof(REAL) * (size_t)H);
            memcpy(cv + p * H, tmp + H, sizeof(REAL) * (size_t)H);
        }
        return;
    }
    for (idx p = 0; p < np; p++) {
        for (idx j = 0; j < H2; j++) tmp[j] = a->bias[j];
        for (idx i = 0; i < H; i++) {
            const REAL gi = g[p * H + i];
            const REAL *w = WT + i * H2;
            for (idx j = 0; j < H2; j++) tmp[j] += gi * w[j];
        }
        memcpy(av + p * H, tmp, sizeof(REAL) * (size_t)H);
        memcpy(cv + p * H, tmp + H, sizeof(REAL) * (size_t)H);
    }
}

/* The linear layer's backward over the np positions of a tile, from the rows dr[p] = [da_p, dc_p]
 * (2H each):
 *   dW^T[i, :] += sum_p g[p, i] dr[p]     IB rows of W^T at a time, their accumulators held in
 *                                         registers over the tile (one load of dr[p] serves IB
 *                                         broadcast-multiply-adds);
 *   dL/dg[p, :] = sum_j dr[p, j] W[j, :]  four positions at a time, so that each row of W loaded
 *                                         serves four independent accumulators.
 * Vector code when 2H is a multiple of the vector width and H of the row width (H = 8 and 16 on
 * every target), scalar loops otherwise. */
#define BLK_ACC (VB == 64 ? 16 : 8) /* accumulators kept in registers (32 / 16 registers) */
BLK_INLINE void KN(blk_linear_bwd_tile)(const BN(blk_args) *a, idx np, REAL *ws, const idx H)
{
    BLK_WS_OFFSETS(ws, H)
    if (H2 % BVW == 0 && H2 / BVW <= BLK_ACC && H % BRW == 0) {
        const idx nv = H2 / BVW, IB = BLK_ACC / nv;
        for (idx i0 = 0; i0 < H; i0 += IB) {
            const idx ib = H - i0 < IB ? H - i0 : IB;
            BV acc[BLK_ACC];
            for (idx i = 0; i < ib; i++)
                for (idx q = 0; q < nv; q++) acc[i * nv + q] = KN(blk_vld)(accW + (i0 + i) * H2 + q * BVW);
            for (idx p = 0; p < np; p++) {
                const REAL *gp = g + p * H + i0;
                for (idx q = 0; q < nv; q++) {
                    const BV r = KN(blk_vld)(dr + p * H2 + q * BVW);
                    for (idx i = 0; i < ib; i++) acc[i * nv + q] += gp[i] * r;
                }
            }
            for (idx i = 0; i < ib; i++)
                for (idx q = 0; q < nv; q++) KN(blk_vst)(accW + (i0 + i) * H2 + q * BVW, acc[i * nv + q]);
        }
        const idx nh = H / BRW;
        idx p = 0;
        if (nh <= 2) {
            for (; p + 4 <= np; p += 4) {
                BR o[4][2];
                for (idx pp = 0; pp < 4; pp++) o[pp][0] = o[pp][1] = (BR){0};
                for (idx j = 0; j < H2; j++) {
                    const REAL *w = a->W + j * H;
                    for (idx q = 0; q < nh; q++) {
                        const BR wq = KN(blk_rld)(w + q * BRW);
                        for (idx pp = 0; pp < 4; pp++) o[pp][q] += dr[(p + pp) * H2 + j] * wq;
                    }
                }
                for (idx pp = 0; pp < 4; pp++)
                    for (idx q = 0; q < nh; q++) KN(blk_rst)(gg + (p + pp) * H + q * BRW, o[pp][q]);
            }
        }
        for (; p < np; p++) {
            BR o[BLK_MAX_H / (RB / sizeof(REAL)) + 1];
            for (idx q = 0; q < nh; q++) o[q] = (BR){0};
            for (idx j = 0; j < H2; j++) {
                const REAL d = dr[p * H2 + j];
                const REAL *w = a->W + j * H;
                for (idx q = 0; q < nh; q++) o[q] += d * KN(blk_rld)(w + q * BRW);
            }
            for (idx q = 0; q < nh; q++) KN(blk_rst)(gg + p * H + q * BRW, o[q]);
        }
        return;
    }
    for (idx p = 0; p < np; p++) {
        const REAL *dp = dr + p * H2, *gp = g + p * H;
        for (idx i = 0; i < H; i++) {
            const REAL gi = gp[i];
            REAL *wrow = accW + i * H2;
            for (idx j = 0; j < H2; j++) wrow[j] += gi * dp[j];
        }
        REAL acc[BLK_MAX_H];
        for (idx i = 0; i < H; i++) acc[i] = 0;
        for (idx j = 0; j < H2; j++) {
            const REAL d = dp[j];
            const REAL *w = a->W + j * H;
            for (idx i = 0; i < H; i++) acc[i] += d * w[i];
        }
        for (idx i = 0; i < H; i++) gg[p * H + i] = acc[i];
    }
}
#undef BLK_ACC

BLK_INLINE void KN(blk_fwd_tiles)(const BN(blk_args) *a, idx m0, idx m1, REAL *ws, const idx H)
{
    BLK_WS_OFFSETS(ws, H)
    KN(blk_prepare)(a, ws, H);
    double pacc[BLK_MAX_H] = {0};
    for (idx m = m0; m < m1; m += BLK_P) {
        const idx np = m1 - m < BLK_P ? m1 - m : BLK_P, n = np * H;
        KN(blk_gelu_tile)(a, m, n, ws, H, 0);
        KN(blk_linear_tile)(a, np, ws, H);
        const REAL *x = a->x + m * H;
        REAL *out = a->out ? a->out + m * H : NULL;
        KN(blk_sigmoid_arr)(cv, gg, n);
        if (!a->pool_rep) {
            for (idx k = 0; k < n; k++) out[k] = x[k] + av[k] * gg[k];
            continue;
        }
        /* mean pooling: the part holds whole runs of L positions (blk_launch's alignment), each
         * summed in double and written once */
        const idx L = a->pool_rep;
        for (idx k = 0; k < n; k++) gob[k] = x[k] + av[k] * gg[k];
        /* the tile's run boundaries found once per tile, not by a division per position */
        idx run = m / L, left = L - m % L; /* the run in progress and its positions not yet summed */
        for (idx p = 0; p < np;) {
            const idx q = np - p < left ? np : p + left;
            left -= q - p;
            for (; p < q; p++)
                for (idx j = 0; j < H; j++) pacc[j] += (double)gob[p * H + j];
            if (left == 0) {
                REAL *row = a->pooled + run * H;
                for (idx j = 0; j < H; j++) {
                    row[j] = (REAL)(pacc[j] / (double)L);
                    pacc[j] = 0;
                }
                run++;
                left = L;
            }
        }
    }
}

BLK_INLINE void KN(blk_bwd_tiles)(const BN(blk_args) *a, idx m0, idx m1, REAL *ws, const idx H)
{
    BLK_WS_OFFSETS(ws, H)
    KN(blk_prepare)(a, ws, H);
    memset(accW, 0, sizeof(REAL) * (size_t)(H * H2 + 3 * TH));
    for (idx m = m0; m < m1; m += BLK_P) {
        const idx np = m1 - m < BLK_P ? m1 - m : BLK_P, n = np * H;
        const REAL *go = a->gout + m * H;
        if (a->go_rep) { /* a gradient broadcast over runs of go_rep positions (mean pooling) */
            KN(blk_gather_rows)(gob, a->gout, m, np, a->go_rep, H);
            go = gob;
        }
        KN(blk_gelu_tile)(a, m, n, ws, H, 1);
        KN(blk_linear_tile)(a, np, ws, H);
        /* GLU: da = go s, dc = go a s (1 - s), into the rows dr[p] = [da_p, dc_p] */
        KN(blk_sigmoid_arr)(cv, gg, n); /* gg holds sigmoid(c) until the linear layer's backward */
        for (idx p = 0; p < np; p++)
            for (idx j = 0; j < H; j++) {
                const idx k = p * H + j;
                const REAL s = gg[k];
                const REAL ga = go[k] * s, gc = ga * av[k] * (1 - s);
                dr[p * H2 + j] = ga;
                dr[p * H2 + H + j] = gc;
                accA[k] += ga;
                accC[k] += gc;
            }
        /* linear layer */
        KN(blk_linear_bwd_tile)(a, np, ws, H);
        /* GELU and the skip term */
        REAL *gy = a->gy + m * H;
        if (a->D) {
            const REAL *u = a->u + m * H;
            REAL *gu = a->gu + m * H;
            for (idx k = 0; k < n; k++) {
                const REAL gzk = gg[k] * dg[k];
                gy[k] = gzk;
                gu[k] = Drep[k] * gzk;
                accD[k] += gzk * u[k];
            }
        } else {
            for (idx k = 0; k < n; k++) gy[k] = gg[k] * dg[k];
        }
    }
}

/* One batch-norm pass over rows [m0, m1); workspace (tile-shaped, TH each): 2 double
 * accumulators and K in double; K as two REALs and the 3 coefficients in REAL. Sums in double;
 * the elementwise passes in REAL with x - K taken in two steps (no cancellation). */
BLK_INLINE void KN(bn_tiles)(const BN(bn_args) *a, idx m0, idx m1, void *ws, const idx H)
{
    const idx TH = BLK_P * H;
    double *acc1 = (double *)ws, *acc2 = acc1 + TH, *Kd = acc2 + TH;
    REAL *Khi = (REAL *)(Kd + TH), *Klo = Khi + TH, *r1 = Klo + TH, *r2 = r1 + TH, *r3 = r2 + TH;
    REAL *grb = r3 + TH; /* gres gathered from per-row gradients (gres_rep > 0) */
    const int pass = a->pass;
    for (idx k = 0; k < TH; k++) {
        acc1[k] = acc2[k] = 0;
        Kd[k] = a->K[k % H];
        Khi[k] = (REAL)Kd[k];                  /* K = Khi + Klo to double precision */
        Klo[k] = (REAL)(Kd[k] - (double)Khi[k]);
        r1[k] = a->c1 ? (REAL)a->c1[k % H] : 0;
        r2[k] = a->c2 ? (REAL)a->c2[k % H] : 0;
        r3[k] = a->c3 ? (REAL)a->c3[k % H] : 0;
    }
    for (idx m = m0; m < m1; m += BLK_P) {
        const idx n = (m1 - m < BLK_P ? m1 - m : BLK_P) * H;
        const REAL *x = a->x + m * H;
        REAL *out = a->out ? a->out + m * H : NULL;
        if (pass == 0) {
            for (idx k = 0; k < n; k++) {
                const double d = (double)x[k] - Kd[k];
                acc1[k] += d;
                acc2[k] += d * d;
            }
        } else if (pass == 1) {
            /* (x - Khi) is exact when x is near the mean (Sterbenz), so x - mean keeps its digits
             * even when |mean| >> std */
            for (idx k = 0; k < n; k++) out[k] = r1[k] * ((x[k] - Khi[k]) - Klo[k]) + r2[k];
        } else if (pass == 2) {
            const REAL *gv = a->gv + m * H;
            if (a->gv2) {
                const REAL *gv2 = a->gv2 + m * H;
                for (idx k = 0; k < n; k++) {
                    const double g = (double)gv[k] + (double)gv2[k];
                    acc1[k] += g;
                    acc2[k] += g * ((double)x[k] - Kd[k]);
                }
            } else {
                for (idx k = 0; k < n; k++) {
                    const double g = (double)gv[k];
                    acc1[k] += g;
                    acc2[k] += g * ((double)x[k] - Kd[k]);
                }
            }
        } else {
            const REAL *gv = a->gv + m * H;
            const REAL *gv2 = a->gv2 ? a->gv2 + m * H : NULL, *gres = a->gres ? a->gres + m * H : NULL;
            if (gres && a->gres_rep) {
                KN(blk_gather_rows)(grb, a->gres, m, n / H, a->gres_rep, H);
                gres = grb;
            }
            if (gv2 && gres) {
                for (idx k = 0; k < n; k++)
                    out[k] = r1[k] * (gv[k] + gv2[k]) + r2[k] * ((x[k] - Khi[k]) - Klo[k]) + r3[k] + gres[k];
            } else if (gres) {
                for (idx k = 0; k < n; k++)
                    out[k] = r1[k] * gv[k] + r2[k] * ((x[k] - Khi[k]) - Klo[k]) + r3[k] + gres[k];
            } else if (gv2) {
                for (idx k = 0; k < n; k++)
                    out[k] = r1[k] * (gv[k] + gv2[k]) + r2[k] * ((x[k] - Khi[k]) - Klo[k]) + r3[k];
            } else {
                for (idx k = 0; k < n; k++)
                    out[k] = r1[k] * gv[k] + r2[k] * ((x[k] - Khi[k]) - Klo[k]) + r3[k];
            }
        }
    }
}

BLK_INLINE void KN(bn_range)(const BN(bn_args) *a, idx m0, idx m1, void *ws)
{
    if (a->H == 8) KN(bn_tiles)(a, m0, m1, ws, 8);
    else if (a->H == 16) KN(bn_tiles)(a, m0, m1, ws, 16);
    else KN(bn_tiles)(a, m0, m1, ws, a->H);
}

/* Entry per range: specialised copies for H = 8 and 16 (constant H), generic otherwise. */
BLK_INLINE void KN(blk_fwd_range)(const BN(blk_args) *a, idx m0, idx m1, void *ws)
{
    if (a->H == 8) KN(blk_fwd_tiles)(a, m0, m1, (REAL *)ws, 8);
    else if (a->H == 16) KN(blk_fwd_tiles)(a, m0, m1, (REAL *)ws, 16);
    else KN(blk_fwd_tiles)(a, m0, m1, (REAL *)ws, a->H);
}

BLK_INLINE void KN(blk_bwd_range)(const BN(blk_args) *a, idx m0, idx m1, void *ws)
{
    if (a->H == 8) KN(blk_bwd_tiles)(a, m0, m1, (REAL *)ws, 8);
    else if (a->H == 16) KN(blk_bwd_tiles)(a, m0, m1, (REAL *)ws, 16);
    else KN(blk_bwd_tiles)(a, m0, m1, (REAL *)ws, a->H);
}

#undef BV
#undef BVW
#undef BR
#undef BRW
#undef RB
#undef KN
#undef BN
#undef BCAT
#undef BCAT_

#endif /* BLOCK_BODY */
