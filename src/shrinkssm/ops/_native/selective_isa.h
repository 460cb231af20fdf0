/* The selective-scan kernels of both real types and both state kinds for one instruction set.
 *
 * Included by selective.c once per instruction set through each_isa.h (inside that target's
 * TARGET_BEGIN / TARGET_END), with
 *   ISA  the suffix token (base, avx2, avx512)
 *   VWF  floats per native vector register of that target (4, 8, 16)
 *   VWD  doubles per native vector register (2, 4, 8)
 */
#define SEL_ISA_CAT_(a, b) a##_##b
#define SEL_ISA_CAT(a, b) SEL_ISA_CAT_(a, b)

/* ---- float ---- */
#define REAL float
#define ITYPE int32_t
#define SEL_FLT 1
#define W 16
#define VW VWF
#define RS SEL_ISA_CAT(f32, ISA)
#define SEL_MATH
#include "selective_kernels.h"
#undef SEL_MATH
#define CPLX 0
#define SFX f32r
#define KSFX SEL_ISA_CAT(f32r, ISA)
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#undef KSFX
#define CPLX 1
#define SFX f32c
#define KSFX SEL_ISA_CAT(f32c, ISA)
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#undef KSFX
#undef REAL
#undef ITYPE
#undef SEL_FLT
#undef W
#undef VW
#undef RS

/* ---- double ---- */
#define REAL double
#define ITYPE int64_t
#define SEL_FLT 0
#define W 8
#define VW VWD
#define RS SEL_ISA_CAT(f64, ISA)
#define SEL_MATH
#include "selective_kernels.h"
#undef SEL_MATH
#define CPLX 0
#define SFX f64r
#define KSFX SEL_ISA_CAT(f64r, ISA)
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#undef KSFX
#define CPLX 1
#define SFX f64c
#define KSFX SEL_ISA_CAT(f64c, ISA)
#include "selective_kernels.h"
#undef CPLX
#undef SFX
#undef KSFX
#undef REAL
#undef ITYPE
#undef SEL_FLT
#undef W
#undef VW
#undef RS
