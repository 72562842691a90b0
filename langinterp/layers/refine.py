"""h- and p-refinement: the same function on more segments or more nodes per segment.

A refined layer's weights are the old link functions evaluated at the new layer's nodes. The map from old
to new weights is one [K_new, K_old] matrix shared by every link (the old basis evaluated at the new node
positions), so refinement is a single einsum. Each new segment takes its values from the old segment that
holds its centre, so a discontinuous layer's jumps stay where they were. The function is reproduced
exactly (to rounding) when the new space contains the old one: n_new >= n and a segment count that is a
multiple of the old one; otherwise the result is the interpolant of the old function at the new nodes.
A polynomial layer refined to several segments becomes a continuous one.
"""

import torch

from .basis import chebyshev_lobatto, lagrange, stride, weights_per_link
from .piecewise import HighOrderLinear


def transfer_matrix(
    kind: str, n: int, segments: int, new_kind: str, new_n: int, new_segments: int
) -> torch.Tensor:
    """M [K_new, K_old] (float64) such that new_weight[i, :, o] = M @ old_weight[i, :, o]."""
    old_nodes, new_nodes = chebyshev_lobatto(n), chebyshev_lobatto(new_n)
    blocks = []
    for j_new in range(new_segments):
        centre = (2 * j_new + 1) / new_segments - 1
        j_old = min(int((centre + 1) / 2 * segments), segments - 1)
        x = (new_nodes + 2 * j_new + 1) / new_segments - 1
        t = segments * (x + 1) - (2 * j_old + 1)
        block = torch.zeros(new_n, weights_per_link(kind, n, segments), dtype=torch.float64)
        first = j_old * stride(kind, n)
        block[:, first : first + n] = lagrange(t, old_nodes)
        blocks.append(block)
    matrix = torch.stack(blocks)  # [new_segments, new_n, K_old]
    if new_kind == "continuous":
        return torch.cat([matrix[:, :-1].reshape(-1, matrix.shape[-1]), matrix[-1:, -1]])
    return matrix.reshape(-1, matrix.shape[-1])


def refine(layer: HighOrderLinear, *, segments: int | None = None, n: int | None = None) -> HighOrderLinear:
    """A new layer with more segments (h) and/or nodes (p) computing the same function as ``layer``.

    The result has the same kind (a polynomial given segments > 1 becomes continuous), bias, device and
    dtype; ``layer`` is left unchanged.
    """
    new_segments = layer.segments if segments is None else segments
    new_n = layer.n if n is None else n
    new_kind = "continuous" if layer.kind == "polynomial" and new_segments > 1 else layer.kind
    if new_kind == "continuous" and new_n < 2:
        raise ValueError("a continuous layer needs n >= 2")
    refined = HighOrderLinear(
        layer.in_features, layer.out_features, new_n, new_segments, new_kind, bias=layer.bias is not None
    ).to(device=layer.weight.device, dtype=layer.weight.dtype)
    matrix = transfer_matrix(layer.kind, layer.n, layer.segments, new_kind, new_n, new_segments)
    with torch.no_grad():
        weight = torch.einsum("ck,iko->ico", matrix.to(layer.weight.device), layer.weight.double())
        refined.weight.copy_(weight)
        if layer.bias is not None:
            refined.bias.copy_(layer.bias)
    refined.path = layer.path
    return refined
