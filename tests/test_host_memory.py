"""ssl_jax.host_memory: when an entry point restarts with glibc's huge-page tunable, that the
restart keeps the command line, and that the tunable does cut the page faults of a large
buffer (the reason for it)."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from ssl_jax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("environ,libc,thp,expected", [
    ({}, "glibc", True, "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc", True,
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),       # the user's tunables are kept
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "glibc", True, None),  # the user decided
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "glibc", True, None),  # already restarted
    ({"SSL_JAX_HUGE_PAGES": "0"}, "glibc", True, None),        # opted out
    ({}, "glibc", False, None),                                # kernel THP off
    ({}, "", True, None),                                      # not glibc (musl, macOS)
])
def test_tunables_with_huge_pages(environ, libc, thp, expected):
    assert host_memory.tunables_with_huge_pages(environ, libc, thp) == expected


@pytest.mark.parametrize("setting,available", [
    ("always [madvise] never\n", True),
    ("[always] madvise never\n", True),
    ("always madvise [never]\n", False),
    (None, False),  # no such file: not Linux, or a kernel without THP
])
def test_transparent_huge_pages_available(tmp_path, setting, available):
    path = tmp_path / "enabled"
    if setting is not None:
        path.write_text(setting)
    assert host_memory.transparent_huge_pages_available(str(path)) == available


def _run_script(tmp_path, body: str, env_extra: dict, *args: str) -> list[str]:
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
    env.update(env_extra, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return proc.stdout.splitlines()


RESTARTING_ENTRY = """
    import json, os, sys
    print("started", os.getpid(), flush=True)
    from ssl_jax import host_memory
    host_memory.restart_with_huge_pages("some.module")  # imported, not run: never restarts
    host_memory.restart_with_huge_pages(__name__)
    print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "argv": sys.argv[1:]}))
"""


@pytest.mark.parametrize("opt_out", [False, True])
def test_entry_point_restarts_once_with_its_arguments(tmp_path, opt_out):
    lines = _run_script(tmp_path, RESTARTING_ENTRY,
                        {host_memory.OPT_OUT: "0"} if opt_out else {}, "--flag", "a b")
    restarts = (not opt_out and sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
                and host_memory.transparent_huge_pages_available())
    starts = [line for line in lines if line.startswith("started")]
    assert len(starts) == (2 if restarts else 1), lines
    assert len(set(starts)) == 1  # exec keeps the process (and its pid)
    result = json.loads(lines[-1])
    assert result["argv"] == ["--flag", "a b"]
    assert result["tunables"] == (host_memory.TUNABLE if restarts else None)


FAULTING_ENTRY = """
    import ctypes, json, resource, sys, threading
    from ssl_jax import host_memory
    if sys.argv[1] == "huge":
        host_memory.restart_with_huge_pages(__name__)
    libc = ctypes.CDLL(None)  # glibc's malloc itself (numpy asks for huge pages on its own)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    def touch():  # in a thread, as XLA's executor threads allocate a step's buffers
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            buffer = libc.malloc(96 << 20)  # 96 MiB, filled, freed
            ctypes.memset(buffer, 1, 96 << 20)
            libc.free(buffer)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    thread = threading.Thread(target=touch)
    thread.start()
    thread.join()
    print(json.dumps(faults))
"""


@pytest.mark.skipif(not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
                         and host_memory.transparent_huge_pages_available()),
                    reason="needs Linux, glibc and transparent huge pages (madvise or always)")
def test_huge_pages_cut_the_page_faults_of_a_large_buffer(tmp_path):
    """A freed 96 MiB buffer is unmapped, so every allocation faults its pages in again: 24,576
    faults of 4 KiB each time without the tunable, a few dozen 2 MiB ones with it."""
    plain = json.loads(_run_script(tmp_path, FAULTING_ENTRY, {}, "plain")[-1])
    huge = json.loads(_run_script(tmp_path, FAULTING_ENTRY, {}, "huge")[-1])
    assert min(plain) > 20_000, plain
    assert max(huge) < min(plain) / 8, (huge, plain)
