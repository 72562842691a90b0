// CPU kernels for piecewise-polynomial layers (kernel.py says why they exist and how they are loaded).
//
// A layer with I inputs, O outputs, n nodes per segment and s segments keeps its weights as a table W[I*K, O] (row
// i*K + node). For every sample r and input i only n rows are active: those of the segment that holds x[r, i].
// Each pass goes once over the active rows (grad_both makes one or two), so time and memory are those of a dense
// Linear(I*n -> O) whatever the number of segments (the tiled passes also copy the table every 4096 rows or fewer,
// the forward pass once per thread, and only when each thread has at least K rows: no more work than a
// Linear(I -> O) pass over them; the forward pass of the layer over character codes builds one row per code and
// input for large batches, the same reading of the table). No torch headers: the file compiles on first use
// (30-45 s at -O3 on the 2-core development machine) and is called through ctypes.
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

constexpr int kMaxN = 32;

// Chebyshev-Lobatto nodes X_m = -cos(pi m / (n - 1)) and the inverse Lagrange denominators.
template <typename T>
struct Basis {
    int n;
    T nodes[kMaxN];
    T inv_den[kMaxN];
    explicit Basis(int n_) : n(n_) {
        for (int m = 0; m < n; ++m) nodes[m] = n == 1 ? T(0) : T(-std::cos(M_PI * m / (n - 1)));
        for (int k = 0; k < n; ++k) {
            T den = 1;
            for (int m = 0; m < n; ++m)
                if (m != k) den *= nodes[k] - nodes[m];
            inv_den[k] = T(1) / den;
        }
    }
};

// Segment j = clamp(floor((x + 1) / 2 * s), 0, s - 1) and local coordinate t = s (x + 1) - 2 j - 1, in
// high-order-layers-torch's arithmetic (t = 2 (x - lo) / (hi - lo) - 1, dt/dx = 2 / (hi - lo)); then
// phi_k(t) = prod_{m != k} (t - X_m) / (X_k - X_m) and, by the product rule, its derivative times dt/dx.
// Results are laid out [rows, n, I] (entry e = k * I + i, so stores are contiguous): phi, the table row
// of each active weight, and optionally dphi/dx.
// Basis values of one row for node count N known at compile time (N = 0: read b.n at run time), so
// that the product loops unroll and the loop over inputs vectorises.
template <typename T, int N>
inline void basis_row(const Basis<T>& b, int I, const T* __restrict t, const T* __restrict scale,
                      const int32_t* __restrict first, T* __restrict phi, int32_t* __restrict row_of,
                      T* __restrict dphi) {
    const int n = N > 0 ? N : b.n;
    // Unrolled over k so that each copy's tests m == k are constants: with k unknown the loop over
    // inputs stays scalar.
#pragma GCC unroll 8
    for (int k = 0; k < n; ++k) {
        const T inv = b.inv_den[k];
        if (dphi) {
#pragma omp simd
            for (int i = 0; i < I; ++i) {
                T p = 1, dp = 0;
                for (int m = 0; m < n; ++m) {
                    const T d = m == k ? T(1) : t[i] - b.nodes[m];
                    dp = m == k ? dp : dp * d + p;
                    p *= d;
                }
                phi[k * I + i] = p * inv;
                dphi[k * I + i] = dp * inv * scale[i];
                row_of[k * I + i] = first[i] + k;
            }
        } else {
#pragma omp simd
            for (int i = 0; i < I; ++i) {
                T p = 1;
                for (int m = 0; m < n; ++m) p *= m == k ? T(1) : t[i] - b.nodes[m];
                phi[k * I + i] = p * inv;
                row_of[k * I + i] = first[i] + k;
            }
        }
    }
}

// Segment, local coordinate, dt/dx and first table row of every input of one row. With s a power of two,
// 1 / s and s / 2 are exact, so every division by s or by high - low (exactly 2 / s) equals, bit for bit,
// the product with that reciprocal (both round the same exact value once): that branch multiplies, since a
// vector division costs several times a multiplication.
template <typename T, bool PowerOfTwo>
inline void segment_row_as(const T* __restrict x, int I, int s, int stride, int K, T* __restrict t,
                           T* __restrict scale, int32_t* __restrict first) {
    const T S = T(s), inverse = T(1) / S, half = S / T(2);
#pragma omp simd
    for (int i = 0; i < I; ++i) {
        // floor(u) clamped to [0, s - 1] is the truncation of u clamped first; written so because truncation
        // vectorises where floor does not. A NaN fails both tests and lands in segment 0, never off the table.
        T u = PowerOfTwo ? (x[i] + T(1)) * half : (x[i] + T(1)) / T(2) * S;
        u = u >= T(0) ? u : T(0);
        u = u <= S - T(1) ? u : S - T(1);
        const int32_t j = int32_t(u);
        const T jf = T(j);
        if (PowerOfTwo) {
            const T low = jf * inverse * T(2) - T(1);
            t[i] = T(2) * ((x[i] - low) * half) - T(1);
            scale[i] = S;
        } else {
            const T low = jf / S * T(2) - T(1), high = (jf + T(1)) / S * T(2) - T(1);
            t[i] = T(2) * ((x[i] - low) / (high - low)) - T(1);
            scale[i] = T(2) / (high - low);
        }
        first[i] = i * K + j * stride;
    }
}

template <typename T>
__attribute__((noinline)) void segment_row(const T* __restrict x, int I, int s, int stride, int K,
                                           T* __restrict t, T* __restrict scale, int32_t* __restrict first) {
    if ((s & (s - 1)) == 0)
        segment_row_as<T, true>(x, I, s, stride, K, t, scale, first);
    else
        segment_row_as<T, false>(x, I, s, stride, K, t, scale, first);
}

// Everything locate computes, for one row, into caller scratch (t, scale, first: I; phi, row_of, dphi: I*n).
template <typename T>
inline void locate_row(const Basis<T>& b, const T* x, int I, int s, int stride, int K, T* t, T* scale,
                       int32_t* first, T* phi, int32_t* row_of, T* dphi) {
    segment_row(x, I, s, stride, K, t, scale, first);
    switch (b.n) {
        case 1: basis_row<T, 1>(b, I, t, scale, first, phi, row_of, dphi); break;
        case 2: basis_row<T, 2>(b, I, t, scale, first, phi, row_of, dphi); break;
        case 3: basis_row<T, 3>(b, I, t, scale, first, phi, row_of, dphi); break;
        case 4: basis_row<T, 4>(b, I, t, scale, first, phi, row_of, dphi); break;
        case 5: basis_row<T, 5>(b, I, t, scale, first, phi, row_of, dphi); break;
        default: basis_row<T, 0>(b, I, t, scale, first, phi, row_of, dphi);
    }
}

// Vectors of `Bytes` bytes (64: one AVX-512 register) that may load from any element address.
template <typename T, int Bytes>
struct Vec {
    typedef T type __attribute__((vector_size(Bytes), aligned(sizeof(T)), may_alias));
    static constexpr int width = Bytes / sizeof(T);
};

// Rows of y and dL/dy whose width is not a whole number of vectors (250 floats) start anywhere in a cache
// line, so most vector loads straddle two lines: measured 1.1-1.8x slower per pass than 256 outputs. The
// kernels therefore work on scratch copies whose rows are padded with zeros to whole vectors (`ld` columns)
// and start on 64-byte boundaries; a tensor that already has that layout is used in place.
template <typename T>
inline int padded_width(int O) {
    constexpr int VL = Vec<T, 64>::width;
    return (O + VL - 1) / VL * VL;
}

struct FreeAligned {
    void operator()(void* p) const { std::free(p); }
};

template <typename T>
using Aligned = std::unique_ptr<T[], FreeAligned>;

// `count` elements starting on a 64-byte boundary.
template <typename T>
Aligned<T> aligned_scratch(int64_t count) {
    const size_t bytes = (size_t(count) * sizeof(T) + 63) / 64 * 64;
    return Aligned<T>(static_cast<T*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64)));
}

// Whether rows of O elements from `data` on are whole vectors starting on 64-byte boundaries.
template <typename T>
inline bool aligned_rows(const T* data, int O) {
    return O == padded_width<T>(O) && reinterpret_cast<uintptr_t>(data) % 64 == 0;
}

// dL/dy as the caller has it: element (r, c) at data[r * row + c * col], any strides. A sum's dL/dy is one
// value broadcast (strides 0): read as it is into the padded rows the passes need, it costs no contiguous copy
// first. By `benchmarks/step_ab.py` (two runs, the layers with 128 segments, whose steps end in a sum): the
// input layer over reals' step 0.95-0.97 of its time, over codes 0.95-1.00, the hidden layer 0.96-0.99.
template <typename T>
struct Grad {
    const T* data;
    int64_t row, col;
    bool contiguous(int O) const { return col == 1 && row == O; }
};

// A [count, ld] matrix standing for `data` [count, O]: `data` itself when it is laid out so (`contiguous`, as the
// caller knows from its strides, and its rows aligned), else an aligned scratch matrix (which the caller fills
// or reads back with pad_rows / unpad_rows).
template <typename T>
struct Padded {
    Aligned<T> scratch;
    T* rows;
    Padded(T* data, int64_t count, int O, bool contiguous = true) : rows(data) {
        if (!contiguous || !aligned_rows(data, O)) {
            scratch = aligned_scratch<T>(count * padded_width<T>(O));
            rows = scratch.get();
        }
    }
    bool copied() const { return scratch != nullptr; }
};

// `count` elements `col` apart from `from` on into `to`.
template <typename T>
inline void copy_columns(const T* from, int64_t col, T* to, int count) {
    if (col == 1)
        for (int c = 0; c < count; ++c) to[c] = from[c];
    else if (col == 0)  // a broadcast row: one value, filled in vectors
        for (int c = 0; c < count; ++c) to[c] = from[0];
    else
        for (int c = 0; c < count; ++c) to[c] = from[c * col];
}

// Rows r0..r1 of src into dst [rows, ld], zeros in the padding; and back.
template <typename T>
void pad_rows(Grad<T> src, T* dst, int64_t r0, int64_t r1, int O, int ld) {
    for (int64_t r = r0; r < r1; ++r) {
        copy_columns(src.data + r * src.row, src.col, dst + r * ld, O);
        for (int c = O; c < ld; ++c) dst[r * ld + c] = 0;
    }
}

template <typename T>
void unpad_rows(const T* src, T* dst, int64_t r0, int64_t r1, int O, int ld) {
    for (int64_t r = r0; r < r1; ++r)
        for (int c = 0; c < O; ++c) dst[r * O + c] = src[r * ld + c];
}

// The two shuffles of one step of a transposing tree over vectors that hold blocks of P lanes: `first` takes,
// block by block, the first halves of x's and y's blocks, `second` their second halves. Summed, they are
// pair_sums (lane_sums); kept apart, log2(width) steps over a width's worth of vectors transpose them
// (transpose_tile).
template <typename T, int P>
inline void block_halves(typename Vec<T, 64>::type x, typename Vec<T, 64>::type y, typename Vec<T, 64>::type& first,
                         typename Vec<T, 64>::type& second) {
    constexpr int L = Vec<T, 64>::width, H = P / 2;
    typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
    typedef I M __attribute__((vector_size(64)));
    M low, high;
    for (int j = 0; j < L; ++j) {
        const int b = j / P * P, w = j % P;
        low[j] = w < H ? b + w : L + b + w - H;
        high[j] = w < H ? b + w + H : L + b + w;
    }
    first = __builtin_shuffle(x, y, low);
    second = __builtin_shuffle(x, y, high);
}

#ifdef __AVX512F__
// One step of transpose_tile: rows u and u + P / 2 exchange blocks of P / 2 lanes.
template <int P>
inline void transpose_step(typename Vec<float, 64>::type* a) {
#pragma GCC unroll 16
    for (int u = 0; u < 16; ++u)
        if (!(u & P / 2)) block_halves<float, P>(a[u], a[u + P / 2], a[u], a[u + P / 2]);
}

// dst row v = column v of the 16 x 16 floats whose row u is src + u * src_stride, in registers: four steps of
// two-source shuffles (block_halves).
inline void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
    typedef typename Vec<float, 64>::type V;
    V a[16];
#pragma GCC unroll 16
    for (int u = 0; u < 16; ++u) a[u] = (V)_mm512_loadu_ps(src + u * src_stride);
    transpose_step<16>(a);
    transpose_step<8>(a);
    transpose_step<4>(a);
    transpose_step<2>(a);
#pragma GCC unroll 16
    for (int v = 0; v < 16; ++v) _mm512_storeu_ps(dst + v * dst_stride, (__m512)a[v]);
}
#endif

