"""Bits per character, accuracy and character count of a trained model on any text.

Each character of the text is predicted at most once, so the scores of window and sequence models on the
same text are averages over (nearly) the same characters:

- window readers score every window of the recipe's kind (stride 1: one prediction per window);
- sequence readers score non-overlapping causal windows (stride = context), every position of each.
  The characters after the last whole window (fewer than `context`) are not scored.

A character is charged at most `MAX_BITS` bits (probability floored at 2^-20), the rule the LightGBM
family scores held-out text by: a booster gives characters it never saw probability 0, which would make
the mean infinite. A trained neural model rarely comes near that cost, so its score is its plain
cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from langinterp.data import WindowDataset, dataset_kind
from langinterp.errors import UsageError
from langinterp.models.base import CharModel
from langinterp.sampling import model_device

MAX_BITS = 20.0


@dataclass
class Scores:
    """Mean bits per predicted character, fraction predicted exactly (argmax), characters predicted."""

    bits_per_char: float
    accuracy: float
    characters: int


def _batches(
    texts: Sequence[torch.Tensor], context: int, kind: str, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of the windows to score; causal windows do not overlap, so no target repeats."""
    if kind == "causal":
        for codes in texts:
            dataset = WindowDataset([codes], context, kind)
            starts = list(range(0, len(dataset), context))
            for first in range(0, len(starts), batch_size):
                yield dataset.__getitems__(starts[first : first + batch_size])
        return
    dataset = WindowDataset(texts, context, kind)
    for first in range(0, len(dataset), batch_size):
        yield dataset.__getitems__(list(range(first, min(first + batch_size, len(dataset)))))


def evaluate_model(
    model: CharModel,
    texts: Sequence[torch.Tensor],
    kind: str,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> Scores:
    """Score `model` on `texts` (1-D code tensors). `kind` is the data kind the model was trained on
    ("sequence" or "centered"; "causal" is accepted for sequence readers).

    Bits per character is the mean cross-entropy in nats over every predicted character (each capped at
    `MAX_BITS` bits), divided by ln 2.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1; got {batch_size}")
    if kind == "causal" and model.reads == "window":
        raise UsageError("causal windows need a sequence model; window models read sequence or centered data")
    window_kind = dataset_kind(kind, model.reads)
    # A window model reads `model.context` codes; a centered window also holds the hidden middle one.
    context = model.context + 1 if window_kind == "centered" else model.context
    if device is not None:
        model.to(device)
    target = model_device(model)
    was_training = model.training
    model.eval()
    nats = 0.0
    correct = 0
    characters = 0
    try:
        with torch.inference_mode():
            for x, y in _batches(texts, context, window_kind, batch_size):
                x, y = x.to(target), y.to(target)
                logits = model(x).float()
                logits = logits.reshape(-1, logits.shape[-1])
                losses = F.cross_entropy(logits, y.reshape(-1), reduction="none")
                nats += losses.clamp(max=MAX_BITS * math.log(2)).sum().item()
                correct += int((logits.argmax(dim=-1) == y.reshape(-1)).sum())
                characters += y.numel()
    finally:
        model.train(was_training)
    if characters == 0:
        raise UsageError(f"the text is too short to score: it needs more than {context} characters")
    return Scores(nats / characters / math.log(2), correct / characters, characters)
