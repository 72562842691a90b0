"""Data pipeline: texts, window datasets (exact windows for every kind), splits and the DataModule."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from langinterp import data
from langinterp.data import CharDataModule, WindowDataset, collate_batch, split_holdout
from langinterp.errors import NotFoundError, UsageError
from langinterp.recipe import resolve
from langinterp.text import decode, encode

SHARED_MIRROR = Path("/work/shared/gutenberg")


def dataset(strings: list[str], context: int, kind: str) -> WindowDataset:
    return WindowDataset([encode(s) for s in strings], context, kind)


def window(ds: WindowDataset, index: int) -> tuple[str, str]:
    x, y = ds[index]
    return decode(x), decode(y.reshape(-1))


def reference(strings: list[str], context: int, kind: str) -> list[tuple[str, str]]:
    """Every window, spelled out with string slicing, one text at a time."""
    windows = []
    for s in strings:
        span = context if kind == "centered" else context + 1
        for i in range(len(s) - span + 1):
            if kind == "sequence":
                windows.append((s[i : i + context], s[i + context]))
            elif kind == "causal":
                windows.append((s[i : i + context], s[i + 1 : i + context + 1]))
            else:
                middle = i + context // 2
                windows.append((s[i:middle] + s[middle + 1 : i + context], s[middle]))
    return windows


def write(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


def corpus(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,\n") for _ in range(length))


# --- exact windows -----------------------------------------------------------------------------------------

TWO_TEXTS = ["abcdefg", "uvwxyz"]

# (kind, context): {index: (x, y)} at the first window, a middle one, the last window of the first text,
# the first window of the second text and the very last window. No window mixes the two texts.
EXACT = {
    ("sequence", 3): (
        7,
        {0: ("abc", "d"), 2: ("cde", "f"), 3: ("def", "g"), 4: ("uvw", "x"), 6: ("wxy", "z")},
    ),
    ("centered", 3): (9, {0: ("ac", "b"), 2: ("ce", "d"), 4: ("eg", "f"), 5: ("uw", "v"), 8: ("xz", "y")}),
    ("causal", 3): (
        7,
        {0: ("abc", "bcd"), 2: ("cde", "def"), 3: ("def", "efg"), 4: ("uvw", "vwx"), 6: ("wxy", "xyz")},
    ),
    ("centered", 5): (
        5,
        {0: ("abde", "c"), 1: ("bcef", "d"), 2: ("cdfg", "e"), 3: ("uvxy", "w"), 4: ("vwyz", "x")},
    ),
}


@pytest.mark.parametrize(("kind", "context"), list(EXACT))
def test_exact_windows_across_two_texts(kind: str, context: int) -> None:
    count, expected = EXACT[(kind, context)]
    ds = dataset(TWO_TEXTS, context, kind)
    assert len(ds) == count
    for index, pair in expected.items():
        assert window(ds, index) == pair
    assert window(ds, -1) == expected[count - 1]
    with pytest.raises(IndexError):
        ds[count]


@pytest.mark.parametrize("kind", ["sequence", "centered", "causal"])
def test_exact_windows_with_held_out_tails(kind: str) -> None:
    """Heads and tails are separate texts: no training window reaches into the held-out tail."""
    heads, tails = zip(*(split_holdout(encode(s), 0.3) for s in ("abcdefghij", "0123456789")), strict=True)
    assert [decode(h) for h in heads] == ["abcdefg", "0123456"]
    assert [decode(t) for t in tails] == ["hij", "789"]
    train = WindowDataset(list(heads), 3 if kind == "centered" else 2, kind)
    valid = WindowDataset(list(tails), 3 if kind == "centered" else 2, kind)
    expected_train = {
        "sequence": {0: ("ab", "c"), 2: ("cd", "e"), 4: ("ef", "g"), 5: ("01", "2"), 9: ("45", "6")},
        "centered": {0: ("ac", "b"), 2: ("ce", "d"), 4: ("eg", "f"), 5: ("02", "1"), 9: ("46", "5")},
        "causal": {0: ("ab", "bc"), 2: ("cd", "de"), 4: ("ef", "fg"), 5: ("01", "12"), 9: ("45", "56")},
    }[kind]
    expected_valid = {
        "sequence": [("hi", "j"), ("78", "9")],
        "centered": [("hj", "i"), ("79", "8")],
        "causal": [("hi", "ij"), ("78", "89")],
    }[kind]
    assert len(train) == 10
    for index, pair in expected_train.items():
        assert window(train, index) == pair
    assert [window(valid, i) for i in range(len(valid))] == expected_valid


@pytest.mark.parametrize("kind", ["sequence", "centered", "causal"])
def test_every_window_matches_string_slicing(kind: str) -> None:
    """Texts of many lengths, some too short for a window (they contribute none), one empty."""
    strings = [corpus(n, seed) for seed, n in enumerate([40, 3, 0, 9, 10, 25, 4])]
    ds = dataset(strings, 9, kind)
    expected = reference(strings, 9, kind)
    assert len(ds) == len(expected)
    assert [window(ds, i) for i in range(len(ds))] == expected


def test_centered_windows_are_the_neighbours_of_their_own_centre() -> None:
    """The earlier research code read one fixed right-hand context for every sample: each must differ."""
    s = "".join(chr(c) for c in range(33, 127))  # every character distinct
    ds = dataset([s], 7, "centered")
    right_halves = set()
    for i in range(len(ds)):
        x, y = window(ds, i)
        assert y == s[i + 3]
        assert x == s[i : i + 3] + s[i + 4 : i + 7]
        right_halves.add(x[3:])
    assert len(right_halves) == len(ds)


@pytest.mark.parametrize(("kind", "context"), [("sequence", 5), ("centered", 5), ("causal", 5)])
def test_vectorised_batch_equals_per_item(kind: str, context: int) -> None:
    ds = dataset([corpus(50, 1), corpus(2, 2), corpus(31, 3)], context, kind)
    indices = list(range(len(ds)))
    random.Random(0).shuffle(indices)
    indices += [-1, -len(ds)]
    x, y = ds.__getitems__(indices)
    items = [ds[i] for i in indices]
    assert x.dtype == y.dtype == torch.int64
    assert x.shape == (len(indices), data.model_input_length(kind, context))
    assert y.shape == ((len(indices), context) if kind == "causal" else (len(indices),))
    assert torch.equal(x, torch.stack([item[0] for item in items]))
    assert torch.equal(y, torch.stack([item[1] for item in items]))
    assert all(a.equal(b) for a, b in zip(collate_batch(items), (x, y), strict=True))
    with pytest.raises(IndexError):
        ds.__getitems__([0, len(ds)])


def test_dataloader_batches_are_int64_tensors() -> None:
    ds = dataset([corpus(100, 4)], 8, "sequence")
    batches = list(DataLoader(ds, batch_size=32, collate_fn=collate_batch))
    assert [tuple(x.shape) for x, _ in batches] == [(32, 8), (32, 8), (28, 8)]
    assert all(x.dtype == y.dtype == torch.int64 and y.shape == x.shape[:1] for x, y in batches)
    assert torch.equal(batches[1][0], ds.__getitems__(list(range(32, 64)))[0])


def test_model_input_length_and_bad_windows() -> None:
    assert data.model_input_length("sequence", 16) == 16
    assert data.model_input_length("causal", 16) == 16
    assert data.model_input_length("centered", 17) == 16
    with pytest.raises(UsageError, match="odd"):
        data.model_input_length("centered", 16)
    with pytest.raises(UsageError, match="kind"):
        WindowDataset([encode("abc")], 1, "middle")


# --- loading ----------------------------------------------------------------------------------------------


def test_load_local_file_folds_and_normalises(tmp_path: Path) -> None:
    path = tmp_path / "quotes.txt"
    path.write_bytes("\u201cCaf\u00e9\u201d \u2014 ok\r\nnext\u4e2d".encode())
    (loaded,) = data.load_texts([str(path)])
    assert loaded.name == str(path)
    assert loaded.codes.dtype == torch.uint8 and loaded.codes.dim() == 1
    assert decode(loaded.codes) == '"Cafe" -- ok\nnext'
    assert (loaded.report.folded, loaded.report.dropped) == (4, 1)


def test_load_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(NotFoundError, match=f"text file {missing} does not exist"):
        data.load_texts([str(missing)])
    with pytest.raises(UsageError, match="is empty"):
        data.load_texts([write(tmp_path, "empty.txt", "")])
    with pytest.raises(UsageError, match="is empty .2 characters had no ASCII spelling"):
        data.load_texts([write(tmp_path, "cjk.txt", "\u4e2d\u6587")])
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UsageError, match="not UTF-8"):
        data.load_texts([str(tmp_path / "latin1.txt")])


def test_digit_string_is_a_book_id(tmp_path: Path) -> None:
    """Overrides turn `data.books=[84]` into strings sometimes; "84" must mean the book, not a file."""
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    with pytest.raises(NotFoundError, match="book 84 not found"):
        data.load_texts(["84"], mirror=str(empty_mirror))


@pytest.mark.skipif(not SHARED_MIRROR.is_dir(), reason="no shared Gutenberg mirror")
def test_load_gutenberg_book_through_mirror() -> None:
    (book,) = data.load_texts([50133], mirror=f"file://{SHARED_MIRROR}")
    assert book.name == "book 50133"
    assert book.codes.dtype == torch.uint8 and book.codes.numel() > 10_000
    assert int(book.codes.max()) < 128


# --- splits -----------------------------------------------------------------------------------------------


def data_table(**values: object) -> dict:
    return resolve({"data": values}).data


def test_split_holdout_gives_views() -> None:
    codes = encode(corpus(1000, 5))
    head, tail = split_holdout(codes, 0.1)
    assert (head.numel(), tail.numel()) == (900, 100)
    assert head.data_ptr() == codes.data_ptr() and tail.data_ptr() == codes.data_ptr() + 900
    head, tail = split_holdout(codes, 0.0)
    assert head.numel() == 1000 and tail.numel() == 0
    with pytest.raises(UsageError, match="holdout"):
        split_holdout(codes, 1.0)


def test_splits_hold_out_the_tail_of_each_book(tmp_path: Path) -> None:
    texts = [corpus(1000, 6), corpus(500, 7)]
    paths = [write(tmp_path, f"book{i}.txt", t) for i, t in enumerate(texts)]
    splits = data.build_splits(data_table(books=paths, holdout=0.1, context=8))
    assert [decode(t) for t in splits.train] == [texts[0][:900], texts[1][:450]]
    assert [decode(t) for t in splits.valid] == [texts[0][900:], texts[1][450:]]
    assert splits.test == []
    assert [t.name for t in splits.texts] == paths
    no_holdout = data.build_splits(data_table(books=paths, holdout=0.0, context=8))
    assert [decode(t) for t in no_holdout.train] == texts and no_holdout.valid == []


def test_splits_from_separate_books(tmp_path: Path) -> None:
    train, valid, test = corpus(300, 8), corpus(200, 9), corpus(100, 10)
    table = data_table(
        books=[write(tmp_path, "train.txt", train)],
        valid_books=[write(tmp_path, "valid.txt", valid)],
        test_books=[write(tmp_path, "test.txt", test)],
        holdout=0.5,
        context=8,
    )
    splits = data.build_splits(table)
    assert [decode(t) for t in splits.train] == [train]  # used whole: nothing held out
    assert [decode(t) for t in splits.valid] == [valid]
    assert [decode(t) for t in splits.test] == [test]
    assert len(splits.texts) == 3


def test_split_errors(tmp_path: Path) -> None:
    book = write(tmp_path, "book.txt", corpus(100, 11))
    with pytest.raises(UsageError, match=f"held-out tail of {book} has 5 characters.*larger data.holdout"):
        data.build_splits(data_table(books=[book], holdout=0.05, context=16))
    with pytest.raises(UsageError, match="both data.books and data.valid_books"):
        data.build_splits(data_table(books=[book], valid_books=[book]))
    short = write(tmp_path, "short.txt", "tiny")
    with pytest.raises(UsageError, match=f"validation text of {short} has 4 characters.*window of 9"):
        data.build_splits(data_table(books=[book], valid_books=[short], context=8))


def test_a_centered_window_needs_only_context_characters(tmp_path: Path) -> None:
    book = write(tmp_path, "book.txt", corpus(100, 11))
    five = write(tmp_path, "five.txt", "abcde")
    splits = data.build_splits(data_table(books=[book], valid_books=[five], kind="centered", context=5))
    assert [decode(t) for t in splits.valid] == ["abcde"]
    with pytest.raises(UsageError, match="has 5 characters, fewer than one window of 7"):
        data.build_splits(data_table(books=[book], valid_books=[five], kind="centered", context=7))


# --- DataModule -------------------------------------------------------------------------------------------


def module(tmp_path: Path, reads: str = "window", seed: int = 3, **values: object) -> CharDataModule:
    """A DataModule over one local 2000-character book, set up for fitting."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    book = write(tmp_path, "book.txt", corpus(2000, 12))
    table = {"books": [book], "context": 8, "holdout": 0.1, **values}
    recipe = resolve({"data": table, "trainer": {"batch_size": 16, "seed": seed}})
    dm = CharDataModule(recipe, reads=reads)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def first_batches(dm: CharDataModule, count: int = 3) -> list[torch.Tensor]:
    loader = iter(dm.train_dataloader())
    return [next(loader)[0] for _ in range(count)]


