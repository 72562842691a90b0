// CPU kernels for piecewise-polynomial layers (kernel.py says why they exist and how they are loaded).
//
// A layer with I inputs, O outputs, n nodes per segment and s segments keeps its weights as a table
// W[I*K, O] (row i*K + node). For every sample r and input i only n rows are active: those of the segment
// that holds x[r, i]. Each entry point makes one pass over the active rows, so time and memory are those of
// a dense Linear(I*n -> O) whatever the number of segments. No torch headers: the file compiles in about
// two seconds and is called through ctypes.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <memory>

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

// Segment, local coordinate, dt/dx and first table row of every input of one row.
template <typename T>
__attribute__((noinline)) void segment_row(const T* __restrict x, int I, int s, int stride, int K,
                                           T* __restrict t, T* __restrict scale, int32_t* __restrict first) {
    const T S = T(s);
#pragma omp simd
    for (int i = 0; i < I; ++i) {
        // floor(u) clamped to [0, s - 1] is the truncation of u clamped first; written so because truncation
        // vectorises where floor does not. A NaN fails both tests and lands in segment 0, never off the table.
        T u = (x[i] + T(1)) / T(2) * S;
        u = u >= T(0) ? u : T(0);
        u = u <= S - T(1) ? u : S - T(1);
        const int32_t j = int32_t(u);
        const T jf = T(j);
        const T low = jf / S * T(2) - T(1), high = (jf + T(1)) / S * T(2) - T(1);
        t[i] = T(2) * ((x[i] - low) / (high - low)) - T(1);
        scale[i] = T(2) / (high - low);
        first[i] = i * K + j * stride;
    }
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

template <typename T>
void locate(const Basis<T>& b, const T* x, int64_t rows, int I, int s, int stride, int K, T* phi,
            int32_t* row_of, T* dphi) {
    const int n = b.n;
#pragma omp parallel
    {
        std::unique_ptr<T[]> t(new T[I]), scale(new T[I]);
        std::unique_ptr<int32_t[]> first(new int32_t[I]);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t e = r * I * n;
            locate_row(b, x + r * I, I, s, stride, K, t.get(), scale.get(), first.get(), phi + e, row_of + e,
                       dphi ? dphi + e : nullptr);
        }
    }
}

// Vectors of `Bytes` bytes (64: one AVX-512 register) that may load from any element address.
template <typename T, int Bytes>
struct Vec {
    typedef T type __attribute__((vector_size(Bytes), aligned(sizeof(T)), may_alias));
    static constexpr int width = Bytes / sizeof(T);
};

// Inputs are visited in groups whose weight slice (group x K rows x block columns) stays in the L2 cache,
// so the scattered row reads of the gather hit the cache instead of memory, and each slice serves a chunk
// of up to 256 rows before the next is loaded (fewer when that would leave threads idle). The sizes were
// tuned on a 2 MiB-L2 Xeon with uniformly random inputs (measured, not derived).
inline int64_t row_chunk(int64_t rows) {
    const int64_t per_thread = (rows + omp_get_max_threads() - 1) / omp_get_max_threads();
    return per_thread < 32 ? 32 : (per_thread > 256 ? 256 : per_thread);
}

inline int group_size(int I, int K, int64_t row_bytes, int64_t slice_bytes) {
    const int64_t g = slice_bytes / (int64_t(K) * row_bytes);
    return int(g < 1 ? 1 : (g > I ? I : g));
}

// A block of output columns held in NV registers: it computes [c0, c0 + NV*width) and keeps only the
// columns from `keep` on. The last block of a row is shifted left to end at O (overlapping the one before)
// rather than shrunk, so every block runs at full vector width and no column is done in scalar code.
struct Block {
    int c0, keep, nv;
};

