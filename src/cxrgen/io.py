"""Atomic file output: a reader never sees a half-written file, a killed writer leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    Works for files and directories (e.g. ``save_pretrained`` folders).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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
