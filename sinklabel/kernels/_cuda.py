"""CUDA C source of the CuPy backend's fused kernels, compiled by NVRTC on first use.

``sink_sweep<S, VEC, NV, ROWS, THREADS, PREFETCH, MERGE, POLY, STAGES, WEIGHTED>``: one block
keeps the accumulators of all K labels in registers (thread ``t`` owns the ``NV`` packs of
``VEC`` adjacent columns starting at ``(j * THREADS + t) * VEC``) and walks its share of the
rows, ``ROWS`` at a time: each score is read once, ``z = scale * x + coef`` in base-2 units,
row max and row sum by warp shuffles and one shared-memory exchange, then
``acc += exp2(z - max) / sum``. With ``PREFETCH`` the next tile's raw scores are loaded into
registers before this tile's arithmetic, so loads stay in flight through the two barriers per
tile (without it a block waits for memory once per tile); with ``STAGES`` instead, a ring of
row tiles in shared memory is filled by asynchronous copies up to ``STAGES - 1`` tiles ahead
(see ``Ring``). Each block writes its K sums to its own row of a partial-sum buffer, and the
sum of its rows' log-sum-exps (``max + log2(sum)`` per row, one log2 per row, accumulated in
float64 by thread 0, converted to natural-log units at the end) to its own entry of a second
buffer; both are reduced in a fixed order on the host side: no atomics, so results repeat
exactly.

``WEIGHTED`` (16-bit scores read from the ring only): each row is shifted by an upper bound
of its maximum, ``scale * xm + cm`` (``xm`` its largest raw score, taken on packed halves;
``cm`` the largest coefficient, once per block), instead of the maximum itself, and the
coefficients become column weights ``w = exp2(coef - cm)`` in registers: per score
``q = exp2(scale * x - scale * xm)``, row sum ``sum(q * w)``, ``acc += q / sum``, and the
block's partials are ``acc * w``. That saves the float max and two adds per score; it
equals the exact kernel up to rounding while the coefficients' spread is at most 64 (the
sum stays above 2^-64, the underflowing terms below 2^-62 of it), which the host checks
(``fits_column_weights``) before launching it, with ``scale`` > 0.

``sink_best<S>``: one warp per row; row max of ``scale * x + coef`` rounded like NumPy (no
fused multiply-add), its first arg-max, and NaN when the row holds one.

``sink_column_sums<A>``: the float64 column sums of the (blocks, K) partial sums and the sum of
the blocks' log-sum-exps, in a fixed order (CuPy's ``sum(axis=0)`` took 0.11 ms for
4224 x 3000 on an H200, and the log-sum-exps' ``sum()`` two more launches).

``S`` is the storage type: float, double, or ``half_bits`` (float16 as raw bits, converted
by one PTX instruction, so no CUDA headers are needed).
"""