template <typename T>
int plan_blocks(int O, Block* blocks) {
    constexpr int VL = Vec<T, 64>::width;
    int count = 0, c = 0;
    while (c < O) {
        const int remaining = O - c;
        if (remaining >= 8 * VL) {
            blocks[count++] = {c, c, 8};
            c += 8 * VL;
            continue;
        }
        int nv = 1;
        while (nv * VL < remaining) nv *= 2;
        if (nv * VL > O) nv = 0;  // narrower than one vector: scalar
        blocks[count++] = {nv ? O - nv * VL : c, c, nv};
        c = O;
    }
    return count;
}

// The active entries of inputs [i0, i1) of one row: e = k * I + i for every node k (entries are k-major).
struct Span {
    int I, n, i0, i1;
};

// y[keep : c0 + NV*width] (+)= sum over the span's entries e of phi[e] W[row_of[e], c0 : ...].
template <typename T, int NV>
inline void gather_block(const T* phi, const int32_t* row_of, Span sp, const T* W, int O, Block b, T* y,
                         bool first) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    V acc[NV];
    const V* init = reinterpret_cast<const V*>(y + b.c0);
    for (int v = 0; v < NV; ++v) acc[v] = first ? V{} : init[v];
    for (int k = 0; k < sp.n; ++k)
        for (int e = k * sp.I + sp.i0; e < k * sp.I + sp.i1; ++e) {
            const T p = phi[e];
            const V* w = reinterpret_cast<const V*>(W + int64_t(row_of[e]) * O + b.c0);
            for (int v = 0; v < NV; ++v) acc[v] += p * w[v];
        }
    if (b.keep == b.c0) {
        V* out = reinterpret_cast<V*>(y + b.c0);
        for (int v = 0; v < NV; ++v) out[v] = acc[v];
    } else {
        T lanes[NV * VL];
        for (int v = 0; v < NV; ++v) reinterpret_cast<V*>(lanes)[v] = acc[v];
        for (int c = b.keep; c < b.c0 + NV * VL; ++c) y[c] = lanes[c - b.c0];
    }
}

template <typename T>
inline void gather_any(const T* phi, const int32_t* row_of, Span sp, const T* W, int O, Block b, T* y,
                       bool first) {
    switch (b.nv) {
        case 8: gather_block<T, 8>(phi, row_of, sp, W, O, b, y, first); return;
        case 4: gather_block<T, 4>(phi, row_of, sp, W, O, b, y, first); return;
        case 2: gather_block<T, 2>(phi, row_of, sp, W, O, b, y, first); return;
        case 1: gather_block<T, 1>(phi, row_of, sp, W, O, b, y, first); return;
        default:
            for (int c = b.keep; c < O; ++c) {
                T acc = first ? T(0) : y[c];
                for (int k = 0; k < sp.n; ++k)
                    for (int e = k * sp.I + sp.i0; e < k * sp.I + sp.i1; ++e)
                        acc += phi[e] * W[int64_t(row_of[e]) * O + c];
                y[c] = acc;
            }
    }
}

template <typename T>
void forward(const T* x, const T* W, T* y, T* phi, int32_t* row_of, int64_t rows, int I, int O, int n, int s,
             int stride, int K) {
    const Basis<T> basis(n);
    locate(basis, x, rows, I, s, stride, K, phi, row_of, static_cast<T*>(nullptr));
    std::unique_ptr<Block[]> blocks(new Block[O / Vec<T, 64>::width + 2]);
    const int count = plan_blocks<T>(O, blocks.get());
    const int E = I * n;
    const int64_t chunk = row_chunk(rows);
    const int64_t chunks = (rows + chunk - 1) / chunk;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t q = 0; q < chunks; ++q)
        for (int bi = 0; bi < count; ++bi) {
            const Block b = blocks[bi];
            const int G = group_size(I, K, int64_t(b.nv ? b.nv * Vec<T, 64>::width : 1) * sizeof(T), 512 << 10);
            const int64_t r1 = (q + 1) * chunk < rows ? (q + 1) * chunk : rows;
            for (int i0 = 0; i0 < I; i0 += G) {
                const int i1 = i0 + G < I ? i0 + G : I;
                for (int64_t r = q * chunk; r < r1; ++r)
                    gather_any(phi + r * E, row_of + r * E, Span{I, n, i0, i1}, W, O, b, y + r * O, i0 == 0);
            }
        }
}

