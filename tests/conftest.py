"""Shared fixtures: an isolated cache for every test, a local HTTP mirror, Gutenberg-style book files.

Every test gets its own `LANGINTERP_HOME` and no `LANGINTERP_MIRROR`, and gutenberg.org is pointed at a
closed local port, so no test can touch the user's cache or the network by accident.
"""

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton's interpreter runs the layers' Triton kernels on CPU tensors (tests/test_triton.py).
# It must be chosen before anything imports Triton, and Lightning does.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import langinterp
from langinterp import gutenberg
from langinterp.cli import run
from langinterp.layers import KINDS
from langinterp.trainable import PLATEAU_KEY
from langinterp.training import AUDIT_ENV, RANK_VARIABLES, RUN_ENV

CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there, connections are refused


@pytest.fixture(autouse=True)
def langinterp_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty LANGINTERP_HOME; no mirror configured; gutenberg.org unreachable."""
    home = tmp_path_factory.mktemp("langinterp-home")
    monkeypatch.setenv("LANGINTERP_HOME", str(home))
    monkeypatch.delenv("LANGINTERP_MIRROR", raising=False)
    monkeypatch.setattr(gutenberg, "GUTENBERG", CLOSED_PORT_URL)
    return home


@pytest.fixture(autouse=True)
def cpu_unless_marked_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite is written for CI's CPU. On a GPU machine `langinterp` would pick CUDA wherever a test
    leaves the device to it: bf16-mixed training, atomic kernels, CUDA's own random streams, none of which
    those tests' exact checks are about. Tests that exercise CUDA carry the `gpu` mark and see the GPU."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fast_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short timeouts and no backoff, so failure paths take fractions of a second."""
    monkeypatch.setattr(gutenberg, "CONNECT_TIMEOUT", 1.0)
    monkeypatch.setattr(gutenberg, "READ_TIMEOUT", 0.3)
    monkeypatch.setattr(gutenberg, "RETRIES", 2)
    monkeypatch.setattr(gutenberg, "BACKOFF", 0.0)


@dataclass
class Reply:
    """A scripted answer. `status=0` closes the connection without answering (a reset)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass
class Request:
    path: str
    user_agent: str
    time: float


class MirrorServer:
    """An HTTP server on 127.0.0.1 over a folder laid out like a Gutenberg mirror.

    Files are served as `http.server` serves them (`text/plain` for `.txt`, with Content-Length).
    `script(path, *replies)` makes the next requests for `path` get those replies first; `slow(path, s)`
    delays every answer for `path`. `requests` records what was asked, in order.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[Request] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._delays: dict[str, float] = {}
        self._stop = threading.Event()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def add(self, relative: str, data: bytes | str) -> Path:
        """Put a file on the mirror (str is written as UTF-8)."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def add_book(self, book_id: int, data: bytes | str, suffix: str = "-0") -> str:
        """Put a book at its mirror-layout path (`suffix` "-0", "-8" or ""); returns the URL path."""
        relative = next(p for p in gutenberg.mirror_paths(book_id) if p.endswith(f"/{book_id}{suffix}.txt"))
        self.add(relative, data)
        return "/" + relative

    def script(self, path: str, *replies: Reply) -> None:
        self._scripts.setdefault(path, []).extend(replies)

    def slow(self, path: str, seconds: float) -> None:
        self._delays[path] = seconds

    def requested(self, path: str) -> int:
        """How many requests asked for `path`."""
        return sum(request.path == path for request in self.requests)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[SimpleHTTPRequestHandler]:
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(server.root), **kwargs)

            def do_GET(self) -> None:
                server.requests.append(
                    Request(self.path, self.headers.get("User-Agent", ""), time.monotonic())
                )
                if delay := server._delays.get(self.path):
                    server._stop.wait(delay)
                pending = server._scripts.get(self.path)
                if not pending:
                    super().do_GET()
                    return
                reply = pending.pop(0)
                if reply.status == 0:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: test output should not carry access logs."""

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that time out hang up mid-answer on purpose; the broken pipe is expected."""


@pytest.fixture
def http_mirror(tmp_path_factory: pytest.TempPathFactory, fast_network: None) -> Iterator[MirrorServer]:
    """A running local mirror over an empty folder; add books with `add_book`."""
    server = MirrorServer(tmp_path_factory.mktemp("mirror"))
    server.start()
    yield server
    server.stop()


_MODERN_HEADER = """\
The Project Gutenberg eBook of {title}

