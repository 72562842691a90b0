"""Mamba: a stack of selective state-space blocks over a character sequence, with a recurrent form.

Each block is pre-norm residual, x + mixer(LayerNorm(x)). The mixer (Gu and Dao, 2023) projects to two
branches of width expand * d_model; one passes a causal depthwise convolution (width d_conv) and SiLU and
drives the selective scan (scan.py), the other gates its output through SiLU; a last projection returns to
d_model. `model.projection` makes the two wide projections (in and out) either nn.Linear or a
piecewise-polynomial HighOrderLinear; the small projections that produce delta, B and C stay linear, since
the step size's initialisation (below) is what makes the scan learn at all.

Initialisation follows the reference implementation, so that the loss at step 0 is close to ln(128): the
embedding (tied to the read-out) is N(0, 0.02), so the logits start near zero; delta starts log-uniform in
[0.001, 0.1]; A_n = -n; the out projections are scaled down by sqrt(layers) so the residual stream does
not grow with depth.

Training runs the whole sequence through a parallel scan; generation (`init_state`, `step`) carries per
layer the last d_conv - 1 convolution inputs and the [expand * d_model, d_state] scan state, so each new
character costs the same however long the text is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langinterp.layers import HighOrderLinear
from langinterp.models.base import CharModel
from langinterp.models.registry import register
from langinterp.models.scan import selective_scan, selective_step
from langinterp.recipe import Recipe
from langinterp.text import VOCAB_SIZE

State = list[tuple[Tensor, Tensor]]


def projection(
    kind: str, in_features: int, out_features: int, n: int, segments: int, initialization: str
) -> nn.Module:
    """nn.Linear without bias for "linear", else a piecewise-polynomial layer of that kind."""
    if kind == "linear":
        return nn.Linear(in_features, out_features, bias=False)
    return HighOrderLinear(in_features, out_features, n, segments, kind=kind, initialization=initialization)


class MambaMixer(nn.Module):
    """The selective state-space mixer of one block: [B, T, d_model] -> [B, T, d_model], causal."""

    def __init__(
        self, d_model: int, d_state: int, expand: int, d_conv: int, layers: int, options: dict, scan: str
    ) -> None:
        super().__init__()
        inner = expand * d_model
        self.inner, self.d_conv, self.scan = inner, d_conv, scan
        self.dt_rank = math.ceil(d_model / 16)
        make = {k: options[k] for k in ("n", "segments", "initialization")}
        self.in_proj = projection(options["projection"], d_model, 2 * inner, **make)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.out_proj = projection(options["projection"], inner, d_model, **make)
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1)
        )
        self.D = nn.Parameter(torch.ones(inner))
        self._initialize(layers)

    def _initialize(self, layers: int) -> None:
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.inner) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
            self.out_proj.weight.div_(math.sqrt(layers))

    def _select(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """delta [.., inner] (positive), B and C [.., d_state], and A [inner, d_state] (negative)."""
        low, B, C = self.x_proj(x).split([self.dt_rank, self.A_log.shape[1], self.A_log.shape[1]], dim=-1)
        return F.softplus(self.dt_proj(low)), B, C, -torch.exp(self.A_log)

    def forward(self, hidden: Tensor) -> Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., : hidden.shape[1]].transpose(1, 2))
        delta, B, C, A = self._select(x)
        y = selective_scan(x, delta, A, B, C, self.D, method=self.scan)
        return self.out_proj(y * F.silu(z))

    def init_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        return like.new_zeros(batch, self.inner, self.d_conv - 1), like.new_zeros(
            batch, self.inner, self.A_log.shape[1]
        )

    def step(self, hidden: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One position, hidden [B, d_model]; the convolution window and scan state carried in `state`."""
        inputs, h = state
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        window = torch.cat([inputs, x.unsqueeze(-1)], dim=-1)  # [B, inner, d_conv]
        x = F.silu((window * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias)
        delta, B, C, A = self._select(x)
        dtype = torch.promote_types(x.dtype, torch.float32)
        y, h = selective_step(h.to(dtype), *(t.to(dtype) for t in (x, delta, A, B, C, self.D)))
        return self.out_proj(y.to(x.dtype) * F.silu(z)), (window[..., 1:], h)


class Mamba(CharModel):
    """Embedding (tied to the read-out) -> Mamba blocks -> LayerNorm -> logits at every position."""

    reads = "sequence"

    def __init__(self, context: int, options: dict) -> None:
        super().__init__(context)
        d_model, layers = options["d_model"], options["layers"]
        self.embedding = nn.Embedding(VOCAB_SIZE, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
        self.mixers = nn.ModuleList(
            MambaMixer(
                d_model,
                options["d_state"],
                options["expand"],
                options["d_conv"],
                layers,
                options,
                options["scan"],
            )
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(d_model)

    @property
    def can_step(self) -> bool:
        return True

    def _read_out(self, hidden: Tensor) -> Tensor:
        return self.final_norm(hidden) @ self.embedding.weight.t()

    def forward(self, codes: Tensor) -> Tensor:
        hidden = self.embedding(codes)
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            hidden = hidden + mixer(norm(hidden))
        return self._read_out(hidden)

    def init_state(self, batch_size: int) -> State:
        return [mixer.init_state(batch_size, self.embedding.weight) for mixer in self.mixers]

    def step(self, codes: Tensor, state: State) -> tuple[Tensor, State]:
        hidden = self.embedding(codes)
        new_state = []
        for norm, mixer, layer_state in zip(self.norms, self.mixers, state, strict=True):
            out, layer_state = mixer.step(norm(hidden), layer_state)
            hidden = hidden + out
            new_state.append(layer_state)
        return self._read_out(hidden), new_state


@register("mamba")
def build(recipe: Recipe) -> Mamba:
    return Mamba(recipe.data["context"], recipe.model)
