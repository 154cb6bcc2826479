/* The two loops of full-catalogue ranking that numpy does slowly (agentrec.core.ranking; loaded by
 * agentrec.core.native, which compiles this file once per machine with -O3 -march=native).
 *
 * scan_bf16: one pass over a bf16 product buffer. Per row, count the values at or above `hi` and list the
 * columns of the values in [lo, hi) (the band, which is then scored in float64). bf16 values are compared
 * through a 16-bit key that orders like the values: a positive bit pattern gets 0x8000 added, a negative one
 * is inverted (0xFFFF - b), so -inf < ... < -0 < +0 < ... < +inf, and a NaN sorts beyond the infinity of its
 * sign, as the numpy path compares the bits. `lo_key` and `hi_key` are keys of the thresholds.
 *
 * exact_pairs: R(q, e), the float64 dot product of an fp32 item vector with a float64 query (an fp32 query
 * widened), summed left to right: s = q0 e0, then s = s + qk ek for k = 1 .. d-1. Each product is exact in
 * float64 (24 + 24 significant bits), so the value is fixed by that order alone: the same in numpy
 * (ranking.ExactScores), with or without fused multiply-adds, in any batch.
 */
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline uint16_t key_of(uint16_t b) {
    return b ^ (uint16_t)((uint16_t)((int16_t)b >> 15) | 0x8000u);
}

/* A call's output so far: the band columns kept (`used` of room for `cap`), and the row being scanned. */
typedef struct {
    int32_t *band;
    int64_t used, cap, wide, start; /* start: where the row's band begins */
} Kept;

/* Keep the columns base + (each set bit of `hits`). 0: go on; 1: the row's band is longer than `wide` (it is
 * not kept); 2: `band` is full (the call stops before this row). */
static inline int keep(Kept *k, uint32_t hits, int64_t base) {
    while (hits) {
        if (k->used - k->start == k->wide) return 1;
        if (k->used == k->cap) return 2;
        k->band[k->used++] = (int32_t)(base + __builtin_ctz(hits));
        hits &= hits - 1;
    }
    return 0;
}

/* The row at position i is done: its count, and its band (or -1 for a band longer than `wide`, dropped). */
static inline void finish(Kept *k, int64_t i, int over, int64_t count, int64_t *above, int64_t *band_start,
                          int64_t *band_count) {
    above[i] = over ? 0 : count;
    band_start[i] = k->start;
    band_count[i] = over ? -1 : k->used - k->start;
    if (over) k->used = k->start;
}

/* The rows row_index[first..n) of the buffer (row r starts at buf + r * stride, `width` values). For the row at
 * position i: above[i] = #{key >= hi_key[i]}; the columns with lo_key[i] <= key < hi_key[i] (its band) are
 * appended to `band` (room for `cap`): band[band_start[i] .. band_start[i] + band_count[i]). A band longer
 * than `wide` is not kept: band_count[i] = -1 (and above[i] = 0). Returns the first position not done: n when
 * all are, less when `band` is full (the caller takes what is done and calls again from there; cap > wide
 * ensures that each call finishes at least one row). */
int64_t scan_bf16(const uint16_t *buf, int64_t stride, int64_t width, const int64_t *row_index, int64_t first,
                  int64_t n, const uint16_t *lo_key, const uint16_t *hi_key, int64_t wide, int64_t *above,
                  int64_t *band_start, int64_t *band_count, int32_t *band, int64_t cap) {
    Kept k = {band, 0, cap, wide, 0};
    for (int64_t i = first; i < n; i++) {
        const uint16_t *row = buf + row_index[i] * stride;
        const uint16_t lo = lo_key[i], hi = hi_key[i];
        const uint16_t span = (uint16_t)(hi - lo); /* in the band: (uint16_t)(key - lo) < span (lo <= hi) */
        int64_t count = 0, s = 0;
        int status = 0;
        k.start = k.used;
#if defined(__AVX512BW__)
        const __m512i sign = _mm512_set1_epi16((short)0x8000), lo_v = _mm512_set1_epi16((short)lo);
        const __m512i hi_v = _mm512_set1_epi16((short)hi), span_v = _mm512_set1_epi16((short)span);
        for (; s + 32 <= width && !status; s += 32) {
            const __m512i b = _mm512_loadu_si512((const void *)(row + s));
            const __m512i key = _mm512_xor_si512(b, _mm512_or_si512(_mm512_srai_epi16(b, 15), sign));
            count += __builtin_popcount((uint32_t)_mm512_cmpge_epu16_mask(key, hi_v));
            status = keep(&k, (uint32_t)_mm512_cmplt_epu16_mask(_mm512_sub_epi16(key, lo_v), span_v), s);
        }
#endif
        for (; s < width && !status; s++) {
            const uint16_t key = key_of(row[s]);
            count += key >= hi;
            status = keep(&k, (uint16_t)(key - lo) < span, s);
        }
        if (status == 2) return i;
        finish(&k, i, status, count, above, band_start, band_count);
    }
    return n;
}

