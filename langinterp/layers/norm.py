"""Normalisations placed between piecewise layers, over the last dimension.

Piecewise layers are defined on [-1, 1] and extrapolate polynomially outside it, so deep stacks keep their
activations in range with one of these:

- ``layer``: nn.LayerNorm(features); its affine weights are ordinary parameters (they train, save and load
  with the module), unlike the lazily created ones of the earlier research code.
- ``max_abs``: x / (max |x| + eps), into [-1, 1].
- ``max_center``: (x - mid) / (max - mid + eps) with mid = (max + min) / 2, also into [-1, 1].
- ``none``: identity.
"""

from torch import Tensor, nn

from langinterp.layer_names import NORMALIZATIONS


class MaxAbs(nn.Module):
    """Divide by the largest magnitude of the last dimension (high-order-layers-torch's max_abs)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x / (x.abs().amax(dim=-1, keepdim=True) + self.eps)


class MaxCenter(nn.Module):
    """Centre the last dimension on its mid-range and scale it into [-1, 1] (the package's max_center)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        high = x.amax(dim=-1, keepdim=True)
        low = x.amin(dim=-1, keepdim=True)
        middle = 0.5 * (high + low)
        return (x - middle) / (high - middle + self.eps)


def normalization(kind: str, features: int) -> nn.Module:
    """The normalisation module ``kind`` for inputs [..., features]."""
    if kind == "layer":
        return nn.LayerNorm(features)
    if kind == "max_abs":
        return MaxAbs()
    if kind == "max_center":
        return MaxCenter()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r}; expected one of {', '.join(NORMALIZATIONS)}")
