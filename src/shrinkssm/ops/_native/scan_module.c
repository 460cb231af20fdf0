/* shrinkssm.ops._native_scan: plain-C CPU kernels of the linear recurrence.
 *
 * Two families of kernels, each with a forward and a hand-written backward:
 *   lru_*   the fused LRU recurrence x[k] = lam x[k-1] + B u[k], y[k] = Re(C x[k]). B u[k], the
 *           recurrence and the output projection are computed on the fly, so the (B, L, N)
 *           complex states are never written to memory. The forward stores the state at the start
 *           of every chunk of T steps; the backward recomputes each chunk's states from that
 *           checkpoint and runs the adjoint recurrence in reverse.
 *   scan_*  the plain scan h[k] = lam h[k-1] + b[k] over interleaved complex (B, L, N) arrays.
 * The selective (Mamba-style) scan lives in selective.c; its entry points are registered in the
 * method table at the end of this file.
 *
 * No torch headers: Python passes the data pointers of contiguous tensors as integers (the
 * wrapper in shrinkssm/ops/_native_backend.py checks shapes, dtypes and contiguity). Calls
 * release the GIL and split the work over batch rows (and state blocks when the batch is smaller
 * than the thread count) on the OpenMP pool or plain pthreads. Each kernel is compiled for
 * AVX-512, AVX2+FMA and the baseline instruction set (SSE2 on x86-64, NEON on aarch64), each with
 * vectors exactly as wide as that target's registers; the best one the CPU supports is picked
 * when the module loads, and set_isa() switches (for tests and benchmarks).
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

/* Argument structs, one per real type. */
#define KERNEL_ARGS
#define REAL float
#define RS f32
#include "kernels.h"
#undef REAL
#undef RS
#define REAL double
#define RS f64
#include "kernels.h"
#undef REAL
#undef RS
#undef KERNEL_ARGS

/* The kernels of each real type for each instruction set, with vectors one register wide. */
#define EACH_ISA_HEADER "kernels_isa.h"
#include "each_isa.h"
#undef EACH_ISA_HEADER

#define MAX_THREADS 256

/* ------------------------------------------------------------------------------------------ */
/* Jobs and threads                                                                           */
/* ------------------------------------------------------------------------------------------ */

typedef struct job {
    void (*run)(struct job *, int tid);
    const void *args;
    idx nb;        /* batch rows */
    idx n_groups;  /* groups of consecutive batch rows */
    idx n_split;   /* parts of the state dimension */
    idx n_items;   /* n_groups x n_split; item i = (group i / n_split, part i % n_split) */
    idx units;     /* state blocks that the parts divide */
    int n_threads;
    void **tout;   /* per-part (nb, L, H) buffers for sums over states (n_split > 1), or NULL */
    void **tacc;   /* per-group accumulators of parameter gradients, or NULL */
    void **tws;    /* per-thread workspaces */
    idx next;      /* next unclaimed item */
} job_t;

#ifdef _OPENMP
/* OpenMP build: the work runs on the process's OpenMP pool. Imported after torch, this module's
 * libgomp.so.1 resolves to the copy torch already loaded, so torch's worker threads (which spin
 * for a while after each of torch's parallel regions) pick our work up at once instead of
 * competing with extra threads for the cores. */
static void run_job(job_t *j)
{
    if (j->n_threads <= 1) {
        j->run(j, 0);
        return;
    }
    int done[MAX_THREADS] = {0};
    #pragma omp parallel num_threads(j->n_threads)
    {
        const int tid = omp_get_thread_num();
        if (tid < j->n_threads) {
            j->run(j, tid);
            done[tid] = 1;
        }
    }
    for (int t = 0; t < j->n_threads; t++)
        if (!done[t]) j->run(j, t); /* the runtime gave fewer threads than asked: finish here */
}
#else
typedef struct {
    job_t *job;
    int tid;
} thread_arg_t;

static void *thread_main(void *p)
{
    thread_arg_t *t = (thread_arg_t *)p;
    t->job->run(t->job, t->tid);
    return NULL;
}

