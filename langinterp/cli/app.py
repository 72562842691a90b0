"""The Typer application and the consoles every command module shares."""

from typing import Annotated

import typer
from rich.console import Console

from langinterp import __version__

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


class State:
    """Options of the top-level callback that the error handler needs after the command has run."""

    debug = False


def _show_version(value: bool) -> None:
    if value:
        console.print(f"langinterp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Character-level language models built from high-order layers: fetch books, train, sample, compare."""
    State.debug = debug
