/* Kernel bodies of the SSD scan (Mamba-2 heads: one scalar decay per head and step), instantiated
 * by ssd.c.
 *
 * Two parts, chosen by macros defined before each inclusion:
 *
 *   SSD_ARGS defined:  the argument struct and workspace sizes of one real type. Needs REAL and
 *                      SFX (f32, f64).
 *   otherwise:         the forward and backward of one work item (batch row b, group g) for one
 *                      real type and instruction set. Needs REAL, SFX, VW (lanes of one native
 *                      register), RS (suffix of the vector math of selective_kernels.h, e.g.
 *                      f32_avx2), KSFX (e.g. f32_avx2) and SSD_EXP (exp or expf). Compiled for its
 *                      target (ssd.c wraps it in TARGET_BEGIN / TARGET_END).
 *
 * The recurrence (see shrinkssm/ops/ssd_scan.py for the conventions), for head h of group g:
 *
 *   a[t]    = exp(dt[t, h] A[h])                                       one scalar per head and step
 *   S[t]    = a[t] S[t-1] + (dt[t, h] x[t, h, :]) B[t, g, :]^T         (P, N)
 *   y[t, h] = S[t] C[t, g, :]                                          (P,)
 *
 * Layout. Inputs and outputs are the contiguous tensors of the Python signature: x, y (nb, L, H, P),
 * dt (nb, L, H), A (H,), B, C (nb, L, G, N), S0 and the final state (nb, H, P, N). Inside, a head's
 * state is P rows of Np = N rounded up to 64 bytes (16 floats, 8 doubles, whatever the instruction
 * set), the padding zero: the rows of B and C of a chunk of T steps are copied into zero-padded
 * rows once for all heads of the group, so every inner loop runs over whole vectors, and the
 * padded states stay zero. The checkpoints (the state entering every chunk of T steps,
 * (nb, H, n_chunks, P, Np)) use that padded layout too; it does not depend on the instruction set.
 *
 * Work. One item is one batch row and one group, run chunk by chunk (forward from the first,
 * backward from the last), the group's heads one after the other within a chunk, each carrying
 * its own state (forward) or adjoint (backward) from chunk to chunk. The item writes only its own
 * slices of every output, B's and C's gradients included (the heads of a group are summed inside
 * the item, in head order), so results do not depend on how items are spread over threads. Cost
 * per step and head: P Np multiply-adds for the state and as many for the read-out (forward),
 * about three times that for the backward: it falls in proportion with N, which the chunked form,
 * whose within-chunk part does not depend on N, cannot do.
 */

#define SSD_CAT_(a, b) a##_##b
#define SSD_CAT(a, b) SSD_CAT_(a, b)

#ifdef SSD_ARGS
/* ============================================================================================ */
/* Part 0: arguments of one real type, shared by every instruction set                          */
/* ============================================================================================ */
#define AN(x) SSD_CAT(x, SFX)

typedef struct {
    idx nb, L, H, P, G, N, Np, T, n_chunks;
    const REAL *x, *dt, *A, *B, *C;  /* (nb, L, H, P), (nb, L, H), (H,), (nb, L, G, N) twice */
    const REAL *S0;                  /* (nb, H, P, N) initial state, or NULL (zeros) */
    REAL *y;                         /* (nb, L, H, P) */
    REAL *fin;                       /* (nb, H, P, N) final state */
    REAL *ck;                        /* (nb, H, n_chunks, P, Np) checkpoints, or NULL */
    /* backward */
    const REAL *gy;                  /* (nb, L, H, P) */
    const REAL *gfin;                /* (nb, H, P, N) gradient of the final state, or NULL */
    REAL *gx, *gdt, *gB, *gC;        /* shapes of x, dt, B, C */
    REAL *gA;                        /* (nb, H) per-row gradient of A, summed by the caller */
    REAL *gS0;                       /* (nb, H, P, N), or NULL when not wanted */
} AN(ssd_args);

