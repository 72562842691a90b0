"""The kink basis: a continuous piecewise-linear layer (n = 2) as a line plus one |x - x_k| per knot.

A continuous piecewise-linear function with s equal segments on [-1, 1] (node values w_0 .. w_s, slopes
m_j = (w_{j+1} - w_j) s / 2) is, exactly and for every x (the edge segments' lines continue outside):

    f(x) = c + b x + sum_{k=1}^{s-1} a_k |x - x_k|,   x_k = 2 k / s - 1,
    a_k = (m_k - m_{k-1}) / 2,   b = (m_0 + m_{s-1}) / 2,   c = w_0 + m_0 - sum_k a_k x_k.

So the layer is a Linear over s values per input, [x, |x - x_1|, ..., |x - x_{s-1}|], plus a bias (the sum
of every input's c), where the node basis of the dense path needs K = s + 1 values per input: with 2
segments exactly the multiply-adds of nn.Linear(2 in, out). The coefficients are a fixed linear map of the
node values (``kink_map``), applied to the weights on every call (a small matmul), so the weights, their
gradient and the high-order-layers-torch mapping stay those of the node basis. Rounding differs from the
node basis by a few units in the last place. At a knot the derivative is the right segment's slope, as the
package locates x = x_k in segment k.
"""

from functools import cache

import torch
from torch import Tensor


def _kink_values(segments: int) -> tuple[list[list[float]], list[float]]:
    """kink_map's entries as Python floats (float64 arithmetic). Numbers made without torch, so that they
    can be cached (a cached tensor would carry the inference mode, fake mode or device of the call that
    made it) and traced by torch.compile."""
    s = segments
    slopes = [[s / 2 if c == j + 1 else -s / 2 if c == j else 0.0 for c in range(s + 1)] for j in range(s)]
    knots = [2 * k / s - 1 for k in range(1, s)]
    halves = [[(slopes[k + 1][c] - slopes[k][c]) / 2 for c in range(s + 1)] for k in range(s - 1)]
    constant = [
        (1.0 if c == 0 else 0.0) + slopes[0][c] - sum(halves[k][c] * knots[k] for k in range(s - 1))
        for c in range(s + 1)
    ]
    line = [(slopes[0][c] + slopes[-1][c]) / 2 for c in range(s + 1)]
    return [line, *halves, constant], knots


_cached_kink_values = cache(_kink_values)


def _values(segments: int) -> tuple[list[list[float]], list[float]]:
    # torch.compile traces the computation itself (it would warn that it ignores a cache).
    return (_kink_values if torch.compiler.is_compiling() else _cached_kink_values)(segments)


def kink_map(segments: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """C [s + 1, s + 1]: row 0 of C @ w is b, rows 1 .. s - 1 the a_k, row s the constant c, for node values
    w of one link (each entry rounded once, from float64)."""
    return torch.tensor(_values(segments)[0], dtype=dtype, device=device)


def kink_linear(x: Tensor, weight: Tensor) -> Tensor:
    """y [rows, out] of the continuous n = 2 layer with node weights [in, s + 1, out] on x [rows, in]."""
    s = weight.shape[1] - 1
    outputs = weight.shape[2]
    # [s + 1, in, out]: every link's b, a_1 .. a_{s-1} and c, by one small matmul over the node values.
    coefficients = torch.tensordot(kink_map(s, weight.dtype, weight.device), weight, dims=([1], [1]))
    y = torch.addmm(coefficients[s].sum(0), x, coefficients[0])
    if s == 1:
        return y
    # [rows, (s - 1) * in], knot-major like coefficients[1:s]; with 2 segments the one knot is 0.
    if s == 2:
        shifted = x
    else:
        knots = torch.tensor(_values(s)[1], dtype=x.dtype, device=x.device)
        shifted = (x.unsqueeze(1) - knots[:, None]).flatten(1)
    # |x - x_k| as a product with its sign, so that the derivative at the knot is +1 (the right segment);
    # adding +0.0 turns -0.0 into +0.0 first. (abs would give 0 there, and torch.where is far slower.) The
    # sign is a constant to autograd: detached, it costs no zero gradient in the backward pass.
    one = torch.ones((), dtype=shifted.dtype, device=shifted.device)
    sign = torch.copysign(one, shifted.detach() + 0.0)
    return torch.addmm(y, shifted * sign, coefficients[1:s].reshape(-1, outputs))
