"""The language cellular automaton: a centered model applied to every position of a text at once.

Like a stencil in a PDE solver, each step replaces every character by a prediction from its neighbourhood
(`context // 2` characters on each side, the text padded with spaces beyond its ends), so it works on
texts of any length. One step is one batched forward pass over all positions, never a call per character.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from langinterp.errors import UsageError
from langinterp.sampling import (
    PAD_CODE,
    SamplingOptions,
    choose_next,
    model_device,
    predicting,
    prompt_codes,
    seeded_generator,
)
from langinterp.text import decode


def neighbourhoods(codes: torch.Tensor, context: int) -> torch.Tensor:
    """`[L, context - 1]`: for each position, the characters around it (the centre itself left out)."""
    half = context // 2
    padded = torch.nn.functional.pad(codes, (half, half), value=PAD_CODE)
    windows = padded.unfold(0, context, 1)
    return torch.cat((windows[:, :half], windows[:, half + 1 :]), dim=1)


def run_automaton(
    model: nn.Module,
    text: str,
    steps: int,
    options: SamplingOptions,
    *,
    context: int,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the starting text (folded to ASCII), then the text after each of `steps` reapplications."""
    if steps < 0:
        raise UsageError(f"--reapply must be at least 0; got {steps}")
    device = model_device(model)
    codes = prompt_codes(text, what="text").to(device)
    generator = seeded_generator(seed, device)
    yield decode(codes)
    for _ in range(steps):
        with predicting(model):  # per step: a suspended generator must not leave eval/inference mode on
            logits = model(neighbourhoods(codes, context))
            codes = choose_next(logits, options, generator)
        yield decode(codes)
