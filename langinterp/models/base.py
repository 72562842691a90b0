"""The contract every model family answers, so training, generation, evaluation and the automaton are
written once.

A model is an `nn.Module` whose `forward` returns logits over the 128-symbol vocabulary (any unnormalised
log-probabilities: a model that already has probabilities returns their logarithm):

- `reads == "window"`: `forward(codes[B, context]) -> [B, 128]`, a prediction for one position per window
  (the next character for `sequence` data, the middle one for `centered` data);
- `reads == "sequence"`: `forward(codes[B, T]) -> [B, T, 128]`, causal, position t predicting character
  t + 1; `context` is the length it trains on. Such a model may also offer the recurrent form
  (`init_state` and `step`), which makes generating a character cost the same whatever the text's length.

Character codes arrive as int64 tensors with values in 0..127.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Reads = Literal["window", "sequence"]


class CharModel(nn.Module):
    """Base class: declares what the model reads and how much context it uses."""

    reads: Reads = "window"

    def __init__(self, context: int) -> None:
        super().__init__()
        self.context = context

    @property
    def can_step(self) -> bool:
        """True when the model has a recurrent form for generation."""
        return False

    def init_state(self, batch_size: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent form")

    def step(self, codes: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One character per sequence, `codes[B]` -> (logits[B, 128], new state)."""
        raise NotImplementedError(f"{type(self).__name__} has no recurrent form")
