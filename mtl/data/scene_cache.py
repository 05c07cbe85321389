"""On-disk store of rendered samples, reused by prefix and rendered once under a lock.

One directory per cache key: everything that decides a sample except how many samples are
asked for (sample i never depends on the length). Sample i lives in chunk i // per_chunk, a
structured `.npy` named ``chunk<c>-n<count>-<crc32>.npy`` that holds the first `count`
samples of that chunk (a prefix) and whose data bytes have that CRC-32. So:
- a shorter request reads a prefix of what is there, without rendering;
- a longer one renders only the missing tail: a partial last chunk is rewritten as the old
  samples plus the new ones, further chunks are new files;
- every file is written under a temporary name and renamed into place, so a killed render
  never leaves a file a reader trusts, and a reader checks each file's dtype, shape, size and
  CRC before use: a truncated or damaged chunk counts as missing and is rendered again;
- writers hold an exclusive ``fcntl.flock`` on the key's ``.lock``: two processes starting
  cold render once (the second waits, then reads). Reading a complete cache takes no lock,
  so a read-only shared cache works.
Files are memory-mapped read-only (many processes share one copy through the page cache) and
loaded with ``allow_pickle=False``: nothing read from the cache is ever unpickled.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_CHUNK_NAME = re.compile(r"^chunk(\d{6})-n(\d+)-([0-9a-f]{8})\.npy$")
_TMP_PREFIX = ".tmp-"

RenderFn = Callable[[int, int], np.ndarray]
"""Renders samples [lo, hi) as records of the store's dtype."""
ProgressFn = Callable[[int, int], None]
"""Called with (samples rendered so far, samples to render) after each rendered batch."""


def _checksum(arr: np.ndarray) -> int:
    """CRC-32 of the data bytes of a contiguous 1-D record array (about 2 GB/s)."""
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8))


class ChunkStore:
    """The samples of one cache key at `path`, as chunks of up to `per_chunk` records.

    `dtype` is the structured record of one sample; `batch` how many samples one call of the
    render function gets; `meta` a description of the key written to ``meta.json`` (for
    people: nothing is decided by it).
    """

    def __init__(self, path: Path, dtype: np.dtype, per_chunk: int, batch: int,
                 meta: dict) -> None:
        if per_chunk < 1 or batch < 1:
            raise ValueError(f"per_chunk and batch must be >= 1, got {per_chunk}, {batch}")
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.per_chunk, self.batch, self.meta = per_chunk, batch, meta

    def read(self, length: int) -> list[np.ndarray] | None:
        """Verified read-only maps of the chunks holding samples [0, length) (the last one
        may hold more), or None when one is missing or bad. Takes no lock."""
        files = self._listing()
        out = []
        for c in range(self._n_chunks(length)):
            need = self._need(c, length)
            found = self._first_good([e for e in files.get(c, []) if e[0] >= need])
            if found is None:
                return None
            out.append(found)
        return out

    def ensure(self, length: int, render: RenderFn,
               progress: ProgressFn | None = None) -> list[np.ndarray]:
        """`read(length)`, else render what is missing under the key's lock, then read."""
        arrays = self.read(length)
        if arrays is not None:
            return arrays
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            return self._fill(length, render, progress)

    def _n_chunks(self, length: int) -> int:
        return -(-length // self.per_chunk)

    def _need(self, chunk: int, length: int) -> int:
        return min(self.per_chunk, length - chunk * self.per_chunk)

    def _listing(self) -> dict[int, list[tuple[int, int, Path]]]:
        """chunk -> its files as (count, crc, path), the longest first."""
        files: dict[int, list[tuple[int, int, Path]]] = {}
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return files
        for name in names:
            m = _CHUNK_NAME.match(name)
            if m:
                files.setdefault(int(m[1]), []).append((int(m[2]), int(m[3], 16),
                                                        self.path / name))
        for entries in files.values():
            entries.sort(key=lambda e: -e[0])
        return files

    def _first_good(self, entries: list[tuple[int, int, Path]]) -> np.ndarray | None:
        for count, crc, path in entries:
            arr = self._open(path, count, crc)
            if arr is not None:
                return arr
        return None

    def _open(self, path: Path, count: int, crc: int) -> np.ndarray | None:
        """The file's records if its dtype, shape, size and CRC match its name, else None."""
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            size = path.stat().st_size
        except (OSError, ValueError):
            return None
        if (not isinstance(arr, np.memmap) or arr.dtype != self.dtype or arr.shape != (count,)
                or size != arr.offset + arr.nbytes):
            return None
        data = arr.view(np.ndarray)       # plain views: indexing a np.memmap runs Python hooks
        return data if _checksum(data) == crc else None

    def _fill(self, length: int, render: RenderFn, progress: ProgressFn | None
              ) -> list[np.ndarray]:
        """Under the lock: keep every good chunk prefix, render only what is missing."""
        for name in os.listdir(self.path):            # left by a killed writer
            if name.startswith(_TMP_PREFIX):
                (self.path / name).unlink(missing_ok=True)
        self._write_meta()
        files = self._listing()
        plan = []
        for c in range(self._n_chunks(length)):
            kept = None
            for count, crc, path in files.get(c, []):
                kept = self._open(path, count, crc)
                if kept is not None:
                    break
                path.unlink(missing_ok=True)          # truncated or damaged: render it again
            plan.append((c, kept, self._need(c, length)))
        total = sum(need - (0 if kept is None else len(kept)) for _, kept, need in plan
                    if kept is None or len(kept) < need)
        done, out = 0, []
        if progress is not None and total:
            progress(0, total)
        for c, kept, need in plan:
            if kept is not None and len(kept) >= need:
                out.append(kept)
                continue
            arr, done = self._write_chunk(c, kept, need, render, done, total, progress)
            out.append(arr)
        return out

    def _write_chunk(self, c: int, kept: np.ndarray | None, need: int, render: RenderFn,
                     done: int, total: int, progress: ProgressFn | None
                     ) -> tuple[np.ndarray, int]:
        """Write chunk c with `need` samples (the `kept` prefix copied, the rest rendered)
        under a temporary name, rename it into place, drop the chunk's older files."""
        have = 0 if kept is None else len(kept)
        start = c * self.per_chunk
        tmp = self.path / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.npy"
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(need,))
            if have:
                out[:have] = kept
            for lo in range(have, need, self.batch):
                hi = min(need, lo + self.batch)
                out[lo:hi] = render(start + lo, start + hi)
                done += hi - lo
                if progress is not None:
                    progress(done, total)
            out.flush()
            crc = _checksum(out.view(np.ndarray))
            del out
            final = self.path / f"chunk{c:06d}-n{need}-{crc:08x}.npy"
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        for _, _, path in self._listing().get(c, []):
            if path != final:
                path.unlink(missing_ok=True)          # readers that mapped it keep their copy
        arr = self._open(final, need, crc)
        if arr is None:
            raise RuntimeError(f"scene cache chunk {final} unreadable right after writing")
        return arr, done

    def _write_meta(self) -> None:
        path = self.path / "meta.json"
        text = json.dumps(self.meta, indent=1, sort_keys=True)
        try:
            if path.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        tmp = self.path / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.json"
        tmp.write_text(text)
        os.replace(tmp, path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock of this key across processes (released when the holder dies)."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"scene cache {self.path.name}: waiting for another process to render it",
                      file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)                              # closing the descriptor unlocks