This ebook is for the use of anyone anywhere in the United States and
most other parts of the world at no cost and with almost no restrictions
whatsoever. You may copy it, give it away or re-use it under the terms
of the Project Gutenberg License included with this ebook or online
at www.gutenberg.org.

Title: {title}

Author: {author}

Release date: January 1, 2020 [eBook #{book_id}]

Language: English

Credits: Produced by volunteers

*** START OF THE PROJECT GUTENBERG EBOOK {upper} ***
"""
_MODERN_FOOTER = """\
*** END OF THE PROJECT GUTENBERG EBOOK {upper} ***

Updated editions will replace the previous one\u2014the old editions will
be renamed.

START: FULL LICENSE

THE FULL PROJECT GUTENBERG LICENSE
PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK
"""
_OLD_HEADER = """\
The Project Gutenberg EBook of {title}, by {author}

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.  You may copy it, give it away or
re-use it under the terms of the Project Gutenberg License included
with this eBook or online at www.gutenberg.org

Title: {title}

Author: {author}

Release Date: June 25, 2008 [EBook #{book_id}]

Character set encoding: ISO-8859-1

*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***
"""
_OLD_FOOTER = """\
End of the Project Gutenberg EBook of {title}, by {author}

*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***

***** This file should be named {book_id}.txt or {book_id}.zip *****
"""
_SMALL_PRINT_HEADER = """\
**The Project Gutenberg Etext of {title}**
**Welcome To The World of Free Plain Vanilla Electronic Texts**
**Etexts Readable By Both Humans and By Computers, Since 1971**

*These Etexts Prepared By Hundreds of Volunteers and Donations*

**START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START**
Why is this "Small Print!" statement here? You know: lawyers.
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*
"""
_SMALL_PRINT_FOOTER = """\
End of The Project Gutenberg Etext of {title}
"""
_STYLES = {
    "modern": (_MODERN_HEADER, _MODERN_FOOTER),
    "old": (_OLD_HEADER, _OLD_FOOTER),
    "small-print": (_SMALL_PRINT_HEADER, _SMALL_PRINT_FOOTER),
}


@pytest.fixture
def gutenberg_file() -> Callable[..., str]:
    """Wrap a book body in a Project Gutenberg licence header and footer, as gutenberg.org serves them.

    Call as `gutenberg_file(body, title=..., author=..., book_id=..., style="modern" | "old" |
    "small-print")`; the body is returned between the markers, separated by blank lines.
    """

    def make(
        body: str,
        *,
        title: str = "A Test Book",
        author: str = "A. N. Author",
        book_id: int = 1,
        style: str = "modern",
    ) -> str:
        header, footer = _STYLES[style]
        fields = {"title": title, "author": author, "book_id": book_id, "upper": title.upper()}
        return header.format(**fields) + "\n\n" + body + "\n\n\n" + footer.format(**fields)

    return make


@pytest.fixture
def round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[[str, list[str]], dict]:
    """Train a recipe for a few steps on a small text through the CLI, then generate and evaluate with it."""

    def check(recipe: str, overrides: list[str]) -> dict:
        book = tmp_path / "book.txt"
        book.write_text("the dunwich horror came over the hills. " * 30, encoding="utf-8")
        tiny = [
            f"data.books=['{book}']",
            "trainer.max_epochs=1",
            "trainer.max_steps=3",
            "trainer.batch_size=16",
        ]
        tiny += ["trainer.samples=0", "trainer.accelerator='cpu'"]
        assert run(["train", recipe, *overrides, *tiny, "--run-name", "tiny", "--quiet"]) == 0
        capsys.readouterr()
        assert run(["generate", "--run", "tiny", "-p", "the hills", "-n", "20", "--seed", "1"]) == 0
        assert capsys.readouterr().out.startswith("the hills")
        assert run(["evaluate", "--run", "tiny", "--file", str(book), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert 0 < report["bits_per_char"] < 20
        return report

    return check


def checkpoint_payload(path: Path) -> dict:
    """A checkpoint as saved, read as training code reads it: plain data only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(left: Path, right: Path) -> None:
    """Two checkpoints hold the same training: step, weights, optimizer state and every scheduler's state."""
    a, b = checkpoint_payload(left), checkpoint_payload(right)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys() and state_a
    for index in state_a:
        for name, value in state_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[index][name])), (index, name)
    assert a.get(PLATEAU_KEY) == b.get(PLATEAU_KEY)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a `python -m langinterp` child process: this one's, less any rank or run of its
    own, with this checkout (installed or not) first on the path, one thread, no GPU (as the tests
    themselves see none: `cpu_unless_marked_gpu`), and `extra`."""
    env = {
        key: value for key, value in os.environ.items() if key not in (*RANK_VARIABLES, RUN_ENV, "WORLD_SIZE")
    }
    source = str(Path(langinterp.__file__).resolve().parent.parent)
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": source, "CUDA_VISIBLE_DEVICES": "", **extra}


def two_process_command(
    recipe: Path | None, audit: Path, *arguments: str, environment: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `langinterp train [RECIPE] ARGUMENTS...` with DDP on 2 CPU
    processes (gloo), as a user would start it: Lightning re-launches the command as a child process. Each
    rank records what it trained in `audit`."""
    env = child_environment(**{AUDIT_ENV: str(audit)}, **(environment or {}))
    command = [
        sys.executable, "-m", "langinterp", "train", *([str(recipe)] if recipe else []), *arguments,
        "--quiet", 'trainer.strategy="ddp"', "trainer.devices=2", 'trainer.accelerator="cpu"',
    ]  # fmt: skip
    return command, env


