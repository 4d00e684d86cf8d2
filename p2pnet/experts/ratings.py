"""The coordinator's durable queue of signed rating records.

Each record is a signed ``wire.Rating`` envelope, stored in LMDB under
``<data_dir>/ratings`` before the query's answer is returned. The ledger
submits pending records and removes them once they are committed."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import lmdb

_KEY = struct.Struct(">Q")


class RatingQueue:
    def __init__(self, path: Path, max_records: int = 100_000, map_size: int = 256 << 20) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        self._env = lmdb.open(str(path), map_size=map_size, max_dbs=2, subdir=True)
        self._pending = self._env.open_db(b"pending")
        with self._env.begin() as txn:
            cur = txn.cursor(self._pending)
            self._next = _KEY.unpack(cur.key())[0] + 1 if cur.last() else 1
            self._count = txn.stat(self._pending)["entries"]

    def put(self, envelope: bytes) -> int:
        """Store one record durably; returns its key. Drops the oldest past the bound."""
        key = self._next
        with self._env.begin(write=True) as txn:
            txn.put(_KEY.pack(key), envelope, db=self._pending)
            self._count += 1
            if self._count > self.max_records:
                cur = txn.cursor(self._pending)
                if cur.first():
                    cur.delete()
                    self._count -= 1
        self._next += 1
        return key

    def pending(self, limit: int = 1000) -> Iterator[tuple[int, bytes]]:
        with self._env.begin() as txn:
            for n, (k, v) in enumerate(txn.cursor(self._pending)):
                if n >= limit:
                    break
                yield _KEY.unpack(k)[0], bytes(v)

    def remove(self, keys) -> None:
        with self._env.begin(write=True) as txn:
            for key in keys:
                if txn.delete(_KEY.pack(key), db=self._pending):
                    self._count -= 1

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self._env.close()
