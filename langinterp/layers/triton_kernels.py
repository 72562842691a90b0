"""Triton device code of the piecewise layers (triton_ops.py wraps it as torch ops and says why).

Imported only when a layer takes the Triton path, so that importing langinterp never imports Triton.
Every program locates each of its rows' (samples') segment of input i exactly as basis.py does and
evaluates the n Lagrange basis values there; forward, dL/dx and the atomic dL/dW then gather (or add into)
the n weight rows of that segment, while the dense dL/dW multiplies a tile of the basis by the gradient.
The dense path's two kernels write the basis matrix itself, for a matmul, and read dL/dx back from the
gradient of that matrix.
Arithmetic runs in ``ACC`` (float32, or float64 for float64 weights) whatever the storage type. The sizes
are never specialised: Triton would otherwise turn a size of 1 into a compile-time constant, which has no
``.to`` and would need its own compilation.
"""

import triton
import triton.language as tl

SIZES = ["rows", "inputs", "outputs", "K", "S"]


@triton.jit
def _segment(x, S, ACC: tl.constexpr):
    """Segment j (int32), local coordinate t and dt/dx of x, in basis.locate's arithmetic.

    floor(u) clamped to [0, S - 1] is the truncation of u clamped first; a NaN fails both tests and lands in
    segment 0, never off the table (as the CPU kernel does).
    """
    s = S.to(ACC)
    u = (x + 1.0) / 2.0 * s
    u = tl.where(u >= 0.0, u, 0.0)
    u = tl.where(u <= s - 1.0, u, s - 1.0)
    j = u.to(tl.int32)
    jf = j.to(ACC)
    low = jf / s * 2.0 - 1.0
    high = (jf + 1.0) / s * 2.0 - 1.0
    t = 2.0 * ((x - low) / (high - low)) - 1.0
    return j, t, 2.0 / (high - low)


@triton.jit
def _phi(t, nodes_ptr, inv_ptr, k: tl.constexpr, N: tl.constexpr):
    """phi_k(t) = prod_{m != k} (t - X_m) / (X_k - X_m), as a product times the inverse denominator."""
    p = tl.full(t.shape, 1.0, t.dtype)
    for m in tl.static_range(N):
        if m != k:
            p = p * (t - tl.load(nodes_ptr + m))
    return p * tl.load(inv_ptr + k)


@triton.jit
def _dphi(t, nodes_ptr, inv_ptr, k: tl.constexpr, N: tl.constexpr):
    """d phi_k / dt, by the product rule over the same factors as _phi."""
    p = tl.full(t.shape, 1.0, t.dtype)
    dp = tl.zeros(t.shape, t.dtype)
    for m in tl.static_range(N):
        if m != k:
            d = t - tl.load(nodes_ptr + m)
            dp = dp * d + p
            p = p * d
    return dp * tl.load(inv_ptr + k)


