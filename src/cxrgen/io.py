"""Atomic file output: a reader never sees a half-written file, a killed writer leaves nothing behind."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings of ``path`` left by writers on this host that died without cleaning up
    (SIGKILL, out of memory, power loss: no ``finally`` ran); a live writer's are kept. Returns what was deleted."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_HOST)}-(\d+)\..*\.tmp$")
    removed = []
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(sibling.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    Works for files and directories (e.g. ``save_pretrained`` folders).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"atomic write of {path} produced nothing")
        if path.is_dir() and not path.is_symlink():
            # move the old folder aside in one rename (deleted with tmp below), never delete it in place:
            # a kill during an in-place rmtree left a half-deleted folder (e.g. a checkpoint's state.pt
            # without its weights); now a kill leaves the old folder, the new one, or neither
            os.replace(path, tmp / f"{path.name}.old")
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(frame, path: str | os.PathLike, **kwargs) -> None:
    """Write a pandas DataFrame as CSV atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
