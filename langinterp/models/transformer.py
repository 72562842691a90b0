"""A causal character transformer whose layers may be piecewise polynomials.

Each character enters through a high-order input layer: `CharacterInput(1, d_model, n, segments)` applied
at every position, a per-character table lookup when segments = 128. A position code indexed by the place
in the sequence (0..T-1, never the place in the batch) is added: learned, or the fixed sinusoids of
Vaswani et al. Pre-norm blocks follow, each x + attention(LayerNorm(x)) then x + feed_forward(LayerNorm(x)),
where attention runs across positions (`F.scaled_dot_product_attention`, causal, q/k/v shaped
[B, heads, T, head_dim]). `model.layer` makes Q/K/V, the attention output and the feed-forward layers
piecewise-polynomial (`HighOrderLinear`, the feed-forward pair joined by a LayerNorm that keeps the second
layer's inputs in its [-1, 1] domain) or standard (`nn.Linear` with GELU between the feed-forward pair).
A LayerNorm and a linear read-out give logits for the next character at every position.

The model has no recurrent form: generation recomputes over the last `context` characters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langinterp.errors import UsageError
from langinterp.layers import CharacterInput, HighOrderLinear
from langinterp.models.base import CharModel
from langinterp.models.registry import register
from langinterp.recipe import Recipe
from langinterp.text import VOCAB_SIZE


def dense(options: dict, in_features: int, out_features: int) -> nn.Module:
    """The block's layer: nn.Linear for layer = "linear", else a HighOrderLinear of that kind."""
    if options["layer"] == "linear":
        return nn.Linear(in_features, out_features)
    return HighOrderLinear(
        in_features,
        out_features,
        options["n"],
        options["segments"],
        kind=options["layer"],
        bias=True,
        initialization=options["initialization"],
    )


def sinusoids(length: int, features: int) -> Tensor:
    """The fixed position code: sin and cos of position / 10000^(2i / features)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, features, 2, dtype=torch.float32) * (-math.log(10000.0) / features))
    code = torch.zeros(length, features)
    code[:, 0::2] = torch.sin(position * rate)
    code[:, 1::2] = torch.cos(position * rate)[:, : features // 2]
    return code


class CausalSelfAttention(nn.Module):
    """Multi-head attention across positions, each position seeing itself and the ones before it."""

    def __init__(self, options: dict) -> None:
        super().__init__()
        d_model, self.heads = options["d_model"], options["heads"]
        self.qkv = dense(options, d_model, 3 * d_model)
        self.out = dense(options, d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, d_model = x.shape
        q, k, v = (
            t.view(batch, length, self.heads, d_model // self.heads).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=-1)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, heads, T, head_dim]
        return self.out(y.transpose(1, 2).reshape(batch, length, d_model))


class FeedForward(nn.Module):
    """Two layers: with GELU between them when linear, with a LayerNorm between them when piecewise."""

    def __init__(self, options: dict) -> None:
        super().__init__()
        width = options["feedforward"]
        between = nn.GELU() if options["layer"] == "linear" else nn.LayerNorm(width)
        self.layers = nn.Sequential(
            dense(options, options["d_model"], width), between, dense(options, width, options["d_model"])
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Block(nn.Module):
    def __init__(self, options: dict) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(options["d_model"])
        self.attention = CausalSelfAttention(options)
        self.feedforward_norm = nn.LayerNorm(options["d_model"])
        self.feedforward = FeedForward(options)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feedforward(self.feedforward_norm(x))


class Transformer(CharModel):
    """High-order character input + position code -> causal blocks -> logits at every position."""

    reads = "sequence"

    def __init__(self, context: int, options: dict) -> None:
        super().__init__(context)
        d_model = options["d_model"]
        if d_model % options["heads"]:
            raise UsageError(
                f"model.d_model ({d_model}) must be a multiple of model.heads ({options['heads']})"
            )
        entry = options["input"]
        self.input = CharacterInput(
            1,
            d_model,
            entry["n"],
            entry["segments"],
            kind=entry["kind"],
            initialization=options["initialization"],
        )
        if options["positions"] == "learned":
            self.positions = nn.Parameter(torch.randn(context, d_model) * 0.02)
        else:
            self.register_buffer("positions", sinusoids(context, d_model), persistent=False)
        self.blocks = nn.ModuleList(Block(options) for _ in range(options["layers"]))
        self.final_norm = nn.LayerNorm(d_model)
        self.read_out = nn.Linear(d_model, VOCAB_SIZE)

    def forward(self, codes: Tensor) -> Tensor:
        length = codes.shape[1]
        if length > self.context:
            raise ValueError(f"the model reads at most {self.context} characters, got {length}")
        x = self.input(codes.unsqueeze(-1)) + self.positions[:length]
        for block in self.blocks:
            x = block(x)
        return self.read_out(self.final_norm(x))


@register("transformer")
def build(recipe: Recipe) -> Transformer:
    return Transformer(recipe.data["context"], recipe.model)
