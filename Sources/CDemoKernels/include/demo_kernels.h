// The per-sample loops of nb-serve's native demo-dataset generator (NBDemo): a seeded random number
// generator, a small ray caster and noisebase's RGBE compression. They are C (always optimised, like the
// decode kernels) so that the demo dataset is written in about a second even by a debug build.
#ifndef NB_DEMO_KERNELS_H
#define NB_DEMO_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define NBDEMO_MAX_SPHERES 8
/// Where sky samples are placed, along the primary ray (as Tests/fixtures/make_dataset.py does).
#define NBDEMO_SKY_DISTANCE 1.0e4

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64: one independent stream per
/// (seed, stream) pair, the same numbers on every machine.
typedef struct {
    uint64_t s[4];
} nbdemo_rng;

void nbdemo_rng_seed(nbdemo_rng *rng, uint64_t seed, uint64_t stream);
/// Uniform in [0, 1), 53 random bits.
double nbdemo_rng_uniform(nbdemo_rng *rng);

/// A checkered ground plane (y = 0), static spheres standing on or above it, a sun and a sky gradient.
typedef struct {
    int32_t sphere_count;
    double centre[NBDEMO_MAX_SPHERES][3];
    double radius[NBDEMO_MAX_SPHERES];
    double albedo[NBDEMO_MAX_SPHERES][3];
    int32_t striped[NBDEMO_MAX_SPHERES];
    double ground_a[3], ground_b[3];
    double checker;
    double sun_direction[3];  // unit, towards the sun
    double sun_irradiance[3];
    double sky_horizon[3], sky_zenith[3];
} nbdemo_scene;

/// One frame's camera and crop window (noisebase's conventions: see NBDemo's DemoCamera).
typedef struct {
    double position[3];
    double right[3], up[3], forward[3];  // U, V, W as FlipRotate.apply_camera builds them
    double proj00, proj11;               // proj_mat[0][0] and [1][1]
    int32_t height, width;               // the full rendering
    int32_t offset_row, offset_col;      // crop_offset
    int32_t crop;
    double sky_motion[3];                // P(t - 1) - P(t) of the camera: the motion of sky samples
} nbdemo_view;

/// Renders crop x crop pixels x `samples` jittered samples. Every output is [3][crop][crop][samples]
/// (CHWS); normal and diffuse are IEEE half bit patterns. `centre_object` receives the object seen by the
/// first sample of the crop's centre pixel: -1 sky, 0 ground, 1 + i sphere i.
void nbdemo_render_samples(const nbdemo_scene *scene, const nbdemo_view *view, int32_t samples, nbdemo_rng *rng,
                           float *position, float *motion, uint16_t *normal, uint16_t *diffuse, float *radiance,
                           int32_t *centre_object);

/// The mean radiance of `count` fresh jittered samples per pixel, [3][crop][crop].
void nbdemo_render_reference(const nbdemo_scene *scene, const nbdemo_view *view, int32_t count, nbdemo_rng *rng,
                             float *reference);

/// noisebase.compression.compress_RGBE on `color` ([3][n] float32), in float32 arithmetic like numpy's,
/// with the dither drawn from `rng`: writes [4][n] bytes (R, G, B, exponent) and [min, max] log exposure.
/// Zero-radiance samples get exponent byte 0; an all-black input gives zeros and [0, 0].
void nbdemo_compress_rgbe(const float *color, size_t n, nbdemo_rng *rng, uint8_t *out, float exposure[2]);

/// Reorders [rows][samples] items into [ceil(samples / group)][rows][group], zero-padding the last group:
/// the per-sample arrays' chunks (every `group` samples) become contiguous.
void nbdemo_group_samples(const void *source, void *destination, size_t rows, size_t samples, size_t group,
                          size_t item_size);

#endif
