/* Kernel bodies of the selective scan, instantiated by selective.c.
 *
 * Three parts, chosen by macros defined before each inclusion:
 *
 *   SEL_ARGS defined:  the argument struct and workspace size of one real type and state kind.
 *                      Needs REAL, W (lanes of a bucket: 16 floats or 8 doubles, 64 bytes),
 *                      CPLX (0: real states, 1: complex states) and SFX (f32r, f32c, f64r, f64c).
 *   SEL_MATH defined:  vector types and vector math (exp, sin/cos) of one real type for one
 *                      instruction set. Needs REAL, ITYPE (int32_t or int64_t), SEL_FLT (1 for
 *                      float), VW (lanes of one native register: 16/8/4 floats on AVX-512/AVX2/
 *                      SSE2 and NEON, half as many doubles) and RS (suffix, e.g. f32_avx2).
 *   neither:           the forward and backward of one batch row for one real type, state kind
 *                      and instruction set. Needs all of the above and KSFX (e.g. f32r_avx2).
 * Each inclusion but SEL_ARGS must be compiled for its target (selective.c wraps it in
 * `#pragma GCC target`), so that vectors one register wide stay in registers.
 *
 * The recurrence (see shrinkssm.ops.selective_scan for the maths and the layout):
 *
 *   h[t, i] = exp(delta[t, c(i)] * alpha[i]) * h[t-1, i] + delta[t, c(i)] * u[t, c(i)] * B[t, i]
 *   y[t, c] = sum over the states i of channel c of Re(C[t, i] * h[t, i])
 *
 * States are stored in the *bucket layout*: channels are grouped in buckets of W lanes (one
 * 64-byte block), and bucket g holds S_g slots of W states, slot s of lane l being a state of
 * channel bchan[g, l] (-1 marks an empty lane). Every state of a bucket's slot therefore sits in
 * one 64-byte block (W / VW native vectors), and the inner loops run over whole vectors without
 * gathers. The layout does not depend on the instruction set. B and C are either *shared*
 * (slot s of every bucket reads the scalar column kidx[g, s] of a (K,) row, as in Mamba, where all
 * channels share B(x) and C(x)) or *per state* (a (R,) row in the bucket layout, after a
 * per-channel transform).
 *
 * Everything is `static inline` and always inlined into per-ISA worker functions (selective.c),
 * so the same source is compiled for AVX-512, AVX2+FMA and the baseline instruction set (SSE2 on
 * x86-64, NEON on aarch64).
 */

#define SEL_CAT_(a, b) a##_##b
#define SEL_CAT(a, b) SEL_CAT_(a, b)

#ifdef SEL_ARGS
/* ============================================================================================ */
/* Part 0: arguments of one real type and state kind, shared by every instruction set           */
/* ============================================================================================ */
#define AN(x) SEL_CAT(x, SFX)
/* Arguments shared by the forward and the backward (one struct per real type and state kind). */
typedef struct {
    idx nb, L, E, K, G, R, T, n_chunks;
    int shared;                /* 1: B, C are (nb, L, K) shared columns; 0: (nb, L, R) per state */
    const int64_t *bchan;      /* (G, W) channel of each lane, -1 for an empty lane */
    const int64_t *boff;       /* (G + 1,) first state of each bucket (multiples of W), boff[G] = R */
    const int64_t *kidx;       /* (R / W,) shared column read by each slot (shared mode) */
    const REAL *u, *dl;        /* (nb, L, E) input and step size */
    const REAL *alr, *ali;     /* (R,) alpha (ali: complex states only) */
    const REAL *Br, *Bi;       /* shared: (nb, L, K); per state: (nb, L, R). Bi, Ci: complex only */
    const REAL *Cr, *Ci;
    REAL *y;                   /* (nb, L, E) */
    REAL *ck;                  /* (nb, n_chunks, (1 + CPLX) R) state entering each chunk, or NULL */
    REAL *dsum;                /* (nb, (1 + CPLX) R) sum over time of exp(delta alpha), or NULL */
    /* backward */
    const REAL *gy;            /* (nb, L, E) */
    REAL *gu, *gdl;            /* (nb, L, E) */
    REAL *gBr, *gBi, *gCr, *gCi; /* like B and C */
    REAL *gal;                 /* (nb, (1 + CPLX) R) per-row gradient of alpha (re | im) */
} AN(sel_args);

