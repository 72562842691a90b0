// Mamba's selective scan fused into one CPU pass (scan_kernel.py says why and how it is loaded).
//
// Shapes are the model's, channel-last and contiguous: u, delta, y [batch, L, D]; A [D, N]; B, C
// [batch, L, N]; Dskip [D]. Work is split into tasks of one batch row and a block of W channels (W lanes
// of one SIMD register, so every loop over lanes vectorises; leftover channels go one at a time). A task
// keeps its W x N states in L1 and walks the time axis once: nothing of size [batch, L, D, N] is ever
// stored. The backward pass recomputes the task's states into a thread-local [L, N, W] buffer and runs
// the adjoint recurrence dL/dh_t = C_t dy_t + exp(delta_{t+1} A) dL/dh_{t+1} backwards in time. dB and
// dC (sums over channels) and dA, dD (sums over the batch) are written per task into partial buffers and
// summed in a fixed order afterwards: no atomics, and the result does not depend on the thread count.
// No torch headers: the file compiles in about a second and is called through ctypes.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp(x) for the SIMD loops: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial, 2^n by
// building the exponent bits. GCC only vectorises std::exp under -ffast-math; this stays within a few
// ulps in both precisions and returns 0 below the smallest normal result (where std::exp is subnormal).
template <typename T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
    using Bits = std::int32_t;
    static constexpr float low = -87.33654f;  // ln of the smallest normal float
    static constexpr float high = 88.0f;
    static constexpr float shifter = 12582912.0f;  // 1.5 * 2^23: x + shifter rounds x to an integer
    static constexpr float ln2_high = 0.693359375f, ln2_low = -2.12194440e-4f;  // Cody-Waite split
    static constexpr int mantissa = 23, bias = 127, degree = 7;
};

template <>
struct ExpConstants<double> {
    using Bits = std::int64_t;
    static constexpr double low = -708.3964185322641;
    static constexpr double high = 709.0;
    static constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52
    static constexpr double ln2_high = 6.93145751953125e-1, ln2_low = 1.42860682030941723212e-6;
    static constexpr int mantissa = 52, bias = 1023, degree = 13;
};

// 1 / k!: the Taylor coefficients of exp, as constants.
template <typename T, int Degree>
struct Taylor {
    T c[Degree + 1];
    constexpr Taylor() : c() {
        double factorial = 1;
        for (int k = 0; k <= Degree; ++k) {
            c[k] = T(1 / factorial);
            factorial *= k + 1;
        }
    }
};

// x[k] = exp(x[k]) for W lanes (W known at compile time, so the loop needs no masks or remainder).
template <typename T, int W>
inline void exp_lanes(T* __restrict x) {
    using E = ExpConstants<T>;
    using Bits = typename E::Bits;
    static constexpr Taylor<T, E::degree> taylor;
    Bits shifter_bits;
    std::memcpy(&shifter_bits, &E::shifter, sizeof shifter_bits);
#pragma omp simd
    for (int k = 0; k < W; ++k) {
        const T v = x[k];
        const T c = std::min(std::max(v, E::low), E::high);
        const T shifted = c * T(1.4426950408889634) + E::shifter;
        const T n = shifted - E::shifter;
        const T r = (c - n * E::ln2_high) - n * E::ln2_low;
        T p = taylor.c[E::degree];
#pragma GCC unroll 16
        for (int j = E::degree - 1; j >= 0; --j) p = p * r + taylor.c[j];
        Bits bits;
        std::memcpy(&bits, &shifted, sizeof bits);
        const Bits scale_bits = (bits - shifter_bits + E::bias) << E::mantissa;
        T scale;
        std::memcpy(&scale, &scale_bits, sizeof scale);
        x[k] = v < E::low ? T(0) : p * scale;
    }
}

// The sum of W lanes as a tree (log2 W dependent adds instead of W), in a fixed order.
template <typename T, int W>
inline T lane_sum(T* __restrict x) {
#pragma GCC unroll 8
    for (int width = W / 2; width > 0; width /= 2)
        for (int k = 0; k < width; ++k) x[k] += x[k + width];
    return x[0];
}

