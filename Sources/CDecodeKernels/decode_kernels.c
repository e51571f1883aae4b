#include "decode_kernels.h"

#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

// numpy evaluates a*b + c as two roundings; so must we, whatever the target offers.
#pragma clang fp contract(off)

#define NB_INLINE static inline __attribute__((always_inline))

typedef nb_float4 f4;
typedef nb_uint4 u4;
typedef nb_float8 f8;
typedef nb_int8 i8;
typedef uint8_t nb_byte4 __attribute__((ext_vector_type(4)));
typedef uint16_t nb_half4 __attribute__((ext_vector_type(4)));

/// Stored element types the loads convert from: `nb_element`'s, plus RGBE bytes.
enum { ELEMENT_F32 = NB_ELEMENT_F32, ELEMENT_F16 = NB_ELEMENT_F16, ELEMENT_U8 = 2 };

NB_INLINE ptrdiff_t clamp_lanes(ptrdiff_t n) { return n < 0 ? 0 : n > 4 ? 4 : n; }

// MARK: - Four-lane loads and stores

/// IEEE half bits to float exactly in integer arithmetic (for CPUs without F16C): exponent and mantissa
/// move into float position and are rebiased; infinities and NaNs get the maximal exponent, subnormals
/// are renormalised by one exact float subtraction.
NB_INLINE f4 widen_bits(u4 h) {
    const uint32_t shifted_exponent = 0x7c00u << 13;
    u4 bits = (h & 0x7fffu) << 13;
    u4 exponent = bits & shifted_exponent;
    bits += (127u - 15u) << 23;
    bits = (exponent == shifted_exponent) ? bits + ((128u - 16u) << 23) : bits;
    f4 subnormal = (f4)(bits + (1u << 23)) - (f4)(u4)(113u << 23);
    f4 value = (exponent == 0u) ? subnormal : (f4)bits;
    return (f4)((u4)value | ((h & 0x8000u) << 16));
}

NB_INLINE f4 widen4_integer(const uint16_t *p) {
    nb_half4 h;
    memcpy(&h, p, 8);
    return widen_bits(__builtin_convertvector(h, u4));
}

NB_INLINE f4 widen4(const uint16_t *p) {
#if defined(__F16C__)
    // vcvtph2ps quiets signalling NaNs; numpy keeps their bits, so NaN groups (rare) go the integer way.
    nb_half4 h;
    memcpy(&h, p, 8);
    if (__builtin_reduce_or((h & 0x7fff) > 0x7c00)) return widen4_integer(p);
    __m128i bits = _mm_setzero_si128();
    memcpy(&bits, p, 8);
    return (f4)_mm_cvtph_ps(bits);
#else
    return widen4_integer(p);
#endif
}

NB_INLINE float widen1(uint16_t h) { return widen_bits((u4)h).x; }

typedef uint16_t nb_half8 __attribute__((ext_vector_type(8)));

/// Four halves at `a` and four at `b` as one eight-lane vector: one NaN test and one `vcvtph2ps` for both.
NB_INLINE f8 widen8(const uint16_t *a, const uint16_t *b) {
#if defined(__F16C__)
    nb_half4 x, y;
    memcpy(&x, a, 8);
    memcpy(&y, b, 8);
    const nb_half8 h = __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7);
    if (!__builtin_reduce_or((h & 0x7fff) > 0x7c00)) {
        __m128i bits;
        memcpy(&bits, &h, 16);
        return (f8)_mm256_cvtph_ps(bits);
    }
#endif
    return __builtin_shufflevector(widen4_integer(a), widen4_integer(b), 0, 1, 2, 3, 4, 5, 6, 7);
}

