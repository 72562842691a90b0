"""Book ids and sources, boilerplate stripping, downloads through a real local HTTP server, the cache."""

import hashlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLOSED_PORT_URL, MirrorServer, Reply

from langinterp import gutenberg
from langinterp.errors import NetworkError, NotFoundError, UsageError
from langinterp.gutenberg import book_text, cached_books, fetch_book, strip_boilerplate
from langinterp.paths import books_dir

BODY = (
    "CHAPTER I.\n\n\u201cWell,\u201d said the narrator\u2014twice\u2014\u201chere we are.\u201d\n\nThe end."
)
GutenbergFile = Callable[..., str]


def cache_is_empty() -> bool:
    """No book folder and no temp file: what a failed fetch must leave (lock files are allowed)."""
    root = books_dir()
    return not root.exists() or all(path.suffix == ".lock" for path in root.iterdir())


# --- ids, mirrors, layout -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("50133", 50133), (" 11 ", 11), ("007", 7)])
def test_parse_book_id(value: str, expected: int) -> None:
    assert gutenberg.parse_book_id(value) == expected


@pytest.mark.parametrize("value", ["abc", "", "-5", "0", "1.5", "12a", "\u00b2"])
def test_parse_book_id_rejects(value: str) -> None:
    with pytest.raises(UsageError, match="positive whole number"):
        gutenberg.parse_book_id(value)


def test_resolve_mirror_prefers_option_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gutenberg.resolve_mirror(None) is None
    monkeypatch.setenv("LANGINTERP_MIRROR", "http://env.example/")
    assert gutenberg.resolve_mirror(None) == "http://env.example/"
    assert gutenberg.resolve_mirror("/srv/mirror") == "/srv/mirror"


def test_mirror_layout() -> None:
    assert gutenberg.mirror_paths(50133) == [
        "5/0/1/3/50133/50133-0.txt",
        "5/0/1/3/50133/50133-8.txt",
        "5/0/1/3/50133/50133.txt",
    ]
    assert gutenberg.mirror_paths(11)[0] == "1/11/11-0.txt"
    assert gutenberg.mirror_paths(5)[0] == "0/5/5-0.txt"


def test_gutenberg_org_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gutenberg, "GUTENBERG", "https://www.gutenberg.org")
    urls = gutenberg.gutenberg_urls(84)
    assert urls[0] == "https://www.gutenberg.org/cache/epub/84/pg84.txt"
    assert "https://www.gutenberg.org/files/84/84-0.txt" in urls


@pytest.mark.parametrize("mirror", ["ftp://example.org/gutenberg", "http://", "file://otherhost/x"])
def test_bad_mirror_is_a_usage_error(mirror: str) -> None:
    with pytest.raises(UsageError, match="mirror"):
        fetch_book(1, mirror=mirror)


def test_missing_mirror_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        fetch_book(1, mirror=str(tmp_path / "nowhere"))


# --- boilerplate and decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["modern", "old", "small-print"])
def test_strip_boilerplate(gutenberg_file: GutenbergFile, style: str) -> None:
    assert strip_boilerplate(gutenberg_file(BODY, style=style)) == BODY + "\n"


@pytest.mark.parametrize("style", ["modern", "old", "small-print"])
def test_title_from_header(tmp_path: Path, gutenberg_file: GutenbergFile, style: str) -> None:
    (tmp_path / "0/3").mkdir(parents=True)
    (tmp_path / "0/3/3-0.txt").write_text(gutenberg_file(BODY, title="Who Goes There?", style=style))
    assert fetch_book(3, mirror=str(tmp_path)).title == "Who Goes There?"


def test_title_from_old_footer_alone(tmp_path: Path) -> None:
    (tmp_path / "0/3").mkdir(parents=True)
    footer = "\n\nEnd of the Project Gutenberg EBook of The Dunwich Horror, by H. P. Lovecraft\n"
    (tmp_path / "0/3/3-0.txt").write_text(BODY + footer)
    record = fetch_book(3, mirror=str(tmp_path))
    assert record.title == "The Dunwich Horror"
    assert book_text(3) == BODY + "\n"


def test_text_without_markers_is_kept_whole() -> None:
    text = "\n  Indented first line.\nSecond line.\n\n"
    assert strip_boilerplate(text) == text