template <typename T>
struct Scratch {
    std::vector<T> states, decays, adjoint, dA, zero;
    Scratch(int64_t length, int64_t NW)
        : states(std::max<int64_t>(1, length) * NW), decays(NW), adjoint(NW), dA(NW), zero(NW) {}
};

template <typename T>
struct Scan {
    const T *u, *delta, *A, *B, *C, *Dskip;
    int64_t batch, length, channels, states;
    std::vector<T> At;  // A transposed to [N, D]: a block's W lanes of one state entry are contiguous

    Scan(const T* u_, const T* delta_, const T* A_, const T* B_, const T* C_, const T* D_, int64_t batch_,
         int64_t length_, int64_t channels_, int64_t states_)
        : u(u_), delta(delta_), A(A_), B(B_), C(C_), Dskip(D_), batch(batch_), length(length_),
          channels(channels_), states(states_), At(channels_ * states_) {
        for (int64_t d = 0; d < channels; ++d)
            for (int64_t n = 0; n < states; ++n) At[n * channels + d] = A[d * states + n];
    }

    // Blocks of W channels, then the leftover channels one by one.
    template <int W>
    int64_t blocks() const {
        return channels / W + channels % W;
    }

    template <int W>
    int64_t block_start(int64_t block) const {
        const int64_t full = channels / W;
        return block < full ? block * W : full * W + (block - full);
    }

    // e[n, k] = exp(delta_t[d0 + k] A[d0 + k, n]) for the block's lanes at row (b, t).
    template <int W>
    void decays(const T* __restrict dt, int64_t d0, T* __restrict e) const {
        for (int64_t n = 0; n < states; ++n) {
            const T* a = At.data() + n * channels + d0;
#pragma omp simd
            for (int k = 0; k < W; ++k) e[n * W + k] = dt[k] * a[k];
            exp_lanes<T, W>(e + n * W);
        }
    }

    // One step of the recurrence for the lanes d0..d0+W at row `row` = b * L + t: next = e * prev + dt u B_t
    // (prev and next may be the same buffer), and, when y is given, y = C_t . next + D u.
    template <int W>
    void step(int64_t row, int64_t d0, const T* prev, T* next, T* __restrict e, T* y) const {
        const T* dt = delta + row * channels + d0;
        const T* x_in = u + row * channels + d0;
        const T* Bt = B + row * states;
        const T* Ct = C + row * states;
        decays<W>(dt, d0, e);
        T drive[W], out[W];
#pragma omp simd
        for (int k = 0; k < W; ++k) {
            drive[k] = dt[k] * x_in[k];
            out[k] = 0;
        }
        for (int64_t n = 0; n < states; ++n) {
            const T b = Bt[n], c = Ct[n];
            const T* p = prev + n * W;
            T* h = next + n * W;
            const T* en = e + n * W;
#pragma omp simd
            for (int k = 0; k < W; ++k) {
                h[k] = en[k] * p[k] + drive[k] * b;
                out[k] += c * h[k];
            }
        }
        if (y) {
            T* y_row = y + row * channels + d0;
#pragma omp simd
            for (int k = 0; k < W; ++k) y_row[k] = out[k] + Dskip[d0 + k] * x_in[k];
        }
    }

    template <int W>
    void forward_block(int64_t b, int64_t d0, T* y, T* h, T* e) const {
        std::fill(h, h + states * W, T(0));
        for (int64_t t = 0; t < length; ++t) step<W>(b * length + t, d0, h, h, e, y);
    }

