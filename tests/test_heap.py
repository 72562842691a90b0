"""langinterp.heap: glibc keeps freed memory once asked, the CLI asks before any command, and
benchmarks/heap.py compares the two settings in fresh processes."""

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_generate import cli

from langinterp import heap

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 16 << 20  # above glibc's default mapping threshold, below the one keep_freed_memory sets


def glibc() -> bool:
    name = ctypes.util.find_library("c")
    return name is not None and hasattr(ctypes.CDLL(name), "gnu_get_libc_version")


needs_glibc = pytest.mark.skipif(not glibc(), reason="the settings are glibc's")

# In a fresh process (the settings are the whole process's): one block allocated, written and freed, and
# where the heap's end (sbrk(0)) stood around it. A block below the heap's end came from the heap (blocks
# mapped by themselves lie far above it).
PROBE = f"""
import ctypes, ctypes.util, json, sys
from langinterp.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc({BLOCK})
ctypes.memset(block, 1, {BLOCK})
grown = libc.sbrk(0)
libc.free(block)
print(json.dumps({{"kept": kept, "in_heap": block < grown, "returned": grown - libc.sbrk(0)}}))
"""


def probe(setting: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@needs_glibc
def test_by_default_a_freed_block_goes_back_to_the_os():
    result = probe("default")
    # Either mapped by itself (and unmapped when freed) or taken from the heap's end and trimmed off again.
    assert not result["in_heap"] or result["returned"] >= BLOCK


@needs_glibc
def test_kept_memory_comes_from_the_heap_and_stays_there_when_freed():
    result = probe("kept")
    assert result["kept"] is True
    assert result["in_heap"]
    assert result["returned"] <= 0


def test_every_cli_command_keeps_freed_memory_first(capsys):
    heap.keep_freed_memory.cache_clear()
    code, _, _ = cli(capsys, "runs")
    assert code == 0
    assert heap.keep_freed_memory.cache_info().currsize == 1


@needs_glibc
def test_heap_benchmark_compares_both_settings_in_fresh_processes(tmp_path):
    out = tmp_path / "heap.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "heap.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.read_text())["rows"]
    assert {row["setting"] for row in rows} == {"default", "kept"}
    assert {row["case"] for row in rows} == {"input codes", "input real", "hidden"}
    assert all(row["segments"] == 128 and row["process"] == 0 for row in rows)
    assert all(row["ours_ms"] > 0 and row["linear_ms"] > 0 and row["faults_per_turn"] >= 0 for row in rows)