def test_strip_boilerplate_normalises_line_endings(gutenberg_file: GutenbergFile) -> None:
    crlf = gutenberg_file(BODY).replace("\n", "\r\n")
    assert strip_boilerplate(crlf) == BODY + "\n"
    assert strip_boilerplate("old\rmac\r") == "old\nmac\n"


def test_decode_book() -> None:
    assert gutenberg.decode_book("caf\u00e9".encode()) == ("caf\u00e9", "utf-8")
    assert gutenberg.decode_book(b"\xef\xbb\xbfcaf\xc3\xa9") == ("caf\u00e9", "utf-8-sig")
    assert gutenberg.decode_book(b"caf\xe9", latin1=True)[0] == "caf\u00e9"
    assert gutenberg.decode_book(b"\x93quoted\x94 caf\xe9")[0] == "\u201cquoted\u201d caf\u00e9"


# --- downloads ------------------------------------------------------------------------------------------


def test_fetch_from_http_mirror(http_mirror: MirrorServer, gutenberg_file: GutenbergFile) -> None:
    path = http_mirror.add_book(50133, gutenberg_file(BODY, title="The Dunwich Horror", book_id=50133))
    record = fetch_book(50133, mirror=http_mirror.url)
    assert record.downloaded
    assert record.title == "The Dunwich Horror"
    assert record.characters == len(BODY) + 1
    assert record.source == http_mirror.url + path
    assert record.boilerplate_stripped
    assert record.path.read_text("utf-8") == BODY + "\n"
    assert http_mirror.requests[-1].user_agent.startswith("langinterp/")

    meta = json.loads((record.path.parent / "meta.json").read_text())
    raw = (record.path.parent / "raw.txt").read_bytes()
    assert meta["raw"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert raw == (http_mirror.root / path.lstrip("/")).read_bytes()

    again = fetch_book(50133, mirror=http_mirror.url)
    assert not again.downloaded
    assert http_mirror.requested(path) == 1
    assert fetch_book(50133, mirror=http_mirror.url, force=True).downloaded
    assert http_mirror.requested(path) == 2


def test_progress_reports_bytes(http_mirror: MirrorServer) -> None:
    data = ("line of text\n" * 20000).encode()
    http_mirror.add_book(7, data)
    calls: list[tuple[int, int | None]] = []
    fetch_book(7, mirror=http_mirror.url, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, len(data))
    assert calls[-1] == (len(data), len(data))


def test_not_found(http_mirror: MirrorServer) -> None:
    with pytest.raises(NotFoundError, match=f"^book 999999999 not found at {http_mirror.url}$"):
        fetch_book(999999999, mirror=http_mirror.url)
    assert http_mirror.requested("/9/9/9/9/9/9/9/9/999999999/999999999-0.txt") == 1
    assert len(http_mirror.requests) == 3
    assert cache_is_empty()


def test_falls_back_to_plain_txt(http_mirror: MirrorServer) -> None:
    http_mirror.add_book(12, "plain ascii text\n", suffix="")
    assert fetch_book(12, mirror=http_mirror.url).source.endswith("/1/12/12.txt")


def test_server_error_then_success(http_mirror: MirrorServer) -> None:
    path = http_mirror.add_book(11, BODY)
    http_mirror.script(path, Reply(500), Reply(503))
    assert book_text(11, mirror=http_mirror.url) == BODY
    assert http_mirror.requested(path) == 3


def test_connection_reset_then_success(http_mirror: MirrorServer) -> None:
    path = http_mirror.add_book(11, BODY)
    http_mirror.script(path, Reply(status=0))
    assert book_text(11, mirror=http_mirror.url) == BODY


def test_server_that_keeps_failing(http_mirror: MirrorServer) -> None:
    path = http_mirror.add_book(11, BODY)
    http_mirror.script(path, *[Reply(500)] * 5)
    with pytest.raises(NetworkError, match=r"could not reach .*HTTP 500 after 3 tries.*--mirror"):
        fetch_book(11, mirror=http_mirror.url)
    assert cache_is_empty()


def test_server_slower_than_the_timeout(http_mirror: MirrorServer) -> None:
    path = http_mirror.add_book(11, BODY)
    http_mirror.slow(path, 3.0)
    started = time.monotonic()
    with pytest.raises(NetworkError, match="timed out"):
        fetch_book(11, mirror=http_mirror.url)
    assert time.monotonic() - started < 2.5
    assert cache_is_empty()


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, b"<html><body>Rate limited</body></html>", "text/html; charset=utf-8"),
        Reply(200, b"\n<!DOCTYPE html>\n<html><p>Not here</p></html>", "text/plain"),
    ],
)
def test_html_page_instead_of_text(http_mirror: MirrorServer, reply: Reply) -> None:
    http_mirror.script("/1/11/11-0.txt", reply)
    with pytest.raises(NetworkError, match="served an HTML page instead of the text of book 11"):
        fetch_book(11, mirror=http_mirror.url)
    assert cache_is_empty()