/// `lanes` (1...4) elements from `base[index...]` as floats; missing lanes repeat the first, so they
/// never feed special values into the math.
NB_INLINE f4 load4(const void *base, ptrdiff_t index, int element, ptrdiff_t lanes) {
    if (element == ELEMENT_F16) {
        const uint16_t *p = (const uint16_t *)base + index;
        if (lanes == 4) return widen4(p);
        f4 v = widen1(p[0]);
        for (ptrdiff_t k = 1; k < lanes; k++) v[k] = widen1(p[k]);
        return v;
    }
    if (element == ELEMENT_U8) {
        const uint8_t *p = (const uint8_t *)base + index;
        if (lanes == 4) {
            nb_byte4 b;
            memcpy(&b, p, 4);
            return __builtin_convertvector(b, f4);
        }
        f4 v = (float)p[0];
        for (ptrdiff_t k = 1; k < lanes; k++) v[k] = (float)p[k];
        return v;
    }
    const float *p = (const float *)base + index;
    if (lanes == 4) {
        f4 v;
        memcpy(&v, p, 16);
        return v;
    }
    f4 v = p[0];
    for (ptrdiff_t k = 1; k < lanes; k++) v[k] = p[k];
    return v;
}

NB_INLINE void store4(float *p, f4 v, ptrdiff_t lanes) {
    if (lanes == 4) {
        memcpy(p, &v, 16);
        return;
    }
    for (ptrdiff_t k = 0; k < lanes; k++) p[k] = v[k];
}

// MARK: - Passes: eight lanes of one pixel

/// The samples of one pixel that one pass of a kernel computes, eight lanes wide: a low half of 1...4
/// samples and a high half of 0...4, each from a slab (two slabs, or two groups of one). Built with
/// constants in the hot variants, so the lane logic folds away.
typedef struct {
    const nb_slab *lo, *hi;
    ptrdiff_t lo_k, hi_k;         // first sample of each half within its slab
    ptrdiff_t lo_lanes, hi_lanes; // valid lanes of each half
} pass;

/// Two slabs of four samples each, the second following the first (Sample Training Format v1's chunks
/// of four, two at a time): one 8-lane store per channel.
NB_INLINE pass pair_pass(const nb_slab *lo, const nb_slab *hi) { return (pass){lo, hi, 0, 0, 4, 4}; }

/// Samples `k ..< k + 8` of one slab (as far as it has them).
NB_INLINE pass single_pass(const nb_slab *slab, ptrdiff_t k) {
    return (pass){slab, slab, k, k + 4, clamp_lanes(slab->count - k), clamp_lanes(slab->count - k - 4)};
}

/// The same samples of another pair of slabs that cover them (motion beside position).
NB_INLINE pass matching_pass(pass p, const nb_slab *lo, const nb_slab *hi) {
    return (pass){lo, hi, p.lo->sample_origin + p.lo_k - lo->sample_origin, p.hi->sample_origin + p.hi_k - hi->sample_origin,
                  p.lo_lanes, p.hi_lanes};
}

/// Channel `channel` of source pixel `source`, both halves.
NB_INLINE f8 load8(pass p, ptrdiff_t source, ptrdiff_t channel, int element) {
    const ptrdiff_t lo = source * p.lo->pixel_stride + channel * p.lo->channel_stride + p.lo_k;
    const ptrdiff_t hi = source * p.hi->pixel_stride + channel * p.hi->channel_stride + p.hi_k;
    if (element == ELEMENT_F16 && p.lo_lanes == 4 && p.hi_lanes == 4) {
        return widen8((const uint16_t *)p.lo->base + lo, (const uint16_t *)p.hi->base + hi);
    }
    const f4 a = load4(p.lo->base, lo, element, p.lo_lanes);
    const f4 b = p.hi_lanes ? load4(p.hi->base, hi, element, p.hi_lanes) : a;
    return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7);
}

/// Channel `channel` of output pixel `output` in `plane`, both halves, at the samples they came from.
NB_INLINE void store8(nb_plane plane, ptrdiff_t output, ptrdiff_t channel, pass p, f8 v) {
    float *to = plane.base + channel * plane.channel_stride + output * plane.pixel_stride;
    // The passes that store (`pair_pass`, `single_pass`) put the high half's samples right after the low
    // half's.
    const ptrdiff_t lo_sample = p.lo->sample_origin + p.lo_k;
    if (p.lo_lanes == 4 && p.hi_lanes == 4) {
        memcpy(to + lo_sample, &v, 32);
        return;
    }
    store4(to + lo_sample, __builtin_shufflevector(v, v, 0, 1, 2, 3), p.lo_lanes);
    if (p.hi_lanes) store4(to + lo_sample + 4, __builtin_shufflevector(v, v, 4, 5, 6, 7), p.hi_lanes);
}

