#ifndef NB_SERVE_SIMD_MATH_H
#define NB_SERVE_SIMD_MATH_H

// Four-lane float math that Swift's SIMD types lower to a scalar call per lane: IEEE square root
// (exact, one instruction). Imported into Swift as a function of SIMD4<Float>; being static inline, it
// inlines into the loops.

typedef float nb_float4 __attribute__((ext_vector_type(4)));

static inline nb_float4 nb_sqrt4(nb_float4 x) { return __builtin_elementwise_sqrt(x); }

#endif
