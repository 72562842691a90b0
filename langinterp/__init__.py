"""Character-level language models built from high-order (piecewise-polynomial) layers, and their peers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("langinterp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
