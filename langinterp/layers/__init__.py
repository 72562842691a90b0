"""High-order layers: links that are piecewise polynomials, computed at close to the cost of a Linear.

- basis.py: nodes, Lagrange basis, segment location, the weight layout (K weights per link).
- piecewise.py: HighOrderLinear and the choice of fast path (dense basis, CPU kernel, Triton, gather).
- kernel.cpp / kernel.py: the CPU gather kernel, built on first use, exposed as torch custom ops.
- triton_kernels.py / triton_ops.py: the same passes for CUDA in Triton, exposed as torch custom ops.
- eager.py: the layers' calls of those ops, through a plain autograd.Function outside torch.compile.
- character.py: CharacterInput, the input layer over character codes as a table lookup.
- init.py, norm.py, refine.py: initialisations, normalisations, h/p-refinement.

Weight layout everywhere: ``weight[in, K, out]`` = high-order-layers-torch's ``w[out, in, K]``
permuted (ours = ``w.permute(1, 2, 0)``).
"""

from .basis import KINDS, chebyshev_lobatto, lagrange, locate, node_positions, weights_per_link
from .character import CharacterInput, codes_to_unit
from .init import INITIALIZATIONS, initialize
from .norm import NORMALIZATIONS, MaxAbs, MaxCenter, normalization
from .piecewise import PATHS, HighOrderLinear
from .refine import refine, transfer_matrix

__all__ = [
    "INITIALIZATIONS",
    "KINDS",
    "NORMALIZATIONS",
    "PATHS",
    "CharacterInput",
    "HighOrderLinear",
    "MaxAbs",
    "MaxCenter",
    "chebyshev_lobatto",
    "codes_to_unit",
    "initialize",
    "lagrange",
    "locate",
    "node_positions",
    "normalization",
    "refine",
    "transfer_matrix",
    "weights_per_link",
]
