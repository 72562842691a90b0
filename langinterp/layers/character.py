"""CharacterInput: the piecewise input layer over character codes, computed as a table lookup.

A code c in 0..127 enters as x = (c + 0.5) / 64 - 1 (``codes_to_unit``). For any segment count the segment
and local coordinate of each of the 128 possible x are fixed, so each code's contribution to link (i -> o)
is a fixed combination of n weights: sum_k phi_k(t_c) weight[i, j_c * stride + k, o]. With 128 segments
every code sits at the centre of its own segment (t = 0). The layer therefore builds, per call, the table
T[i, c, :] (in*128*n*out multiply-adds, independent of the batch) and sums the rows T[i, codes[..., i]]
with embedding_bag: the cost of an embedding, and exactly HighOrderLinear(length, out, ...) applied to
codes_to_unit(codes) (``as_linear`` returns that layer, sharing the weight parameter).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .basis import chebyshev_lobatto, check_kind, lagrange, locate, stride, weights_per_link
from .init import initialize
from .piecewise import HighOrderLinear

CODES = 128


def codes_to_unit(codes: Tensor) -> Tensor:
    """Character codes 0..127 to the centres of 128 equal cells of [-1, 1]: (c + 0.5) / 64 - 1."""
    return (codes.to(torch.get_default_dtype()) + 0.5) / 64 - 1


class CharacterInput(nn.Module):
    """Piecewise layer reading integer codes [..., length] (int64 or uint8, 0..127) -> [..., out_features].

    ``weight`` has HighOrderLinear's layout [length, K, out_features] and high-order-layers-torch mapping.
    """

    def __init__(
        self,
        length: int,
        out_features: int,
        n: int,
        segments: int = 128,
        kind: str = "continuous",
        initialization: str = "linear",
    ) -> None:
        super().__init__()
        check_kind(kind, n, segments)
        self.length, self.out_features = length, out_features
        self.n, self.segments, self.kind = n, segments, kind
        K = weights_per_link(kind, n, segments)
        self.weight = nn.Parameter(torch.empty(length, K, out_features))
        initialize(self.weight, initialization, kind, n, segments)
        x = codes_to_unit(torch.arange(CODES)).double()
        j, t = locate(x, segments)
        self.register_buffer("code_t", t.to(torch.get_default_dtype()))
        self.register_buffer("code_rows", j.unsqueeze(-1) * stride(kind, n) + torch.arange(n))
        self.register_buffer("position_offset", torch.arange(length) * CODES, persistent=False)

    @property
    def in_features(self) -> int:
        """The number of character positions read, named as on HighOrderLinear."""
        return self.length

    def table(self) -> Tensor:
        """T[i, c, o]: the contribution of code c at position i to output o, differentiable in the weights."""
        weight = self.weight
        phi = lagrange(self.code_t.to(weight.dtype), chebyshev_lobatto(self.n, weight.dtype, weight.device))
        gathered = weight[:, self.code_rows]  # [length, 128, n, out]
        return torch.einsum("icko,ck->ico", gathered, phi)

    def forward(self, codes: Tensor) -> Tensor:
        if codes.shape[-1] != self.length:
            raise ValueError(f"expected codes [..., {self.length}], got {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError("CharacterInput reads integer character codes; use HighOrderLinear for reals")
        lead = codes.shape[:-1]
        indices = codes.reshape(-1, self.length).long() + self.position_offset
        table = self.table().reshape(-1, self.out_features)
        return F.embedding_bag(indices, table, mode="sum").reshape(*lead, self.out_features)

    def as_linear(self) -> HighOrderLinear:
        """The equivalent HighOrderLinear over codes_to_unit(codes), sharing this module's weight."""
        layer = HighOrderLinear(self.length, self.out_features, self.n, self.segments, self.kind)
        layer.weight = self.weight
        return layer.to(device=self.weight.device)

    def extra_repr(self) -> str:
        return (
            f"length={self.length}, out_features={self.out_features}, n={self.n}, "
            f"segments={self.segments}, kind={self.kind!r}"
        )
