"""Initial weights for piecewise layers, all vectorised over the [in, K, out] weight table.

- ``linear`` (default): every link starts as a random straight line a*x + b, stored as its values at the
  link's nodes. A line has a non-zero slope, so every layer of a deep stack gets a gradient at step 0;
  a ~ U(-1/sqrt(in), 1/sqrt(in)) as in nn.Linear, b ~ U(-1/in, 1/in).
- ``constant_random``: high-order-layers-torch's default, every link a constant c ~ U(0, 1/in). Its slope is
  zero, so no gradient reaches the layers below: kept to reproduce earlier experiments.
- ``uniform``: every weight independently U(-1/in, 1/in), high-order-layers-torch's alternative.
"""

import math

import torch
from torch import Tensor

from langinterp.layer_names import INITIALIZATIONS

from .basis import node_positions


@torch.no_grad()
def initialize(weight: Tensor, method: str, kind: str, n: int, segments: int) -> None:
    """Fill ``weight`` [in, K, out] in place with ``method``, for a layer of this kind, n and segments."""
    inputs, _, outputs = weight.shape
    if method == "linear":
        slope_bound = 1 / math.sqrt(inputs)
        slope = torch.empty(inputs, 1, outputs, dtype=weight.dtype, device=weight.device)
        offset = torch.empty_like(slope)
        slope.uniform_(-slope_bound, slope_bound)
        offset.uniform_(-1 / inputs, 1 / inputs)
        positions = node_positions(kind, n, segments, weight.dtype).to(weight.device)
        weight.copy_(slope * positions.view(1, -1, 1) + offset)
    elif method == "constant_random":
        weight.copy_(torch.rand(inputs, 1, outputs, dtype=weight.dtype, device=weight.device) / inputs)
    elif method == "uniform":
        weight.uniform_(-1 / inputs, 1 / inputs)
    else:
        raise ValueError(f"unknown initialization {method!r}; expected one of {', '.join(INITIALIZATIONS)}")
