"""What a benchmarked method is: a function of (learn, base, query, context) returning an Outcome.

Every row of every table is one such function, looked up by name in ``bench/_registry.py``.
Sweep methods (Table 2, Figure 5) take the code size in bits as a fifth argument.
"""
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


# The paper's code sizes (Table 2, Figure 5); the suite's --bits replaces them.
SWEEP_BITS = (16, 32, 64, 128)


class NotApplicable(Exception):
    """The method cannot run at this setting (e.g. ITQ with more bits than dimensions);
    the message becomes the table cell's note."""


@dataclass(frozen=True)
class Context:
    """Settings shared by all methods of one run.

    k: results returned per query (recall@k is measured for k up to this);
    quick: small-slice smoke mode (few epochs); cache_dir: where trained catalyzers are kept;
    train_minutes: time budget per catalyzer, or None for the library's epoch schedule;
    sweep_bits: the code sizes every sweep method (Table 2, Figure 5, quality) runs at.
    """

    k: int
    quick: bool
    cache_dir: Path
    train_minutes: float | None = None
    sweep_bits: tuple[int, ...] = SWEEP_BITS


@dataclass(frozen=True)
class Outcome:
    """Search results and costs of one method.

    ids: int64 (nq, k) base ids, best first; bits: code size per base vector;
    train_s / encode_s / search_s: seconds for training on learn, encoding all of base,
    searching all queries (for a cached catalyzer, train_s is the time its training took);
    note: anything a reader must know to interpret the row; code: the exact code this run
    used (a faiss factory string, a quantizer), for rows whose method name covers several
    (a sweep row is one method name at every code size).
    """

    ids: np.ndarray
    bits: int
    train_s: float
    encode_s: float
    search_s: float
    note: str = ""
    code: str = ""


Method = Callable[[np.ndarray, np.ndarray, np.ndarray, Context], Outcome]
SweepMethod = Callable[[np.ndarray, np.ndarray, np.ndarray, Context, int], Outcome]


class Stopwatch:
    """Accumulates wall-clock seconds over ``with stopwatch.running():`` blocks."""

    def __init__(self):
        self.seconds = 0.0

    @contextmanager
    def running(self):
        start = time.perf_counter()
        try:
            yield self
        finally:
            self.seconds += time.perf_counter() - start


def cached_training(cache_dir, record_name, train, save):
    """Run a seeded training step once per cache key.

    The record ``cache_dir/<record_name>.json`` holds {"sha256", "train_s", ...}: when it
    exists it is returned as is. Otherwise ``train()`` is timed, ``save(result)`` stores the
    artifact in cache_dir and returns (its sha256, more JSON-able fields for the record), and
    the record is written. Returns (record dict, train()'s result, or None when cached).
    """
    record = cache_dir / f"{record_name}.json"
    if record.is_file():
        return json.loads(record.read_text()), None
    clock = Stopwatch()
    with clock.running():
        result = train()
    cache_dir.mkdir(parents=True, exist_ok=True)
    sha, fields = save(result)
    entry = {"sha256": sha, "train_s": clock.seconds, **fields}
    record.write_text(json.dumps(entry, indent=1) + "\n")
    return entry, result
