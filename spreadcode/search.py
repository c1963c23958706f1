"""Encode vector files into .spc collections and search them: the library behind
``spreadcode encode`` and ``spreadcode search``.

Search is asymmetric (paper §4): the query goes through the same catalyzer as the database
but is not quantized; it is scored against the decoded codes by the quantizer's scan kernel.
Several .spc files made with the same catalyzer and quantizer are searched as one collection:
file i's local id j becomes the global id ``offset_i + j`` (offset = codes in earlier files),
unless the file stores explicit ids, which are then used as they are.
"""
from __future__ import annotations

import math
import numbers
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from . import __version__, container, fileio, vecio
from . import store as model_store
from .errors import SpreadcodeError
from .quantizer import quantizer_from_spec


@dataclass(frozen=True)
class EncodeSummary:
    """What `encode_file` wrote: counts, sizes and the code format."""

    output: str
    count: int
    input_dim: int
    input_bytes: int
    output_bytes: int
    quantizer: str
    bits: int
    catalyzer_sha256: str

    @property
    def compression_ratio(self) -> float:
        """Bytes of the float32 input vectors over bytes of the .spc file."""
        return self.input_bytes / max(self.output_bytes, 1)


@dataclass
class SearchResult:
    """Search results over a collection.

    k-NN: ``distances`` float32 (nq, k) ascending and ``ids`` int64 (nq, k), every entry a
    code of the collection (k is capped at its size; ids may be any int64, negative ones
    included). Range search: the same arrays flattened, with ``lims`` int64 (nq+1,) so that
    query i's results are ``ids[lims[i]:lims[i+1]]`` (faiss's convention).
    """

    distances: np.ndarray
    ids: np.ndarray
    lims: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def describe_quantizer(quantizer) -> str:
    """Human-readable name of a quantizer, e.g. ``lattice d=24 r2=79`` or ``sign d=64``."""
    if quantizer.kind == "lattice":
        return f"lattice d={quantizer.d} r2={quantizer.param}"
    return f"sign d={quantizer.d}"


def encode_file(input_path, output_path, *, model="latest", store=None, batch=65536,
                dataset=None, progress=False) -> EncodeSummary:
    """Catalyze and quantize every vector of ``input_path`` into the .spc file ``output_path``.

    Streams ``batch`` vectors at a time (peak memory ~ batch × d_in floats plus the
    catalyzer's forward chunk, not the input size); the output appears only when complete
    (temp file + rename). The same input and model always give byte-identical files.
    """
    from .catalyzer import catalyze, load_catalyzer

    model_file = model_store.resolve(model, store)
    vecio.check_outputs([output_path], [input_path, model_file])
    vectors = vecio.open_vectors(input_path, dataset=dataset)
    catalyzer, meta = load_catalyzer(model_file, store=store)
    _check_dim(vectors.d, meta, f"{input_path}")
    quantizer = quantizer_from_spec(**meta["quantizer"])
    chunks = vectors.chunks(batch)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, total=-(-vectors.n // batch), unit="batch",
                      desc=f"encode {os.path.basename(str(input_path))}")
    with container.SpcWriter(
        output_path, kind=quantizer.kind, d=quantizer.d, param=quantizer.param,
        bits=quantizer.bits, code_bytes=quantizer.code_bytes, input_dim=vectors.d,
        input_dtype=str(vectors.dtype), catalyzer_sha256=meta["sha256"],
        metadata={"creator": f"spreadcode {__version__}",
                  "source": os.path.basename(str(input_path))},
    ) as writer:
        for chunk in chunks:
            codes = quantizer.quantize(catalyze(catalyzer, chunk))
            writer.append(quantizer.codes_to_bytes(codes))
    return EncodeSummary(
        output=str(output_path), count=vectors.n, input_dim=vectors.d,
        input_bytes=vectors.n * vectors.d * 4, output_bytes=os.path.getsize(output_path),
        quantizer=describe_quantizer(quantizer), bits=quantizer.bits,
        catalyzer_sha256=meta["sha256"])


def _check_dim(d_in, meta, what):
    expected = meta["arch"]["d_in"]
    if d_in != expected:
        raise SpreadcodeError(
            f"{what}: vectors have dimension {d_in}, but catalyzer "
            f"{meta['sha256'][:12]} expects {expected}")