// Between a batch's [rows, I] layout (x, dx) and the input-major [I, rows] one that the passes work in (xt, dxT),
// rows r0 .. r1 of inputs i0 .. i1, a cache line of rows at a time: row by row, the I accesses to the input-major
// side are `rows` apart, a multiple of 4 KiB at the usual batch sizes, so they all fall in one set of L1 and evict
// each other (by `perf`, about a tenth of dL/dx with 128 inputs). The passes were handed x.t().contiguous()
// before; transposing x here instead, by `benchmarks/kernel_ab.py` (two runs, the benchmark's cases, the torch
// transpose timed with the base's passes): 0.85-0.95 of their time with 128 segments, 0.88-0.94 in the input layer
// over reals, 0.77-0.91 with 2 threads and 0.97-1.02 with 1 in the 250-wide layer with 32.
// In float32 with AVX-512, each whole 16 x 16 tile goes through registers (transpose_tile), where element by
// element GCC moved two floats per iteration, each load `I` or `rows` elements from the last (by `perf`, about a
// fifteenth of the 128-segment layer's training step). Against that, by `benchmarks/kernel_ab.py` (two runs, the
// same bits): with 128 segments the forward pass 0.97-0.98 of its time, dL/dW 0.96-0.99, dL/dx 0.93-0.98 and both
// gradients 0.91-0.95; in the 250-wide layers 0.97-1.02, 0.95-1.01, 0.90-0.98 and 0.94-1.02; the input layer over
// reals (16 inputs: one tile) 0.95-1.01.
template <bool ToInputMajor, typename T>
void transpose_rows(const T* from, T* to, int64_t rows, int I, int64_t r0, int64_t r1, int i0, int i1) {
    constexpr int64_t R = 64 / sizeof(T);
    for (int64_t b0 = r0; b0 < r1; b0 += R) {
        const int64_t b1 = r1 - b0 < R ? r1 : b0 + R;
        int i = i0;
#ifdef __AVX512F__
        if constexpr (sizeof(T) == 4)
            if (b1 - b0 == R)
                for (; i + R <= i1; i += R) {
                    if constexpr (ToInputMajor)
                        transpose_tile(from + b0 * I + i, I, to + int64_t(i) * rows + b0, rows);
                    else
                        transpose_tile(from + int64_t(i) * rows + b0, rows, to + b0 * I + i, I);
                }
#endif
        for (; i < i1; ++i)
            for (int64_t r = b0; r < b1; ++r) {
                if constexpr (ToInputMajor)
                    to[int64_t(i) * rows + r] = from[r * I + i];
                else
                    to[r * I + i] = from[int64_t(i) * rows + r];
            }
    }
}

// All the rows, shared among the threads of the enclosing parallel region, which wait for each other at the
// end.
template <bool ToInputMajor, typename T>
void transpose_shared(const T* from, T* to, int64_t rows, int I) {
    constexpr int64_t R = 64 / sizeof(T);
#pragma omp for schedule(static)
    for (int64_t r0 = 0; r0 < rows; r0 += R)
        transpose_rows<ToInputMajor>(from, to, rows, I, r0, rows - r0 < R ? rows : r0 + R, 0, I);
}

// The first `valid` lanes at p (all of them when valid >= the width), zero elsewhere; reads nothing past
// them, so the last row of a weight table is safe. And the matching write into memory: stored over what is
// there, or added to it (Add). With AVX-512 a partial vector is one masked load or store (masked-off lanes
// are neither read nor written, and cannot fault). Elsewhere the lanes go through a plain array (indexing the
// vector itself makes GCC keep every vector of the caller in memory), and reading the array back as one
// vector stalls: its lanes were stored one by one, so the load cannot take them from the store buffer. The
// masks, against that array, by `benchmarks/kernel_ab.py` (two runs, 250 outputs: every row ends in a part):
// the layer over codes' forward pass 0.72-0.81 of its time (its table's rows), its dL/dW 0.83-0.94, the
// bucketed dL/dW 0.93-1.00, the other passes 0.95-1.01.
#ifdef __AVX512F__
inline unsigned lanes_mask(int valid) { return valid > 0 ? (1u << valid) - 1 : 0u; }

template <typename T>
inline typename Vec<T, 64>::type masked_load(const T* p, int valid) {
    typedef typename Vec<T, 64>::type V;
    if constexpr (sizeof(T) == 4)
        return (V)_mm512_maskz_loadu_ps(__mmask16(lanes_mask(valid)), p);
    else
        return (V)_mm512_maskz_loadu_pd(__mmask8(lanes_mask(valid)), p);
}

template <typename T>
inline void masked_store(T* p, typename Vec<T, 64>::type v, int valid) {
    if constexpr (sizeof(T) == 4)
        _mm512_mask_storeu_ps(p, __mmask16(lanes_mask(valid)), (__m512)v);
    else
        _mm512_mask_storeu_pd(p, __mmask8(lanes_mask(valid)), (__m512d)v);
}
#endif

template <typename T>
inline typename Vec<T, 64>::type load_part(const T* p, int valid) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    if (valid >= VL) return *reinterpret_cast<const V*>(p);
#ifdef __AVX512F__
    return masked_load(p, valid);
#else
    T lanes[VL] = {};
    for (int l = 0; l < valid; ++l) lanes[l] = p[l];
    V v;
    __builtin_memcpy(&v, lanes, sizeof v);
    return v;
#endif
}

template <bool Add, typename T>
inline void write_part(T* p, typename Vec<T, 64>::type v, int valid) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    if (valid >= VL) {
        V* q = reinterpret_cast<V*>(p);
        *q = Add ? *q + v : v;
        return;
    }
#ifdef __AVX512F__
    masked_store(p, Add ? masked_load(p, valid) + v : v, valid);
#else
    T lanes[VL];
    __builtin_memcpy(lanes, &v, sizeof lanes);
    for (int l = 0; l < valid; ++l) p[l] = Add ? p[l] + lanes[l] : lanes[l];
#endif
}

// write_part's plain store, or with `stream` a non-temporal one (whole vectors, 64-byte aligned): the line is
// written to memory without first being read into the caches. Callers fence (store_fence) before the data is
// read.
template <typename T>
inline void store_part(T* p, typename Vec<T, 64>::type v, int valid, bool stream) {
#ifdef __AVX512F__
    if (stream && valid >= Vec<T, 64>::width) {
        if constexpr (sizeof(T) == 4)
            _mm512_stream_ps(p, (__m512)v);
        else
            _mm512_stream_pd(p, (__m512d)v);
        return;
    }
#endif
    write_part<false, T>(p, v, valid);
}

inline void store_fence() {
#ifdef __AVX512F__
    _mm_sfence();
#endif
}

// A block of nv vectors of output columns [c0, c0 + nv * width) held in registers; weight rows have only
// O columns, so the block's last vector may be partly padding.
struct Block {
    int c0, nv;
};

// Blocks of `widest` vectors (a power of two) over the ld padded columns, then halving for the rest.
template <typename T>
int plan_blocks(int ld, Block* blocks, int widest) {
    constexpr int VL = Vec<T, 64>::width;
    int count = 0;
    for (int c = 0; c < ld;) {
        int nv = widest;
        while (nv * VL > ld - c) nv /= 2;
        blocks[count++] = {c, nv};
        c += nv * VL;
    }
    return count;
}

// Row r of src into a block-major copy of it: block b's columns of every row together, [rows][b.nv vectors] from
// dst + rows * b.c0 on, zeros past O.
template <typename T>
void block_rows(Grad<T> src, T* dst, int64_t r, int64_t rows, int O, const Block* blocks, int count) {
    constexpr int VL = Vec<T, 64>::width;
    const T* from = src.data + r * src.row;
    for (int bi = 0; bi < count; ++bi) {
        const int c0 = blocks[bi].c0, width = blocks[bi].nv * VL, stop = O - c0 < width ? O - c0 : width;
        T* to = dst + rows * c0 + r * width;
        copy_columns(from + c0 * src.col, src.col, to, stop);
        for (int c = stop; c < width; ++c) to[c] = 0;
    }
}

// A counting sort of rows 0 .. rows - 1 into `count` groups by key(r), stable in row order: group j holds
// positions start[j] .. start[j + 1], and place(p, r) puts row r at position p. Stable, so every sum over a
// group is taken in an order that depends on neither the thread count nor the schedule.
template <typename Key, typename Place>
inline void group_stably(int64_t rows, int count, Key key, int64_t* start, Place place) {
    for (int j = 0; j <= count; ++j) start[j] = 0;
    for (int64_t r = 0; r < rows; ++r) ++start[key(r) + 1];
    for (int j = 0; j < count; ++j) start[j + 1] += start[j];
    for (int64_t r = 0; r < rows; ++r) place(start[key(r)]++, r);  // start[j]: group j's cursor, shifted back
    for (int j = count; j > 0; --j) start[j] = start[j - 1];
    start[0] = 0;
}

// One input's samples, grouped by segment: per-thread scratch, filled by `fill` for input i from xt, the
// input's column of x (all rows, contiguous), with group_stably. Bucket j holds positions start[j] ..
// start[j + 1]; position p is sample r = sample[p], whose basis values are phi[k * rows + r] (and, for dL/dx,
// their derivatives in x dphi[k * rows + r]). The passes read those through the sample's index: copying them
// in bucket order had cost most of the sort's time, by `perf` about a fifth of dL/dW's at n = 3, and the
// passes load each value once per sample either way.
template <typename T>
struct Buckets {
    int64_t rows;
    int n, s, stride;
    std::unique_ptr<int64_t[]> start, sample;
    std::unique_ptr<T[]> t, scale, phi, dphi;
    std::unique_ptr<int32_t[]> first, row_of;
    Buckets(int64_t rows_, int n_, int s_, int stride_)
        : rows(rows_), n(n_), s(s_), stride(stride_), start(new int64_t[s_ + 1]), sample(new int64_t[rows_]),
          t(new T[rows_]), scale(new T[rows_]), phi(new T[rows_ * n_]), dphi(new T[rows_ * n_]),
          first(new int32_t[rows_]), row_of(new int32_t[rows_ * n_]) {}

    // Inlined into its callers: when GCC stopped inlining it into grad_weight (as it did once dL/dW wrote its
    // rows by stores), dL/dW measured up to 5% slower.
    __attribute__((always_inline)) void fill(const Basis<T>& b, const T* xt, bool derivative) {
        // locate_row over the rows of one input with K = 0 and stride 1, so that first[r] is the bucket j
        // (no division in the counting loops); phi [n, rows]
        locate_row(b, xt, int(rows), s, 1, 0, t.get(), scale.get(), first.get(), phi.get(), row_of.get(),
                   derivative ? dphi.get() : static_cast<T*>(nullptr));
        group();
    }

    // The sort itself. Not inlined: inlined into the bucketed forward pass it made GCC spill that pass's
    // bucket pointers (1.5x its time at batch 1 with 128 segments).
    __attribute__((noinline)) void group() {
        // Plain copies for the lambdas to capture: capturing the members by reference made dL/dW at n = 5
        // 1.03-1.15x slower (`benchmarks/kernel_ab.py`).
        const int32_t* segment = first.get();
        int64_t* order = sample.get();
        group_stably(rows, s, [segment](int64_t r) { return segment[r]; }, start.get(),
                     [order](int64_t p, int64_t r) { order[p] = r; });
    }
};

// Lane-wise sums of pairs of vectors, for lane_sums: each holds its samples' partial sums in blocks of P
// lanes; the result holds x's and y's in blocks of P / 2, each the sum of a block's halves.
template <typename T, int P>
inline typename Vec<T, 64>::type pair_sums(typename Vec<T, 64>::type x, typename Vec<T, 64>::type y) {
    typename Vec<T, 64>::type first, second;
    block_halves<T, P>(x, y, first, second);
    return first + second;
}

// One vector whose lane u is the sum of the lanes of a[u], for a full vector's worth of vectors a
// (overwritten): a transposing tree of shuffles and adds, about three operations per vector where a
// horizontal sum of each costs ten. Pairing a[i] with a[i + half] leaves the sums in order.
template <typename T>
inline typename Vec<T, 64>::type lane_sums(typename Vec<T, 64>::type* a) {
    constexpr int L = Vec<T, 64>::width;
    if constexpr (L >= 16)
        for (int i = 0; i < 8; ++i) a[i] = pair_sums<T, 16>(a[i], a[i + 8]);
    for (int i = 0; i < 4; ++i) a[i] = pair_sums<T, 8>(a[i], a[i + 4]);
    for (int i = 0; i < 2; ++i) a[i] = pair_sums<T, 4>(a[i], a[i + 2]);
    return pair_sums<T, 2>(a[0], a[1]);
}

// Asks for `rows` rows of `count` elements from p on (rows O apart), lines that the caller is about to
// overwrite, so that its stores do not each wait for their line. dL/dW is new memory every call: where its
// table is not written past the caches (stream_rows), its rows' lines come in from L3 or memory before being
// written. Fetched two buckets ahead, by `benchmarks/kernel_ab.py` against 9dc4da1 (one run, the same bits):
// dL/dW of the 250-wide layer with 32 segments (7.9 MiB) 0.89-0.94 of its time, both gradients 0.96; the
// others 0.90-1.03 (the benchmark's calls likely find their smaller tables in cache). In the layer, whose dL/dW
// is new memory, by `benchmarks/layers.py --segments 128 --passes` (three runs each, alternating): the input
// layer over reals' dL/dW (2 MiB) 0.43-0.45 ms with one thread against 0.50-0.57, 0.26-0.27 ms with two
// against 0.30-0.37.
template <typename T>
inline void prefetch_for_write(const T* p, int rows, int O, int count) {
    for (int k = 0; k < rows; ++k) {
        const char* row = reinterpret_cast<const char*>(p + int64_t(k) * O);
        for (int64_t l = 0; l <= int64_t(count) * int64_t(sizeof(T)); l += 64) __builtin_prefetch(row + l, 1, 3);
    }
}

