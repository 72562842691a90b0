"""`langinterp evaluate`: bits per character, accuracy and characters of trained models on any text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from langinterp.cli.app import Mirror, app, console
from langinterp.errors import UsageError

if TYPE_CHECKING:
    from langinterp.inference import Loaded

SPLITS = ("valid", "test")


@app.command()
def evaluate(
    runs: list[str] | None = typer.Option(
        None,
        "--run",
        help="Run name or directory (default: the newest run); repeat it to compare runs on the same text.",
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="best or last of each run (default: best), or the path of a .ckpt file."
    ),
    book: str | None = typer.Option(None, "--book", help="Score a Gutenberg book (by id) instead."),
    file: Path | None = typer.Option(None, "--file", help="Score a local UTF-8 text file instead."),
    split: str | None = typer.Option(
        None, "--split", help="Each run's own held-out text: valid (default) or test (data.test_books)."
    ),
    mirror: Mirror = None,
    batch_size: int = typer.Option(1024, "--batch-size", help="Windows scored per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per model instead of a table."),
) -> None:
    """Score models on text they may never have seen: by default the held-out split of each one's recipe."""
    from langinterp import data
    from langinterp.evaluation import evaluate_model
    from langinterp.gutenberg import parse_book_id, resolve_mirror
    from langinterp.inference import load_for_inference
    from langinterp.runs import CHECKPOINTS

    if book is not None and file is not None:
        raise UsageError("give either --book or --file, not both")
    if split is not None and (book is not None or file is not None):
        raise UsageError("--split picks the run's own text; it does not go with --book or --file")
    if split is not None and split not in SPLITS:
        raise UsageError(f"--split must be valid or test; got {split!r}")
    names: list[str | None] = list(dict.fromkeys(runs)) if runs else [None]
    if len(names) > 1 and checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise UsageError("a checkpoint file is one model: it does not go with several --run")
    book_id = parse_book_id(book) if book is not None else None
    source = resolve_mirror(mirror)
    # Every model is loaded before any is scored, so that a mistake in the last name costs no waiting.
    models = [load_for_inference(name, checkpoint) for name in names]
    shared: tuple[list, str] | None = None
    if book_id is not None:
        shared = [data.load_text(book_id, mirror=source).codes], f"book {book_id}"
    elif file is not None:
        # An absolute path, so that a file named like a book id (`84`) is still read as a file.
        shared = [data.load_text(str(file.resolve())).codes], str(file)
    results = []
    for loaded in models:
        texts, what = shared or _held_out(loaded, split or "valid", source)
        scores = evaluate_model(loaded.model, texts, loaded.data_kind, batch_size=batch_size)
        results.append({"model": loaded.source, "text": what, **vars(scores)})
        if as_json:
            console.file.write(json.dumps(results[-1]) + "\n")
    if as_json:
        return
    if len(results) == 1:
        console.print(f"{escape(results[0]['model'])} on {escape(results[0]['text'])}", highlight=False)
        table = Table(show_header=False, box=None)
        labels = ("bits per character", "accuracy", "characters")
        for label, shown in zip(labels, _measures(results[0]), strict=True):
            table.add_row(label, shown)
        console.print(table)
    else:
        text = results[0]["text"]
        console.print(_comparison(results, f"on {text}" if shared else f"each on its own {text}"))


def _held_out(loaded: Loaded, split: str, source: str | None) -> tuple[list, str]:
    """A run's own held-out texts (valid or test, as its recipe splits its books) and what to call them."""
    from langinterp import data

    splits = data.build_splits(loaded.recipe.data, mirror=source)
    if split == "test":
        texts, what, need = splits.test, "test text", "data.test_books"
    else:
        texts, what, need = splits.valid, "held-out validation text", "data.holdout or data.valid_books"
    if not texts:
        raise UsageError(f"the recipe of {loaded.source} has no {what} ({need}); give --book or --file")
    return texts, what


def _comparison(results: list[dict], caption: str) -> Table:
    """One row per model, in the order given."""
    table = Table(caption=escape(caption))
    table.add_column("model", overflow="fold")
    for column in ("bits/char", "accuracy", "characters"):
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(escape(result["model"]), *_measures(result))
    return table


def _measures(result: dict) -> tuple[str, str, str]:
    """A result's bits per character, accuracy and characters, as both tables show them."""
    return f"{result['bits_per_char']:.4f}", f"{result['accuracy']:.2%}", f"{result['characters']:,}"
