"""The last few results of a costly, pure computation, kept for the life of the process, by a key
that names the content of its inputs.

A process that scans batch after batch against the same trusted data (a served deployment, a
landing pass, ``poisonguard demo``, the test suite) would otherwise redo, per batch, what depends
on the trusted data alone: loading and verifying the fitted detectors (~2 s for a 19 MB entry),
validating the holdout against the suite (~1 s), scoring the holdout (~0.8 s).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


def content_key(parts: Any) -> str:
    """sha256 of ``parts`` as canonical JSON: equal content, equal key (the fit cache's file
    names, the memo's keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ProcessMemo:
    """``memo.get_or_compute(key, compute)``: the value kept for ``key``, else ``compute()``, kept
    (the ``size`` most recently used). Two threads asking for one new key may both compute it;
    the results are equal, as the computation is pure."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        found = self.get(key)
        if found is not None:
            return found
        value = compute()
        self.put(key, value)
        return value