/// Channels 0-2 of output pixel `output` in `plane`, if the plane was requested.
NB_INLINE void store3(nb_plane plane, ptrdiff_t output, pass p, f8 x, f8 y, f8 z) {
    if (!plane.base) return;
    store8(plane, output, 0, p, x);
    store8(plane, output, 1, p, y);
    store8(plane, output, 2, p, z);
}

// MARK: - Walk

enum { max_planes = 4 };

/// The output planes a kernel writes (absent ones have a NULL base) and their channel counts: the first
/// member of every kernel context, so the walk can prefetch them.
typedef struct {
    nb_plane plane[max_planes];
    ptrdiff_t channels[max_planes];
} outputs;

typedef void (*pixel_function)(const void *context, ptrdiff_t source, ptrdiff_t output);

/// Side of the tiles of a transposing walk, and how many output rows ahead it prefetches.
enum { tile = 16, rows_ahead = 2 };

/// Announces the write of output pixels `first ..< first + count` of every plane.
NB_INLINE void prefetch_for_writing(const outputs *out, ptrdiff_t first, ptrdiff_t count) {
    for (int p = 0; p < max_planes; p++) {
        const nb_plane plane = out->plane[p];
        if (!plane.base) continue;
        const size_t bytes = (size_t)(count * plane.pixel_stride) * sizeof(float);
        for (ptrdiff_t ch = 0; ch < out->channels[p]; ch++) {
            const char *start = (const char *)(plane.base + ch * plane.channel_stride + first * plane.pixel_stride);
            for (size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(start + offset, 1);
        }
    }
}

/// Calls `pixel(context, source, output)` for every output pixel of the window; `pixel` is a constant
/// always-inline function, so each kernel's loop nest is compiled with its body inside.
///
/// A transposing walk reads a source column per output row, so it goes in 16 × 16 tiles that reuse the
/// source lines they touch. Its output rows are short runs 8 KiB and more apart, which the hardware
/// prefetcher does not follow: the walk prefetches them for writing two rows ahead (1.3× faster on the
/// transposing orientations on an Intel machine, a few percent end to end on an AMD one).
NB_INLINE void walk_pixels(nb_walk walk, const void *context, pixel_function pixel) {
    const ptrdiff_t n = walk.side;
    if (!walk.transposes) {
        for (ptrdiff_t i = 0; i < n; i++) {
            ptrdiff_t source = walk.start + i * walk.row_step;
            for (ptrdiff_t j = 0; j < n; j++, source += walk.column_step) pixel(context, source, i * n + j);
        }
        return;
    }
    for (ptrdiff_t row = 0; row < n; row += tile) {
        for (ptrdiff_t column = 0; column < n; column += tile) {
            const ptrdiff_t row_end = row + tile < n ? row + tile : n;
            const ptrdiff_t columns = column + tile < n ? tile : n - column;
            for (ptrdiff_t i = row; i < row_end; i++) {
                if (i + rows_ahead < row_end) prefetch_for_writing(context, (i + rows_ahead) * n + column, columns);
                ptrdiff_t source = walk.start + i * walk.row_step + column * walk.column_step;
                for (ptrdiff_t j = column; j < column + columns; j++, source += walk.column_step) pixel(context, source, i * n + j);
            }
        }
    }
}

/// Whether slabs `q` and `q + 1` form a pair pass.
NB_INLINE int pairs(const nb_slab *slabs, ptrdiff_t slab_count, ptrdiff_t q) {
    return q + 1 < slab_count && slabs[q].count == 4 && slabs[q + 1].count == 4 &&
           slabs[q + 1].sample_origin == slabs[q].sample_origin + 4;
}

/// Defines `NAME_pair` (a pair pass of the context's `lo`, `hi` slabs) and `NAME_single` (every sample of
/// its `lo` slab, eight at a time) from `NAME_pass(context, source, output, pass)`; `CONTEXT` is the
/// context type.
#define NB_PIXEL_FUNCTIONS(NAME, CONTEXT)                                                                    \
    NB_INLINE void NAME##_pair(const void *context, ptrdiff_t source, ptrdiff_t output) {                   \
        const CONTEXT *c = context;                                                                          \
        NAME##_pass(c, source, output, pair_pass(&c->lo, &c->hi));                                           \
    }                                                                                                        \
    NB_INLINE void NAME##_single(const void *context, ptrdiff_t source, ptrdiff_t output) {                 \
        const CONTEXT *c = context;                                                                          \
        for (ptrdiff_t k = 0; k < c->lo.count; k += 8) NAME##_pass(c, source, output, single_pass(&c->lo, k)); \
    }

