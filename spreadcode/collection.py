"""Collections: codes of several parts (opened .spc files, the shards of collection
directories (`spreadcode.collection_dir`), or codes held in memory by an
`spreadcode.index.Index`) searched as one.

Every part holds codes of the same quantizer made by the same catalyzer. Part i's code j has
the global id ``part.ids[j]`` when the part stores ids, else ``offset_i + j`` (offset = codes in
earlier parts). Searches scan every part on its own (`part_knn`, `part_range`: independent
tasks, run in this process or on Dask workers by `spreadcode.search`) and merge the per-part
results exactly, ties to the lower id. No torch here: the catalyzer is applied by the caller
(`spreadcode.search`).
"""
from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from . import collection_dir, container
from .errors import SpreadcodeError
from .quantizer import describe_quantizer, quantizer_from_spec

# k above this is refused (it is also the largest .ivecs row); below, k is capped at the
# collection size, so results never hold padding.
MAX_K = 2**31 - 1
# Serialises `Collection.cached` computations (decoding every code: one at a time is as fast
# on a machine's cores, and holds one result instead of two).
_CACHE_LOCK = threading.Lock()
# `Collection.decoded_at` hands its decoder DECODE_MIN_ROWS to DECODE_CHUNK_ROWS codes per call:
# torch's CPU kernels give a row other floats in batches of under 16 rows than in larger ones
# (measured on a residual model's decoder: batches of 1-5 rows differ, 16 to 4,096 agree),
# and the decoders split larger calls into batches of 4,096 (`ResidualCatalyzer.decode`) or
# more (`spreadcode.decoders.DECODE_BATCH`), whose last one could be that small.
DECODE_MIN_ROWS = 32
DECODE_CHUNK_ROWS = 4096


