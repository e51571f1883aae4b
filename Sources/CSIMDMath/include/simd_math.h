#ifndef NB_SERVE_SIMD_MATH_H
#define NB_SERVE_SIMD_MATH_H

// Eight-lane float math for the decode kernels, written with clang's vector extensions (one AVX
// register): IEEE square root (exact), and exp/log as Cephes' single-precision polynomials (within
// 2 ulp; when any lane is outside the polynomial's domain, all eight use libm). Imported into Swift as
// functions of SIMD8<Float> (the tests call them); being static inline, they inline into the loops.

#include <math.h>
#include <stdint.h>

#pragma clang fp contract(off)

typedef float nb_float4 __attribute__((ext_vector_type(4)));
typedef uint32_t nb_uint4 __attribute__((ext_vector_type(4)));
typedef float nb_float8 __attribute__((ext_vector_type(8)));
typedef int32_t nb_int8 __attribute__((ext_vector_type(8)));
typedef uint32_t nb_uint8 __attribute__((ext_vector_type(8)));

static inline nb_float8 nb_sqrt8(nb_float8 x) { return __builtin_elementwise_sqrt(x); }

static inline nb_float8 nb_scalar_log8(nb_float8 x) {
    for (int i = 0; i < 8; i++) x[i] = logf(x[i]);
    return x;
}

static inline nb_float8 nb_scalar_exp8(nb_float8 x) {
    for (int i = 0; i < 8; i++) x[i] = expf(x[i]);
    return x;
}

static inline nb_float8 nb_log8(nb_float8 x) {
    nb_uint8 bits = (nb_uint8)x;
    // Positive, normal, finite: bit patterns 0x00800000 ..< 0x7f800000.
    nb_int8 normal = (bits - 0x00800000u) < 0x7f000000u;
    if (!__builtin_reduce_and(normal)) return nb_scalar_log8(x);
    // Exponent field as a float through the mantissa of 2^23 (exact), minus the bias.
    nb_float8 e = (nb_float8)((bits >> 23) | 0x4b000000u) - (8388608.0f + 127.0f);
    nb_float8 m = (nb_float8)((bits & 0x007fffffu) | 0x3f800000u);
    nb_int8 large = m > 1.41421356237f;
    m = large ? m * 0.5f : m;
    e = large ? e + 1.0f : e;
    nb_float8 f = m - 1.0f;
    nb_float8 z = f * f;
    nb_float8 p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    nb_float8 y = p * f * z;
    y += e * -2.12194440e-4f;
    y += z * -0.5f;
    return f + y + e * 0.693359375f;
}

static inline nb_float8 nb_exp8(nb_float8 x) {
    nb_float8 magnitude = (nb_float8)((nb_uint8)x & 0x7fffffffu);
    nb_int8 inside = magnitude < 87.0f;
    if (!__builtin_reduce_and(inside)) return nb_scalar_exp8(x);
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the mantissa
    nb_float8 scaled = x * 1.44269504088896341f;
    nb_float8 n = (scaled + 0.5f + magic) - magic;
    n = (n > scaled + 0.5f) ? n - 1.0f : n;
    nb_float8 r = x - n * 0.693359375f - n * -2.12194440e-4f;
    nb_float8 z = r * r;
    nb_float8 p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    nb_float8 y = p * z + r + 1.0f;
    nb_int8 integer = (nb_int8)(n + magic) - 0x4b400000;
    nb_float8 power = (nb_float8)((integer + 127) << 23);
    return y * power;
}

#endif
