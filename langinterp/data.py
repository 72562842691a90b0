"""Corpus to tensors: texts, window datasets, train/validation/test splits and the LightningDataModule.

A text is one uint8 tensor of character codes per book, never a Python list of windows. A window is found
by index arithmetic over those tensors (cumulative window counts per text, then `searchsorted`), so a
sample costs O(context) memory whatever the corpus size, and a whole batch is one gather.

Window kinds (`t` is one text's codes, `i` the window's start in it):

- `sequence`: x = t[i : i+context], y = t[i+context]: read `context` characters, predict the next;
- `centered`: the span t[i : i+context] (odd width), y = its middle character t[i + context//2], x = the
  span without that middle (context - 1 characters). Every sample reads its own neighbours; the earlier
  research code read the same right-hand context for every sample;
- `causal`: x = t[i : i+context], y = t[i+1 : i+context+1], for models that predict at every position.

Windows never cross from one text into the next: the end of one book does not predict the start of another.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from langinterp import gutenberg, text
from langinterp.errors import NotFoundError, UsageError
from langinterp.text import FoldReport

if TYPE_CHECKING:
    from langinterp.recipe import Recipe

KINDS = ("sequence", "centered", "causal")
_DIGITS = re.compile(r"[0-9]+")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Text:
    """One book or file: its name (for messages and fold reports), 1-D uint8 codes and what folding did."""

    name: str
    codes: torch.Tensor
    report: FoldReport


# --- loading --------------------------------------------------------------------------------------------


def _book_id(source: int | str) -> int | None:
    """The Gutenberg id a source names, or None for a file path. Overrides turn `84` into the string "84"."""
    if isinstance(source, int):
        return source
    return int(source) if _DIGITS.fullmatch(source.strip()) else None


def _read_file(path: Path) -> str:
    """A local UTF-8 text file, line endings normalised as for books (`\\r\\n` is not two characters)."""
    if not path.exists():
        raise NotFoundError(f"text file {path} does not exist")
    if not path.is_file():
        raise UsageError(f"text file {path} is not a file")
    try:
        return gutenberg.normalize_newlines(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UsageError(f"text file {path} is not UTF-8 (byte {error.start} cannot be decoded)") from None
    except OSError as error:
        raise UsageError(f"cannot read text file {path}: {error.strerror}") from None


def load_text(source: int | str, *, mirror: str | None = None) -> Text:
    """Load, fold to ASCII and encode one Gutenberg book (by id) or local UTF-8 text file (by path)."""
    book_id = _book_id(source)
    if book_id is not None:
        name, raw = f"book {book_id}", gutenberg.book_text(book_id, mirror=mirror)
    else:
        path = Path(str(source)).expanduser()
        name, raw = str(path), _read_file(path)
    folded, report = text.fold_to_ascii(raw)
    if not folded:
        detail = f" ({report.dropped} characters had no ASCII spelling)" if report.dropped else ""
        raise UsageError(f"{name} is empty{detail}")
    return Text(name, text.encode(folded), report)


def load_texts(sources: Sequence[int | str], *, mirror: str | None = None) -> list[Text]:
    """Load every source in order; ints and digit strings are Gutenberg ids, other strings file paths."""
    return [load_text(source, mirror=mirror) for source in sources]


# --- windows --------------------------------------------------------------------------------------------


def _check_window(kind: str, context: int) -> None:
    if kind not in KINDS:
        raise UsageError(f"window kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if context < 1:
        raise UsageError(f"context must be at least 1; got {context}")
    if kind == "centered" and (context < 3 or context % 2 == 0):
        raise UsageError(
            f"centered windows need an odd context of at least 3 (the middle is hidden); got {context}"
        )


def model_input_length(kind: str, context: int) -> int:
    """How many codes a model reads per window: `context`, or `context - 1` for centered data."""
    _check_window(kind, context)
    return context - 1 if kind == "centered" else context


def window_span(kind: str, context: int) -> int:
    """Characters of text one window covers, target included: `context` for centered, else `context + 1`."""
    _check_window(kind, context)
    return context if kind == "centered" else context + 1


class WindowDataset(Dataset):
    """Every window of one kind over a list of texts, found by index arithmetic, never materialised.

    The texts are joined once into one flat buffer (one copy of the text, not one per window), so a batch is
    a single gather `flat[starts[:, None] + offsets]` however many texts it spans.
    """

    def __init__(self, texts: Sequence[torch.Tensor], context: int, kind: str) -> None:
        span = window_span(kind, context)
        for codes in texts:
            if codes.dim() != 1:
                raise ValueError(f"texts must be 1-D code tensors, got shape {tuple(codes.shape)}")
        self.context = context
        self.kind = kind
        self.span = span
        lengths = torch.tensor([codes.numel() for codes in texts], dtype=torch.int64)
        counts = (lengths - span + 1).clamp(min=0)
        # Window n of the whole dataset lies in text k where ends[k-1] <= n < ends[k].
        self._ends = counts.cumsum(0)
        self._offsets = self._ends - counts
        self._text_starts = lengths.cumsum(0) - lengths
        self._flat = (
            torch.cat([codes.reshape(-1) for codes in texts]) if texts else torch.empty(0, dtype=torch.uint8)
        )
        # Where x and y lie inside a window; a batch gathers `flat[start + offsets]` for every start at once.
        offsets = torch.arange(span)
        middle = context // 2
        if kind == "centered":
            self._x_offsets = torch.cat([offsets[:middle], offsets[middle + 1 :]])
            self._y_offsets = offsets[middle : middle + 1]
        elif kind == "sequence":
            self._x_offsets, self._y_offsets = offsets[:context], offsets[context:]
        else:
            self._x_offsets, self._y_offsets = offsets[:context], offsets[1:]

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _starts(self, indices: torch.Tensor) -> torch.Tensor:
        """Positions in the flat buffer where windows `indices` begin."""
        size = len(self)
        if indices.numel() and (int(indices.min()) < -size or int(indices.max()) >= size):
            raise IndexError(f"window index out of range for {size} windows")
        indices = torch.where(indices < 0, indices + size, indices)
        text_index = torch.searchsorted(self._ends, indices, right=True)
        return self._text_starts[text_index] + indices - self._offsets[text_index]

    def __getitem__(self, index: int) -> Batch:
        """One window by slicing; `__getitems__` is the batched path and must agree with this one."""
        start = int(self._starts(torch.tensor([index]))[0])
        window = self._flat[start : start + self.span].long()
        if self.kind == "centered":
            middle = self.context // 2
            return torch.cat([window[:middle], window[middle + 1 :]]), window[middle]
        if self.kind == "sequence":
            return window[:-1], window[-1]
        return window[:-1], window[1:]

    def __getitems__(self, indices: list[int]) -> Batch:
        """A whole batch in one gather: x [B, input length], y [B] (or [B, context] for causal), int64."""
        starts = self._starts(torch.as_tensor(indices, dtype=torch.int64)).unsqueeze(1)
        x = torch.take(self._flat, starts + self._x_offsets).long()
        y = torch.take(self._flat, starts + self._y_offsets).long()
        return x, y if self.kind == "causal" else y[:, 0]


def collate_batch(batch: Batch | list[Batch]) -> Batch:
    """DataLoader `collate_fn`: passes a `__getitems__` batch through, or stacks single windows."""
    if isinstance(batch, tuple):
        return batch
    xs, ys = zip(*batch, strict=True)
    return torch.stack(xs), torch.stack(ys)


# --- splits ---------------------------------------------------------------------------------------------


def split_holdout(codes: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(head, tail) views of a text, the tail the last `fraction` of it (rounded); 0: an empty tail."""
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"holdout fraction must be at least 0 and below 1; got {fraction}")
    cut = codes.numel() - round(codes.numel() * fraction)
    return codes[:cut], codes[cut:]


