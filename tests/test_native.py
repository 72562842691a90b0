"""Building and loading C++ kernels: cached by content, announced when compiled, failures reported as
KernelUnavailable."""

from pathlib import Path

import pytest

from langinterp import native, notices
from langinterp.cli import run


@pytest.fixture
def kernel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "kernels"
    monkeypatch.setenv("LANGINTERP_KERNEL_CACHE", str(cache))
    return cache


def write_source(directory: Path, body: str) -> Path:
    source = directory / "tiny.cpp"
    source.write_text(body)
    return source


def test_build_is_cached_by_content(tmp_path: Path, kernel_cache: Path) -> None:
    source = write_source(tmp_path, 'extern "C" int answer() { return 42; }\n')
    library = native.load(source)
    assert library.answer() == 42
    built = list(kernel_cache.glob("tiny-*.so"))
    assert len(built) == 1
    assert native.build(source) == built[0]
    write_source(tmp_path, 'extern "C" int answer() { return 7; }\n')
    assert native.build(source) != built[0]
    assert sorted(p.name for p in kernel_cache.iterdir()) == sorted(p.name for p in kernel_cache.glob("*.so"))


def test_extra_flags_build_another_library(tmp_path: Path, kernel_cache: Path) -> None:
    source = write_source(
        tmp_path, 'extern "C" int answer() {\n#ifdef ANSWER\n return ANSWER;\n#else\n return 1;\n#endif\n}\n'
    )
    assert native.load(source).answer() == 1
    assert native.load(source, ("-DANSWER=5",)).answer() == 5
    assert native.build(source, ("-DANSWER=5",)) != native.build(source)
    assert len(list(kernel_cache.glob("tiny-*.so"))) == 2


def test_a_first_build_is_announced_and_the_cli_says_so_on_stderr(
    tmp_path: Path, kernel_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(notices, "compiling", notices.compiling)  # whatever a command sets, undone after
    seen: list[Path] = []
    notices.compiling = seen.append
    source = write_source(tmp_path, 'extern "C" int answer() { return 42; }\n')
    native.build(source)
    native.build(source)
    assert seen == [source]  # not again once the cache holds it
    monkeypatch.setenv("LANGINTERP_HOME", str(tmp_path / "home"))
    run(["runs"])  # any command installs the CLI's notice
    capsys.readouterr()
    write_source(tmp_path, 'extern "C" int answer() { return 7; }\n')
    native.build(source)
    assert capsys.readouterr().err.strip() == "compiling tiny.cpp for this CPU (first use; up to a minute)..."


def test_compile_error_is_reported(tmp_path: Path, kernel_cache: Path) -> None:
    source = write_source(tmp_path, "this is not C++\n")
    with pytest.raises(native.KernelUnavailable, match="tiny.cpp failed to compile"):
        native.load(source)
    assert not list(kernel_cache.glob("*.so"))


def test_switched_off(tmp_path: Path, kernel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGINTERP_KERNEL", "0")
    with pytest.raises(native.KernelUnavailable, match="LANGINTERP_KERNEL=0"):
        native.load(write_source(tmp_path, 'extern "C" int answer() { return 1; }\n'))
