"""The sampling loop with small real models: repeatable, greedy recall, filters, every reading style."""

from __future__ import annotations

import pytest
import torch

from langinterp.errors import UsageError
from langinterp.models.base import CharModel
from langinterp.sampling import SamplingOptions, choose_next, generate
from langinterp.text import encode

TEXT = "the quick brown fox jumps over the lazy dog; "


class Memoriser(CharModel):
    """A window model that has memorised a text: each window it saw votes strongly for its next character."""

    def __init__(self, text: str, context: int) -> None:
        super().__init__(context)
        codes = encode(text * 2).long()
        windows = codes.unfold(0, context + 1, 1)
        self.register_buffer("windows", windows[:, :context].contiguous())
        self.register_buffer("nexts", windows[:, context].contiguous())
        self.inputs: list[torch.Tensor] = []

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        self.inputs.append(codes.clone())
        match = (codes[:, None, :] == self.windows[None]).all(-1)
        logits = torch.zeros(codes.shape[0], 128)
        found = match.any(-1)
        logits[found, self.nexts[match.float().argmax(-1)[found]]] = 10.0
        return logits


class Bigram(CharModel):
    """A window model with random soft next-character preferences given the last character."""

    def __init__(self, context: int = 3, seed: int = 0) -> None:
        super().__init__(context)
        self.table = torch.nn.Parameter(torch.randn(128, 128, generator=torch.Generator().manual_seed(seed)))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table[codes[:, -1]]


class Trigram(CharModel):
    """A causal sequence model reading the last two characters at every position (context 8)."""

    reads = "sequence"
    START = 0

    def __init__(self) -> None:
        super().__init__(8)
        generator = torch.Generator().manual_seed(1)
        self.last = torch.nn.Parameter(torch.randn(128, 128, generator=generator))
        self.before = torch.nn.Parameter(torch.randn(128, 128, generator=generator))
        self.forward_calls = 0

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        previous = torch.cat([torch.full_like(codes[:, :1], self.START), codes[:, :-1]], dim=1)
        return self.last[codes] + self.before[previous]


class SteppingTrigram(Trigram):
    """The same model with its recurrent form: the state is the previous character."""

    @property
    def can_step(self) -> bool:
        return True

    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size,), self.START, dtype=torch.long)

    def step(self, codes: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.last[codes] + self.before[state], codes


def text_of(
    model: CharModel, prompt: str, count: int, options: SamplingOptions, seed: int | None = None
) -> str:
    return "".join(generate(model, prompt, count, options, seed=seed))


def test_greedy_generation_reproduces_memorised_text() -> None:
    model = Memoriser(TEXT, context=6)
    assert text_of(model, TEXT[:6], 80, SamplingOptions(greedy=True)) == (TEXT * 3)[6:86]


def test_same_seed_same_text_and_different_seed_different_text() -> None:
    model = Bigram()
    options = SamplingOptions(temperature=1.5)
    first = text_of(model, "abc", 200, options, seed=7)
    assert len(first) == 200
    assert text_of(model, "abc", 200, options, seed=7) == first
    assert text_of(model, "abc", 200, options, seed=8) != first


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    model = Bigram()
    greedy = text_of(model, "xyz", 60, SamplingOptions(greedy=True))
    assert text_of(model, "xyz", 60, SamplingOptions(top_k=1, temperature=3.0), seed=1) == greedy
    assert text_of(model, "xyz", 60, SamplingOptions(top_p=1e-6, temperature=3.0), seed=2) == greedy


def test_choose_next_keeps_only_the_top_k_and_the_top_p_nucleus() -> None:
    probabilities = torch.tensor([0.05, 0.5, 0.3, 0.15] + [0.0] * 124)
    logits = probabilities.clamp(min=1e-9).log().expand(4000, 128)
    generator = torch.Generator().manual_seed(0)
    top_two = choose_next(logits, SamplingOptions(top_k=2), generator)
    assert set(top_two.tolist()) == {1, 2}
    nucleus = choose_next(logits, SamplingOptions(top_p=0.7), generator)
    assert set(nucleus.tolist()) == {1, 2}  # 0.5 alone is under 0.7; 0.5 + 0.3 reaches it
    everything = choose_next(logits, SamplingOptions(), generator)
    assert set(everything.tolist()) == {0, 1, 2, 3}
    assert choose_next(logits[:2], SamplingOptions(greedy=True)).tolist() == [1, 1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top-k"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
    ],
)
def test_bad_sampling_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        SamplingOptions(**options)


