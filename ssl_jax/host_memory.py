"""Transparent huge pages for the host's large buffers: entry points restart once with glibc's
`glibc.malloc.hugetlb=1` tunable.

Why: XLA:CPU takes every train step's temporary buffers from malloc (two of ~100 MB for the main
job's SimCLR step), and glibc serves allocations that large from fresh memory maps that it
unmaps when they are freed, at the end of the step. The kernel then faults every 4 KiB page in
again, zero-filled, on the next step: 24,600 page faults and ~50 ms of system time per step for
the main job's step, 116,000 with the CIFAR stem. With the tunable, glibc asks the kernel for
transparent huge pages on those maps (2 MiB pages: 512x fewer faults); the main job's step
alone ran 30-50% faster on the project's 2-core CPU (docs/BENCHMARKS.md, "Outside the
convolution kernels").

glibc reads its tunables only when a process starts, so `restart_with_huge_pages()` re-executes
the interpreter with the same arguments and the tunable added to GLIBC_TUNABLES. Entry points
call it first thing, as `restart_with_huge_pages(__name__)`, before anything heavy is imported;
it acts only in the script that was run (`__main__`), never in a module a test imports. It
does nothing when the tunable is already set (so it restarts at most once), off Linux/glibc,
when the kernel's transparent huge pages are off, or when SSL_JAX_HUGE_PAGES=0 (for debuggers
and profilers that must stay attached to the first process). glibc older than 2.35 ignores the
tunable: one restart, no effect.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "SSL_JAX_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages_available(setting_path: str = THP_SETTING) -> bool:
    """Whether the kernel grants transparent huge pages to a process that asks (madvise):
    its setting is `[always]` or `[madvise]`, not `[never]` or absent."""
    try:
        with open(setting_path) as f:
            setting = f.read()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def tunables_with_huge_pages(environ: dict, libc: str, thp_available: bool) -> str | None:
    """The GLIBC_TUNABLES value to restart with, or None when no restart is needed or wanted."""
    current = environ.get("GLIBC_TUNABLES", "")
    if (libc != "glibc" or not thp_available or environ.get(OPT_OUT) == "0"
            or "glibc.malloc.hugetlb" in current):
        return None
    return f"{current}:{TUNABLE}" if current else TUNABLE


def restart_with_huge_pages(caller: str) -> None:
    """Re-execute this process with TUNABLE in GLIBC_TUNABLES if `caller` (the calling module's
    __name__) is "__main__", unless not needed (module docstring)."""
    if caller != "__main__" or sys.platform != "linux" or not sys.executable:
        return
    tunables = tunables_with_huge_pages(os.environ, platform.libc_ver()[0],
                                        transparent_huge_pages_available())
    if tunables is None:
        return
    os.environ["GLIBC_TUNABLES"] = tunables
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps the interpreter's own options and `-m module`, which sys.argv loses.
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
