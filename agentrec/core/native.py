"""The one piece of C in agentrec: the loops of full-catalogue ranking (``_scan.c``), built on first use.

In bf16 the matrix product runs at several hundred GFLOP/s, so numpy's passes over its output (compare,
find the candidates, count) took as long as the product itself, and gathering the band's vectors to score
them in float64 cost about as much again at a large catalogue. ``_scan.c`` does the first in one pass over
each block of the product (``scan_bf16``, ``scan_f32``) and the second in one loop (``exact_pairs``). It is
compiled once per machine with the C compiler that is there (``$CC``, else ``cc``; ``-O3 -march=native``)
into ``$AGENTREC_CACHE/native/``, named by a hash of the source, the flags, the compiler's version and the
CPU's flags, so a cache shared between machines never loads code built for another CPU. Without a compiler,
or with ``AGENTREC_NATIVE=0``, these functions return ``None`` and ranking uses its numpy path: the same
ranks, more slowly (a warning says so once).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from agentrec.core.assets import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_scan.c")
FLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120


def enabled() -> bool:
    """False when ``AGENTREC_NATIVE=0``: the numpy path only."""
    return os.environ.get("AGENTREC_NATIVE", "1").strip() not in ("0", "false", "no", "off")


def scan_bf16():
    """The ``scan_bf16`` C function (see ``_scan.c``), or None where it cannot be built or is turned off."""
    library = _load() if enabled() else None
    return None if library is None else library.scan_bf16


def scan_f32():
    """The ``scan_f32`` C function (see ``_scan.c``), or None where it cannot be built or is turned off."""
    library = _load() if enabled() else None
    return None if library is None else library.scan_f32


def exact_pairs():
    """The ``exact_pairs`` C function (see ``_scan.c``), or None where it cannot be built or is turned off."""
    library = _load() if enabled() else None
    return None if library is None else library.exact_pairs


@functools.cache
def _load():
    try:
        library = ctypes.CDLL(str(_built()))
    except (OSError, subprocess.SubprocessError) as error:
        message = str(error).strip()
        log.warning("full ranking's C loops could not be compiled (%s); ranking uses numpy, with the same ranks "
                    "but slower. Install a C compiler (gcc or clang), or set AGENTREC_NATIVE=0 to silence this.",
                    message.splitlines()[-1] if message else type(error).__name__)
        return None
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    library.scan_bf16.restype = integer
    library.scan_bf16.argtypes = [pointer, integer, integer, pointer, integer, integer, pointer, pointer, integer,
                                  pointer, pointer, pointer, pointer, integer]
    library.scan_f32.restype = integer
    library.scan_f32.argtypes = library.scan_bf16.argtypes
    library.exact_pairs.restype = None
    library.exact_pairs.argtypes = [pointer, integer, pointer, integer, pointer, pointer, integer, pointer]
    return library


def _built() -> Path:
    """The compiled library for this source, compiler and CPU; built (atomically) when missing."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise OSError("no C compiler found (cc, gcc, clang)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(),
                                        platform.machine().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    target = cache_dir() / "native" / f"scan-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        built = Path(work) / target.name
        result = subprocess.run([compiler, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True,
                                timeout=COMPILE_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise OSError(f"{Path(compiler).name} failed: {(result.stderr or result.stdout).strip()[-500:]}")
        os.replace(built, target)  # another process building the same file at once is harmless
    log.info("compiled full ranking's bf16 scan into %s", target)
    return target


def _cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` code runs only where they match)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()