// dW[row_of[e], c0 : ...] += phi[e] g for the span's entries e, g the block's columns of dy with the columns
// before `keep` zeroed (so an overlapping block adds nothing twice).
template <typename T, int NV>
inline void scatter_block(const T* phi, const int32_t* row_of, Span sp, const T* dy, int O, Block b, T* dW) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    V g[NV];
    if (b.keep == b.c0) {
        for (int v = 0; v < NV; ++v) g[v] = reinterpret_cast<const V*>(dy + b.c0)[v];
    } else {
        T lanes[NV * VL];
        for (int c = 0; c < NV * VL; ++c) lanes[c] = b.c0 + c < b.keep ? T(0) : dy[b.c0 + c];
        for (int v = 0; v < NV; ++v) g[v] = reinterpret_cast<const V*>(lanes)[v];
    }
    for (int k = 0; k < sp.n; ++k)
        for (int e = k * sp.I + sp.i0; e < k * sp.I + sp.i1; ++e) {
            V* w = reinterpret_cast<V*>(dW + int64_t(row_of[e]) * O + b.c0);
            const T p = phi[e];
            for (int v = 0; v < NV; ++v) w[v] += p * g[v];
        }
}

template <typename T>
inline void scatter_any(const T* phi, const int32_t* row_of, Span sp, const T* dy, int O, Block b, T* dW) {
    switch (b.nv) {
        case 8: scatter_block<T, 8>(phi, row_of, sp, dy, O, b, dW); return;
        case 4: scatter_block<T, 4>(phi, row_of, sp, dy, O, b, dW); return;
        case 2: scatter_block<T, 2>(phi, row_of, sp, dy, O, b, dW); return;
        case 1: scatter_block<T, 1>(phi, row_of, sp, dy, O, b, dW); return;
        default:
            for (int k = 0; k < sp.n; ++k)
                for (int e = k * sp.I + sp.i0; e < k * sp.I + sp.i1; ++e)
                    for (int c = b.keep; c < O; ++c) dW[int64_t(row_of[e]) * O + c] += phi[e] * dy[c];
    }
}

// dW[row_of[r, e], c] += phi[r, e] dy[r, c]. Threads own disjoint groups of inputs, hence disjoint rows of
// dW: no atomics, and sums that do not depend on the number of threads.
template <typename T>
void grad_weight(const T* x, const T* dy, T* dW, T* phi, int32_t* row_of, int64_t rows, int I, int O, int n,
                 int s, int stride, int K) {
    const Basis<T> basis(n);
    locate(basis, x, rows, I, s, stride, K, phi, row_of, static_cast<T*>(nullptr));
    std::unique_ptr<Block[]> blocks(new Block[O / Vec<T, 64>::width + 2]);
    const int count = plan_blocks<T>(O, blocks.get());
    const int E = I * n;
    const int G = group_size(I, K, int64_t(O) * sizeof(T), 512 << 10);
    const int groups = (I + G - 1) / G;
#pragma omp parallel for schedule(dynamic, 1)
    for (int gi = 0; gi < groups; ++gi) {
        const int i0 = gi * G, i1 = (gi + 1) * G < I ? (gi + 1) * G : I;
        for (int bi = 0; bi < count; ++bi)
            for (int64_t r = 0; r < rows; ++r)
                scatter_any(phi + r * E, row_of + r * E, Span{I, n, i0, i1}, dy + r * O, O, blocks[bi], dW);
    }
}

