import json
import platform
import subprocess
import sys

import pytest

from se_plugins import steady_heap

# Run in a fresh interpreter: mallopt lasts for the rest of the process, which must not be the test process.
# A step allocates, fills and frees a 64 MiB tensor. glibc serves a block that large with mmap and unmaps it when
# it is freed (it is above the largest mmap threshold, 32 MiB), so as-is every step maps fresh pages: at least one
# fault per 2 MiB (a huge page) of it. With the steady heap the block comes from the heap and stays there when it
# is freed, so after a warm-up step the next steps reuse its pages.
_SCRIPT = """
import json, sys, torch
from se_plugins import benchmark, steady_heap
set_to = steady_heap.steady_heap() if sys.argv[1] == "steady" else None
def step():
    torch.empty(2**24).fill_(1.0)
for _ in range(3):
    step()
faults = sorted(benchmark._timed(step, 1, torch.device("cpu"))[2] for _ in range(5))
print(json.dumps({"set_to": set_to, "median_faults": faults[2]}))
"""
FEWEST_FAULTS_OF_A_FRESH_BUFFER = 2**26 // 2**21


def _run(heap: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, heap], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_steady_heap_stops_the_steps_from_faulting():
    as_is, steady = _run("as-is"), _run("steady")
    assert as_is["set_to"] is None and as_is["median_faults"] >= FEWEST_FAULTS_OF_A_FRESH_BUFFER
    assert steady["set_to"] == steady_heap.DESCRIPTION
    assert steady["median_faults"] < FEWEST_FAULTS_OF_A_FRESH_BUFFER


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert steady_heap.steady_heap() is None