    // Gradients for one task. du and ddelta are the task's own lanes; dB, dC go to this block's partial
    // [batch, L, N] slice, dA to the batch row's partial [D, N] and dD to its partial [D].
    template <int W>
    void backward_block(int64_t b, int64_t block, int64_t d0, const T* dy, T* du, T* ddelta, T* dB_part, T* dC_part,
                        T* dA_part, T* dD_part, Scratch<T>& scratch) const {
        const int64_t NW = states * W;
        T *hs = scratch.states.data(), *e = scratch.decays.data(), *g = scratch.adjoint.data();
        T *dA_acc = scratch.dA.data(), *zero = scratch.zero.data();
        for (int64_t t = 0; t < length; ++t)
            step<W>(b * length + t, d0, t ? hs + (t - 1) * NW : zero, hs + t * NW, e, nullptr);
        std::fill(g, g + NW, T(0));
        std::fill(dA_acc, dA_acc + NW, T(0));
        T dD_acc[W] = {};
        for (int64_t t = length - 1; t >= 0; --t) {
            const int64_t row = b * length + t;
            const T* dt = delta + row * channels + d0;
            const T* x_in = u + row * channels + d0;
            const T* dy_row = dy + row * channels + d0;
            const T* Bt = B + row * states;
            const T* Ct = C + row * states;
            T* dB_row = dB_part + (block * batch * length + row) * states;
            T* dC_row = dC_part + (block * batch * length + row) * states;
            decays<W>(dt, d0, e);
            const T* h = hs + t * NW;
            T drive[W], d_drive[W], d_dt[W];
#pragma omp simd
            for (int k = 0; k < W; ++k) {
                drive[k] = dt[k] * x_in[k];
                d_drive[k] = 0;
                d_dt[k] = 0;
            }
            for (int64_t n = 0; n < states; ++n) {
                const T bn = Bt[n], cn = Ct[n];
                T* gn = g + n * W;
                const T* hn = h + n * W;
                const T* en = e + n * W;
                const T* a = At.data() + n * channels + d0;
                T* dA_n = dA_acc + n * W;
                const T* prev = (t ? hs + (t - 1) * NW : zero) + n * W;
                T terms_c[W], terms_b[W];
#pragma omp simd
                for (int k = 0; k < W; ++k) {
                    const T gk = gn[k] + cn * dy_row[k];  // dL/dh_t
                    terms_c[k] = hn[k] * dy_row[k];
                    terms_b[k] = gk * drive[k];
                    d_drive[k] += gk * bn;
                    const T q = gk * prev[k] * en[k];  // dL/d(delta_t A) of this entry
                    d_dt[k] += q * a[k];
                    dA_n[k] += q * dt[k];
                    gn[k] = gk * en[k];
                }
                dC_row[n] = lane_sum<T, W>(terms_c);
                dB_row[n] = lane_sum<T, W>(terms_b);
            }
#pragma omp simd
            for (int k = 0; k < W; ++k) {
                du[row * channels + d0 + k] = d_drive[k] * dt[k] + dy_row[k] * Dskip[d0 + k];
                ddelta[row * channels + d0 + k] = d_drive[k] * x_in[k] + d_dt[k];
                dD_acc[k] += dy_row[k] * x_in[k];
            }
        }
        for (int k = 0; k < W; ++k) {
            for (int64_t n = 0; n < states; ++n) dA_part[(b * channels + d0 + k) * states + n] = dA_acc[n * W + k];
            dD_part[b * channels + d0 + k] = dD_acc[k];
        }
    }
};

// Threads worth waking: no more than the tasks, and one per 2^16 state updates (a wake-up costs ~10-100 us).
int thread_count(int requested, int64_t tasks, int64_t work) {
    return int(std::max<int64_t>(1, std::min<int64_t>({int64_t(requested), tasks, work >> 16})));
}

// SIMD lanes per block: one 512-bit register.
template <typename T>
constexpr int kLanes = 64 / sizeof(T);

