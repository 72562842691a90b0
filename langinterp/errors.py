"""Errors a user can cause or meet, each carrying the exit code the CLI ends with.

The library raises these instead of printing; the CLI turns them into one red line on stderr.
Exit code 2 means the input was wrong (fix the command or the file); 1 means the work failed at run time
(network down, disk full) and the same command may succeed later.
"""


class LanginterpError(Exception):
    """Base class: a message meant for the user, and an exit code."""

    exit_code = 1


class UsageError(LanginterpError):
    """Bad input: a malformed recipe, an unknown key, a non-numeric book id, an empty prompt."""

    exit_code = 2


class NotFoundError(UsageError):
    """Something the user named does not exist: a book no source has, a run, a checkpoint."""


class NetworkError(LanginterpError):
    """A source could not be reached or kept failing; trying again later may work."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): library and framework
    errors often run to paragraphs, and the CLI shows one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
