"""Build and load the project's C++ kernels (plain C ABI, no torch headers) on first use.

Each kernel is one .cpp file compiled by the system C++ compiler (``-O3 -march=native -fopenmp``) into a
cache directory (``$LANGINTERP_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/langinterp/kernels``), keyed by a
hash of the source, compiler, flags and CPU features, so a shared home directory never hands one machine
another's instructions. The library is written atomically (built in a scratch directory, then renamed),
so concurrent processes are safe. It links the libgomp torch already loaded. ``LANGINTERP_KERNEL=0``
turns every kernel off: callers then use their pure-PyTorch paths.
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from . import notices

logger = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
# Every kernel has one entry point per handled dtype, named `<name>_<suffix>`.
DTYPES = {torch.float32: "f32", torch.float64: "f64"}


class KernelUnavailable(RuntimeError):
    """The kernel cannot be used here: switched off, no compiler, or the build failed."""


def enabled() -> bool:
    return os.environ.get("LANGINTERP_KERNEL", "1") != "0"


def cache_dir() -> Path:
    explicit = os.environ.get("LANGINTERP_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "langinterp" / "kernels"


def _cpu_features() -> str:
    """The CPU's instruction-set flags (what -march=native compiles for), or the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.machine()


def build(source: Path, flags: tuple[str, ...] = ()) -> Path:
    """The compiled shared library of ``source``, compiling it unless the cache already holds it. ``flags``
    go after the usual ones (tests build the portable code of an AVX-512 kernel with ``-mno-avx512f``)."""
    code = source.read_bytes()
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise KernelUnavailable("no C++ compiler found (set CXX)")
    command = [compiler, *FLAGS, *flags]
    key = hashlib.sha256(code + " ".join((*command, _cpu_features())).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    notices.compiling(source)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        try:
            subprocess.run([*command, str(source), "-o", str(built)], check=True, capture_output=True)
        except subprocess.CalledProcessError as error:
            raise KernelUnavailable(
                f"{source.name} failed to compile: {error.stderr.decode()[-500:]}"
            ) from error
        os.replace(built, target)
    return target


def load(source: Path, flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """``source`` built (with ``flags`` as in build) and loaded; raises KernelUnavailable when kernels are off
    or cannot be built."""
    if not enabled():
        raise KernelUnavailable("LANGINTERP_KERNEL=0")
    try:
        return ctypes.CDLL(str(build(source, flags)))
    except OSError as error:
        raise KernelUnavailable(str(error)) from error


def bind(
    source: Path, signatures: dict[str, list[type]], instead: str, flags: tuple[str, ...] = ()
) -> ctypes.CDLL | None:
    """``source`` loaded (built with ``flags`` as in build) with the argument types of its entry points set
    (``signatures``: name -> ctypes types, for every dtype suffix), or None after one warning saying what
    runs ``instead``."""
    try:
        library = load(source, flags)
    except KernelUnavailable as error:
        logger.warning("%s unavailable, using %s: %s", source.name, instead, error)
        return None
    for name, argtypes in signatures.items():
        for suffix in DTYPES.values():
            function = getattr(library, f"{name}_{suffix}")
            function.restype = None
            function.argtypes = argtypes
    return library
