"""Project Gutenberg books: where a book id lives, a polite download, boilerplate stripping, the cache.

A book is looked for on the configured mirror (an http(s):// or file:// URL, or a folder, laid out like the
real mirrors: `5/0/1/3/50133/50133-0.txt`), else on gutenberg.org. The first file that exists wins, in
the order Gutenberg prefers them: UTF-8 (`-0`), Latin-1 (`-8`), then plain (`.txt`).

The cache keeps, per book, the raw file as downloaded, the cleaned text (licence header and footer
stripped, decoded, `\\n` line endings) and a JSON metadata file with both files' SHA-256. The metadata is
written last, so it doubles as the commit marker: a cache folder whose files do not match it (a killed
write, a truncated disk, a hand edit) is treated as missing and fetched again. Downloads of one book are
serialised with a file lock, so two processes asking at once fetch it once.

Nothing here prints: progress is reported through a callback, failures as `LanginterpError`s whose
message is one line a user can act on.
"""

import hashlib
import json
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from langinterp import __version__
from langinterp.errors import NetworkError, NotFoundError, UsageError
from langinterp.paths import atomic_write, books_dir, file_lock

MIRROR_ENV = "LANGINTERP_MIRROR"
GUTENBERG = "https://www.gutenberg.org"
USER_AGENT = (
    f"langinterp/{__version__} (character-level language model research tool; "
    f"python-requests/{requests.__version__})"
)

# Network behaviour. Module-level so that tests (and impatient users of the library) can tighten them.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
RETRIES = 3
BACKOFF = 0.5
POLITE_HOSTS = frozenset({"www.gutenberg.org", "gutenberg.org"})
POLITE_INTERVAL = 2.0
CHUNK_BYTES = 64 * 1024

RAW_FILE = "raw.txt"
TEXT_FILE = "text.txt"
META_FILE = "meta.json"
META_FORMAT = 1

Progress = Callable[[int, int | None], None]
"""Download progress: called with (bytes so far, total bytes or None when the server does not say)."""

# Answers that mean "not here, try the next file". Object stores behind some mirrors answer 403 for
# missing files, so 401/403 count as missing rather than as a failure of the whole source.
_MISSING_STATUSES = frozenset({401, 403, 404, 410})


@dataclass(frozen=True)
class BookRecord:
    """A cached book, as its metadata describes it."""

    book_id: int
    title: str | None
    characters: int
    source: str
    encoding: str
    boilerplate_stripped: bool
    fetched_at: str
    path: Path
    downloaded: bool = False
    """True when this call downloaded the book, False when it came from the cache."""


@dataclass(frozen=True)
class _Download:
    raw: bytes
    source: str


def parse_book_id(value: str) -> int:
    """A Gutenberg id from user input; UsageError unless it is a positive whole number."""
    text = value.strip()
    if not re.fullmatch(r"[0-9]+", text) or int(text) == 0:
        raise UsageError(f"book id must be a positive whole number, got {value!r}")
    return int(text)


def resolve_mirror(option: str | None) -> str | None:
    """The mirror to use: the option if given, else `LANGINTERP_MIRROR`, else None (gutenberg.org)."""
    for value in (option, os.environ.get(MIRROR_ENV)):
        if value and value.strip():
            return value.strip()
    return None


def mirror_paths(book_id: int) -> list[str]:
    """The files a mirror may hold for a book, best first: every digit but the last is a folder."""
    digits = str(book_id)
    folders = "/".join(digits[:-1]) if len(digits) > 1 else "0"
    return [f"{folders}/{digits}/{digits}{suffix}.txt" for suffix in ("-0", "-8", "")]


def gutenberg_urls(book_id: int) -> list[str]:
    """The files gutenberg.org may hold for a book, best first (the generated UTF-8 file, then originals)."""
    files = f"{GUTENBERG}/files/{book_id}/{book_id}"
    return [
        f"{GUTENBERG}/cache/epub/{book_id}/pg{book_id}.txt",
        f"{files}-0.txt",
        f"{files}-8.txt",
        f"{files}.txt",
    ]


def book_folder(book_id: int) -> Path:
    """The cache folder of one book."""
    return books_dir() / str(book_id)


# --- decoding and boilerplate ---------------------------------------------------------------------------

