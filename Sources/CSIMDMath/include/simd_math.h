#ifndef NB_SERVE_SIMD_MATH_H
#define NB_SERVE_SIMD_MATH_H

// Four-lane float math written with clang's vector extensions, which compile to vector instructions
// where Swift's SIMD operators are partly scalarised: IEEE square root (exact), and exp/log as Cephes'
// single-precision polynomials (within 2 ulp; lanes outside the polynomial's domain use libm).
// Imported into Swift as functions of SIMD4<Float>; being static inline, they inline into the loops.

#include <math.h>
#include <stdint.h>

typedef float nb_float4 __attribute__((ext_vector_type(4)));
typedef int32_t nb_int4 __attribute__((ext_vector_type(4)));
typedef uint32_t nb_uint4 __attribute__((ext_vector_type(4)));

static inline nb_float4 nb_sqrt4(nb_float4 x) { return __builtin_elementwise_sqrt(x); }

static inline nb_float4 nb_scalar_log4(nb_float4 x) {
    nb_float4 r = {logf(x.x), logf(x.y), logf(x.z), logf(x.w)};
    return r;
}

static inline nb_float4 nb_scalar_exp4(nb_float4 x) {
    nb_float4 r = {expf(x.x), expf(x.y), expf(x.z), expf(x.w)};
    return r;
}

static inline nb_float4 nb_log4(nb_float4 x) {
    nb_uint4 bits = (nb_uint4)x;
    // Positive, normal, finite: bit patterns 0x00800000 ..< 0x7f800000.
    nb_int4 normal = (bits - 0x00800000u) < 0x7f000000u;
    if (!(normal.x & normal.y & normal.z & normal.w)) return nb_scalar_log4(x);
    // Exponent field as a float through the mantissa of 2^23 (exact), minus the bias.
    nb_float4 e = (nb_float4)((bits >> 23) | 0x4b000000u) - (8388608.0f + 127.0f);
    nb_float4 m = (nb_float4)((bits & 0x007fffffu) | 0x3f800000u);
    nb_int4 large = m > 1.41421356237f;
    m = large ? m * 0.5f : m;
    e = large ? e + 1.0f : e;
    nb_float4 f = m - 1.0f;
    nb_float4 z = f * f;
    nb_float4 p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    nb_float4 y = p * f * z;
    y += e * -2.12194440e-4f;
    y += z * -0.5f;
    return f + y + e * 0.693359375f;
}

static inline nb_float4 nb_exp4(nb_float4 x) {
    nb_float4 magnitude = (nb_float4)((nb_uint4)x & 0x7fffffffu);
    nb_int4 inside = magnitude < 87.0f;
    if (!(inside.x & inside.y & inside.z & inside.w)) return nb_scalar_exp4(x);
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the mantissa
    nb_float4 scaled = x * 1.44269504088896341f;
    nb_float4 n = (scaled + 0.5f + magic) - magic;
    n = (n > scaled + 0.5f) ? n - 1.0f : n;
    nb_float4 r = x - n * 0.693359375f - n * -2.12194440e-4f;
    nb_float4 z = r * r;
    nb_float4 p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    nb_float4 y = p * z + r + 1.0f;
    nb_int4 integer = (nb_int4)(n + magic) - 0x4b400000;
    nb_float4 power = (nb_float4)((integer + 127) << 23);
    return y * power;
}

#endif
