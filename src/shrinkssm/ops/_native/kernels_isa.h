/* The LRU and scan kernels of both real types for one instruction set.
 *
 * Included by scan_module.c once per instruction set through each_isa.h (inside that target's
 * TARGET_BEGIN / TARGET_END), with
 *   ISA   the suffix token (base, avx2, avx512)
 *   VWF   floats per native vector register of that target (4, 8, 16)
 *   VWD   doubles per native vector register (2, 4, 8)
 *   NREG  vector registers of the target (16 or 32)
 */
#define KERNELS_ISA_CAT_(a, b) a##_##b
#define KERNELS_ISA_CAT(a, b) KERNELS_ISA_CAT_(a, b)

#define REAL float
#define RS f32
#define VW VWF
#define SFX KERNELS_ISA_CAT(f32, ISA)
#include "kernels.h"
#undef REAL
#undef RS
#undef VW
#undef SFX

#define REAL double
#define RS f64
#define VW VWD
#define SFX KERNELS_ISA_CAT(f64, ISA)
#include "kernels.h"
#undef REAL
#undef RS
#undef VW
#undef SFX
