"""A least-recently-used cache bounded by bytes, not only by entry count (issue 17).

An entry count alone does not bound memory: one Compare map is ~0.2 MB, but an explanation with a
layer trace, or one of a 50-megapixel upload's intermediates, is hundreds of times that, and 256 of
them were a few GB.  Entries here are sized by :func:`nbytes` (tensors, arrays, bytes, strings and
the containers and dataclasses around them) and the oldest are evicted until the total fits.

Values are shared, not copied, between callers (Streamlit sessions): treat them as read-only.
A computation asked for by several threads at once runs once; the others wait for its result.
Written here rather than taken from a library: cachetools' ``LRUCache(getsizeof=...)`` bounds bytes
but is not thread-safe and has no per-key single flight, which the app's concurrent sessions need.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


def nbytes(obj: Any, _depth: int = 0, _seen: set[int] | None = None) -> int:
    """Approximate memory held by ``obj``: tensor/array storage plus Python object sizes (each object once)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen or _depth > 8:
        return 0
    seen.add(id(obj))
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return int(obj.untyped_storage().nbytes()) + 64 if obj.device.type == "cpu" else 64
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if hasattr(obj, "nbytes") and isinstance(getattr(obj, "nbytes", None), int):  # numpy arrays, memoryviews
        return int(obj.nbytes) + 96
    if isinstance(obj, bytes | bytearray | str):
        return sys.getsizeof(obj)
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(nbytes(k, _depth + 1, seen) + nbytes(v, _depth + 1, seen)
                                        for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return sys.getsizeof(obj) + sum(nbytes(v, _depth + 1, seen) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sys.getsizeof(obj) + sum(nbytes(getattr(obj, f.name), _depth + 1, seen)
                                        for f in dataclasses.fields(obj))
    if hasattr(obj, "size") and hasattr(obj, "mode") and hasattr(obj, "tobytes"):  # a PIL image
        w, h = obj.size
        return w * h * max(len(obj.getbands()), 1) + 200
    return sys.getsizeof(obj)


class ByteLRU:
    """Thread-safe LRU with a byte budget (and optionally an entry budget)."""

    def __init__(self, max_bytes: int, max_entries: int | None = None, sizer: Callable[[Any], int] = nbytes):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes, self.max_entries, self.sizer = int(max_bytes), max_entries, sizer
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Event] = {}
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key][0]
            return default

    def put(self, key: Hashable, value: Any, size: int | None = None) -> None:
        """Store ``value``; one larger than the whole budget is not kept (it would evict everything)."""
        size = self.sizer(value) if size is None else int(size)
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while self._data and (self._bytes > self.max_bytes
                                  or (self.max_entries is not None and len(self._data) > self.max_entries)):
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= dropped
                self.evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached value, or ``compute()`` once even when several threads ask for the same key at once."""
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    self.hits += 1
                    return self._data[key][0]
                waiting = self._inflight.get(key)
                if waiting is None:
                    self._inflight[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # another thread computes it; if it failed, try ourselves
        try:
            value = compute()
            self.put(key, value)
            return value
        finally:
            with self._lock:
                self._inflight.pop(key).set()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0