def test_datamodule_end_to_end(tmp_path: Path) -> None:
    dm = module(tmp_path)
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == y.dtype == torch.int64
    assert x.shape == (16, 8) and y.shape == (16,)
    assert len(dm.datasets["train"]) == 1800 - 8 and len(dm.datasets["valid"]) == 200 - 8
    vx, vy = next(iter(dm.val_dataloader()))
    tail = dm.splits.valid[0]
    assert torch.equal(vx[0], tail[:8].long()) and int(vy[0]) == int(tail[8])
    assert list(dm.fold_reports) == [str(tmp_path / "book.txt")]
    with pytest.raises(UsageError, match="test_books"):
        dm.test_dataloader()


def test_shuffling_repeats_for_a_seed(tmp_path: Path) -> None:
    one, two = module(tmp_path / "a", seed=3), module(tmp_path / "b", seed=3)
    other = module(tmp_path / "c", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first_batches(one), first_batches(two), strict=True))
    assert not torch.equal(first_batches(one)[0], first_batches(other)[0])


def test_sequence_readers_get_causal_windows(tmp_path: Path) -> None:
    dm = module(tmp_path, reads="sequence")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (16, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_centered_data_with_a_sequence_reader_is_refused(tmp_path: Path) -> None:
    recipe = resolve({"data": {"kind": "centered", "context": 9}})
    with pytest.raises(UsageError, match="centered data needs a window model"):
        CharDataModule(recipe, reads="sequence")
    dm = module(tmp_path, kind="centered", context=9)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 8) and y.shape == (16,)


class TinyModel(pl.LightningModule):
    """The smallest real model that trains on window batches, to run the DataModule through a Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(128, 4)
        self.out = torch.nn.Linear(32, 128)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.out(self.embed(x).flatten(1)), y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        return self.loss(batch)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("holdout", [0.0, 0.1])
def test_training_runs_with_and_without_validation(tmp_path: Path, holdout: float) -> None:
    dm = module(tmp_path, holdout=holdout)
    assert (dm.val_dataloader() == []) == (holdout == 0.0)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyModel(), datamodule=dm)
    assert trainer.global_step == 3
    assert ("val_loss" in trainer.callback_metrics) == (holdout > 0)