// dW[i, j * stride + k, block] = sum over bucket j's samples r of phi_k(r) dy[r, block], for every segment
// j of input i. The n accumulator rows stay in registers while the bucket's dy rows stream past, so each
// loaded vector of dy feeds n multiply-adds and each row of dW is written once per bucket, not per sample.
// Buckets go in order and every row belongs to one or two of them (two only in a continuous layer, whose
// neighbouring segments share a node: row j * stride is bucket j - 1's last and bucket j's first). Such a
// shared row waits in `carry` (per-thread scratch, one block wide) for the next bucket's sum, and every row
// is written exactly once, in order (an empty bucket writes zeros): dW needs no zeroing first, and with
// `stream` the rows bypass the caches (stream_rows says when).
// For n >= 2 the first accumulator row sums the bucket's dy rows plainly (Sum) and takes the others' sums off at the
// end: a link's basis values sum to one, so sum_r phi_0(r) dy_r = sum_r dy_r - sum_{k >= 1} sum_r phi_k(r) dy_r. One
// of the n multiply-adds per loaded vector becomes an add, which AMD's Zen cores issue on pipes of their own beside
// the multiply-adds (Intel's cores issue both on the same ports: no loss). By `benchmarks/kernel_ab.py` against
// fcd28dd (the benchmark's cases, two runs, results within 2e-6 of the largest entry): dL/dW 0.88-1.00 of its time,
// both gradients 0.85-0.99; the input layer over reals, whose buckets hold about 8 samples each, 0.96-1.00.
// With Dots (n = 2, grad_both), the same pass also takes dL/dx's dot products while each dy row is loaded:
// the bucket's difference row D = W_i[j * stride + 1] - W_i[j * stride] over the block stays in registers,
// and sample r's lane-wise sum of D dy_r (started at zero in the `first` block, else read back) goes to
// dots[r] for grad_both to reduce.
template <typename T, int N, int NV, bool Dots = false>
void grad_weight_block(const Buckets<T>& bk, const T* dy, int ld, int O, Block b, int n_rt, int s, int stride,
                       T* dW_i, T* carry, bool stream, const T* W_i = nullptr,
                       typename Vec<T, 64>::type* dots = nullptr, bool first = true) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    constexpr int NA = N > 0 ? N : kMaxN;
    static_assert(!Dots || N == 2, "dL/dx rides along at n = 2 only");
    const int n = N > 0 ? N : n_rt;
    const int shared = n - stride;  // rows at the start of a bucket that the bucket before it has (1 or 0)
    constexpr bool Sum = N >= 2;
    V* held = reinterpret_cast<V*>(carry);
    for (int j = 0; j < s; ++j) {
        const int64_t p0 = bk.start[j], p1 = bk.start[j + 1];
        if (!stream && j + 2 < s)
            prefetch_for_write(dW_i + int64_t(j + 2) * stride * O + b.c0, n - shared, O, NV * VL);
        V acc[NA][NV];
        for (int k = 0; k < n; ++k)
            for (int v = 0; v < NV; ++v) acc[k][v] = V{};
        V d[Dots ? NV : 1];
        if constexpr (Dots)
            if (p1 > p0) {
                const T* w = W_i + int64_t(j) * stride * O + b.c0;
                for (int v = 0; v < NV; ++v)
                    d[v] = load_part<T>(w + O + v * VL, O - b.c0 - v * VL) - load_part<T>(w + v * VL, O - b.c0 - v * VL);
            }
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t r = bk.sample[p];
            const V* g = reinterpret_cast<const V*>(dy + r * ld);
            V gv[NV];
            for (int v = 0; v < NV; ++v) gv[v] = g[v];
            if constexpr (Sum)
                for (int v = 0; v < NV; ++v) acc[0][v] += gv[v];
            for (int k = Sum ? 1 : 0; k < n; ++k) {
                const T ph = bk.phi[k * bk.rows + r];
                for (int v = 0; v < NV; ++v) acc[k][v] += ph * gv[v];
            }
            if constexpr (Dots) {
                V sum = first ? V{} : dots[r];
                for (int v = 0; v < NV; ++v) sum += d[v] * gv[v];
                dots[r] = sum;
            }
        }
        if constexpr (Sum)
            for (int v = 0; v < NV; ++v) {
                V rest = acc[1][v];
                for (int k = 2; k < n; ++k) rest += acc[k][v];
                acc[0][v] -= rest;
            }
        // Unrolled, so that acc stays in registers (a loop indexing it would keep it in memory).
#pragma GCC unroll 32
        for (int k = 0; k < n; ++k) {
            T* row = dW_i + int64_t(j * stride + k) * O + b.c0;
            if (k < shared && j > 0) {  // the row the bucket before holds: its sum, then this one's
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v)
                    store_part<T>(row + v * VL, p1 > p0 ? held[v] + acc[k][v] : held[v], O - b.c0 - v * VL, stream);
            } else if (k == n - 1 && shared && j < s - 1) {  // the row the next bucket shares
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) held[v] = acc[k][v];
            } else {
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) store_part<T>(row + v * VL, acc[k][v], O - b.c0 - v * VL, stream);
            }
        }
    }
}

template <typename T, int N, bool Dots = false>
void grad_weight_any(const Buckets<T>& bk, const T* dy, int ld, int O, Block b, int n, int s, int stride,
                     T* dW_i, T* carry, bool stream, const T* W_i = nullptr,
                     typename Vec<T, 64>::type* dots = nullptr, bool first = true) {
    switch (b.nv) {
        case 8: grad_weight_block<T, N, 8, Dots>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream, W_i, dots, first); return;
        case 4: grad_weight_block<T, N, 4, Dots>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream, W_i, dots, first); return;
        case 2: grad_weight_block<T, N, 2, Dots>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream, W_i, dots, first); return;
        default: grad_weight_block<T, N, 1, Dots>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream, W_i, dots, first);
    }
}

// grad_weight_any for n nodes: compiled for 1 to 5, any other n at run time.
template <typename T>
void grad_weight_nodes(const Buckets<T>& bk, const T* dy, int ld, int O, Block b, int n, int s, int stride, T* dW_i,
                       T* carry, bool stream) {
    switch (n) {
        case 1: grad_weight_any<T, 1>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream); break;
        case 2: grad_weight_any<T, 2>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream); break;
        case 3: grad_weight_any<T, 3>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream); break;
        case 4: grad_weight_any<T, 4>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream); break;
        case 5: grad_weight_any<T, 5>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream); break;
        default: grad_weight_any<T, 0>(bk, dy, ld, O, b, n, s, stride, dW_i, carry, stream);
    }
}

// Register blocks per node count: the n rows of nv vectors held in registers (dL/dW's sums, the bucketed
// forward pass's weights) and the row streaming past them fit the 32 registers. n = 3 takes 8 vectors
// (3 * 8 + 8): half the passes over each bucket of 4. With the sort's copies of the basis values unrolled
// (before Buckets dropped them), by `benchmarks/kernel_ab.py`: dL/dW 0.96-0.98 of its time at batch 1024; at
// batches 1 and 8 (bucketed forward passes too) the forward pass 0.77-0.90, dL/dW 0.88-0.97.
inline int max_vectors(int n) { return n <= 3 ? 8 : (n <= 5 ? 4 : (n <= 14 ? 2 : 1)); }

// Whether dL/dW writes its rows past the caches (non-temporal stores): only whole, aligned vectors can, and
// it pays only for a table larger than L2, whose rows would otherwise each be read in from L3 or memory
// before being overwritten. By `benchmarks/kernel_ab.py` (batch 1024, 128 inputs and outputs): with 128
// segments (8.1 MiB) dL/dW took 0.81-0.91 of its time (two runs); with 32 (2.1 MiB) streamed too, 0.95-0.99
// (one run), within the noise, so smaller tables keep the caches.
inline bool stream_rows(const void* dW, int64_t bytes, int O, int VL) {
    return O % VL == 0 && reinterpret_cast<uintptr_t>(dW) % 64 == 0 && bytes >= (int64_t(4) << 20);
}

// Inputs per task of the bucketed backward pass: a cache line's worth (16 floats), so that the thread taking them
// transposes their columns of x in, and of dL/dx out, itself, each line whole and while it is in cache; fewer when
// there are too few inputs to give every thread one. The passes had transposed all of x first and all of dL/dx last,
// each thread a share of the rows, between barriers: in a training step the dL/dx side, reading dxT a line per input
// and row block after the whole pass, took about a twentieth of the 128-segment layer's step (by `perf`). Against
// that, by `benchmarks/kernel_ab.py` (two runs): grad_both with 128 segments 0.94-0.97 of its time, dL/dW with 128
// segments 0.85-1.03, the 250-wide cases' dL/dW 1.00-1.04 and grad_both 0.94-1.05 (n = 5, whose grad_both is dL/dx's
// tiled pass then this one, 1.03-1.05), the input layer's shape 0.98-1.01.
template <typename T>
inline int input_band(int I, int threads) {
    const int line = 64 / sizeof(T), share = I / (threads > 0 ? threads : 1);
    return share < 1 ? 1 : (share < line ? share : line);
}

// dL/dW of one block of columns at a time reads, for each input, every row's part of dL/dy. In a table of rows of
// more than one block (250 floats: two of 8 vectors), the parts of one block lie 1 KiB apart and fall into half
// of L2's sets, which then cannot hold them from one input to the next: dL/dy came from L3 for every input. So
// dL/dW alone, where dL/dy is larger than kBlockedBytes and each block's part fits in it, copies dL/dy
// block-major (each block's columns of every row together: block_rows) and takes the blocks outermost, each
// over every input of the band, sorted first (one Buckets per input), so that the block stays in L2 across
// the inputs. The same sums in the same order. By `benchmarks/kernel_ab.py` (batch 1024, two runs): dL/dW of
// the input layer over reals 0.87-0.92 of its time with one thread and 0.93-0.99 with two, of 250 inputs and
// outputs 0.89-0.92 at n = 3, 0.96-0.97 at n = 5, 0.92-0.94 at n = 2 with 32 segments; both gradients at n = 3
// 0.94-0.97. Blocks of 4 vectors instead of 8 measured the same (one run). In the input layer over reals'
// training step (`benchmarks/step_ab.py`, three runs) 0.97-0.99 of its time with one thread, 0.99-1.10 with two.
constexpr int64_t kBlockedBytes = 512 * 1024;

template <typename T>
inline bool by_blocks(int64_t rows, int ld, int widest) {
    return ld > widest * Vec<T, 64>::width && rows * ld * int64_t(sizeof(T)) > kBlockedBytes &&
           rows * widest * 64 <= kBlockedBytes;
}

// dL/dW, and with Dots (n = 2, grad_both) dL/dx into dxT [I, rows] and then dx. Threads own disjoint bands of inputs
// (input_band), hence disjoint slices of dW (and rows of dxT, columns of dx): no atomics, and sums that do not depend
// on the number of threads. Every entry is written (grad_weight_block), so dW need not be zeroed first.
template <typename T, bool Dots = false>
void bucketed_backward(const T* x, const T* W, Grad<T> dy, T* dW, T* dx, T* dxT, int64_t rows, int I, int O, int n,
                       int s, int stride, int K) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    const Basis<T> basis(n);
    const Aligned<T> scratch = aligned_scratch<T>(rows * I);
    T* xt = scratch.get();
    const int ld = padded_width<T>(O);
    std::unique_ptr<Block[]> blocks(new Block[ld / VL]);
    const int count = plan_blocks<T>(ld, blocks.get(), max_vectors(n));
    const bool stream = stream_rows(dW, int64_t(I) * K * O * sizeof(T), O, VL);
    const bool blocked = !Dots && by_blocks<T>(rows, ld, max_vectors(n));
    const Aligned<T> columns = aligned_scratch<T>(blocked ? rows * ld : 0);  // block-major dL/dy
    std::optional<Padded<T>> g;  // else dL/dy in rows of ld
    if (!blocked) g.emplace(const_cast<T*>(dy.data), rows, O, dy.contiguous(O));
#pragma omp parallel
    {
        if (blocked) {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) block_rows(dy, columns.get(), r, rows, O, blocks.get(), count);
        } else if (g->copied()) {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) pad_rows(dy, g->rows, r, r + 1, O, ld);
        }
        Buckets<T> bk(blocked ? 0 : rows, n, s, stride);  // blocked: `held` instead
        const Aligned<T> carry = aligned_scratch<T>(ld);
        const Aligned<T> dot_scratch = aligned_scratch<T>(Dots ? rows * VL : 0);
        V* dots = reinterpret_cast<V*>(dot_scratch.get());
        const int band = input_band<T>(I, omp_get_num_threads());
        std::vector<Buckets<T>> held;  // blocked: each input of the band sorted
        if (blocked) {
            held.reserve(band);
            for (int e = 0; e < band; ++e) held.emplace_back(rows, n, s, stride);
        }
