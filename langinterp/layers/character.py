"""CharacterInput: the piecewise input layer over character codes, computed as a table lookup.

A code c in 0..127 enters as x = (c + 0.5) / 64 - 1 (``codes_to_unit``). For any segment count the segment
and local coordinate of each of the 128 possible x are fixed, so each code's contribution to link (i -> o)
is a fixed combination of n weight rows: sum_k phi_k(t_c) weight[i, j_c * stride + k, o]. With 128 segments
every code sits at the centre of its own segment (t = 0, exactly, in floating point too). The result is
exactly HighOrderLinear(length, out, ...) applied to codes_to_unit(codes); ``as_linear`` returns that
layer, sharing the weight parameter. Three lookups, chosen per call:

- on the CPU, float32/float64 with the C++ kernel (kernel.py): ``kernel.character_lookup``. From 256 rows on
  it builds the table T[i, c, :] (one row per code: sum_k phi_k(t_c) weight[i, j_c * stride + k]) and sums
  one row per input and sample with the sample's outputs in registers; fewer rows take the gather pass on
  the codes' x, which reads n rows per input. Its dL/dW sums each code's rows of dL/dy once and spreads the
  sum over the code's n weight rows. At batch 1024 (16 inputs, 250 outputs, 128 segments) the forward pass
  took 0.78-0.86 and dL/dW 0.85-0.91 of the time of the gather passes on the same x (two runs of
  `benchmarks/kernel_ab.py`, benchmarks/README.md);
- on CUDA with Triton (triton_ops.py): the gather kernel on the codes' x. On an H200 the table lookup below
  took 1.75 ms forward+backward where the Triton kernels on the same layer over reals took 0.63 ms
  (benchmarks/layers.py --device cuda, benchmarks/README.md);
- elsewhere (no compiler, no Triton, other devices): build the table T (length*128*n*out
  multiply-adds, independent of the batch; with 128 segments a sum of strided views of the weights,
  nothing gathered) and sum the rows T[i, codes[..., i]] with embedding_bag, under a custom backward
  (_Lookup).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernel, triton_ops
from .basis import chebyshev_lobatto, check_kind, lagrange, locate, stride, weights_per_link
from .init import initialize
from .piecewise import HighOrderLinear, as_rows, in_shape_of

CODES = kernel.CODES  # one code per 7-bit character; the C++ passes over codes are built for them


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

    def _view_step(self) -> int | None:
        """The weight stride between consecutive codes when every code has its own segment, else None."""
        return stride(self.kind, self.n) if self.segments == CODES else None

    def code_basis(self) -> Tensor:
        """phi [128, n]: the basis values of each code's local coordinate, in the weight's dtype."""
        weight = self.weight
        return lagrange(self.code_t.to(weight.dtype), chebyshev_lobatto(self.n, weight.dtype, weight.device))

    def table(self) -> Tensor:
        """T[i, c, o]: the contribution of code c at position i to output o, differentiable in the weights."""
        return _table(self.weight, self.code_rows, self.code_basis(), self._view_step())

    def forward(self, codes: Tensor) -> Tensor:
        if codes.shape[-1] != self.length:
            raise ValueError(f"expected codes [..., {self.length}], got {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError("CharacterInput reads integer character codes; use HighOrderLinear for reals")
        if codes.device.type == "cpu" and not torch.compiler.is_compiling() and codes.numel():
            # A code out of range would silently read another position's row; checked where it is cheap
            # (on CUDA it would cost a synchronisation per call).
            low, high = map(int, codes.aminmax())
            if low < 0 or high >= CODES:
                raise ValueError(f"character codes must lie in 0..{CODES - 1}, got {low}..{high}")
        weight = self.weight
        flat = as_rows(codes)
        op = _kernel_op(flat, weight)
        if op is not None:
            y = op(flat, weight, self.n, self.segments, stride(self.kind, self.n))
        else:
            positions = flat.long() + self.position_offset
            y = _Lookup.apply(weight, positions, self.code_rows, self.code_basis(), self._view_step())
        return in_shape_of(y, codes)

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


def _kernel_op(codes: Tensor, weight: Tensor):
    """The kernel lookup for these tensors (the C++ kernel's over codes, or Triton's gather), or None."""
    if kernel.supports(codes, weight):
        return _cpu_kernel
    if triton_ops.supports(codes, weight):
        return _triton_gather
    return None


def _cpu_kernel(codes: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """kernel.character_lookup on codes [rows, length]: the layer checks that they lie in 0..127 (outside
    torch.compile), so uint8 holds them; the kernel keeps any other inside its table."""
    return kernel.apply_character_lookup(codes.to(torch.uint8), weight, n, segments, step)


def _triton_gather(codes: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """Triton's gather kernel on the codes' x, which is exact in every float type (odd numbers of 128ths)."""
    return triton_ops.apply_piecewise((codes.to(weight.dtype) + 0.5) / 64 - 1, weight, n, segments, step)


def _table(weight: Tensor, rows: Tensor, phi: Tensor, step: int | None) -> Tensor:
    """T[i, c] = sum_k phi[c, k] weight[i, rows[c, k]]. With 128 segments rows[c, k] = c * step + k, so the
    k-th term is a strided view of the weights and nothing is gathered (pass that step; else None)."""
    n = rows.shape[1]
    if step is not None:
        return sum(phi[:, k, None] * weight[:, k : k + CODES * step : step] for k in range(n))
    return sum(phi[:, k, None] * weight.index_select(1, rows[:, k]) for k in range(n))


class _Lookup(torch.autograd.Function):
    """y[b] = sum_i T[i, positions[b, i] - 128 i], with T built from the weights inside, so that autograd
    keeps neither T nor its gather. The backward adds dy into dT one position at a time (index_add, no
    sort) and maps dT back onto the weights term by term: both cost about as much as the forward pass."""

    @staticmethod
    def forward(
        ctx, weight: Tensor, positions: Tensor, rows: Tensor, phi: Tensor, step: int | None
    ) -> Tensor:
        table = _table(weight, rows, phi, step)
        ctx.save_for_backward(positions, rows, phi)
        ctx.weight_shape, ctx.step = weight.shape, step
        return F.embedding_bag(positions, table.reshape(-1, weight.shape[2]), mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):
        positions, rows, phi = ctx.saved_tensors
        length, _, outputs = ctx.weight_shape
        grad = grad.contiguous()
        grad_table = grad.new_zeros(length * CODES, outputs)
        for i in range(length):
            grad_table.index_add_(0, positions[:, i], grad)
        grad_table = grad_table.view(length, CODES, outputs)
        grad_weight = grad.new_zeros(ctx.weight_shape)
        step = ctx.step
        for k in range(rows.shape[1]):
            term = grad_table * phi[:, k, None]
            if step is not None:
                grad_weight[:, k : k + CODES * step : step] += term
            else:
                grad_weight.index_add_(1, rows[:, k], term)
        return grad_weight, None, None, None, None
