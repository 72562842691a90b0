"""Nodes, Lagrange basis and segment location: the maths every piecewise layer shares.

A link of a layer is a piecewise polynomial on [-1, 1] with ``segments`` equal pieces; on each piece it is the
Lagrange polynomial through ``n`` Chebyshev-Lobatto nodes ``X_m = -cos(pi m / (n - 1))`` of the local
coordinate ``t`` in [-1, 1]. For an input ``x`` the active piece and the local coordinate are

    j = clamp(floor((x + 1) / 2 * segments), 0, segments - 1),    t = segments (x + 1) - 2 j - 1,

exactly as high-order-layers-torch computes them (t in its arithmetic, 2 (x - x_lo) / (x_hi - x_lo) - 1,
so that rounding agrees even where far extrapolation amplifies it), so outside [-1, 1] the edge piece's
polynomial is extrapolated. The piece's n weights sit at index ``j * stride + k`` of the link's K weights,
with stride n - 1 (continuous: neighbours share their end node, K = (n - 1) segments + 1) or n (discontinuous,
K = n segments). A global polynomial is one segment.
"""

import math

import torch
from torch import Tensor

from langinterp.layer_names import KINDS


def check_kind(kind: str, n: int, segments: int) -> None:
    """Raise a ValueError that names the fix when (kind, n, segments) do not describe a layer."""
    if kind not in KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (nodes per segment) must be an integer >= 1, got {n!r}")
    if not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be an integer >= 1, got {segments!r}")
    if kind == "continuous" and n < 2:
        raise ValueError("a continuous layer needs n >= 2 (n = 1, piecewise constant, is 'discontinuous')")
    if kind == "polynomial" and segments != 1:
        raise ValueError(f"a 'polynomial' layer has exactly one segment, got segments={segments}")


def stride(kind: str, n: int) -> int:
    """Distance between the first weights of neighbouring segments (shared end node when continuous)."""
    return n - 1 if kind == "continuous" else n


def weights_per_link(kind: str, n: int, segments: int) -> int:
    """K, the number of weights of one link: (n - 1) segments + 1 when continuous, else n segments."""
    return stride(kind, n) * segments + (1 if kind == "continuous" else 0)


def chebyshev_lobatto(n: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """The n nodes on [-1, 1], from -1 to 1; a single node sits at 0 (the piecewise-constant case)."""
    if n == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    m = torch.arange(n, dtype=torch.float64, device=device)
    return (-torch.cos(math.pi * m / (n - 1))).to(dtype)


def lagrange(t: Tensor, nodes: Tensor) -> Tensor:
    """phi_k(t) = prod_{m != k} (t - X_m) / (X_k - X_m) for every node, as a new last dimension [..., n].

    Written with plain differentiable operations (autograd supplies d phi / dt) and as products, never as
    a division by (t - X_k), so that t on a node is exact.
    """
    n = nodes.shape[0]
    if n == 1:
        return torch.ones_like(t).unsqueeze(-1)
    diff = t.unsqueeze(-1) - nodes
    columns = []
    for k in range(n):
        others = torch.cat([diff[..., :k], diff[..., k + 1 :]], dim=-1)
        denominator = torch.prod(torch.cat([nodes[:k], nodes[k + 1 :]]).neg().add(nodes[k]))
        columns.append(torch.prod(others, dim=-1) / denominator)
    return torch.stack(columns, dim=-1)


def locate(x: Tensor, segments: int) -> tuple[Tensor, Tensor]:
    """The active segment j (int64) and the local coordinate t of every input, as the package defines them."""
    j = torch.floor((x.detach() + 1) / 2 * segments).clamp_(0, segments - 1)
    low, high = j / segments * 2 - 1, (j + 1) / segments * 2 - 1
    t = 2 * ((x - low) / (high - low)) - 1
    return j.long(), t


def node_positions(kind: str, n: int, segments: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Global position on [-1, 1] of each of the K weights of a link (the node it is the value at)."""
    nodes = chebyshev_lobatto(n, dtype)
    j = torch.arange(segments, dtype=dtype).unsqueeze(-1)
    x = (nodes + 2 * j + 1) / segments - 1
    if kind == "continuous":
        return torch.cat([x[:, :-1].reshape(-1), x[-1:, -1]])
    return x.reshape(-1)