template <typename T>
void forward(const Scan<T>& s, T* y, int threads) {
    constexpr int W = kLanes<T>;
    const int64_t blocks = s.template blocks<W>();
    const int64_t tasks = s.batch * blocks;
#pragma omp parallel num_threads(thread_count(threads, tasks, tasks * s.length * s.states * W))
    {
        std::vector<T> h(s.states * W), e(s.states * W);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks; ++task) {
            const int64_t b = task / blocks, block = task % blocks;
            const int64_t d0 = s.template block_start<W>(block);
            if (block < s.channels / W)
                s.template forward_block<W>(b, d0, y, h.data(), e.data());
            else
                s.template forward_block<1>(b, d0, y, h.data(), e.data());
        }
    }
}

template <typename T>
void backward(const Scan<T>& s, const T* dy, T* du, T* ddelta, T* dA, T* dB, T* dC, T* dD, int threads) {
    constexpr int W = kLanes<T>;
    const int64_t blocks = s.template blocks<W>();
    const int64_t tasks = s.batch * blocks;
    const int64_t rows = s.batch * s.length;
    std::vector<T> dB_part(blocks * rows * s.states), dC_part(blocks * rows * s.states);
    std::vector<T> dA_part(s.batch * s.channels * s.states), dD_part(s.batch * s.channels);
    const int used = thread_count(threads, tasks, tasks * s.length * s.states * W);
#pragma omp parallel num_threads(used)
    {
        Scratch<T> scratch(s.length, s.states * W);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks; ++task) {
            const int64_t b = task / blocks, block = task % blocks;
            const int64_t d0 = s.template block_start<W>(block);
            if (block < s.channels / W)
                s.template backward_block<W>(b, block, d0, dy, du, ddelta, dB_part.data(), dC_part.data(),
                                             dA_part.data(), dD_part.data(), scratch);
            else
                s.template backward_block<1>(b, block, d0, dy, du, ddelta, dB_part.data(), dC_part.data(),
                                             dA_part.data(), dD_part.data(), scratch);
        }
    }
    // The fixed-order sums over blocks (dB, dC) and batch rows (dA, dD).
    const int64_t entries = rows * s.states;
#pragma omp parallel for num_threads(used) schedule(static)
    for (int64_t i = 0; i < entries; ++i) {
        T sum_b = 0, sum_c = 0;
        for (int64_t block = 0; block < blocks; ++block) {
            sum_b += dB_part[block * entries + i];
            sum_c += dC_part[block * entries + i];
        }
        dB[i] = sum_b;
        dC[i] = sum_c;
    }
    const int64_t weights = s.channels * s.states;
    for (int64_t i = 0; i < weights; ++i) {
        T sum = 0;
        for (int64_t b = 0; b < s.batch; ++b) sum += dA_part[b * weights + i];
        dA[i] = sum;
    }
    for (int64_t d = 0; d < s.channels; ++d) {
        T sum = 0;
        for (int64_t b = 0; b < s.batch; ++b) sum += dD_part[b * s.channels + d];
        dD[d] = sum;
    }
}

}  // namespace

#define SCAN_ENTRY_POINTS(T, suffix)                                                                       \
    extern "C" void scan_forward_##suffix(const T* u, const T* delta, const T* A, const T* B, const T* C,  \
                                          const T* D, T* y, int64_t batch, int64_t length,                 \
                                          int64_t channels, int64_t states, int threads) {                 \
        forward(Scan<T>(u, delta, A, B, C, D, batch, length, channels, states), y, threads);               \
    }                                                                                                      \
    extern "C" void scan_backward_##suffix(const T* u, const T* delta, const T* A, const T* B, const T* C, \
                                           const T* D, const T* dy, T* du, T* ddelta, T* dA, T* dB, T* dC, \
                                           T* dD, int64_t batch, int64_t length, int64_t channels,         \
                                           int64_t states, int threads) {                                  \
        backward(Scan<T>(u, delta, A, B, C, D, batch, length, channels, states), dy, du, ddelta, dA, dB,   \
                 dC, dD, threads);                                                                         \
    }

SCAN_ENTRY_POINTS(float, f32)
SCAN_ENTRY_POINTS(double, f64)