/// Walks `slabs` with the context's `lo` and `hi` set: pairs where two form one, single slabs otherwise.
/// Each branch calls the walk with one constant function, which is what lets it inline; `BEFORE` runs
/// before each walk with `q` and `paired` set (to set further per-slab state).
#define NB_RUN_SLABS(NAME, context, slabs, slab_count, walk, BEFORE)                                \
    for (ptrdiff_t q = 0; q < (slab_count);) {                                                      \
        const int paired = pairs((slabs), (slab_count), q);                                         \
        (context).lo = (slabs)[q];                                                                  \
        (context).hi = (slabs)[paired ? q + 1 : q];                                                 \
        BEFORE;                                                                                     \
        if (paired) walk_pixels((walk), &(context), NAME##_pair);                                   \
        else walk_pixels((walk), &(context), NAME##_single);                                        \
        q += paired ? 2 : 1;                                                                        \
    }

// MARK: - Copy

typedef struct {
    outputs out;  // plane 0: the copy
    nb_slab lo, hi;
} copy_context;

NB_INLINE void copy_pass(const copy_context *c, ptrdiff_t source, ptrdiff_t output, pass p, int element) {
    for (ptrdiff_t ch = 0; ch < c->out.channels[0]; ch++) store8(c->out.plane[0], output, ch, p, load8(p, source, ch, element));
}

NB_INLINE void copy_f32_pass(const copy_context *c, ptrdiff_t s, ptrdiff_t o, pass p) { copy_pass(c, s, o, p, ELEMENT_F32); }
NB_INLINE void copy_f16_pass(const copy_context *c, ptrdiff_t s, ptrdiff_t o, pass p) { copy_pass(c, s, o, p, ELEMENT_F16); }
NB_PIXEL_FUNCTIONS(copy_f32, copy_context)
NB_PIXEL_FUNCTIONS(copy_f16, copy_context)

/// One sample per pixel (`reference`) in an untransposed walk: each output row is a forward or backward
/// run of source pixels, copied four pixels at a time.
NB_INLINE void copy_rows_single(const nb_slab slab, ptrdiff_t channels, nb_plane plane, nb_walk walk, int element) {
    const ptrdiff_t n = walk.side;
    for (ptrdiff_t ch = 0; ch < channels; ch++) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const ptrdiff_t first = walk.start + i * walk.row_step + ch * slab.channel_stride;
            float *to = plane.base + ch * plane.channel_stride + i * n;
            ptrdiff_t j = 0;
            if (walk.column_step == 1) {
                for (; j + 4 <= n; j += 4) store4(to + j, load4(slab.base, first + j, element, 4), 4);
            } else {
                for (; j + 4 <= n; j += 4) {
                    f4 v = load4(slab.base, first - j - 3, element, 4);
                    store4(to + j, __builtin_shufflevector(v, v, 3, 2, 1, 0), 4);
                }
            }
            for (; j < n; j++) store4(to + j, load4(slab.base, first + j * walk.column_step, element, 1), 1);
        }
    }
}

/// Four consecutive source pixels along the walk's rows (`row_step` ±1), starting at output row `i`:
/// lane `k` is the source of output row `i + k`.
NB_INLINE f4 load_column4(const nb_slab slab, ptrdiff_t source, ptrdiff_t row_step, int element) {
    if (row_step == 1) return load4(slab.base, source, element, 4);
    const f4 v = load4(slab.base, source - 3, element, 4);
    return __builtin_shufflevector(v, v, 3, 2, 1, 0);
}

