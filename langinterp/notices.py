"""Hooks through which the library tells a front end about slow one-time work, since it never prints.

Torch-free, so that the CLI can set them at start-up without importing torch.
"""

from collections.abc import Callable
from pathlib import Path


def _quiet(source: Path) -> None:
    """The library's default: no notice."""


# Called with a kernel's source just before it is compiled (not when the cache holds it; native.py), so that
# a front end can say why the first call pauses: kernel.cpp takes most of a minute on a 2-core machine
# (README). The CLI prints a line.
compiling: Callable[[Path], None] = _quiet