def test_sequence_models_with_and_without_step_generate_the_same_text() -> None:
    plain, stepping = Trigram(), SteppingTrigram()
    greedy = SamplingOptions(greedy=True)
    for prompt in ("q", "a longer prompt than the context"):
        expected = text_of(plain, prompt, 40, greedy)
        assert text_of(stepping, prompt, 40, greedy) == expected
    sampled = SamplingOptions(temperature=0.8)
    assert text_of(stepping, "hello", 50, sampled, seed=3) == text_of(plain, "hello", 50, sampled, seed=3)
    assert stepping.forward_calls == 0  # the recurrent form alone was used


def test_short_prompts_are_left_padded_with_spaces_and_long_ones_cut_to_the_context() -> None:
    model = Memoriser(TEXT, context=6)
    list(generate(model, "ab", 2, SamplingOptions(greedy=True)))
    assert model.inputs[0][0].tolist() == encode("    ab").long().tolist()
    assert model.inputs[1].shape == (1, 6)
    model.inputs.clear()
    list(generate(model, "abcdefgh", 1, SamplingOptions(greedy=True)))
    assert model.inputs[0][0].tolist() == encode("cdefgh").long().tolist()


def test_prompt_is_folded_to_ascii() -> None:
    model = Memoriser(TEXT, context=6)
    list(generate(model, "caf\u00e9 \u201cx", 1, SamplingOptions(greedy=True)))
    assert model.inputs[0][0].tolist() == encode('afe "x').long().tolist()


def test_empty_prompt_centered_models_and_negative_lengths_are_refused_at_the_call() -> None:
    model = Bigram()
    with pytest.raises(UsageError, match="the prompt is empty"):
        generate(model, "", 5, SamplingOptions())
    with pytest.raises(UsageError, match="the prompt is empty"):
        generate(model, "\u4e2d", 5, SamplingOptions())  # no ASCII spelling: folds to nothing
    with pytest.raises(UsageError, match="centered"):
        generate(model, "abc", 5, SamplingOptions(), data_kind="centered")
    with pytest.raises(UsageError, match="at least 0"):
        generate(model, "abc", -1, SamplingOptions())
    assert text_of(model, "abc", 0, SamplingOptions()) == ""


def test_generation_leaves_training_mode_and_autograd_as_they_were_between_characters() -> None:
    model = Bigram()
    model.train()
    stream = generate(model, "abc", 3, SamplingOptions(), seed=0)
    next(stream)
    assert model.training
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
    assert len("".join(stream)) == 2


class ModeRecorder(torch.nn.Module):
    """Passes its input through, recording whether it was in training mode at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return logits


class RecordingBigram(Bigram):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = ModeRecorder(), ModeRecorder()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(super().forward(codes)))


@pytest.mark.parametrize("root_training", [True, False])
def test_generation_predicts_in_eval_mode_and_restores_each_modules_own_mode(root_training: bool) -> None:
    model = RecordingBigram()
    model.train(root_training)
    model.first.train(True)  # modes may be mixed: each one comes back as it was
    model.second.train(False)
    assert len(text_of(model, "abc", 4, SamplingOptions())) == 4
    assert model.first.seen == model.second.seen == [False] * 4
    assert (model.training, model.first.training, model.second.training) == (root_training, True, False)
