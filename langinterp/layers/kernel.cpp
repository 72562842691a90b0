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

// Scratch for one sample: local coordinates, segments, and for every active entry e = k*I + i its basis
// value, derivative and table row. Sized by I*n, so it stays in the L1/L2 cache.
template <typename T>
struct Row {
    std::unique_ptr<T[]> t, scale, phi, dphi;
    std::unique_ptr<int32_t[]> seg, row_of;
    Row(int I, int n, bool derivative)
        : t(new T[I]), scale(new T[I]), phi(new T[I * n]), dphi(derivative ? new T[I * n] : nullptr), seg(new int32_t[I]),
          row_of(new int32_t[I * n]) {}
};

// Segment j = clamp(floor((x + 1) / 2 * s), 0, s - 1) and local coordinate t = s (x + 1) - 2 j - 1, in
// high-order-layers-torch's arithmetic (t = 2 (x - lo) / (hi - lo) - 1, dt/dx = 2 / (hi - lo)); then phi_k(t) = prod_{m != k} (t - X_m) / (X_k - X_m) and, by the
// product rule, its derivative. The loops run over inputs innermost so that they vectorise.
template <typename T>
void locate(const Basis<T>& b, const T* x, int I, int s, int stride, int K, Row<T>& row) {
    const int n = b.n;
    T* t = row.t.get();
    T* scale = row.scale.get();
    int32_t* seg = row.seg.get();
#pragma omp simd
    for (int i = 0; i < I; ++i) {
        const T u = (x[i] + T(1)) / T(2) * T(s);
        T jf = std::floor(u);
        jf = jf >= T(0) ? jf : T(0);  // also sends NaN to the first segment, never to an invalid row
        jf = jf <= T(s - 1) ? jf : T(s - 1);
        seg[i] = int32_t(jf);
        const T low = jf / T(s) * T(2) - T(1), high = (jf + T(1)) / T(s) * T(2) - T(1);
        t[i] = T(2) * ((x[i] - low) / (high - low)) - T(1);
        scale[i] = T(2) / (high - low);
    }
    for (int k = 0; k < n; ++k) {
        T* phi = row.phi.get() + k * I;
        T* dphi = row.dphi ? row.dphi.get() + k * I : nullptr;
        int32_t* row_of = row.row_of.get() + k * I;
        if (dphi) {
#pragma omp simd
            for (int i = 0; i < I; ++i) {
                T p = 1, dp = 0;
                for (int m = 0; m < n; ++m) {
                    const T d = m == k ? T(1) : t[i] - b.nodes[m];
                    dp = m == k ? dp : dp * d + p;
                    p *= d;
                }
                phi[i] = p * b.inv_den[k];
                dphi[i] = dp * b.inv_den[k];
            }
        } else {
#pragma omp simd
            for (int i = 0; i < I; ++i) {
                T p = 1;
                for (int m = 0; m < n; ++m) p *= m == k ? T(1) : t[i] - b.nodes[m];
                phi[i] = p * b.inv_den[k];
            }
        }
#pragma omp simd
        for (int i = 0; i < I; ++i) row_of[i] = i * K + seg[i] * stride + k;
    }
}

// Vectors of `Bytes` bytes (64: one AVX-512 register) that may load from any element address.
template <typename T, int Bytes>
struct Vec {
    typedef T type __attribute__((vector_size(Bytes), aligned(sizeof(T)), may_alias));
    static constexpr int width = Bytes / sizeof(T);
};

// y[c0 : c0 + NV*width] = sum_e phi[e] W[row_of[e], ...] with the accumulators in registers, so each weight
// element costs one load and one fused multiply-add.
template <typename T, int NV, int Bytes>
inline int gather_block(const T* phi, const int32_t* row_of, int E, const T* W, int O, int c0, T* y) {
    typedef typename Vec<T, Bytes>::type V;
    constexpr int span = NV * Vec<T, Bytes>::width;
    if (c0 + span > O) return c0;
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = V{};
    for (int e = 0; e < E; ++e) {
        const T p = phi[e];
        const V* w = reinterpret_cast<const V*>(W + int64_t(row_of[e]) * O + c0);
        for (int v = 0; v < NV; ++v) acc[v] += p * w[v];
    }
    V* out = reinterpret_cast<V*>(y + c0);
    for (int v = 0; v < NV; ++v) out[v] = acc[v];
    return c0 + span;
}

template <typename T>
void gather_row(const T* phi, const int32_t* row_of, int E, const T* W, int O, T* y) {
    constexpr int span = 8 * Vec<T, 64>::width;
    int c = 0;
    for (; c + span <= O; c += span) gather_block<T, 8, 64>(phi, row_of, E, W, O, c, y);
    c = gather_block<T, 4, 64>(phi, row_of, E, W, O, c, y);
    c = gather_block<T, 2, 64>(phi, row_of, E, W, O, c, y);
    c = gather_block<T, 1, 64>(phi, row_of, E, W, O, c, y);
    c = gather_block<T, 1, 32>(phi, row_of, E, W, O, c, y);
    c = gather_block<T, 1, 16>(phi, row_of, E, W, O, c, y);
    for (; c < O; ++c) {
        T acc = 0;
        for (int e = 0; e < E; ++e) acc += phi[e] * W[int64_t(row_of[e]) * O + c];
        y[c] = acc;
    }
}

