"""The reference: a standard causal character transformer (nanoGPT style), built from nn.Linear only.

It exists so the high-order families have an honest yardstick: the model most people would reach for
first when asked for a character language model. Nothing in it is piecewise. A character embedding
(`d_model` wide) plus a learned position embedding, then `layers` pre-LayerNorm blocks, each
x + attention(LayerNorm(x)) and x + MLP(LayerNorm(x)); attention is causal multi-head attention across
positions (`F.scaled_dot_product_attention(is_causal=True)` over q/k/v shaped [B, heads, T, head_dim]),
the MLP is Linear(d_model -> 4 d_model), GELU, Linear(4 d_model -> d_model). A final LayerNorm and a
read-out (tied to the embedding by default, as in GPT-2) give the next character's logits at every position.

Initialisation follows GPT-2: every weight N(0, 0.02), biases zero, and the two projections that write into
the residual stream scaled by 1/sqrt(2 layers), so the stream's variance does not grow with depth and the
loss at step 0 is close to ln(128).

The model has no recurrent form: generation recomputes over the last `context` characters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langinterp.errors import UsageError
from langinterp.models.base import CharModel
from langinterp.models.registry import register
from langinterp.recipe import Recipe
from langinterp.text import VOCAB_SIZE

INIT_STD = 0.02


class CausalSelfAttention(nn.Module):
    """Multi-head attention across positions; position t sees positions 0..t only."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, d_model = x.shape
        q, k, v = (
            t.view(batch, length, self.heads, d_model // self.heads).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=-1)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.residual_dropout(self.out(y.transpose(1, 2).reshape(batch, length, d_model)))


class Block(nn.Module):
    """Pre-norm residual block: attention, then a GELU MLP four times as wide as the stream."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, heads, dropout)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(CharModel):
    """Character + position embeddings -> causal blocks -> LayerNorm -> logits at every position."""

    reads = "sequence"

    def __init__(self, context: int, options: dict) -> None:
        super().__init__(context)
        d_model, heads, layers = options["d_model"], options["heads"], options["layers"]
        if d_model % heads:
            raise UsageError(f"model.d_model ({d_model}) must be a multiple of model.heads ({heads})")
        self.embedding = nn.Embedding(VOCAB_SIZE, d_model)
        self.positions = nn.Embedding(context, d_model)
        self.dropout = nn.Dropout(options["dropout"])
        self.blocks = nn.ModuleList(Block(d_model, heads, options["dropout"]) for _ in range(layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.read_out = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        self._initialize(layers)
        if options["tied"]:
            self.read_out.weight = self.embedding.weight

    def _initialize(self, layers: int) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for projection in (block.attention.out, block.mlp[2]):
                nn.init.normal_(projection.weight, std=INIT_STD / math.sqrt(2 * layers))

    def forward(self, codes: Tensor) -> Tensor:
        length = codes.shape[1]
        if length > self.context:
            raise ValueError(f"the model reads at most {self.context} characters, got {length}")
        place = torch.arange(length, device=codes.device)
        x = self.dropout(self.embedding(codes) + self.positions(place))
        for block in self.blocks:
            x = block(x)
        return self.read_out(self.final_norm(x))


@register("gpt")
def build(recipe: Recipe) -> GPT:
    return GPT(recipe.data["context"], recipe.model)