/// One sample per pixel (`reference`) in a transposing walk: output rows run along source columns, so it
/// goes in 4 × 4 blocks, reading four source rows a vector at a time and transposing in registers (the
/// per-pixel walk made this 5× slower than the untransposed copy).
NB_INLINE void copy_transposed_single(const nb_slab slab, ptrdiff_t channels, nb_plane plane, nb_walk walk, int element) {
    const ptrdiff_t n = walk.side, blocked = n / 4 * 4;
    for (ptrdiff_t ch = 0; ch < channels; ch++) {
        float *to = plane.base + ch * plane.channel_stride;
        const ptrdiff_t start = walk.start + ch * slab.channel_stride;
        for (ptrdiff_t i = 0; i < blocked; i += 4) {
            for (ptrdiff_t j = 0; j < blocked; j += 4) {
                const ptrdiff_t source = start + i * walk.row_step + j * walk.column_step;
                const f4 c0 = load_column4(slab, source, walk.row_step, element);
                const f4 c1 = load_column4(slab, source + walk.column_step, walk.row_step, element);
                const f4 c2 = load_column4(slab, source + 2 * walk.column_step, walk.row_step, element);
                const f4 c3 = load_column4(slab, source + 3 * walk.column_step, walk.row_step, element);
                const f4 t01lo = __builtin_shufflevector(c0, c1, 0, 4, 1, 5), t01hi = __builtin_shufflevector(c0, c1, 2, 6, 3, 7);
                const f4 t23lo = __builtin_shufflevector(c2, c3, 0, 4, 1, 5), t23hi = __builtin_shufflevector(c2, c3, 2, 6, 3, 7);
                store4(to + i * n + j, __builtin_shufflevector(t01lo, t23lo, 0, 1, 4, 5), 4);
                store4(to + (i + 1) * n + j, __builtin_shufflevector(t01lo, t23lo, 2, 3, 6, 7), 4);
                store4(to + (i + 2) * n + j, __builtin_shufflevector(t01hi, t23hi, 0, 1, 4, 5), 4);
                store4(to + (i + 3) * n + j, __builtin_shufflevector(t01hi, t23hi, 2, 3, 6, 7), 4);
            }
        }
        // The edges a side that is not a multiple of four leaves, pixel by pixel.
        for (ptrdiff_t i = 0; i < n; i++) {
            for (ptrdiff_t j = (i < blocked ? blocked : 0); j < n; j++) {
                store4(to + i * n + j, load4(slab.base, start + i * walk.row_step + j * walk.column_step, element, 1), 1);
            }
        }
    }
}

void nb_copy(const nb_slab *slabs, ptrdiff_t slab_count, nb_element element, ptrdiff_t channels, nb_plane plane, nb_walk walk) {
    if (slab_count == 1 && slabs[0].count == 1 && slabs[0].pixel_stride == 1 && plane.pixel_stride == 1 &&
        slabs[0].sample_origin == 0) {
        const int f16 = element == NB_ELEMENT_F16;
        if (!walk.transposes && (walk.column_step == 1 || walk.column_step == -1)) {
            if (f16) copy_rows_single(slabs[0], channels, plane, walk, ELEMENT_F16);
            else copy_rows_single(slabs[0], channels, plane, walk, ELEMENT_F32);
            return;
        }
        if (walk.transposes && (walk.row_step == 1 || walk.row_step == -1)) {
            if (f16) copy_transposed_single(slabs[0], channels, plane, walk, ELEMENT_F16);
            else copy_transposed_single(slabs[0], channels, plane, walk, ELEMENT_F32);
            return;
        }
    }
    copy_context context = {.out = {.plane = {plane}, .channels = {channels}}};
    if (element == NB_ELEMENT_F16) {
        NB_RUN_SLABS(copy_f16, context, slabs, slab_count, walk, (void)0)
    } else {
        NB_RUN_SLABS(copy_f32, context, slabs, slab_count, walk, (void)0)
    }
}

// MARK: - Normal

enum { NORMAL_WORLD, NORMAL_SCREEN };

typedef struct {
    outputs out;  // NORMAL_WORLD (w_normal), NORMAL_SCREEN (normal)
    nb_slab lo, hi;
    f8 w[3], u[3], v[3];
} normal_context;