// <W[row_q], g> for four rows at once (four independent accumulators hide latency). The columns past the
// last full vector are covered by one vector ending at O, against `tail`, a copy of those columns of g with
// the ones already counted zeroed.
template <typename T>
inline void dot4(const T* W, const int32_t* rows, const T* g, const T* tail, int O, T* out) {
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    const T* w[4];
    for (int q = 0; q < 4; ++q) w[q] = W + int64_t(rows[q]) * O;
    V acc[4] = {V{}, V{}, V{}, V{}};
    int c = 0;
    for (; c + VL <= O; c += VL) {
        const V gv = *reinterpret_cast<const V*>(g + c);
        for (int q = 0; q < 4; ++q) acc[q] += *reinterpret_cast<const V*>(w[q] + c) * gv;
    }
    if (c < O && O >= VL) {
        const V gv = *reinterpret_cast<const V*>(tail);
        for (int q = 0; q < 4; ++q) acc[q] += *reinterpret_cast<const V*>(w[q] + O - VL) * gv;
        c = O;
    }
    for (int q = 0; q < 4; ++q) {
        T sum = 0;
        for (int v = 0; v < VL; ++v) sum += acc[q][v];
        for (int cc = c; cc < O; ++cc) sum += w[q][cc] * g[cc];
        out[q] = sum;
    }
}

// dx[r, i] = sum_k dphi_k/dx <W[row_k], dy[r]>, group by group of inputs for cache reuse of W.
template <typename T>
void grad_input(const T* x, const T* W, const T* dy, T* dx, T* phi, T* dphi, int32_t* row_of, int64_t rows,
                int I, int O, int n, int s, int stride, int K) {
    constexpr int VL = Vec<T, 64>::width;
    const Basis<T> basis(n);
    const int E = I * n;
    locate(basis, x, rows, I, s, stride, K, phi, row_of, dphi);
    const int G = group_size(I, K, int64_t(O) * sizeof(T), 1024 << 10);
    const int64_t chunk = row_chunk(rows);
    const int64_t chunks = (rows + chunk - 1) / chunk;
    const int full = O / VL * VL;
#pragma omp parallel for schedule(static)
    for (int64_t q = 0; q < chunks; ++q) {
        const int64_t r1 = (q + 1) * chunk < rows ? (q + 1) * chunk : rows;
        T dots[4], tail[VL];
        int32_t quad[4];
        for (int i0 = 0; i0 < I; i0 += G) {
            const int i1 = i0 + G < I ? i0 + G : I;
            for (int64_t r = q * chunk; r < r1; ++r) {
                const int32_t* ro = row_of + r * E;
                const T* dp = dphi + r * E;
                const T* g = dy + r * O;
                if (O >= VL)
                    for (int v = 0; v < VL; ++v) tail[v] = O - VL + v < full ? T(0) : g[O - VL + v];
                T* out = dx + r * I;
                for (int i = i0; i < i1; ++i) out[i] = 0;
                for (int k = 0; k < n; ++k) {
                    for (int i = i0; i < i1; i += 4) {
                        const int m = i1 - i < 4 ? i1 - i : 4;
                        const int e = k * I + i;
                        for (int u = 0; u < 4; ++u) quad[u] = ro[e + (u < m ? u : 0)];
                        dot4(W, quad, g, tail, O, dots);
                        for (int u = 0; u < m; ++u) out[i + u] += dp[e + u] * dots[u];
                    }
                }
            }
        }
    }
}

// The dense-basis path for small K: basis[r, i*K + row] = phi, zero elsewhere, one row at a time so that
// zeroing and filling happen in cache.
template <typename T>
void dense_basis(const T* x, T* basis, int64_t rows, int I, int n, int s, int stride, int K) {
    const Basis<T> b(n);
    const int64_t width = int64_t(I) * K;
#pragma omp parallel
    {
        std::unique_ptr<T[]> t(new T[I]), scale(new T[I]), phi(new T[I * n]);
        std::unique_ptr<int32_t[]> first(new int32_t[I]), row_of(new int32_t[I * n]);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            locate_row(b, x + r * I, I, s, stride, K, t.get(), scale.get(), first.get(), phi.get(), row_of.get(),
                       static_cast<T*>(nullptr));
            T* out = basis + r * width;
            for (int64_t c = 0; c < width; ++c) out[c] = 0;
            for (int e = 0; e < I * n; ++e) out[row_of[e]] = phi[e];
        }
    }
}