@triton.jit(do_not_specialize=SIZES)
def forward(
    x_ptr, w_ptr, y_ptr, nodes_ptr, inv_ptr, rows, inputs, outputs, K, S,
    STRIDE: tl.constexpr, N: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr,
    BI: tl.constexpr,
):  # fmt: skip
    """y[r, o] = sum_i sum_k phi_k(t_ri) W[i, j_ri * STRIDE + k, o] for a tile of BR rows by BO outputs.

    BI inputs per step, unrolled: each weight load depends on a load of x, so one input per step made the
    loop a chain of two memory latencies per input; BI independent chains per step overlap them.
    """
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    rows_in = r < rows
    outputs_in = o < outputs
    acc = tl.zeros([BR, BO], dtype=ACC)
    for i0 in range(0, inputs, BI):
        for b in tl.static_range(BI):
            i = i0 + b
            present = rows_in & (tl.zeros([BR], tl.int32) + i < inputs)
            x = tl.load(x_ptr + r * inputs + i, mask=present, other=0.0).to(ACC)
            j, t, _ = _segment(x, S, ACC)
            first = i * K + j.to(tl.int64) * STRIDE
            mask = present[:, None] & outputs_in[None, :]
            for k in tl.static_range(N):
                address = w_ptr + (first + k)[:, None] * outputs + o[None, :]
                w = tl.load(address, mask=mask, other=0.0).to(ACC)
                acc += _phi(t, nodes_ptr, inv_ptr, k, N)[:, None] * w
    mask = rows_in[:, None] & outputs_in[None, :]
    tl.store(y_ptr + r[:, None] * outputs + o[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=SIZES)
def grad_input(
    x_ptr, w_ptr, g_ptr, dx_ptr, nodes_ptr, inv_ptr, rows, inputs, outputs, K, S,
    STRIDE: tl.constexpr, N: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr,
):  # fmt: skip
    """dx[r, i] = dt/dx sum_o g[r, o] sum_k phi_k'(t_ri) W[i, j_ri * STRIDE + k, o]; BR rows of input i."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    i = tl.program_id(1)
    rows_in = r < rows
    x = tl.load(x_ptr + r * inputs + i, mask=rows_in, other=0.0).to(ACC)
    j, t, scale = _segment(x, S, ACC)
    first = i * K + j.to(tl.int64) * STRIDE
    dx = tl.zeros([BR], dtype=ACC)
    for o0 in range(0, outputs, BO):
        o = o0 + tl.arange(0, BO)
        mask = rows_in[:, None] & (o < outputs)[None, :]
        g = tl.load(g_ptr + r[:, None] * outputs + o[None, :], mask=mask, other=0.0).to(ACC)
        slope = tl.zeros([BR, BO], dtype=ACC)
        for k in tl.static_range(N):
            w = tl.load(w_ptr + (first + k)[:, None] * outputs + o[None, :], mask=mask, other=0.0).to(ACC)
            slope += _dphi(t, nodes_ptr, inv_ptr, k, N)[:, None] * w
        dx += tl.sum(slope * g, axis=1)
    tl.store(dx_ptr + r * inputs + i, (dx * scale).to(dx_ptr.dtype.element_ty), mask=rows_in)


@triton.jit(do_not_specialize=SIZES)
def grad_weight(
    x_ptr, g_ptr, dw_ptr, nodes_ptr, inv_ptr, rows, inputs, outputs, K, S,
    STRIDE: tl.constexpr, N: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr,
):  # fmt: skip
    """dW[i, j_ri * STRIDE + k, o] += phi_k(t_ri) g[r, o] for BR rows of input i and BO outputs (atomic adds
    into a buffer of type ACC: rows that share a segment add into the same entries)."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    i = tl.program_id(1)
    o = tl.program_id(2) * BO + tl.arange(0, BO)
    rows_in = r < rows
    mask = rows_in[:, None] & (o < outputs)[None, :]
    x = tl.load(x_ptr + r * inputs + i, mask=rows_in, other=0.0).to(ACC)
    j, t, _ = _segment(x, S, ACC)
    first = i * K + j.to(tl.int64) * STRIDE
    g = tl.load(g_ptr + r[:, None] * outputs + o[None, :], mask=mask, other=0.0).to(ACC)
    for k in tl.static_range(N):
        contribution = _phi(t, nodes_ptr, inv_ptr, k, N)[:, None] * g
        tl.atomic_add(dw_ptr + (first + k)[:, None] * outputs + o[None, :], contribution, mask=mask)


@triton.jit(do_not_specialize=SIZES)
def grad_weight_dense(
    x_ptr, g_ptr, dw_ptr, nodes_ptr, inv_ptr, rows, inputs, outputs, K, S,
    STRIDE: tl.constexpr, N: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr,
    KP: tl.constexpr,
):  # fmt: skip
    """dW[i, :, o] = basis_i^T g for input i and BO outputs, basis_i [rows, K] holding phi_k(t_ri) at column
    j_ri * STRIDE + k: the program walks all rows BR at a time, builds that tile of basis_i in registers and
    adds basis^T @ g by tl.dot into a [KP, BO] tile (KP >= K, a power of two) that it stores once at the end.
    No atomic adds, so the result is the same in every run; the dense tile costs KP / n times the work of
    the gather, which pays only while K is small (triton_ops.DENSE_GRAD_WEIGHT_MAX_K)."""
    i = tl.program_id(0)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    columns = tl.arange(0, KP)
    outputs_in = o < outputs
    acc = tl.zeros([KP, BO], dtype=ACC)
    for r0 in range(0, rows, BR):
        r = r0 + tl.arange(0, BR).to(tl.int64)
        rows_in = r < rows
        x = tl.load(x_ptr + r * inputs + i, mask=rows_in, other=0.0).to(ACC)
        j, t, _ = _segment(x, S, ACC)
        first = j * STRIDE
        basis = tl.zeros([BR, KP], dtype=ACC)
        for k in tl.static_range(N):
            phi = _phi(t, nodes_ptr, inv_ptr, k, N)
            basis += tl.where(columns[None, :] == (first + k)[:, None], phi[:, None], 0.0)
        # Rows past the end have g = 0, so whatever segment their x = 0 picks adds nothing.
        mask = rows_in[:, None] & outputs_in[None, :]
        g = tl.load(g_ptr + r[:, None] * outputs + o[None, :], mask=mask, other=0.0).to(ACC)
        acc += tl.dot(tl.trans(basis), g, input_precision="ieee")
    stored = (columns < K)[:, None] & outputs_in[None, :]
    address = dw_ptr + (i * K + columns).to(tl.int64)[:, None] * outputs + o[None, :]
    tl.store(address, acc.to(dw_ptr.dtype.element_ty), mask=stored)


@triton.jit(do_not_specialize=SIZES)
def dense_basis(
    x_ptr, basis_ptr, nodes_ptr, inv_ptr, rows, inputs, outputs, K, S,
    STRIDE: tl.constexpr, N: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr,
):  # fmt: skip
    """The dense path's basis [rows, inputs * K]: phi_k(t_ri) at column i * K + j_ri * STRIDE + k, zero
    elsewhere, for a tile of BR rows by BO of its columns (``outputs`` is unused: the matmul has them).

    Tiles of whole rows' columns, so that neighbouring threads store neighbouring entries; each entry finds
    its input, locates that input's segment and keeps the one basis value (if any) that lands on it.
    """
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    column = tl.program_id(1).to(tl.int64) * BO + tl.arange(0, BO)
    width = inputs.to(tl.int64) * K
    mask = (r < rows)[:, None] & (column < width)[None, :]
    i = column // K
    x = tl.load(x_ptr + r[:, None] * inputs + i[None, :], mask=mask, other=0.0).to(ACC)
    j, t, _ = _segment(x, S, ACC)
    node = (column - i * K)[None, :] - j.to(tl.int64) * STRIDE
    value = tl.zeros([BR, BO], dtype=ACC)
    for k in tl.static_range(N):
        value = tl.where(node == k, _phi(t, nodes_ptr, inv_ptr, k, N), value)
    address = basis_ptr + r[:, None] * width + column[None, :]
    tl.store(address, value.to(basis_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=SIZES)
def dense_grad_input(
    x_ptr, p_ptr, dx_ptr, nodes_ptr, inv_ptr, rows, inputs, outputs, K, S,
    STRIDE: tl.constexpr, N: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BO: tl.constexpr,
):  # fmt: skip
    """dx[r, i] = dt/dx sum_k phi_k'(t_ri) p[r, i * K + j_ri * STRIDE + k] for a tile of BR rows by BO
    inputs, p = dL/dbasis = dL/dy @ W^T of the dense path (``outputs`` is unused)."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    i = tl.program_id(1) * BO + tl.arange(0, BO)
    mask = (r < rows)[:, None] & (i < inputs)[None, :]
    at = r[:, None] * inputs + i[None, :]
    x = tl.load(x_ptr + at, mask=mask, other=0.0).to(ACC)
    j, t, scale = _segment(x, S, ACC)
    first = r[:, None] * inputs * K + (i * K)[None, :] + j.to(tl.int64) * STRIDE
    dx = tl.zeros([BR, BO], dtype=ACC)
    for k in tl.static_range(N):
        p = tl.load(p_ptr + first + k, mask=mask, other=0.0).to(ACC)
        dx += _dphi(t, nodes_ptr, inv_ptr, k, N) * p
    tl.store(dx_ptr + at, (dx * scale).to(dx_ptr.dtype.element_ty), mask=mask)