# k above this is refused (it is also the largest .ivecs row); below, k is capped at the
# collection size, so results never hold padding.
MAX_K = 2**31 - 1
# (id, distance) pairs that one batch of queries holds: searches run query batch by query
# batch (writing each batch out) so that memory stays bounded whatever queries x k.
RESULT_BATCH_ENTRIES = 1 << 22
RANGE_BATCH_QUERIES = 1024
TSV_HEADER = "query\trank\tid\tdistance\n"


def check_k(value, name="k"):
    """``value`` as an int in 1..MAX_K (bools refused); SpreadcodeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 1 <= value <= MAX_K:
        raise SpreadcodeError(f"{name} must be an integer from 1 to {MAX_K}, got {value!r}")
    return int(value)


def check_radius(radius):
    """``radius`` as a finite float >= 0; SpreadcodeError otherwise."""
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) \
            or not (math.isfinite(radius) and radius >= 0):
        raise SpreadcodeError(f"radius must be a finite number >= 0, got {radius!r}")
    return float(radius)


class Collection(NamedTuple):
    """.spc files searched as one collection: the opened ``files`` (`SpcFile`), their shared
    ``quantizer`` and ``catalyzer_sha256`` (hex str or None). Code j of file i has the id
    ``files[i].ids[j]`` when the file stores ids, else ``offsets[i] + j``."""

    files: list
    quantizer: object
    catalyzer_sha256: str | None

    @property
    def offsets(self):
        """int64 (files + 1,): codes before each file; the last entry is the total."""
        return np.cumsum([0] + [spc.count for spc in self.files])

    @property
    def count(self):
        """Number of codes in the collection."""
        return int(self.offsets[-1])

    def codes(self, index):
        """The codes of file ``index`` in the quantizer's layout, validated (an invalid code is
        an error naming the file)."""
        spc = self.files[index]
        try:
            return self.quantizer.codes_from_bytes(spc.codes_bytes)
        except SpreadcodeError as err:
            raise SpreadcodeError(f"{spc.path}: {err}") from None

    def global_ids(self, index, positions):
        """Positions int64 (...) of codes in file ``index`` -> their ids int64 (...)."""
        spc = self.files[index]
        if spc.ids is not None:
            return np.asarray(spc.ids)[positions]
        return positions + self.offsets[index]

    def clamp_k(self, k, name="k"):
        """``k`` checked by `check_k`, capped at the number of codes; SpreadcodeError when the
        collection holds none (a k-NN search would have nothing to return)."""
        k = check_k(k, name)
        if self.count == 0:
            raise SpreadcodeError(
                f"{', '.join(str(spc.path) for spc in self.files)}: the collection holds no "
                "codes, so a k-NN search has nothing to return")
        return min(k, self.count)

    def knn(self, catalyzed, k, **scan_options):
        """The k (<= count) codes nearest to each catalyzed query float32 (nq, d):
        (distances float32 (nq, k) ascending, ids int64 (nq, k)), ties to the lower id."""
        distances, ids = [], []
        for index, spc in enumerate(self.files):
            if spc.count:
                dist, local = self.quantizer.search(self.codes(index), catalyzed,
                                                    min(k, spc.count), **scan_options)
                distances.append(dist)
                ids.append(self.global_ids(index, local))
        return merge_topk(distances, ids, k)

    def range(self, catalyzed, radius, **scan_options):
        """Every code within ``radius`` of each catalyzed query float32 (nq, d), CSR:
        (lims int64 (nq + 1,), ids int64, distances float32), see `merge_ranges`."""
        parts = []
        for index in range(len(self.files)):
            lims, local, dist = self.quantizer.range_search(self.codes(index), catalyzed,
                                                            radius, **scan_options)
            parts.append((lims, self.global_ids(index, local), dist))
        return merge_ranges(parts, len(catalyzed))


def open_collection(db_paths, verify=True):
    """Open .spc files that form one collection and check they are compatible.

    Returns a `Collection` (unpacks as ``files, quantizer, catalyzer_sha256``). All files must
    share the code kind, d, parameter and catalyzer; ``verify`` recomputes their checksums.
    """
    if not db_paths:
        raise SpreadcodeError("no .spc file given")
    files = [container.open_spc(p, verify=verify) for p in db_paths]
    first = files[0].header
    for spc in files[1:]:
        h = spc.header
        if (h.kind, h.d, h.param, h.catalyzer_sha256) != (
                first.kind, first.d, first.param, first.catalyzer_sha256):
            raise SpreadcodeError(
                f"{spc.path}: not compatible with {files[0].path} (code kind, dimension, "
                f"parameter or catalyzer differ); search files of one collection only")
    quantizer = quantizer_from_spec(first.kind, first.d, first.param)
    return Collection(files, quantizer, first.catalyzer_sha256)


def merge_topk(distances, ids, k):
    """Merge top-k lists into one: float32/int64 [(nq, k_i)] with sum(k_i) >= k -> (nq, k),
    sorted by (distance, id) so that ties go to the lower id."""
    dist = np.concatenate(distances, axis=1)
    idx = np.concatenate(ids, axis=1)
    order = np.lexsort((idx, dist), axis=1)[:, :k]
    return (np.take_along_axis(dist, order, axis=1),
            np.take_along_axis(idx, order, axis=1))


def merge_ranges(parts, nq):
    """Merge per-file range results [(lims, ids, distances)] into one CSR result.

    Every query's results end up sorted by (distance, id). Vectorised: one global lexsort.
    """
    query_of = [np.repeat(np.arange(nq), np.diff(lims)) for lims, _, _ in parts]
    q = np.concatenate(query_of) if query_of else np.zeros(0, np.int64)
    ids = np.concatenate([p[1] for p in parts])
    dist = np.concatenate([p[2] for p in parts])
    order = np.lexsort((ids, dist, q))
    lims = np.zeros(nq + 1, dtype=np.int64)
    np.cumsum(np.bincount(q, minlength=nq), out=lims[1:])
    return lims, ids[order], dist[order].astype(np.float32)


def concat_results(parts):
    """One `SearchResult` from the results of consecutive query batches (k-NN rows stacked,
    range CSR joined); ``extra`` is the first batch's."""
    first = parts[0]
    if first.lims is None:
        return SearchResult(distances=np.vstack([p.distances for p in parts]),
                            ids=np.vstack([p.ids for p in parts]), extra=first.extra)
    starts = np.cumsum([0] + [p.lims[-1] for p in parts])
    lims = np.concatenate([[0]] + [p.lims[1:] + start for p, start in zip(parts, starts)])
    return SearchResult(distances=np.concatenate([p.distances for p in parts]),
                        ids=np.concatenate([p.ids for p in parts]),
                        lims=lims.astype(np.int64), extra=first.extra)


