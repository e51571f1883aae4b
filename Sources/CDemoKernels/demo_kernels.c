#include "demo_kernels.h"

#include <math.h>
#include <string.h>

#define EPSILON 1.0e-4
#define GROUND_EXTENT 2.0e3  // the ground ends here; rays past it see the sky
#define PI 3.14159265358979323846

// ---------------------------------------------------------------------------------------------------------
// Random numbers

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void nbdemo_rng_seed(nbdemo_rng *rng, uint64_t seed, uint64_t stream) {
    uint64_t state = seed;
    uint64_t mixed = splitmix64(&state) ^ (stream * 0xd1b54a32d192ed03ull);
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&mixed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t next(nbdemo_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double nbdemo_rng_uniform(nbdemo_rng *rng) { return (double)(next(rng) >> 11) * 0x1.0p-53; }

// ---------------------------------------------------------------------------------------------------------
// Vectors

typedef struct { double x, y, z; } vec;

static inline vec v3(const double a[3]) { return (vec){a[0], a[1], a[2]}; }
static inline vec add(vec a, vec b) { return (vec){a.x + b.x, a.y + b.y, a.z + b.z}; }
static inline vec sub(vec a, vec b) { return (vec){a.x - b.x, a.y - b.y, a.z - b.z}; }
static inline vec scale(vec a, double s) { return (vec){a.x * s, a.y * s, a.z * s}; }
static inline vec mul(vec a, vec b) { return (vec){a.x * b.x, a.y * b.y, a.z * b.z}; }
static inline double dot(vec a, vec b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
static inline vec normalize(vec a) { return scale(a, 1.0 / sqrt(dot(a, a))); }

/// IEEE half bits of x, rounded to nearest even (what numpy's astype(float16) does).
static uint16_t half_bits(float value) {
    uint32_t x;
    memcpy(&x, &value, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t magnitude = x & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) {  // infinity or NaN (kept quiet)
        return (uint16_t)(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u | ((magnitude >> 13) & 0x3ffu) : 0));
    }
    if (magnitude >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds past the largest half
    if (magnitude < 0x38800000u) {  // subnormal half (or zero)
        if (magnitude < 0x33000000u) return (uint16_t)sign;  // below half the smallest subnormal
        uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(magnitude >> 23);  // 14 .. 24
        uint32_t result = mantissa >> shift;
        uint32_t rest = mantissa & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (result & 1))) result++;
        return (uint16_t)(sign | result);
    }
    uint32_t result = ((magnitude - 0x38000000u) >> 13);
    uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (result & 1))) result++;
    return (uint16_t)(sign | result);
}

// ---------------------------------------------------------------------------------------------------------
// Ray casting

/// Closest hit along o + t d (|d| = 1) with t in (EPSILON, tmax): its distance, and the object in *object
/// (0 ground, 1 + i sphere i, -1 none). Every ray origin lies outside every sphere: only the near root counts.
static double intersect(const nbdemo_scene *scene, vec o, vec d, double tmax, int *object) {
    double best = tmax;
    *object = -1;
    for (int i = 0; i < scene->sphere_count; i++) {
        vec oc = sub(v3(scene->centre[i]), o);
        double b = dot(d, oc);
        double c = dot(oc, oc) - scene->radius[i] * scene->radius[i];
        double disc = b * b - c;
        if (disc < 0) continue;
        double t = b - sqrt(disc);
        if (t > EPSILON && t < best) {
            best = t;
            *object = 1 + i;
        }
    }
    if (d.y < 0) {
        double t = -o.y / d.y;
        if (t > EPSILON && t < GROUND_EXTENT && t < best) {
            best = t;
            *object = 0;
        }
    }
    return best;
}

static int sun_blocked(const nbdemo_scene *scene, vec o) {
    int object;
    intersect(scene, o, v3(scene->sun_direction), INFINITY, &object);
    return object > 0;  // the ground never blocks the sun: it is above the horizon
}

static vec sky(const nbdemo_scene *scene, vec d) {
    double up = sqrt(d.y < 0 ? 0 : (d.y > 1 ? 1 : d.y));
    vec base = add(scale(v3(scene->sky_horizon), 1 - up), scale(v3(scene->sky_zenith), up));
    double glow = dot(d, v3(scene->sun_direction));
    glow = glow > 0 ? pow(glow, 48) : 0;
    return add(base, scale(v3(scene->sun_irradiance), 0.5 * glow));
}

