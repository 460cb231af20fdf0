/* Include the header named by EACH_ISA_HEADER once per instruction set, each time inside that
 * target's TARGET_BEGIN / TARGET_END (common.h), with
 *   ISA   the suffix token (base, avx2, avx512)
 *   VWF   floats per native vector register (4, 8, 16)
 *   VWD   doubles per native vector register (2, 4, 8)
 *   NREG  vector registers of the target (16 or 32)
 * so that every kernel body is compiled with vectors one register wide. Baseline: 16-byte vectors
 * (SSE2 on x86-64 with 16 registers, NEON on aarch64 with 32, whatever the compiler makes of them
 * elsewhere); the AVX2 and AVX-512 variants exist in x86 builds only.
 *
 *   #define EACH_ISA_HEADER "kernels_isa.h"
 *   #include "each_isa.h"
 *   #undef EACH_ISA_HEADER
 */
#define ISA base
#define VWF 4
#define VWD 2
#if defined(__aarch64__)
#define NREG 32
#else
#define NREG 16
#endif
#include EACH_ISA_HEADER
#undef ISA
#undef VWF
#undef VWD
#undef NREG

#ifdef HAVE_X86_VARIANTS
TARGET_BEGIN(TARGET_AVX2)
#define ISA avx2
#define VWF 8
#define VWD 4
#define NREG 16
#include EACH_ISA_HEADER
#undef ISA
#undef VWF
#undef VWD
#undef NREG
TARGET_END
TARGET_BEGIN(TARGET_AVX512)
#define ISA avx512
#define VWF 16
#define VWD 8
#define NREG 32
#include EACH_ISA_HEADER
#undef ISA
#undef VWF
#undef VWD
#undef NREG
TARGET_END
#endif
