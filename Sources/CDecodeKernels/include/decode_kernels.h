#ifndef NB_SERVE_DECODE_KERNELS_H
#define NB_SERVE_DECODE_KERNELS_H

// The per-pixel loops of frame decoding: each reads the stored samples of one frame once and writes
// every output buffer derived from them, oriented by a flip/rotate walk. The arithmetic is noisebase's,
// in float32, operation for operation (no fused multiply-add), so results match numpy's lane for lane.
//
// Written in C with clang's vector extensions because Swift's SIMD operators are partly scalarised and
// spill in these loops; the Swift side (NBLoader's FrameDecoder) chooses the chunks, planes and walk.

#include <stddef.h>
#include <stdint.h>

#include "simd_math.h"

#ifdef __cplusplus
extern "C" {
#endif

/// The element type of a stored per-pixel array.
typedef enum nb_element {
    NB_ELEMENT_F32 = 0,
    NB_ELEMENT_F16 = 1,
} nb_element;

/// One decoded piece of one frame of a per-pixel array: channel-major, `pixel_stride` elements per
/// pixel, of which `count` samples starting at `base` are valid; they are the frame's samples
/// `sample_origin ..< sample_origin + count`. Element type per kernel (float, IEEE half bits, or bytes).
typedef struct nb_slab {
    const void *base;
    ptrdiff_t channel_stride;
    ptrdiff_t pixel_stride;
    ptrdiff_t sample_origin;
    ptrdiff_t count;
} nb_slab;

/// An output tensor slot `[channels, n, n, inner]` of float32; `base == NULL` means "not requested".
typedef struct nb_plane {
    float *base;
    ptrdiff_t channel_stride;
    ptrdiff_t pixel_stride;
} nb_plane;

/// Where output pixel (i, j) of the oriented `side × side` window comes from: source pixel
/// `start + i * row_step + j * column_step`. `transposes` walks source columns, so the loops tile.
typedef struct nb_walk {
    ptrdiff_t side;
    ptrdiff_t start;
    ptrdiff_t row_step;
    ptrdiff_t column_step;
    int32_t transposes;
} nb_walk;

/// The per-frame constants of the screen-space buffers: camera position, this and the previous frame's
/// view-projection matrices (row-vector convention, row-major), and the pixel mapping
/// `row = ndc_y * scale_row + center_row`, `column = ndc_x * scale_column + center_column`.
typedef struct nb_projection {
    float eye[3];
    float now[16];
    float before[16];
    float scale_row, scale_column;
    float center_row, center_column;
} nb_projection;

/// An oriented, converting copy of `channels` channels from each slab into `plane`.
void nb_copy(const nb_slab *slabs, ptrdiff_t slab_count, nb_element element, ptrdiff_t channels,
             nb_plane plane, nb_walk walk);

/// `w_normal` (`world`) and `screen_space_normal` (`screen`: forward, left, up dot products), either
/// optional, from three-channel normal slabs.
void nb_normal(const nb_slab *slabs, ptrdiff_t slab_count, nb_element element, nb_plane world, nb_plane screen,
               const float forward[3], const float left[3], const float up[3], nb_walk walk);

/// From float32 position slabs and, when `motions` is not NULL, motion slabs covering the same samples
/// (`motions[q]` pairs with `positions[q]`): `w_position`, `w_motion`, `log_depth` and the 2-channel
/// screen-space `motion` (clipped to ±5e3, zero where the projection's w is 0), each where requested.
void nb_position_motion(const nb_slab *positions, const nb_slab *motions, ptrdiff_t slab_count,
                        nb_plane world_position, nb_plane world_motion, nb_plane depth, nb_plane screen_motion,
                        const nb_projection *projection, nb_walk walk);

/// `decompress_RGBE` of four-channel byte slabs with the frame's exposure range into `plane`.
void nb_color(const nb_slab *slabs, ptrdiff_t slab_count, float exposure_low, float exposure_high,
              nb_plane plane, nb_walk walk);

/// Four IEEE halves (bit patterns) widened to float32 exactly, as the kernels widen them (with F16C's
/// instruction where the build targets it).
nb_float4 nb_widen_halves(const uint16_t *halves);

/// The same in integer arithmetic, as builds without F16C widen them (exported so tests check it too).
nb_float4 nb_widen_halves_integer(const uint16_t *halves);

/// Eight halves widened as the kernels widen two four-sample chunks side by side: one F16C conversion
/// of all eight, or the integer path for both when any is a NaN.
void nb_widen_halves8(const uint16_t *halves, float widened[8]);

#ifdef __cplusplus
}
#endif

#endif
