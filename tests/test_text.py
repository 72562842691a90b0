"""ASCII folding and the 128-code vocabulary."""

from collections import Counter

import pytest
import torch

from langinterp.text import VOCAB_SIZE, FoldReport, decode, encode, fold_to_ascii


def test_ascii_text_is_unchanged() -> None:
    text = "Plain text, with\ttabs and\nnewlines ~!"
    folded, report = fold_to_ascii(text)
    assert folded == text
    assert report == FoldReport(0, 0, Counter())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "\u201cQuoted,\u201d she said. \u2018Yes\u2019 \u2014 it\u2019s so.",
            "\"Quoted,\" she said. 'Yes' -- it's so.",
        ),
        ("pages 3\u20134 \u2010 well\u2026", "pages 3-4 - well..."),
        ("Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c9mile \u00f1 \u00e7", "Cafe naive resume Emile n c"),
        ("\u00c6sop \u0153uvre stra\u00dfe \u00f8 \ufb01sh", "AEsop oeuvre strasse o fish"),
        ("non\u00a0breaking soft\u00adhyphen zero\u200bwidth", "non breaking softhyphen zerowidth"),
        ("\u00abguillemets\u00bb x\u00b2", '"guillemets" x2'),
    ],
)
def test_folds_to_nearest_ascii(source: str, expected: str) -> None:
    folded, report = fold_to_ascii(source)
    assert folded == expected
    assert report.dropped == 0
    assert report.folded == sum(not char.isascii() for char in source)


def test_unspellable_characters_are_dropped_and_counted() -> None:
    folded, report = fold_to_ascii("90\u00b0 \u20ac5 \u6f22\u6f22 \u2019ok\u2019")
    assert folded == "90 5  'ok'"
    assert folded.isascii()
    assert report.dropped == 4
    assert report.dropped_chars == Counter({"\u6f22": 2, "\u00b0": 1, "\u20ac": 1})
    assert report.folded == 2
    assert report.folded_chars == Counter({"\u2019": 2})


def test_reports_add_up() -> None:
    _, first = fold_to_ascii("\u201ca\u201d \u00b0")
    _, second = fold_to_ascii("\u00e9 \u00b0\u00b0")
    total = first + second
    assert (total.folded, total.dropped) == (3, 3)
    assert total.dropped_chars == Counter({"\u00b0": 3})


def test_encode_decode_round_trip() -> None:
    text = "".join(chr(code) for code in range(VOCAB_SIZE))
    codes = encode(text)
    assert codes.dtype == torch.uint8
    assert codes.tolist() == list(range(VOCAB_SIZE))
    assert decode(codes) == text
    assert decode(codes.long()) == text
    assert decode([72, 105]) == "Hi"
    assert encode("").numel() == 0
    assert decode(encode("")) == ""


def test_encode_refuses_non_ascii() -> None:
    with pytest.raises(ValueError, match=r"position 3.*fold_to_ascii"):
        encode("abc\u00e9")


@pytest.mark.parametrize(
    "codes", [[65, 128], torch.tensor([65, -1]), torch.tensor([[65]]), torch.tensor([6.5])]
)
def test_decode_refuses_codes_outside_the_vocabulary(codes: object) -> None:
    with pytest.raises(ValueError):
        decode(codes)  # type: ignore[arg-type]