def test_empty_file(http_mirror: MirrorServer) -> None:
    http_mirror.add_book(11, b"")
    with pytest.raises(NetworkError, match="empty file"):
        fetch_book(11, mirror=http_mirror.url)
    assert cache_is_empty()


def test_markers_around_nothing(http_mirror: MirrorServer, gutenberg_file: GutenbergFile) -> None:
    http_mirror.add_book(11, gutenberg_file(""))
    with pytest.raises(NetworkError, match="no text between"):
        fetch_book(11, mirror=http_mirror.url)
    assert cache_is_empty()


def test_latin1_file(http_mirror: MirrorServer, gutenberg_file: GutenbergFile) -> None:
    body = "Les mis\u00e9rables \u00e0 la fa\u00e7on de Jos\u00e9"
    http_mirror.add_book(
        135, gutenberg_file(body, title="Les Mis\u00e9rables", style="old").encode("latin-1"), "-8"
    )
    record = fetch_book(135, mirror=http_mirror.url)
    assert record.source.endswith("/1/3/135/135-8.txt")
    assert record.title == "Les Mis\u00e9rables"
    assert book_text(135) == body + "\n"


def test_utf8_bom_and_crlf(http_mirror: MirrorServer, gutenberg_file: GutenbergFile) -> None:
    data = b"\xef\xbb\xbf" + gutenberg_file(BODY).replace("\n", "\r\n").encode()
    http_mirror.add_book(11, data)
    text = book_text(11, mirror=http_mirror.url)
    assert text == BODY + "\n"
    assert fetch_book(11).encoding == "utf-8-sig"


def test_bom_without_markers_is_kept_whole(http_mirror: MirrorServer) -> None:
    http_mirror.add_book(11, b"\xef\xbb\xbf[Illustration]\r\n\r\nA body only.\r\n")
    record = fetch_book(11, mirror=http_mirror.url)
    assert not record.boilerplate_stripped
    assert record.title is None
    assert book_text(11) == "[Illustration]\n\nA body only.\n"


def test_local_folder_and_file_url(tmp_path: Path, gutenberg_file: GutenbergFile) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "8/84").mkdir(parents=True)
    (mirror / "8/84/84-0.txt").write_text(gutenberg_file(BODY))
    assert book_text(84, mirror=str(mirror)) == BODY + "\n"
    assert fetch_book(84, mirror=mirror.as_uri(), force=True).source == str(
        mirror.resolve() / "8/84/84-0.txt"
    )
    with pytest.raises(NotFoundError, match=f"book 85 not found at {mirror.as_uri()}"):
        fetch_book(85, mirror=mirror.as_uri())


