"""`langinterp fetch` and `langinterp books`: download Gutenberg books into the cache and list them."""

import time
from types import TracebackType

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from langinterp.cli.app import Mirror, app, console
from langinterp.errors import UsageError
from langinterp.gutenberg import BookRecord, cached_books, fetch_book, parse_book_id, resolve_mirror
from langinterp.paths import books_dir


class _DownloadBar:
    """A byte-counting progress bar that appears only once a download has taken `delay` seconds.

    Short work stays quiet: a cached book or a local mirror never shows a bar, a slow download does.
    """

    def __init__(self, label: str, delay: float = 0.5) -> None:
        self._progress = Progress(
            TextColumn(label),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._delay = delay
        self._started = time.monotonic()
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self._task is None:
            if time.monotonic() - self._started < self._delay:
                return
            self._progress.start()
            self._task = self._progress.add_task("download", total=total)
        self._progress.update(self._task, completed=done, total=total)

    @property
    def shown(self) -> bool:
        """Whether the bar has appeared."""
        return self._task is not None

    def __enter__(self) -> "_DownloadBar":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.shown:
            self._progress.stop()


def _describe(record: BookRecord) -> str:
    title = f" {escape(record.title)}" if record.title else ""
    return f"{record.book_id}{title} ({record.characters:,} characters)"


def _show_books() -> None:
    records = cached_books()
    if not records:
        console.print(f"no books cached in {books_dir()}", highlight=False)
        return
    table = Table(caption=f"cache: {books_dir()}")
    table.add_column("id", justify="right")
    table.add_column("title")
    table.add_column("characters", justify="right")
    table.add_column("source", overflow="fold")
    for record in records:
        table.add_row(str(record.book_id), record.title or "-", f"{record.characters:,}", record.source)
    console.print(table)


@app.command()
def fetch(
    book_ids: list[str] = typer.Argument(None, metavar="ID...", help="Project Gutenberg book ids (50133)."),
    mirror: Mirror = None,
    force: bool = typer.Option(False, "--force", help="Download again even when the book is cached."),
    list_books: bool = typer.Option(False, "--list", help="List the cached books instead of fetching."),
) -> None:
    """Download Project Gutenberg books into the cache (each once), licence header and footer stripped."""
    if list_books:
        if book_ids:
            raise UsageError("--list takes no book ids")
        _show_books()
        return
    if not book_ids:
        raise UsageError("give one or more book ids (e.g. langinterp fetch 50133), or --list")
    ids = [parse_book_id(value) for value in book_ids]
    source = resolve_mirror(mirror)
    for book_id in ids:
        with _DownloadBar(f"book {book_id}") as bar:
            record = fetch_book(book_id, mirror=source, force=force, progress=bar)
        if record.downloaded:
            console.print(
                f"fetched {_describe(record)} from {escape(record.source)}", highlight=False, soft_wrap=True
            )
        else:
            console.print(f"cached  {_describe(record)}", highlight=False, soft_wrap=True)


@app.command()
def books() -> None:
    """List the cached books: id, title (from the Gutenberg header), characters, source."""
    _show_books()