def check_k(value, name="k"):
    """``value`` as an int in 1..MAX_K (bools refused); SpreadcodeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 1 <= value <= MAX_K:
        raise SpreadcodeError(f"{name} must be an integer from 1 to {MAX_K}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class MemoryPart:
    """Codes held in memory, with the fields of a `container.SpcFile` a collection reads:
    ``codes_bytes`` uint8 (n, code_bytes) as stored, ``ids`` int64 (n,) or None, ``path``
    (a name for messages)."""

    codes_bytes: np.ndarray
    ids: np.ndarray | None = None
    path: str = "in-memory index"

    @property
    def count(self):
        """Number of codes."""
        return int(self.codes_bytes.shape[0])


@dataclass(frozen=True)
class Collection:
    """Parts searched as one collection: ``parts`` (`container.SpcFile` or `MemoryPart`:
    ``.path``, ``.count``, ``.codes_bytes``, ``.ids``), their shared ``quantizer`` and
    ``catalyzer_sha256`` (hex str or None); ``name`` for messages (default: the parts'
    paths); ``decode_memory``: the bytes of decoded codes that searches may keep for later
    searches (`spreadcode.search.decode_memory`; None: the defaults)."""

    parts: tuple
    quantizer: object
    catalyzer_sha256: str | None
    name: str | None = None
    decode_memory: int | None = None
    _lookup: dict = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def offsets(self):
        """int64 (parts + 1,): codes before each part; the last entry is the total."""
        return np.cumsum([0] + [part.count for part in self.parts], dtype=np.int64)

    @property
    def count(self):
        """Number of codes in the collection."""
        return int(self.offsets[-1])

    @property
    def where(self):
        """The collection's name (else its parts' names), for messages."""
        return self.name or ", ".join(str(part.path) for part in self.parts) \
            or "empty collection"

    def codes(self, index):
        """The codes of part ``index`` in the quantizer's layout, validated (`part_codes`)."""
        return part_codes(self.quantizer, self.parts[index])

    def global_ids(self, index, positions):
        """Positions int64 (...) of codes in part ``index`` -> their ids int64 (...)."""
        return part_ids(self.parts[index], self.offsets[index], positions)

    def all_ids(self):
        """int64 (count,): the id of every code, in position order."""
        return np.concatenate([np.zeros(0, np.int64)] + [
            self.global_ids(index, np.arange(part.count, dtype=np.int64))
            for index, part in enumerate(self.parts)]).astype(np.int64, copy=False)

    def clamp_k(self, k, name="k"):
        """``k`` checked by `check_k`, capped at the number of codes; SpreadcodeError when the
        collection holds none (a k-NN search would have nothing to return)."""
        k = check_k(k, name)
        if self.count == 0:
            raise SpreadcodeError(f"{self.where}: the collection holds no codes, so a k-NN "
                                  "search has nothing to return")
        return min(k, self.count)

    def _id_order(self):
        """(order, sorted ids) of every code's id, or None when ids are positions; ids must
        be unique."""
        if "order" not in self._lookup:
            if all(part.ids is None for part in self.parts):
                self._lookup["order"] = None
            else:
                ids = self.all_ids()
                order = np.argsort(ids, kind="stable")
                if np.any(np.diff(ids[order]) == 0):
                    raise SpreadcodeError(f"{self.where}: ids are not unique across the "
                                          "collection; decoding by id needs unique ids")
                self._lookup["order"] = (order, ids[order])
        return self._lookup["order"]

    def positions(self, ids, check=False):
        """Global ids int64 (m,) -> positions int64 (m,) in the parts' concatenation. With
        ``check``, ids that name no code are a SpreadcodeError (else they must be valid)."""
        ids = np.asarray(ids, dtype=np.int64)
        lookup = self._id_order()
        if lookup is None:
            positions = ids
            known = (ids >= 0) & (ids < self.count)
        else:
            order, sorted_ids = lookup
            slots = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
            known = sorted_ids[slots] == ids if len(sorted_ids) else np.zeros(ids.shape, bool)
            positions = order[slots] if len(sorted_ids) else ids
        if check and not known.all():
            raise SpreadcodeError(f"{self.where}: no code has the id "
                                  f"{int(ids[np.argmin(known)])}")
        return positions

    def codes_at(self, positions):
        """Positions int64 (m,) -> codes (m, ...) in the quantizer's layout."""
        file_of = np.searchsorted(self.offsets, positions, side="right") - 1
        raw = np.empty((len(positions), self.quantizer.code_bytes), dtype=np.uint8)
        for index, part in enumerate(self.parts):
            here = file_of == index
            raw[here] = part.codes_bytes[positions[here] - self.offsets[index]]
        return self.quantizer.codes_from_bytes(raw)

    def codes_by_id(self, ids, check=False):
        """Global ids int64 (m,) -> codes (m, ...) in the quantizer's layout (see `positions`)."""
        return self.codes_at(self.positions(ids, check))

    def cached(self, key, compute):
        """``compute()``, computed once and held by this collection (whose codes never
        change: `spreadcode.index.Index.add` makes a new one) while ``key`` is the last key
        asked for: repeated searches reuse what they derive from every code (the decoded
        codes), and at most one such result is held. Thread-safe; a ``compute`` that raises
        leaves nothing held."""
        with _CACHE_LOCK:
            held = self._lookup.get("cached")
            if held is None or held[0] != key:
                self._lookup.pop("cached", None)
                held = (key, compute())
                self._lookup["cached"] = held
            return held[1]

    def decoded_at(self, decoder, positions, keep_rows=None):
        """``decoder``'s output (`.decode(codes)`, `.d_in`, `.sha256`) for the codes at unique
        ``positions`` int64 (m,): float32 (m, d_in).

        Each code among the first ``keep_rows`` positions (None: all) is decoded once and
        kept by the collection (whose codes never change) for later calls with the same
        decoder: re-ranking decodes only the candidates that no earlier search of this
        collection decoded, so many searches decode each code at most once, and a search
        never decodes codes that no query asks for. The caller bounds the memory (keep_rows
        × d_in floats; scattered candidates touch most pages of it long before every code
        is decoded). Codes beyond ``keep_rows`` are decoded on every call. The decoder gets
        DECODE_MIN_ROWS (padded with repeats) to DECODE_CHUNK_ROWS codes per call: a torch
        model gives a row the same floats in any such batch, so kept rows equal freshly
        decoded ones and results never depend on earlier searches or on ``keep_rows``.
        Thread-safe; one collection's calls decode the codes they keep one at a time."""
        positions = np.asarray(positions, dtype=np.int64)
        size = self.count if keep_rows is None else min(self.count, keep_rows)
        key = (getattr(decoder, "kind", None), decoder.sha256, size)
        with self._lookup.setdefault("decoded_at lock", threading.Lock()):
            kept = self._lookup.get("decoded_at")
            if kept is None or kept[0] != key:
                kept = (key, np.empty((size, decoder.d_in), dtype=np.float32),
                        np.zeros(size, dtype=bool))
                self._lookup["decoded_at"] = kept
            _, rows, done = kept
            inside = positions < size
            held = positions[inside]
            missing = held[~done[held]]
            rows[missing] = self._decoded(decoder, missing)
            done[missing] = True
            out = np.empty((len(positions), decoder.d_in), dtype=np.float32)
            out[inside] = rows[held]
        out[~inside] = self._decoded(decoder, positions[~inside])
        return out

    def _decoded(self, decoder, positions):
        """The codes at ``positions`` int64 (m,) decoded in calls of DECODE_MIN_ROWS to
        DECODE_CHUNK_ROWS codes (`decoded_at`): float32 (m, d_in)."""
        out = np.empty((len(positions), decoder.d_in), dtype=np.float32)
        for start in range(0, len(positions), DECODE_CHUNK_ROWS):
            chunk = positions[start:start + DECODE_CHUNK_ROWS]
            padded = np.resize(chunk, max(len(chunk), DECODE_MIN_ROWS))
            out[start:start + len(chunk)] = decoder.decode(self.codes_at(padded))[:len(chunk)]
        return out


