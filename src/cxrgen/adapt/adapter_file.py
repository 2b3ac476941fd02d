"""How ``adapter.json`` names the foundation an adapter was trained on, so that the adapter loads wherever it lies.

A local foundation is stored as a path relative to the adapter folder itself (``"../foundation"``), so an adapter
moved or copied together with its foundation (another machine, a DVC checkout, a renamed results folder) still
finds it; a hub id or registry name is stored as given. Folders written before this (an absolute path, or one
relative to the working directory of the run that trained them) still load while that path exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrgen.adapt.methods import ADAPTER_FILE
from cxrgen.errors import InputError


def foundation_reference(foundation, adapter_dir) -> str:
    """What ``adapter.json`` stores for ``foundation``: a local folder as a path relative to ``adapter_dir`` (the
    adapter's final location; the folder need not exist yet), anything else (hub id, registry name) unchanged."""
    local = Path(str(foundation)).expanduser()
    if not local.is_dir():
        return str(foundation)
    return Path(os.path.relpath(local.resolve(), Path(adapter_dir).expanduser().resolve())).as_posix()


def resolve_foundation(reference, adapter_dir) -> str:
    """The foundation ``adapter.json`` of ``adapter_dir`` names: a local folder (relative to the adapter folder,
    else, for older adapters, absolute or relative to the working directory) or a hub id / registry name."""
    from cxrgen.models.registry import resolve_model

    ref = str(reference)
    beside = Path(adapter_dir) / ref
    if not Path(ref).is_absolute() and beside.is_dir():
        return str(beside.resolve())
    try:
        return resolve_model(ref)
    except InputError:
        raise InputError(
            f"{Path(adapter_dir) / ADAPTER_FILE} names foundation {ref!r}, which is neither a folder relative to the "
            f"adapter ({beside}), nor an existing folder, nor a hub id or registry name; expected the foundation "
            "folder moved together with the adapter, or pass the foundation explicitly") from None
