/*
 * rng.c - numpy's np.random.default_rng(seed).permutation(n), bit for bit.
 *
 * The Python trainer shuffles every epoch with one generator seeded by the
 * task (the round); drawing the same orders here makes the board's delta the
 * Python trainer's delta on the same data. The pieces, as numpy implements
 * them: SeedSequence (pool of 4 words, hashmix/mix) -> generate_state(4,
 * uint64) -> PCG64 (XSL-RR 128/64, set_seed) -> Generator.shuffle (Fisher-
 * Yates from the end, random_interval's masked rejection on the 32-bit
 * halves of each 64-bit output). 128-bit arithmetic is done in 64-bit halves
 * (no __int128 on Cortex-M).
 */
#include "ml_internal.h"

#define INIT_A 0x43b0d7e5u
#define MULT_A 0x931e8875u
#define INIT_B 0x8b51f9ddu
#define MULT_B 0x58f38dedu
#define MIX_MULT_L 0xca01f9ddu
#define MIX_MULT_R 0x4973f715u
#define XSHIFT 16

static uint32_t hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= MULT_A;
    value *= *hash_const;
    value ^= value >> XSHIFT;
    return value;
}

static uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = MIX_MULT_L * x - MIX_MULT_R * y;
    return r ^ (r >> XSHIFT);
}

/* 64x64 -> 128 multiply. */
static void mul64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo) {
    uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    *lo = (mid << 32) | (p00 & 0xffffffffu);
    *hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

#define PCG_MULT_HI 2549297995355413924ULL
#define PCG_MULT_LO 4865540595714422341ULL

static void step(ml_pcg64 *r) {
    uint64_t hi, lo, carry;
    mul64(r->state_lo, PCG_MULT_LO, &hi, &lo);
    hi += r->state_hi * PCG_MULT_LO + r->state_lo * PCG_MULT_HI;
    lo += r->inc_lo;
    carry = lo < r->inc_lo;
    r->state_lo = lo;
    r->state_hi = hi + r->inc_hi + carry;
}

void ml_pcg64_seed(ml_pcg64 *r, uint32_t seed) {
    uint32_t pool[4], hash_const = INIT_A, words[8];
    uint64_t val[4], lo;
    int i, j;
    /* SeedSequence(seed).mix_entropy: the entropy is the one 32-bit word `seed`. */
    for (i = 0; i < 4; i++) pool[i] = hashmix(i == 0 ? seed : 0u, &hash_const);
    for (i = 0; i < 4; i++)
        for (j = 0; j < 4; j++)
            if (i != j) pool[j] = mix(pool[j], hashmix(pool[i], &hash_const));
    /* generate_state(4, uint64): 8 words, viewed little-endian as 4 uint64. */
    hash_const = INIT_B;
    for (i = 0; i < 8; i++) {
        uint32_t v = pool[i % 4];
        v ^= hash_const;
        hash_const *= MULT_B;
        v *= hash_const;
        v ^= v >> XSHIFT;
        words[i] = v;
    }
    for (i = 0; i < 4; i++) val[i] = (uint64_t)words[2 * i] | ((uint64_t)words[2 * i + 1] << 32);
    /* pcg64_set_seed: state seed = val[0]:val[1], increment = (val[2]:val[3] << 1) | 1. */
    r->state_hi = 0;
    r->state_lo = 0;
    r->inc_hi = (val[2] << 1) | (val[3] >> 63);
    r->inc_lo = (val[3] << 1) | 1u;
    step(r);
    lo = r->state_lo + val[1];
    r->state_hi = r->state_hi + val[0] + (lo < val[1]);
    r->state_lo = lo;
    step(r);
    r->has_uint32 = 0;
    r->uinteger = 0;
}

uint64_t ml_pcg64_next64(ml_pcg64 *r) {
    uint64_t x;
    unsigned rot;
    step(r);
    x = r->state_hi ^ r->state_lo;
    rot = (unsigned)(r->state_hi >> 58);
    return (x >> rot) | (x << ((64u - rot) & 63u));
}

static uint32_t next32(ml_pcg64 *r) {
    uint64_t next;
    if (r->has_uint32) {
        r->has_uint32 = 0;
        return r->uinteger;
    }
    next = ml_pcg64_next64(r);
    r->has_uint32 = 1;
    r->uinteger = (uint32_t)(next >> 32);
    return (uint32_t)(next & 0xffffffffu);
}

static uint32_t interval(ml_pcg64 *r, uint32_t max) {
    uint32_t mask = max, v;
    if (max == 0) return 0;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    while ((v = (next32(r) & mask)) > max) {
    }
    return v;
}

void ml_pcg64_permutation(ml_pcg64 *r, uint32_t *out, uint32_t n) {
    uint32_t i;
    for (i = 0; i < n; i++) out[i] = i;
    for (i = n; i-- > 1;) {
        uint32_t j = interval(r, i), t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}
