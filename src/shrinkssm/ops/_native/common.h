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

/* The instruction set in use (scan_module.c owns it; selective.c follows it). */
int shrinkssm_native_isa_index(void);

#endif