def part_codes(quantizer, part):
    """The codes of ``part`` (`MemoryPart`, `container.SpcFile`) in ``quantizer``'s layout,
    validated (an invalid code is an error naming the part)."""
    try:
        return quantizer.codes_from_bytes(part.codes_bytes)
    except SpreadcodeError as err:
        raise SpreadcodeError(f"{part.path}: {err}") from None


def part_ids(part, offset, positions):
    """Positions int64 (...) of codes in ``part`` -> their ids int64 (...): the part's stored
    ids, else ``offset`` (codes in earlier parts) + position."""
    if part.ids is not None:
        return np.asarray(part.ids)[positions]
    return positions + np.int64(offset)


def part_knn(quantizer, part, offset, catalyzed, k, scan_options):
    """The min(k, count) codes of ``part`` (a non-empty part at ``offset``, see `part_ids`)
    nearest to each catalyzed query float32 (nq, d), by ``quantizer.search`` with
    ``scan_options`` ({} or {"hamming": True}): (distances float32 (nq, k'), ids int64
    (nq, k')) sorted by (distance, id).

    The scan breaks ties by position, which is the id order unless the part stores ids in
    another order (explicit ids); then it takes k + 1 codes, and a query whose k-th and
    (k + 1)-th distances tie gets every code up to the k-th distance (`part_range`), so ties
    go to the lower id there too."""
    k = min(k, part.count)
    codes = part_codes(quantizer, part)
    ids_ordered = part.ids is None or bool(np.all(np.diff(part.ids) > 0))
    wide = k if ids_ordered else min(k + 1, part.count)
    dist, local = quantizer.search(codes, catalyzed, wide, **scan_options)
    dist, ids = merge_topk([dist], [part_ids(part, offset, local)], wide)
    if wide == k:
        return dist, ids
    for row in np.flatnonzero(dist[:, k - 1] == dist[:, k]):
        _, found, near = part_range(quantizer, part, offset, catalyzed[row:row + 1],
                                    float(dist[row, k - 1]), scan_options)
        dist[row, :k], ids[row, :k] = (best[0, :k] for best in
                                       merge_topk([near[None]], [found[None]], k))
    return dist[:, :k], ids[:, :k]