_START = re.compile(
    r"^[ \t]*\*{3}[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG E-?(?:BOOK|TEXT)\b.*$"
    r"|^[ \t]*\*END\*?[ \t]*THE SMALL PRINT!.*$",
    re.IGNORECASE | re.MULTILINE,
)
_END = re.compile(
    r"^[ \t]*\*{3}[ \t]*END OF (?:THE |THIS )?PROJECT GUTENBERG E-?(?:BOOK|TEXT)\b.*$"
    r"|^[ \t]*End of (?:the )?Project Gutenberg(?:'s)?\b.*$",
    re.IGNORECASE | re.MULTILINE,
)
_TITLE = re.compile(r"^Title:[ \t]*(\S.*(?:\n[ \t]+\S.*)*)$", re.MULTILINE)
_OLD_TITLE = re.compile(
    r"^\W*The Project Gutenberg E-?(?:Book|text) of (.+?)(?:,? by .*)?[* \t]*$", re.IGNORECASE | re.MULTILINE
)
_FOOTER_TITLE = re.compile(
    r"^[ \t]*End of (?:the )?Project Gutenberg(?:'s)?(?: E-?(?:Book|text) of)? (.+?)(?:,? by .*)?[* \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_HTML_START = (b"<!doctype html", b"<html", b"<head", b"<body")


def decode_book(raw: bytes, *, latin1: bool = False) -> tuple[str, str]:
    """Decode a book file; returns (text, encoding used).

    A BOM means UTF-8; `-8` files (`latin1=True`) are Latin-1; other files are UTF-8 when they decode as
    such. Latin-1 is read as Windows-1252, as browsers do: the two differ only where Latin-1 has control
    codes that never occur in books and Windows-1252 has curly quotes and dashes, which old files do use.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        encodings = ("utf-8-sig", "cp1252", "latin-1")
    elif latin1:
        encodings = ("cp1252", "latin-1")
    else:
        encodings = ("utf-8", "cp1252", "latin-1")
    for encoding in encodings[:-1]:
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return raw.decode(encodings[-1]), encodings[-1]


def normalize_newlines(text: str) -> str:
    """`\\r\\n` and lone `\\r` (old Mac files) become `\\n`."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split(text: str) -> tuple[str, str | None, bool]:
    """(body, title from the header or None, whether any boilerplate was found) of normalised text."""
    start = _START.search(text)
    begin = start.end() if start else 0
    end = _END.search(text, begin)
    if start is None and end is None:
        return text, None, False
    body = text[begin : end.start() if end else len(text)]
    body = _LEADING_BLANK_LINES.sub("", body).rstrip() + "\n"
    return body, _title(text[: start.start()] if start else "", text[end.start() :] if end else ""), True


def _title(header: str, footer: str) -> str | None:
    """The `Title:` line of the header, else the title in the old first line or in the old footer line."""
    for pattern, part in ((_TITLE, header), (_OLD_TITLE, header), (_FOOTER_TITLE, footer)):
        if match := pattern.search(part):
            return " ".join(match.group(1).split())
    return None


def strip_boilerplate(text: str) -> str:
    """The book without the Project Gutenberg licence header and footer; text without markers is kept whole.

    Recognises the modern `*** START OF THE PROJECT GUTENBERG EBOOK ... ***` / `*** END OF ...` markers,
    the older `THIS PROJECT GUTENBERG ETEXT` and `*END*THE SMALL PRINT!` forms, and the old
    `End of the Project Gutenberg EBook of ...` footer line. Line endings are normalised to `\\n`.
    """
    return _split(normalize_newlines(text))[0]


def _looks_like_html(raw: bytes, content_type: str) -> bool:
    """Servers answer a missing or blocked file with an HTML page and status 200 more often than one hopes."""
    if content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    head = raw[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(_HTML_START)


# --- downloading ----------------------------------------------------------------------------------------


class _Throttle:
    """Keeps at least `interval` seconds between the starts of requests to one host (per process)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._last: dict[str, float] = {}

    def wait(self, host: str, interval: float) -> None:
        last = self._last.get(host)
        if last is not None and (delay := last + interval - self._clock()) > 0:
            self._sleep(delay)
        self._last[host] = self._clock()


_throttle = _Throttle()


def _reason(error: requests.RequestException) -> str:
    """A few words for a failed request, instead of urllib3's paragraph."""
    text = str(error)
    if isinstance(error, requests.Timeout) or "timed out" in text.lower():
        return "timed out"
    if match := re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text):
        return match.group(1).strip().rstrip(".").lower()
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "connection broken during the download"
    if "RemoteDisconnected" in text or "without response" in text:
        return "connection closed by the server"
    return type(error).__name__


class _Unreachable(Exception):
    """A location could not be read after all retries; the message says why in a few words."""


def _http_get(session: requests.Session, url: str, progress: Progress | None) -> tuple[bytes, str] | None:
    """(body, content type) of `url`, or None if the server says it has no such file.

    Transient failures (5xx, 429, timeouts, resets, broken downloads) are retried with exponential backoff;
    gutenberg.org is asked at most once every `POLITE_INTERVAL` seconds, as its robot policy asks.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    failure = ""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(BACKOFF * 2 ** (attempt - 1))
        if host in POLITE_HOSTS:
            _throttle.wait(host, POLITE_INTERVAL)
        try:
            with session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as response:
                status = response.status_code
                if status in _MISSING_STATUSES:
                    return None
                if status == 429 or status >= 500:
                    failure = f"HTTP {status}"
                    continue
                if status >= 400:
                    raise _Unreachable(f"HTTP {status}")
                return _read_body(response, progress), response.headers.get("Content-Type", "")
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as error:
            failure = _reason(error)
        except requests.RequestException as error:
            raise _Unreachable(_reason(error)) from error
    raise _Unreachable(f"{failure} after {RETRIES + 1} tries")


def _read_body(response: requests.Response, progress: Progress | None) -> bytes:
    length = response.headers.get("Content-Length", "")
    # With a compressed transfer the length counts compressed bytes, not the bytes we are handed.
    total = int(length) if length.isdigit() and not response.headers.get("Content-Encoding") else None
    chunks: list[bytes] = []
    done = 0
    if progress:
        progress(0, total)
    for chunk in response.iter_content(CHUNK_BYTES):
        chunks.append(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)
    return b"".join(chunks)


def _local_folder(mirror: str) -> Path | None:
    """The folder of a file:// URL or plain path mirror; None for http(s); UsageError for anything else."""
    parts = urllib.parse.urlsplit(mirror)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise UsageError(f"mirror URL {mirror!r} has no host")
        return None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"mirror {mirror!r}: file:// URLs must name a local folder (file:///path)")
        folder = Path(urllib.request.url2pathname(parts.path))
    elif parts.scheme and len(parts.scheme) > 1:
        raise UsageError(f"mirror {mirror!r} is not an http(s)://, file:// URL or a folder")
    else:
        folder = Path(mirror).expanduser()
    if not folder.is_dir():
        raise UsageError(f"mirror folder {folder} does not exist")
    return folder.resolve()