/* Reals of workspace one thread needs. */
static inline idx AN(sel_ws)(idx R, idx T, idx K)
{
    const idx S = (1 + CPLX) * R;
    return 3 * S + 2 * T * S + 2 * K * W + 8 * W;
}

#undef AN

#elif defined(SEL_MATH)
/* ============================================================================================ */
/* Part 1: vector math for one real type                                                        */
/* ============================================================================================ */
#define RN(x) SEL_CAT(x, RS)

typedef REAL RN(vec) __attribute__((vector_size(VW * sizeof(REAL))));
typedef ITYPE RN(ivec) __attribute__((vector_size(VW * sizeof(REAL))));

static inline ALWAYS_INLINE RN(vec) RN(ld)(const REAL *p)
{
    RN(vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline ALWAYS_INLINE void RN(st)(REAL *p, RN(vec) v) { memcpy(p, &v, sizeof v); }

static inline ALWAYS_INLINE RN(vec) RN(splat)(REAL s)
{
    /* s - 0 is s for every s (-0 included), so the compiler emits a bare broadcast; s + 0 would
     * turn -0 into +0 and costs an add in every inner loop that splats */
    RN(vec) v = {0};
    return s - v;
}

/* m ? a : b, lane by lane (m all-ones or all-zeros per lane). */
static inline ALWAYS_INLINE RN(vec) RN(sel)(RN(ivec) m, RN(vec) a, RN(vec) b)
{
    return (RN(vec))(((RN(ivec))a & m) | ((RN(ivec))b & ~m));
}

static inline ALWAYS_INLINE REAL RN(hsum)(RN(vec) v)
{
    REAL buf[VW];
    memcpy(buf, &v, sizeof buf);
    for (int w = VW / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) buf[i] += buf[i + w];
    return buf[0];
}

#if SEL_FLT /* float */
#define SEL_EXP_LO (-87.0f)     /* below: 0 (exp(-87) = 1.6e-38, the smallest normal is 1.2e-38) */
#define SEL_EXP_HI (88.0f)      /* above: clamped (2^127 is the largest power of 2) */
#define SEL_SHIFT (12582912.0f) /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
#define SEL_MANT 23
#define SEL_BIAS 127
#else /* double */
#define SEL_EXP_LO (-708.0)
#define SEL_EXP_HI (709.0)
#define SEL_SHIFT (6755399441055744.0) /* 1.5 * 2^52 */
#define SEL_MANT 52
#define SEL_BIAS 1023
#endif

/* exp(x): x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite, two-part ln2), Taylor polynomial of r
 * (degree 7 in float, 13 in double: truncation error below 1e-8 / 1e-17 relative), times 2^k
 * built in the exponent bits. Results below the smallest normal number are returned as 0; NaN
 * stays NaN. */
static inline ALWAYS_INLINE RN(vec) RN(vexp)(RN(vec) x)
{
    const RN(vec) lo = RN(splat)(SEL_EXP_LO), hi = RN(splat)(SEL_EXP_HI);
    const RN(ivec) under = x < lo;
    x = RN(sel)(under, lo, x);
    x = RN(sel)(x > hi, hi, x);
    const RN(vec) kf = (x * (REAL)1.44269504088896340736 + SEL_SHIFT) - SEL_SHIFT;
    RN(vec) r = x - kf * (REAL)6.93145751953125e-1;  /* ln2 high part (exact product) */
    r = r - kf * (REAL)1.42860682030941723212e-6;    /* ln2 low part */
#if SEL_FLT
    RN(vec) p = RN(splat)((REAL)(1.0 / 5040));
    p = p * r + (REAL)(1.0 / 720);
    p = p * r + (REAL)(1.0 / 120);
    p = p * r + (REAL)(1.0 / 24);
    p = p * r + (REAL)(1.0 / 6);
    p = p * r + (REAL)0.5;
#else
    RN(vec) p = RN(splat)(1.0 / 6227020800.0);
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
#endif
    p = p * r + (REAL)1;
    p = p * r + (REAL)1;
    const RN(ivec) k = __builtin_convertvector(kf, RN(ivec));
    const RN(ivec) bits = (k + SEL_BIAS) << SEL_MANT;
    RN(vec) scale;
    memcpy(&scale, &bits, sizeof scale);
    return RN(sel)(under, RN(splat)(0), p * scale);
}

/* sin(x), cos(x): x = q pi/2 + r with |r| <= pi/4 (Cody-Waite, three-part pi/2), Taylor
 * polynomials of r (to r^9 / r^10 in float, r^17 / r^18 in double), then the quadrant q mod 4
 * swaps and negates. Accurate to a few ulp for |x| < 1e5. */
static inline ALWAYS_INLINE void RN(vsincos)(RN(vec) x, RN(vec) *s_out, RN(vec) *c_out)
{
    const RN(vec) q = (x * (REAL)0.636619772367581343076 + SEL_SHIFT) - SEL_SHIFT;
#if SEL_FLT
    RN(vec) r = x - q * 1.5703125f;
    r = r - q * 4.837512969970703125e-4f;
    r = r - q * 7.54978995489188216e-8f;
    const RN(vec) r2 = r * r;
    RN(vec) sp = RN(splat)(1.0f / 362880);
    sp = sp * r2 - 1.0f / 5040;
    sp = sp * r2 + 1.0f / 120;
    sp = sp * r2 - 1.0f / 6;
    RN(vec) cp = RN(splat)(-1.0f / 3628800);
    cp = cp * r2 + 1.0f / 40320;
    cp = cp * r2 - 1.0f / 720;
    cp = cp * r2 + 1.0f / 24;
    cp = cp * r2 - 0.5f;
#else
    RN(vec) r = x - q * 1.57079632673412561417e+00;
    r = r - q * 6.07710050630396597660e-11;
    r = r - q * 2.02226624879595063154e-21;
    const RN(vec) r2 = r * r;
    RN(vec) sp = RN(splat)(1.0 / 355687428096000.0);
    sp = sp * r2 - 1.0 / 1307674368000.0;
    sp = sp * r2 + 1.0 / 6227020800.0;
    sp = sp * r2 - 1.0 / 39916800.0;
    sp = sp * r2 + 1.0 / 362880.0;
    sp = sp * r2 - 1.0 / 5040.0;
    sp = sp * r2 + 1.0 / 120.0;
    sp = sp * r2 - 1.0 / 6.0;
    RN(vec) cp = RN(splat)(-1.0 / 6402373705728000.0);
    cp = cp * r2 + 1.0 / 20922789888000.0;
    cp = cp * r2 - 1.0 / 87178291200.0;
    cp = cp * r2 + 1.0 / 479001600.0;
    cp = cp * r2 - 1.0 / 3628800.0;
    cp = cp * r2 + 1.0 / 40320.0;
    cp = cp * r2 - 1.0 / 720.0;
    cp = cp * r2 + 1.0 / 24.0;
    cp = cp * r2 - 0.5;
#endif
    sp = r + r * r2 * sp;
    cp = cp * r2 + (REAL)1;
    const RN(ivec) qi = __builtin_convertvector(q, RN(ivec));
    const RN(ivec) odd = -(qi & 1);                       /* swap sin and cos */
    const RN(ivec) zero = {0};
    const RN(ivec) sign = zero + (ITYPE)((uint64_t)1 << (8 * sizeof(REAL) - 1)); /* sign bit */
    const RN(ivec) sneg = -((qi >> 1) & 1) & sign;        /* q mod 4 in {2, 3} */
    const RN(ivec) cneg = -(((qi + 1) >> 1) & 1) & sign;  /* q mod 4 in {1, 2} */
    const RN(vec) sv = RN(sel)(odd, cp, sp), cv = RN(sel)(odd, sp, cp);
    *s_out = (RN(vec))((RN(ivec))sv ^ sneg);
    *c_out = (RN(vec))((RN(ivec))cv ^ cneg);
}

#undef SEL_EXP_LO
#undef SEL_EXP_HI
#undef SEL_SHIFT
#undef SEL_MANT
#undef SEL_BIAS
#undef RN

#else
/* ============================================================================================ */
/* Part 2: forward and backward of one batch row                                                */
/* ============================================================================================ */
#define RN(x) SEL_CAT(x, RS)
#define KN(x) SEL_CAT(x, KSFX)
#define AN(x) SEL_CAT(x, SFX)
#define VEC RN(vec)
#define NSUB (W / VW) /* native vectors per bucket */
#define LD RN(ld)
#define ST RN(st)
#define SPLAT RN(splat)

/* The lanes of bucket g at one time step: e = delta, w = delta * u (0 on empty lanes). */
static inline ALWAYS_INLINE void KN(lanes)(const AN(sel_args) *a, idx g, const REAL *dt, const REAL *ut,
                                           VEC e[NSUB], VEC w[NSUB], VEC uu[NSUB])
{
    REAL eb[W], wb[W], ub[W];
    const int64_t *ch = a->bchan + g * W;
    for (int l = 0; l < W; l++) {
        const int64_t c = ch[l];
        const REAL ev = c >= 0 ? dt[c] : 0, uv = c >= 0 ? ut[c] : 0;
        eb[l] = ev;
        ub[l] = uv;
        wb[l] = ev * uv;
    }
    for (int q = 0; q < NSUB; q++) {
        e[q] = LD(eb + q * VW);
        w[q] = LD(wb + q * VW);
        uu[q] = LD(ub + q * VW);
    }
}

static inline ALWAYS_INLINE void KN(scatter_add)(const AN(sel_args) *a, idx g, REAL *row, const VEC v[NSUB])
{
    REAL vb[W];
    for (int q = 0; q < NSUB; q++) ST(vb + q * VW, v[q]);
    const int64_t *ch = a->bchan + g * W;
    for (int l = 0; l < W; l++)
        if (ch[l] >= 0) row[ch[l]] += vb[l];
}

/* Transition factor a = exp(e * alpha) of the states at i (complex: ar + i ai). */
static inline ALWAYS_INLINE void KN(decay)(const AN(sel_args) *a, idx i, VEC e, VEC *ar, VEC *ai)
{
#if CPLX
    VEC s, c;
    const VEC mag = RN(vexp)(e * LD(a->alr + i));
    RN(vsincos)(e * LD(a->ali + i), &s, &c);
    *ar = mag * c;
    *ai = mag * s;
#else
    *ar = RN(vexp)(e * LD(a->alr + i));
    (void)ai;
#endif
}

/* B or C of slot (bucket row base i) at time row t: a splat of the shared column, or a vector. */
static inline ALWAYS_INLINE VEC KN(coef)(const AN(sel_args) *a, const REAL *row, idx i)
{
    return a->shared ? SPLAT(row[a->kidx[i / W]]) : LD(row + i);
}

/* ------------------------------------------------------------------------------------------ */
/* Forward of batch row b                                                                      */
/* ------------------------------------------------------------------------------------------ */
static inline ALWAYS_INLINE void KN(sel_fwd_row)(const AN(sel_args) *a, idx b, REAL *ws)
{
    const idx L = a->L, E = a->E, R = a->R, T = a->T;
    const idx KB = a->shared ? a->K : R; /* width of a B / C row */
    const idx S = (1 + CPLX) * R;
    REAL *hr = ws, *hi = ws + R;      /* state (hi: complex only) */
    REAL *dsr = ws + S, *dsi = dsr + R;
    (void)hi, (void)dsi;
    for (idx i = 0; i < 2 * S; i++) ws[i] = 0;
    for (idx t = 0; t < L; t++) {
        if (a->ck && t % T == 0)
            memcpy(a->ck + (b * a->n_chunks + t / T) * S, hr, (size_t)S * sizeof(REAL));
        const idx row = b * L + t;
        const REAL *dt = a->dl + row * E, *ut = a->u + row * E;
        const REAL *Brow = a->Br + row * KB, *Crow = a->Cr + row * KB;
#if CPLX
        const REAL *Birow = a->Bi + row * KB, *Cirow = a->Ci + row * KB;
#endif
        REAL *yt = a->y + row * E;
        memset(yt, 0, (size_t)E * sizeof(REAL));
        for (idx g = 0; g < a->G; g++) {
            VEC e[NSUB], w[NSUB], uu[NSUB], acc[NSUB];
            KN(lanes)(a, g, dt, ut, e, w, uu);
            for (int q = 0; q < NSUB; q++) acc[q] = SPLAT(0);
            for (idx i0 = a->boff[g]; i0 < a->boff[g + 1]; i0 += W)
            for (int q = 0; q < NSUB; q++) {
                const idx i = i0 + q * VW;
                VEC ar, ai = SPLAT(0);
                KN(decay)(a, i, e[q], &ar, &ai);
                const VEC br = KN(coef)(a, Brow, i), cr = KN(coef)(a, Crow, i);
#if CPLX
                const VEC bi = KN(coef)(a, Birow, i), ci = KN(coef)(a, Cirow, i);
                const VEC pr = LD(hr + i), pi = LD(hi + i);
                const VEC nr = ar * pr - ai * pi + w[q] * br;
                const VEC ni = ar * pi + ai * pr + w[q] * bi;
                ST(hr + i, nr);
                ST(hi + i, ni);
                acc[q] += cr * nr - ci * ni;
                ST(dsr + i, LD(dsr + i) + ar);
                ST(dsi + i, LD(dsi + i) + ai);
#else
                const VEC n = ar * LD(hr + i) + w[q] * br;
                ST(hr + i, n);
                acc[q] += cr * n;
                ST(dsr + i, LD(dsr + i) + ar);
#endif
            }
            KN(scatter_add)(a, g, yt, acc);
        }
    }
    if (a->dsum) memcpy(a->dsum + b * S, dsr, (size_t)S * sizeof(REAL));
}

/* ------------------------------------------------------------------------------------------ */
/* Backward of batch row b (torch's complex convention: gradients are dL/dRe + i dL/dIm)       */
/*                                                                                            */
/*   g[t]   = conj(a[t+1]) g[t+1] + gy[t, c] conj(C[t])          adjoint of h[t]               */
/*   dC[t]  = gy[t, c] conj(h[t]),   dB[t] = w[t] g[t],   dw[t] = Re(g[t] conj(B[t]))          */
/*   da[t]  = g[t] conj(h[t-1]),     dalpha += e conj(a) da,   de += Re(da conj(alpha a))      */
/*   w = e u:  du += dw e,  de += dw u                                                         */
/* ------------------------------------------------------------------------------------------ */
static inline ALWAYS_INLINE void KN(sel_bwd_row)(const AN(sel_args) *a, idx b, REAL *ws)
{
    const idx L = a->L, E = a->E, R = a->R, T = a->T, K = a->K;
    const idx KB = a->shared ? K : R;
    const idx S = (1 + CPLX) * R;
    REAL *gr = ws, *gi = ws + R;          /* carried adjoint conj(a[t+1]) g[t+1] */
    REAL *alr_acc = ws + S, *ali_acc = alr_acc + R;
    REAL *hcur = ws + 2 * S;              /* scratch state while recomputing a chunk */
    REAL *As = ws + 3 * S;                /* T x S: decay factors of the chunk */
    REAL *Hs = As + T * S;                /* T x S: states entering each step of the chunk */
    REAL *kacc = Hs + T * S;              /* shared mode: K x {B, C} x W lane sums */
    (void)gi, (void)ali_acc;
    for (idx i = 0; i < 2 * S; i++) ws[i] = 0;
    const idx rows0 = b * L;
    memset(a->gu + rows0 * E, 0, (size_t)(L * E) * sizeof(REAL));
    memset(a->gdl + rows0 * E, 0, (size_t)(L * E) * sizeof(REAL));
    memset(a->gBr + rows0 * KB, 0, (size_t)(L * KB) * sizeof(REAL));
    memset(a->gCr + rows0 * KB, 0, (size_t)(L * KB) * sizeof(REAL));
#if CPLX
    memset(a->gBi + rows0 * KB, 0, (size_t)(L * KB) * sizeof(REAL));
    memset(a->gCi + rows0 * KB, 0, (size_t)(L * KB) * sizeof(REAL));
#endif
    for (idx c = a->n_chunks - 1; c >= 0; c--) {
        const idx t0 = c * T, n = (t0 + T < L) ? T : L - t0;
        /* 1. recompute the chunk: decay factors and the states entering each step */
        memcpy(hcur, a->ck + (b * a->n_chunks + c) * S, (size_t)S * sizeof(REAL));
        for (idx s = 0; s < n; s++) {
            const idx row = rows0 + t0 + s;
            const REAL *dt = a->dl + row * E, *ut = a->u + row * E;
            const REAL *Brow = a->Br + row * KB;
#if CPLX
            const REAL *Birow = a->Bi + row * KB;
#endif
            REAL *Ar = As + s * S, *Hr = Hs + s * S;
            memcpy(Hr, hcur, (size_t)S * sizeof(REAL));
            for (idx g = 0; g < a->G; g++) {
                VEC e[NSUB], w[NSUB], uu[NSUB];
                KN(lanes)(a, g, dt, ut, e, w, uu);
                for (idx i0 = a->boff[g]; i0 < a->boff[g + 1]; i0 += W)
                for (int q = 0; q < NSUB; q++) {
                    const idx i = i0 + q * VW;
                    VEC ar, ai = SPLAT(0);
                    KN(decay)(a, i, e[q], &ar, &ai);
                    const VEC br = KN(coef)(a, Brow, i);
                    ST(Ar + i, ar);
#if CPLX
                    const VEC bi = KN(coef)(a, Birow, i);
                    ST(Ar + R + i, ai);
                    const VEC pr = LD(hcur + i), pi = LD(hcur + R + i);
                    ST(hcur + i, ar * pr - ai * pi + w[q] * br);
                    ST(hcur + R + i, ar * pi + ai * pr + w[q] * bi);
#else
                    ST(hcur + i, ar * LD(hcur + i) + w[q] * br);
#endif
                }
            }
        }
        /* 2. the adjoint recurrence, backwards through the chunk */
        for (idx s = n - 1; s >= 0; s--) {
            const idx row = rows0 + t0 + s;
            const REAL *dt = a->dl + row * E, *ut = a->u + row * E, *gyt = a->gy + row * E;
            const REAL *Brow = a->Br + row * KB, *Crow = a->Cr + row * KB;
            REAL *gBrow = a->gBr + row * KB, *gCrow = a->gCr + row * KB;
#if CPLX
            const REAL *Birow = a->Bi + row * KB, *Cirow = a->Ci + row * KB;
            REAL *gBirow = a->gBi + row * KB, *gCirow = a->gCi + row * KB;
#endif
            REAL *gdt = a->gdl + row * E, *gut = a->gu + row * E;
            const REAL *Ar = As + s * S, *Hr = Hs + s * S;
            if (a->shared) memset(kacc, 0, (size_t)(2 * K * W) * sizeof(REAL));
            for (idx g = 0; g < a->G; g++) {
                VEC e[NSUB], w[NSUB], uu[NSUB], gyl[NSUB], ge[NSUB], gw[NSUB];
                KN(lanes)(a, g, dt, ut, e, w, uu);
                {
                    REAL gb_[W];
                    const int64_t *ch = a->bchan + g * W;
                    for (int l = 0; l < W; l++) gb_[l] = ch[l] >= 0 ? gyt[ch[l]] : 0;
                    for (int q = 0; q < NSUB; q++) {
                        gyl[q] = LD(gb_ + q * VW);
                        ge[q] = gw[q] = SPLAT(0);
                    }
                }
                for (idx i0 = a->boff[g]; i0 < a->boff[g + 1]; i0 += W)
                for (int q = 0; q < NSUB; q++) {
                    const idx i = i0 + q * VW;
                    const VEC ar = LD(Ar + i), br = KN(coef)(a, Brow, i), cr = KN(coef)(a, Crow, i);
                    const VEC alr = LD(a->alr + i);
#if CPLX
                    const VEC ai = LD(Ar + R + i), bi = KN(coef)(a, Birow, i), ci = KN(coef)(a, Cirow, i);
                    const VEC ali = LD(a->ali + i);
                    const VEC pr = LD(Hr + i), pi = LD(Hr + R + i);
                    const VEC htr = ar * pr - ai * pi + w[q] * br, hti = ar * pi + ai * pr + w[q] * bi;
                    const VEC g_r = LD(gr + i) + gyl[q] * cr, g_i = LD(gi + i) - gyl[q] * ci;
                    const VEC gcr = gyl[q] * htr, gci = -(gyl[q] * hti);
                    const VEC gbr = w[q] * g_r, gbi = w[q] * g_i;
                    gw[q] += g_r * br + g_i * bi;
                    const VEC gar = g_r * pr + g_i * pi, gai = g_i * pr - g_r * pi; /* g conj(hp) */
                    /* dalpha += e conj(a) da */
                    ST(alr_acc + i, LD(alr_acc + i) + e[q] * (ar * gar + ai * gai));
                    ST(ali_acc + i, LD(ali_acc + i) + e[q] * (ar * gai - ai * gar));
                    /* de += Re(da conj(alpha a)) */
                    const VEC xr = alr * ar - ali * ai, xi = alr * ai + ali * ar;
                    ge[q] += gar * xr + gai * xi;
                    /* carry conj(a) g */
                    ST(gr + i, ar * g_r + ai * g_i);
                    ST(gi + i, ar * g_i - ai * g_r);
                    /* complex states always have per-state B and C (selective.c refuses shared) */
                    ST(gBrow + i, gbr);
                    ST(gBirow + i, gbi);
                    ST(gCrow + i, gcr);
                    ST(gCirow + i, gci);
#else
                    const VEC hp = LD(Hr + i);
                    const VEC ht = ar * hp + w[q] * br;
                    const VEC g_ = LD(gr + i) + gyl[q] * cr;
                    const VEC gc = gyl[q] * ht, gb = w[q] * g_;
                    gw[q] += g_ * br;
                    const VEC ga = g_ * hp;
                    ST(alr_acc + i, LD(alr_acc + i) + e[q] * ar * ga);
                    ge[q] += ga * ar * alr;
                    ST(gr + i, ar * g_);
                    if (a->shared) {
                        const idx k = a->kidx[i / W];
                        REAL *kb = kacc + 2 * k * W + q * VW;
                        ST(kb, LD(kb) + gb);
                        ST(kb + W, LD(kb + W) + gc);
                    } else {
                        ST(gBrow + i, gb);
                        ST(gCrow + i, gc);
                    }
#endif
                }
                VEC gde[NSUB], gdu[NSUB];
                for (int q = 0; q < NSUB; q++) {
                    gde[q] = ge[q] + gw[q] * uu[q];
                    gdu[q] = gw[q] * e[q];
                }
                KN(scatter_add)(a, g, gdt, gde);
                KN(scatter_add)(a, g, gut, gdu);
            }
            if (a->shared)
                for (idx k = 0; k < K; k++) {
                    VEC sb = LD(kacc + 2 * k * W), sc = LD(kacc + 2 * k * W + W);
                    for (int q = 1; q < NSUB; q++) {
                        sb += LD(kacc + 2 * k * W + q * VW);
                        sc += LD(kacc + 2 * k * W + W + q * VW);
                    }
                    gBrow[k] += RN(hsum)(sb);
                    gCrow[k] += RN(hsum)(sc);
                }
        }
    }
    memcpy(a->gal + b * S, alr_acc, (size_t)S * sizeof(REAL));
}

#undef RN
#undef KN
#undef AN
#undef NSUB
#undef VEC
#undef LD
#undef ST
#undef SPLAT
#endif