def test_environment_mirror(http_mirror: MirrorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    http_mirror.add_book(11, BODY)
    monkeypatch.setenv("LANGINTERP_MIRROR", http_mirror.url)
    assert book_text(11) == BODY


def test_gutenberg_org_without_mirror(http_mirror: MirrorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gutenberg, "GUTENBERG", http_mirror.url)
    http_mirror.add("files/84/84-0.txt", BODY)
    assert fetch_book(84).source == f"{http_mirror.url}/files/84/84-0.txt"
    assert [request.path for request in http_mirror.requests] == [
        "/cache/epub/84/pg84.txt",
        "/files/84/84-0.txt",
    ]


def test_no_network_without_mirror(fast_network: None) -> None:
    with pytest.raises(
        NetworkError, match="could not reach gutenberg.org .*; use --mirror or LANGINTERP_MIRROR"
    ):
        fetch_book(11)
    assert cache_is_empty()


def test_unreachable_mirror(fast_network: None) -> None:
    with pytest.raises(NetworkError, match=f"could not reach {CLOSED_PORT_URL} .*refused"):
        fetch_book(11, mirror=CLOSED_PORT_URL)


def test_requests_to_polite_hosts_are_spaced(
    http_mirror: MirrorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gutenberg, "POLITE_HOSTS", frozenset({"127.0.0.1"}))
    monkeypatch.setattr(gutenberg, "POLITE_INTERVAL", 0.2)
    monkeypatch.setattr(gutenberg, "_throttle", gutenberg._Throttle())
    http_mirror.add_book(12, BODY, suffix="")
    fetch_book(12, mirror=http_mirror.url)
    times = [request.time for request in http_mirror.requests]
    assert len(times) == 3
    assert all(later - earlier >= 0.19 for earlier, later in itertools.pairwise(times))


def test_throttle_waits_only_as_long_as_needed() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    throttle = gutenberg._Throttle(clock=lambda: now[0], sleep=sleep)
    throttle.wait("www.gutenberg.org", 2.0)
    now[0] += 0.5
    throttle.wait("www.gutenberg.org", 2.0)
    throttle.wait("other.host", 2.0)
    now[0] += 5
    throttle.wait("www.gutenberg.org", 2.0)
    assert sleeps == [1.5]


# --- the cache ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: (folder / "text.txt").write_bytes((folder / "text.txt").read_bytes()[:10]),
        lambda folder: (folder / "raw.txt").write_bytes(b"X" + (folder / "raw.txt").read_bytes()[1:]),
        lambda folder: (folder / "meta.json").write_text('{"format": 1, "book_id"'),
        lambda folder: (folder / "text.txt").unlink(),
    ],
    ids=["truncated-text", "corrupt-raw", "truncated-meta", "missing-text"],
)
def test_corrupt_cache_is_fetched_again(
    http_mirror: MirrorServer, gutenberg_file: GutenbergFile, damage: Callable[[Path], object]
) -> None:
    path = http_mirror.add_book(11, gutenberg_file(BODY))
    record = fetch_book(11, mirror=http_mirror.url)
    damage(record.path.parent)
    assert book_text(11, mirror=http_mirror.url) == BODY + "\n"
    assert http_mirror.requested(path) == 2
    assert not fetch_book(11, mirror=http_mirror.url).downloaded


def test_corrupt_cache_is_not_served_when_offline(http_mirror: MirrorServer) -> None:
    http_mirror.add_book(11, BODY)
    record = fetch_book(11, mirror=http_mirror.url)
    record.path.write_text("garbage")
    with pytest.raises(NetworkError):
        book_text(11, mirror=CLOSED_PORT_URL)


def test_failed_refresh_keeps_the_cached_book(http_mirror: MirrorServer) -> None:
    path = http_mirror.add_book(11, BODY)
    fetch_book(11, mirror=http_mirror.url)
    http_mirror.script(path, Reply(200, b"<html>oops</html>", "text/html"))
    with pytest.raises(NetworkError):
        fetch_book(11, mirror=http_mirror.url, force=True)
    assert book_text(11, mirror=CLOSED_PORT_URL) == BODY


def test_cached_books(http_mirror: MirrorServer, gutenberg_file: GutenbergFile) -> None:
    assert cached_books() == []
    http_mirror.add_book(84, gutenberg_file(BODY, title="Frankenstein"))
    http_mirror.add_book(11, BODY)
    fetch_book(84, mirror=http_mirror.url)
    fetch_book(11, mirror=http_mirror.url)
    (books_dir() / "junk").mkdir()
    (books_dir() / "12").mkdir()
    records = cached_books()
    assert [(r.book_id, r.title, r.characters) for r in records] == [
        (11, None, len(BODY)),
        (84, "Frankenstein", len(BODY) + 1),
    ]


_FETCH_IN_CHILD = """
import hashlib, sys
from langinterp.gutenberg import book_text
print(hashlib.sha256(book_text(int(sys.argv[1]), mirror=sys.argv[2]).encode()).hexdigest())
"""


def test_two_processes_fetch_once(http_mirror: MirrorServer, gutenberg_file: GutenbergFile) -> None:
    path = http_mirror.add_book(11, gutenberg_file(BODY))
    http_mirror.slow(path, 0.8)
    root = Path(__file__).resolve().parents[1]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCH_IN_CHILD, "11", http_mirror.url],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=60)[0].strip() for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert outputs[0] == outputs[1] == hashlib.sha256((BODY + "\n").encode()).hexdigest()
    assert http_mirror.requested(path) == 1
    assert book_text(11, mirror=CLOSED_PORT_URL) == BODY + "\n"
