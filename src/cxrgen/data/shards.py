"""Datasets on disk in fixed-size shards: written one shard at a time, read one item at a time.

A shard folder holds, per named field, ``<field>-<k>.npy`` files of at most ``shard_size`` rows each, and an
``index.json`` (row count, shard sizes, per-field dtype and item shape). :class:`ShardWriter` keeps at most one
shard in memory; :class:`ShardedDataset` reads an item with one seek + read of its bytes (no memory map, so the
reading process's resident memory does not grow with the number of items it has visited). Used for the MaCheX
split images and for the caches trainers write (VAE latent statistics, decoded low-resolution images).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from cxrgen.errors import InputError
from cxrgen.io import atomic_path

INDEX = "index.json"
SHARD_SIZE = 1024
MAX_OPEN = 16  # shard files a reader keeps open


class ShardWriter:
    """Write rows (``add(field=array, ...)`` with equal first axes) into a shard folder, atomically on ``close``."""

    def __init__(self, folder: str | os.PathLike, shard_size: int = SHARD_SIZE):
        if int(shard_size) < 1:
            raise InputError(f"shard_size={shard_size!r}; expected an integer >= 1")
        self.folder, self.shard_size = Path(folder), int(shard_size)
        self._atomic = atomic_path(self.folder)
        self._tmp = self._atomic.__enter__()
        self._tmp.mkdir()
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._counts: list[int] = []
        self._fields: dict[str, dict] = {}

    def add(self, **arrays: np.ndarray | torch.Tensor) -> None:
        arrays = {k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in arrays.items()}
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            raise InputError(f"shard rows of unequal length {sorted(lengths)}; expected one length for every field")
        for k, v in arrays.items():
            spec = {"dtype": v.dtype.str, "shape": list(v.shape[1:])}
            if self._fields.setdefault(k, spec) != spec:
                raise InputError(f"shard field {k!r} changed from {self._fields[k]} to {spec}; expected a fixed "
                                 "dtype and item shape")
        if self._buffer and set(arrays) != set(self._buffer):
            raise InputError(f"shard fields {sorted(arrays)}; expected {sorted(self._buffer)}")
        n = lengths.pop()
        start = 0
        while start < n:
            take = min(n - start, self.shard_size - self._buffered)
            for k, v in arrays.items():
                self._buffer.setdefault(k, []).append(v[start:start + take])
            self._buffered += take
            start += take
            if self._buffered == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        k = len(self._counts)
        for name, parts in self._buffer.items():
            np.save(self._tmp / f"{name}-{k:05d}.npy", np.concatenate(parts))
        self._counts.append(self._buffered)
        self._buffer = {name: [] for name in self._buffer}
        self._buffered = 0

    def close(self, meta: Mapping | None = None) -> Path:
        """Write the last shard and the index, then move the folder into place; returns it."""
        self._flush()
        index = {"n": int(sum(self._counts)), "shards": self._counts, "fields": self._fields, "meta": dict(meta or {})}
        (self._tmp / INDEX).write_text(json.dumps(index, indent=1))
        self._atomic.__exit__(None, None, None)
        return self.folder

    def abort(self) -> None:
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


def write_shards(folder: str | os.PathLike, batches: Iterable[Mapping[str, np.ndarray | torch.Tensor]],
                 shard_size: int = SHARD_SIZE, meta: Mapping | None = None) -> Path:
    """Write every ``{field: rows}`` batch of ``batches`` into a shard folder (atomically)."""
    writer = ShardWriter(folder, shard_size)
    try:
        for batch in batches:
            writer.add(**batch)
    except BaseException:
        writer.abort()
        raise
    return writer.close(meta)


def read_index(folder: str | os.PathLike) -> dict:
    path = Path(folder) / INDEX
    if not path.is_file():
        raise InputError(f"{path} missing; expected a shard folder written by cxrgen.data.shards")
    return json.loads(path.read_text())


class ShardedDataset(torch.utils.data.Dataset):
    """Items of a shard folder: ``ds[i]`` is the item's ``field`` array (or a dict of all fields when
    ``field`` is None). ``transform`` (optional) is applied to each item. Picklable for DataLoader workers
    (files are opened lazily in each process)."""

    def __init__(self, folder: str | os.PathLike, field: str | None = None, transform=None):
        self.folder, self.field, self.transform = Path(folder), field, transform
        self.index = read_index(folder)
        if field is not None and field not in self.index["fields"]:
            raise InputError(f"{folder} has no field {field!r}; expected one of {sorted(self.index['fields'])}")
        self._starts = np.cumsum([0, *self.index["shards"]]).tolist()
        self._files: dict[tuple[str, int], tuple] = {}

    def __len__(self) -> int:
        return int(self.index["n"])

    @property
    def meta(self) -> dict:
        return self.index.get("meta", {})

    def item_shape(self, field: str | None = None) -> tuple:
        return tuple(self.index["fields"][field or self.field]["shape"])

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def _read(self, name: str, shard: int, row: int) -> np.ndarray:
        key = (name, shard)
        if key not in self._files:
            if len(self._files) >= MAX_OPEN:  # a bounded number of open files, oldest closed first
                oldest = next(iter(self._files))
                self._files.pop(oldest)[0].close()
            fh = open(self.folder / f"{name}-{shard:05d}.npy", "rb")
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            self._files[key] = (fh, fh.tell(), dtype, shape[1:])
        fh, offset, dtype, shape = self._files[key]
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        fh.seek(offset + row * size)
        return np.frombuffer(fh.read(size), dtype=dtype).reshape(shape).copy()

    def __getitem__(self, i: int):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of a {len(self)}-item shard folder {self.folder}")
        shard = bisect.bisect_right(self._starts, i) - 1
        row = i - self._starts[shard]
        names = [self.field] if self.field is not None else list(self.index["fields"])
        item = {n: self._read(n, shard, row) for n in names}
        item = item[self.field] if self.field is not None else item
        return self.transform(item) if self.transform is not None else item

    def head(self, n: int | None = None) -> np.ndarray:
        """The first ``n`` items (all when None) stacked into one array -- for evaluations bounded by config."""
        n = len(self) if n is None else min(int(n), len(self))
        return np.stack([self[i] for i in range(n)]) if n else np.empty((0, *self.item_shape()), np.uint8)

    def close(self) -> None:
        for fh, *_ in self._files.values():
            fh.close()
        self._files = {}