#pragma omp for schedule(dynamic, 1)
        for (int i0 = 0; i0 < I; i0 += band) {
            const int i1 = I - i0 < band ? I : i0 + band;
            transpose_rows<true>(x, xt, rows, I, 0, rows, i0, i1);
            if (blocked) {
                for (int i = i0; i < i1; ++i) held[i - i0].fill(basis, xt + int64_t(i) * rows, false);
                for (int bi = 0; bi < count; ++bi)
                    for (int i = i0; i < i1; ++i)
                        grad_weight_nodes(held[i - i0], columns.get() + rows * blocks[bi].c0, blocks[bi].nv * VL, O,
                                          blocks[bi], n, s, stride, dW + int64_t(i) * K * O, carry.get() + blocks[bi].c0,
                                          stream);
                continue;
            }
            for (int i = i0; i < i1; ++i) {
                bk.fill(basis, xt + int64_t(i) * rows, Dots);
                T* dW_i = dW + int64_t(i) * K * O;
                for (int bi = 0; bi < count; ++bi) {
                    T* c = carry.get() + blocks[bi].c0;
                    const T* part = g->rows + blocks[bi].c0;
                    if constexpr (Dots)
                        grad_weight_any<T, 2, true>(bk, part, ld, O, blocks[bi], n, s, stride, dW_i, c, stream,
                                                    W + int64_t(i) * K * O, dots, bi == 0);
                    else
                        grad_weight_nodes(bk, part, ld, O, blocks[bi], n, s, stride, dW_i, c, stream);
                }
                if constexpr (Dots) {
                    // dx = dphi_1 <D, dy> (dphi_1 = -dphi_0, grad_input), a vector's worth of samples at a time.
                    const T* dphi = bk.dphi.get() + rows;
                    T* out = dxT + int64_t(i) * rows;
                    for (int64_t r = 0; r < rows; r += VL) {
                        const int m = rows - r < VL ? int(rows - r) : VL;
                        V a[VL];
                        for (int u = 0; u < VL; ++u) a[u] = dots[r + (u < m ? u : 0)];
                        write_part<false, T>(out + r, lane_sums<T>(a) * load_part<T>(dphi + r, m), m);
                    }
                }
            }
            if constexpr (Dots) transpose_rows<false>(dxT, dx, rows, I, 0, rows, i0, i1);
        }
        if (stream) store_fence();  // non-temporal stores are weakly ordered: done before the caller reads dW
    }
}

template <typename T>
void grad_weight(const T* x, Grad<T> dy, T* dW, int64_t rows, int I, int O, int n, int s, int stride, int K) {
    bucketed_backward<T>(x, nullptr, dy, dW, nullptr, nullptr, rows, I, O, n, s, stride, K);
}

// y[rows of the buckets, block] += sum_k phi_k W[i, j * stride + k, block] for every segment j of input i:
// the bucket's n weight rows stay in registers while its samples' rows of y stream past. Every row is in
// one bucket, so for the first input (`first`) the sum starts from zero and y need not be zeroed before.
template <typename T, int N, int NV>
void forward_block(const Buckets<T>& bk, const T* W_i, int O, int ld, Block b, int n_rt, bool first, T* y) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    constexpr int NA = N > 0 ? N : kMaxN;
    const int n = N > 0 ? N : n_rt;
    for (int j = 0; j < bk.s; ++j) {
        const int64_t p0 = bk.start[j], p1 = bk.start[j + 1];
        if (p0 == p1) continue;
        V w[NA][NV];
        for (int k = 0; k < n; ++k) {
            const T* row = W_i + int64_t(j * bk.stride + k) * O + b.c0;
            for (int v = 0; v < NV; ++v) w[k][v] = load_part<T>(row + v * VL, O - b.c0 - v * VL);
        }
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t r = bk.sample[p];
            V* out = reinterpret_cast<V*>(y + r * ld + b.c0);
            V acc[NV];
            for (int v = 0; v < NV; ++v) acc[v] = first ? V{} : out[v];
            for (int k = 0; k < n; ++k) {
                const T ph = bk.phi[k * bk.rows + r];
                for (int v = 0; v < NV; ++v) acc[v] += ph * w[k][v];
            }
            for (int v = 0; v < NV; ++v) out[v] = acc[v];
        }
    }
}

template <typename T, int N>
void forward_any(const Buckets<T>& bk, const T* W_i, int O, int ld, Block b, int n, bool first, T* y) {
    switch (b.nv) {
        case 8: forward_block<T, N, 8>(bk, W_i, O, ld, b, n, first, y); return;
        case 4: forward_block<T, N, 4>(bk, W_i, O, ld, b, n, first, y); return;
        case 2: forward_block<T, N, 2>(bk, W_i, O, ld, b, n, first, y); return;
        default: forward_block<T, N, 1>(bk, W_i, O, ld, b, n, first, y);
    }
}

// Tiled passes, for batches (forward and dL/dx). The bucketed passes below read and write a whole output row,
// or read a row of dL/dy, per sample and input, in bucket order, from L2: at training batch sizes that
// traffic, not the arithmetic, sets their time. The tiled passes hold a slice of the weight table in L1
// instead: a few inputs' K rows (for dL/dx, n >= 2, the n - 1 differences of each segment's rows with its
// first) over one block of output columns, copied into an aligned, zero-padded scratch slice once per call,
// by every thread in the forward pass (threads own rows) and by one in dL/dx (threads own slices). The
// samples then stream past it in order, each picking its rows of the slice by segment: a sample's block of y
// stays in registers across the slice's inputs (forward), its block of dL/dy is read once for all of them
// (dL/dx).
// Copying the slices reads the whole table, so small batches keep the bucketed passes: below about as many
// rows as the table has per input (K), the copying costs more than the tiles save (measured with K = 17, 33
// and 129).
inline bool use_tiles(int64_t rows, int K) { return rows >= K; }

// dL/dx at n = 2 takes the tiled pass (over difference rows) up to this many segments and the bucketed pass
// beyond. Against the bucketed pass (`benchmarks/kernel_ab.py --case`, batch 1024, 1 and 2 threads) the
// tiled one took 0.75-0.78 of its time with 8 segments and 0.81-0.99 with 16 (two runs); with 32,
// 0.94-0.98 for 250 inputs and outputs and 0.76-0.78 for 128 (two runs, once its threads shared out the
// slices instead of the rows: sharing rows, each thread copied the whole table and two threads measured
// 1.01-1.17); with 64 and 128 segments 1.20-1.28 (one run). Measured again since the slices are packed in one
// pass over the table (two runs): with 64 segments 0.85-0.90 for 128 inputs and outputs, 0.90-0.94 for 250,
// 0.93-1.01 for 128 inputs and 250 outputs, 0.66-0.67 for 64 (one run), 0.98-1.02 for 200 and 1.02-1.05 for
// 16 inputs and 250 outputs (one run); with 128 segments 0.96-1.07 with 128 outputs, 0.71-0.91 with 64 and
// 1.08-1.25 with 250; with 256, 0.98-1.28.
constexpr int kDifferenceTilesUpTo = 64;

// A tiled pass takes its rows (a thread's in the forward pass, all of them in dL/dx) in equal chunks of at
// most this many (each copying the table again), so that the scratch (the located inputs of one slice:
// inputs * (n + 1) values per row) stays small however large the batch.
constexpr int64_t kTiledRows = 4096;

// Chunk q of `chunks` of the rows r0 .. r1.
inline int64_t chunk_start(int64_t r0, int64_t r1, int64_t q, int64_t chunks) { return r0 + (r1 - r0) * q / chunks; }
inline int64_t chunk_count(int64_t r0, int64_t r1) { return (r1 - r0 + kTiledRows - 1) / kTiledRows; }

// Threads for a tiled pass: at least K rows each, so that no thread copies the whole table for a few rows.
inline int tiled_team(int64_t rows, int K) {
    const int64_t most = rows / (K > 0 ? K : 1);
    const int threads = omp_get_max_threads();
    return int(most < 1 ? 1 : (most < threads ? most : threads));
}

// A slice is `inputs` inputs of K rows of nv vectors, within about 36 KiB, so that L1 (48 KiB on the Intel
// development CPU these sizes were tuned on) holds it beside the streamed rows. Wider blocks mean fewer passes
// over the samples, more inputs fewer reads and writes of each output block; `widest` is the widest block
// tried. For the forward pass this choice measured within 6% of the best of every shape tried, at K = 17, 33
// and 129. On an AMD CPU with 32 KiB of L1, slices sized for it were no faster overall (benchmarks/README.md).
struct Tiling {
    int nv, inputs;
};

template <typename T>
Tiling plan_tiling(int K, int ld, int widest, int64_t budget = 36 * 1024) {
    constexpr int VL = Vec<T, 64>::width;
    constexpr int64_t most = 16;
    int nv = widest;
    while (nv > 1 && (nv * VL > ld || budget / (int64_t(K) * nv * 64) < 2)) nv /= 2;
    const int64_t inputs = budget / (int64_t(K) * nv * 64);
    return {nv, int(inputs < 1 ? 1 : (inputs < most ? inputs : most))};
}

// Inputs i0 .. i0 + count of the thread's rows r0 .. r0 + rows, located: where each sample's first row
// starts in a slice of K rows per input and `pitch` elements per row, first[e * rows + r] =
// (e * K + j * stride) * pitch, and its basis values or their derivatives, coef[(e * n + k) * rows + r].
template <typename T>
struct Columns {
    int64_t rows;
    int n;
    std::unique_ptr<T[]> t, scale, coef, spare;  // spare: the basis values, when derivatives are wanted
    std::unique_ptr<int32_t[]> first, row_of;
    Columns(int64_t rows_, int n_, int capacity)
        : rows(rows_), n(n_), t(new T[rows_]), scale(new T[rows_]), coef(new T[capacity * n_ * rows_]),
          spare(new T[n_ * rows_]), first(new int32_t[capacity * rows_]), row_of(new int32_t[n_ * rows_]) {}

    void fill(const Basis<T>& b, const T* xt, int64_t all_rows, int64_t r0, int i0, int count, int s, int stride,
              int K, int pitch, bool derivative) {
        for (int e = 0; e < count; ++e) {
            T* c = coef.get() + int64_t(e) * n * rows;
            int32_t* at = first.get() + int64_t(e) * rows;
            locate_row(b, xt + int64_t(i0 + e) * all_rows + r0, int(rows), s, stride, 0, t.get(), scale.get(), at,
                       derivative ? spare.get() : c, row_of.get(), derivative ? c : static_cast<T*>(nullptr));
            for (int64_t r = 0; r < rows; ++r) at[r] = (e * K + at[r]) * pitch;
        }
    }
};

// Rows of inputs i0 .. i0 + count into one slice [count][R][pitch] per block of output columns (slice b at
// slices + b * size), zeros past O: the table's R = K rows per input or, with Difference (dL/dx, n >= 2), its
// R = s (n - 1) difference rows, W[j * stride + k] - W[j * stride] for each segment j and node k >= 1 at row
// j (n - 1) + k - 1. A link's basis derivatives sum to zero (its basis values sum to one), so
// sum_k dphi_k W_k = sum_{k >= 1} dphi_k (W_k - W_0): n - 1 rows where the table has n. The pitch is the
// widest block's, so that a sample's offset into the slice is the same for every block. Every block's slice
// at once, so that the table is read row after row, in order, as the prefetchers expect; one block at a time
// read a part of every row, and a forward pass over 128 segments spent about a sixth of its time there (by
// `perf`). Against that, by `benchmarks/kernel_ab.py` (the benchmark's cases, two runs, the same sums): the
// forward passes 0.92-1.03 of the time (0.92-0.97 with one thread), the tiled dL/dx 0.93-1.01.
template <bool Difference, typename T>
void pack_slices(const T* W, int K, int O, int s, int n, int stride, int i0, int count, const Block* blocks,
                 int block_count, int pitch, int64_t size, T* slices) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    const int R = Difference ? s * (n - 1) : K;
    for (int e = 0; e < count; ++e)
        for (int j = 0; j < R; ++j) {
            // Difference: segment j / (n - 1), node j % (n - 1) + 1 (n >= 2).
            const int64_t first = Difference ? int64_t(j / (n - 1)) * stride : j;
            const int64_t ahead = Difference ? int64_t(j % (n - 1) + 1) * O : 0;
            const T* row = W + (int64_t(i0 + e) * K + first) * O;
            for (int bi = 0; bi < block_count; ++bi) {
                const int c0 = blocks[bi].c0;
                T* to = slices + bi * size + (int64_t(e) * R + j) * pitch;
                for (int l = 0; l < blocks[bi].nv * VL; l += VL) {
                    V v = load_part(row + c0 + l, O - c0 - l);
                    if (Difference) v = load_part(row + ahead + c0 + l, O - c0 - l) - v;
                    *reinterpret_cast<V*>(to + l) = v;
                }
            }
        }
}

// y[r, block] (+)= sum over the slice's inputs e and nodes k of phi_k(r, e) slice[e][first + k], a few samples
// at a time: for each sample the same multiply-adds, in the same order, as the bucketed pass. Whole: the
// slice's rows are exactly the block's NV vectors wide (every block but narrower last ones), so the row pitch
// is a compile-time constant and a sample's n rows are addressed by constant offsets from one pointer, not
// by one register per offset (0-12% faster forward passes by `benchmarks/kernel_ab.py`, most with n = 3).
template <typename T, int N, int NV, bool Whole>
void forward_tile(const Columns<T>& col, int count, int n_rt, const T* slice, int slice_pitch, T* y, int ld, int c0,
                  bool first) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    const int pitch = Whole ? NV * VL : slice_pitch;
    // U samples at a time: U * NV = 8 independent sums hide the multiply-add latency.
    constexpr int U = NV >= 8 ? 1 : 8 / NV;
    const int n = N > 0 ? N : n_rt;
    const int64_t rows = col.rows;
    for (int64_t r = 0; r < rows; r += U) {
        const int m = rows - r < U ? int(rows - r) : U;
        V acc[U][NV];
        for (int u = 0; u < U; ++u)
            for (int v = 0; v < NV; ++v)
                acc[u][v] = first || u >= m ? V{} : reinterpret_cast<const V*>(y + (r + u) * ld + c0)[v];
        for (int e = 0; e < count; ++e) {
            const int32_t* at = col.first.get() + e * rows + r;
            const T* coef = col.coef.get() + int64_t(e) * n * rows + r;
            const T* base[U];
            for (int u = 0; u < U; ++u) base[u] = slice + at[u < m ? u : 0];
            for (int k = 0; k < n; ++k)
                for (int u = 0; u < U; ++u) {
                    const T p = coef[k * rows + (u < m ? u : 0)];
                    for (int v = 0; v < NV; ++v)
                        acc[u][v] += p * *reinterpret_cast<const V*>(base[u] + k * pitch + v * VL);
                }
        }
        for (int u = 0; u < m; ++u)
            for (int v = 0; v < NV; ++v) reinterpret_cast<V*>(y + (r + u) * ld + c0)[v] = acc[u][v];
    }
}