@dataclass
class Splits:
    """Code tensors for training, validation and test, and every loaded text (for fold reports)."""

    train: list[torch.Tensor]
    valid: list[torch.Tensor]
    test: list[torch.Tensor]
    texts: list[Text]


def _source_key(source: int | str) -> str:
    book_id = _book_id(source)
    return f"book {book_id}" if book_id is not None else str(Path(str(source)).expanduser().resolve())


def _check_disjoint(data: dict[str, Any]) -> None:
    """A book used for training and for evaluation would make held-out numbers meaningless."""
    train = {_source_key(source): source for source in data["books"]}
    for key in ("valid_books", "test_books"):
        for source in data[key]:
            if _source_key(source) in train:
                raise UsageError(
                    f"{source!r} is in both data.books and data.{key}; evaluation text must be unseen"
                )


def _require_window(name: str, codes: torch.Tensor, span: int, what: str, advice: str) -> None:
    if codes.numel() < span:
        raise UsageError(
            f"{what} of {name} has {codes.numel()} characters, fewer than one window of {span}; {advice}"
        )


def build_splits(data: dict[str, Any], *, mirror: str | None = None) -> Splits:
    """Splits from a recipe's `[data]` table.

    With no `valid_books`, the tail `holdout` fraction of each training book is validation (holdout 0: no
    validation at all). With `valid_books`, those are validation and the training books are used whole.
    `test_books` are the test split. Every text must hold at least one window (see `window_span`).
    """
    _check_disjoint(data)
    span = window_span(data["kind"], data["context"])
    books = load_texts(data["books"], mirror=mirror)
    valid_texts = load_texts(data["valid_books"], mirror=mirror)
    test_texts = load_texts(data["test_books"], mirror=mirror)
    train: list[torch.Tensor] = []
    valid: list[torch.Tensor] = []
    for book in books:
        head, tail = split_holdout(book.codes, 0.0 if valid_texts else data["holdout"])
        _require_window(book.name, head, span, "the training part", "use a smaller context or a bigger book")
        train.append(head)
        if tail.numel():
            _require_window(
                book.name, tail, span, "the held-out tail", "use a larger data.holdout or a bigger book"
            )
            valid.append(tail)
    for item in valid_texts:
        _require_window(
            item.name, item.codes, span, "the validation text", "use a smaller context or a bigger book"
        )
        valid.append(item.codes)
    for item in test_texts:
        _require_window(
            item.name, item.codes, span, "the test text", "use a smaller context or a bigger book"
        )
    return Splits(train, valid, [item.codes for item in test_texts], books + valid_texts + test_texts)