SOURCE = r"""
typedef unsigned short half_bits;

template <typename S> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(half_bits v) {
    float out;
    asm("cvt.f32.f16 %0, %1;" : "=f"(out) : "h"(v));
    return out;
}

__device__ __forceinline__ float exp2_fast(float v) {
    float out;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(out) : "f"(v));
    return out;
}
__device__ __forceinline__ double exp2_fast(double v) { return exp2(v); }

// log2, once per row for its log-sum-exp (0 gives -inf, like log2).
__device__ __forceinline__ float log2_fast(float v) {
    float out;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(out) : "f"(v));
    return out;
}
__device__ __forceinline__ double log2_fast(double v) { return log2(v); }

// 2^v by FMAs alone, to move some of the exponentials off the special-function unit: v is
// split into a rounded integer i (the 1.5 * 2^23 trick) and f in [-0.5, 0.5], 2^f is a
// degree-5 fit (relative error 2.3e-7), and i goes into the exponent bits. Like
// ex2.approx.ftz, v < -126 (and -inf) gives exactly 0.
__device__ __forceinline__ float exp2_poly(float v) {
    const float u = fmaxf(v, -127.0f);
    const float t = u + 12582912.0f;
    const float f = u - (t - 12582912.0f);
    float p = 1.326887053437531e-3f;
    p = fmaf(p, f, 9.67547670006752e-3f);
    p = fmaf(p, f, 5.5507369339466095e-2f);
    p = fmaf(p, f, 0.24022121727466583f);
    p = fmaf(p, f, 0.6931469440460205f);
    p = fmaf(p, f, 1.0000001192092896f);
    const float out = __uint_as_float(__float_as_uint(p) + (__float_as_uint(t) << 23));
    return v < -126.0f ? 0.0f : out;
}
__device__ __forceinline__ double exp2_poly(double v) { return exp2(v); }

// Element e of a thread's row share: every POLY-th one (none when POLY is 0) by polynomial.
template <int POLY, typename A> __device__ __forceinline__ A exp2_mixed(A v, int e) {
    return POLY > 0 && e % POLY == POLY - 1 ? exp2_poly(v) : exp2_fast(v);
}

// 1 / v correctly rounded, as the division gives, without its call to a slow path.
__device__ __forceinline__ float reciprocal(float v) { return __frcp_rn(v); }
__device__ __forceinline__ double reciprocal(double v) { return __drcp_rn(v); }

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000LL);
}

template <typename S, int VEC> struct alignas(sizeof(S) * VEC) Pack { S v[VEC]; };

// PREFETCH == 2 keeps prefetched 16-bit scores as whole 32-bit words: copying a Pack of
// 16-bit members costs two byte permutes (PRMT) per word in SASS; a word's halves are
// converted directly (cvt.f32.f16 on the half registers of a mov.b32 split).
template <int N> struct alignas(4 * N) HalfWords { unsigned w[N]; };
template <typename S, int VEC, int PREFETCH> struct RawPack { typedef Pack<S, VEC> type; };
template <int VEC> struct RawPack<half_bits, VEC, 2> { typedef HalfWords<VEC / 2> type; };

template <typename S, int VEC> __device__ __forceinline__ typename Acc<S>::type element(
    const Pack<S, VEC>& p, int v) { return to_acc(p.v[v]); }
template <int N> __device__ __forceinline__ float element(const HalfWords<N>& p, int v) {
    float out;
    if (v & 1) {
        asm("{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, hi;}"
            : "=f"(out) : "r"(p.w[v / 2]));
    } else {
        asm("{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.f32.f16 %0, lo;}"
            : "=f"(out) : "r"(p.w[v / 2]));
    }
    return out;
}

__device__ __forceinline__ float larger(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double larger(double a, double b) { return fmax(a, b); }

template <typename A> __device__ __forceinline__ A warp_max(A v) {
    for (int d = 16; d > 0; d >>= 1) v = larger(v, __shfl_xor_sync(0xffffffffu, v, d));
    return v;
}
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
    return v;
}

template <typename S, int VEC> __device__ __forceinline__ bool load_pack(
    Pack<S, VEC>& out, const S* __restrict__ x, long long row, int col0, long long n_rows,
    long long stride_row, long long stride_col, int n_cols)
{
    if (row >= n_rows || col0 >= n_cols) return false;
    const S* rp = x + row * stride_row;
    if (VEC > 1) {
        out = *reinterpret_cast<const Pack<S, VEC>*>(rp + col0);
    } else {
        out.v[0] = rp[col0 * stride_col];
    }
    return true;
}

template <typename S, int VEC, int N> __device__ __forceinline__ bool load_pack(
    HalfWords<N>& out, const S* __restrict__ x, long long row, int col0, long long n_rows,
    long long stride_row, long long stride_col, int n_cols)
{
    if (row >= n_rows || col0 >= n_cols) return false;
    out = *reinterpret_cast<const HalfWords<N>*>(x + row * stride_row + col0);
    return true;
}

// STAGES > 0: a ring of STAGES row tiles in shared memory, filled by asynchronous copies
// (cp.async) STAGES - 1 tiles ahead of the arithmetic, so more bytes are in flight than the
// registers of a prefetch can hold. Each thread copies and later reads only its own packs,
// so no barrier guards the ring: cp.async.wait_group makes a thread's own copies visible to
// it. Slots hold 16-bit scores as 32-bit words (see HalfWords). Shared memory is addressed
// directly (32-bit addresses), and packs past the matrix are zero-filled rather than
// skipped (never read as scores), so the copies need no branches.
template <typename Slot, int NV, int ROWS, int THREADS, int STAGES> struct Ring {
    Slot slot[STAGES][ROWS][NV][THREADS];
};
template <typename Slot, int NV, int ROWS, int THREADS> struct Ring<Slot, NV, ROWS, THREADS, 0> {
    Slot slot[1][1][1][1];
};

__device__ __forceinline__ unsigned shared_address(const void* p) {
    unsigned address;
    asm("{ .reg .u64 p; cvta.to.shared.u64 p, %1; cvt.u32.u64 %0, p; }"
        : "=r"(address) : "l"(p));
    return address;
}

// Copy BYTES (4, 8 or 16) from global memory; only the first ``valid`` bytes are read, the
// rest of the slot is zero-filled.
template <int BYTES> __device__ __forceinline__ void copy_async(unsigned dst, const void* src,
                                                                 int valid) {
    if constexpr (BYTES == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                     :: "r"(dst), "l"(src), "r"(valid) : "memory");
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;"
                     :: "r"(dst), "l"(src), "n"(BYTES), "r"(valid) : "memory");
    }
}

// Start copying this thread's packs of row tile ``tile`` to the stage at shared address
// ``stage`` (its pack (r, j) at offset ((r * NV + j) * THREADS) * sizeof(P)), as one commit
// group.
template <typename P, typename S, int VEC, int NV, int ROWS, int THREADS>
__device__ __forceinline__ void copy_tile_async(unsigned stage, const S* __restrict__ x,
                                                long long tile, long long n_rows,
                                                long long stride_row, int n_cols, int t)
{
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = tile * ROWS + r;
        const S* rp = x + (row < n_rows ? row : 0) * stride_row;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int col0 = (j * THREADS + t) * VEC;
            const bool here = row < n_rows && col0 < n_cols;
            copy_async<sizeof(P)>(stage + (r * NV + j) * THREADS * sizeof(P),
                                  rp + (col0 < n_cols ? col0 : 0), here ? sizeof(P) : 0);
        }
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// Wait until at most ``PENDING`` of this thread's commit groups are still in flight.
template <int PENDING> __device__ __forceinline__ void wait_async() {
    asm volatile("cp.async.wait_group %0;" :: "n"(PENDING) : "memory");
}

// One pack from shared memory as one vector load (a plain struct copy became 32-bit loads).
template <typename P> __device__ __forceinline__ P load_shared(unsigned address) {
    union { P pack; unsigned w[sizeof(P) / 4]; } out;
    if constexpr (sizeof(P) == 16) {
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(out.w[0]), "=r"(out.w[1]), "=r"(out.w[2]), "=r"(out.w[3])
                     : "r"(address));
    } else if constexpr (sizeof(P) == 8) {
        asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];"
                     : "=r"(out.w[0]), "=r"(out.w[1]) : "r"(address));
    } else {
        asm volatile("ld.shared.u32 %0, [%1];" : "=r"(out.w[0]) : "r"(address));
    }
    return out.pack;
}

// exp2(z - top) in place over this thread's scores of one row, and their sum over the warp.
template <int POLY, typename A, int NV, int VEC>
__device__ __forceinline__ A exp2_row(A (&z)[NV][VEC], A top) {
    A s = 0;
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
            z[j][v] = exp2_mixed<POLY>(z[j][v] - top, j * VEC + v);
            s += z[j][v];
        }
    return warp_sum(s);
}

// MERGE's one barrier per tile: each warp takes exp2 against its own row max and sums it,
// lane 0 posts the warp's (max, sum), and after the barrier lane l merges warp l % WARPS's
// pair (rescaled to the row max) in a log2(WARPS)-step butterfly, so every lane ends with the
// row's max and sum; ``lse`` gets each row's log-sum-exp in base-2 units. ``exchange`` is
// this tile's half of a buffer alternating by tile: a warp writes the next tile's pairs only
// after the barrier that every warp reaches after reading.
template <typename A, int VEC, int NV, int ROWS, int WARPS, int POLY>
__device__ __forceinline__ void merge_rows(A (&z)[ROWS][NV][VEC], A (&weight)[ROWS],
                                           A (&lse)[ROWS], A (*exchange)[ROWS][WARPS],
                                           int warp, int lane)
{
    A own[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        A m = neg_inf<A>();
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int v = 0; v < VEC; ++v) m = larger(m, z[r][j][v]);
        m = warp_max(m);
        own[r] = m;
        const A s = exp2_row<POLY>(z[r], m == neg_inf<A>() ? A(0) : m);
        if (lane == 0) {
            exchange[0][r][warp] = m;
            exchange[1][r][warp] = s;
        }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const A warp_top = exchange[0][r][lane % WARPS];
        A m = warp_top;
#pragma unroll
        for (int d = WARPS / 2; d > 0; d >>= 1) m = larger(m, __shfl_xor_sync(0xffffffffu, m, d));
        const A top = m == neg_inf<A>() ? A(0) : m;
        A s = exchange[1][r][lane % WARPS] * exp2_fast(warp_top - top);
#pragma unroll
        for (int d = WARPS / 2; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
        weight[r] = s > 0 ? exp2_fast(own[r] - top) * reciprocal(s) : A(0);
        lse[r] = top + log2_fast(s);
    }
}

__device__ __forceinline__ unsigned max_f16x2(unsigned a, unsigned b) {
    unsigned out;
    asm("max.f16x2 %0, %1, %2;" : "=r"(out) : "r"(a), "r"(b));
    return out;
}

// The largest of a thread's 16-bit scores of one row, by max.f16x2 on whole words (half the
// instructions of float maxima): N independent chains over the packs, then the N words
// (a power of 2) by halves; like fmaxf, a NaN is skipped. Needs sm_80, as the ring does.
// (A pairwise tree over all NV * N words was not unrolled for NV = 6: local memory.)
template <int NV, int N> __device__ __forceinline__ float half_max(const HalfWords<N> (&p)[NV]) {
    unsigned m[N];
#pragma unroll
    for (int i = 0; i < N; ++i) m[i] = p[0].w[i];
#pragma unroll
    for (int j = 1; j < NV; ++j)
#pragma unroll
        for (int i = 0; i < N; ++i) m[i] = max_f16x2(m[i], p[j].w[i]);
#pragma unroll
    for (int h = N / 2; h > 0; h /= 2)
#pragma unroll
        for (int i = 0; i < h; ++i) m[i] = max_f16x2(m[i], m[i + h]);
    float out;
    asm("{.reg .b16 lo, hi; mov.b32 {lo, hi}, %1; max.f16 lo, lo, hi; cvt.f32.f16 %0, lo;}"
        : "=f"(out) : "r"(m[0]));
    return out;
}

// WEIGHTED's two barriers per tile: row r is shifted by the bound scale * xm + cm of its
// largest score (xm: the largest raw score, cm: the largest coefficient) rather than by
// the exact maximum of z, so a score costs no float max and no subtraction: z gets
// q = 2^(scale * x - scale * xm), the row sum is that of q * w (w = 2^(coef - cm), the
// thread's column weights), sum[r] (on every thread), weight[r] its reciprocal, and
// shift[r] + cm + log2(sum[r]) is the row's log-sum-exp in base-2 units. Words of packs past
// the matrix must hold -inf (a zero-filled word would raise the max).
template <int POLY, int VEC, int NV, int ROWS, int WARPS, int N>
__device__ __forceinline__ void weighted_rows(const HalfWords<N> (&words)[ROWS][NV],
                                              const float (&w)[NV][VEC], float scale,
                                              float (&z)[ROWS][NV][VEC], float (&weight)[ROWS],
                                              float (&shift)[ROWS], float (&sum)[ROWS],
                                              float (*exchange)[ROWS][WARPS], int warp, int lane)
{
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const float m = warp_max(half_max(words[r]));
        if (lane == 0) exchange[0][r][warp] = m;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        float xm = exchange[0][r][0];
#pragma unroll
        for (int k = 1; k < WARPS; ++k) xm = larger(xm, exchange[0][r][k]);
        const float c = xm == neg_inf<float>() ? 0.0f : -__fmul_rn(xm, scale);
        float s = 0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int v = 0; v < VEC; ++v) {
                z[r][j][v] = exp2_mixed<POLY>(fmaf(element(words[r][j], v), scale, c),
                                              j * VEC + v);
                s = fmaf(z[r][j][v], w[j][v], s);
            }
        s = warp_sum(s);
        if (lane == 0) exchange[1][r][warp] = s;
        shift[r] = -c;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        float s = 0;
#pragma unroll
        for (int k = 0; k < WARPS; ++k) s += exchange[1][r][k];
        weight[r] = s > 0 ? reciprocal(s) : 0.0f;
        sum[r] = s;
    }
}

template <typename S, int VEC, int NV, int ROWS, int THREADS, int PREFETCH, int MERGE = 0,
          int POLY = 0, int STAGES = 0, int WEIGHTED = 0>
__global__ void __launch_bounds__(THREADS) sink_sweep(
    const S* __restrict__ x, const typename Acc<S>::type* __restrict__ coef,
    typename Acc<S>::type* __restrict__ part, double* __restrict__ lse_part, long long n_rows,
    long long stride_row, long long stride_col, int n_cols)
{
    typedef typename Acc<S>::type A;
    static_assert(!WEIGHTED || (STAGES > 0 && !MERGE && sizeof(S) == 2),
                  "WEIGHTED reads 16-bit scores from the ring, with two barriers per tile");
    const int WARPS = THREADS / 32;
    __shared__ A exchange[MERGE ? 4 : 2][ROWS][WARPS];
    const int t = threadIdx.x;
    const int warp = t / 32;
    const int lane = t % 32;
    const A scale = coef[n_cols];
    A cf[NV][VEC];
    A acc[NV][VEC];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
            const int col = (j * THREADS + t) * VEC + v;
            cf[j][v] = col < n_cols ? coef[col] : neg_inf<A>();
            acc[j][v] = 0;
        }
    }
    // WEIGHTED: cf becomes the column weights 2^(coef - cm), cm the block's largest
    // coefficient (padding columns' weights are 0).
    A cm = 0;
    if constexpr (WEIGHTED) {
        A m = neg_inf<A>();
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int v = 0; v < VEC; ++v) m = larger(m, cf[j][v]);
        m = warp_max(m);
        if (lane == 0) exchange[0][0][warp] = m;
        __syncthreads();
        cm = exchange[0][0][0];
#pragma unroll
        for (int k = 1; k < WARPS; ++k) cm = larger(cm, exchange[0][0][k]);
        __syncthreads();  // the loop's first tile writes exchange[0] again
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int v = 0; v < VEC; ++v) cf[j][v] = exp2_fast(cf[j][v] - cm);
    }
    const long long n_tiles = (n_rows + ROWS - 1) / ROWS;
    // The raw scores of one tile; with PREFETCH they hold the next tile's while this one's
    // arithmetic runs, so loads stay in flight through the reductions and barriers.
    typename RawPack<S, VEC, PREFETCH>::type raw[ROWS][NV];
    bool ok[ROWS][NV];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int j = 0; j < NV; ++j)
            ok[r][j] = PREFETCH && load_pack<S, VEC>(raw[r][j], x, blockIdx.x * (long long)ROWS + r,
                                                     (j * THREADS + t) * VEC, n_rows, stride_row,
                                                     stride_col, n_cols);
    // The sum of the block's row log-sum-exps in base-2 units, kept by thread 0 in shared
    // memory: with a register held through the loop ptxas spilled more (checked for sm_90).
    __shared__ double lse_sum;
    if (t == 0) lse_sum = 0;
    // Ring slots (only used with STAGES > 0, which needs VEC > 1: 16-bit words of a pack).
    typedef typename RawPack<S, VEC, (STAGES > 0 ? 2 : 0)>::type Slot;
    __shared__ Ring<Slot, NV, ROWS, THREADS, STAGES> ring;
    const unsigned stage_bytes = ROWS * NV * THREADS * sizeof(Slot);
    unsigned ring_start = 0, reading = 0, refilling = 0;
    if constexpr (STAGES > 0) {
        ring_start = shared_address(&ring.slot[0][0][0][t]);
        reading = ring_start;
        refilling = ring_start + (STAGES - 1) * stage_bytes;
#pragma unroll
        for (int s = 0; s + 1 < STAGES; ++s)
            copy_tile_async<Slot, S, VEC, NV, ROWS, THREADS>(
                ring_start + s * stage_bytes, x, blockIdx.x + (long long)s * gridDim.x, n_rows,
                stride_row, n_cols, t);
    }
    // WEIGHTED: whether this thread's last packs lie past the last column (only the last can,
    // NV being the fewest packs that cover a row); their zero-filled words become -inf.
    const bool past_last = ((NV - 1) * THREADS + t) * VEC >= n_cols;
    int step = 0;
    for (long long tile = blockIdx.x; tile < n_tiles; tile += gridDim.x, ++step) {
        A z[ROWS][NV][VEC];
        A top[ROWS];
        Slot words[ROWS][NV];
        if constexpr (STAGES > 0) {
            // The stage refilled here is the one read (into registers) in the previous step.
            copy_tile_async<Slot, S, VEC, NV, ROWS, THREADS>(
                refilling, x, tile + (STAGES - 1LL) * gridDim.x, n_rows, stride_row, n_cols, t);
            wait_async<STAGES - 1>();
        }
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int j = 0; j < NV; ++j) {
                if constexpr (STAGES > 0) {
                    // Packs past the matrix were zero-filled: past the last column z is
                    // 0 * scale - inf = -inf, and rows past the last get weight 0 below.
                    const Slot pk = load_shared<Slot>(reading
                                                      + (r * NV + j) * THREADS * sizeof(Slot));
                    if constexpr (WEIGHTED) {
                        words[r][j] = pk;
                        if (j == NV - 1 && past_last) {
#pragma unroll
                            for (int i = 0; i < VEC / 2; ++i) words[r][j].w[i] = 0xFC00FC00u;
                        }
                    } else {
#pragma unroll
                        for (int v = 0; v < VEC; ++v)
                            z[r][j][v] = element(pk, v) * scale + cf[j][v];
                    }
                    continue;
                }
                if (PREFETCH) {
#pragma unroll
                    for (int v = 0; v < VEC; ++v)
                        z[r][j][v] = ok[r][j] ? element(raw[r][j], v) * scale + cf[j][v]
                                              : neg_inf<A>();
                    continue;
                }
                // Without prefetch: load and convert in one step (fewer instructions,
                // which is what the 16-bit sweeps are bound by).
                const long long row = tile * ROWS + r;
                const int col0 = (j * THREADS + t) * VEC;
                if (row < n_rows && col0 < n_cols) {
                    const S* rp = x + row * stride_row;
                    if (VEC > 1) {
                        const Pack<S, VEC> pk = *reinterpret_cast<const Pack<S, VEC>*>(rp + col0);
#pragma unroll
                        for (int v = 0; v < VEC; ++v)
                            z[r][j][v] = to_acc(pk.v[v]) * scale + cf[j][v];
                    } else {
                        z[r][j][0] = to_acc(rp[col0 * stride_col]) * scale + cf[j][0];
                    }
                } else {
#pragma unroll
                    for (int v = 0; v < VEC; ++v) z[r][j][v] = neg_inf<A>();
                }
            }
        if (PREFETCH) {
            const long long ahead = (tile + gridDim.x) * ROWS;
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
#pragma unroll
                for (int j = 0; j < NV; ++j)
                    ok[r][j] = load_pack<S, VEC>(raw[r][j], x, ahead + r, (j * THREADS + t) * VEC,
                                                 n_rows, stride_row, stride_col, n_cols);
        }
        A weight[ROWS];
        if constexpr (WEIGHTED) {
            A shift[ROWS], sum[ROWS];
            weighted_rows<POLY, VEC, NV, ROWS, WARPS>(words, cf, scale, z, weight, shift, sum,
                                                      exchange, warp, lane);
            if (t == 0) {
#pragma unroll
                for (int r = 0; r < ROWS; ++r)
                    if (tile * ROWS + r < n_rows)
                        lse_sum += (double)shift[r] + (double)cm + (double)log2_fast(sum[r]);
            }
        } else if (MERGE) {
            A lse[ROWS];
            merge_rows<A, VEC, NV, ROWS, WARPS, POLY>(z, weight, lse, exchange + 2 * (step & 1),
                                                      warp, lane);
            if (t == 0) {
#pragma unroll
                for (int r = 0; r < ROWS; ++r)
                    if (tile * ROWS + r < n_rows) lse_sum += (double)lse[r];
            }
        } else {
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                A m = neg_inf<A>();
#pragma unroll
                for (int j = 0; j < NV; ++j)
#pragma unroll
                    for (int v = 0; v < VEC; ++v) m = larger(m, z[r][j][v]);
                m = warp_max(m);
                if (lane == 0) exchange[0][r][warp] = m;
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                A m = exchange[0][r][0];
#pragma unroll
                for (int w = 1; w < WARPS; ++w) m = larger(m, exchange[0][r][w]);
                top[r] = m == neg_inf<A>() ? A(0) : m;
                const A s = exp2_row<POLY>(z[r], top[r]);
                if (lane == 0) exchange[1][r][warp] = s;
            }
            __syncthreads();
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                A s = 0;
#pragma unroll
                for (int w = 0; w < WARPS; ++w) s += exchange[1][r][w];
                weight[r] = s > 0 ? reciprocal(s) : A(0);
                if (t == 0 && tile * ROWS + r < n_rows)
                    lse_sum += (double)top[r] + (double)log2_fast(s);
            }
        }
        if constexpr (STAGES > 0) {
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                if (tile * ROWS + r >= n_rows) weight[r] = 0;
        }
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int v = 0; v < VEC; ++v)
#pragma unroll
                for (int r = 0; r < ROWS; ++r) acc[j][v] += z[r][j][v] * weight[r];
        if constexpr (STAGES > 0) {
            // The stage just read is refilled next step, and the one after it is read.
            refilling = reading;
            reading += stage_bytes;
            if (reading == ring_start + STAGES * stage_bytes) reading = ring_start;
        }
    }
    // The ring's last copies (rows past the end, zero-filled) land before the block exits.
    if constexpr (STAGES > 0) wait_async<0>();
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
            const int col = (j * THREADS + t) * VEC + v;
            if (col < n_cols)
                part[blockIdx.x * (long long)n_cols + col] = WEIGHTED ? acc[j][v] * cf[j][v]
                                                                      : acc[j][v];
        }
    if (t == 0) lse_part[blockIdx.x] = lse_sum * 0.6931471805599453;
}

template <typename S>
__global__ void sink_best(
    const S* __restrict__ x, const typename Acc<S>::type* __restrict__ coef,
    typename Acc<S>::type* __restrict__ value, long long* __restrict__ label, long long n_rows,
    long long stride_row, long long stride_col, int n_cols)
{
    typedef typename Acc<S>::type A;
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    const A scale = coef[n_cols];
    for (long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32; row < n_rows;
         row += warps) {
        const S* rp = x + row * stride_row;
        A best = neg_inf<A>();
        int arg = n_cols;
        bool nan = false;
        for (int col = lane; col < n_cols; col += 32) {
            const A z = add_rn(mul_rn(to_acc(rp[col * stride_col]), scale), coef[col]);
            if (z != z) {
                nan = true;
            } else if (z > best) {
                best = z;
                arg = col;
            }
        }
        for (int d = 16; d > 0; d >>= 1) {
            const A other = __shfl_xor_sync(0xffffffffu, best, d);
            const int other_arg = __shfl_xor_sync(0xffffffffu, arg, d);
            if (other > best || (other == best && other_arg < arg)) {
                best = other;
                arg = other_arg;
            }
        }
        nan = __any_sync(0xffffffffu, nan);
        if (lane == 0) {
            value[row] = nan ? A(0) / A(0) : best;
            label[row] = arg == n_cols ? 0 : arg;
        }
    }
}

template <typename A>
__global__ void __launch_bounds__(1024) sink_column_sums(
    const A* __restrict__ part, const double* __restrict__ lse_part, double* __restrict__ out,
    int n_parts, int n_lse, int n_cols)
{
    // A 32 x 32 block sums 32 columns: warp ty adds rows ty, ty + 32, ... (one 128-byte load
    // per row, eight in flight), then one thread per column adds the 32 warp sums in order.
    // The last block instead sums the n_lse log-sum-exp partials into out[n_cols]: thread
    // (ty, tx) adds entries 32 * ty + tx + 1024 i, then thread (0, 0) adds the 1024 sums in
    // order.
    __shared__ double sums[32][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const bool lse = blockIdx.x * 32 >= n_cols;
    double acc = 0.0;
    if (lse) {
        for (int p = threadIdx.y * 32 + threadIdx.x; p < n_lse; p += 1024) acc += lse_part[p];
    } else if (col < n_cols) {
#pragma unroll 8
        for (int p = threadIdx.y; p < n_parts; p += 32) {
            acc += (double)part[(long long)p * n_cols + col];
        }
    }
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (lse) {
        if (threadIdx.y == 0 && threadIdx.x == 0) {
            double total = 0.0;
            for (int w = 0; w < 32; ++w)
                for (int t = 0; t < 32; ++t) total += sums[w][t];
            out[n_cols] = total;
        }
    } else if (threadIdx.y == 0 && col < n_cols) {
        double total = 0.0;
        for (int w = 0; w < 32; ++w) {
            total += sums[w][threadIdx.x];
        }
        out[col] = total;
    }
}
"""