template <typename T, int N>
void forward_tile_any(const Columns<T>& col, int count, int n, const T* slice, int pitch, T* y, int ld, Block b,
                      bool first) {
    constexpr int VL = Vec<T, 64>::width;
    if (pitch == b.nv * VL) switch (b.nv) {
            case 8: forward_tile<T, N, 8, true>(col, count, n, slice, pitch, y, ld, b.c0, first); return;
            case 4: forward_tile<T, N, 4, true>(col, count, n, slice, pitch, y, ld, b.c0, first); return;
            case 2: forward_tile<T, N, 2, true>(col, count, n, slice, pitch, y, ld, b.c0, first); return;
            default: forward_tile<T, N, 1, true>(col, count, n, slice, pitch, y, ld, b.c0, first); return;
        }
    switch (b.nv) {
        case 8: forward_tile<T, N, 8, false>(col, count, n, slice, pitch, y, ld, b.c0, first); return;
        case 4: forward_tile<T, N, 4, false>(col, count, n, slice, pitch, y, ld, b.c0, first); return;
        case 2: forward_tile<T, N, 2, false>(col, count, n, slice, pitch, y, ld, b.c0, first); return;
        default: forward_tile<T, N, 1, false>(col, count, n, slice, pitch, y, ld, b.c0, first);
    }
}

// The forward pass that reads the table's rows in place (aligned_rows, forward_by_rows) takes a group of inputs
// at a time whose rows fill about this much of L2.
constexpr int64_t kRowGroupBytes = 256 * 1024;

// Whether a batch's forward pass reads the table in place instead of the tiled pass's slices: where each
// thread's copy of the whole table is a large share of its work (K at least a sixteenth of its rows times n)
// and an output row is one register block (up to 8 aligned vectors). Against the tiled pass
// (`benchmarks/kernel_ab.py`, batch 1024): 128 inputs and outputs with 128 segments 0.93-0.94 of the time
// with one thread and 0.76-0.79 with two (two runs), n = 3 with 64 segments 0.87 with two, 64 inputs and
// outputs with 128 segments 0.74 with two and 1.06 with one (one run). Read in place everywhere, one run:
// slower with 8 and 32 segments (1.23-1.54) and with 256 and 512 outputs (0.89-1.38: two or more blocks,
// each reading the group's rows again).
template <typename T>
inline bool reads_in_place(const T* W, int64_t rows, int team, int O, int n, int K) {
    return aligned_rows(W, O) && O <= 8 * Vec<T, 64>::width && int64_t(K) * 16 * team >= rows * n;
}

// The forward pass's slices: within L1's 36 KiB where two inputs' rows of 4 vectors fit there, else two inputs'
// rows of 4 vectors (from K = 73 on), read from L2, up to 512 KiB (K = 1024): where L1 held only 1 or 2 vectors
// per row, each sample's basis values and row offsets were loaded for every 1 or 2 vectors of multiply-adds. By
// `benchmarks/kernel_ab.py` (the same bits): the input layer over reals (K = 129) 0.86-0.96 of its time (two
// runs; in the layer's own forward pass, by `benchmarks/layers.py`, no change showed through the host's noise),
// 64 inputs with 256 segments 0.62-0.75, 16 inputs with 512 segments at batch 2048 0.60-0.69 (one run).
inline int64_t forward_budget(int K) {
    const int64_t four_vectors = int64_t(2) * K * 4 * 64;
    return four_vectors < 36 * 1024 ? 36 * 1024 : (four_vectors < 512 * 1024 ? four_vectors : 512 * 1024);
}

// The forward pass over rows r0 .. r1 into yr (their rows of the padded y), slice by slice.
template <typename T>
void forward_tiled(const Basis<T>& basis, const T* xt, const T* W, T* yr, int64_t rows, int64_t r0, int64_t r1,
                   int I, int O, int ld, int n, int s, int stride, int K) {
    constexpr int VL = Vec<T, 64>::width;
    const Tiling tiling = plan_tiling<T>(K, ld, n <= 2 ? 4 : 8, forward_budget(K));
    std::unique_ptr<Block[]> blocks(new Block[ld / VL]);
    const int count = plan_blocks<T>(ld, blocks.get(), tiling.nv);
    const int pitch = tiling.nv * VL;
    Columns<T> col(r1 - r0, n, tiling.inputs);
    const int64_t size = int64_t(tiling.inputs) * K * pitch;
    const Aligned<T> slices = aligned_scratch<T>(size * count);
    for (int i0 = 0; i0 < I; i0 += tiling.inputs) {
        const int m = I - i0 < tiling.inputs ? I - i0 : tiling.inputs;
        col.fill(basis, xt, rows, r0, i0, m, s, stride, K, pitch, false);
        pack_slices<false>(W, K, O, s, n, stride, i0, m, blocks.get(), count, pitch, size, slices.get());
        for (int bi = 0; bi < count; ++bi) {
            const Block b = blocks[bi];
            const T* sl = slices.get() + bi * size;
            switch (n) {
                case 1: forward_tile_any<T, 1>(col, m, n, sl, pitch, yr, ld, b, i0 == 0); break;
                case 2: forward_tile_any<T, 2>(col, m, n, sl, pitch, yr, ld, b, i0 == 0); break;
                case 3: forward_tile_any<T, 3>(col, m, n, sl, pitch, yr, ld, b, i0 == 0); break;
                case 4: forward_tile_any<T, 4>(col, m, n, sl, pitch, yr, ld, b, i0 == 0); break;
                case 5: forward_tile_any<T, 5>(col, m, n, sl, pitch, yr, ld, b, i0 == 0); break;
                default: forward_tile_any<T, 0>(col, m, n, sl, pitch, yr, ld, b, i0 == 0);
            }
        }
    }
}

// The forward pass over rows r0 .. r1 into yr (their rows of the padded y), input by input, in buckets.
template <typename T>
void forward_bucketed(const Basis<T>& basis, const T* xt, const T* W, T* yr, int64_t rows, int64_t r0, int64_t r1,
                      int I, int O, int ld, int n, int s, int stride, int K) {
    std::unique_ptr<Block[]> blocks(new Block[ld / Vec<T, 64>::width]);
    const int count = plan_blocks<T>(ld, blocks.get(), max_vectors(n));
    Buckets<T> bk(r1 - r0, n, s, stride);
    for (int i = 0; i < I; ++i) {
        bk.fill(basis, xt + int64_t(i) * rows + r0, false);
        const T* W_i = W + int64_t(i) * K * O;
        for (int bi = 0; bi < count; ++bi) switch (n) {
                case 1: forward_any<T, 1>(bk, W_i, O, ld, blocks[bi], n, i == 0, yr); break;
                case 2: forward_any<T, 2>(bk, W_i, O, ld, blocks[bi], n, i == 0, yr); break;
                case 3: forward_any<T, 3>(bk, W_i, O, ld, blocks[bi], n, i == 0, yr); break;
                case 4: forward_any<T, 4>(bk, W_i, O, ld, blocks[bi], n, i == 0, yr); break;
                case 5: forward_any<T, 5>(bk, W_i, O, ld, blocks[bi], n, i == 0, yr); break;
                default: forward_any<T, 0>(bk, W_i, O, ld, blocks[bi], n, i == 0, yr);
            }
    }
}

// Batches of a few rows (generation's one) take the direct forward pass: with at most a quarter of a row per
// segment, a row of the table serves too few samples to repay the bucketed pass's sort, whose loops over the
// segments were most of its time at batch 1. Against the bucketed pass (`benchmarks/kernel_ab.py --rows`,
// one run each): 0.47-0.51 at batch 4 with 128 segments, 0.83-0.85 with 32, 0.92-1.02 with 8; at batch 16
// 0.57-0.81 with 128 segments but 1.02-1.21 with 32 and 1.16-1.81 with 8.
inline bool use_direct(int64_t rows, int s) { return rows * 4 <= s; }

// y[r, block] (+)= sum over a group's inputs e and nodes k of phi_k(r, e) W[i0 + e, j * stride + k, block],
// sample by sample, each sample's block of y in registers across the group and its n rows per input read
// straight from the table (Wg: the group's first row): the same multiply-adds in the same order as the other
// forward passes. Whole: the table's rows are whole aligned vectors, loaded as they are; else each vector is
// loaded as a part (load_part), so that a row of O elements is read no further than its end.
template <typename T, int N, int NV, bool Whole>
void forward_rows(const Columns<T>& col, int count, int n_rt, const T* Wg, int K, int O, T* y, int ld, int c0,
                  bool first) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    const int n = N > 0 ? N : n_rt;
    const int64_t rows = col.rows;
    for (int64_t r = 0; r < rows; ++r) {
        V acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = first ? V{} : reinterpret_cast<const V*>(y + r * ld + c0)[v];
        for (int e = 0; e < count; ++e) {
            const T* row = Wg + (int64_t(e) * K + col.first[e * rows + r]) * O + c0;
            for (int k = 0; k < n; ++k) {
                const T p = col.coef[(int64_t(e) * n + k) * rows + r];
                for (int v = 0; v < NV; ++v) {
                    const T* at = row + int64_t(k) * O + v * VL;
                    acc[v] += p * (Whole ? *reinterpret_cast<const V*>(at) : load_part<T>(at, O - c0 - v * VL));
                }
            }
        }
        for (int v = 0; v < NV; ++v) reinterpret_cast<V*>(y + r * ld + c0)[v] = acc[v];
    }
}

template <typename T, int N, bool Whole>
void forward_rows_any(const Columns<T>& col, int count, int n, const T* Wg, int K, int O, T* y, int ld, Block b,
                      bool first) {
    switch (b.nv) {
        case 8: forward_rows<T, N, 8, Whole>(col, count, n, Wg, K, O, y, ld, b.c0, first); return;
        case 4: forward_rows<T, N, 4, Whole>(col, count, n, Wg, K, O, y, ld, b.c0, first); return;
        case 2: forward_rows<T, N, 2, Whole>(col, count, n, Wg, K, O, y, ld, b.c0, first); return;
        default: forward_rows<T, N, 1, Whole>(col, count, n, Wg, K, O, y, ld, b.c0, first);
    }
}

// The forward pass over rows r0 .. r1 into yr (their rows of the padded y), sample by sample, `group` inputs at
// a time: all of them for the direct pass, a group whose rows fill about kRowGroupBytes for the pass that reads
// the table in place (Whole).
template <typename T, bool Whole>
void forward_by_rows(const Basis<T>& basis, const T* xt, const T* W, T* yr, int64_t rows, int64_t r0, int64_t r1,
                     int I, int O, int ld, int n, int s, int stride, int K, int group) {
    std::unique_ptr<Block[]> blocks(new Block[ld / Vec<T, 64>::width]);
    const int count = plan_blocks<T>(ld, blocks.get(), 8);
    Columns<T> col(r1 - r0, n, group);
    for (int i0 = 0; i0 < I; i0 += group) {
        const int m = I - i0 < group ? I - i0 : group;
        // K = 0 and pitch 1: first holds each sample's first row within its input's K rows.
        col.fill(basis, xt, rows, r0, i0, m, s, stride, 0, 1, false);
        const T* Wg = W + int64_t(i0) * K * O;
        for (int bi = 0; bi < count; ++bi) switch (n) {
                case 1: forward_rows_any<T, 1, Whole>(col, m, n, Wg, K, O, yr, ld, blocks[bi], i0 == 0); break;
                case 2: forward_rows_any<T, 2, Whole>(col, m, n, Wg, K, O, yr, ld, blocks[bi], i0 == 0); break;
                case 3: forward_rows_any<T, 3, Whole>(col, m, n, Wg, K, O, yr, ld, blocks[bi], i0 == 0); break;
                case 4: forward_rows_any<T, 4, Whole>(col, m, n, Wg, K, O, yr, ld, blocks[bi], i0 == 0); break;
                case 5: forward_rows_any<T, 5, Whole>(col, m, n, Wg, K, O, yr, ld, blocks[bi], i0 == 0); break;
                default: forward_rows_any<T, 0, Whole>(col, m, n, Wg, K, O, yr, ld, blocks[bi], i0 == 0);
            }
    }
}

// Inputs per group of the pass that reads the table in place: as many as kRowGroupBytes holds, at least one.
template <typename T>
inline int row_group(int I, int O, int K) {
    const int64_t fit = kRowGroupBytes / (int64_t(K) * O * sizeof(T));
    return int(fit < 1 ? 1 : (fit < I ? fit : I));
}