def train_with_two_processes(
    recipe: Path | None,
    audit: Path,
    cwd: Path,
    *arguments: str,
    environment: dict[str, str] | None = None,
    returncode: int = 0,
) -> subprocess.CompletedProcess[str]:
    """Runs `two_process_command` to its end and checks its exit code."""
    command, env = two_process_command(recipe, audit, *arguments, environment=environment)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == returncode, done.stderr[-3000:]
    return done


def word_text(path: Path, words: list[str], count: int) -> Path:
    """A text of `count` words drawn from `words` with a fixed seed: small, varied and the same every run."""
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(words), (count,), generator=generator).tolist()
    path.write_text(" ".join(words[i] for i in picks), encoding="utf-8")
    return path


# Every layer kind with n = 1..5 nodes and 1, 2, 8 or 128 segments (a polynomial has one; a continuous
# layer needs n >= 2): the cases the layer paths are checked on.
LAYER_CASES = [
    (kind, n, s)
    for kind in KINDS
    for n in range(1, 6)
    for s in ((1,) if kind == "polynomial" else (1, 2, 8, 128))
    if not (kind == "continuous" and n == 1)
]


def inputs_inside_and_outside(rows=12, inputs=3, dtype=torch.float64):
    """Layer inputs in [-1.1, 1.1]: inside the domain and a little outside, where edge pieces extrapolate."""
    torch.manual_seed(1)
    return (torch.rand(rows, inputs, dtype=dtype) * 2.2 - 1.1).requires_grad_()


def reference(layer, x):
    """The definition, one link and one sample at a time (basis.py's formulas written out)."""
    n, s, K = layer.n, layer.segments, layer.weights_per_link
    step = n - 1 if layer.kind == "continuous" else n
    nodes = [0.0] if n == 1 else [-math.cos(math.pi * m / (n - 1)) for m in range(n)]
    y = torch.zeros(x.shape[0], layer.out_features, dtype=torch.float64)
    for b in range(x.shape[0]):
        for i in range(layer.in_features):
            v = float(x[b, i])
            j = min(max(math.floor((v + 1) / 2 * s), 0), s - 1)
            t = s * (v + 1) - 2 * j - 1
            for k in range(n):
                phi = math.prod((t - nodes[m]) / (nodes[k] - nodes[m]) for m in range(n) if m != k)
                assert j * step + k < K
                y[b] += phi * layer.weight[i, j * step + k].detach().double()
    return y