NB_INLINE void normal_pass(const normal_context *c, ptrdiff_t source, ptrdiff_t output, pass p, int element) {
    const f8 a = load8(p, source, 0, element);
    const f8 b = load8(p, source, 1, element);
    const f8 d = load8(p, source, 2, element);
    const nb_plane screen = c->out.plane[NORMAL_SCREEN];
    store3(c->out.plane[NORMAL_WORLD], output, p, a, b, d);
    if (screen.base) {
        // numpy's einsum starts each sum at +0.0 and adds the products in order, so a (0, 0, 0) normal
        // gives +0.0 even where every product is -0.0 (a negative basis component); the leading +0.0
        // reproduces that and changes no other result (x + +0.0 == x for every x but -0.0).
        const f8 zero = (f8){0};
        store8(screen, output, 0, p, zero + c->w[0] * a + c->w[1] * b + c->w[2] * d);
        store8(screen, output, 1, p, zero + c->u[0] * a + c->u[1] * b + c->u[2] * d);
        store8(screen, output, 2, p, zero + c->v[0] * a + c->v[1] * b + c->v[2] * d);
    }
}

NB_INLINE void normal_f32_pass(const normal_context *c, ptrdiff_t s, ptrdiff_t o, pass p) { normal_pass(c, s, o, p, ELEMENT_F32); }
NB_INLINE void normal_f16_pass(const normal_context *c, ptrdiff_t s, ptrdiff_t o, pass p) { normal_pass(c, s, o, p, ELEMENT_F16); }
NB_PIXEL_FUNCTIONS(normal_f32, normal_context)
NB_PIXEL_FUNCTIONS(normal_f16, normal_context)

void nb_normal(const nb_slab *slabs, ptrdiff_t slab_count, nb_element element, nb_plane world, nb_plane screen,
               const float forward[3], const float left[3], const float up[3], nb_walk walk) {
    normal_context context = {.out = {.plane = {world, screen}, .channels = {3, 3}}};
    for (int i = 0; i < 3; i++) {
        context.w[i] = forward[i];
        context.u[i] = left[i];
        context.v[i] = up[i];
    }
    if (element == NB_ELEMENT_F16) {
        NB_RUN_SLABS(normal_f16, context, slabs, slab_count, walk, (void)0)
    } else {
        NB_RUN_SLABS(normal_f32, context, slabs, slab_count, walk, (void)0)
    }
}

// MARK: - Position and motion

enum { WORLD_POSITION, WORLD_MOTION, DEPTH, SCREEN_MOTION };

typedef struct {
    outputs out;                  // WORLD_POSITION, WORLD_MOTION, DEPTH, SCREEN_MOTION
    nb_slab lo, hi;               // position
    nb_slab motion_lo, motion_hi; // the motion slabs covering the same samples
    int has_motion;
    f8 eye[3];
    f8 now[16], before[16];
    f8 scale_row, scale_column, center_row, center_column;
} position_motion_context;

/// `screen_space_position` of eight points: row vector times matrix, divided by w unless w is 0, then
/// pixel coordinates.
NB_INLINE void project(const f8 *m, f8 x, f8 y, f8 z, const position_motion_context *c, f8 *row, f8 *column) {
    const f8 px = m[0] * x + m[4] * y + m[8] * z + m[12];
    const f8 py = m[1] * x + m[5] * y + m[9] * z + m[13];
    const f8 pw = m[3] * x + m[7] * y + m[11] * z + m[15];
    const i8 degenerate = pw == 0.0f;
    const f8 nx = degenerate ? 0.0f : px / pw;
    const f8 ny = degenerate ? 0.0f : py / pw;
    *row = ny * c->scale_row + c->center_row;
    *column = nx * c->scale_column + c->center_column;
}

/// `np.clip(x, -5e3, 5e3)`; NaN passes through, as in numpy.
NB_INLINE f8 clip(f8 x) {
    const f8 r = x < -5e3f ? -5e3f : x;
    return x > 5e3f ? 5e3f : r;
}

