"""Finished artefacts appear whole or not at all: write aside, fsync, rename into place.

A finished artefact (a prepared dataset, a run folder, compare's tables) is written into a temporary
sibling of its final path, in the same folder and so on the same file system, flushed to disk, and
renamed over the path in one step. A reader, or a process killed at any instant, sees the complete
old artefact or the complete new one, never a mix.

- :func:`atomic_write_bytes` / :func:`atomic_write_text`: one file, through ``.NAME.tmp-PID-TOKEN``
  and ``os.replace``.
- :func:`atomic_dir`: a whole folder. The new folder is built in ``.NAME.tmp-PID-TOKEN`` and swapped
  with the old one by ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+, ext4/xfs/btrfs/tmpfs), which is one
  atomic step; the old folder then sits in the temporary name and is deleted. Where the exchange is
  not available the old folder is first renamed to ``.NAME.old-PID-TOKEN`` and the new one renamed in;
  a process killed between those two renames leaves PATH missing and the aside present, and
  :func:`recover` puts the aside back.
- :func:`recover`: called before reading or writing PATH. It restores an orphaned ``.old`` aside when
  PATH is missing, and deletes temporaries and asides whose process is gone (the PID in the name is
  checked on this machine; a live writer's temporaries are left alone).

Stores that grow and resume (signal sets, the generation cache, compare's checkpoints) are journals,
appended and fsync-ed in place; they do not use this module's whole-artefact swap.

Two environment variables exist for the kill tests only: ``AGENTREC_TEST_SLOW_WRITES=SECONDS`` sleeps
at each step of a write (:func:`test_pause`), so a SIGKILL can land between steps, and
``AGENTREC_TEST_NO_RENAME_EXCHANGE=1`` forces the two-rename path.

This module imports nothing of agentrec but :mod:`agentrec.core.errors`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from agentrec.core.errors import UsageError

logger = logging.getLogger(__name__)

_TMP = "tmp"
_OLD = "old"
# .NAME.tmp-PID-TOKEN or .NAME.old-PID-TOKEN
_SIDE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")


# ---------------------------------------------------------------------------------------------- single files
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` holds either its old bytes or all of ``data``.

    The bytes go to a temporary sibling, are fsync-ed, and the sibling is renamed over ``path``;
    the folder is fsync-ed so the rename survives a power cut.
    """
    path = Path(path)
    temp = _side_name(path, _TMP)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


# ---------------------------------------------------------------------------------------------- whole folders
@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder aside and swap it into ``path`` when the ``with`` block ends without an error.

    Yields the temporary folder to write into. Whatever ``path`` held before (a folder, or nothing)
    is replaced as a whole; the caller decides beforehand whether replacing it is allowed (see
    :func:`foreign_entries`). On an exception the temporary folder is deleted and ``path`` is
    untouched.

    Raises:
        UsageError: ``path`` exists and is not a folder.
    """
    path = _real(Path(path))
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a folder; choose a folder for the output")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    temp = _side_name(path, _TMP)
    temp.mkdir()
    try:
        yield temp
        test_pause("before publishing")
        fsync_tree(temp)
        _publish(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _publish(temp: Path, path: Path) -> None:
    """Put the finished folder ``temp`` at ``path``, replacing what is there (see the module docstring)."""
    if not path.exists():
        os.rename(temp, path)
        fsync_dir(path.parent)
        return
    if _exchange(temp, path):  # one atomic step: path now holds the new folder, temp the old one
        fsync_dir(path.parent)
        test_pause("after the exchange")
        shutil.rmtree(temp)
        return
    aside = _side_name(path, _OLD)
    os.rename(path, aside)
    test_pause("old folder aside, new one not yet in place")
    os.rename(temp, path)
    fsync_dir(path.parent)
    test_pause("new folder in place, old one not yet deleted")
    shutil.rmtree(aside)


def recover(path: str | Path) -> None:
    """Repair what a killed :func:`atomic_dir` or :func:`atomic_write_bytes` left beside ``path``.

    If ``path`` is missing and an aside (``.NAME.old-PID-TOKEN``) of a dead process exists, the aside
    is renamed back: it is the complete old artefact. Temporaries and asides of dead processes are
    then deleted. A read-only folder is left as it is.
    """
    path = _real(Path(path))
    parent = path.parent
    try:
        entries = list(os.scandir(parent))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    mine = []
    for entry in entries:
        match = _SIDE.match(entry.name)
        if match and match["name"] == path.name and not _alive(int(match["pid"])):
            mine.append((match["kind"], entry))
    try:
        if not os.path.lexists(path):
            asides = sorted((e for kind, e in mine if kind == _OLD), key=lambda e: e.stat().st_mtime)
            if asides:
                logger.warning("restoring %s from %s (a write was killed half-way)", path, asides[-1].name)
                os.rename(asides[-1].path, path)
                fsync_dir(parent)
                mine = [(kind, e) for kind, e in mine if e.path != asides[-1].path]
        for _, entry in mine:
            logger.info("removing %s, left by a killed write", entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    except PermissionError as error:
        logger.warning("could not clean up beside %s: %s", path, error)


def foreign_entries(path: str | Path, known: set[str] | frozenset[str]) -> list[str]:
    """Names in the folder ``path`` that are not in ``known`` (sorted; empty if ``path`` is missing).

    Temporaries this module leaves behind when killed (``.NAME.tmp-PID-TOKEN``) do not count.
    """
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(name for name in os.listdir(path) if name not in known and not _SIDE.match(name))


def refuse_foreign(path: str | Path, known: set[str] | frozenset[str], *, what: str, has_force: bool = False) -> None:
    """Refuse to replace the folder ``path`` if it holds anything but ``known`` entries.

    :func:`atomic_dir` replaces a folder whole, so whatever else is in it would be deleted; a caller
    checks with this first. ``what`` names the artefact for the message ("a prepared dataset");
    ``has_force`` says the command has a ``--force`` (which does not override this check).

    Raises:
        UsageError: ``path`` is a file, or a folder with other entries (the first few are named).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file; give a folder for {what}")
    foreign = foreign_entries(path, known)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UsageError(f"--out {path} holds files that are not part of {what} ({shown}); agentrec replaces the "
                         f"whole folder, so it will not write there{' (not even with --force)' if has_force else ''}. "
                         "Choose a new or empty folder")


# ---------------------------------------------------------------------------------------------- plumbing
def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new names, renames) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and folder under ``path`` (files first, then their folders)."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def test_pause(step: str) -> None:
    """Sleep ``AGENTREC_TEST_SLOW_WRITES`` seconds (kill tests only; 0 and unset do nothing)."""
    seconds = float(os.environ.get("AGENTREC_TEST_SLOW_WRITES") or 0)
    if seconds > 0:
        logger.warning("slow writes: %s", step)  # a warning, so a test sees it at any verbosity
        time.sleep(seconds)


test_pause.__test__ = False  # not a pytest test, whatever its name


def _side_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _real(path: Path) -> Path:
    """``path`` made absolute (so ``.`` has a name and a parent), following a symlink at ``path`` itself
    so that the swap replaces the link's target, not the link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else Path(os.path.abspath(path))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with ``renameat2(RENAME_EXCHANGE)``; False where that is unavailable."""
    global _renameat2
    if os.environ.get("AGENTREC_TEST_NO_RENAME_EXCHANGE"):
        return False
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _renameat2 = getattr(libc, "renameat2", False)
        except OSError:
            _renameat2 = False
        if _renameat2:
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2.restype = ctypes.c_int
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # file system or kernel without RENAME_EXCHANGE: the two-rename path
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")