def _locations(book_id: int, mirror: str | None) -> tuple[list[str], bool]:
    """Where to look for a book, best first, and whether those are local paths rather than URLs."""
    if not mirror:
        return gutenberg_urls(book_id), False
    folder = _local_folder(mirror)
    if folder is not None:
        return [str(folder / path) for path in mirror_paths(book_id)], True
    return [f"{mirror.rstrip('/')}/{path}" for path in mirror_paths(book_id)], False


def _download(
    book_id: int, mirror: str | None, locations: list[str], local: bool, progress: Progress | None
) -> _Download:
    """The first file any location of the book has, skipping HTML pages and empty files."""
    where = mirror or "gutenberg.org"
    problems: list[str] = []
    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        for location in locations:
            if local:
                found = (Path(location).read_bytes(), "") if Path(location).is_file() else None
            else:
                try:
                    found = _http_get(session, location, progress)
                except _Unreachable as error:
                    advice = f"check --mirror or {MIRROR_ENV}" if mirror else f"use --mirror or {MIRROR_ENV}"
                    raise NetworkError(f"could not reach {where} ({error}); {advice}") from None
            if found is None:
                continue
            raw, content_type = found
            if not raw.strip():
                problems.append(f"book {book_id} at {location} is an empty file")
            elif _looks_like_html(raw, content_type):
                problems.append(f"{location} served an HTML page instead of the text of book {book_id}")
            else:
                return _Download(raw, location)
    if problems:
        raise NetworkError(problems[0])
    raise NotFoundError(f"book {book_id} not found at {where}")