def part_range(quantizer, part, offset, catalyzed, radius, scan_options):
    """Every code of ``part`` (at ``offset``) within ``radius`` of each catalyzed query
    float32 (nq, d), CSR (lims int64 (nq + 1,), ids int64, distances float32), each query's
    sorted by (distance, id) (`merge_ranges`)."""
    lims, local, dist = quantizer.range_search(part_codes(quantizer, part), catalyzed, radius,
                                               **scan_options)
    return merge_ranges([(lims, part_ids(part, offset, local), dist)], len(catalyzed))


def open_collection(db_paths, verify=True):
    """Open .spc files and collection directories (`spreadcode.collection_dir`: their
    shards, in manifest order) that form one collection, and check they are compatible.

    All files must share the code kind, d, parameter and catalyzer; ``verify`` recomputes
    their checksums. Returns a `Collection`.
    """
    if not db_paths:
        raise SpreadcodeError("no .spc file given")
    sources = []  # (name, files, (kind, d, param, catalyzer)) per path
    for path in db_paths:
        if Path(path).is_dir():
            manifest, files = collection_dir.open_directory(path, verify=verify)
            code = manifest.code
            sources.append((path, files, (code.kind, code.d, code.param,
                                          manifest.catalyzer_sha256)))
        else:
            spc = container.open_spc(path, verify=verify)
            h = spc.header
            sources.append((path, [spc], (h.kind, h.d, h.param, h.catalyzer_sha256)))
    first_name, _, first = sources[0]
    for name, _, signature in sources[1:]:
        if signature != first:
            raise SpreadcodeError(
                f"{name}: not compatible with {first_name} (code kind, dimension, "
                f"parameter or catalyzer differ); search files of one collection only")
    kind, d, param, catalyzer_sha256 = first
    return Collection(tuple(spc for _, files, _ in sources for spc in files),
                      quantizer_from_spec(kind, d, param), catalyzer_sha256,
                      name=", ".join(str(name) for name, _, _ in sources))


def check_same_codes(quantizer, other, what, where):
    """SpreadcodeError unless the quantizer ``other`` makes the codes of ``quantizer`` (the
    collection's); the message is "<what> <other> codes, but <where> holds <quantizer> codes"
    (``what``: e.g. "catalyzer 1234abcd makes")."""
    if (other.kind, other.d, other.param) != (quantizer.kind, quantizer.d, quantizer.param):
        raise SpreadcodeError(f"{what} {describe_quantizer(other)} codes, but {where} "
                              f"holds {describe_quantizer(quantizer)} codes")


def merge_topk(distances, ids, k):
    """Merge top-k lists into one: float32/int64 [(nq, k_i)] with sum(k_i) >= k -> (nq, k),
    sorted by (distance, id) so that ties go to the lower id."""
    dist = np.concatenate(distances, axis=1)
    idx = np.concatenate(ids, axis=1)
    order = np.lexsort((idx, dist), axis=1)[:, :k]
    return (np.take_along_axis(dist, order, axis=1),
            np.take_along_axis(idx, order, axis=1))


def merge_ranges(parts, nq):
    """Merge per-part range results [(lims, ids, distances)] into one CSR result.

    Every query's results end up sorted by (distance, id). Vectorised: one global lexsort.
    """
    query_of = [np.repeat(np.arange(nq), np.diff(lims)) for lims, _, _ in parts]
    q = np.concatenate(query_of) if query_of else np.zeros(0, np.int64)
    ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    dist = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    order = np.lexsort((ids, dist, q))
    lims = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(q, minlength=nq), out=lims[1:])
    return lims, ids[order], dist[order].astype(np.float32)