/* Reals of workspace one thread needs (R = H / G heads per group, T steps per chunk):
 * forward the R states of the group and the chunk's rows of B and C; backward the R carried
 * adjoints, the T + 1 states of one head through a chunk, the chunk's decays, and the chunk's rows
 * of B, C and of their gradients. */
static inline idx AN(ssd_ws_fwd)(idx R, idx P, idx Np, idx T) { return R * P * Np + 2 * T * Np; }
static inline idx AN(ssd_ws_bwd)(idx R, idx P, idx Np, idx T)
{
    return R * P * Np + (T + 1) * P * Np + T + 4 * T * Np;
}

#undef AN

#else
/* ============================================================================================ */
/* Part 1: forward and backward of one work item (batch row, group)                             */
/* ============================================================================================ */
#define RN(x) SSD_CAT(x, RS)
#define KN(x) SSD_CAT(x, KSFX)
#define AN(x) SSD_CAT(x, SFX)
#define VEC RN(vec)
#define LD RN(ld)
#define ST RN(st)
#define SPLAT RN(splat)
/* the lanes a shuffle of ssd_hsum leaves as they are, so that it names all VW of them */
#if VW == 16
#define SSD_TAIL8 , 8, 9, 10, 11, 12, 13, 14, 15
#define SSD_TAIL4 , 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
#define SSD_TAIL2 , 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
#elif VW == 8
#define SSD_TAIL8
#define SSD_TAIL4 , 4, 5, 6, 7
#define SSD_TAIL2 , 2, 3, 4, 5, 6, 7
#elif VW == 4
#define SSD_TAIL4
#define SSD_TAIL2 , 2, 3
#else
#define SSD_TAIL2
#endif

/* A (P, N) state into the padded (P, Np) layout (src NULL: zeros). */
static inline ALWAYS_INLINE void KN(ssd_pad)(REAL *dst, const REAL *src, idx P, idx N, idx Np)
{
    for (idx p = 0; p < P; p++) {
        if (src) memcpy(dst + p * Np, src + p * N, (size_t)N * sizeof(REAL));
        else memset(dst + p * Np, 0, (size_t)N * sizeof(REAL));
        memset(dst + p * Np + N, 0, (size_t)(Np - N) * sizeof(REAL));
    }
}

static inline ALWAYS_INLINE void KN(ssd_unpad)(REAL *dst, const REAL *src, idx P, idx N, idx Np)
{
    for (idx p = 0; p < P; p++) memcpy(dst + p * N, src + p * Np, (size_t)N * sizeof(REAL));
}

/* The sum of a vector's lanes by a tree of shuffles, log2 VW adds in registers (the generic
 * hsum of selective_kernels.h goes through memory). */
static inline ALWAYS_INLINE REAL KN(ssd_hsum)(VEC v)
{
#if VW == 16
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
#endif
#if VW >= 8
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3 SSD_TAIL8);
#endif
#if VW >= 4
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1 SSD_TAIL4);
#endif
    v += __builtin_shufflevector(v, v, 1, 0 SSD_TAIL2);
    return v[0];
}

/* Rows of a head's state are handled SSD_PB at a time (the remainder one by one): the rows of a
 * block share the loads of B, C and of the gradient rows, and their independent chains overlap. */
#define SSD_PB 4

/* One step of one head's state from src to dst (P rows of Np): dst[p] = dec src[p] + (d x[p]) Bp. */
static inline ALWAYS_INLINE void KN(ssd_advance)(REAL *dst, const REAL *src, REAL dec, REAL d,
                                                 const REAL *xt, const REAL *Bp, idx P, idx Np)
{
    const VEC av = SPLAT(dec);
    for (idx p = 0; p < P; p++) {
        const VEC xv = SPLAT(d * xt[p]);
        const REAL *s = src + p * Np;
        REAL *o = dst + p * Np;
        for (idx j = 0; j < Np; j += VW) ST(o + j, av * LD(s + j) + xv * LD(Bp + j));
    }
}

