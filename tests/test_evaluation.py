"""Scores against cross-entropy and accuracy computed by hand, one prediction per character."""

from __future__ import annotations

import math

import pytest
import torch

from langinterp.errors import UsageError
from langinterp.evaluation import evaluate_model
from langinterp.models.base import CharModel
from langinterp.text import encode

START = 0


def table(seed: int) -> torch.Tensor:
    return torch.randn(128, 128, generator=torch.Generator().manual_seed(seed))


class TwoCharWindow(CharModel):
    """Reads two codes; its logits are a sum of one table row per code."""

    def __init__(self) -> None:
        super().__init__(2)
        self.first, self.second = torch.nn.Parameter(table(1)), torch.nn.Parameter(table(2))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.first[codes[:, 0]] + self.second[codes[:, 1]]


class CausalBigram(CharModel):
    """A causal sequence model: position t reads codes t and t - 1 (a fixed start code before the first)."""

    reads = "sequence"

    def __init__(self, context: int) -> None:
        super().__init__(context)
        self.first, self.second = torch.nn.Parameter(table(3)), torch.nn.Parameter(table(4))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        previous = torch.cat([torch.full_like(codes[:, :1], START), codes[:, :-1]], dim=1)
        return self.first[previous] + self.second[codes]


def hand_scores(model: CharModel, cases: list[tuple[int, int, int]]) -> tuple[float, float]:
    """(bits/char, accuracy) over (first code, second code, target) with a plain-Python softmax."""
    nats, right = 0.0, 0
    first, second = model.first.tolist(), model.second.tolist()
    for a, b, target in cases:
        row = [first[a][v] + second[b][v] for v in range(128)]
        top = max(row)
        log_total = top + math.log(sum(math.exp(value - top) for value in row))
        nats += log_total - row[target]
        right += row.index(top) == target
    return nats / len(cases) / math.log(2), right / len(cases)


def codes_of(text: str) -> list[int]:
    return [ord(char) for char in text]


TEXTS = ["the cat sat on the mat", "a dog"]


def test_next_character_windows_match_hand_computed_cross_entropy_and_accuracy() -> None:
    model = TwoCharWindow()
    cases = [(t[i], t[i + 1], t[i + 2]) for t in map(codes_of, TEXTS) for i in range(len(t) - 2)]
    scores = evaluate_model(model, [encode(text) for text in TEXTS], "sequence", batch_size=7)
    bits, accuracy = hand_scores(model, cases)
    assert scores.characters == len(cases) == 20 + 3
    assert scores.bits_per_char == pytest.approx(bits, rel=1e-5)
    assert scores.accuracy == pytest.approx(accuracy)


def test_centered_windows_predict_the_middle_from_both_sides() -> None:
    model = TwoCharWindow()
    cases = [(t[i], t[i + 2], t[i + 1]) for t in map(codes_of, TEXTS) for i in range(len(t) - 2)]
    scores = evaluate_model(model, [encode(text) for text in TEXTS], "centered")
    bits, accuracy = hand_scores(model, cases)
    assert scores.characters == len(cases)
    assert scores.bits_per_char == pytest.approx(bits, rel=1e-5)
    assert scores.accuracy == pytest.approx(accuracy)


def test_sequence_models_predict_each_character_once_in_non_overlapping_windows() -> None:
    model = CausalBigram(context=4)
    text = codes_of("abcdefghijk")  # 11 characters: windows start at 0 and 4, predicting t[1..8]
    cases = []
    for start in (0, 4):
        window = text[start : start + 5]
        for position in range(4):
            before = window[position - 1] if position else START
            cases.append((before, window[position], window[position + 1]))
    scores = evaluate_model(model, [encode("abcdefghijk")], "sequence", batch_size=1)
    bits, accuracy = hand_scores(model, cases)
    assert scores.characters == 8
    assert scores.bits_per_char == pytest.approx(bits, rel=1e-5)
    assert scores.accuracy == pytest.approx(accuracy)


class Certain(CharModel):
    """Log-probabilities like a booster's: all mass on `a`, -inf for characters it never saw."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        logits = torch.full((codes.shape[0], 128), -math.inf)
        logits[:, ord("a")] = 0.0
        return logits


def test_a_character_given_no_probability_costs_twenty_bits_not_infinity() -> None:
    scores = evaluate_model(Certain(), [encode("aaab")], "sequence")
    assert scores.characters == 3
    assert scores.bits_per_char == pytest.approx(20 / 3)
    assert scores.accuracy == pytest.approx(2 / 3)


def test_impossible_pairings_and_short_texts_are_refused() -> None:
    with pytest.raises(UsageError, match="sequence model"):
        evaluate_model(TwoCharWindow(), [encode("abcdef")], "causal")
    with pytest.raises(UsageError, match="centered"):
        evaluate_model(CausalBigram(4), [encode("abcdef")], "centered")
    with pytest.raises(UsageError, match="too short"):
        evaluate_model(TwoCharWindow(), [encode("ab")], "sequence")
    with pytest.raises(UsageError, match="batch size"):
        evaluate_model(TwoCharWindow(), [encode("abcdef")], "sequence", batch_size=0)
