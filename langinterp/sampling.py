"""Next-character sampling (greedy, top-k, temperature, top-p, seed) and the one generation loop.

Every model family generates through `generate`, which only asks the model what it reads:

- window readers see the last `model.context` codes (a short prompt is left-padded with spaces, the
  character a window most often starts with in prose);
- sequence readers with a recurrent form read the prompt once through `step` and then carry the state, so
  each new character costs the same however long the text has grown;
- other sequence readers recompute over the last `model.context` codes, the length they were trained on.

A model trained on centered data predicts a middle character from both sides; it has no left-to-right
distribution to sample from, so `generate` refuses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from langinterp.errors import UsageError
from langinterp.models.base import CharModel
from langinterp.text import encode, fold_to_ascii

PAD_CODE = ord(" ")


@dataclass(frozen=True)
class SamplingOptions:
    """How the next character is picked from the model's logits."""

    top_k: int | None = None
    temperature: float = 1.0
    top_p: float | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top-k must be at least 1; got {self.top_k}")
        if not self.temperature > 0:
            raise UsageError(f"temperature must be above 0; got {self.temperature:g}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"top-p must be in (0, 1]; got {self.top_p:g}")


def choose_next(
    logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One code per row of `logits[B, V]`: the argmax when greedy, else a draw from the filtered softmax.

    Filters run in the order temperature, top-k, top-p; the most likely code always survives them, so
    top-k 1 and a tiny top-p both reduce to greedy choice.
    """
    if options.greedy:
        return logits.argmax(dim=-1)
    scores = logits.float() / options.temperature
    if options.top_k is not None and options.top_k < scores.shape[-1]:
        kept = scores.topk(options.top_k, dim=-1).indices
        scores = torch.full_like(scores, -torch.inf).scatter(-1, kept, scores.gather(-1, kept))
    if options.top_p is not None and options.top_p < 1:
        ordered, order = scores.sort(dim=-1, descending=True)
        probabilities = ordered.softmax(dim=-1)
        # Keep a code while the mass strictly before it is under top_p: the smallest set reaching top_p.
        drop = probabilities.cumsum(dim=-1) - probabilities >= options.top_p
        drop[..., 0] = False
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, -torch.inf))
    probabilities = scores.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's tensors live (CPU for a model without any, such as a booster wrapper)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def predicting(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for one computation, restored after it.

    Scoped per call rather than around the whole generation: a generator suspended at `yield` must not
    leave inference mode (thread-local) or eval mode switched on for the code consuming it, such as a
    training loop that writes samples between epochs. A model already in eval mode throughout is left
    alone: switching modes visits every submodule, about a sixth of a small model's time per character.
    """
    training = [module for module in model.modules() if module.training]
    if training:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module in training:
            module.training = True


class _Reader:
    """Feeds codes to a model and answers the logits for the next character, however the model reads."""

    def __init__(self, model: CharModel, prompt: torch.Tensor) -> None:
        self.model = model
        self.recurrent = model.reads == "sequence" and model.can_step
        self.state: Any = None
        if self.recurrent:
            with predicting(model):
                self.state = model.init_state(1)
                for code in prompt:
                    self.logits, self.state = model.step(code.view(1), self.state)
        else:
            if model.reads == "window" and len(prompt) < model.context:
                pad = prompt.new_full((model.context - len(prompt),), PAD_CODE)
                prompt = torch.cat([pad, prompt])
            self.window = prompt[-model.context :]
            self.logits = self._read_window()

    def _read_window(self) -> torch.Tensor:
        with predicting(self.model):
            logits = self.model(self.window.unsqueeze(0))
            return logits if self.model.reads == "window" else logits[:, -1]

    def feed(self, code: torch.Tensor) -> None:
        if self.recurrent:
            with predicting(self.model):
                self.logits, self.state = self.model.step(code.view(1), self.state)
        else:
            self.window = torch.cat([self.window, code.view(1)])[-self.model.context :]
            self.logits = self._read_window()


def prompt_codes(prompt: str, what: str = "prompt") -> torch.Tensor:
    """The prompt folded to ASCII like training text, as int64 codes; an empty one is refused, by `what`."""
    folded, _ = fold_to_ascii(prompt)
    if not folded:
        raise UsageError(f"the {what} is empty")
    return encode(folded).long()


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator for `seed`, or None to draw from torch's global one.

    Never an unseeded `torch.Generator`: it starts from a fixed default seed, so every unseeded run would
    draw the same characters.
    """
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def generate(
    model: CharModel,
    prompt: str,
    num_chars: int,
    options: SamplingOptions,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    data_kind: str = "sequence",
) -> Iterator[str]:
    """Continue `prompt` by `num_chars` characters, yielded one at a time as they are made.

    `data_kind` is the kind of data the model was trained on (`recipe.data["kind"]`); centered models are
    refused. The same seed gives the same text. Input is checked here, before the first character is asked
    for, so a bad prompt fails at the call rather than somewhere inside the consumer's loop.
    """
    if data_kind == "centered":
        raise UsageError(
            "this model was trained on centered data (it predicts a middle character from both sides) "
            "and cannot generate text left to right; use `langinterp automaton` with it"
        )
    if num_chars < 0:
        raise UsageError(f"the number of characters must be at least 0; got {num_chars}")
    codes = prompt_codes(prompt)
    if device is not None:
        model.to(device)
    target = model_device(model)
    return _stream(model, codes.to(target), num_chars, options, seeded_generator(seed, target))


def _stream(
    model: CharModel,
    codes: torch.Tensor,
    num_chars: int,
    options: SamplingOptions,
    generator: torch.Generator | None,
) -> Iterator[str]:
    if num_chars == 0:
        return
    reader = _Reader(model, codes)
    for index in range(num_chars):
        code = choose_next(reader.logits, options, generator)
        yield chr(int(code))
        if index + 1 < num_chars:
            reader.feed(code)