// Each thread takes a contiguous range of rows and goes through the inputs in order, so every y[r] is summed
// in the same order whatever the number of threads (and whichever pass: both add the same products in the
// same order).
template <typename T>
void forward(const T* x, const T* W, T* y, int64_t rows, int I, int O, int n, int s, int stride, int K) {
    const Basis<T> basis(n);
    const Aligned<T> scratch = aligned_scratch<T>(rows * I);
    T* xt = scratch.get();
    const int ld = padded_width<T>(O);
    const bool tiled = use_tiles(rows, K);
    const int team = tiled ? tiled_team(rows, K) : omp_get_max_threads();
    const bool in_place = tiled && reads_in_place(W, rows, team, O, n, K);
    Padded<T> out(y, rows, O);
#pragma omp parallel num_threads(team)
    {
        const int threads = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t r0 = rows * id / threads, r1 = rows * (id + 1) / threads;
        if (r1 > r0) {
            transpose_rows<true>(x, xt, rows, I, r0, r1, 0, I);  // the thread's own rows: no waiting for the others
            if (tiled)
                for (int64_t q = 0, chunks = chunk_count(r0, r1); q < chunks; ++q) {
                    const int64_t c = chunk_start(r0, r1, q, chunks), c1 = chunk_start(r0, r1, q + 1, chunks);
                    if (in_place)
                        forward_by_rows<T, true>(basis, xt, W, out.rows + c * ld, rows, c, c1, I, O, ld, n, s,
                                                 stride, K, row_group<T>(I, O, K));
                    else
                        forward_tiled(basis, xt, W, out.rows + c * ld, rows, c, c1, I, O, ld, n, s, stride, K);
                }
            else if (use_direct(rows, s))
                forward_by_rows<T, false>(basis, xt, W, out.rows + r0 * ld, rows, r0, r1, I, O, ld, n, s, stride, K,
                                          I);
            else
                forward_bucketed(basis, xt, W, out.rows + r0 * ld, rows, r0, r1, I, O, ld, n, s, stride, K);
            if (out.copied()) unpad_rows(out.rows, y, r0, r1, O, ld);
        }
    }
}
// Horizontal sum of a vector, by halves (a lane-by-lane loop does not vectorise).
template <typename T>
inline T hsum(typename Vec<T, 64>::type v) {
    typedef T H __attribute__((vector_size(32)));
    typedef T Q __attribute__((vector_size(16)));
    H h;
    __builtin_memcpy(&h, &v, 32);
    H h2;
    __builtin_memcpy(&h2, reinterpret_cast<const char*>(&v) + 32, 32);
    h += h2;
    Q q, q2;
    __builtin_memcpy(&q, &h, 16);
    __builtin_memcpy(&q2, reinterpret_cast<const char*>(&h) + 16, 16);
    q += q2;
    T sum = 0;
    for (int l = 0; l < int(16 / sizeof(T)); ++l) sum += q[l];
    return sum;
}

// dxT[r] = sum_k c_k(r) <w_k, dy[r]> for bucket j's samples r, over the R rows w [R, ld] (padded like dy),
// which stay in L1 while the bucket's dy rows stream past; c_k(r) = coef[k * bk.rows + r]. grad_input passes
// the bucket's weight rows and their basis derivatives.
template <typename T, int R>
void grad_input_bucket(const Buckets<T>& bk, int64_t p0, int64_t p1, const T* w, const T* dy, int ld, int r_rt,
                       const T* coef, T* dxT) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    constexpr int RA = R > 0 ? R : kMaxN;
    const int rows = R > 0 ? R : r_rt;
    // U samples at a time: U * R independent accumulators (at least 8) hide the multiply-add latency, and
    // each loaded weight vector serves U samples.
    constexpr int U = R == 1 ? 8 : (R == 2 ? 4 : 2);
    for (int64_t p = p0; p < p1; p += U) {
        const int m = p1 - p < U ? int(p1 - p) : U;
        const T* g[U];
        for (int u = 0; u < U; ++u) g[u] = dy + bk.sample[p + (u < m ? u : 0)] * ld;
        V acc[U][RA];
        for (int u = 0; u < U; ++u)
            for (int k = 0; k < rows; ++k) acc[u][k] = V{};
        for (int c = 0; c < ld; c += VL) {
            V gv[U];
            for (int u = 0; u < U; ++u) gv[u] = *reinterpret_cast<const V*>(g[u] + c);
            for (int k = 0; k < rows; ++k) {
                const V wk = *reinterpret_cast<const V*>(w + int64_t(k) * ld + c);
                for (int u = 0; u < U; ++u) acc[u][k] += wk * gv[u];
            }
        }
        for (int u = 0; u < m; ++u) {
            const int64_t r = bk.sample[p + u];
            T dx = 0;
            for (int k = 0; k < rows; ++k) dx += coef[k * bk.rows + r] * hsum<T>(acc[u][k]);
            dxT[r] = dx;
        }
    }
}

// One group of up to a vector's worth of samples' results d (lane u: sample r + u, of m) into dxT's row `out`:
// `first` (the first block) writes, the others add.
template <typename T>
inline void write_group(T* out, typename Vec<T, 64>::type d, int m, bool first) {
    if (first)
        write_part<false, T>(out, d, m);
    else
        write_part<true, T>(out, d, m);
}

// dxT[i0 + e, r] (+)= <sum_k dphi_k W[j * stride + k], dy_r> over one block of columns, for n = 1 and 2, a
// vector's worth of samples at a time, so that their sums reduce together (lane_sums) and land as one vector
// in dxT's row. For n = 2 the slice holds the difference rows (pack_slices) D_1 = W[j * stride + 1] -
// W[j * stride]: dphi_1 <D_1, dy_r>, one multiply-add per vector; for n = 1 the table's rows (dphi_0 = 0).
template <typename T, int N, int NV>
void grad_input_tile(const Columns<T>& col, int count, const T* slice, const T* dy, int ld, int c0, bool first,
                     T* dxT, int64_t all_rows) {
    static_assert(N == 1 || N == 2, "n >= 3 takes grad_input_tile_dots");
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    const int64_t rows = col.rows;
    for (int64_t r = 0; r < rows; r += VL) {
        const int m = rows - r < VL ? int(rows - r) : VL;
        for (int e = 0; e < count; ++e) {
            const int32_t* at = col.first.get() + e * rows + r;
            const T* coef = col.coef.get() + int64_t(e) * N * rows + r;
            V acc[VL];
            for (int u = 0; u < VL; ++u) {
                const int uu = u < m ? u : 0;  // lanes past the last row repeat the group's first
                const T* g = dy + (r + uu) * ld + c0;
                const T* base = slice + at[uu];
                V sum[2] = {V{}, V{}};  // even and odd vectors apart: shorter chains of multiply-adds
                for (int v = 0; v < NV; ++v) {
                    V w = *reinterpret_cast<const V*>(base + v * VL);
                    if constexpr (N == 1) w = coef[uu] * w;
                    sum[v & 1] += w * *reinterpret_cast<const V*>(g + v * VL);
                }
                acc[u] = sum[0] + sum[1];
            }
            V d = lane_sums<T>(acc);
            if constexpr (N == 2) d *= load_part<T>(coef + rows, m);  // dphi_1 of the group's samples
            write_group<T>(dxT + e * all_rows + r, d, m, first);
        }
    }
}

// The same for n >= 3 over the slice's n - 1 difference rows per segment, D_k = W[j * stride + k] -
// W[j * stride] (k >= 1): dxT (+)= sum_{k >= 1} dphi_k <D_k, dy_r>. Each sample's block of dL/dy is loaded
// into registers once for all the slice's inputs, and each difference row is dotted with it apart: n - 1
// loads and n - 1 multiply-adds per vector, where combining the rows first (sum_k dphi_k D_k, then one dot
// product with dL/dy loaded for each input) took n of each. Each sample's n - 1 vectors of partial sums are
// combined by its basis derivatives, and wait in `acc` ([count][VL] vectors, per-thread scratch) for the
// group's lane sums.
template <typename T, int N, int NV>
void grad_input_tile_dots(const Columns<T>& col, int count, int n_rt, const T* slice, int pitch, const T* dy,
                          int ld, int c0, bool first, T* dxT, int64_t all_rows, typename Vec<T, 64>::type* acc) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    constexpr int DA = N > 0 ? N - 1 : kMaxN - 1;
    const int n = N > 0 ? N : n_rt, D = n - 1;
    const int64_t rows = col.rows;
    for (int64_t r = 0; r < rows; r += VL) {
        const int m = rows - r < VL ? int(rows - r) : VL;
        for (int u = 0; u < VL; ++u) {
            const int uu = u < m ? u : 0;  // lanes past the last row repeat the group's first
            const V* g = reinterpret_cast<const V*>(dy + (r + uu) * ld + c0);
            V gv[NV];
            for (int v = 0; v < NV; ++v) gv[v] = g[v];
            for (int e = 0; e < count; ++e) {
                const T* base = slice + col.first[e * rows + r + uu];
                V sum[DA][2];  // even and odd vectors apart: shorter chains of multiply-adds
                for (int k = 0; k < D; ++k) {
                    const V* row = reinterpret_cast<const V*>(base + k * pitch);
                    sum[k][0] = row[0] * gv[0];
                    if constexpr (NV > 1)
                        sum[k][1] = row[1] * gv[1];
                    else
                        sum[k][1] = V{};
                    for (int v = 2; v < NV; ++v) sum[k][v & 1] += row[v] * gv[v];
                }
                const T* coef = col.coef.get() + int64_t(e) * n * rows + r + uu;
                V combined = coef[rows] * (sum[0][0] + sum[0][1]);
                for (int k = 1; k < D; ++k) combined += coef[(k + 1) * rows] * (sum[k][0] + sum[k][1]);
                acc[e * VL + u] = combined;
            }
        }
        for (int e = 0; e < count; ++e) write_group<T>(dxT + e * all_rows + r, lane_sums<T>(acc + e * VL), m, first);
    }
}

template <typename T, int N>
void grad_input_tile_any(const Columns<T>& col, int count, int n, const T* slice, int pitch, const T* dy, int ld,
                         Block b, bool first, T* dxT, int64_t all_rows, typename Vec<T, 64>::type* acc) {
    if constexpr (N == 1 || N == 2) {
        switch (b.nv) {
            case 8: grad_input_tile<T, N, 8>(col, count, slice, dy, ld, b.c0, first, dxT, all_rows); return;
            case 4: grad_input_tile<T, N, 4>(col, count, slice, dy, ld, b.c0, first, dxT, all_rows); return;
            case 2: grad_input_tile<T, N, 2>(col, count, slice, dy, ld, b.c0, first, dxT, all_rows); return;
            default: grad_input_tile<T, N, 1>(col, count, slice, dy, ld, b.c0, first, dxT, all_rows);
        }
    } else {
        const int c0 = b.c0;
        switch (b.nv) {
            case 8:
                grad_input_tile_dots<T, N, 8>(col, count, n, slice, pitch, dy, ld, c0, first, dxT, all_rows, acc);
                return;
            case 4:
                grad_input_tile_dots<T, N, 4>(col, count, n, slice, pitch, dy, ld, c0, first, dxT, all_rows, acc);
                return;
            case 2:
                grad_input_tile_dots<T, N, 2>(col, count, n, slice, pitch, dy, ld, c0, first, dxT, all_rows, acc);
                return;
            default: grad_input_tile_dots<T, N, 1>(col, count, n, slice, pitch, dy, ld, c0, first, dxT, all_rows, acc);
        }
    }
}

// dL/dx of rows r0 .. r1 into dxT, slice by slice; dy is the padded dL/dy.
template <typename T>
void grad_input_tiled(const Basis<T>& basis, const T* xt, const T* W, const T* dy, T* dxT, int64_t rows, int64_t r0,
                      int64_t r1, int I, int O, int ld, int n, int s, int stride, int K) {
    constexpr int VL = Vec<T, 64>::width;
    // n >= 2 reads n - 1 difference rows per segment (pack_slices), n = 1 the table's K rows per input.
    const bool difference = n >= 2;
    const int per_input = difference ? s * (n - 1) : K;
    // A smaller slice than the forward pass's: a vector's worth of dL/dy rows shares L1 with it. 32 KiB
    // against 20 KiB (more inputs, or wider blocks, per slice), by `benchmarks/kernel_ab.py`: on the Intel
    // development CPU at n >= 3, whose samples load their dL/dy once for all the slice's inputs, 0.70-0.98 of
    // the time at n = 3, 0.86-0.93 at n = 5 with 8 segments, 0.99-1.04 at n = 4 with 4 segments and n = 5
    // with 2 (two or three runs; 40 KiB, which leaves L1 too little beside it, 1.03-1.09 in those last two);
    // on the AMD one at n = 2, 0.93-0.97 with 32 segments (250 and 128 outputs, two runs) and 0.97 with 16.
    const Tiling tiling = plan_tiling<T>(per_input, ld, 8, 32 * 1024);
    std::unique_ptr<Block[]> blocks(new Block[ld / VL]);
    const int count = plan_blocks<T>(ld, blocks.get(), tiling.nv);
    const int pitch = tiling.nv * VL;
    Columns<T> col(r1 - r0, n, tiling.inputs);
    const int64_t size = int64_t(tiling.inputs) * per_input * pitch;
    const Aligned<T> packed = aligned_scratch<T>(size * count);
    // n >= 3: the dot products of a group of samples (grad_input_tile_dots).
    const Aligned<T> dots = aligned_scratch<T>(n >= 3 ? int64_t(tiling.inputs) * VL * VL : 0);
    typename Vec<T, 64>::type* acc = reinterpret_cast<typename Vec<T, 64>::type*>(dots.get());
    const T* g = dy + r0 * ld;
    // Called by every thread of the team on the same rows: the slices are shared out, so each thread copies
    // only its share of the table (a sample's dL/dx of one input needs no other input's rows).
    const int slices = (I + tiling.inputs - 1) / tiling.inputs;
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < slices; ++q) {
        const int i0 = q * tiling.inputs;
        const int m = I - i0 < tiling.inputs ? I - i0 : tiling.inputs;
        col.fill(basis, xt, rows, r0, i0, m, s, difference ? n - 1 : stride, per_input, pitch, true);
        T* out = dxT + int64_t(i0) * rows + r0;
        if (difference)
            pack_slices<true>(W, K, O, s, n, stride, i0, m, blocks.get(), count, pitch, size, packed.get());
        else
            pack_slices<false>(W, K, O, s, n, stride, i0, m, blocks.get(), count, pitch, size, packed.get());
        for (int bi = 0; bi < count; ++bi) {
            const Block b = blocks[bi];
            const T* tile = packed.get() + bi * size;
            switch (n) {
                case 1: grad_input_tile_any<T, 1>(col, m, n, tile, pitch, g, ld, b, bi == 0, out, rows, acc); break;
                case 2: grad_input_tile_any<T, 2>(col, m, n, tile, pitch, g, ld, b, bi == 0, out, rows, acc); break;
                case 3: grad_input_tile_any<T, 3>(col, m, n, tile, pitch, g, ld, b, bi == 0, out, rows, acc); break;
                case 4: grad_input_tile_any<T, 4>(col, m, n, tile, pitch, g, ld, b, bi == 0, out, rows, acc); break;
                case 5: grad_input_tile_any<T, 5>(col, m, n, tile, pitch, g, ld, b, bi == 0, out, rows, acc); break;
                default: grad_input_tile_any<T, 0>(col, m, n, tile, pitch, g, ld, b, bi == 0, out, rows, acc);
            }
        }
    }
}