NB_INLINE void position_motion_pass(const position_motion_context *c, ptrdiff_t source, ptrdiff_t output, pass p) {
    const f8 x = load8(p, source, 0, ELEMENT_F32);
    const f8 y = load8(p, source, 1, ELEMENT_F32);
    const f8 z = load8(p, source, 2, ELEMENT_F32);
    const nb_plane depth = c->out.plane[DEPTH];
    store3(c->out.plane[WORLD_POSITION], output, p, x, y, z);
    if (depth.base) {
        const f8 dx = x - c->eye[0], dy = y - c->eye[1], dz = z - c->eye[2];
        const f8 argument = 1.0f + 1.0f / nb_sqrt8(dx * dx + dy * dy + dz * dz);
        store8(depth, output, 0, p, nb_log8(argument));
    }
    if (!c->has_motion) return;
    const pass m = matching_pass(p, &c->motion_lo, &c->motion_hi);
    const f8 mx = load8(m, source, 0, ELEMENT_F32);
    const f8 my = load8(m, source, 1, ELEMENT_F32);
    const f8 mz = load8(m, source, 2, ELEMENT_F32);
    const nb_plane screen_motion = c->out.plane[SCREEN_MOTION];
    store3(c->out.plane[WORLD_MOTION], output, p, mx, my, mz);
    if (screen_motion.base) {
        f8 here_row, here_column, there_row, there_column;
        project(c->now, x, y, z, c, &here_row, &here_column);
        project(c->before, x + mx, y + my, z + mz, c, &there_row, &there_column);
        store8(screen_motion, output, 0, p, clip(there_row - here_row));
        store8(screen_motion, output, 1, p, clip(there_column - here_column));
    }
}

NB_PIXEL_FUNCTIONS(position_motion, position_motion_context)

void nb_position_motion(const nb_slab *positions, const nb_slab *motions, ptrdiff_t slab_count,
                        nb_plane world_position, nb_plane world_motion, nb_plane depth, nb_plane screen_motion,
                        const nb_projection *projection, nb_walk walk) {
    position_motion_context context = {
        .out = {.plane = {world_position, world_motion, depth, screen_motion}, .channels = {3, 3, 1, 2}},
        .has_motion = motions != NULL};
    for (int i = 0; i < 3; i++) context.eye[i] = projection->eye[i];
    for (int i = 0; i < 16; i++) {
        context.now[i] = projection->now[i];
        context.before[i] = projection->before[i];
    }
    context.scale_row = projection->scale_row;
    context.scale_column = projection->scale_column;
    context.center_row = projection->center_row;
    context.center_column = projection->center_column;
    NB_RUN_SLABS(position_motion, context, positions, slab_count, walk,
                 if (motions) {
                     context.motion_lo = motions[q];
                     context.motion_hi = motions[paired ? q + 1 : q];
                 })
}

// MARK: - Color

typedef struct {
    outputs out;  // plane 0: color
    nb_slab lo, hi;
    f8 low, range;
} color_context;

NB_INLINE void color_pass(const color_context *c, ptrdiff_t source, ptrdiff_t output, pass p) {
    const f8 exponent = nb_exp8((load8(p, source, 3, ELEMENT_U8) + 1.0f) / 256.0f * c->range + c->low);
    for (ptrdiff_t ch = 0; ch < 3; ch++) store8(c->out.plane[0], output, ch, p, load8(p, source, ch, ELEMENT_U8) / 255.0f * exponent);
}

NB_PIXEL_FUNCTIONS(color, color_context)

void nb_color(const nb_slab *slabs, ptrdiff_t slab_count, float exposure_low, float exposure_high, nb_plane plane, nb_walk walk) {
    color_context context = {.out = {.plane = {plane}, .channels = {3}}, .low = exposure_low, .range = exposure_high - exposure_low};
    NB_RUN_SLABS(color, context, slabs, slab_count, walk, (void)0)
}

nb_float4 nb_widen_halves(const uint16_t *halves) { return widen4(halves); }

nb_float4 nb_widen_halves_integer(const uint16_t *halves) { return widen4_integer(halves); }

void nb_widen_halves8(const uint16_t *halves, float widened[8]) {
    const f8 v = widen8(halves, halves + 4);
    memcpy(widened, &v, 32);
}
