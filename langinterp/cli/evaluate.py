"""`langinterp evaluate`: bits per character, accuracy and characters of a trained model on any text."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from langinterp.cli.app import Mirror, app, console
from langinterp.errors import UsageError

SPLITS = ("valid", "test")


@app.command()
def evaluate(
    run: str | None = typer.Option(None, "--run", help="Run name or directory (default: the newest run)."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="best or last of the run (default: best), or the path of a .ckpt file."
    ),
    book: str | None = typer.Option(None, "--book", help="Score a Gutenberg book (by id) instead."),
    file: Path | None = typer.Option(None, "--file", help="Score a local UTF-8 text file instead."),
    split: str | None = typer.Option(
        None, "--split", help="The run's own held-out text: valid (default) or test (data.test_books)."
    ),
    mirror: Mirror = None,
    batch_size: int = typer.Option(1024, "--batch-size", help="Windows scored per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Score a model on text it may never have seen: by default the held-out split of its recipe."""
    from langinterp import data
    from langinterp.evaluation import evaluate_model
    from langinterp.gutenberg import parse_book_id, resolve_mirror
    from langinterp.inference import load_for_inference

    if book is not None and file is not None:
        raise UsageError("give either --book or --file, not both")
    if split is not None and (book is not None or file is not None):
        raise UsageError("--split picks the run's own text; it does not go with --book or --file")
    if split is not None and split not in SPLITS:
        raise UsageError(f"--split must be valid or test; got {split!r}")
    book_id = parse_book_id(book) if book is not None else None
    loaded = load_for_inference(run, checkpoint)
    source = resolve_mirror(mirror)
    if book_id is not None:
        texts, what = [data.load_text(book_id, mirror=source).codes], f"book {book_id}"
    elif file is not None:
        # An absolute path, so that a file named like a book id (`84`) is still read as a file.
        texts, what = [data.load_text(str(file.resolve())).codes], str(file)
    else:
        split = split or "valid"
        splits = data.build_splits(loaded.recipe.data, mirror=source)
        texts, what = (
            (splits.valid, "held-out validation text") if split == "valid" else (splits.test, "test text")
        )
        if not texts:
            need = "data.holdout or data.valid_books" if split == "valid" else "data.test_books"
            raise UsageError(f"the recipe of {loaded.source} has no {what} ({need}); give --book or --file")
    scores = evaluate_model(loaded.model, texts, loaded.data_kind, batch_size=batch_size)
    if as_json:
        result = {"model": loaded.source, "text": what, **vars(scores)}
        console.file.write(json.dumps(result) + "\n")
        return
    console.print(f"{escape(loaded.source)} on {escape(what)}", highlight=False)
    table = Table(show_header=False, box=None)
    table.add_row("bits per character", f"{scores.bits_per_char:.4f}")
    table.add_row("accuracy", f"{scores.accuracy:.2%}")
    table.add_row("characters", f"{scores.characters:,}")
    console.print(table)