def load_queries(queries, d_in, what="queries"):
    """Queries as float32 (nq, d_in): a path (any vecio format) or an array; checked."""
    if isinstance(queries, (str, os.PathLike)):
        what = str(queries)
        queries = vecio.read_vectors(queries)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise SpreadcodeError(f"{what}: expected a non-empty 2-D array of query vectors")
    if queries.shape[1] != d_in:
        raise SpreadcodeError(
            f"{what}: queries have dimension {queries.shape[1]}, the collection's catalyzer "
            f"expects {d_in}")
    vecio.check_finite(queries, what)
    return queries


@dataclass
class PreparedSearch:
    """A search ready to run, query batch by query batch.

    ``queries`` float32 (nq, d_in) are the raw query vectors and ``run(start, stop)`` gives
    the `SearchResult` of queries start:stop; ``k`` is the number of neighbours per query after capping
    at the ``count`` codes of the collection (None for a range search), ``k_requested`` the
    k asked for, ``rows`` the queries per batch (RESULT_BATCH_ENTRIES over the result columns
    a query holds while it runs).
    """

    queries: np.ndarray
    run: Callable[[int, int], SearchResult]
    k: int | None
    k_requested: int | None
    count: int
    rows: int

    def batches(self):
        """(first query row, SearchResult of the batch) for consecutive batches of queries."""
        for start in range(0, len(self.queries), self.rows):
            yield start, self.run(start, min(start + self.rows, len(self.queries)))

    def result(self):
        """The results of every query as one `SearchResult`."""
        return concat_results([result for _, result in self.batches()])


