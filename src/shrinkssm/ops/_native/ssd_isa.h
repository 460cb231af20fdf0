/* The SSD-scan kernels of both real types for one instruction set.
 *
 * Included by ssd.c once per instruction set through each_isa.h (inside that target's
 * TARGET_BEGIN / TARGET_END), with
 *   ISA  the suffix token (base, avx2, avx512)
 *   VWF  floats per native vector register of that target (4, 8, 16)
 *   VWD  doubles per native vector register (2, 4, 8)
 * The vector types and helpers (ld, st, splat, hsum) are those of selective_kernels.h.
 */
#define SSD_ISA_CAT_(a, b) a##_##b
#define SSD_ISA_CAT(a, b) SSD_ISA_CAT_(a, b)

/* ---- float ---- */
#define REAL float
#define ITYPE int32_t
#define SEL_FLT 1
#define VW VWF
#define RS SSD_ISA_CAT(f32, ISA)
#define SEL_MATH
#include "selective_kernels.h"
#undef SEL_MATH
#define SFX f32
#define KSFX SSD_ISA_CAT(f32, ISA)
#define SSD_EXP expf
#include "ssd_kernels.h"
#undef SFX
#undef KSFX
#undef SSD_EXP
#undef REAL
#undef ITYPE
#undef SEL_FLT
#undef VW
#undef RS

/* ---- double ---- */
#define REAL double
#define ITYPE int64_t
#define SEL_FLT 0
#define VW VWD
#define RS SSD_ISA_CAT(f64, ISA)
#define SEL_MATH
#include "selective_kernels.h"
#undef SEL_MATH
#define SFX f64
#define KSFX SSD_ISA_CAT(f64, ISA)
#define SSD_EXP exp
#include "ssd_kernels.h"
#undef SFX
#undef KSFX
#undef SSD_EXP
#undef REAL
#undef ITYPE
#undef SEL_FLT
#undef VW
#undef RS