static void run_job(job_t *j)
{
    pthread_t th[MAX_THREADS];
    thread_arg_t ta[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 1; t < j->n_threads; t++) {
        ta[t].job = j;
        ta[t].tid = t;
        started[t] = pthread_create(&th[t], NULL, thread_main, &ta[t]) == 0;
    }
    j->run(j, 0);
    for (int t = 1; t < j->n_threads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else j->run(j, t); /* could not start a thread: do its share here */
    }
}
#endif

/* Dynamic scheduling: each thread claims the next item until none is left, so that a thread
 * that the OS descheduled (the cores are shared) delays only the item it holds. Sums over batch
 * rows go into one accumulator per *group* of rows and sums over state parts into one buffer per
 * *part*; both are reduced in a fixed order afterwards, so results do not depend on which thread
 * ran which item (bitwise reproducible for a given thread count, and for any thread count when
 * the batch has at least as many rows as there are threads). */
static inline idx claim(job_t *j) { return __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED); }

typedef struct {
    idx r0, r1;  /* batch rows */
    idx p0, p1;  /* state units */
    idx g, s;    /* group, part */
} item_t;

static inline item_t item_of(const job_t *j, idx i)
{
    item_t it;
    it.g = i / j->n_split;
    it.s = i % j->n_split;
    it.r0 = it.g * j->nb / j->n_groups;
    it.r1 = (it.g + 1) * j->nb / j->n_groups;
    it.p0 = it.s * j->units / j->n_split;
    it.p1 = (it.s + 1) * j->units / j->n_split;
    return it;
}

/* ------------------------------------------------------------------------------------------ */
/* Per-ISA workers                                                                            */
/* ------------------------------------------------------------------------------------------ */