/* The rows of B and C (nb, L, G, N) of steps t0 .. t0+n-1 for item (b, g), zero-padded to Np. */
static inline ALWAYS_INLINE void KN(ssd_rows_in)(REAL *dst, const REAL *src, const AN(ssd_args) *a, idx b,
                                                 idx g, idx t0, idx n)
{
    for (idx s = 0; s < n; s++) {
        memcpy(dst + s * a->Np, src + ((b * a->L + t0 + s) * a->G + g) * a->N, (size_t)a->N * sizeof(REAL));
        memset(dst + s * a->Np + a->N, 0, (size_t)(a->Np - a->N) * sizeof(REAL));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Forward of item (b, g)                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Rows 0 .. nr-1 of S (rows Np apart; nr a constant after inlining) through one step:
 * S[q] = dec S[q] + (d x[q]) Bp, y[q] = <S[q], Cp>. */
static inline ALWAYS_INLINE void KN(ssd_fwd_rows)(const int nr, REAL *S, idx Np, REAL dec, REAL d,
                                                  const REAL *xt, const REAL *Bp, const REAL *Cp, REAL *yt)
{
    VEC xv[SSD_PB], acc[SSD_PB];
    const VEC av = SPLAT(dec);
    for (int q = 0; q < nr; q++) {
        xv[q] = SPLAT(d * xt[q]);
        acc[q] = SPLAT(0);
    }
    for (idx j = 0; j < Np; j += VW) {
        const VEC bv = LD(Bp + j), cv = LD(Cp + j);
        for (int q = 0; q < nr; q++) {
            const VEC sv = av * LD(S + q * Np + j) + xv[q] * bv;
            ST(S + q * Np + j, sv);
            acc[q] += sv * cv;
        }
    }
    for (int q = 0; q < nr; q++) yt[q] = KN(ssd_hsum)(acc[q]);
}

/* The group's heads go through the sequence chunk by chunk (T steps), each head through the
 * whole chunk before the next, so that the chunk's rows of B and C are padded once for all of
 * them and stay in cache. */
static inline ALWAYS_INLINE void KN(ssd_fwd_item)(const AN(ssd_args) *a, idx item, REAL *ws)
{
    const idx b = item / a->G, g = item % a->G;
    const idx L = a->L, H = a->H, P = a->P, N = a->N, Np = a->Np, T = a->T;
    const idx R = H / a->G, PN = P * Np;
    REAL *Ss = ws, *Bc = Ss + R * PN, *Cc = Bc + T * Np;
    for (idx r = 0; r < R; r++)
        KN(ssd_pad)(Ss + r * PN, a->S0 ? a->S0 + (b * H + g * R + r) * P * N : NULL, P, N, Np);
    for (idx c = 0; c < a->n_chunks; c++) {
        const idx t0 = c * T, n = (t0 + T < L) ? T : L - t0;
        KN(ssd_rows_in)(Bc, a->B, a, b, g, t0, n);
        KN(ssd_rows_in)(Cc, a->C, a, b, g, t0, n);
        for (idx r = 0; r < R; r++) {
            const idx h = g * R + r;
            REAL *S = Ss + r * PN;
            const REAL Ah = a->A[h];
            if (a->ck) memcpy(a->ck + ((b * H + h) * a->n_chunks + c) * PN, S, (size_t)PN * sizeof(REAL));
            for (idx s = 0; s < n; s++) {
                const idx row = b * L + t0 + s;
                const REAL d = a->dt[row * H + h], dec = SSD_EXP(d * Ah);
                const REAL *xt = a->x + (row * H + h) * P, *Bp = Bc + s * Np, *Cp = Cc + s * Np;
                REAL *yt = a->y + (row * H + h) * P;
                idx p = 0;
                for (; p + SSD_PB <= P; p += SSD_PB) KN(ssd_fwd_rows)(SSD_PB, S + p * Np, Np, dec, d, xt + p, Bp, Cp, yt + p);
                for (; p < P; p++) KN(ssd_fwd_rows)(1, S + p * Np, Np, dec, d, xt + p, Bp, Cp, yt + p);
            }
        }
    }
    for (idx r = 0; r < R; r++) KN(ssd_unpad)(a->fin + (b * H + g * R + r) * P * N, Ss + r * PN, P, N, Np);
}

/* ------------------------------------------------------------------------------------------ */
/* Backward of item (b, g)                                                                     */
/*                                                                                            */
/*   G[t]    = a[t+1] G[t+1] + gy[t] C[t]^T         adjoint of S[t] (G[L-1] starts at gfin)    */
/*   dxd[t]  = G[t] B[t],   dB[t] += G[t]^T xd[t],   dC[t] += S[t]^T gy[t]                     */
/*   da[t]   = <G[t], S[t-1]>,  dlog a = da a:  ddt += dlog a A,  dA += dlog a dt              */
/*   xd = dt x:  dx = dxd dt,  ddt += <dxd, x>;   dS0 = a[0] G[0]                              */
/* ------------------------------------------------------------------------------------------ */

/* Rows 0 .. nr-1 (at offset o of the (P, Np) arrays, nr a constant after inlining) of one
 * backward step: G = Gc + gy C^T, dxd = G B (dx written to gxt), gBp += G^T xd, gCp += S^T gy,
 * *accda += lanes of <G, Sprev>, Gc = dec G. Returns <dxd, x> (the step's part of ddt). */
static inline ALWAYS_INLINE REAL KN(ssd_bwd_rows)(const int nr, idx o, idx Np, REAL *Gc, const REAL *Sprev,
                                                  const REAL *Snew, const REAL *Bp, const REAL *Cp, REAL *gBp,
                                                  REAL *gCp, const REAL *gyt, const REAL *xt, REAL *gxt, REAL d,
                                                  REAL dec, VEC *accda)
{
    VEC gyv[SSD_PB], xv[SSD_PB], accx[SSD_PB], ada[SSD_PB];
    const VEC av = SPLAT(dec);
    for (int q = 0; q < nr; q++) {
        gyv[q] = SPLAT(gyt[q]);
        xv[q] = SPLAT(d * xt[q]);
        accx[q] = ada[q] = SPLAT(0);
    }
    for (idx j = 0; j < Np; j += VW) {
        const VEC bv = LD(Bp + j), cv = LD(Cp + j);
        VEC gb = LD(gBp + j), gc = LD(gCp + j);
        for (int q = 0; q < nr; q++) {
            const idx k = o + q * Np + j;
            const VEC Gv = LD(Gc + k) + gyv[q] * cv;
            accx[q] += Gv * bv;
            ada[q] += Gv * LD(Sprev + k);
            gb += xv[q] * Gv;
            gc += gyv[q] * LD(Snew + k);
            ST(Gc + k, av * Gv);
        }
        ST(gBp + j, gb);
        ST(gCp + j, gc);
    }
    REAL gd = 0;
    for (int q = 0; q < nr; q++) {
        const REAL dxd = KN(ssd_hsum)(accx[q]);
        gxt[q] = dxd * d;
        gd += dxd * xt[q];
        *accda += ada[q];
    }
    return gd;
}

/* Chunk by chunk from the last, and within a chunk head by head (each with its own carried
 * adjoint): the chunk's rows of B and C are padded once, and the gradients of B and C of the
 * chunk's steps are summed over the heads in a small buffer and written once. */
static inline ALWAYS_INLINE void KN(ssd_bwd_item)(const AN(ssd_args) *a, idx item, REAL *ws)
{
    const idx b = item / a->G, g = item % a->G;
    const idx L = a->L, H = a->H, P = a->P, G = a->G, N = a->N, Np = a->Np, T = a->T;
    const idx R = H / G, PN = P * Np;
    REAL *Gs = ws;                  /* R carried adjoints a[t+1] G[t+1] */
    REAL *Hs = Gs + R * PN;         /* T + 1 states of one head: Hs[s] enters step t0 + s, Hs[s+1] leaves it */
    REAL *As = Hs + (T + 1) * PN;   /* that head's decays through the chunk */
    REAL *Bc = As + T, *Cc = Bc + T * Np, *gBc = Cc + T * Np, *gCc = gBc + T * Np;
    for (idx r = 0; r < R; r++) {
        const idx h = g * R + r;
        KN(ssd_pad)(Gs + r * PN, a->gfin ? a->gfin + (b * H + h) * P * N : NULL, P, N, Np);
        a->gA[b * H + h] = 0;
    }
    for (idx c = a->n_chunks - 1; c >= 0; c--) {
        const idx t0 = c * T, n = (t0 + T < L) ? T : L - t0;
        KN(ssd_rows_in)(Bc, a->B, a, b, g, t0, n);
        KN(ssd_rows_in)(Cc, a->C, a, b, g, t0, n);
        memset(gBc, 0, (size_t)(2 * T * Np) * sizeof(REAL));
        for (idx r = 0; r < R; r++) {
            const idx h = g * R + r;
            const REAL Ah = a->A[h];
            REAL *Gc = Gs + r * PN;
            REAL gA = 0;
            /* 1. the head's states through the chunk, recomputed from its checkpoint */
            memcpy(Hs, a->ck + ((b * H + h) * a->n_chunks + c) * PN, (size_t)PN * sizeof(REAL));
            for (idx s = 0; s < n; s++) {
                const idx row = b * L + t0 + s;
                const REAL d = a->dt[row * H + h];
                As[s] = SSD_EXP(d * Ah);
                KN(ssd_advance)(Hs + (s + 1) * PN, Hs + s * PN, As[s], d, a->x + (row * H + h) * P, Bc + s * Np, P, Np);
            }
            /* 2. its adjoint, backwards through the chunk */
            for (idx s = n - 1; s >= 0; s--) {
                const idx row = b * L + t0 + s;
                const REAL d = a->dt[row * H + h], dec = As[s];
                const REAL *xt = a->x + (row * H + h) * P, *gyt = a->gy + (row * H + h) * P;
                REAL *gxt = a->gx + (row * H + h) * P;
                const REAL *Sprev = Hs + s * PN, *Snew = Hs + (s + 1) * PN;
                const REAL *Bp = Bc + s * Np, *Cp = Cc + s * Np;
                REAL *gBp = gBc + s * Np, *gCp = gCc + s * Np;
                VEC accda = SPLAT(0);
                REAL gd = 0;
                idx p = 0;
                for (; p + SSD_PB <= P; p += SSD_PB)
                    gd += KN(ssd_bwd_rows)(SSD_PB, p * Np, Np, Gc, Sprev, Snew, Bp, Cp, gBp, gCp, gyt + p,
                                           xt + p, gxt + p, d, dec, &accda);
                for (; p < P; p++)
                    gd += KN(ssd_bwd_rows)(1, p * Np, Np, Gc, Sprev, Snew, Bp, Cp, gBp, gCp, gyt + p,
                                           xt + p, gxt + p, d, dec, &accda);
                const REAL dloga = KN(ssd_hsum)(accda) * dec;
                a->gdt[row * H + h] = gd + dloga * Ah;
                gA += dloga * d;
            }
            a->gA[b * H + h] += gA;
        }
        for (idx s = 0; s < n; s++) {
            const idx off = ((b * L + t0 + s) * G + g) * N;
            memcpy(a->gB + off, gBc + s * Np, (size_t)N * sizeof(REAL));
            memcpy(a->gC + off, gCc + s * Np, (size_t)N * sizeof(REAL));
        }
    }
    if (a->gS0)
        for (idx r = 0; r < R; r++) KN(ssd_unpad)(a->gS0 + (b * H + g * R + r) * P * N, Gs + r * PN, P, N, Np);
}

#undef SSD_TAIL8
#undef SSD_TAIL4
#undef SSD_TAIL2
#undef RN
#undef KN
#undef AN
#undef VEC
#undef LD
#undef ST
#undef SPLAT
#endif