# --- the cache ------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(book_id: int, meta: dict, *, downloaded: bool = False) -> BookRecord:
    return BookRecord(
        book_id=book_id,
        title=meta["title"],
        characters=int(meta["characters"]),
        source=meta["source"],
        encoding=meta["encoding"],
        boilerplate_stripped=bool(meta["boilerplate_stripped"]),
        fetched_at=meta["fetched_at"],
        path=book_folder(book_id) / TEXT_FILE,
        downloaded=downloaded,
    )


def _read_cached(book_id: int) -> tuple[BookRecord, str] | None:
    """The cached record and text, or None when missing or when any file does not match its checksum."""
    folder = book_folder(book_id)
    try:
        meta = json.loads((folder / META_FILE).read_text("utf-8"))
        raw = (folder / RAW_FILE).read_bytes()
        data = (folder / TEXT_FILE).read_bytes()
        if meta["format"] != META_FORMAT or meta["book_id"] != book_id:
            return None
        if _sha256(raw) != meta["raw"]["sha256"] or _sha256(data) != meta["text"]["sha256"]:
            return None
        return _record(book_id, meta), data.decode("utf-8")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(book_id: int, download: _Download) -> tuple[BookRecord, str]:
    """Clean and write a downloaded book: raw, text, then the metadata that vouches for both."""
    decoded, encoding = decode_book(download.raw, latin1=download.source.endswith("-8.txt"))
    text, title, stripped = _split(normalize_newlines(decoded))
    if not text.strip():
        raise NetworkError(f"book {book_id} at {download.source} has no text between its licence markers")
    data = text.encode("utf-8")
    meta = {
        "format": META_FORMAT,
        "book_id": book_id,
        "title": title,
        "characters": len(text),
        "source": download.source,
        "encoding": encoding,
        "boilerplate_stripped": stripped,
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "raw": {"file": RAW_FILE, "bytes": len(download.raw), "sha256": _sha256(download.raw)},
        "text": {"file": TEXT_FILE, "bytes": len(data), "sha256": _sha256(data)},
    }
    folder = book_folder(book_id)
    atomic_write(folder / RAW_FILE, download.raw)
    atomic_write(folder / TEXT_FILE, data)
    atomic_write(folder / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return _record(book_id, meta, downloaded=True), text


def _ensure(
    book_id: int, mirror: str | None, force: bool, progress: Progress | None
) -> tuple[BookRecord, str]:
    if book_id < 1:
        raise UsageError(f"book id must be a positive whole number, got {book_id}")
    if not force and (cached := _read_cached(book_id)):
        return cached
    mirror = resolve_mirror(mirror)
    locations, local = _locations(book_id, mirror)  # a bad mirror fails here, before anything is written
    with file_lock(book_folder(book_id)):
        # Another process may have fetched it while we waited for the lock.
        if not force and (cached := _read_cached(book_id)):
            return cached
        return _store(book_id, _download(book_id, mirror, locations, local, progress))


def fetch_book(
    book_id: int, *, mirror: str | None = None, force: bool = False, progress: Progress | None = None
) -> BookRecord:
    """Make sure a book is in the cache (downloading it if missing, corrupt or `force`d) and describe it.

    `mirror` None means `LANGINTERP_MIRROR`, else gutenberg.org. Raises NotFoundError when no location has
    the book, NetworkError when a source cannot be reached or serves no text, UsageError for a bad mirror.
    A failed fetch writes nothing.
    """
    return _ensure(book_id, mirror, force, progress)[0]


def book_text(book_id: int, *, mirror: str | None = None) -> str:
    """The cleaned text of a book (boilerplate stripped, `\\n` line endings, not yet folded to ASCII).

    Fetches the book when it is missing or its cache files fail their checksum.
    """
    return _ensure(book_id, mirror, False, None)[1]


def cached_books() -> list[BookRecord]:
    """Every book in the cache, by id. Folders with unreadable metadata (never committed) are skipped."""
    root = books_dir()
    if not root.is_dir():
        return []
    records = []
    for folder in root.iterdir():
        if not (folder.is_dir() and folder.name.isdigit()):
            continue
        try:
            records.append(_record(int(folder.name), json.loads((folder / META_FILE).read_text("utf-8"))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(records, key=lambda record: record.book_id)
