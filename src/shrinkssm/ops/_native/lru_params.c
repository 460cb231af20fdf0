/* shrinkssm.ops._native_scan, LRU part: the layer's parameter map onto the fused kernel's arrays.
 *
 * For N complex states padded to Np (a multiple of the kernel's lanes; padding written as 0),
 * H_in inputs and H_out outputs, from the raw parameters of shrinkssm.nn.LRU:
 *
 *   r = exp(-exp(nu_log)),  phi = exp(theta_log),  g = exp(gamma_log)            (N,)
 *   lr, li = r cos(phi), r sin(phi)                                               (Np,)
 *   Br[h, n], Bi[h, n] = g[n] B_re[n, h], g[n] B_im[n, h]                         (H_in, Np)
 *   Cr[h, n], Ci[h, n] = C_re[h, n], C_im[h, n]                                   (H_out, Np)
 *
 * and its gradient (real chain rule; a NULL output gradient counts as zeros):
 *
 *   d nu_log    = -exp(nu_log) (glr lr + gli li),   d theta_log = phi (gli lr - glr li)
 *   d B_re[n,h] = g[n] gBr[h,n],  d gamma_log[n] = g[n] sum_h (gBr[h,n] B_re[n,h] + gBi[h,n] B_im[n,h])
 *   d C_re[h,n] = gCr[h,n]
 *
 * One call instead of about twenty small torch operations forward and as many backward, whose
 * fixed cost per training step does not shrink with the state. The arithmetic is done in double
 * and rounded once; it is scalar code (N and H are small), the same on every instruction set.
 * Entry points (registered in scan_module.c): lru_params_forward, lru_params_backward; they take
 * the data pointers of contiguous tensors as integers, shrinkssm/ops/_native_backend.py checks
 * shapes and dtypes before calling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>

#include "common.h"

#define LP_PTR(x) ((void *)(uintptr_t)(x))

#define LRU_PARAMS(TY, SUF)                                                                          \
static void lru_params_fwd_##SUF(idx N, idx Np, idx Hi, idx Ho, const TY *nu, const TY *theta,     \
                                  const TY *gam, const TY *Bre, const TY *Bim, const TY *Cre,      \
                                  const TY *Cim, TY *lr, TY *li, TY *Br, TY *Bi, TY *Cr, TY *Ci)    \
{                                                                                                   \
    for (idx n = 0; n < Np; n++) {                                                                  \
        double r = 0.0, phi = 0.0;                                                                  \
        if (n < N) { r = exp(-exp((double)nu[n])); phi = exp((double)theta[n]); }                  \
        lr[n] = (TY)(n < N ? r * cos(phi) : 0.0);                                                   \
        li[n] = (TY)(n < N ? r * sin(phi) : 0.0);                                                   \
    }                                                                                               \
    for (idx h = 0; h < Hi; h++)                                                                    \
        for (idx n = 0; n < Np; n++) {                                                              \
            double g = n < N ? exp((double)gam[n]) : 0.0;                                           \
            Br[h * Np + n] = (TY)(n < N ? g * (double)Bre[n * Hi + h] : 0.0);                       \
            Bi[h * Np + n] = (TY)(n < N ? g * (double)Bim[n * Hi + h] : 0.0);                       \
        }                                                                                           \
    for (idx h = 0; h < Ho; h++)                                                                    \
        for (idx n = 0; n < Np; n++) {                                                              \
            Cr[h * Np + n] = n < N ? Cre[h * N + n] : (TY)0;                                        \
            Ci[h * Np + n] = n < N ? Cim[h * N + n] : (TY)0;                                        \
        }                                                                                           \
}                                                                                                   \
                                                                                                    \
static void lru_params_bwd_##SUF(idx N, idx Np, idx Hi, idx Ho, const TY *nu, const TY *theta,     \
                                  const TY *gam, const TY *Bre, const TY *Bim, const TY *glr,      \
                                  const TY *gli, const TY *gBr, const TY *gBi, const TY *gCr,      \
                                  const TY *gCi, TY *dnu, TY *dtheta, TY *dgam, TY *dBre,          \
                                  TY *dBim, TY *dCre, TY *dCim)                                     \
{                                                                                                   \
    for (idx n = 0; n < N; n++) {                                                                   \
        double e = exp((double)nu[n]), r = exp(-e), phi = exp((double)theta[n]);                    \
        double lr = r * cos(phi), li = r * sin(phi);                                                \
        double a = glr ? (double)glr[n] : 0.0, b = gli ? (double)gli[n] : 0.0;                      \
        dnu[n] = (TY)(-e * (a * lr + b * li));                                                      \
        dtheta[n] = (TY)(phi * (b * lr - a * li));                                                  \
        double g = exp((double)gam[n]), s = 0.0;                                                    \
        for (idx h = 0; h < Hi; h++) {                                                              \
            double gr = gBr ? (double)gBr[h * Np + n] : 0.0, gi = gBi ? (double)gBi[h * Np + n] : 0.0; \
            dBre[n * Hi + h] = (TY)(g * gr);                                                        \
            dBim[n * Hi + h] = (TY)(g * gi);                                                        \
            s += gr * (double)Bre[n * Hi + h] + gi * (double)Bim[n * Hi + h];                       \
        }                                                                                           \
        dgam[n] = (TY)(g * s);                                                                      \
    }                                                                                               \
    for (idx h = 0; h < Ho; h++)                                                                    \
        for (idx n = 0; n < N; n++) {                                                               \
            dCre[h * N + n] = gCr ? gCr[h * Np + n] : (TY)0;                                        \
            dCim[h * N + n] = gCi ? gCi[h * Np + n] : (TY)0;                                        \
        }                                                                                           \
}

LRU_PARAMS(float, f32)
LRU_PARAMS(double, f64)

static int lp_sizes_ok(const char *name, idx N, idx Np, idx Hi, idx Ho)
{
    if (N < 1 || Np < N || Hi < 1 || Ho < 1) {
        PyErr_Format(PyExc_ValueError, "%s: invalid sizes (N=%zd, Np=%zd, H_in=%zd, H_out=%zd)",
                     name, N, Np, Hi, Ho);
        return 0;
    }
    return 1;
}

/* lru_params_forward(dbl, N, Np, H_in, H_out, nu, theta, gamma, B_re, B_im, C_re, C_im,
 *                    lr, li, Br, Bi, Cr, Ci): the outputs are overwritten, padding included. */