# --- Lightning ------------------------------------------------------------------------------------------


def dataset_kind(data_kind: str, reads: str) -> str:
    """The window kind a model needs: the recipe's kind for window readers, `causal` for sequence readers."""
    if reads == "window":
        return data_kind
    if reads != "sequence":
        raise UsageError(f"a model reads 'window' or 'sequence', not {reads!r}")
    if data_kind == "centered":
        raise UsageError(
            "centered data needs a window model: sequence models predict the next character only"
        )
    return "causal"


class CharDataModule(pl.LightningDataModule):
    """A recipe's data for Lightning: fetch books once per node, build window datasets, serve batches.

    An empty validation split (holdout 0 and no valid_books) gives `val_dataloader() == []`, which Lightning
    treats as "no validation": training runs without validation metrics instead of failing.
    """

    def __init__(self, recipe: Recipe, *, reads: str = "window", mirror: str | None = None) -> None:
        super().__init__()
        self.data = recipe.data
        self.kind = dataset_kind(self.data["kind"], reads)
        _check_window(self.kind, self.data["context"])
        self.batch_size: int = recipe.trainer["batch_size"]
        self.seed: int = recipe.trainer["seed"]
        self.num_workers: int = self.data["num_workers"]
        self.mirror = mirror
        self.splits: Splits | None = None
        self.datasets: dict[str, WindowDataset] = {}

    def prepare_data(self) -> None:
        """Download every Gutenberg book of the recipe into the cache (Lightning: one process per node)."""
        for key in ("books", "valid_books", "test_books"):
            for source in self.data[key]:
                if (book_id := _book_id(source)) is not None:
                    gutenberg.fetch_book(book_id, mirror=self.mirror)

    def setup(self, stage: str | None = None) -> None:
        """Load the texts (from the cache) and build all three datasets, once whatever the stage."""
        if self.splits is not None:
            return
        self.splits = build_splits(self.data, mirror=self.mirror)
        context = self.data["context"]
        self.datasets = {
            name: WindowDataset(texts, context, self.kind)
            for name, texts in (
                ("train", self.splits.train),
                ("valid", self.splits.valid),
                ("test", self.splits.test),
            )
        }

    @property
    def fold_reports(self) -> dict[str, FoldReport]:
        """What folding to ASCII changed in each text, by text name."""
        if self.splits is None:
            raise RuntimeError("CharDataModule.setup() has not been called")
        return {item.name: item.report for item in self.splits.texts}

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError("CharDataModule.setup() has not been called")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            collate_fn=collate_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches; the order is the same for the same `trainer.seed`."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in order; [] (Lightning then skips validation) when there is no such text."""
        if self.splits is not None and not self.splits.valid:
            return []
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in order; UsageError when the recipe names no test books."""
        if self.splits is not None and not self.splits.test:
            raise UsageError("the recipe has no test text: set data.test_books")
        return self._loader("test", shuffle=False)
