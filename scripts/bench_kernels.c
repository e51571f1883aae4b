// Kernel-only benchmark of the decode kernels' walks, for tuning on shared machines: the full decode
// benchmark (`nb-serve bench --decode-only`) mixes decompression, page cache and other tenants' memory
// traffic into every round, which hides 10-30% kernel changes; this times one kernel call on data already
// in memory, hundreds of times, keeping the fastest, beside a memset of the same output.
//
// Built and run by scripts/bench_kernels.sh: the float16 copy kernel (`diffuse`: 3 channels, two chunks
// of 4 samples, 256 × 256) in the identity walk and in the two kinds of transposing walk.
#include "decode_kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    enum { n = 256, samples = 4, channels = 3 };
    const int repetitions = argc > 1 ? atoi(argv[1]) : 300;
    const size_t slab_bytes = (size_t)channels * n * n * samples * 2;
    // The decoder's scratch buffers are 1088 bytes apart modulo a page; so are these.
    uint16_t *source = aligned_alloc(4096, 2 * slab_bytes + 4096);
    for (size_t k = 0; k < slab_bytes + 2048; k++) source[k] = (uint16_t)((k * 2654435761u) >> 20) & 0x3bff;  // finite halves
    const size_t out_bytes = (size_t)channels * n * n * 8 * sizeof(float);
    float *out = aligned_alloc(4096, out_bytes);
    memset(out, 0, out_bytes);
    const nb_slab slabs[2] = {
        {source, n * n * samples, samples, 0, samples},
        {(const char *)source + slab_bytes + 1088, n * n * samples, samples, samples, samples},
    };
    const nb_plane plane = {out, n * n * 8, 8};
    const struct { const char *name; nb_walk walk; } walks[] = {
        {"identity (orientation 7)", {n, 0, n, 1, 0}},
        {"transposed (orientation 0)", {n, 0, 1, n, 1}},
        {"transposed, flipped (orientation 3)", {n, n * n - 1, -1, -n, 1}},
    };
    enum { walk_count = sizeof walks / sizeof walks[0] };
    double best[walk_count], best_memset = 1e9;
    for (int k = 0; k < walk_count; k++) best[k] = 1e9;
    for (int r = 0; r < repetitions; r++) {
        for (int k = 0; k < walk_count; k++) {
            const double start = now();
            nb_copy(slabs, 2, NB_ELEMENT_F16, channels, plane, walks[k].walk);
            const double t = now() - start;
            if (t < best[k]) best[k] = t;
        }
        const double start = now();
        memset(out, r, out_bytes);
        const double t = now() - start;
        if (t < best_memset) best_memset = t;
    }
    printf("nb_copy float16, 3 x 256 x 256 x 8 samples, fastest of %d:\n", repetitions);
    for (int k = 0; k < walk_count; k++) {
        printf("  %-36s %.3f ms  %.2fx identity  %.2fx memset\n", walks[k].name, best[k] * 1e3, best[k] / best[0], best[k] / best_memset);
    }
    printf("  %-36s %.3f ms\n", "memset of the output", best_memset * 1e3);
    return 0;
}