/// Normal and albedo at p on `object` (>= 0).
static void surface(const nbdemo_scene *scene, int object, vec p, vec *normal, vec *albedo) {
    if (object == 0) {
        *normal = (vec){0, 1, 0};
        long parity = (long)(floor(p.x / scene->checker) + floor(p.z / scene->checker));
        *albedo = v3((parity & 1) ? scene->ground_a : scene->ground_b);
        return;
    }
    int i = object - 1;
    vec local = sub(p, v3(scene->centre[i]));
    *normal = normalize(local);
    *albedo = v3(scene->albedo[i]);
    if (scene->striped[i] && ((long)floor(local.y / scene->radius[i] * 3.0) & 1)) *albedo = scale(*albedo, 0.35);
}

/// Lambertian direction around n from two uniforms (Duff et al.'s branchless tangent frame).
static vec cosine_direction(vec n, double u1, double u2) {
    double sign = n.z >= 0 ? 1.0 : -1.0;
    double a = -1.0 / (sign + n.z);
    double b = n.x * n.y * a;
    vec t = {1.0 + sign * n.x * n.x * a, sign * b, -sign * n.x};
    vec s = {b, sign + n.y * n.y * a, -n.y};
    double r = sqrt(u1), phi = 2 * PI * u2, z = sqrt(1 - u1 > 0 ? 1 - u1 : 0);
    return normalize(add(add(scale(t, r * cos(phi)), scale(s, r * sin(phi))), scale(n, z)));
}

typedef struct {
    vec position, normal, albedo, radiance;
    int object;
} sample_result;

/// One primary ray: the sun with a hard shadow, plus one cosine-weighted bounce towards the sky or the
/// sunlit surface it meets (the Monte Carlo noise of the samples).
static sample_result trace(const nbdemo_scene *scene, vec o, vec d, double u1, double u2) {
    sample_result r;
    double t = intersect(scene, o, d, INFINITY, &r.object);
    if (r.object < 0) {
        r.position = add(o, scale(d, NBDEMO_SKY_DISTANCE));
        r.normal = r.albedo = (vec){0, 0, 0};
        r.radiance = sky(scene, d);
        return r;
    }
    r.position = add(o, scale(d, t));
    surface(scene, r.object, r.position, &r.normal, &r.albedo);
    vec origin = add(r.position, scale(r.normal, EPSILON * 10));
    vec sun = v3(scene->sun_direction);
    double cosine = dot(r.normal, sun);
    double direct = cosine > 0 && !sun_blocked(scene, origin) ? cosine / PI : 0;
    vec bounce = cosine_direction(r.normal, u1, u2);
    int next;
    double tb = intersect(scene, origin, bounce, INFINITY, &next);
    vec incoming;
    if (next < 0) {
        incoming = sky(scene, bounce);
    } else {
        vec p2 = add(origin, scale(bounce, tb)), n2, a2;
        surface(scene, next, p2, &n2, &a2);
        double c2 = dot(n2, sun);
        incoming = c2 > 0 && !sun_blocked(scene, add(p2, scale(n2, EPSILON * 10)))
                       ? scale(mul(a2, v3(scene->sun_irradiance)), c2 / PI) : (vec){0, 0, 0};
    }
    r.radiance = add(scale(mul(r.albedo, v3(scene->sun_irradiance)), direct), mul(r.albedo, incoming));
    return r;
}

/// The world ray through full-frame point (row, col), as noisebase's projection sees it.
static vec primary_direction(const nbdemo_view *view, double row, double col) {
    double x = (2.0 * col / view->width - 1.0) / view->proj00;
    double y = (1.0 - 2.0 * row / view->height) / view->proj11;
    return normalize(add(add(scale(v3(view->right), x), scale(v3(view->up), y)), v3(view->forward)));
}

void nbdemo_render_samples(const nbdemo_scene *scene, const nbdemo_view *view, int32_t samples, nbdemo_rng *rng,
                           float *position, float *motion, uint16_t *normal, uint16_t *diffuse, float *radiance,
                           int32_t *centre_object) {
    const size_t crop = (size_t)view->crop, S = (size_t)samples, plane = crop * crop * S;
    const vec o = v3(view->position);
    for (size_t h = 0; h < crop; h++) {
        for (size_t w = 0; w < crop; w++) {
            for (size_t s = 0; s < S; s++) {
                double row = view->offset_row + (double)h + nbdemo_rng_uniform(rng);
                double col = view->offset_col + (double)w + nbdemo_rng_uniform(rng);
                double u1 = nbdemo_rng_uniform(rng), u2 = nbdemo_rng_uniform(rng);
                sample_result r = trace(scene, o, primary_direction(view, row, col), u1, u2);
                size_t i = (h * crop + w) * S + s;
                const double p[3] = {r.position.x, r.position.y, r.position.z};
                const double n[3] = {r.normal.x, r.normal.y, r.normal.z};
                const double a[3] = {r.albedo.x, r.albedo.y, r.albedo.z};
                const double l[3] = {r.radiance.x, r.radiance.y, r.radiance.z};
                for (size_t c = 0; c < 3; c++) {
                    position[c * plane + i] = (float)p[c];
                    motion[c * plane + i] = r.object < 0 ? (float)view->sky_motion[c] : 0.0f;
                    normal[c * plane + i] = half_bits((float)n[c]);
                    diffuse[c * plane + i] = half_bits((float)a[c]);
                    radiance[c * plane + i] = (float)l[c];
                }
                if (h == crop / 2 && w == crop / 2 && s == 0) *centre_object = r.object;
            }
        }
    }
}