#define DEFINE_WORKERS(SFXv, ISA, ATTR)                                                         \
    ATTR static void lru_fwd_run_##SFXv##_##ISA(job_t *j, int tid)                              \
    {                                                                                           \
        const lru_args_##SFXv *a = (const lru_args_##SFXv *)j->args;                            \
        const fp_mode_t fpm = fp_flush_subnormals();                                            \
        for (idx i = claim(j); i < j->n_items; i = claim(j)) {                                  \
            const item_t it = item_of(j, i);                                                    \
            for (idx b = it.r0; b < it.r1; b++)                                                 \
                lru_fwd_item_##SFXv##_##ISA(a, b, it.p0, it.p1,                                         \
                                    j->tout ? (SFXv##_t *)j->tout[it.s] : a->y, j->tout != NULL,\
                                    (SFXv##_t *)j->tws[tid]);                                   \
        }                                                                                       \
        fp_restore(fpm);                                                                    \
    }                                                                                           \
    ATTR static void lru_bwd_run_##SFXv##_##ISA(job_t *j, int tid)                              \
    {                                                                                           \
        const lru_args_##SFXv *a = (const lru_args_##SFXv *)j->args;                            \
        const fp_mode_t fpm = fp_flush_subnormals();                                            \
        for (idx i = claim(j); i < j->n_items; i = claim(j)) {                                  \
            const item_t it = item_of(j, i);                                                    \
            for (idx b = it.r0; b < it.r1; b++)                                                 \
                lru_bwd_item_##SFXv##_##ISA(a, b, it.p0, it.p1,                                         \
                                    j->tout ? (SFXv##_t *)j->tout[it.s] : a->gu,                \
                                    j->tout != NULL, (SFXv##_t *)j->tws[tid],                   \
                                    (SFXv##_t *)j->tacc[it.g]);                                 \
        }                                                                                       \
        fp_restore(fpm);                                                                    \
    }                                                                                           \
    ATTR static void scan_fwd_run_##SFXv##_##ISA(job_t *j, int tid)                             \
    {                                                                                           \
        const scan_args_##SFXv *a = (const scan_args_##SFXv *)j->args;                          \
        const idx hw = 32 / sizeof(SFXv##_t);                                                   \
        const fp_mode_t fpm = fp_flush_subnormals();                                            \
        for (idx i = claim(j); i < j->n_items; i = claim(j)) {                                  \
            const item_t it = item_of(j, i);                                                    \
            const idx n0 = it.p0 * hw < a->N ? it.p0 * hw : a->N;                               \
            const idx n1 = it.p1 * hw < a->N ? it.p1 * hw : a->N;                               \
            for (idx b = it.r0; b < it.r1; b++)                                                 \
                scan_fwd_item_##SFXv##_##ISA(a, b, n0, n1, (SFXv##_t *)j->tws[tid]);                    \
        }                                                                                       \
        fp_restore(fpm);                                                                    \
    }                                                                                           \
    ATTR static void scan_bwd_run_##SFXv##_##ISA(job_t *j, int tid)                             \
    {                                                                                           \
        const scan_args_##SFXv *a = (const scan_args_##SFXv *)j->args;                          \
        const idx hw = 32 / sizeof(SFXv##_t);                                                   \
        const fp_mode_t fpm = fp_flush_subnormals();                                            \
        for (idx i = claim(j); i < j->n_items; i = claim(j)) {                                  \
            const item_t it = item_of(j, i);                                                    \
            const idx n0 = it.p0 * hw < a->N ? it.p0 * hw : a->N;                               \
            const idx n1 = it.p1 * hw < a->N ? it.p1 * hw : a->N;                               \
            for (idx b = it.r0; b < it.r1; b++)                                                 \
                scan_bwd_item_##SFXv##_##ISA(a, b, n0, n1, (SFXv##_t *)j->tws[tid],                     \
                                     (SFXv##_t *)j->tacc[it.g]);                                \
        }                                                                                       \
        fp_restore(fpm);                                                                    \
    }

typedef float f32_t;
typedef double f64_t;

#ifdef HAVE_X86_VARIANTS
#define ATTR_AVX512 __attribute__((target(TARGET_AVX512)))
#define ATTR_AVX2 __attribute__((target(TARGET_AVX2)))
DEFINE_WORKERS(f32, avx512, ATTR_AVX512)
DEFINE_WORKERS(f64, avx512, ATTR_AVX512)
DEFINE_WORKERS(f32, avx2, ATTR_AVX2)
DEFINE_WORKERS(f64, avx2, ATTR_AVX2)
#endif
DEFINE_WORKERS(f32, base, )
DEFINE_WORKERS(f64, base, )

typedef void (*run_fn)(job_t *, int);

enum { K_LRU_FWD, K_LRU_BWD, K_SCAN_FWD, K_SCAN_BWD, K_COUNT };
/* The baseline is SSE2 on x86-64 and NEON (Advanced SIMD, part of every aarch64 CPU) on aarch64. */
#if defined(__aarch64__)
static const char *isa_names[ISA_COUNT] = {"neon", "avx2", "avx512"};
#else
static const char *isa_names[ISA_COUNT] = {"base", "avx2", "avx512"};
#endif

/* table[isa][dtype][kernel]; NULL where the variant was not compiled */
static run_fn table[ISA_COUNT][2][K_COUNT] = {
    {{lru_fwd_run_f32_base, lru_bwd_run_f32_base, scan_fwd_run_f32_base, scan_bwd_run_f32_base},
     {lru_fwd_run_f64_base, lru_bwd_run_f64_base, scan_fwd_run_f64_base, scan_bwd_run_f64_base}},
#ifdef HAVE_X86_VARIANTS
    {{lru_fwd_run_f32_avx2, lru_bwd_run_f32_avx2, scan_fwd_run_f32_avx2, scan_bwd_run_f32_avx2},
     {lru_fwd_run_f64_avx2, lru_bwd_run_f64_avx2, scan_fwd_run_f64_avx2, scan_bwd_run_f64_avx2}},
    {{lru_fwd_run_f32_avx512, lru_bwd_run_f32_avx512, scan_fwd_run_f32_avx512, scan_bwd_run_f32_avx512},
     {lru_fwd_run_f64_avx512, lru_bwd_run_f64_avx512, scan_fwd_run_f64_avx512, scan_bwd_run_f64_avx512}},
#endif
};

static int best_isa = ISA_BASE; /* best the CPU supports */
static int cur_isa = ISA_BASE;  /* in use */

static void detect_isa(void)
{
#ifdef HAVE_X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
        best_isa = ISA_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        best_isa = ISA_AVX2;
#endif
    cur_isa = best_isa;
}

/* ------------------------------------------------------------------------------------------ */
/* Job set-up shared by all kernels                                                           */
/* ------------------------------------------------------------------------------------------ */

#define MAX_GROUPS 32

/* Groups, parts and threads for nb batch rows over `units` state blocks; `work` ~ flops. */
static void plan(job_t *j, int n_threads, idx nb, idx units, double work)
{
    if (n_threads < 1) n_threads = 1;
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    if (work < 2e5) n_threads = 1; /* thread start-up would cost more than it saves */
    idx n_split = 1;
    if (nb < n_threads) {
        n_split = (n_threads + nb - 1) / nb;
        if (n_split > units) n_split = units;
        if (n_split < 1) n_split = 1;
    }
    j->nb = nb;
    j->n_groups = nb < MAX_GROUPS ? nb : MAX_GROUPS;
    j->n_split = n_split;
    j->units = units;
    j->n_items = j->n_groups * n_split;
    j->n_threads = (idx)n_threads > j->n_items ? (int)j->n_items : n_threads;
    if (j->n_threads < 1) j->n_threads = 1;
}

static void free_bufs(void **bufs, int n)
{
    if (!bufs) return;
    for (int t = 0; t < n; t++) free(bufs[t]);
    free(bufs);
}

/* n zeroed buffers of `bytes` each (64-byte aligned), or NULL on failure. */
static void **alloc_bufs(int n, size_t bytes)
{
    void **bufs = calloc((size_t)n, sizeof(void *));
    if (!bufs) return NULL;
    size_t padded = (bytes + 63) / 64 * 64;
    if (padded == 0) padded = 64;
    for (int t = 0; t < n; t++) {
        bufs[t] = aligned_alloc(64, padded);
        if (!bufs[t]) {
            free_bufs(bufs, n);
            return NULL;
        }
        memset(bufs[t], 0, padded);
    }
    return bufs;
}

/* dst[i] (+)= sum over threads of bufs[t][i] */
#define DEFINE_REDUCE(T)                                                                        \
    static void reduce_##T(T *dst, void **bufs, int n_threads, idx count, int add)              \
    {                                                                                           \
        for (idx i = 0; i < count; i++) {                                                       \
            T s = add ? dst[i] : 0;                                                             \
            for (int t = 0; t < n_threads; t++) s += ((T *)bufs[t])[i];                         \
            dst[i] = s;                                                                         \
        }                                                                                       \
    }
DEFINE_REDUCE(float)
DEFINE_REDUCE(double)

static void reduce(int dbl, void *dst, void **bufs, int n_threads, idx count)
{
    if (dbl) reduce_double((double *)dst, bufs, n_threads, count, 0);
    else reduce_float((float *)dst, bufs, n_threads, count, 0);
}

#define PTR(x) ((void *)(uintptr_t)(x))

/* ------------------------------------------------------------------------------------------ */
/* Fused LRU recurrence                                                                       */
/* ------------------------------------------------------------------------------------------ */

#define FILL_LRU_ARGS(a, TY)                                                                    \
    a.nb = nb; a.L = L; a.Hi = Hi; a.Ho = Ho; a.Np = Np; a.T = T;                               \
    a.n_chunks = (L + T - 1) / T;                                                               \
    a.u = (const TY *)PTR(p_u); a.lr = (const TY *)PTR(p_lr); a.li = (const TY *)PTR(p_li);     \
    a.Br = (const TY *)PTR(p_Br); a.Bi = (const TY *)PTR(p_Bi);                                 \
    a.Cr = (const TY *)PTR(p_Cr); a.Ci = (const TY *)PTR(p_Ci);

static PyObject *py_lru_forward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx nb, L, Hi, Ho, Np, T;
    unsigned long long p_u, p_lr, p_li, p_Br, p_Bi, p_Cr, p_Ci, p_h0r, p_h0i, p_y, p_hlr, p_hli, p_ckr, p_cki;
    if (!PyArg_ParseTuple(args, "iinnnnnnKKKKKKKKKKKKKK", &dbl, &n_threads, &nb, &L, &Hi, &Ho, &Np, &T,
                          &p_u, &p_lr, &p_li, &p_Br, &p_Bi, &p_Cr, &p_Ci, &p_h0r, &p_h0i, &p_y,
                          &p_hlr, &p_hli, &p_ckr, &p_cki))
        return NULL;
    const idx w = dbl ? 8 : 16;
    if (nb < 1 || L < 1 || Hi < 1 || Ho < 1 || Np < w || Np % w || T < 1) {
        PyErr_SetString(PyExc_ValueError, "lru_forward: invalid sizes");
        return NULL;
    }
    lru_args_f32 a32;
    lru_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
    job_t j;
    memset(&j, 0, sizeof j);
    plan(&j, n_threads, nb, Np / w, 4.0 * (double)nb * L * Np * (Hi + Ho));
    if (dbl) {
        FILL_LRU_ARGS(a64, double)
        a64.h0r = PTR(p_h0r); a64.h0i = PTR(p_h0i); a64.y = PTR(p_y); a64.hlr = PTR(p_hlr);
        a64.hli = PTR(p_hli); a64.ckr = PTR(p_ckr); a64.cki = PTR(p_cki);
        j.args = &a64;
    } else {
        FILL_LRU_ARGS(a32, float)
        a32.h0r = PTR(p_h0r); a32.h0i = PTR(p_h0i); a32.y = PTR(p_y); a32.hlr = PTR(p_hlr);
        a32.hli = PTR(p_hli); a32.ckr = PTR(p_ckr); a32.cki = PTR(p_cki);
        j.args = &a32;
    }
    j.run = table[cur_isa][dbl][K_LRU_FWD];
    const size_t rs = dbl ? sizeof(double) : sizeof(float);
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    j.tws = alloc_bufs(j.n_threads, 2 * (size_t)Np * rs);
    if (j.n_split > 1) j.tout = alloc_bufs((int)j.n_split, (size_t)nb * L * Ho * rs);
    if (!j.tws || (j.n_split > 1 && !j.tout)) ok = 0;
    if (ok) {
        run_job(&j);
        if (j.tout) reduce(dbl, PTR(p_y), j.tout, (int)j.n_split, nb * L * Ho);
    }
    free_bufs(j.tws, j.n_threads);
    free_bufs(j.tout, (int)j.n_split);
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_lru_backward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx nb, L, Hi, Ho, Np, T;
    unsigned long long p_u, p_lr, p_li, p_Br, p_Bi, p_Cr, p_Ci, p_ckr, p_cki, p_gy, p_ghlr, p_ghli, p_gu,
        p_gBr, p_gBi, p_gCr, p_gCi, p_glr, p_gli, p_gh0r, p_gh0i;
    if (!PyArg_ParseTuple(args, "iinnnnnnKKKKKKKKKKKKKKKKKKKKK", &dbl, &n_threads, &nb, &L, &Hi, &Ho, &Np,
                          &T, &p_u, &p_lr, &p_li, &p_Br, &p_Bi, &p_Cr, &p_Ci, &p_ckr, &p_cki, &p_gy,
                          &p_ghlr, &p_ghli, &p_gu, &p_gBr, &p_gBi, &p_gCr, &p_gCi, &p_glr, &p_gli,
                          &p_gh0r, &p_gh0i))
        return NULL;
    const idx w = dbl ? 8 : 16;
    if (nb < 1 || L < 1 || Hi < 1 || Ho < 1 || Np < w || Np % w || T < 1 || !p_ckr || !p_cki) {
        PyErr_SetString(PyExc_ValueError, "lru_backward: invalid sizes or missing checkpoints");
        return NULL;
    }
    lru_args_f32 a32;
    lru_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
    job_t j;
    memset(&j, 0, sizeof j);
    plan(&j, n_threads, nb, Np / w, 10.0 * (double)nb * L * Np * (Hi + Ho));
    if (dbl) {
        FILL_LRU_ARGS(a64, double)
        a64.ckr = PTR(p_ckr); a64.cki = PTR(p_cki); a64.gy = PTR(p_gy); a64.ghlr = PTR(p_ghlr);
        a64.ghli = PTR(p_ghli); a64.gu = PTR(p_gu); a64.gh0r = PTR(p_gh0r); a64.gh0i = PTR(p_gh0i);
        j.args = &a64;
    } else {
        FILL_LRU_ARGS(a32, float)
        a32.ckr = PTR(p_ckr); a32.cki = PTR(p_cki); a32.gy = PTR(p_gy); a32.ghlr = PTR(p_ghlr);
        a32.ghli = PTR(p_ghli); a32.gu = PTR(p_gu); a32.gh0r = PTR(p_gh0r); a32.gh0i = PTR(p_gh0i);
        j.args = &a32;
    }
    j.run = table[cur_isa][dbl][K_LRU_BWD];
    const size_t rs = dbl ? sizeof(double) : sizeof(float);
    const idx acc_len = 2 * Hi * Np + 2 * Ho * Np + 2 * Np;
    const idx ws_len = dbl ? lru_bwd_ws_f64(Np, T) : lru_bwd_ws_f32(Np, T);
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    j.tws = alloc_bufs(j.n_threads, (size_t)ws_len * rs);
    j.tacc = alloc_bufs((int)j.n_groups, (size_t)acc_len * rs);
    if (j.n_split > 1) j.tout = alloc_bufs((int)j.n_split, (size_t)nb * L * Hi * rs);
    if (!j.tws || !j.tacc || (j.n_split > 1 && !j.tout)) ok = 0;
    if (ok) {
        run_job(&j);
        if (j.tout) reduce(dbl, PTR(p_gu), j.tout, (int)j.n_split, nb * L * Hi);
        /* thread accumulators: gB (Hi, Np) x2 | gC (Ho, Np) x2 | glam (Np) x2 */
        void *dst[6] = {PTR(p_gBr), PTR(p_gBi), PTR(p_gCr), PTR(p_gCi), PTR(p_glr), PTR(p_gli)};
        const idx len[6] = {Hi * Np, Hi * Np, Ho * Np, Ho * Np, Np, Np};
        idx off = 0;
        for (int q = 0; q < 6; q++) {
            void *shifted[MAX_GROUPS];
            for (int g = 0; g < (int)j.n_groups; g++) shifted[g] = (char *)j.tacc[g] + off * rs;
            reduce(dbl, dst[q], shifted, (int)j.n_groups, len[q]);
            off += len[q];
        }
    }
    free_bufs(j.tws, j.n_threads);
    free_bufs(j.tacc, (int)j.n_groups);
    free_bufs(j.tout, (int)j.n_split);
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* Scan only                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static PyObject *py_scan_forward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx nb, L, N;
    unsigned long long p_lam, p_b, p_h0, p_h;
    if (!PyArg_ParseTuple(args, "iinnnKKKK", &dbl, &n_threads, &nb, &L, &N, &p_lam, &p_b, &p_h0, &p_h))
        return NULL;
    if (nb < 1 || L < 1 || N < 1) {
        PyErr_SetString(PyExc_ValueError, "scan_forward: invalid sizes");
        return NULL;
    }
    const idx hw = dbl ? 4 : 8;
    scan_args_f32 a32;
    scan_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
    job_t j;
    memset(&j, 0, sizeof j);
    plan(&j, n_threads, nb, (N + hw - 1) / hw, 8.0 * (double)nb * L * N);
    if (dbl) {
        a64.nb = nb; a64.L = L; a64.N = N; a64.lam = PTR(p_lam); a64.b = PTR(p_b);
        a64.h0 = PTR(p_h0); a64.h = PTR(p_h);
        j.args = &a64;
    } else {
        a32.nb = nb; a32.L = L; a32.N = N; a32.lam = PTR(p_lam); a32.b = PTR(p_b);
        a32.h0 = PTR(p_h0); a32.h = PTR(p_h);
        j.args = &a32;
    }
    j.run = table[cur_isa][dbl][K_SCAN_FWD];
    const size_t rs = dbl ? sizeof(double) : sizeof(float);
    const idx ws_len = dbl ? scan_ws_f64(N) : scan_ws_f32(N);
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    j.tws = alloc_bufs(j.n_threads, (size_t)ws_len * rs);
    if (!j.tws) ok = 0;
    else run_job(&j);
    free_bufs(j.tws, j.n_threads);
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_scan_backward(PyObject *self, PyObject *args)
{
    int dbl, n_threads;
    idx nb, L, N;
    unsigned long long p_lam, p_h, p_h0, p_gh, p_gb, p_gh0, p_glam;
    if (!PyArg_ParseTuple(args, "iinnnKKKKKKK", &dbl, &n_threads, &nb, &L, &N, &p_lam, &p_h, &p_h0, &p_gh,
                          &p_gb, &p_gh0, &p_glam))
        return NULL;
    if (nb < 1 || L < 1 || N < 1) {
        PyErr_SetString(PyExc_ValueError, "scan_backward: invalid sizes");
        return NULL;
    }
    const idx hw = dbl ? 4 : 8;
    scan_args_f32 a32;
    scan_args_f64 a64;
    memset(&a32, 0, sizeof a32);
    memset(&a64, 0, sizeof a64);
    job_t j;
    memset(&j, 0, sizeof j);
    plan(&j, n_threads, nb, (N + hw - 1) / hw, 16.0 * (double)nb * L * N);
    if (dbl) {
        a64.nb = nb; a64.L = L; a64.N = N; a64.lam = PTR(p_lam); a64.h = PTR(p_h); a64.h0 = PTR(p_h0);
        a64.gh = PTR(p_gh); a64.gb = PTR(p_gb); a64.gh0 = PTR(p_gh0);
        j.args = &a64;
    } else {
        a32.nb = nb; a32.L = L; a32.N = N; a32.lam = PTR(p_lam); a32.h = PTR(p_h); a32.h0 = PTR(p_h0);
        a32.gh = PTR(p_gh); a32.gb = PTR(p_gb); a32.gh0 = PTR(p_gh0);
        j.args = &a32;
    }
    j.run = table[cur_isa][dbl][K_SCAN_BWD];
    const size_t rs = dbl ? sizeof(double) : sizeof(float);
    const idx ws_len = dbl ? scan_ws_f64(N) : scan_ws_f32(N);
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    j.tws = alloc_bufs(j.n_threads, (size_t)ws_len * rs);
    j.tacc = alloc_bufs((int)j.n_groups, 2 * (size_t)N * rs);
    if (!j.tws || !j.tacc) ok = 0;
    else {
        run_job(&j);
        reduce(dbl, PTR(p_glam), j.tacc, (int)j.n_groups, 2 * N);
    }
    free_bufs(j.tws, j.n_threads);
    free_bufs(j.tacc, (int)j.n_groups);
    Py_END_ALLOW_THREADS
    if (!ok) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------ */
/* Instruction-set selection (for tests and benchmarks)                                       */
/* ------------------------------------------------------------------------------------------ */

static PyObject *py_isa(PyObject *self, PyObject *noargs) { return PyUnicode_FromString(isa_names[cur_isa]); }

static PyObject *py_threading(PyObject *self, PyObject *noargs)
{
#ifdef _OPENMP
    return PyUnicode_FromString("openmp");
#else
    return PyUnicode_FromString("pthreads");
#endif
}

static PyObject *py_available_isas(PyObject *self, PyObject *noargs)
{
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (int i = 0; i <= best_isa; i++) {
        if (!table[i][0][0]) continue;
        PyObject *s = PyUnicode_FromString(isa_names[i]);
        if (!s || PyList_Append(out, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(s);
    }
    return out;
}

static PyObject *py_set_isa(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i <= best_isa; i++) {
        if (table[i][0][0] && strcmp(name, isa_names[i]) == 0) {
            cur_isa = i;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "instruction set %R is not available on this CPU (best: %s)",
                 PyTuple_GET_ITEM(args, 0), isa_names[best_isa]);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* The selective scan (selective.c)                                                           */
/* ------------------------------------------------------------------------------------------ */

PyObject *shrinkssm_sel_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_sel_backward(PyObject *self, PyObject *args);

/* The SSD scan of Mamba-2 heads (ssd.c) */
PyObject *shrinkssm_ssd_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_ssd_backward(PyObject *self, PyObject *args);

/* The fused block tail: skip term, GELU, GLU and residual (block.c) */
PyObject *shrinkssm_block_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_block_backward(PyObject *self, PyObject *args);
PyObject *shrinkssm_block_max_width(PyObject *self, PyObject *noargs);
PyObject *shrinkssm_bn_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_bn_backward(PyObject *self, PyObject *args);
PyObject *shrinkssm_lru_params_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_lru_params_backward(PyObject *self, PyObject *args);
PyObject *shrinkssm_block_pool_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_enc1_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_enc1_backward(PyObject *self, PyObject *args);
PyObject *shrinkssm_enc_bn_forward(PyObject *self, PyObject *args);
PyObject *shrinkssm_enc_bn_backward(PyObject *self, PyObject *args);

/* The instruction set in use (0 base, 1 avx2, 2 avx512), so that selective.c and ssd.c follow set_isa. */
int shrinkssm_native_isa_index(void) { return cur_isa; }

static PyMethodDef methods[] = {
    {"lru_forward", py_lru_forward, METH_VARARGS, "Fused LRU recurrence, forward (pointers as ints)."},
    {"lru_backward", py_lru_backward, METH_VARARGS, "Fused LRU recurrence, backward (pointers as ints)."},
    {"lru_params_forward", shrinkssm_lru_params_forward, METH_VARARGS, "The LRU's parameter map onto the fused kernel's arrays."},
    {"lru_params_backward", shrinkssm_lru_params_backward, METH_VARARGS, "The gradient of lru_params_forward."},
    {"scan_forward", py_scan_forward, METH_VARARGS, "Scan h[k] = lam h[k-1] + b[k], forward."},
    {"scan_backward", py_scan_backward, METH_VARARGS, "Scan, backward."},
    {"sel_forward", shrinkssm_sel_forward, METH_VARARGS, "Selective scan, forward (pointers as ints)."},
    {"sel_backward", shrinkssm_sel_backward, METH_VARARGS, "Selective scan, backward (pointers as ints)."},
    {"ssd_forward", shrinkssm_ssd_forward, METH_VARARGS, "SSD scan (Mamba-2 heads), forward (pointers as ints)."},
    {"ssd_backward", shrinkssm_ssd_backward, METH_VARARGS, "SSD scan (Mamba-2 heads), backward (pointers as ints)."},
    {"block_forward", shrinkssm_block_forward, METH_VARARGS, "Fused block tail, forward (pointers as ints)."},
    {"block_pool_forward", shrinkssm_block_pool_forward, METH_VARARGS, "Fused block tail, forward, mean over runs of L positions."},
    {"block_backward", shrinkssm_block_backward, METH_VARARGS, "Fused block tail, backward (pointers as ints)."},
    {"block_max_width", shrinkssm_block_max_width, METH_NOARGS, "Widest block the fused tail takes."},
    {"bn_forward", shrinkssm_bn_forward, METH_VARARGS, "Batch norm over rows, training, forward."},
    {"bn_backward", shrinkssm_bn_backward, METH_VARARGS, "Batch norm over rows, training, backward."},
    {"enc1_forward", shrinkssm_enc1_forward, METH_VARARGS, "One-input-channel linear layer, forward."},
    {"enc1_backward", shrinkssm_enc1_backward, METH_VARARGS, "One-input-channel linear layer, backward."},
    {"enc_bn_forward", shrinkssm_enc_bn_forward, METH_VARARGS, "One-input-channel encoder + batch norm, forward."},
    {"enc_bn_backward", shrinkssm_enc_bn_backward, METH_VARARGS, "One-input-channel encoder + batch norm, backward."},
    {"isa", py_isa, METH_NOARGS, "Instruction set in use."},
    {"threading", py_threading, METH_NOARGS, "'openmp' or 'pthreads'."},
    {"available_isas", py_available_isas, METH_NOARGS, "Instruction sets this CPU can run."},
    {"set_isa", py_set_isa, METH_VARARGS, "Use the given instruction set (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native_scan",
    "Plain-C CPU kernels of the linear recurrence (see shrinkssm.ops).", -1, methods,
};

PyMODINIT_FUNC PyInit__native_scan(void)
{
    detect_isa();
    return PyModule_Create(&module);
}