template <typename T>
void forward(const T* x, const T* W, T* y, int64_t rows, int I, int O, int n, int s, int stride, int K) {
    const Basis<T> basis(n);
#pragma omp parallel
    {
        Row<T> row(I, n, false);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            locate(basis, x + r * I, I, s, stride, K, row);
            gather_row(row.phi.get(), row.row_of.get(), I * n, W, O, y + r * O);
        }
    }
}

// dW[row_of[r, e], c] += phi[r, e] dy[r, c]. Each thread owns a slice of the columns, so no two threads
// write the same element and the sums do not depend on the number of threads.
template <typename T>
void grad_weight(const T* x, const T* dy, T* dW, int64_t rows, int I, int O, int n, int s, int stride,
                 int K) {
    const Basis<T> basis(n);
    const int E = I * n;
    std::unique_ptr<T[]> phi(new T[size_t(rows) * E]);
    std::unique_ptr<int32_t[]> row_of(new int32_t[size_t(rows) * E]);
#pragma omp parallel
    {
        Row<T> row(I, n, false);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            locate(basis, x + r * I, I, s, stride, K, row);
            for (int e = 0; e < E; ++e) {
                phi[r * E + e] = row.phi[e];
                row_of[r * E + e] = row.row_of[e];
            }
        }
    }
    typedef typename Vec<T, 64>::type V;
    constexpr int VL = Vec<T, 64>::width;
    constexpr int span = 4 * VL;
    const int blocks = (O + span - 1) / span;
#pragma omp parallel for schedule(dynamic, 1)
    for (int blk = 0; blk < blocks; ++blk) {
        const int c0 = blk * span;
        const int L = O - c0 < span ? O - c0 : span;
        for (int64_t r = 0; r < rows; ++r) {
            const T* p = phi.get() + r * E;
            const int32_t* ro = row_of.get() + r * E;
            const T* g = dy + r * O + c0;
            if (L == span) {
                V gv[4];
                for (int v = 0; v < 4; ++v) gv[v] = reinterpret_cast<const V*>(g)[v];
                for (int e = 0; e < E; ++e) {
                    V* w = reinterpret_cast<V*>(dW + int64_t(ro[e]) * O + c0);
                    const T pe = p[e];
                    for (int v = 0; v < 4; ++v) w[v] += pe * gv[v];
                }
            } else {
                for (int e = 0; e < E; ++e) {
                    T* w = dW + int64_t(ro[e]) * O + c0;
                    const T pe = p[e];
#pragma omp simd
                    for (int c = 0; c < L; ++c) w[c] += pe * g[c];
                }
            }
        }
    }
}

// <W[row], g> over O columns, four rows at a time so that four independent accumulators hide latency.
template <typename T>
inline void dot4(const T* W, const int32_t* rows, const T* g, int O, T* out) {
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
    for (int q = 0; q < 4; ++q) {
        T sum = 0;
        for (int v = 0; v < VL; ++v) sum += acc[q][v];
        for (int cc = c; cc < O; ++cc) sum += w[q][cc] * g[cc];
        out[q] = sum;
    }
}

// dx[r, i] = dt/dx sum_k dphi_k(t) <W[row_k], dy[r]>, with dt/dx = s up to rounding.
template <typename T>
void grad_input(const T* x, const T* W, const T* dy, T* dx, int64_t rows, int I, int O, int n, int s,
                int stride, int K) {
    const Basis<T> basis(n);
    const int E = I * n;
#pragma omp parallel
    {
        Row<T> row(I, n, true);
        std::unique_ptr<T[]> dots(new T[E + 4]);
        std::unique_ptr<int32_t[]> rows4(new int32_t[E + 4]);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            locate(basis, x + r * I, I, s, stride, K, row);
            for (int e = 0; e < E; ++e) rows4[e] = row.row_of[e];
            for (int e = E; e < E + 4; ++e) rows4[e] = rows4[0];
            for (int e = 0; e < E; e += 4) dot4(W, rows4.get() + e, dy + r * O, O, dots.get() + e);
            T* out = dx + r * I;
            for (int i = 0; i < I; ++i) out[i] = 0;
            for (int k = 0; k < n; ++k)
#pragma omp simd
                for (int i = 0; i < I; ++i) out[i] += row.dphi[k * I + i] * dots[k * I + i];
#pragma omp simd
            for (int i = 0; i < I; ++i) out[i] *= row.scale[i];
        }
    }
}

}  // namespace

extern "C" {

// `threads` is torch.get_num_threads() at the call, so these kernels share the torch thread budget.
#define LANGINTERP_EXPORT(T, SUFFIX)                                                                      \
    void forward_##SUFFIX(const T* x, const T* W, T* y, int64_t rows, int I, int O, int n, int s,       \
                          int stride, int K, int threads) {                                              \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                  \
        forward<T>(x, W, y, rows, I, O, n, s, stride, K);                                                \
    }                                                                                                    \
    void grad_weight_##SUFFIX(const T* x, const T* dy, T* dW, int64_t rows, int I, int O, int n, int s, \
                              int stride, int K, int threads) {                                          \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                  \
        grad_weight<T>(x, dy, dW, rows, I, O, n, s, stride, K);                                          \
    }                                                                                                    \
    void grad_input_##SUFFIX(const T* x, const T* W, const T* dy, T* dx, int64_t rows, int I, int O,    \
                             int n, int s, int stride, int K, int threads) {                             \
        omp_set_num_threads(threads > 0 ? threads : 1);                                                  \
        grad_input<T>(x, W, dy, dx, rows, I, O, n, s, stride, K);                                        \
    }

LANGINTERP_EXPORT(float, f32)
LANGINTERP_EXPORT(double, f64)

int max_nodes() { return kMaxN; }
}
