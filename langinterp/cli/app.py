"""The Typer application and the consoles every command module shares."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from langinterp import __version__, heap, notices

app = typer.Typer(
    name="langinterp",
    help="Character-level language models built from high-order layers: fetch books, train, sample, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options several commands share, declared once.
Mirror = Annotated[
    str | None,
    typer.Option(
        "--mirror",
        help="Gutenberg mirror: an http(s)://, file:// URL or a folder laid out like Gutenberg's mirrors "
        "(default: $LANGINTERP_MIRROR, else gutenberg.org).",
        show_default=False,
    ),
]
RunName = Annotated[str | None, typer.Option("--run-name", help="Run directory name (default: recipe-time).")]

console = Console()
err_console = Console(stderr=True)

# A barely trained model samples any of the 128 codes, control characters included. Written to a terminal they
# would move the cursor, ring the bell or start escape sequences, so there each is drawn as a visible mark;
# newline and tab are kept, and output to a file or pipe is the model's text unchanged.
CONTROL_MARKS = {code: "\u00b7" for code in (*range(32), 127) if chr(code) not in "\n\t"}


class State:
    """Options of the top-level callback that the error handler needs after the command has run."""

    debug = False


def _show_version(value: bool) -> None:
    if value:
        console.print(f"langinterp {__version__}")
        raise typer.Exit()


def _say_compiling(source: Path) -> None:
    """A kernel's first build pauses the command for up to a minute: say so, on stderr."""
    err_console.print(f"compiling {source.name} for this CPU (first use; up to a minute)...", style="dim")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Character-level language models built from high-order layers: fetch books, train, sample, compare."""
    State.debug = debug
    notices.compiling = _say_compiling
    heap.keep_freed_memory()  # before any command allocates: langinterp/heap.py says why