/* scan_bf16 for an fp32 buffer: the same outputs, the values compared as floats with `lo` and `hi` (a NaN is
 * neither at or above `hi` nor in the band: below, as numpy compares it). */
int64_t scan_f32(const float *buf, int64_t stride, int64_t width, const int64_t *row_index, int64_t first,
                 int64_t n, const float *lo_value, const float *hi_value, int64_t wide, int64_t *above,
                 int64_t *band_start, int64_t *band_count, int32_t *band, int64_t cap) {
    Kept k = {band, 0, cap, wide, 0};
    for (int64_t i = first; i < n; i++) {
        const float *row = buf + row_index[i] * stride;
        const float lo = lo_value[i], hi = hi_value[i];
        int64_t count = 0, s = 0;
        int status = 0;
        k.start = k.used;
#if defined(__AVX512F__)
        const __m512 lo_v = _mm512_set1_ps(lo), hi_v = _mm512_set1_ps(hi);
        for (; s + 16 <= width && !status; s += 16) {
            const __m512 x = _mm512_loadu_ps(row + s);
            count += __builtin_popcount((uint32_t)_mm512_cmp_ps_mask(x, hi_v, _CMP_GE_OQ));
            status = keep(&k, (uint32_t)_mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(x, lo_v, _CMP_GE_OQ), x, hi_v,
                                                                _CMP_LT_OQ), s);
        }
#endif
        for (; s < width && !status; s++) {
            count += row[s] >= hi;
            status = keep(&k, row[s] >= lo && row[s] < hi, s);
        }
        if (status == 2) return i;
        finish(&k, i, status, count, above, band_start, band_count);
    }
    return n;
}

#define LANES 8  /* pairs summed side by side: independent chains of additions */
#define AHEAD 32 /* pairs ahead whose item rows are prefetched (a gather from a large table waits on memory) */

/* out[p] = R(q[rows[p]], table[items[p]]) for p < n; q is (., d) float64 with `q_stride` values per row, table
 * (., d) fp32. */
void exact_pairs(const float *table, int64_t d, const double *q, int64_t q_stride, const int64_t *rows,
                 const int64_t *items, int64_t n, double *out) {
    int64_t p = 0;
    if (d < 1) {
        for (; p < n; p++) out[p] = 0.0;
        return;
    }
    const int64_t row_bytes = d * (int64_t)sizeof(float);
    for (; p + LANES <= n; p += LANES) {
        /* the item rows of the pairs AHEAD further on: their cache lines are on their way while these sum */
        if (p + AHEAD + LANES <= n)
            for (int l = 0; l < LANES; l++) {
                const char *next = (const char *)(table + items[p + AHEAD + l] * d);
                for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(next + b, 0, 0);
            }
        const float *e[LANES];
        const double *x[LANES];
        double s[LANES];
        for (int l = 0; l < LANES; l++) {
            e[l] = table + items[p + l] * d;
            x[l] = q + rows[p + l] * q_stride;
            s[l] = x[l][0] * (double)e[l][0];
        }
        for (int64_t k = 1; k < d; k++)
            for (int l = 0; l < LANES; l++) s[l] += x[l][k] * (double)e[l][k];
        for (int l = 0; l < LANES; l++) out[p + l] = s[l];
    }
    for (; p < n; p++) {
        const float *e = table + items[p] * d;
        const double *x = q + rows[p] * q_stride;
        double s = x[0] * (double)e[0];
        for (int64_t k = 1; k < d; k++) s += x[k] * (double)e[k];
        out[p] = s;
    }
}