void nbdemo_render_reference(const nbdemo_scene *scene, const nbdemo_view *view, int32_t count, nbdemo_rng *rng,
                             float *reference) {
    const size_t crop = (size_t)view->crop, plane = crop * crop;
    const vec o = v3(view->position);
    for (size_t h = 0; h < crop; h++) {
        for (size_t w = 0; w < crop; w++) {
            vec sum = {0, 0, 0};
            for (int32_t k = 0; k < count; k++) {
                double row = view->offset_row + (double)h + nbdemo_rng_uniform(rng);
                double col = view->offset_col + (double)w + nbdemo_rng_uniform(rng);
                double u1 = nbdemo_rng_uniform(rng), u2 = nbdemo_rng_uniform(rng);
                sum = add(sum, trace(scene, o, primary_direction(view, row, col), u1, u2).radiance);
            }
            double inverse = count > 0 ? 1.0 / count : 0.0;
            reference[0 * plane + h * crop + w] = (float)(sum.x * inverse);
            reference[1 * plane + h * crop + w] = (float)(sum.y * inverse);
            reference[2 * plane + h * crop + w] = (float)(sum.z * inverse);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// RGBE

/// numpy's float32 -> uint8 cast on x86-64 and aarch64 for the values that occur here (NaN -> 0,
/// fractions truncated, the low 8 bits kept).
static inline uint8_t to_u8(float x) {
    if (!(x == x) || x <= -2147483648.0f || x >= 2147483648.0f) return 0;
    return (uint8_t)(int32_t)x;
}

void nbdemo_compress_rgbe(const float *color, size_t n, nbdemo_rng *rng, uint8_t *out, float exposure[2]) {
    // log_radiance = log(color[color > 0]); log is increasing, so min/max of the log is the log of min/max.
    float lowest = INFINITY, highest = 0;
    for (size_t i = 0; i < 3 * n; i++) {
        float c = color[i];
        if (c > 0) {
            if (c < lowest) lowest = c;
            if (c > highest) highest = c;
        }
    }
    if (highest == 0) {
        memset(out, 0, 4 * n);
        exposure[0] = exposure[1] = 0;
        return;
    }
    const float min_exp = logf(lowest), max_exp = logf(highest);
    const float range = max_exp - min_exp;
    uint8_t *e_channel = out + 3 * n;
    for (size_t i = 0; i < n; i++) {
        float brightest = fmaxf(fmaxf(color[i], color[n + i]), color[2 * n + i]);
        // np.minimum((log(brightest) - min_exp) / (max_exp - min_exp) * 256, 255).astype(uint8); -inf (zero
        // radiance) becomes 0, as numpy's cast gives on x86-64 and aarch64.
        float scaled = brightest > 0 ? (logf(brightest) - min_exp) / range * 256.0f : 0.0f;
        e_channel[i] = to_u8(scaled > 255.0f ? 255.0f : scaled);
    }
    for (size_t c = 0; c < 3; c++) {
        for (size_t i = 0; i < n; i++) {
            // exponent = exp(((e + 1) / 256) * (max_exp - min_exp) + min_exp), all float32
            float exponent = expf((((float)e_channel[i] + 1.0f) / 256.0f) * range + min_exp);
            float rgb_float = (color[c * n + i] / exponent) * 255.0f;
            uint8_t rgb = to_u8(rgb_float);
            // rgb += (rgb_float - rgb) > random(): float32 difference compared with a float64 uniform; uint8 wraps
            if ((double)(rgb_float - (float)rgb) > nbdemo_rng_uniform(rng)) rgb = (uint8_t)(rgb + 1);
            out[c * n + i] = rgb;
        }
    }
    exposure[0] = min_exp;
    exposure[1] = max_exp;
}

void nbdemo_group_samples(const void *source, void *destination, size_t rows, size_t samples, size_t group,
                          size_t item_size) {
    const uint8_t *from = source;
    uint8_t *to = destination;
    size_t groups = (samples + group - 1) / group;
    memset(to, 0, groups * rows * group * item_size);
    for (size_t g = 0; g < groups; g++) {
        size_t first = g * group, count = samples - first < group ? samples - first : group;
        for (size_t r = 0; r < rows; r++) {
            memcpy(to + ((g * rows + r) * group) * item_size, from + (r * samples + first) * item_size,
                   count * item_size);
        }
    }
}