PyObject *shrinkssm_lru_params_forward(PyObject *self, PyObject *args)
{
    int dbl;
    idx N, Np, Hi, Ho;
    unsigned long long p[13];
    if (!PyArg_ParseTuple(args, "innnnKKKKKKKKKKKKK", &dbl, &N, &Np, &Hi, &Ho, &p[0], &p[1], &p[2],
                          &p[3], &p[4], &p[5], &p[6], &p[7], &p[8], &p[9], &p[10], &p[11], &p[12]))
        return NULL;
    if (!lp_sizes_ok("lru_params_forward", N, Np, Hi, Ho)) return NULL;
#define LP_FWD(TY, SUF) lru_params_fwd_##SUF(N, Np, Hi, Ho, LP_PTR(p[0]), LP_PTR(p[1]), LP_PTR(p[2]),  \
        LP_PTR(p[3]), LP_PTR(p[4]), LP_PTR(p[5]), LP_PTR(p[6]), LP_PTR(p[7]), LP_PTR(p[8]),            \
        LP_PTR(p[9]), LP_PTR(p[10]), LP_PTR(p[11]), LP_PTR(p[12]))
    if (dbl) LP_FWD(double, f64);
    else LP_FWD(float, f32);
#undef LP_FWD
    Py_RETURN_NONE;
}

/* lru_params_backward(dbl, N, Np, H_in, H_out, nu, theta, gamma, B_re, B_im,
 *                     glr, gli, gBr, gBi, gCr, gCi, d_nu, d_theta, d_gamma, d_B_re, d_B_im,
 *                     d_C_re, d_C_im): an output gradient given as 0 counts as zeros; the
 * parameter gradients are overwritten. */
PyObject *shrinkssm_lru_params_backward(PyObject *self, PyObject *args)
{
    int dbl;
    idx N, Np, Hi, Ho;
    unsigned long long p[18];
    if (!PyArg_ParseTuple(args, "innnnKKKKKKKKKKKKKKKKKK", &dbl, &N, &Np, &Hi, &Ho, &p[0], &p[1],
                          &p[2], &p[3], &p[4], &p[5], &p[6], &p[7], &p[8], &p[9], &p[10], &p[11],
                          &p[12], &p[13], &p[14], &p[15], &p[16], &p[17]))
        return NULL;
    if (!lp_sizes_ok("lru_params_backward", N, Np, Hi, Ho)) return NULL;
#define LP_BWD(TY, SUF) lru_params_bwd_##SUF(N, Np, Hi, Ho, LP_PTR(p[0]), LP_PTR(p[1]), LP_PTR(p[2]),  \
        LP_PTR(p[3]), LP_PTR(p[4]), LP_PTR(p[5]), LP_PTR(p[6]), LP_PTR(p[7]), LP_PTR(p[8]),            \
        LP_PTR(p[9]), LP_PTR(p[10]), LP_PTR(p[11]), LP_PTR(p[12]), LP_PTR(p[13]), LP_PTR(p[14]),       \
        LP_PTR(p[15]), LP_PTR(p[16]), LP_PTR(p[17]))
    if (dbl) LP_BWD(double, f64);
    else LP_BWD(float, f32);
#undef LP_BWD
    Py_RETURN_NONE;
}