// dx[r, i] = sum_k dphi_k/dx projected[r, row_k], projected = dy @ W^T of the dense path.
template <typename T>
void dense_grad_input(const T* x, const T* projected, T* dx, int64_t rows, int I, int n, int s, int stride,
                      int K) {
    const Basis<T> b(n);
    const int64_t width = int64_t(I) * K;
#pragma omp parallel
    {
        std::unique_ptr<T[]> t(new T[I]), scale(new T[I]), phi(new T[I * n]), dphi(new T[I * n]);
        std::unique_ptr<int32_t[]> first(new int32_t[I]), row_of(new int32_t[I * n]);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            locate_row(b, x + r * I, I, s, stride, K, t.get(), scale.get(), first.get(), phi.get(), row_of.get(),
                       dphi.get());
            const T* p = projected + r * width;
            T* out = dx + r * I;
            for (int i = 0; i < I; ++i) out[i] = 0;
            for (int k = 0; k < n; ++k)
                for (int i = 0; i < I; ++i) out[i] += dphi[k * I + i] * p[row_of[k * I + i]];
        }
    }
}

}  // namespace

extern "C" {

// `threads` comes from torch.get_num_threads() at the call (fewer for small calls), so these kernels share
// the torch thread budget.
// phi, dphi and row_of are caller-provided scratch of rows * I * n elements each (so that torch sees
// and accounts for that memory).
#define LANGINTERP_EXPORT(T, SUFFIX)                                                                         \
    void forward_##SUFFIX(const T* x, const T* W, T* y, T* phi, int32_t* row_of, int64_t rows, int I, int O, \
                          int n, int s, int stride, int K, int threads) {                                   \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                     \
        forward<T>(x, W, y, phi, row_of, rows, I, O, n, s, stride, K);                                      \
    }                                                                                                       \
    void grad_weight_##SUFFIX(const T* x, const T* dy, T* dW, T* phi, int32_t* row_of, int64_t rows, int I, \
                              int O, int n, int s, int stride, int K, int threads) {                        \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                     \
        grad_weight<T>(x, dy, dW, phi, row_of, rows, I, O, n, s, stride, K);                                \
    }                                                                                                       \
    void grad_input_##SUFFIX(const T* x, const T* W, const T* dy, T* dx, T* phi, T* dphi, int32_t* row_of,  \
                             int64_t rows, int I, int O, int n, int s, int stride, int K, int threads) {    \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                     \
        grad_input<T>(x, W, dy, dx, phi, dphi, row_of, rows, I, O, n, s, stride, K);                        \
    }

#define LANGINTERP_EXPORT_DENSE(T, SUFFIX)                                                                   \
    void dense_basis_##SUFFIX(const T* x, T* basis, int64_t rows, int I, int n, int s, int stride, int K,     \
                              int threads) {                                                                \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                     \
        dense_basis<T>(x, basis, rows, I, n, s, stride, K);                                                 \
    }                                                                                                       \
    void dense_grad_input_##SUFFIX(const T* x, const T* projected, T* dx, int64_t rows, int I, int n, int s,  \
                                   int stride, int K, int threads) {                                        \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                     \
        dense_grad_input<T>(x, projected, dx, rows, I, n, s, stride, K);                                    \
    }

LANGINTERP_EXPORT_DENSE(float, f32)
LANGINTERP_EXPORT_DENSE(double, f64)
LANGINTERP_EXPORT(float, f32)
LANGINTERP_EXPORT(double, f64)

int max_nodes() { return kMaxN; }
}
