"""The `langinterp` command line: thin Typer commands over the library, rendered with rich.

Every command module registers itself on the shared app when imported here. User-caused errors end in one
red line on stderr and exit code 2 (bad input) or 1 (run-time failure); `--debug` shows the traceback.
"""

import sys

import typer
from rich.markup import escape

from langinterp.cli import (
    automaton,  # noqa: F401
    evaluate,  # noqa: F401
    fetch,  # noqa: F401
    gbm,  # noqa: F401
    generate,  # noqa: F401
    recipes,  # noqa: F401
    runs,  # noqa: F401
    sweep,  # noqa: F401
    train,  # noqa: F401
)
from langinterp.cli.app import State, app, err_console
from langinterp.errors import LanginterpError


def _fail(message: str, code: int) -> int:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting, so tests can call it in-process."""
    State.debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        result = app(args=argv, prog_name="langinterp", standalone_mode=False)
    except LanginterpError as error:
        if State.debug:
            raise
        return _fail(str(error), error.exit_code)
    except typer.Abort:
        return _fail("interrupted", 130)
    except typer.TyperException as error:
        if State.debug:
            raise
        return _fail(error.format_message(), error.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except OSError as error:
        if State.debug:
            raise
        return _fail(f"{error.strerror or error}: {error.filename}" if error.filename else str(error), 1)
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
