/* Kernel bodies of the native scan, instantiated by scan_module.c once per real type and
 * instruction set.
 *
 * Before including this file, define:
 *   REAL  the real type (float or double)
 *   VW    lanes of one native vector register of the target: 64 bytes on AVX-512, 32 on AVX2,
 *         16 on SSE2 and NEON (so 16 / 8 / 4 floats, 8 / 4 / 2 doubles)
 *   RS    suffix of the real type: f32 or f64
 *   SFX   name suffix of the kernels, e.g. f32_avx2
 *   NREG  vector registers of the target (16 on SSE2 and AVX2, 32 on AVX-512 and NEON)
 * Included once per real type with KERNEL_ARGS defined, for the argument structs, then once per
 * real type and instruction set, compiled for the target (scan_module.c wraps it in `#pragma GCC target`).
 *
 * Vectors are GCC/clang vector extensions exactly one register wide, so the compiler keeps them
 * in registers on every target (a vector wider than the registers is split and, in loops like
 * these, spilled to the stack and reloaded, which made the AVX2 path slower than plain PyTorch).
 * State sizes are padded by the Python side to a multiple of 64 bytes (16 floats, 8 doubles),
 * a multiple of every VW; work items split the states in units of 64 bytes.
 *
 * Notation (see shrinkssm.ops.scan for the maths):
 *   x[k] = lam * x[k-1] + B u[k],  y[k] = Re(C x[k])          (fused LRU recurrence)
 *   h[k] = lam * h[k-1] + b[k]                                (scan only)
 * Complex numbers of the LRU kernels live in separate real and imaginary arrays, so that every
 * gradient computed here is an ordinary real gradient. The scan-only kernels work on interleaved
 * complex arrays (the memory layout of torch's complex tensors) and return gradients in torch's
 * convention (dL/dRe + i dL/dIm).
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)

#ifdef KERNEL_ARGS
/* ------------------------------------------------------------------------------------------ */
/* Arguments of the kernels: one struct per real type, shared by every instruction set.       */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    idx nb, L, Hi, Ho, Np, T, n_chunks, n_split;
    const REAL *u;          /* (nb, L, Hi) */
    const REAL *lr, *li;    /* (Np,) */
    const REAL *Br, *Bi;    /* (Hi, Np)  B transposed */
    const REAL *Cr, *Ci;    /* (Ho, Np) */
    const REAL *h0r, *h0i;  /* (nb, Np) or NULL */
    REAL *y;                /* (nb, L, Ho) forward output */
    REAL *hlr, *hli;        /* (nb, Np) last state */
    REAL *ckr, *cki;        /* (nb, n_chunks, Np): state entering each chunk, or NULL */
    /* backward only */
    const REAL *gy;         /* (nb, L, Ho) */
    const REAL *ghlr, *ghli;/* (nb, Np) or NULL */
    REAL *gu;               /* (nb, L, Hi) */
    REAL *gBr, *gBi;        /* (Hi, Np) */
    REAL *gCr, *gCi;        /* (Ho, Np) */
    REAL *glr, *gli;        /* (Np,) */
    REAL *gh0r, *gh0i;      /* (nb, Np) or NULL */
} CAT(lru_args, RS);

typedef struct {
    idx nb, L, N, n_split;
    const REAL *lam;        /* (N, 2) */
    const REAL *b;          /* (nb, L, N, 2) */
    const REAL *h0;         /* (nb, N, 2) or NULL */
    REAL *h;                /* (nb, L, N, 2) forward output / saved states in the backward */
    /* backward only */
    const REAL *gh;         /* (nb, L, N, 2) */
    REAL *gb;               /* (nb, L, N, 2) */
    REAL *gh0;              /* (nb, N, 2) or NULL */
    REAL *glam;             /* (N, 2) */
} CAT(scan_args, RS);

/* Workspace (in reals) that one thread needs for the backward. */
static inline idx CAT(lru_bwd_ws, RS)(idx Np, idx T) { return 2 * Np + 2 * (T + 1) * Np + 2 * T * Np; }

/* Workspace (in reals) of one scan work item. */
static inline idx CAT(scan_ws, RS)(idx N) { return 10 * N + 2 * 64 / (idx)sizeof(REAL); }

#else /* !KERNEL_ARGS: the kernels of one real type and one instruction set */
#define NAME(x) CAT(x, SFX)

typedef REAL NAME(vec) __attribute__((vector_size(VW * sizeof(REAL))));
#define VEC NAME(vec)
#define HW (VW / 2) /* complex numbers per vector in interleaved layout */
#define VPU (64 / (VW * (int)sizeof(REAL))) /* vectors per 64-byte unit of states */

#if VW != 2 && VW != 4 && VW != 8 && VW != 16
#error "kernels.h: VW must be 2, 4, 8 or 16 lanes"
#endif

