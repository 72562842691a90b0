"""The reduced basis: the dense path with one column fewer per input, that column's weight in a bias.

The n basis values of a link's active segment (Lagrange polynomials, extrapolated at the edges too) sum to
one for every x, so the first node's basis function is one minus all the others:

    sum_c phi_c(x) w_c = w_0 + sum_{c >= 1} phi_c(x) (w_c - w_0).

A layer is therefore a Linear over the K - 1 basis values of nodes 1 .. K - 1 of each input, with weights
w_c - w_0, plus a bias: every link's w_0, summed over the inputs. The matmul loses one column in K per input,
a third of the dense path's multiply-adds with n = 2 and 2 segments (then exactly those of
nn.Linear(2 in, out)), a ninth with n = 5. The weights, their gradient and the high-order-layers-torch
mapping stay those of the node basis: ``FoldFirstNode`` converts them on every call, one pass over the
weights forward and one over their gradient backward, a cost that does not shrink with the batch (hence
``reduced_pays``). Rounding differs from the dense path's in the last bits. The compiled CPU kernel builds
the reduced basis matrix and its dL/dx (kernel.piecewise_basis with drop = 1).
"""

import torch
from torch import Tensor

from . import kernel

REDUCED_MIN_WORK = 1 << 24
REDUCED_MIN_WORK_INFERENCE = 1 << 26


class FoldFirstNode(torch.autograd.Function):
    """weight [in, K, out] -> (w_c - w_0 as a [in*(K - 1), out] table, sum of the w_0 [out]), with the
    gradient written in one pass (autograd's own, through slices, zeroes and adds the whole gradient once
    per slice)."""

    @staticmethod
    def forward(weight: Tensor) -> tuple[Tensor, Tensor]:
        first = weight[:, :1]
        return (weight[:, 1:] - first).reshape(-1, weight.shape[2]), first.sum((0, 1))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx, grad_table: Tensor, grad_bias: Tensor) -> Tensor:
        inputs, K, outputs = ctx.shape
        table = grad_table.reshape(inputs, K - 1, outputs)
        return torch.cat([(grad_bias - table.sum(1)).unsqueeze(1), table], dim=1)


def reduced_pays(x: Tensor, weight: Tensor) -> bool:
    """Whether the reduced basis is worth its per-call conversion of the weights for x [rows, in]: it saves
    one column in K of each matmul (three when training, one in inference), so the call must do enough
    work, rows * in * out. benchmarks/paths.py with --width, --batch (and --inference) puts the break-even
    of a training step near 2^24 and of a forward pass near 2^26 (benchmarks/README.md gives the runs)."""
    work = x.shape[0] * weight.shape[0] * weight.shape[2]
    training = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
    return work >= (REDUCED_MIN_WORK if training else REDUCED_MIN_WORK_INFERENCE)


def reduced_linear(x: Tensor, weight: Tensor, n: int, segments: int, step: int) -> Tensor:
    """y [rows, out] of the layer with node weights [in, K, out] (K >= 2) on x [rows, in], through the
    reduced basis; CPU tensors in float32 or float64 (the compiled kernel builds the basis)."""
    table, bias = FoldFirstNode.apply(weight)
    basis = kernel.apply_piecewise_basis(x, weight.shape[1], n, segments, step, 1)
    return torch.addmm(bias, basis, table)