def batch_rows(width):
    """Queries per batch when each holds ``width`` result columns (None: range search)."""
    return RANGE_BATCH_QUERIES if width is None else max(1, RESULT_BATCH_ENTRIES // width)


def collection_catalyzer(collection, model=None, store=None):
    """The catalyzer that made the collection's codes: ``model`` (hash, path or "latest"), or
    the one named in the headers, from the store. Returns (model, meta). SpreadcodeError
    (naming both) when its hash or its code format differs from the headers'."""
    from .catalyzer import load_catalyzer

    where, sha = collection.files[0].path, collection.catalyzer_sha256
    if sha is None:
        raise SpreadcodeError(f"{where}: has no catalyzer hash; it cannot be searched "
                              "with a catalyzer")
    catalyzer, meta = load_catalyzer(model if model is not None else sha, store=store)
    if meta["sha256"] != sha:
        raise SpreadcodeError(
            f"model {meta['sha256']} does not match the catalyzer {sha} that encoded {where}")
    made = quantizer_from_spec(**meta["quantizer"])
    held = collection.quantizer
    if (made.kind, made.d, made.param) != (held.kind, held.d, held.param):
        raise SpreadcodeError(
            f"catalyzer {sha[:12]} makes {describe_quantizer(made)} codes, but {where} holds "
            f"{describe_quantizer(held)} codes")
    return catalyzer, meta


def prepare_scan(collection, queries, *, k=10, radius=None, model=None, store=None,
                 hamming=False) -> PreparedSearch:
    """A compressed-domain search of an opened `Collection`: k-NN, or every code within
    ``radius`` (range search, paper Appendix C). See `search_files` for the arguments."""
    from .catalyzer import catalyze

    if hamming and collection.quantizer.kind != "sign":
        raise SpreadcodeError(f"{collection.files[0].path}: Hamming search needs sign codes, "
                              f"not {describe_quantizer(collection.quantizer)}")
    scan_options = {"hamming": True} if hamming else {}
    k_requested = None if radius is not None else k
    if radius is not None:
        radius = check_radius(radius)
    else:
        k = collection.clamp_k(k)
    catalyzer, meta = collection_catalyzer(collection, model, store)
    query_vectors = load_queries(queries, meta["arch"]["d_in"])
    # All at once (nq x d_out floats): torch's results depend on the batch size in the last
    # bits, and a result must not depend on how the queries were batched.
    all_catalyzed = catalyze(catalyzer, query_vectors)

    def run(start, stop):
        catalyzed = all_catalyzed[start:stop]
        if radius is not None:
            lims, ids, dist = collection.range(catalyzed, radius, **scan_options)
            return SearchResult(distances=dist, ids=ids, lims=lims)
        dist, ids = collection.knn(catalyzed, k, **scan_options)
        return SearchResult(distances=dist, ids=ids)

    return PreparedSearch(query_vectors, run, k if radius is None else None, k_requested,
                          collection.count, batch_rows(None if radius is not None else k))


def search_files(db_paths, queries, *, k=10, radius=None, model=None, store=None,
                 verify=True, hamming=False) -> SearchResult:
    """k-NN (or range) search of ``queries`` in the collection made of ``db_paths``.

    The catalyzer is found by the hash in the files' header (in the model store), or given
    as ``model`` (hash, path or "latest"); a model whose hash differs from the header's is an
    error naming both. ``queries`` is a path or a float32 array (nq, d_in). ``k`` (1 to
    MAX_K) is capped at the number of codes, so every row is full (no padding); an empty
    collection is an error. With ``radius`` (>= 0) it returns every code within that distance
    (range search, paper Appendix C). ``hamming`` (sign codes only) ranks by the Hamming
    distance between the query's own sign code and the codes, instead of the asymmetric score.
    """
    return prepare_search(db_paths, queries, k=k, radius=radius, model=model, store=store,
                          verify=verify, hamming=hamming).result()


def prepare_search(db_paths, queries, *, k=10, radius=None, model=None, store=None,
                   verify=True, hamming=False) -> PreparedSearch:
    """`search_files`, prepared to run query batch by query batch."""
    return prepare_scan(open_collection(db_paths, verify=verify), queries, k=k, radius=radius,
                        model=model, store=store, hamming=hamming)


def first_hits(ids, groundtruth):
    """Rank of each query's true nearest neighbour (groundtruth[:, 0]) in its result row, the
    row length when absent: ids int64 (nq, K), groundtruth int (nq, >=1) -> int64 (nq,)."""
    ids = np.asarray(ids)
    groundtruth = np.asarray(groundtruth)
    if groundtruth.ndim != 2 or groundtruth.shape[0] != ids.shape[0]:
        raise SpreadcodeError(
            f"ground truth has {groundtruth.shape[0] if groundtruth.ndim else 0} rows, "
            f"results have {ids.shape[0]} queries")
    hit_rank = np.where(ids == groundtruth[:, :1], np.arange(ids.shape[1]), ids.shape[1])
    return hit_rank.min(axis=1) if ids.shape[1] else np.zeros(len(ids), dtype=np.int64)


def recalls_of(hits, width, ks=(1, 10, 100)):
    """1-recall@k from `first_hits` int (nq,) of result rows of ``width``: {k: float} for the
    ks up to the width."""
    return {k: float(np.mean(hits < k)) for k in ks if k <= max(width, 1)}


def recall_at(ids, groundtruth, ks=(1, 10, 100)):
    """1-recall@k: share of queries whose true nearest neighbour (groundtruth[:, 0]) is
    among the first k results. ids int64 (nq, K), groundtruth int (nq, >=1) -> {k: float}."""
    return recalls_of(first_hits(ids, groundtruth), np.shape(ids)[1], ks)


def result_paths(path, ranged):
    """The files `results_writer` makes for ``path``: [path] for .h5/.hdf5, [path, its
    ``<stem>.distances<ext>``] for .ivecs and .npy; SpreadcodeError for other extensions and
    for range results (``ranged``) outside .h5."""
    stem, ext = os.path.splitext(str(path))
    ext = ext.lower()
    if ext in vecio.HDF5_SUFFIXES:
        return [str(path)]
    if ext not in (".ivecs", ".npy"):
        raise SpreadcodeError(f"{path}: unknown results format (use .ivecs, .npy, .h5 or stdout)")
    if ranged:
        raise SpreadcodeError(f"{path}: range-search results go to .h5 or to stdout (TSV)")
    return [str(path), f"{stem}.distances{'.fvecs' if ext == '.ivecs' else ext}"]


@contextmanager
def results_writer(path, nq, k, stream=None):
    """Write the results of ``nq`` queries batch by batch: yields ``write(result)``, to call
    with the `SearchResult` of consecutive query batches (k-NN with ``k`` columns, or range
    search when ``k`` is None).

    ``path`` by extension, all-or-nothing (temporaries, renamed once every batch is written):
    ``.ivecs`` ids (int32: other ids are refused) and float32 distances in
    ``<stem>.distances.fvecs``; ``.npy`` ids int64 and ``<stem>.distances.npy`` float32;
    ``.h5``/``.hdf5`` datasets ``neighbors`` and ``distances`` (ann-benchmarks names), plus
    ``lims`` int64 (nq + 1,) for range search (`result_paths` says which files). Without
    ``path``: TSV lines ``query, rank, id, distance`` to the text ``stream`` (none: nowhere).
    """
    if path is None:
        yield _tsv_writer(stream)
        return
    paths = result_paths(path, ranged=k is None)
    if len(paths) == 1:
        shape = (None,) if k is None else (nq, k)
        datasets = {"neighbors": (shape, np.int64), "distances": (shape, np.float32)}
        if k is None:
            datasets["lims"] = ((nq + 1,), np.int64)
        with fileio.atomic_output(path) as fh, vecio.h5_appenders(fh, datasets) as append:
            yield _h5_writer(append)
        return
    with fileio.atomic_outputs(paths) as (ids_file, distances_file):
        append_ids = vecio.rows_writer(ids_file, paths[0], nq, k, np.int64)
        append_distances = vecio.rows_writer(distances_file, paths[1], nq, k, np.float32)

        def write(result):
            append_ids(result.ids)
            append_distances(result.distances)
        yield write


def _h5_writer(append):
    """``write(result)`` for `results_writer`'s HDF5 datasets (range lims made global)."""
    written = None  # range results written so far; None before the first batch

    def write(result):
        nonlocal written
        append["neighbors"](result.ids)
        append["distances"](result.distances)
        if result.lims is not None:
            lims = result.lims if written is None else result.lims[1:]
            append["lims"](lims + (written or 0))
            written = (written or 0) + int(result.lims[-1])
    return write


def _tsv_writer(stream):
    """``write(result)`` printing TSV rows of consecutive query batches to ``stream``."""
    if stream is None:
        return lambda result: None
    stream.write(TSV_HEADER)
    first = 0

    def write(result):
        nonlocal first
        if result.lims is None:
            nq, k = result.ids.shape
            query, rank = np.repeat(np.arange(nq), k), np.tile(np.arange(k), nq)
        else:
            counts = np.diff(result.lims)
            nq = len(counts)
            query = np.repeat(np.arange(nq), counts)
            rank = np.arange(len(query)) - np.repeat(result.lims[:-1], counts)
        columns = np.rec.fromarrays([query + first, rank, result.ids.ravel(),
                                     result.distances.ravel()])
        np.savetxt(stream, columns, fmt=["%d", "%d", "%d", "%.6g"], delimiter="\t")
        first += nq
    return write


@dataclass(frozen=True)
class SearchReport:
    """What `search_command` did: the files ``written``, the 1-recall@k (``recalls``, None
    without ground truth), the neighbours per query ``k`` (None: range search) and the
    ``k_requested``, the ``count`` of codes searched."""

    written: list
    recalls: dict | None
    k: int | None
    k_requested: int | None
    count: int

    def note(self):
        """A line for the user when k was capped at the size of the collection, else None."""
        if self.k is not None and self.k < self.k_requested:
            return (f"k={self.k_requested} is more than the {self.count} codes of the "
                    f"collection: {self.k} neighbours per query")
        return None


def search_command(db_paths, queries, *, k=None, radius=None, output=None, gt=None,
                   model=None, decoder=None, rerank=None, decode_all=False, hamming=False,
                   store=None, stream=None) -> SearchReport:
    """Everything ``spreadcode search`` does, query batch by query batch so that memory stays
    bounded whatever the number of queries and k.

    k-NN (``k``, default 10) or range search (``radius``; no k, decoder or ground truth),
    compressed-domain (`prepare_search`) or with a decoder (re-ranking, or with
    ``decode_all`` decoded search: see `spreadcode.decoders`; ``model`` and ``decoder`` are
    references: hash, prefix, path or "latest"). An output that is one of the files read
    (.spc, queries, ground truth, models) is refused first. Results go to ``output``
    (`results_writer`, all-or-nothing), else as TSV to the text ``stream`` unless ``gt`` is
    given. ``gt``: ground-truth ids (read before searching), scored as 1-recall@1/10/100.
    """
    if radius is not None and (k is not None or decoder is not None or gt is not None):
        raise SpreadcodeError("a range search (radius) takes no k, decoder or ground truth")
    k = 10 if k is None and radius is None else k
    written = [] if output is None else result_paths(output, ranged=radius is not None)
    if not db_paths:
        raise SpreadcodeError("no .spc file given")
    if decoder is not None:
        decoder = model_store.resolve(decoder, store, kind="decoder")
    if not decode_all:
        sha = container.read_header(db_paths[0]).catalyzer_sha256
        if model is not None or sha is not None:
            model = model_store.resolve(model if model is not None else sha, store)
    vecio.check_outputs(written, [*db_paths, queries, gt, model, decoder])
    if decoder is None:
        prepared = prepare_search(db_paths, queries, k=k, radius=radius, model=model,
                                  store=store, hamming=hamming)
    else:
        from . import decoders

        if decode_all:
            prepared = decoders.prepare_decoded(db_paths, queries, k=k, decoder=decoder,
                                                store=store)
        else:
            prepared = decoders.prepare_rerank(db_paths, queries, k=k, decoder=decoder,
                                               rerank=rerank, model=model, store=store)
    nq = len(prepared.queries)
    truth = None if gt is None else vecio.read_groundtruth(gt)
    if truth is not None and truth.shape[0] != nq:
        raise SpreadcodeError(f"{gt}: ground truth has {truth.shape[0]} rows for {nq} queries")
    hits = []
    with results_writer(output, nq, prepared.k, stream if gt is None else None) as write:
        for start, result in prepared.batches():
            write(result)
            if truth is not None:
                hits.append(first_hits(result.ids, truth[start:start + len(result.ids)]))
    recalls = None if truth is None else recalls_of(np.concatenate(hits), prepared.k)
    return SearchReport(written=written, recalls=recalls, k=prepared.k,
                        k_requested=prepared.k_requested, count=prepared.count)
