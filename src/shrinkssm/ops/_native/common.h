/* Definitions shared by the C sources of shrinkssm.ops._native_scan. */
#ifndef SHRINKSSM_NATIVE_COMMON_H
#define SHRINKSSM_NATIVE_COMMON_H

#include <Python.h>

typedef Py_ssize_t idx;

#define ALWAYS_INLINE __attribute__((always_inline))

#if !defined(__has_builtin)
#define __has_builtin(x) 0
#endif
#if !__has_builtin(__builtin_shufflevector)
#error "the native scan needs __builtin_shufflevector (GCC >= 12 or clang)"
#endif

/* Compile the functions between TARGET_BEGIN("isa,features") and TARGET_END for that target
 * (GCC and clang spell it differently). */
#define TARGET_STR(x) #x
#if defined(__clang__)
#define TARGET_BEGIN(t) _Pragma(TARGET_STR(clang attribute push(__attribute__((target(t))), apply_to = function)))
#define TARGET_END _Pragma("clang attribute pop")
#else
#define TARGET_BEGIN(t) _Pragma("GCC push_options") _Pragma(TARGET_STR(GCC target(t)))
#define TARGET_END _Pragma("GCC pop_options")
#endif

/* Instruction sets, best last. The baseline is SSE2 on x86-64 and NEON (Advanced SIMD, part of
 * every aarch64 CPU) on aarch64; the x86 variants exist only in x86 builds. */
#if defined(__x86_64__) || defined(__i386__)
#define HAVE_X86_VARIANTS 1
#define TARGET_AVX2 "avx2,fma"
#define TARGET_AVX512 "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"
#endif
enum { ISA_BASE, ISA_AVX2, ISA_AVX512, ISA_COUNT };

/* Subnormal numbers flushed to zero while a kernel runs, the caller's mode restored after.
 *
 * Adjoints and states that decay over long sequences reach the subnormal range (below 1.2e-38 in
 * float32), where x86 arithmetic takes a microcode assist of about a hundred cycles per
 * operation: in training this made the LRU backward five to ten times slower. Flushing them to
 * zero (x86: MXCSR FTZ and DAZ; aarch64: FPCR.FZ) changes results only below that magnitude. It
 * is set per thread around each kernel call, so nothing changes for the rest of the process. */
#if defined(__x86_64__) || (defined(__i386__) && defined(__SSE__))
#include <xmmintrin.h>
typedef unsigned int fp_mode_t;
static inline fp_mode_t fp_flush_subnormals(void)
{
    const unsigned int old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u); /* FTZ | DAZ */
    return old;
}
static inline void fp_restore(fp_mode_t mode) { _mm_setcsr(mode); }
#elif defined(__aarch64__)
#include <stdint.h>
typedef uint64_t fp_mode_t;
static inline fp_mode_t fp_flush_subnormals(void)
{
    uint64_t old;
    __asm__ volatile("mrs %0, fpcr" : "=r"(old));
    const uint64_t flushed = old | (UINT64_C(1) << 24); /* FZ */
    __asm__ volatile("msr fpcr, %0" : : "r"(flushed));
    return old;
}
static inline void fp_restore(fp_mode_t mode) { __asm__ volatile("msr fpcr, %0" : : "r"(mode)); }
#else
typedef int fp_mode_t;
static inline fp_mode_t fp_flush_subnormals(void) { return 0; }
static inline void fp_restore(fp_mode_t mode) { (void)mode; }
#endif

/* The instruction set in use (scan_module.c owns it; selective.c and ssd.c follow it). */
int shrinkssm_native_isa_index(void);

/* Work items spread over threads (selective.c): fn(args, item, ws) for every item in [0, n), each
 * on one thread with its own 64-byte aligned workspace of ws_bytes, subnormals flushed; threads
 * of the OpenMP pool when built with OpenMP, pthreads otherwise. Returns 0 if every item was
 * done (-1: no workspace could be allocated). */
typedef void (*shrinkssm_row_fn)(const void *args, idx item, void *ws);
int shrinkssm_run_rows(shrinkssm_row_fn fn, const void *args, idx n, size_t ws_bytes, int n_threads);

#endif
