"""HighOrderLinear: a fully connected layer whose every link is a piecewise polynomial.

Weights: one parameter ``weight`` of shape [in_features, K, out_features], K the weights per link (basis.py).
``weight[i, c, o]`` is the value of link (i -> o) at its c-th node, which is high-order-layers-torch's
``w[o, i, c]``: ours = ``w.permute(1, 2, 0)``, theirs = ``weight.permute(2, 0, 1)``, for PiecewisePolynomial
(continuous), PiecewiseDiscontinuousPolynomial (discontinuous) and Polynomial (polynomial, K = n). The
optional bias (off by default; the package has none) is added to the output.

The layer computes y[..., o] = sum_i sum_k phi_k(t_i) weight[i, j_i * stride + k, o] (+ bias[o]): seen as a
table of in*K rows, each input activates n rows, so the work is that of a dense Linear(in*n -> out). The
path is chosen per call (``path = "auto"``), or forced by setting the ``path`` attribute:

- ``dense`` for small K (``dense_pays``): scatter the n basis values of each input into a [rows, in*K]
  matrix and do one matmul (BLAS; runs anywhere, autocasts), costing K/n times the minimum. Autograd keeps
  the basis for dL/dW, as a Linear keeps its input. On CPU in float32/float64 the basis matrix and dL/dx
  are built in C (kernel.py, one pass per row), on CUDA by two Triton kernels (triton_ops.py, one launch
  each); else by PyTorch operations, with autograd supplying the derivatives. Where the compiled kernel
  runs, dense is taken up to K = max(2n, 3): benchmarks/paths.py times both at batch 1024; with n >= 2
  dense wins or ties up to K/n = 2 and loses beyond (at K/n = 2.5-4 the kernel is 1.03-1.9x faster over
  three runs); with n = 1, where the kernel does least per row it fetches, dense wins up to K = 3 and the
  kernel from K = 4 (by up to 1.2x). Elsewhere the alternative is the slow gather path, or Triton, not
  timed at small K, so dense is kept up to K = 4n.
- ``reduced`` instead of ``dense`` where the compiled kernel runs, on calls doing enough work
  (``reduced_pays``: rows * in * out >= 2^24 in training, 2^26 in inference): the same matmul with one
  column fewer per input, that column's weight folded into a bias (reduced.py; a link's basis values sum
  to one), K - 1 columns per input instead of K. With n = 2 and 2 segments exactly the multiply-adds of
  Linear(in*n -> out). In benchmarks/paths.py it was faster than dense in every case (1.44-2.03x the
  Linear where dense took 1.82-2.28x, up to K/n = 2). Against the kernel (since its difference rows in
  dL/dx; benchmarks/README.md, *Dense or kernel*) it is faster up to K - 1 = 1.5n (n = 3 with 2
  segments: 1.63-1.65x against 1.97-2.05x; n = 4 with 2, 1.80-1.85x against 1.84-1.89x), ties just
  above (discontinuous n = 3 with 2 segments, K - 1 = 5: 1.99-2.01x against 2.00-2.10x) and is slower
  beyond (n = 5 with 2 segments, K - 1 = 1.6n: 1.87-1.91x against 1.72-1.74x; n = 2 with 4, n = 3 with
  3), so it is taken up to K - 1 = max(floor(1.5n), 3) (n = 1: 3 columns, where it ties with the kernel).
  It converts the weights on every call, so small calls (generation) keep the plain dense path; on CUDA
  the Triton dense path stays (not timed).
- ``kinks`` instead of both for a continuous layer with n = 2 and at most 2 segments (kinks.py), on calls
  of at least 256 rows and 128 inputs (``kinks_pay``), except on CUDA with Triton: the same function as a
  Linear over [x, |x - x_1|, ..., |x - x_{s-1}|] (s values per input, as on the reduced basis) plus a
  bias, the coefficients a fixed linear map of the weights. Its first s columns are x itself, so it builds
  half the features the reduced basis builds; where both run they tie (benchmarks/paths.py, also at the
  shapes of recipes/sparse_mlp.toml, and benchmarks/train.py), and it also runs without the compiled
  kernel, so it keeps this case. With 3 segments and more its elementwise work, which grows with the
  knots, made it no faster than dense (0-7% slower at 3 segments, 13-27% at 7), so it is taken only up
  to 2 (forced, it runs with any count). Plain PyTorch operations: autograd, autocast and torch.compile
  apply as they are. On CUDA the Triton dense path stays until the two are timed on a GPU.
- ``kernel`` for larger K on CPU in float32/float64: the compiled gather kernel (kernel.py), which touches
  only the active rows in forward and backward; its work and scratch memory do not grow with segments
  (its time grows somewhat once the weight table outgrows the caches).
- ``triton`` for larger K on CUDA when Triton is installed: Triton kernels (triton_ops.py) that, like the CPU
  kernel, touch only the active rows; for K > 64 not under strict torch.use_deterministic_algorithms (their
  dL/dW then adds atomically).
- ``gather`` for larger K elsewhere (no compiler, no Triton, that deterministic mode, other devices):
  embedding_bag over the flattened row indices with the basis values as per-sample weights; exact, memory
  independent of segments, but its CPU backward is slow, hence the kernels.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernel, triton_ops
from .basis import chebyshev_lobatto, check_kind, lagrange, locate, stride, weights_per_link
from .init import initialize
from .kinks import kink_linear
from .reduced import reduced_linear, reduced_pays

PATHS = ("auto", "dense", "reduced", "kinks", "kernel", "triton", "gather")
DENSE_RATIO = 4
KINKS_MAX_SEGMENTS = 2
KINKS_MIN_ROWS = 256
KINKS_MIN_INPUTS = 128


def dense_pays(columns: int, n: int, on_kernel: bool, reduced: bool = False) -> bool:
    """Whether the dense path is the faster one for ``columns`` basis columns per input (K, or K - 1 on the
    reduced basis: ``reduced``) and n nodes, against the compiled kernel (``on_kernel``) or the other paths
    (see the module docstring for the measurements)."""
    if not on_kernel:
        return columns <= DENSE_RATIO * n
    return columns <= max(3 * n // 2 if reduced else 2 * n, 3)


def kinks_pay(x: Tensor) -> bool:
    """Whether x [rows, in] is large enough for the kink basis: it converts the weights on every call (a
    cost independent of the batch) and saves one column of the matmul per input (a cost that grows with
    it). Spot checks at batch 64-1024 and 64-256 inputs and outputs put the break-even near 256 rows and
    128 inputs (below, up to 1.35x the dense path's time; at 1024 rows and 128-250 inputs, 0.80-0.88x)."""
    return x.shape[0] >= KINKS_MIN_ROWS and x.shape[-1] >= KINKS_MIN_INPUTS


def _basis_op(x: Tensor, weight: Tensor):
    """The op that builds the dense path's basis matrix (with its dL/dx) in one pass: the C kernel's on the
    CPU, Triton's on CUDA; None where neither runs, and PyTorch operations build it instead."""
    if kernel.supports(x, weight):
        return kernel.apply_piecewise_basis
    if triton_ops.supports_dense(x, weight):
        return triton_ops.apply_piecewise_basis
    return None


def as_rows(x: Tensor) -> Tensor:
    """x [..., in] as the [rows, in] matrix the paths take: x itself when it is one already, since a reshape
    to the same shape still makes a view, and in the autograd graph a node that every backward pass runs."""
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


def in_shape_of(y: Tensor, x: Tensor) -> Tensor:
    """y [rows, out], computed from as_rows(x), in x's leading shape [..., out]: y itself when x was
    [rows, in]."""
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def active_rows(x: Tensor, nodes: Tensor, segments: int, step: int, K: int) -> tuple[Tensor, Tensor]:
    """Basis values phi [rows, in, n] (differentiable in x) and their table rows i*K + j*step + k."""
    j, t = locate(x, segments)
    phi = lagrange(t, nodes)
    n = nodes.shape[0]
    first = torch.arange(x.shape[-1], device=x.device) * K + j * step
    return phi, first.unsqueeze(-1) + torch.arange(n, device=x.device)


class HighOrderLinear(nn.Module):
    """Piecewise-polynomial fully connected layer mapping [..., in_features] -> [..., out_features].

    kind: "continuous" (neighbouring segments share their end node), "discontinuous" (n = 1 is piecewise
    constant) or "polynomial" (one segment). Exactly the functions of high-order-layers-torch on [-1, 1],
    with the edge polynomial extrapolated outside.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n: int,
        segments: int,
        kind: str = "continuous",
        bias: bool = False,
        initialization: str = "linear",
    ) -> None:
        super().__init__()
        check_kind(kind, n, segments)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"features must be >= 1, got in={in_features}, out={out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.n, self.segments, self.kind = n, segments, kind
        self.path = "auto"
        K = weights_per_link(kind, n, segments)
        self.weight = nn.Parameter(torch.empty(in_features, K, out_features))
        # Too many weights per link for the dense path on any call (reduced basis or not): where the kernel
        # runs, "auto" takes it without weighing the call (see forward on why a few checks matter).
        self._kernel_whenever_supported = not (
            dense_pays(K, n, on_kernel=True) or dense_pays(K - 1, n, on_kernel=True, reduced=True)
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        initialize(self.weight, initialization, kind, n, segments)

    @property
    def takes_kinks(self) -> bool:
        """Whether the kink basis (kinks.py) can compute this layer: continuous with n = 2."""
        return self.kind == "continuous" and self.n == 2

    @property
    def weights_per_link(self) -> int:
        """K: (n - 1) * segments + 1 when continuous, else n * segments."""
        return self.weight.shape[1]

    def choose_path(self, x: Tensor) -> str:
        """The computation ``forward`` uses for x (see the module docstring)."""
        return self._path_for(x, self.weight)

    def _path_for(self, x: Tensor, weight: Tensor) -> str:
        """choose_path with the weight parameter already fetched: a module attribute lookup costs about half a
        microsecond, and in a training step the layer's Python runs with cold caches (see ``forward``)."""
        K = weight.shape[1]
        if self.path != "auto":
            if self.path not in PATHS:
                raise ValueError(f"unknown path {self.path!r}; expected one of {', '.join(PATHS)}")
            if self.path == "reduced" and not (kernel.supports(x, weight) and K > 1):
                raise ValueError(
                    "the reduced path needs the compiled CPU kernel (float32/float64 on the CPU) and more "
                    "than one weight per link"
                )
            if self.path == "kinks" and not self.takes_kinks:
                raise ValueError("the kinks path needs a continuous layer with n = 2")
            return self.path
        on_kernel = kernel.supports(x, weight)
        if on_kernel and self._kernel_whenever_supported:
            return "kernel"
        reduced = on_kernel and K > 1 and reduced_pays(x, weight)
        if dense_pays(K - reduced, self.n, on_kernel, reduced):
            kinks = self.takes_kinks and self.segments <= KINKS_MAX_SEGMENTS and kinks_pay(x)
            if kinks and not triton_ops.supports_dense(x, weight):
                return "kinks"
            return "reduced" if reduced else "dense"
        if on_kernel:
            return "kernel"
        return "triton" if triton_ops.supports(x, weight) else "gather"

    def forward(self, x: Tensor) -> Tensor:
        # Kept lean: in a training step this Python runs between kernel passes that stream megabytes through
        # the caches, and finds its own code and objects evicted, so each operation here costs several times
        # its warm time (measured ad hoc). Fetching the weight once, no .to() of the same dtype and fewer
        # checks on the path (with eager.py's and kernel.py's) took the input layer over reals' step to
        # 0.94-0.97 of its time (benchmarks/step_ab.py, two runs; the other layers with 128 segments
        # 0.96-0.99).
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs [..., {self.in_features}], got {tuple(x.shape)}")
        weight = self.weight
        flat = as_rows(x)
        if flat.dtype != weight.dtype:  # .to() costs a microsecond even when it returns its input
            flat = flat.to(weight.dtype)
        path = self._path_for(flat, weight)
        step = stride(self.kind, self.n)
        if path == "kinks":
            y = kink_linear(flat, weight)
        elif path == "reduced":
            y = reduced_linear(flat, weight, self.n, self.segments, step)
        elif path == "kernel":
            y = kernel.apply_piecewise(flat, weight, self.n, self.segments, step)
        elif path == "triton":
            y = triton_ops.apply_piecewise(flat, weight, self.n, self.segments, step)
        else:
            y = self._from_table(flat, path, step)
        if self.bias is not None:
            y = y + self.bias
        return in_shape_of(y, x)

    def _from_table(self, flat: Tensor, path: str, step: int) -> Tensor:
        """The paths that read the weights as one table [in*K, out]: dense (the basis matrix times the table)
        and gather."""
        weight = self.weight
        K = self.weights_per_link
        table = weight.reshape(-1, self.out_features)
        if path == "dense" and (basis_op := _basis_op(flat, weight)):
            return basis_op(flat, K, self.n, self.segments, step) @ table
        nodes = chebyshev_lobatto(self.n, weight.dtype, weight.device)
        phi, rows = active_rows(flat, nodes, self.segments, step, K)
        if path == "dense":
            basis = flat.new_zeros(flat.shape[0], table.shape[0])
            basis = basis.scatter(1, rows.flatten(1), phi.flatten(1))
            return basis @ table
        return F.embedding_bag(rows.flatten(1), table, per_sample_weights=phi.flatten(1), mode="sum")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, "
            f"segments={self.segments}, kind={self.kind!r}, bias={self.bias is not None}"
        )