static inline ALWAYS_INLINE VEC NAME(ld)(const REAL *p)
{
    VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline ALWAYS_INLINE void NAME(st)(REAL *p, VEC v) { memcpy(p, &v, sizeof v); }

static inline ALWAYS_INLINE VEC NAME(splat)(REAL s)
{
    /* s - 0 is s for every s (-0 included), so the compiler emits a bare broadcast; s + 0 would
     * turn -0 into +0 and costs an add in every inner loop that splats */
    VEC v = {0};
    return s - v;
}

typedef REAL NAME(v8) __attribute__((vector_size(8 * sizeof(REAL))));
typedef REAL NAME(v4) __attribute__((vector_size(4 * sizeof(REAL))));
typedef REAL NAME(v2) __attribute__((vector_size(2 * sizeof(REAL))));

/* Horizontal sums of several vectors at once, by pairwise combination: combining a and b at
 * group width g (each of them holds outputs whose partial sums fill g consecutive lanes) adds
 * the two halves of every group and puts a's groups before b's, so that log2(VW) levels turn VW
 * vectors into one vector of VW sums with one two-input shuffle pair and one add per
 * combination (reducing each vector on its own costs about twice as many instructions). */
#if VW == 16
#define LO16 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HI16 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LO8 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define HI8 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31
#define LO4 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29
#define HI4 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31
#elif VW == 8
#define LO8 0, 1, 2, 3, 8, 9, 10, 11
#define HI8 4, 5, 6, 7, 12, 13, 14, 15
#define LO4 0, 1, 4, 5, 8, 9, 12, 13
#define HI4 2, 3, 6, 7, 10, 11, 14, 15
#define LO2 0, 2, 4, 6, 8, 10, 12, 14
#define HI2 1, 3, 5, 7, 9, 11, 13, 15
#elif VW == 4
#define LO4 0, 1, 4, 5
#define HI4 2, 3, 6, 7
#define LO2 0, 2, 4, 6
#define HI2 1, 3, 5, 7
#else
#define LO2 0, 2
#define HI2 1, 3
#endif
#define COMBINE(a, b, G) (__builtin_shufflevector(a, b, LO##G) + __builtin_shufflevector(a, b, HI##G))

/* out[q] = sum of the lanes of s[q], q = 0..3 */
static inline ALWAYS_INLINE void NAME(hsum4)(VEC s0, VEC s1, VEC s2, VEC s3, REAL out[4])
{
#if VW == 16
    const VEC w = COMBINE(COMBINE(s0, s1, 16), COMBINE(s2, s3, 16), 8); /* 4 outputs x 4 lanes */
    const NAME(v8) x = __builtin_shufflevector(w, w, 0, 1, 4, 5, 8, 9, 12, 13) +
                       __builtin_shufflevector(w, w, 2, 3, 6, 7, 10, 11, 14, 15);
    const NAME(v4) d = __builtin_shufflevector(x, x, 0, 2, 4, 6) + __builtin_shufflevector(x, x, 1, 3, 5, 7);
#elif VW == 8
    const VEC x = COMBINE(COMBINE(s0, s1, 8), COMBINE(s2, s3, 8), 4); /* 4 outputs x 2 lanes */
    const NAME(v4) d = __builtin_shufflevector(x, x, 0, 2, 4, 6) + __builtin_shufflevector(x, x, 1, 3, 5, 7);
#elif VW == 4
    const VEC d = COMBINE(COMBINE(s0, s1, 4), COMBINE(s2, s3, 4), 2);
#else
    const VEC d01 = COMBINE(s0, s1, 2), d23 = COMBINE(s2, s3, 2);
    memcpy(out + 2, &d23, sizeof d23);
    const VEC d = d01;
#endif
    memcpy(out, &d, sizeof d);
}

/* out[q] = sum of the lanes of s[q], q = 0..7 */
static inline ALWAYS_INLINE void NAME(hsum8)(const VEC s[8], REAL out[8])
{
#if VW == 16
    const VEC w0 = COMBINE(COMBINE(s[0], s[1], 16), COMBINE(s[2], s[3], 16), 8);
    const VEC w1 = COMBINE(COMBINE(s[4], s[5], 16), COMBINE(s[6], s[7], 16), 8);
    const VEC x = COMBINE(w0, w1, 4); /* 8 outputs x 2 lanes */
    const NAME(v8) d = __builtin_shufflevector(x, x, 0, 2, 4, 6, 8, 10, 12, 14) +
                       __builtin_shufflevector(x, x, 1, 3, 5, 7, 9, 11, 13, 15);
    memcpy(out, &d, sizeof d);
#elif VW == 8
    const VEC w0 = COMBINE(COMBINE(s[0], s[1], 8), COMBINE(s[2], s[3], 8), 4);
    const VEC w1 = COMBINE(COMBINE(s[4], s[5], 8), COMBINE(s[6], s[7], 8), 4);
    const VEC d = COMBINE(w0, w1, 2);
    memcpy(out, &d, sizeof d);
#else
    NAME(hsum4)(s[0], s[1], s[2], s[3], out);
    NAME(hsum4)(s[4], s[5], s[6], s[7], out + 4);
#endif
}

/* Sum of the lanes of one vector. */
static inline ALWAYS_INLINE REAL NAME(hsum)(VEC v)
{
    REAL buf[VW];
    memcpy(buf, &v, sizeof buf);
    for (int w = VW / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) buf[i] += buf[i + w];
    return buf[0];
}

/* Register blocking of the dot products over the states: NB outputs at a time, with separate
 * accumulators for the real and imaginary products, so that 2 NB independent chains of fused
 * multiply-adds keep the FMA units busy (one chain per output made each step wait on the
 * latency of the last one). 16-register targets take 4 outputs at a time, 32-register ones 8. */
#if NREG >= 32
#define OB 8
#else
#define OB 4
#endif

/* out[q] = sum_j pr[q stride + j] vr[j] + sgn pi[q stride + j] vi[j], q = 0..NB-1, over the
 * vectors j0 <= j < j1 (sgn = -1 gives Re(c x), +1 gives Re(conj(b) g)). */
#define DEFINE_DOTS(NB)                                                                         \
    static inline ALWAYS_INLINE void NAME(dots##NB)(const REAL *pr, const REAL *pi, idx stride, \
                                                    const REAL *vr_, const REAL *vi_, idx j0,   \
                                                    idx j1, REAL sgn, REAL *out)                \
    {                                                                                           \
        VEC sr[NB], si[NB];                                                                     \
        for (int q = 0; q < NB; q++) sr[q] = si[q] = NAME(splat)(0);                            \
        for (idx j = j0; j < j1; j++) {                                                         \
            const VEC vr = NAME(ld)(vr_ + j * VW), vi = NAME(ld)(vi_ + j * VW);                 \
            for (int q = 0; q < NB; q++) {                                                      \
                sr[q] += NAME(ld)(pr + q * stride + j * VW) * vr;                               \
                si[q] += NAME(ld)(pi + q * stride + j * VW) * vi;                               \
            }                                                                                   \
        }                                                                                       \
        for (int q = 0; q < NB; q++) sr[q] += sgn * si[q];                                      \
        if (NB == 8) NAME(hsum8)(sr, out);                                                      \
        else NAME(hsum4)(sr[0], sr[1], sr[2], sr[3], out);                                      \
    }
DEFINE_DOTS(4)
#if OB == 8
DEFINE_DOTS(8)
#endif
#undef DEFINE_DOTS

/* dots over all Hn rows of (pr, pi) (row stride Np), written to out[0..Hn) (added when acc). */
static inline ALWAYS_INLINE void NAME(dots_all)(const REAL *pr, const REAL *pi, idx Np, idx Hn,
                                                const REAL *vr, const REAL *vi, idx j0, idx j1,
                                                REAL sgn, REAL *out, int acc)
{
    idx o = 0;
    REAL r[8];
#if OB == 8
    for (; o + 8 <= Hn; o += 8) {
        NAME(dots8)(pr + o * Np, pi + o * Np, Np, vr, vi, j0, j1, sgn, r);
        for (int q = 0; q < 8; q++) out[o + q] = acc ? out[o + q] + r[q] : r[q];
    }
#endif
    for (; o + 4 <= Hn; o += 4) {
        NAME(dots4)(pr + o * Np, pi + o * Np, Np, vr, vi, j0, j1, sgn, r);
        for (int q = 0; q < 4; q++) out[o + q] = acc ? out[o + q] + r[q] : r[q];
    }
    for (; o < Hn; o++) {
        VEC sr = NAME(splat)(0), si = sr;
        for (idx j = j0; j < j1; j++) {
            sr += NAME(ld)(pr + o * Np + j * VW) * NAME(ld)(vr + j * VW);
            si += NAME(ld)(pi + o * Np + j * VW) * NAME(ld)(vi + j * VW);
        }
        const REAL v = NAME(hsum)(sr + sgn * si);
        out[o] = acc ? out[o] + v : v;
    }
}

/* Register blocking over the states: JB vectors at a time, so that the sums over the input
 * (or output) channels run as 2 JB independent chains and each broadcast serves JB vectors
 * (a single vector at a time waited on the latency of one chain of Hi multiply-adds). */
#if NREG >= 32
#define JB 8
#else
#define JB 4
#endif

/* State update of vectors [j, j + NJ): n = lam * p + B u (n may be p). */
#define DEFINE_UPDATE(NJ)                                                                       \
    static inline ALWAYS_INLINE void NAME(update##NJ)(const CAT(lru_args, RS) *a, const REAL *uk, \
                                                      const REAL *pr, const REAL *pi, REAL *nr,  \
                                                      REAL *ni, idx j)                           \
    {                                                                                           \
        const idx Np = a->Np, Hi = a->Hi;                                                       \
        VEC br[NJ], bi[NJ];                                                                     \
        for (int q = 0; q < NJ; q++) br[q] = bi[q] = NAME(splat)(0);                            \
        for (idx h = 0; h < Hi; h++) {                                                          \
            const VEC uh = NAME(splat)(uk[h]);                                                  \
            const REAL *rr = a->Br + h * Np + j * VW, *ri = a->Bi + h * Np + j * VW;            \
            for (int q = 0; q < NJ; q++) {                                                      \
                br[q] += NAME(ld)(rr + q * VW) * uh;                                            \
                bi[q] += NAME(ld)(ri + q * VW) * uh;                                            \
            }                                                                                   \
        }                                                                                       \
        for (int q = 0; q < NJ; q++) {                                                          \
            const idx o = (j + q) * VW;                                                         \
            const VEC lr = NAME(ld)(a->lr + o), li = NAME(ld)(a->li + o);                       \
            const VEC p_r = NAME(ld)(pr + o), p_i = NAME(ld)(pi + o);                           \
            NAME(st)(nr + o, lr * p_r - li * p_i + br[q]);                                      \
            NAME(st)(ni + o, lr * p_i + li * p_r + bi[q]);                                      \
        }                                                                                       \
    }

/* Adjoint step of vectors [j, j + NJ): g = conj(lam) g (when carry) + C^H gy[k], written to
 * (gr, gi) and to (sr, si). C^H gy[k] does not depend on g, so it is summed first and the chain
 * from one step's g to the next is only the multiplication by conj(lam) and one add. */
#define DEFINE_ADJOINT(NJ)                                                                      \
    static inline ALWAYS_INLINE void NAME(adjoint##NJ)(const CAT(lru_args, RS) *a, const REAL *gyk, \
                                                       int carry, REAL *gr, REAL *gi, REAL *sr,  \
                                                       REAL *si, idx j)                          \
    {                                                                                           \
        const idx Np = a->Np, Ho = a->Ho;                                                       \
        VEC cr_[NJ], ci_[NJ];                                                                   \
        for (int q = 0; q < NJ; q++) cr_[q] = ci_[q] = NAME(splat)(0);                          \
        for (idx o = 0; o < Ho; o++) {                                                          \
            const VEC g = NAME(splat)(gyk[o]);                                                  \
            const REAL *cr = a->Cr + o * Np + j * VW, *ci = a->Ci + o * Np + j * VW;            \
            for (int q = 0; q < NJ; q++) {                                                      \
                cr_[q] += NAME(ld)(cr + q * VW) * g;                                            \
                ci_[q] -= NAME(ld)(ci + q * VW) * g;                                            \
            }                                                                                   \
        }                                                                                       \
        for (int q = 0; q < NJ; q++) {                                                          \
            const idx o = (j + q) * VW;                                                         \
            VEC vr = NAME(ld)(gr + o), vi = NAME(ld)(gi + o);                                   \
            if (carry) {                                                                        \
                const VEC lr = NAME(ld)(a->lr + o), li = NAME(ld)(a->li + o);                   \
                const VEC tr = lr * vr + li * vi;                                               \
                vi = lr * vi - li * vr;                                                         \
                vr = tr;                                                                        \
            }                                                                                   \
            vr += cr_[q];                                                                       \
            vi += ci_[q];                                                                       \
            NAME(st)(gr + o, vr);                                                               \
            NAME(st)(gi + o, vi);                                                               \
            NAME(st)(sr + o, vr);                                                               \
            NAME(st)(si + o, vi);                                                               \
        }                                                                                       \
    }

DEFINE_UPDATE(1)
DEFINE_UPDATE(2)
DEFINE_UPDATE(4)
DEFINE_ADJOINT(1)
DEFINE_ADJOINT(2)
DEFINE_ADJOINT(4)
#if JB == 8
DEFINE_UPDATE(8)
DEFINE_ADJOINT(8)
#endif
#undef DEFINE_UPDATE
#undef DEFINE_ADJOINT

/* The update / adjoint step over vectors [j0, j1), in blocks of JB, then 4, 2, 1. */
#if JB == 8
#define BLOCKED(fn, j0, j1, ...)                                                                \
    do {                                                                                        \
        idx j_ = (j0);                                                                          \
        for (; j_ + 8 <= (j1); j_ += 8) NAME(fn##8)(__VA_ARGS__, j_);                           \
        for (; j_ + 4 <= (j1); j_ += 4) NAME(fn##4)(__VA_ARGS__, j_);                           \
        for (; j_ + 2 <= (j1); j_ += 2) NAME(fn##2)(__VA_ARGS__, j_);                           \
        for (; j_ < (j1); j_++) NAME(fn##1)(__VA_ARGS__, j_);                                   \
    } while (0)
#else
#define BLOCKED(fn, j0, j1, ...)                                                                \
    do {                                                                                        \
        idx j_ = (j0);                                                                          \
        for (; j_ + 4 <= (j1); j_ += 4) NAME(fn##4)(__VA_ARGS__, j_);                           \
        for (; j_ + 2 <= (j1); j_ += 2) NAME(fn##2)(__VA_ARGS__, j_);                           \
        for (; j_ < (j1); j_++) NAME(fn##1)(__VA_ARGS__, j_);                                   \
    } while (0)
#endif

/* ------------------------------------------------------------------------------------------ */
/* Fused LRU recurrence                                                                       */
/* ------------------------------------------------------------------------------------------ */


/* (pr, pi) = sum_h (Pr[h], Pi[h]) v[h] over the NJ vectors of states at Pr, Pi (rows of Np reals,
 * already offset to the states): B u[k] (P = B, v = u[k], nv = Hi) or C^T gy[k] (P = C, v = gy[k],
 * nv = Ho), for the small-state code below. Two interleaved chains over h, so that a step does
 * not wait on the latency of one chain of nv multiply-adds. */
#define DEFINE_PRODUCT_SMALL(NJ)                                                                \
    static inline ALWAYS_INLINE void NAME(product_small##NJ)(const REAL *Pr, const REAL *Pi, idx Np, \
                                                             idx nv, const REAL *v, VEC *pr,     \
                                                             VEC *pi)                            \
    {                                                                                           \
        VEC r0[NJ], i0[NJ], r1[NJ], i1[NJ];                                                     \
        for (int q = 0; q < NJ; q++) r0[q] = i0[q] = r1[q] = i1[q] = NAME(splat)(0);            \
        idx h = 0;                                                                              \
        for (; h + 2 <= nv; h += 2) {                                                           \
            const VEC va = NAME(splat)(v[h]), vb = NAME(splat)(v[h + 1]);                       \
            for (int q = 0; q < NJ; q++) {                                                      \
                r0[q] += NAME(ld)(Pr + h * Np + q * VW) * va;                                   \
                i0[q] += NAME(ld)(Pi + h * Np + q * VW) * va;                                   \
                r1[q] += NAME(ld)(Pr + (h + 1) * Np + q * VW) * vb;                             \
                i1[q] += NAME(ld)(Pi + (h + 1) * Np + q * VW) * vb;                             \
            }                                                                                   \
        }                                                                                       \
        if (h < nv) {                                                                           \
            const VEC va = NAME(splat)(v[h]);                                                   \
            for (int q = 0; q < NJ; q++) {                                                      \
                r0[q] += NAME(ld)(Pr + h * Np + q * VW) * va;                                   \
                i0[q] += NAME(ld)(Pi + h * Np + q * VW) * va;                                   \
            }                                                                                   \
        }                                                                                       \
        for (int q = 0; q < NJ; q++) {                                                          \
            pr[q] = r0[q] + r1[q];                                                              \
            pi[q] = i0[q] + i1[q];                                                              \
        }                                                                                       \
    }
DEFINE_PRODUCT_SMALL(1)
DEFINE_PRODUCT_SMALL(2)
#undef DEFINE_PRODUCT_SMALL

/* out[o] = sum over the NJ vectors of states of Pr[o] vr + sgn Pi[o] vi, for o < nout (rows of Np
 * reals, already offset to the states), written (acc == 0) or added (acc == 1): Re(C x) of a small
 * state (P = C, sgn = -1) or du = Re(conj(B) g) (P = B, sgn = +1). Eight outputs are reduced
 * together (hsum8), the rest one by one. sgn is a constant at every call. */
#define DEFINE_DOTS_SMALL(NJ)                                                                   \
    static inline ALWAYS_INLINE void NAME(dots_small##NJ)(const REAL *Pr, const REAL *Pi, idx Np,  \
                                                          idx nout, const VEC *vr, const VEC *vi, \
                                                          int sgn, REAL *out, int acc)           \
    {                                                                                           \
        REAL r[8];                                                                              \
        idx o = 0;                                                                              \
        for (; o + 8 <= nout; o += 8) {                                                         \
            VEC sv[8];                                                                          \
            for (int p = 0; p < 8; p++) {                                                       \
                const REAL *pr = Pr + (o + p) * Np, *pi = Pi + (o + p) * Np;                    \
                sv[p] = sgn < 0 ? NAME(ld)(pr) * vr[0] - NAME(ld)(pi) * vi[0]                   \
                                : NAME(ld)(pr) * vr[0] + NAME(ld)(pi) * vi[0];                  \
                for (int q = 1; q < NJ; q++)                                                    \
                    sv[p] += sgn < 0 ? NAME(ld)(pr + q * VW) * vr[q] - NAME(ld)(pi + q * VW) * vi[q] \
                                     : NAME(ld)(pr + q * VW) * vr[q] + NAME(ld)(pi + q * VW) * vi[q]; \
            }                                                                                   \
            NAME(hsum8)(sv, r);                                                                 \
            for (int p = 0; p < 8; p++) out[o + p] = acc ? out[o + p] + r[p] : r[p];            \
        }                                                                                       \
        for (; o < nout; o++) {                                                                 \
            const REAL *pr = Pr + o * Np, *pi = Pi + o * Np;                                    \
            VEC sv = sgn < 0 ? NAME(ld)(pr) * vr[0] - NAME(ld)(pi) * vi[0]                      \
                             : NAME(ld)(pr) * vr[0] + NAME(ld)(pi) * vi[0];                     \
            for (int q = 1; q < NJ; q++)                                                        \
                sv += sgn < 0 ? NAME(ld)(pr + q * VW) * vr[q] - NAME(ld)(pi + q * VW) * vi[q]   \
                              : NAME(ld)(pr + q * VW) * vr[q] + NAME(ld)(pi + q * VW) * vi[q];  \
            const REAL v = NAME(hsum)(sv);                                                      \
            out[o] = acc ? out[o] + v : v;                                                      \
        }                                                                                       \
    }
DEFINE_DOTS_SMALL(1)
DEFINE_DOTS_SMALL(2)
#undef DEFINE_DOTS_SMALL

/* Forward of one work item: batch row b, states [64 u0, 64 u1) bytes.
 * ydst receives y (overwritten when acc == 0, added to when acc == 1). ws: 2 * Np reals. */
/* Forward of one batch row whose states fill NJ = 1 or 2 vectors (small N, as after compression):
 * the state stays in registers across steps, the sum over the inputs runs as two interleaved
 * chains, and each step's outputs are reduced together, so that the step is not bound by the
 * latency of one chain of multiply-adds or by store-to-load round trips of the state. */
#define DEFINE_FWD_SMALL(NJ)                                                                    \
    static inline ALWAYS_INLINE void NAME(lru_fwd_small##NJ)(const CAT(lru_args, RS) *a, idx b,  \
                                                             idx j0, REAL *ydst, int acc)        \
    {                                                                                           \
        const idx L = a->L, Hi = a->Hi, Ho = a->Ho, Np = a->Np, T = a->T;                       \
        VEC xr[NJ], xi[NJ], lr[NJ], li[NJ];                                                     \
        for (int q = 0; q < NJ; q++) {                                                          \
            const idx o = (j0 + q) * VW;                                                        \
            xr[q] = a->h0r ? NAME(ld)(a->h0r + b * Np + o) : NAME(splat)(0);                    \
            xi[q] = a->h0i ? NAME(ld)(a->h0i + b * Np + o) : NAME(splat)(0);                    \
            lr[q] = NAME(ld)(a->lr + o);                                                        \
            li[q] = NAME(ld)(a->li + o);                                                        \
        }                                                                                       \
        const REAL *u = a->u + b * L * Hi, *Br = a->Br + j0 * VW, *Bi = a->Bi + j0 * VW;        \
        const REAL *Cr = a->Cr + j0 * VW, *Ci = a->Ci + j0 * VW;                                \
        REAL *y = ydst + b * L * Ho;                                                            \
        idx next_ck = 0;                                                                        \
        for (idx k = 0; k < L; k++) {                                                           \
            if (a->ckr && k == next_ck) {                                                       \
                REAL *cr = a->ckr + (b * a->n_chunks + k / T) * Np + j0 * VW;                   \
                REAL *ci = a->cki + (b * a->n_chunks + k / T) * Np + j0 * VW;                   \
                for (int q = 0; q < NJ; q++) {                                                  \
                    NAME(st)(cr + q * VW, xr[q]);                                               \
                    NAME(st)(ci + q * VW, xi[q]);                                               \
                }                                                                               \
                next_ck += T;                                                                   \
            }                                                                                   \
            VEC br[NJ], bi[NJ];                                                                 \
            NAME(product_small##NJ)(Br, Bi, Np, Hi, u + k * Hi, br, bi);                        \
            for (int q = 0; q < NJ; q++) {                                                      \
                const VEC tr = lr[q] * xr[q] - li[q] * xi[q] + br[q];                           \
                xi[q] = lr[q] * xi[q] + li[q] * xr[q] + bi[q];                                  \
                xr[q] = tr;                                                                     \
            }                                                                                   \
            NAME(dots_small##NJ)(Cr, Ci, Np, Ho, xr, xi, -1, y + k * Ho, acc);                  \
        }                                                                                       \
        for (int q = 0; q < NJ; q++) {                                                          \
            NAME(st)(a->hlr + b * Np + (j0 + q) * VW, xr[q]);                                   \
            NAME(st)(a->hli + b * Np + (j0 + q) * VW, xi[q]);                                   \
        }                                                                                       \
    }
DEFINE_FWD_SMALL(1)
DEFINE_FWD_SMALL(2)
#undef DEFINE_FWD_SMALL

static inline ALWAYS_INLINE void NAME(lru_fwd_item)(const CAT(lru_args, RS) *a, idx b, idx u0, idx u1,
                                                    REAL *ydst, int acc, REAL *ws)
{
    const idx L = a->L, Hi = a->Hi, Ho = a->Ho, Np = a->Np, T = a->T;
    const idx j0 = u0 * VPU, j1 = u1 * VPU; /* vectors */
    if (j1 - j0 == 1) {
        NAME(lru_fwd_small1)(a, b, j0, ydst, acc);
        return;
    }
    if (j1 - j0 == 2) {
        NAME(lru_fwd_small2)(a, b, j0, ydst, acc);
        return;
    }
    REAL *xr = ws, *xi = ws + Np;
    for (idx j = j0; j < j1; j++) {
        VEC zr = NAME(splat)(0), zi = zr;
        if (a->h0r) {
            zr = NAME(ld)(a->h0r + b * Np + j * VW);
            zi = NAME(ld)(a->h0i + b * Np + j * VW);
        }
        NAME(st)(xr + j * VW, zr);
        NAME(st)(xi + j * VW, zi);
    }
    const REAL *u = a->u + b * L * Hi;
    REAL *y = ydst + b * L * Ho;
    for (idx k = 0; k < L; k++) {
        if (a->ckr && k % T == 0) {
            REAL *cr = a->ckr + (b * a->n_chunks + k / T) * Np, *ci = a->cki + (b * a->n_chunks + k / T) * Np;
            for (idx j = j0; j < j1; j++) {
                NAME(st)(cr + j * VW, NAME(ld)(xr + j * VW));
                NAME(st)(ci + j * VW, NAME(ld)(xi + j * VW));
            }
        }
        const REAL *uk = u + k * Hi;
        /* 1. state update: x = lam * x + B u[k] */
        BLOCKED(update, j0, j1, a, uk, xr, xi, xr, xi);
        /* 2. output: y[k, o] = sum_n Cr[o, n] xr[n] - Ci[o, n] xi[n] */
        NAME(dots_all)(a->Cr, a->Ci, Np, Ho, xr, xi, j0, j1, (REAL)-1, y + k * Ho, acc);
    }
    for (idx j = j0; j < j1; j++) {
        NAME(st)(a->hlr + b * Np + j * VW, NAME(ld)(xr + j * VW));
        NAME(st)(a->hli + b * Np + j * VW, NAME(ld)(xi + j * VW));
    }
}


/* dst_r[h] += sum_t vr[t] w[t, h] and dst_i[h] += sgn sum_t vi[t] w[t, h] for h < nw, over one
 * vector of states: vr[t] = pr[t ps], vi[t] = pi[t ps] (ps reals between steps), w[t, h] =
 * w[t nw + h], destination rows Np reals apart. Register-blocked by 4 rows, so that each load of
 * (vr, vi) serves 4 multiply-adds per part. sgn is +1 or -1 (a constant at every call). */
static inline ALWAYS_INLINE void NAME(outer_acc)(const REAL *pr, const REAL *pi, idx ps, idx n,
                                                 const REAL *w, idx nw, REAL sgn, REAL *dst_r,
                                                 REAL *dst_i, idx Np)
{
    idx h = 0;
    for (; h + 4 <= nw; h += 4) {
        VEC r0 = NAME(splat)(0), r1 = r0, r2 = r0, r3 = r0, i0 = r0, i1 = r0, i2 = r0, i3 = r0;
        for (idx t = 0; t < n; t++) {
            const VEC vr = NAME(ld)(pr + t * ps), vi = NAME(ld)(pi + t * ps);
            const REAL *wt = w + t * nw + h;
            r0 += vr * wt[0]; i0 += vi * wt[0];
            r1 += vr * wt[1]; i1 += vi * wt[1];
            r2 += vr * wt[2]; i2 += vi * wt[2];
            r3 += vr * wt[3]; i3 += vi * wt[3];
        }
        REAL *dr = dst_r + h * Np, *di = dst_i + h * Np;
        NAME(st)(dr, NAME(ld)(dr) + r0); NAME(st)(di, NAME(ld)(di) + sgn * i0);
        NAME(st)(dr + Np, NAME(ld)(dr + Np) + r1); NAME(st)(di + Np, NAME(ld)(di + Np) + sgn * i1);
        NAME(st)(dr + 2 * Np, NAME(ld)(dr + 2 * Np) + r2); NAME(st)(di + 2 * Np, NAME(ld)(di + 2 * Np) + sgn * i2);
        NAME(st)(dr + 3 * Np, NAME(ld)(dr + 3 * Np) + r3); NAME(st)(di + 3 * Np, NAME(ld)(di + 3 * Np) + sgn * i3);
    }
    for (; h < nw; h++) {
        VEC r0 = NAME(splat)(0), i0 = r0;
        for (idx t = 0; t < n; t++) {
            const REAL wt = w[t * nw + h];
            r0 += NAME(ld)(pr + t * ps) * wt;
            i0 += NAME(ld)(pi + t * ps) * wt;
        }
        REAL *dr = dst_r + h * Np, *di = dst_i + h * Np;
        NAME(st)(dr, NAME(ld)(dr) + r0); NAME(st)(di, NAME(ld)(di) + sgn * i0);
    }
}

/* The parameter gradients of one vector of states over the n steps of a checkpoint chunk, added
 * to the thread's accumulators tacc (laid out as in lru_bwd_item) at state offset jo:
 *   dB[h, n] += sum_t g[t, n] u[t, h],   dC[o, n] += sum_t gy[t, o] conj(x[t, n])
 * g[t] is (gb[2 t S], gb[(2 t + 1) S]) and x[t] (xb[2 (t + 1) S], xb[(2 t + 3) S]): the chunk's
 * buffers with rows of S reals, already offset to the vector; uc, gyc: u and gy at the chunk's
 * first step. */
static inline ALWAYS_INLINE void NAME(chunk_dB_dC)(const CAT(lru_args, RS) *a, const REAL *gb, const REAL *xb,
                                                   idx S, idx n, const REAL *uc, const REAL *gyc,
                                                   REAL *tacc, idx jo)
{
    const idx Hi = a->Hi, Ho = a->Ho, Np = a->Np;
    REAL *tBr = tacc, *tBi = tBr + Hi * Np, *tCr = tBi + Hi * Np, *tCi = tCr + Ho * Np;
    NAME(outer_acc)(gb, gb + S, 2 * S, n, uc, Hi, (REAL)1, tBr + jo, tBi + jo, Np);
    NAME(outer_acc)(xb + 2 * S, xb + 3 * S, 2 * S, n, gyc, Ho, (REAL)-1, tCr + jo, tCi + jo, Np);
}

/* Backward of one batch row whose states fill NJ = 1 or 2 vectors (small N, as after compression),
 * the counterpart of lru_fwd_small: the recomputed state and the adjoint stay in registers across
 * steps (the generic item below stores and reloads them every step, which puts a store-to-load
 * round trip on each recurrence), the sums over the input and output channels run as two
 * interleaved chains, du is one dot product per input channel (real and imaginary products in one
 * chain), and dlam is accumulated in registers during the adjoint pass. The chunk's states and
 * adjoints are kept in a compact workspace of NJ vectors per step (stride S = NJ VW), read by the
 * dB and dC products afterwards. Same arithmetic as lru_bwd_item, in a different order of sums. */
#define DEFINE_BWD_SMALL(NJ)                                                                    \
    static inline ALWAYS_INLINE void NAME(lru_bwd_small##NJ)(const CAT(lru_args, RS) *a, idx b,  \
                                                             idx j0, REAL *gudst, int acc,       \
                                                             REAL *ws, REAL *tacc)               \
    {                                                                                           \
        const idx L = a->L, Hi = a->Hi, Ho = a->Ho, Np = a->Np, T = a->T, S = NJ * VW;          \
        REAL *xb = ws;                    /* (T + 1) x {re, im} x S: x[k0 - 1 .. k1 - 1] */     \
        REAL *gb = xb + 2 * (T + 1) * S;  /* T x {re, im} x S: g[k0 .. k1 - 1] */               \
        REAL *tlr = tacc + 2 * (Hi + Ho) * Np, *tli = tlr + Np; /* after dB and dC (lru_bwd_item) */ \
        const REAL *u = a->u + b * L * Hi, *gy = a->gy + b * L * Ho;                            \
        const REAL *Br = a->Br + j0 * VW, *Bi = a->Bi + j0 * VW;                                \
        const REAL *Cr = a->Cr + j0 * VW, *Ci = a->Ci + j0 * VW;                                \
        REAL *gu = gudst + b * L * Hi;                                                          \
        VEC gr[NJ], gi[NJ], lr[NJ], li[NJ], dlr[NJ], dli[NJ];                                   \
        for (int q = 0; q < NJ; q++) {                                                          \
            const idx o = (j0 + q) * VW;                                                        \
            gr[q] = a->ghlr ? NAME(ld)(a->ghlr + b * Np + o) : NAME(splat)(0);                  \
            gi[q] = a->ghli ? NAME(ld)(a->ghli + b * Np + o) : NAME(splat)(0);                  \
            lr[q] = NAME(ld)(a->lr + o);                                                        \
            li[q] = NAME(ld)(a->li + o);                                                        \
            dlr[q] = dli[q] = NAME(splat)(0);                                                   \
        }                                                                                       \
        for (idx c = a->n_chunks - 1; c >= 0; c--) {                                            \
            const idx k0 = c * T, k1 = (k0 + T < L) ? k0 + T : L, n = k1 - k0;                  \
            /* 1. recompute the chunk's states from its checkpoint, in registers */             \
            VEC xr[NJ], xi[NJ];                                                                 \
            const REAL *ck_r = a->ckr + (b * a->n_chunks + c) * Np + j0 * VW;                   \
            const REAL *ck_i = a->cki + (b * a->n_chunks + c) * Np + j0 * VW;                   \
            for (int q = 0; q < NJ; q++) {                                                      \
                xr[q] = NAME(ld)(ck_r + q * VW);                                                \
                xi[q] = NAME(ld)(ck_i + q * VW);                                                \
                NAME(st)(xb + q * VW, xr[q]);                                                   \
                NAME(st)(xb + S + q * VW, xi[q]);                                               \
            }                                                                                   \
            for (idx t = 0; t < n; t++) {                                                       \
                VEC br[NJ], bi[NJ];                                                             \
                NAME(product_small##NJ)(Br, Bi, Np, Hi, u + (k0 + t) * Hi, br, bi);             \
                REAL *nx = xb + 2 * (t + 1) * S;                                                \
                for (int q = 0; q < NJ; q++) {                                                  \
                    const VEC tr = lr[q] * xr[q] - li[q] * xi[q] + br[q];                       \
                    xi[q] = lr[q] * xi[q] + li[q] * xr[q] + bi[q];                              \
                    xr[q] = tr;                                                                 \
                    NAME(st)(nx + q * VW, xr[q]);                                               \
                    NAME(st)(nx + S + q * VW, xi[q]);                                           \
                }                                                                               \
            }                                                                                   \
            /* 2. adjoint, backwards: g[k] = conj(lam) g[k+1] + C^H gy[k]; du[k]; dlam */       \
            for (idx t = n - 1; t >= 0; t--) {                                                  \
                const idx k = k0 + t;                                                           \
                VEC cr[NJ], ci[NJ];               /* C^H gy[k] = (Cr^T gy[k], -Ci^T gy[k]) */   \
                NAME(product_small##NJ)(Cr, Ci, Np, Ho, gy + k * Ho, cr, ci);                   \
                const REAL *px = xb + 2 * t * S;                                                \
                REAL *sg = gb + 2 * t * S;                                                      \
                for (int q = 0; q < NJ; q++) {                                                  \
                    if (k < L - 1) {                                                            \
                        const VEC tr = lr[q] * gr[q] + li[q] * gi[q];                           \
                        gi[q] = lr[q] * gi[q] - li[q] * gr[q];                                  \
                        gr[q] = tr;                                                             \
                    }                                                                           \
                    gr[q] += cr[q];                                                             \
                    gi[q] -= ci[q];                                                             \
                    NAME(st)(sg + q * VW, gr[q]);                                               \
                    NAME(st)(sg + S + q * VW, gi[q]);                                           \
                    const VEC pr = NAME(ld)(px + q * VW), pi = NAME(ld)(px + S + q * VW);       \
                    dlr[q] += gr[q] * pr + gi[q] * pi;                                          \
                    dli[q] += gi[q] * pr - gr[q] * pi;                                          \
                }                                                                               \
                /* du[k, h] = sum_n Br[h, n] gr[n] + Bi[h, n] gi[n] */                          \
                NAME(dots_small##NJ)(Br, Bi, Np, Hi, gr, gi, 1, gu + k * Hi, acc);              \
            }                                                                                   \
            /* 3. dB and dC of the chunk */                                                     \
            for (int q = 0; q < NJ; q++)                                                        \
                NAME(chunk_dB_dC)(a, gb + q * VW, xb + q * VW, S, n, u + k0 * Hi, gy + k0 * Ho,   \
                                  tacc, (j0 + q) * VW);                                         \
        }                                                                                       \
        for (int q = 0; q < NJ; q++) {                                                          \
            const idx o = (j0 + q) * VW;                                                        \
            NAME(st)(tlr + o, NAME(ld)(tlr + o) + dlr[q]);                                      \
            NAME(st)(tli + o, NAME(ld)(tli + o) + dli[q]);                                      \
            if (a->gh0r) { /* dh0 = conj(lam) g[0] */                                           \
                NAME(st)(a->gh0r + b * Np + o, lr[q] * gr[q] + li[q] * gi[q]);                  \
                NAME(st)(a->gh0i + b * Np + o, lr[q] * gi[q] - li[q] * gr[q]);                  \
            }                                                                                   \
        }                                                                                       \
    }
DEFINE_BWD_SMALL(1)
DEFINE_BWD_SMALL(2)
#undef DEFINE_BWD_SMALL

/* Backward of one work item. gudst receives du (overwritten / added as for the forward). The
 * parameter gradients are ADDED to the thread's accumulators in tacc:
 *   gBr, gBi (Hi, Np) | gCr, gCi (Ho, Np) | glr, gli (Np)  -- laid out consecutively. */
static inline ALWAYS_INLINE void NAME(lru_bwd_item)(const CAT(lru_args, RS) *a, idx b, idx u0, idx u1,
                                                    REAL *gudst, int acc, REAL *ws, REAL *tacc)
{
    const idx L = a->L, Hi = a->Hi, Ho = a->Ho, Np = a->Np, T = a->T;
    const idx j0 = u0 * VPU, j1 = u1 * VPU; /* vectors */
    if (j1 - j0 == 1) {
        NAME(lru_bwd_small1)(a, b, j0, gudst, acc, ws, tacc);
        return;
    }
    if (j1 - j0 == 2) {
        NAME(lru_bwd_small2)(a, b, j0, gudst, acc, ws, tacc);
        return;
    }
    REAL *gr = ws, *gi = ws + Np;                 /* adjoint state */
    REAL *xb = ws + 2 * Np;                        /* (T + 1) x {re, im} x Np : x[k0 - 1 .. k1 - 1] */
    REAL *gb = xb + 2 * (T + 1) * Np;              /* T x {re, im} x Np : g[k0 .. k1 - 1] */
    REAL *tlr = tacc + 2 * (Hi + Ho) * Np, *tli = tlr + Np; /* after gBr, gBi (Hi, Np), gCr, gCi (Ho, Np) */
    const REAL *u = a->u + b * L * Hi;
    const REAL *gy = a->gy + b * L * Ho;
    REAL *gu = gudst + b * L * Hi;

    for (idx j = j0; j < j1; j++) {
        VEC zr = NAME(splat)(0), zi = zr;
        if (a->ghlr) {
            zr = NAME(ld)(a->ghlr + b * Np + j * VW);
            zi = NAME(ld)(a->ghli + b * Np + j * VW);
        }
        NAME(st)(gr + j * VW, zr);
        NAME(st)(gi + j * VW, zi);
    }
    for (idx c = a->n_chunks - 1; c >= 0; c--) {
        const idx k0 = c * T, k1 = (k0 + T < L) ? k0 + T : L, n = k1 - k0;
        /* 1. recompute the states of the chunk from its checkpoint */
        const REAL *cr = a->ckr + (b * a->n_chunks + c) * Np, *ci = a->cki + (b * a->n_chunks + c) * Np;
        for (idx j = j0; j < j1; j++) {
            NAME(st)(xb + j * VW, NAME(ld)(cr + j * VW));
            NAME(st)(xb + Np + j * VW, NAME(ld)(ci + j * VW));
        }
        for (idx t = 0; t < n; t++) {
            const REAL *uk = u + (k0 + t) * Hi;
            const REAL *pr_ = xb + 2 * t * Np, *pi_ = pr_ + Np;
            REAL *nr_ = xb + 2 * (t + 1) * Np, *ni_ = nr_ + Np;
            BLOCKED(update, j0, j1, a, uk, pr_, pi_, nr_, ni_);
        }
        /* 2. adjoint recurrence, backwards: g[k] = conj(lam) g[k+1] + C^H gy[k] */
        for (idx t = n - 1; t >= 0; t--) {
            const idx k = k0 + t;
            const REAL *gyk = gy + k * Ho;
            REAL *sr = gb + 2 * t * Np, *si = sr + Np;
            BLOCKED(adjoint, j0, j1, a, gyk, k < L - 1, gr, gi, sr, si);
            /* du[k, h] = sum_n Br[h, n] gr[n] + Bi[h, n] gi[n] */
            NAME(dots_all)(a->Br, a->Bi, Np, Hi, gr, gi, j0, j1, (REAL)1, gu + k * Hi, acc);
        }
        /* 3. parameter gradients of the chunk, as small register-blocked products over t */
        for (idx j = j0; j < j1; j++) {
            NAME(chunk_dB_dC)(a, gb + j * VW, xb + j * VW, Np, n, u + k0 * Hi, gy + k0 * Ho, tacc, j * VW);
            /* dlam[n] += sum_t g[t, n] conj(x[t - 1, n]) */
            VEC lr_ = NAME(splat)(0), li_ = lr_;
            for (idx t = 0; t < n; t++) {
                const VEC vr = NAME(ld)(gb + 2 * t * Np + j * VW), vi = NAME(ld)(gb + (2 * t + 1) * Np + j * VW);
                const VEC pr = NAME(ld)(xb + 2 * t * Np + j * VW), pi = NAME(ld)(xb + (2 * t + 1) * Np + j * VW);
                lr_ += vr * pr + vi * pi;
                li_ += vi * pr - vr * pi;
            }
            NAME(st)(tlr + j * VW, NAME(ld)(tlr + j * VW) + lr_);
            NAME(st)(tli + j * VW, NAME(ld)(tli + j * VW) + li_);
        }
    }
    /* dh0 = conj(lam) g[0] */
    if (a->gh0r) {
        for (idx j = j0; j < j1; j++) {
            const VEC lr = NAME(ld)(a->lr + j * VW), li = NAME(ld)(a->li + j * VW);
            const VEC vr = NAME(ld)(gr + j * VW), vi = NAME(ld)(gi + j * VW);
            NAME(st)(a->gh0r + b * Np + j * VW, lr * vr + li * vi);
            NAME(st)(a->gh0i + b * Np + j * VW, lr * vi - li * vr);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Scan only, interleaved complex (B, L, N)                                                   */
/* ------------------------------------------------------------------------------------------ */


/* [a0, a1, a2, a3, ...] -> [a1, a0, a3, a2, ...] */
static inline ALWAYS_INLINE VEC NAME(swap_pairs)(VEC v)
{
#if VW == 16
    return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
#elif VW == 8
    return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
#elif VW == 4
    return __builtin_shufflevector(v, v, 1, 0, 3, 2);
#else
    return __builtin_shufflevector(v, v, 1, 0);
#endif
}

/* Broadcasts of lam for complex products in interleaved layout, written into ws:
 *   lam * z       = dre * z + dim_m * swap(z)   with dre = [lr, lr], dim_m = [-li, li]
 *   conj(lam) * z = dre * z - dim_m * swap(z)                                              */
static inline ALWAYS_INLINE void NAME(lam_pairs)(const REAL *lam, idx n0, idx n1, REAL *dre, REAL *dim_m)
{
    for (idx n = n0; n < n1; n++) {
        dre[2 * n] = dre[2 * n + 1] = lam[2 * n];
        dim_m[2 * n] = -lam[2 * n + 1];
        dim_m[2 * n + 1] = lam[2 * n + 1];
    }
}


/* Forward of one work item: batch row b, complex states [n0, n1). */
static inline ALWAYS_INLINE void NAME(scan_fwd_item)(const CAT(scan_args, RS) *a, idx b, idx n0, idx n1, REAL *ws)
{
    const idx L = a->L, N = a->N;
    const idx nv = n0 + (n1 - n0) / HW * HW;  /* end of the vector part */
    REAL *z = ws, *dre = ws + 2 * N, *dim = ws + 4 * N;
    NAME(lam_pairs)(a->lam, n0, n1, dre, dim);
    for (idx n = n0; n < n1; n++) {
        z[2 * n] = a->h0 ? a->h0[2 * (b * N + n)] : 0;
        z[2 * n + 1] = a->h0 ? a->h0[2 * (b * N + n) + 1] : 0;
    }
    const REAL *src = a->b + 2 * b * L * N;
    REAL *dst = a->h + 2 * b * L * N;
    for (idx k = 0; k < L; k++) {
        const REAL *bk = src + 2 * k * N;
        REAL *hk = dst + 2 * k * N;
        for (idx n = n0; n < nv; n += HW) {
            const VEC v = NAME(ld)(z + 2 * n);
            const VEC r = NAME(ld)(dre + 2 * n) * v + NAME(ld)(dim + 2 * n) * NAME(swap_pairs)(v)
                          + NAME(ld)(bk + 2 * n);
            NAME(st)(z + 2 * n, r);
            NAME(st)(hk + 2 * n, r);
        }
        for (idx n = nv; n < n1; n++) {
            const REAL lr = a->lam[2 * n], li = a->lam[2 * n + 1];
            const REAL zr = z[2 * n], zi = z[2 * n + 1];
            const REAL rr = lr * zr - li * zi + bk[2 * n], ri = lr * zi + li * zr + bk[2 * n + 1];
            z[2 * n] = hk[2 * n] = rr;
            z[2 * n + 1] = hk[2 * n + 1] = ri;
        }
    }
}

/* Backward of one work item: g[k] = gh[k] + conj(lam) g[k+1], db[k] = g[k],
 * dlam += g[k] conj(h[k-1]), dh0 = conj(lam) g[0]. dlam is ADDED to tacc (N, 2). */
static inline ALWAYS_INLINE void NAME(scan_bwd_item)(const CAT(scan_args, RS) *a, idx b, idx n0, idx n1,
                                                     REAL *ws, REAL *tacc)
{
    const idx L = a->L, N = a->N;
    const idx nv = n0 + (n1 - n0) / HW * HW;
    REAL *g = ws, *dre = ws + 2 * N, *dim = ws + 4 * N, *P = ws + 6 * N, *Q = ws + 8 * N;
    NAME(lam_pairs)(a->lam, n0, n1, dre, dim);
    for (idx n = 2 * n0; n < 2 * n1; n++) g[n] = P[n] = Q[n] = 0;
    const REAL *gh = a->gh + 2 * b * L * N, *h = a->h + 2 * b * L * N;
    const REAL *h0 = a->h0 ? a->h0 + 2 * b * N : NULL;
    REAL *gbo = a->gb + 2 * b * L * N;
    /* Lane-wise P = g * hprev and Q = g * swap(hprev):
     *   Re dlam = P_re + P_im,  Im dlam = Q_im - Q_re   (dlam = g conj(hprev)). */
    for (idx k = L - 1; k >= 0; k--) {
        const REAL *hp = k > 0 ? h + 2 * (k - 1) * N : h0; /* NULL: zero initial state */
        const REAL *ghk = gh + 2 * k * N;
        REAL *gbk = gbo + 2 * k * N;
        for (idx n = n0; n < nv; n += HW) {
            const VEC v = NAME(ld)(g + 2 * n);
            const VEC r = NAME(ld)(dre + 2 * n) * v - NAME(ld)(dim + 2 * n) * NAME(swap_pairs)(v)
                          + NAME(ld)(ghk + 2 * n);
            NAME(st)(g + 2 * n, r);
            NAME(st)(gbk + 2 * n, r);
            if (hp) {
                const VEC p = NAME(ld)(hp + 2 * n);
                NAME(st)(P + 2 * n, NAME(ld)(P + 2 * n) + r * p);
                NAME(st)(Q + 2 * n, NAME(ld)(Q + 2 * n) + r * NAME(swap_pairs)(p));
            }
        }
        for (idx n = nv; n < n1; n++) {
            const REAL lr = a->lam[2 * n], li = a->lam[2 * n + 1];
            const REAL gr = g[2 * n], gi = g[2 * n + 1];
            const REAL rr = lr * gr + li * gi + ghk[2 * n], ri = lr * gi - li * gr + ghk[2 * n + 1];
            g[2 * n] = gbk[2 * n] = rr;
            g[2 * n + 1] = gbk[2 * n + 1] = ri;
            if (hp) {
                const REAL pr = hp[2 * n], pi = hp[2 * n + 1];
                P[2 * n] += rr * pr;
                P[2 * n + 1] += ri * pi;
                Q[2 * n] += rr * pi;
                Q[2 * n + 1] += ri * pr;
            }
        }
    }
    for (idx n = n0; n < n1; n++) {
        tacc[2 * n] += P[2 * n] + P[2 * n + 1];
        tacc[2 * n + 1] += Q[2 * n + 1] - Q[2 * n];
        if (a->gh0) {
            const REAL lr = a->lam[2 * n], li = a->lam[2 * n + 1];
            const REAL gr = g[2 * n], gi = g[2 * n + 1];
            a->gh0[2 * (b * N + n)] = lr * gr + li * gi;
            a->gh0[2 * (b * N + n) + 1] = lr * gi - li * gr;
        }
    }
}

#undef VEC
#undef HW
#undef VPU
#undef COMBINE
#undef LO16
#undef HI16
#undef LO8
#undef HI8
#undef LO4
#undef HI4
#undef LO2
#undef HI2
#undef OB
#undef JB
#undef BLOCKED
#undef NAME
#endif /* KERNEL_ARGS */

#undef CAT
#undef CAT_