// dL/dx by buckets, input by input (the team's threads share the inputs), into dxT; dy is the padded dL/dy.
template <typename T>
void grad_input_bucketed(const Basis<T>& basis, const T* xt, const T* W, const T* dy, T* dxT, int64_t rows, int I,
                         int O, int ld, int n, int s, int stride, int K) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    const bool difference = n == 2;
    const int R = difference ? 1 : n;
    Buckets<T> bk(rows, n, s, stride);
    // The R rows one bucket uses, padded, unless they are the table's rows and those are already whole
    // aligned vectors.
    const bool in_place = !difference && aligned_rows(W, O);
    const Aligned<T> copy = in_place ? nullptr : aligned_scratch<T>(int64_t(R) * ld);
    const T* coef = bk.dphi.get() + (difference ? rows : 0);  // for n = 2 dphi_1
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < I; ++i) {
        bk.fill(basis, xt + int64_t(i) * rows, true);
        T* out = dxT + int64_t(i) * rows;
        for (int j = 0; j < s; ++j) {
            const int64_t p0 = bk.start[j], p1 = bk.start[j + 1];
            if (p0 == p1) continue;
            const T* w = W + (int64_t(i) * K + int64_t(j) * stride) * O;
            if (!in_place) {
                for (int c = 0; c < ld; c += VL) {
                    V* to = reinterpret_cast<V*>(copy.get() + c);
                    if (difference)
                        *to = load_part<T>(w + O + c, O - c) - load_part<T>(w + c, O - c);
                    else
                        for (int k = 0; k < n; ++k) to[k * ld / VL] = load_part<T>(w + k * O + c, O - c);
                }
                w = copy.get();
            }
            switch (R) {
                case 1: grad_input_bucket<T, 1>(bk, p0, p1, w, dy, ld, R, coef, out); break;
                case 3: grad_input_bucket<T, 3>(bk, p0, p1, w, dy, ld, R, coef, out); break;
                case 4: grad_input_bucket<T, 4>(bk, p0, p1, w, dy, ld, R, coef, out); break;
                case 5: grad_input_bucket<T, 5>(bk, p0, p1, w, dy, ld, R, coef, out); break;
                default: grad_input_bucket<T, 0>(bk, p0, p1, w, dy, ld, R, coef, out);
            }
        }
    }
}

// dL/dx into dxT [I, rows] (from x transposed into xt), then transposed into dx [rows, I]: for a sample in segment j of
// input i, dx = sum_k dphi_k <W[i, j * stride + k], dy>. With n = 2 the two derivatives are opposite (nodes -1 and 1:
// dphi_0 = -dphi_1 = -scale / 2, exactly), so one dot product with the difference of the two rows, times dphi_1,
// replaces two: half the multiply-adds and weight loads. Both passes do that for n = 2; the tiled one reads, for every
// n >= 2, the n - 1 differences of a segment's rows with its first (pack_slices). Batches of at least K rows take the
// tiled pass (threads own slices of inputs), smaller ones the bucketed pass (threads own inputs), except that n = 2
// with more than kDifferenceTilesUpTo segments keeps the bucketed pass, which the tiled one did not beat there; either
// way each dx is summed in an order that does not depend on the number of threads.
template <typename T>
void grad_input(const T* x, const T* W, Grad<T> dy, T* dx, T* dxT, int64_t rows, int I, int O, int n, int s,
                int stride, int K) {
    const Basis<T> basis(n);
    const Aligned<T> scratch = aligned_scratch<T>(rows * I);
    T* xt = scratch.get();
    const int ld = padded_width<T>(O);
    const bool tiled = (n != 2 || s <= kDifferenceTilesUpTo) && use_tiles(rows, K);
    Padded<T> g(const_cast<T*>(dy.data), rows, O, dy.contiguous(O));
#pragma omp parallel num_threads(tiled ? tiled_team(rows, K) : omp_get_max_threads())
    {
        if (g.copied()) {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) pad_rows(dy, g.rows, r, r + 1, O, ld);
        }
        transpose_shared<true>(x, xt, rows, I);
        if (tiled) {
            for (int64_t q = 0, chunks = chunk_count(0, rows); q < chunks; ++q) {
                const int64_t c = chunk_start(0, rows, q, chunks), c1 = chunk_start(0, rows, q + 1, chunks);
                grad_input_tiled(basis, xt, W, g.rows, dxT, rows, c, c1, I, O, ld, n, s, stride, K);
            }
        } else {
            grad_input_bucketed(basis, xt, W, g.rows, dxT, rows, I, O, ld, n, s, stride, K);
        }
        transpose_shared<false>(dxT, dx, rows, I);
    }
}

// Both gradients of a training step. At n = 2, dL/dx rides along with dL/dW's bucketed pass: the two passes
// sort the same buckets and stream the same rows of dL/dy in the same order, and at batch sizes where a
// bucket holds a few samples, reading those rows from L2 is most of the time of each. One pass sorts once and
// reads each row once for both: dL/dW's sums, rows and order are grad_weight's (the same bits), and each dx
// is the bucketed grad_input's lane-wise sums, reduced a vector's worth of samples at a time (lane_sums), not
// one by one. Against grad_input then grad_weight (`benchmarks/kernel_ab.py --base 6ab65b5`, batch 1024, 1
// and 2 threads, two runs): with 128 segments 0.62-0.77 of the time, with 32 (where dL/dx alone takes the
// tiled pass) 0.81-0.85; with 8, 16 and 64 segments 0.67-0.85 (one run). For n = 3 to 5 a joint pass over
// the n - 1 difference rows measured 0.69-1.38 (benchmarks/README.md): other n run the two passes one after the other.
template <typename T>
void grad_both(const T* x, const T* W, Grad<T> dy, T* dW, T* dx, T* dxT, int64_t rows, int I, int O, int n, int s,
               int stride, int K) {
    if (n == 2) {
        bucketed_backward<T, true>(x, W, dy, dW, dx, dxT, rows, I, O, n, s, stride, K);
        return;
    }
    grad_input<T>(x, W, dy, dx, dxT, rows, I, O, n, s, stride, K);
    grad_weight<T>(x, dy, dW, rows, I, O, n, s, stride, K);
}

// The layer over character codes (character.py). Code c enters as x = (c + 0.5) / 64 - 1 (exact in every
// float type), so its segment and basis values are fixed: its contribution to input i is one row,
// table[i, c] = sum_k phi_k(c) W[i, first(c) + k], the same for every sample.
constexpr int kCodes = 128;

// Each code's x, first table row and basis values phi[k * 128 + c], found by locate_row as for any input.
template <typename T>
struct CodePlaces {
    T x[kCodes];
    int32_t first[kCodes];
    std::unique_ptr<T[]> phi;
    CodePlaces(int n, int s, int stride) : phi(new T[kCodes * n]) {
        T t[kCodes], scale[kCodes];
        std::unique_ptr<int32_t[]> row_of(new int32_t[kCodes * n]);
        for (int c = 0; c < kCodes; ++c) x[c] = (T(c) + T(0.5)) / T(64) - T(1);
        locate_row(Basis<T>(n), x, kCodes, s, stride, 0, t, scale, first, phi.get(), row_of.get(),
                   static_cast<T*>(nullptr));
    }
};

// A sample's code at one input. The layer refuses codes above 127 before the call; this only keeps a stray
// one (from a caller that skipped the check) inside the table.
inline int code_of(const uint8_t* codes, int64_t e) { return codes[e] < kCodes ? codes[e] : kCodes - 1; }

// table [I, 128, ld]: each code's row, zero-padded to ld columns (threads share the inputs).
template <typename T>
void code_table(const T* W, const CodePlaces<T>& at, T* table, int I, int O, int ld, int n, int K) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
#pragma omp for schedule(static)
    for (int i = 0; i < I; ++i)
        for (int c = 0; c < kCodes; ++c) {
            const T* w = W + (int64_t(i) * K + at.first[c]) * O;
            V* to = reinterpret_cast<V*>(table + (int64_t(i) * kCodes + c) * ld);
            for (int v = 0; v < ld / VL; ++v) {
                V sum = at.phi[c] * load_part<T>(w + v * VL, O - v * VL);
                for (int k = 1; k < n; ++k)
                    sum += at.phi[k * kCodes + c] * load_part<T>(w + int64_t(k) * O + v * VL, O - v * VL);
                to[v] = sum;
            }
        }
}

// y[r, block] = sum_i table[i, codes[r, i], block], in input order, the block in registers.
template <typename T, int NV>
void code_sums(const uint8_t* codes, const T* table, T* y, int64_t r0, int64_t r1, int I, int O, int ld, int c0) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    for (int64_t r = r0; r < r1; ++r) {
        V acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = V{};
        for (int i = 0; i < I; ++i) {
            const int c = code_of(codes, r * I + i);
            const V* row = reinterpret_cast<const V*>(table + (int64_t(i) * kCodes + c) * ld + c0);
            for (int v = 0; v < NV; ++v) acc[v] += row[v];
        }
        T* out = y + r * O + c0;
        for (int v = 0; v < NV; ++v) write_part<false, T>(out + v * VL, acc[v], O - c0 - v * VL);
    }
}

template <typename T>
void code_sums_any(const uint8_t* codes, const T* table, T* y, int64_t r0, int64_t r1, int I, int O, int ld,
                   Block b) {
    switch (b.nv) {
        case 16: code_sums<T, 16>(codes, table, y, r0, r1, I, O, ld, b.c0); return;
        case 8: code_sums<T, 8>(codes, table, y, r0, r1, I, O, ld, b.c0); return;
        case 4: code_sums<T, 4>(codes, table, y, r0, r1, I, O, ld, b.c0); return;
        case 2: code_sums<T, 2>(codes, table, y, r0, r1, I, O, ld, b.c0); return;
        default: code_sums<T, 1>(codes, table, y, r0, r1, I, O, ld, b.c0);
    }
}

// The forward pass over codes [rows, I]. With a table [I, 128, ld] to fill (caller-provided, so that torch
// sees that memory; kernel.py hands one to batches of at least 256 rows) it builds the table and sums one row
// per input and sample; without one (null) it takes the gather pass on the codes' x. Threads split the rows
// (splitting the columns instead, so that each thread would read only the part of the table it built, took
// 1.15-1.28x as long with 2 threads).
template <typename T>
void codes_forward(const uint8_t* codes, const T* W, T* table, T* y, int64_t rows, int I, int O, int n, int s,
                   int stride, int K) {
    constexpr int VL = Vec<T, 64>::width;
    const CodePlaces<T> at(n, s, stride);
    if (table == nullptr) {
        std::unique_ptr<T[]> x(new T[rows * I]);
        for (int64_t e = 0; e < rows * I; ++e) x[e] = at.x[code_of(codes, e)];
        forward(x.get(), W, y, rows, I, O, n, s, stride, K);
        return;
    }
    const int ld = padded_width<T>(O);
    std::unique_ptr<Block[]> blocks(new Block[ld / VL]);
    const int count = plan_blocks<T>(ld, blocks.get(), 16);
    constexpr int64_t kRowsPerTask = 64;
#pragma omp parallel
    {
        code_table(W, at, table, I, O, ld, n, K);  // its omp for ends in a barrier
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r += kRowsPerTask) {
            const int64_t r1 = rows - r < kRowsPerTask ? rows : r + kRowsPerTask;
            for (int bi = 0; bi < count; ++bi) code_sums_any(codes, table, y, r, r1, I, O, ld, blocks[bi]);
        }
    }
}

