/* Short names for the kernel layer's weight views, used inside engine/ and
 * the CPU backend (kernels.h spells them out for the public interface). */
#ifndef OWL_KERNELS_KNAMES_H
#define OWL_KERNELS_KNAMES_H

#include "engine/kernels/kernels.h"

typedef kernels_dtype wtype;
typedef kernels_weight wmat;
#define W_F32 KERNELS_F32
#define W_F16 KERNELS_F16
#define W_BF16 KERNELS_BF16
#define W_Q8_0 KERNELS_Q8_0
#define W_Q4_0 KERNELS_Q4_0
#define W_Q4_1 KERNELS_Q4_1
#define W_Q4_K KERNELS_Q4_K
#define W_Q6_K KERNELS_Q6_K

#endif
