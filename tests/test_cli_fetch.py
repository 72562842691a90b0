"""`langinterp fetch` and `langinterp books`: in-process through `run`, and once as a real subprocess."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLOSED_PORT_URL, MirrorServer, Reply

from langinterp.cli import run
from langinterp.cli.fetch import _DownloadBar
from langinterp.paths import books_dir

BODY = "It was a dark and stormy night; the rain fell in torrents."
GutenbergFile = Callable[..., str]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr, checked to be exactly one line."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert "\n" not in err
    return err


def test_fetch_then_cached_then_list(
    http_mirror: MirrorServer, gutenberg_file: GutenbergFile, capsys: pytest.CaptureFixture[str]
) -> None:
    http_mirror.add_book(50133, gutenberg_file(BODY, title="Dunwich", book_id=50133))
    http_mirror.add_book(11, BODY)
    assert run(["fetch", "50133", "11", "--mirror", http_mirror.url]) == 0
    out = capsys.readouterr().out
    assert "fetched 50133 Dunwich" in out
    assert f"{len(BODY):,} characters" in out

    assert run(["fetch", "50133", "--mirror", http_mirror.url]) == 0
    assert "cached  50133 Dunwich" in capsys.readouterr().out

    for command in (["fetch", "--list"], ["books"]):
        assert run(command) == 0
        table = capsys.readouterr().out
        assert "Dunwich" in table
        assert "50133" in table
        assert table.index(" 11 ") < table.index("50133")


def test_force_downloads_again(http_mirror: MirrorServer, capsys: pytest.CaptureFixture[str]) -> None:
    path = http_mirror.add_book(11, BODY)
    assert run(["fetch", "11", "--mirror", http_mirror.url]) == 0
    assert run(["fetch", "11", "--mirror", http_mirror.url, "--force"]) == 0
    assert capsys.readouterr().out.count("fetched 11") == 2
    assert http_mirror.requested(path) == 2


def test_mirror_from_environment(
    http_mirror: MirrorServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    http_mirror.add_book(11, BODY)
    monkeypatch.setenv("LANGINTERP_MIRROR", http_mirror.url)
    assert run(["fetch", "11"]) == 0
    assert f"from {http_mirror.url}/1/11/11-0.txt" in capsys.readouterr().out


def test_empty_cache_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["books"]) == 0
    assert "no books cached" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fetch", "abc"], "book id must be a positive whole number, got 'abc'"),
        (["fetch", "11", "0"], "got '0'"),
        (["fetch"], "give one or more book ids"),
        (["fetch", "11", "--list"], "--list takes no book ids"),
        (["fetch", "11", "--mirror", "ftp://example.org"], "is not an http(s)://, file:// URL or a folder"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv) == 2
    assert message in one_error_line(capsys)
    assert not books_dir().exists()


def test_book_not_found(http_mirror: MirrorServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fetch", "999999999", "--mirror", http_mirror.url]) == 2
    assert one_error_line(capsys) == f"error: book 999999999 not found at {http_mirror.url}"
    assert not (books_dir() / "999999999").exists()


@pytest.mark.usefixtures("fast_network")
def test_no_network(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fetch", "11"]) == 1
    assert "could not reach gutenberg.org" in one_error_line(capsys)
    assert run(["fetch", "11", "--mirror", CLOSED_PORT_URL]) == 1
    assert "check --mirror or LANGINTERP_MIRROR" in one_error_line(capsys)


def test_html_page(http_mirror: MirrorServer, capsys: pytest.CaptureFixture[str]) -> None:
    http_mirror.script("/1/11/11-0.txt", Reply(200, b"<html>captcha</html>", "text/html"))
    assert run(["fetch", "11", "--mirror", http_mirror.url]) == 1
    assert "HTML page" in one_error_line(capsys)
    assert not (books_dir() / "11").exists()


def test_python_m_langinterp(tmp_path: Path, langinterp_home: Path, gutenberg_file: GutenbergFile) -> None:
    """One real process (the CLI's imports are slow): 7 is fetched, then 8 fails with one line, exit 2."""
    mirror = tmp_path / "mirror"
    (mirror / "0/7").mkdir(parents=True)
    (mirror / "0/7/7-0.txt").write_text(gutenberg_file(BODY, title="Stormy"))
    env = {**os.environ, "LANGINTERP_HOME": str(langinterp_home), "COLUMNS": "200"}
    env.pop("LANGINTERP_MIRROR", None)
    result = subprocess.run(
        [sys.executable, "-m", "langinterp", "fetch", "7", "8", "--mirror", mirror.as_uri()],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "fetched 7 Stormy" in result.stdout
    assert result.stderr.strip() == f"error: book 8 not found at {mirror.as_uri()}"
    assert (langinterp_home / "books/7/text.txt").read_text() == BODY + "\n"
    assert not (langinterp_home / "books/8").exists()


def test_progress_bar_only_for_slow_downloads() -> None:
    with _DownloadBar("book 1", delay=60) as quick:
        quick(0, 100)
        quick(100, 100)
        assert not quick.shown
    with _DownloadBar("book 2", delay=0) as slow:
        slow(0, None)
        slow(50, None)
        assert slow.shown