// dW[i, first(c) + k, block] (+)= phi_k(c) S_c, where S_c, the sum of dy[r, block] over the samples whose code
// at input i is c, is summed in registers in sample order: one add per loaded vector of dy, where the gather
// pass makes n multiply-adds with per-sample coefficients. Codes go in order and first(c) never decreases,
// so a row is stored by the first code that reaches it and added to by the others; rows that no code reaches
// (more segments than codes) are stored as zeros: every entry is written.
template <typename T, int NV>
void code_grad_block(const int64_t* start, const int64_t* sample, const T* dy, int ld, int O, int c0,
                     const CodePlaces<T>& at, int n, int K, T* dW_i) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    auto store = [&](int row, const V* value, bool add) {
        T* to = dW_i + int64_t(row) * O + c0;
        for (int v = 0; v < NV; ++v) {
            if (add)
                write_part<true, T>(to + v * VL, value[v], O - c0 - v * VL);
            else
                write_part<false, T>(to + v * VL, value[v], O - c0 - v * VL);
        }
    };
    const V zeros[NV] = {};
    int written = 0;  // rows 0 .. written - 1 hold a value
    for (int c = 0; c < kCodes; ++c) {
        V sum[NV];
        for (int v = 0; v < NV; ++v) sum[v] = V{};
        for (int64_t p = start[c]; p < start[c + 1]; ++p) {
            const V* g = reinterpret_cast<const V*>(dy + sample[p] * ld + c0);
            for (int v = 0; v < NV; ++v) sum[v] += g[v];
        }
        for (; written < at.first[c]; ++written) store(written, zeros, false);
        for (int k = 0; k < n; ++k) {
            const int row = at.first[c] + k;
            if (row < written && start[c + 1] == start[c]) continue;
            V term[NV];
            for (int v = 0; v < NV; ++v) term[v] = at.phi[k * kCodes + c] * sum[v];
            store(row, term, row < written);
            written = row + 1 > written ? row + 1 : written;
        }
    }
    for (; written < K; ++written) store(written, zeros, false);
}

template <typename T>
void code_grad_any(const int64_t* start, const int64_t* sample, const T* dy, int ld, int O, Block b,
                   const CodePlaces<T>& at, int n, int K, T* dW_i) {
    switch (b.nv) {
        case 16: code_grad_block<T, 16>(start, sample, dy, ld, O, b.c0, at, n, K, dW_i); return;
        case 8: code_grad_block<T, 8>(start, sample, dy, ld, O, b.c0, at, n, K, dW_i); return;
        case 4: code_grad_block<T, 4>(start, sample, dy, ld, O, b.c0, at, n, K, dW_i); return;
        case 2: code_grad_block<T, 2>(start, sample, dy, ld, O, b.c0, at, n, K, dW_i); return;
        default: code_grad_block<T, 1>(start, sample, dy, ld, O, b.c0, at, n, K, dW_i);
    }
}

// dL/dW over codes [rows, I]. Threads own inputs (disjoint rows of dW); each input's samples are grouped by
// code with a stable counting sort, so every sum is taken in an order that does not depend on the number of
// threads. At batch 1024 it took 0.85-0.91 of the time of the gather pass's dL/dW on the codes' x (two runs of
// `benchmarks/kernel_ab.py --base 608fab2`), and less at every batch size tried (1-1024), so it serves every
// call.
template <typename T>
void codes_grad_weight(const uint8_t* codes, Grad<T> dy, T* dW, int64_t rows, int I, int O, int n, int s,
                       int stride, int K) {
    constexpr int VL = Vec<T, 64>::width;
    const CodePlaces<T> at(n, s, stride);
    const int ld = padded_width<T>(O);
    std::unique_ptr<Block[]> blocks(new Block[ld / VL]);
    const int count = plan_blocks<T>(ld, blocks.get(), 16);
    Padded<T> g(const_cast<T*>(dy.data), rows, O, dy.contiguous(O));
#pragma omp parallel
    {
        if (g.copied()) {
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) pad_rows(dy, g.rows, r, r + 1, O, ld);
        }
        std::unique_ptr<int64_t[]> start(new int64_t[kCodes + 1]), sample(new int64_t[rows]);
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < I; ++i) {
            int64_t* order = sample.get();
            group_stably(rows, kCodes, [=](int64_t r) { return code_of(codes, r * I + i); }, start.get(),
                         [order](int64_t p, int64_t r) { order[p] = r; });
            T* dW_i = dW + int64_t(i) * K * O;
            for (int bi = 0; bi < count; ++bi)
                code_grad_any(start.get(), sample.get(), g.rows, ld, O, blocks[bi], at, n, K, dW_i);
        }
    }
}

// The reduced basis leaves out each input's first node: a link's basis functions sum to one, so the first
// is 1 minus the others and its weight folds into a bias (reduced.py). Column i*K + c moves to
// i*(K-1) + c - 1. Only node 0 of segment 0 (k = 0, listed first) is left out: its coefficient becomes zero
// and its column the input's first kept one, node 1, which is either written after it (n >= 2: the same
// segment) or zero (n = 1), so the stores and sums over row_of need no test.
template <typename T>
inline void drop_first_node(int I, int n, int K, T* __restrict coef, int32_t* __restrict row_of) {
#pragma omp simd
    for (int i = 0; i < I; ++i) {
        const bool dropped = row_of[i] == i * K;
        coef[i] = dropped ? T(0) : coef[i];
        row_of[i] = dropped ? i * (K - 1) : row_of[i] - i - 1;
    }
    for (int k = 1; k < n; ++k)
#pragma omp simd
        for (int i = 0; i < I; ++i) row_of[k * I + i] -= i + 1;
}

// The dense-basis path for small K: basis[r, i*K + row] = phi, zero elsewhere, one row at a time so that
// zeroing and filling happen in cache; with `drop`, the reduced basis of K - 1 columns per input.
template <typename T>
void dense_basis(const T* x, T* basis, int64_t rows, int I, int n, int s, int stride, int K, int drop) {
    const Basis<T> b(n);
    const int64_t width = int64_t(I) * (K - drop);
#pragma omp parallel
    {
        std::unique_ptr<T[]> t(new T[I]), scale(new T[I]), phi(new T[I * n]);
        std::unique_ptr<int32_t[]> first(new int32_t[I]), row_of(new int32_t[I * n]);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            locate_row(b, x + r * I, I, s, stride, K, t.get(), scale.get(), first.get(), phi.get(), row_of.get(),
                       static_cast<T*>(nullptr));
            if (drop) drop_first_node(I, n, K, phi.get(), row_of.get());
            T* out = basis + r * width;
            for (int64_t c = 0; c < width; ++c) out[c] = 0;
            for (int e = 0; e < I * n; ++e) out[row_of[e]] = phi[e];
        }
    }
}

// out[i] = sum_k coef[k * I + i] p[row_of[k * I + i]], each sum in a register and stored once, for node
// count N known at compile time (N = 0: n_rt), so that the loop over inputs vectorises with gathers from p.
template <typename T, int N>
inline void gathered_sums(const T* __restrict coef, const int32_t* __restrict row_of, const T* __restrict p,
                          T* __restrict out, int I, int n_rt) {
    const int n = N > 0 ? N : n_rt;
#pragma omp simd
    for (int i = 0; i < I; ++i) {
        T sum = 0;
        for (int k = 0; k < n; ++k) sum += coef[k * I + i] * p[row_of[k * I + i]];
        out[i] = sum;
    }
}

// dx[r, i] = sum_k dphi_k/dx projected[r, row_k], projected = dy @ W^T of the dense path (reduced with
// `drop`: the left-out node's term is zero).
template <typename T>
void dense_grad_input(const T* x, const T* projected, T* dx, int64_t rows, int I, int n, int s, int stride,
                      int K, int drop) {
    const Basis<T> b(n);
    const int64_t width = int64_t(I) * (K - drop);
#pragma omp parallel
    {
        std::unique_ptr<T[]> t(new T[I]), scale(new T[I]), phi(new T[I * n]), dphi(new T[I * n]);
        std::unique_ptr<int32_t[]> first(new int32_t[I]), row_of(new int32_t[I * n]);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            locate_row(b, x + r * I, I, s, stride, K, t.get(), scale.get(), first.get(), phi.get(), row_of.get(),
                       dphi.get());
            if (drop) drop_first_node(I, n, K, dphi.get(), row_of.get());
            const T* p = projected + r * width;
            T* out = dx + r * I;
            switch (n) {
                case 1: gathered_sums<T, 1>(dphi.get(), row_of.get(), p, out, I, n); break;
                case 2: gathered_sums<T, 2>(dphi.get(), row_of.get(), p, out, I, n); break;
                case 3: gathered_sums<T, 3>(dphi.get(), row_of.get(), p, out, I, n); break;
                case 4: gathered_sums<T, 4>(dphi.get(), row_of.get(), p, out, I, n); break;
                case 5: gathered_sums<T, 5>(dphi.get(), row_of.get(), p, out, I, n); break;
                default: gathered_sums<T, 0>(dphi.get(), row_of.get(), p, out, I, n);
            }
        }
    }
}

// Sets the OpenMP team size for one call and restores it afterwards. The setting belongs to the calling
// thread, which torch shares (torch.get_num_threads() reads it), so leaving it changed would shrink torch's
// own thread count for the rest of the process after any small call.
struct ThreadsFor {
    int previous;
    explicit ThreadsFor(int threads) : previous(omp_get_max_threads()) { omp_set_num_threads(threads > 0 ? threads : 1); }
    ~ThreadsFor() { omp_set_num_threads(previous); }
};

}  // namespace

extern "C" {

// `threads` comes from torch.get_num_threads() at the call (fewer for small calls), so these kernels share
// the torch thread budget.
// Every pass takes x [rows, I] and works on it transposed (xt [I, rows], scratch), keeping one input's buckets
// per thread. dL/dx's transposed result dxT [I, rows] is caller-provided (so that torch sees and accounts for
// that memory). The passes that read dL/dy take its row and column strides after the pointers (Grad).
#define LANGINTERP_EXPORT(T, SUFFIX)                                                                         \
    void forward_##SUFFIX(const T* x, const T* W, T* y, int64_t rows, int I, int O, int n, int s,            \
                          int stride, int K, int threads) {                                                 \
        ThreadsFor team(threads);                                                                           \
        forward<T>(x, W, y, rows, I, O, n, s, stride, K);                                                   \
    }                                                                                                       \
    void grad_weight_##SUFFIX(const T* x, const T* dy, T* dW, int64_t dy_row, int64_t dy_col, int64_t rows,  \
                              int I, int O, int n, int s, int stride, int K, int threads) {                 \
        ThreadsFor team(threads);                                                                           \
        grad_weight<T>(x, {dy, dy_row, dy_col}, dW, rows, I, O, n, s, stride, K);                           \
    }                                                                                                       \
    void grad_input_##SUFFIX(const T* x, const T* W, const T* dy, T* dx, T* dxT, int64_t dy_row,              \
                             int64_t dy_col, int64_t rows, int I, int O, int n, int s, int stride, int K,   \
                             int threads) {                                                                 \
        ThreadsFor team(threads);                                                                           \
        grad_input<T>(x, W, {dy, dy_row, dy_col}, dx, dxT, rows, I, O, n, s, stride, K);                    \
    }                                                                                                       \
    void grad_both_##SUFFIX(const T* x, const T* W, const T* dy, T* dW, T* dx, T* dxT, int64_t dy_row,        \
                            int64_t dy_col, int64_t rows, int I, int O, int n, int s, int stride, int K,    \
                            int threads) {                                                                  \
        ThreadsFor team(threads);                                                                           \
        grad_both<T>(x, W, {dy, dy_row, dy_col}, dW, dx, dxT, rows, I, O, n, s, stride, K);                 \
    }

#define LANGINTERP_EXPORT_DENSE(T, SUFFIX)                                                                   \
    void dense_basis_##SUFFIX(const T* x, T* basis, int64_t rows, int I, int n, int s, int stride, int K,     \
                              int drop, int threads) {                                                      \
        ThreadsFor team(threads);                                                                           \
        dense_basis<T>(x, basis, rows, I, n, s, stride, K, drop);                                           \
    }                                                                                                       \
    void dense_grad_input_##SUFFIX(const T* x, const T* projected, T* dx, int64_t rows, int I, int n, int s,  \
                                   int stride, int K, int drop, int threads) {                              \
        ThreadsFor team(threads);                                                                           \
        dense_grad_input<T>(x, projected, dx, rows, I, n, s, stride, K, drop);                              \
    }

#define LANGINTERP_EXPORT_CODES(T, SUFFIX)                                                                   \
    void codes_forward_##SUFFIX(const uint8_t* codes, const T* W, T* table, T* y, int64_t rows, int I, int O, \
                                int n, int s, int stride, int K, int threads) {                             \
        ThreadsFor team(threads);                                                                           \
        codes_forward<T>(codes, W, table, y, rows, I, O, n, s, stride, K);                                  \
    }                                                                                                       \
    void codes_grad_weight_##SUFFIX(const uint8_t* codes, const T* dy, T* dW, int64_t dy_row,                \
                                    int64_t dy_col, int64_t rows, int I, int O, int n, int s, int stride,   \
                                    int K, int threads) {                                                   \
        ThreadsFor team(threads);                                                                           \
        codes_grad_weight<T>(codes, {dy, dy_row, dy_col}, dW, rows, I, O, n, s, stride, K);                 \
    }

LANGINTERP_EXPORT_CODES(float, f32)
LANGINTERP_EXPORT_CODES(double, f64)
LANGINTERP_EXPORT_DENSE(float, f32)
LANGINTERP_EXPORT_DENSE(double, f64)
LANGINTERP_EXPORT(float, f32)
LANGINTERP_EXPORT(double, f64)

int max_nodes() { return kMaxN; }
}
