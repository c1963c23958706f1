"""Search a `spreadcode.collection.Collection`: compressed-domain, re-ranked by a learned
decoder, or among the decoded codes; and the recall of results.

Compressed-domain search is asymmetric (paper §4): the query goes through the same catalyzer as
the database but is not quantized; it is scored against the decoded codes by the quantizer's
scan kernel. Re-ranking (Amara et al. 2021) re-scores the compressed-domain shortlist by the
squared L2 distance between the raw query and the decoded candidates (plus ``blend`` x the
compressed distance); decoded search ranks every decoded code that way.

Each ``prepare_*`` function checks its arguments and returns a `PreparedSearch` that runs query
batch by query batch (so memory stays bounded whatever queries x k); ``.result()`` runs them all.
k is 1 to `MAX_K` and capped at the collection size, so results never hold padding.

Each batch searches every part of the collection on its own (`each_part`: `part_knn`,
`part_range`, `part_decoded_range`), or part after part with each scan bounded by the k-th
distances found before it (`each_chain`: `part_decoded_knn_after`), and merges the per-part
results exactly, by (distance, id). With a dask.distributed ``client``
(`spreadcode.distributed`) the per-part searches are tasks on its workers, which read the .spc
files by path (a bounded run of parts: one per worker); the queries are prepared (catalyzed)
and the results merged (and re-ranked) here, by the same code, so the results are identical
to the single-process ones.
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import vecio
from .collection import (check_k, check_same_codes, merge_ranges, merge_topk, part_codes,
                         part_ids, part_knn, part_range)
from .errors import SpreadcodeError

# (id, distance) pairs that one batch of queries holds: searches run query batch by query
# batch (writing each batch out) so that memory stays bounded whatever queries x k.
RESULT_BATCH_ENTRIES = 1 << 22
RANGE_BATCH_QUERIES = 1024
# Default shortlist for re-ranking: max(RERANK_FACTOR · k, RERANK_MIN) candidates.
RERANK_FACTOR = 10
RERANK_MIN = 100
# Candidate rows decoded per block of queries when re-ranking.
RERANK_BLOCK_ROWS = 65536
# A residual model's default shortlist (`residual_rerank`). With its MLP shortlist decoder:
# max(RESIDUAL_RERANK_FACTOR · k, RESIDUAL_RERANK_MIN) candidates (BENCHMARKS.md, "Issue #14
# levers", row 12: its top 200 lose nothing against the linear decoder's top 1,000; row 13:
# at k = 10 its top 50 give the R@1 and R@10 of its top 200 on wordnet and pypi, its top 30
# lose up to 0.4 R@10, and at k = 100 its top 150 lose 0.2-0.5 R@100). Older
# models' linear shortlist decoder ranks poorly on its own (row 4: a shortlist of 100 loses
# 1.4 points of R@10, one of 1,000 nothing): at least LINEAR_RESIDUAL_RERANK_MIN.
RESIDUAL_RERANK_FACTOR = 2
RESIDUAL_RERANK_MIN = 50
LINEAR_RESIDUAL_RERANK_MIN = 1000
# What one process keeps of a collection's decoded codes by default (`decode_memory`), per
# decoder use: the codes decoded for a decoded scan (`prepare_decoded`; a residual model's
# shortlist as `int8_rows`, d_in + 4 bytes each) and the candidates decoded for re-ranking
# (`rerank_shortlist`, float32) each up to this many bytes: 10.7M and 2.8M codes of 96
# dimensions, as a Dask worker keeps (`distributed.WORKER_DECODED_BYTES`). 512 MiB before
# int8 rows held 1.4M codes for the scan; at 10M codes, 5.4M as int8 rows gave 33 / 27 q/s
# (k = 10 / 100), 0.9 / 0.8 × IndexPQ's, where 2 workers holding all reached 62 / 44
# (BENCHMARKS.md, "Collections at 1M vectors", run R).
DECODE_MEMORY = 1 << 30
# Codes decoded at a time by decoded k-NN search (`decoded_topk` scans each block).
DECODED_SEARCH_BLOCK = 65536
# Relative widening of a k-th distance bound before a bounded scan (`decoded_topk`): float32
# rounding of ‖q‖² + (‖x‖² − 2⟨q, x⟩) is a few ulps, far less.
BOUND_SLACK = 1e-5
# Codes decoded at a time by decoded range search (its distances are float64).
DECODED_RANGE_BLOCK = 16384


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


@dataclass
class PreparedSearch:
    """A search ready to run, query batch by query batch.

    ``queries`` float32 (nq, d_in) are the raw query vectors and ``run(start, stop)`` gives
    the `SearchResult` of queries start:stop; ``k`` is the number of neighbours per query after
    capping at the ``count`` codes of the collection (None for a range search), ``k_requested``
    the k asked for, ``rows`` the queries per batch (RESULT_BATCH_ENTRIES over the result
    columns a query holds while it runs).
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


def each_part(collection, function, *args, client=None, progress=False):
    """``function(collection.quantizer, part, offset, *args)`` for every part of the
    collection that holds codes (offset: codes in earlier parts): in this process, in part
    order, or with a dask.distributed ``client`` as one task per part on its workers, in
    completion order (`spreadcode.distributed.map_parts`; ``progress``: a bar over them)."""
    if client is not None:
        from .distributed import map_parts

        return map_parts(client, collection, function, *args, progress=progress)
    return (function(collection.quantizer, part, int(offset), *args)
            for part, offset in zip(collection.parts, collection.offsets) if part.count)


def each_chain(collection, function, *args, client=None, progress=False):
    """``function(collection.quantizer, part, offset, previous, *args)`` for the parts of the
    collection that hold codes, in runs where each call gets the result of the call before
    it (None first): in this process one run over every part, in part order, or with a
    dask.distributed ``client`` one run per worker thread, as tasks
    (`spreadcode.distributed.chain_parts`). Yields the last result of each run."""
    if client is not None:
        from .distributed import chain_parts

        yield from chain_parts(client, collection, function, *args, progress=progress)
        return
    previous = None
    for part, offset in zip(collection.parts, collection.offsets):
        if part.count:
            previous = function(collection.quantizer, part, int(offset), previous, *args)
    if previous is not None:
        yield previous


def merge_knn(results, k):
    """The k best of top-k results (distances float32 (nq, k_i), ids int64 (nq, k_i)) with
    sum(k_i) >= k, merged one at a time as they come (`merge_topk`: by (distance, id), so the
    order they come in does not matter)."""
    best = None
    for dist, ids in results:
        best = merge_topk([dist] if best is None else [best[0], dist],
                          [ids] if best is None else [best[1], ids], k)
    return best


def bounded_knn(searches, k, bound=None):
    """The k best of top-k searches run one after the other, each given the bound the
    results so far set (`knn_bound`, no looser than ``bound``) so that it can skip what
    cannot enter: ``searches`` yields functions of a bound (float32 (nq,) or None) returning
    (distances float32 (nq, k_i), ids int64 (nq, k_i)); merged by (distance, id) like
    `merge_knn`."""
    best = None
    for search in searches:
        best = bounded_step(best, search, k, bound)
    return best


def bounded_step(best, search, k, bound=None):
    """One step of `bounded_knn`: the top-k ``best`` so far (or None) merged with what
    ``search`` finds under the bound it sets."""
    found = search(knn_bound(best, k, bound))
    return found if best is None else merge_topk([best[0], found[0]], [best[1], found[1]], k)


def batch_rows(width):
    """Queries per batch when each holds ``width`` result columns (None: range search)."""
    return RANGE_BATCH_QUERIES if width is None else max(1, RESULT_BATCH_ENTRIES // width)


def check_radius(radius):
    """``radius`` as a finite float >= 0; SpreadcodeError otherwise."""
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) \
            or not (math.isfinite(radius) and radius >= 0):
        raise SpreadcodeError(f"radius must be a finite number >= 0, got {radius!r}")
    return float(radius)


def load_queries(queries, d_in, what="queries"):
    """Queries as float32 (nq, d_in): a path (any vecio format) or an array; checked."""
    if isinstance(queries, (str, os.PathLike)):
        what = str(queries)
        queries = vecio.read_vectors(queries)
    queries = np.asarray(queries)
    if not np.issubdtype(queries.dtype, np.number) or np.issubdtype(queries.dtype,
                                                                     np.complexfloating):
        raise SpreadcodeError(f"{what}: vectors must be real numbers, got dtype {queries.dtype}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise SpreadcodeError(f"{what}: expected a non-empty 2-D array of query vectors")
    if queries.shape[1] != d_in:
        raise SpreadcodeError(
            f"{what}: queries have dimension {queries.shape[1]}, the collection's catalyzer "
            f"expects {d_in}")
    vecio.check_finite(queries, what)
    return queries


def collection_catalyzer(collection, model=None, store=None):
    """The catalyzer that made the collection's codes: ``model`` (hash, path or "latest"), or
    the one named in the headers, from the store. Returns (model, CatalyzerMeta). SpreadcodeError
    (naming both) when its hash or its code format differs from the headers'."""
    from .catalyzer import load_catalyzer

    where, sha = collection.where, collection.catalyzer_sha256
    if sha is None:
        raise SpreadcodeError(f"{where}: has no catalyzer hash; it cannot be searched "
                              "with a catalyzer")
    catalyzer, meta = load_catalyzer(model if model is not None else sha, store=store)
    if meta.sha256 != sha:
        raise SpreadcodeError(
            f"model {meta.sha256} does not match the catalyzer {sha} that encoded {where}")
    check_same_codes(collection.quantizer, meta.quantizer.quantizer(),
                     f"catalyzer {sha[:12]} makes", where)
    return catalyzer, meta


def check_decoder_fits(decoder, collection):
    """Raise SpreadcodeError unless ``decoder`` was trained for the collection's catalyzer
    (the .spc header's hash) and code format; the message names both hashes."""
    if collection.catalyzer_sha256 != decoder.catalyzer_sha256:
        raise SpreadcodeError(
            f"decoder {decoder.sha256} belongs to catalyzer {decoder.catalyzer_sha256}, but "
            f"{collection.where} was encoded with catalyzer {collection.catalyzer_sha256}")
    check_same_codes(collection.quantizer, decoder.quantizer,
                     f"decoder {decoder.sha256} decodes", collection.where)


def check_hamming(collection, hamming):
    """Scan options for the collection's quantizer: {"hamming": True} for a Hamming search
    (sign codes only: SpreadcodeError otherwise), else {}."""
    from .quantizer import describe_quantizer

    if hamming and not collection.quantizer.has_hamming:
        raise SpreadcodeError(f"{collection.where}: Hamming search needs sign codes, "
                              f"not {describe_quantizer(collection.quantizer)}")
    return {"hamming": True} if hamming else {}


def prepare_scan(collection, catalyzer, queries, *, k=10, radius=None, hamming=False,
                 client=None, progress=False) -> PreparedSearch:
    """A compressed-domain search of ``collection``: the k (1 to MAX_K, capped at the number
    of codes; an empty collection is an error) codes nearest to each query, or with ``radius``
    (>= 0) every code within that distance (range search, paper Appendix C).

    ``catalyzer``: the model that made the codes; ``queries``: a path or an array (nq, d_in).
    ``hamming`` (sign codes only) ranks by the Hamming distance between the query's own sign
    code and the codes, instead of the asymmetric score. ``client``, ``progress``: `each_part`.
    """
    from .catalyzer import catalyze

    scan_options = check_hamming(collection, hamming)
    k_requested = None if radius is not None else k
    if radius is not None:
        radius = check_radius(radius)
    else:
        k = collection.clamp_k(k)
    query_vectors = load_queries(queries, catalyzer.d_in)
    # All at once (nq x d_out floats): torch's results depend on the batch size in the last
    # bits, and a result must not depend on how the queries were batched.
    all_catalyzed = catalyze(catalyzer, query_vectors)

    def run(start, stop):
        catalyzed = all_catalyzed[start:stop]
        if radius is not None:
            lims, ids, dist = merge_ranges(list(each_part(
                collection, part_range, catalyzed, radius, scan_options, client=client,
                progress=progress)), stop - start)
            return SearchResult(distances=dist, ids=ids, lims=lims)
        dist, ids = merge_knn(each_part(collection, part_knn, catalyzed, k, scan_options,
                                        client=client, progress=progress), k)
        return SearchResult(distances=dist, ids=ids)

    return PreparedSearch(query_vectors, run, k if radius is None else None, k_requested,
                          collection.count, batch_rows(None if radius is not None else k))


def default_rerank(k):
    """Shortlist size used when none is given: max(RERANK_FACTOR · k, RERANK_MIN)."""
    return max(RERANK_FACTOR * k, RERANK_MIN)


def residual_rerank(model, k):
    """Default shortlist of a residual model's search for k results (see
    RESIDUAL_RERANK_MIN)."""
    if model.hidden_shortlist is None:
        return max(default_rerank(k), LINEAR_RESIDUAL_RERANK_MIN)
    return max(RESIDUAL_RERANK_FACTOR * k, RESIDUAL_RERANK_MIN)


def check_blend(blend):
    """``blend`` (the weight of the shortlist's distance in a re-ranking) as a float;
    SpreadcodeError unless it is a finite real number >= 0."""
    if isinstance(blend, bool) or not isinstance(blend, numbers.Real) \
            or not (math.isfinite(blend) and blend >= 0):
        raise SpreadcodeError(f"blend must be a finite number >= 0, got {blend!r}")
    return float(blend)


def rerank_candidates(queries, candidates, decode, k, shortlist_distances=None, blend=0.0,
                      block_rows=RERANK_BLOCK_ROWS):
    """Re-rank candidate lists by squared L2 between the query and the decoded candidates,
    plus ``blend`` × the compressed-domain distance that made the shortlist.

    queries: float32 (nq, d_in); candidates: int64 (nq, N), N >= k, ids of codes (any int64);
    decode: function from sorted unique ids int64 (m,) to float32 (m, d_in);
    shortlist_distances: float32 (nq, N), needed when blend != 0. Each block of queries decodes
    its distinct candidates once (about ``block_rows`` candidate rows per block). Returns
    (scores float32 (nq, k) ascending, ids int64 (nq, k)): ties go to the lower id, ids always
    come from the row's candidates.
    """
    nq, n_short = candidates.shape
    distances = np.empty((nq, n_short), dtype=np.float32)
    rows = max(1, block_rows // max(n_short, 1))
    for start in range(0, nq, rows):
        ids = candidates[start:start + rows]
        unique, inverse = np.unique(ids.ravel(), return_inverse=True)
        diff = decode(unique)[inverse] - np.repeat(queries[start:start + rows], n_short, axis=0)
        distances[start:start + rows] = np.einsum("ij,ij->i", diff, diff).reshape(ids.shape)
    if blend:
        distances += np.float32(blend) * shortlist_distances
    return merge_topk([distances], [candidates], k)


def prepare_rerank(collection, catalyzer, decoder, queries, *, k, rerank=None,
                   blend=None, client=None, progress=False) -> PreparedSearch:
    """k-NN search with a compressed-domain shortlist re-ranked by a decoder.

    `prepare_scan` gives the ``rerank`` best candidates (default `default_rerank(k)`); they are
    re-ranked by the squared L2 distance between the raw query and the decoded candidate in
    input space plus ``blend`` × their compressed-domain distance (`rerank_candidates`;
    default blend: the decoder's calibrated weight, see `spreadcode.decoders.calibrate_blend`;
    0 ranks by the decoded distance alone; `rerank_shortlist`). k and the shortlist are capped
    at the number of codes. ``decoder``: a `spreadcode.decoders.Decoder` of the collection's
    catalyzer. Results hold the re-ranking scores as distances; extra:
    {"rerank": N, "blend": weight, "decoder": sha256}. ``client``, ``progress``: the
    shortlist's (`each_part`); the re-ranking runs here.
    """
    k = check_k(k)
    rerank = default_rerank(k) if rerank is None else check_k(rerank, "rerank")
    if rerank < k:
        raise SpreadcodeError(f"the re-ranking shortlist ({rerank}) must hold at least k={k} candidates")
    blend = check_blend(decoder.blend if blend is None else blend)
    check_decoder_fits(decoder, collection)
    shortlist = prepare_scan(collection, catalyzer, queries, k=rerank, client=client,
                             progress=progress)
    return rerank_shortlist(collection, shortlist, decoder, k, blend)


def decode_memory(collection):
    """The bytes of decoded codes that one process keeps for later searches of
    ``collection``, per decoder use (its ``decode_memory``, else DECODE_MEMORY)."""
    return DECODE_MEMORY if collection.decode_memory is None else collection.decode_memory


def kept_rows(collection, decoder):
    """How many codes of ``collection``, counted from the first, this process keeps decoded
    by ``decoder`` (``decoder.row_dtype`` each) within `decode_memory` (at most every code)."""
    return min(collection.count, decode_memory(collection) // decoder.row_dtype.itemsize)


def rerank_shortlist(collection, shortlist, decoder, k, blend=0.0) -> PreparedSearch:
    """The candidates of the search ``shortlist`` (a `PreparedSearch` of the collection)
    re-ranked by ``decoder`` (`rerank_candidates`): k (capped at the number of codes) per query.

    Each block of queries decodes its distinct candidates; the collection keeps those among
    its first `kept_rows` codes (all of them when their decoding fits in `decode_memory`;
    `Collection.decoded_at`), so such a candidate that an earlier query or search decoded is
    not decoded again (the same floats either way).
    extra: {"rerank": N, "blend": blend, "decoder": sha256}.
    """
    query_vectors = shortlist.queries
    if query_vectors.shape[1] != decoder.d_in:
        raise SpreadcodeError(
            f"decoder {decoder.sha256[:12]} decodes to {decoder.d_in} dimensions, but catalyzer "
            f"{collection.catalyzer_sha256[:12]} takes {query_vectors.shape[1]}")
    k_capped = min(k, collection.count)
    keep = kept_rows(collection, decoder)

    def decode(unique):
        return collection.decoded_at(decoder, collection.positions(unique), keep)
    extra = {"rerank": shortlist.k_requested, "blend": blend, "decoder": decoder.sha256}

    def run(start, stop):
        candidates = shortlist.run(start, stop)
        distances, ids = rerank_candidates(query_vectors[start:stop], candidates.ids, decode,
                                           k_capped, candidates.distances, blend)
        return SearchResult(distances=distances, ids=ids, extra=extra)

    return PreparedSearch(query_vectors, run, k_capped, k, collection.count, shortlist.rows)


def prepare_residual(collection, model, queries, *, k=10, radius=None, rerank=None,
                     blend=None, decode_all=False, precision="auto", client=None,
                     progress=False) -> PreparedSearch:
    """k-NN search (or with ``radius``, range search: `prepare_decoded_range` with the full
    decoder) of the codes of a residual model (`spreadcode.residual`), which decodes
    them itself: a shortlist of ``rerank`` candidates (default: `residual_rerank`) by
    squared L2 between the raw query and the codes decoded by the model's shortlist decoder,
    re-ranked by its full decoder plus ``blend`` × the shortlist's distance (default: the
    model's ``rerank_blend``, `spreadcode.residual.calibrate_rerank_blend`; 0 for models
    without one) (``rerank=0``: the shortlist's order, k results);
    ``decode_all`` ranks every code decoded by the full decoder instead. A re-ranked
    shortlist scans the shortlist decoder's vectors rounded to int8 (`Int8Decoder`: a quarter
    of the memory kept, the same recall) with the queries rounded alike (`decoded_topk`).
    Distances are
    squared L2 in input space, plus the blended term when re-ranked. extra: {"rerank": N,
    "blend": weight, "decoder": sha256} when
    re-ranked, else {"decoder": sha256}. ``precision``: both decoders' arithmetic
    (`spreadcode.residual.ResidualCatalyzer.decode`: "auto", bfloat16 products where the
    device has them natively, or "float32"). ``client``, ``progress``: the per-part searches'
    (`each_part`); the re-ranking runs here."""
    from .residual import ModelDecoder, check_precision

    sha, precision = collection.catalyzer_sha256, check_precision(precision)
    full, shortlist = (ModelDecoder(model, sha, role, precision=precision)
                       for role in ("residual", "shortlist"))
    parallel = {"client": client, "progress": progress}
    if radius is not None:
        if rerank or decode_all or blend is not None:
            raise SpreadcodeError("a range search takes no rerank, blend or decode_all")
        return prepare_decoded_range(collection, full, queries, radius, **parallel)
    if blend is not None and (decode_all or rerank == 0):
        raise SpreadcodeError("blend weighs the shortlist's distance in a re-ranking: "
                              "decode_all and rerank=0 do not re-rank")
    blend = check_blend((model.rerank_blend or 0.0) if blend is None else blend)
    if decode_all:
        return prepare_decoded(collection, full, queries, k=k, **parallel)
    k = check_k(k)
    rerank = residual_rerank(model, k) if rerank is None else rerank
    if rerank == 0:
        return prepare_decoded(collection, shortlist, queries, k=k, **parallel)
    rerank = check_k(rerank, "rerank")
    if rerank < k:
        raise SpreadcodeError(f"the re-ranking shortlist ({rerank}) must hold at least k={k} candidates")
    candidates = prepare_decoded(collection, Int8Decoder(shortlist), queries, k=rerank,
                                 **parallel)
    # How many codes the re-ranking will decode: no more than the collection holds, since it
    # keeps what its re-rankings decode (within its decode memory).
    model.expect_decodes(min(candidates.queries.shape[0] * candidates.k, collection.count))
    return rerank_shortlist(collection, candidates, full, k, blend)


def prepare_decoded(collection, decoder, queries, *, k, block=DECODED_SEARCH_BLOCK,
                    client=None, progress=False) -> PreparedSearch:
    """Exact k-NN of the raw queries among the decoded codes of the collection (no
    compressed-domain scan, hence no Hamming ranking for sign codes, and no catalyzer):
    `part_decoded_knn` of every part, each bounded by the k-th distances of the parts before
    it in its run (`each_chain`: one run in this process, one per Dask worker), merged;
    squared L2 distances, ties to the lower id; k is capped at the number of codes.

    In this process the first `kept_rows` codes (all of them when they fit in
    `decode_memory`) are decoded once and held by the collection for later searches by the
    same decoder (`Collection.cached`; at 1M codes of a residual model, ≈ 4 s of decoding
    saved per search, 95 MiB held as a shortlist's int8 rows, 366 MiB as float32), the
    rest ``block`` at a time per batch (memory O(block · d_in)), in the same blocks either
    way. On the workers of a dask.distributed
    ``client`` (`each_chain`) each worker process keeps what fits of the shards it decoded
    for later batches and searches (`spreadcode.distributed.worker_decoded_blocks`). Each
    block is scanned by `decoded_topk`.
    extra: {"decoder": sha256}.
    """
    check_decoder_fits(decoder, collection)
    k_capped = collection.clamp_k(k)
    query_vectors = load_queries(queries, decoder.d_in)
    extra = {"decoder": decoder.sha256}
    blocks_of = None
    if client is not None:
        from .distributed import search_token, worker_decoded_blocks

        blocks_of = functools.partial(worker_decoded_blocks, budget=collection.decode_memory,
                                      search=search_token())
    elif (keep := kept_rows(collection, decoder)) > 0:
        held = collection.cached(("decoded", decoder.kind, decoder.sha256, block, keep),
                                 lambda: kept_decoded(collection, decoder, block, keep))

        def blocks_of(quantizer, part, offset, decoder, block):
            return kept_then_decoded(quantizer, part, decoder, block, held.get(int(offset)))

    def run(start, stop):
        distances, ids = merge_knn(each_chain(
            collection, part_decoded_knn_after, decoder, query_vectors[start:stop], k_capped,
            block, blocks_of, client=client, progress=progress), k_capped)
        return SearchResult(distances=distances, ids=ids, extra=extra)

    return PreparedSearch(query_vectors, run, k_capped, k, collection.count,
                          batch_rows(k_capped))


def int8_row(d):
    """The dtype of one `int8_rows` row of d dimensions: d + 4 bytes."""
    return np.dtype([("codes", np.int8, (d,)), ("scale", np.float32)])


def int8_rows(decoded):
    """Vectors float32 (n, d) rounded to int8 per row: a structured array (n,) of
    `int8_row` (d), ``codes`` int8 (d,) and ``scale`` float32, the vector scale · codes with
    scale = max|x| / 127 (each coordinate within half a scale of x's), as the int8 scan rounds
    its queries (compiled, `spreadcode._codec.int8_rows`). A quarter of float32's
    bytes, so a process keeps four times the codes decoded for a shortlist scan; the rounding
    adds 0.01-0.03 % to a 64-bit residual code's squared error, and nothing to recall
    (BENCHMARKS.md, "Collections at 1M vectors", run Q)."""
    from . import _codec

    decoded = np.ascontiguousarray(decoded, dtype=np.float32)
    n, d = decoded.shape
    rows = np.empty(n, int8_row(d))
    _codec.int8_rows(decoded, rows.view(np.uint8).reshape(n, d + 4), _codec.check_threads(None))
    return rows


def int8_vectors(rows):
    """The vectors float32 (n, d) that `int8_rows` ``rows`` hold: scale · codes, as the int8
    scan computes them."""
    return rows["codes"] * rows["scale"][:, None]


@dataclass(frozen=True)
class Int8Decoder:
    """``decoder`` (`spreadcode.decoders.Decoder`'s interface) whose vectors are kept and
    scanned as `int8_rows` (against int8 rows of the queries, `decoded_topk`):
    ``decode(codes)`` -> structured (n,) of `int8_row` (d_in). For a shortlist that a full
    decoder re-ranks, where the rounding changes nothing measurable."""

    decoder: object

    @property
    def kind(self):
        return f"{self.decoder.kind}-int8"

    @property
    def sha256(self):
        return self.decoder.sha256

    @property
    def catalyzer_sha256(self):
        return self.decoder.catalyzer_sha256

    @property
    def quantizer(self):
        return self.decoder.quantizer

    @property
    def d_in(self):
        return self.decoder.d_in

    @property
    def row_dtype(self):
        return int8_row(self.d_in)

    def decode(self, codes):
        return int8_rows(self.decoder.decode(codes))


def decoded_blocks(quantizer, part, decoder, block, first=0):
    """The codes of ``part`` from row ``first`` on decoded by ``decoder``, ``block`` at a
    time: arrays of (<= block) ``decoder.row_dtype`` rows (float32 (<= block, d_in), or
    `int8_rows`), generated one by one."""
    codes = part_codes(quantizer, part)
    return (decoder.decode(codes[start:start + block])
            for start in range(first, part.count, block))


def decoded_part(quantizer, part, decoder, block, rows=None):
    """The first ``rows`` (None: all; else a multiple of ``block`` or the part's count, so
    that its decoder calls are those of `decoded_blocks`) codes of ``part`` decoded by
    ``decoder``, ``block`` at a time, into one array of ``decoder.row_dtype`` (rows,): what a
    cache holds, so that a held part is scanned in one call."""
    rows = part.count if rows is None else min(rows, part.count)
    out = np.empty(rows, decoder.row_dtype)
    for first, decoded in zip(range(0, rows, block),
                              decoded_blocks(quantizer, part, decoder, block)):
        out[first:first + len(decoded)] = decoded
    return out


def kept_rows_of_part(count, rows, block):
    """Of a part of ``count`` codes, the first rows to keep decoded when ``rows`` more may be
    kept: all of them, else a multiple of ``block`` (so that kept and freshly decoded codes
    come from the same decoder calls)."""
    return count if rows >= count else max(rows, 0) // block * block


def kept_decoded(collection, decoder, block, rows):
    """The first ``rows`` codes of ``collection`` decoded by ``decoder``, part by part
    (`kept_rows_of_part`): {offset: (kept rows of the part,) of ``decoder.row_dtype``}, for
    the parts with some kept."""
    held = {}
    for part, offset in zip(collection.parts, collection.offsets):
        keep = kept_rows_of_part(part.count, rows - int(offset), block)
        if keep:
            held[int(offset)] = decoded_part(collection.quantizer, part, decoder, block, keep)
    return held


def kept_then_decoded(quantizer, part, decoder, block, kept):
    """The decoded blocks of ``part``: ``kept`` ((r,) rows of ``decoder.row_dtype``, its
    first r rows decoded earlier, r a multiple of ``block`` or the part's count; or None)
    then the rest decoded now (`decoded_blocks`)."""
    if kept is None:
        return decoded_blocks(quantizer, part, decoder, block)
    if len(kept) == part.count:
        return [kept]
    return itertools.chain([kept], decoded_blocks(quantizer, part, decoder, block, len(kept)))


def decoded_topk(decoded, queries, k, bound=None):
    """The k rows of ``decoded`` (float32 (n, d), or `int8_rows` (n,) of d dimensions: the
    vectors they hold) nearest to each of ``queries`` float32 (nq, d)
    in squared L2: (distances float32 (nq, k) ascending, clamped at 0; rows int64 (nq, k)),
    ties to the lower row, 1 <= k <= n. The compiled scan (csrc/scan.c) ranks by
    ‖x‖² − 2⟨q, x⟩ in 6 × 16 register tiles and keeps a running top-k per query, so no
    (nq, n) distance matrix is written: 2.7× the speed of a GEMM and top-k in torch at 96-d
    (BENCHMARKS.md, "Collections at 1M vectors", run H). `int8_rows` are scanned against
    the queries rounded to int8 rows too, their products summed exactly in integers
    (`spreadcode._codec.int8_scan`; AVX512-VNNI where the CPU has it: 2.9× the float scan,
    run X), the distance then being ‖x‖² − 2⟨q̃, x⟩ + ‖q‖² for the rounded query q̃.

    ``bound``: None, or float32 (nq,) squared distances, the k-th of a top-k already found
    among other codes: rows farther than bound[q] cannot enter it, so the scan skips them,
    and slots they leave empty come back as (inf, -1). Rounding never drops a row at the
    bound itself (it is widened by BOUND_SLACK)."""
    from . import _codec

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    norms = np.einsum("ij,ij->i", queries, queries)
    if bound is not None:
        bound = bound - norms + np.float32(BOUND_SLACK) * (np.abs(bound) + norms)
    if decoded.dtype.names:
        scan = _codec.int8_scan(np.ascontiguousarray(decoded).view(np.uint8).reshape(
            len(decoded), decoded.dtype.itemsize), queries)
    else:
        scan = _codec.float_scan(np.ascontiguousarray(decoded, dtype=np.float32), queries)
    distances, rows = scan.topk(k, _codec.check_threads(None), bound)
    distances += norms[:, None]
    return np.maximum(distances, 0.0, out=distances), rows


def knn_bound(best, k, bound=None):
    """The bound (`decoded_topk`) that a top-k result ``best`` (distances float32 (nq, k'),
    ids) sets for the codes still to scan: its k-th distances, float32 (nq,), no looser than
    ``bound``; None while ``best`` is None or holds fewer than k columns (and no bound)."""
    if best is None or best[0].shape[1] < k:
        return bound
    kth = best[0][:, k - 1]
    return kth if bound is None else np.minimum(kth, bound)


def part_decoded_knn(quantizer, part, offset, decoder, queries, k, block, blocks_of=None,
                     bound=None):
    """The min(k, count) codes of ``part`` (at ``offset``, `spreadcode.collection.part_ids`)
    whose decoded vectors are nearest to the raw queries float32 (nq, d_in): (squared L2
    distances float32 (nq, k'), ids int64 (nq, k')) by (distance, id). The part's decoded
    blocks come from ``blocks_of(quantizer, part, offset, decoder, block)`` (a cache of them:
    arrays of consecutive rows, ``decoder.row_dtype`` each) or else `decoded_blocks`; each is
    searched by `decoded_topk` with its rows in id order (it breaks ties by row), bounded by
    the k-th distance found so far (`bounded_knn`). ``bound``: a bound from other parts
    (float32 (nq,), or None); codes beyond it are left out, and the slots they leave are
    (inf, -1)."""
    def searches():
        blocks = (decoded_blocks(quantizer, part, decoder, block) if blocks_of is None
                  else blocks_of(quantizer, part, offset, decoder, block))
        first = 0
        for decoded in blocks:
            ids = part_ids(part, offset, np.arange(first, first + len(decoded)))
            first += len(decoded)
            if np.any(ids[1:] < ids[:-1]):
                order = np.argsort(ids, kind="stable")
                decoded, ids = decoded[order], ids[order]
            yield functools.partial(block_knn, decoded, ids)

    def block_knn(decoded, ids, block_bound):
        dist, rows = decoded_topk(decoded, queries, min(k, len(decoded)), block_bound)
        return dist, np.where(rows >= 0, ids[rows], np.int64(-1))

    return bounded_knn(searches(), k, bound)


def part_decoded_knn_after(quantizer, part, offset, best, decoder, queries, k, block,
                           blocks_of=None):
    """The k-NN of earlier parts, ``best`` ((distances, ids) or None), and `part_decoded_knn`
    of this part bounded by their k-th distances, merged (`bounded_step`): the step of a run
    of parts (`each_chain`), whose later parts' scans skip most rows."""
    return bounded_step(best, functools.partial(part_decoded_knn, quantizer, part, offset,
                                                decoder, queries, k, block, blocks_of), k)


def prepare_decoded_range(collection, decoder, queries, radius, block=DECODED_RANGE_BLOCK,
                          client=None, progress=False) -> PreparedSearch:
    """Range search among the decoded codes: every code whose decoded vector lies within
    squared L2 ``radius`` (>= 0) of the raw query, CSR sorted by (distance, id)
    (`part_decoded_range` of every part, merged). ``client``, ``progress``: `each_part`.
    extra: {"decoder": sha256}."""
    check_decoder_fits(decoder, collection)
    radius = check_radius(radius)
    query_vectors = load_queries(queries, decoder.d_in)
    extra = {"decoder": decoder.sha256}

    def run(start, stop):
        lims, ids, distances = merge_ranges(list(each_part(
            collection, part_decoded_range, decoder, query_vectors[start:stop], radius, block,
            client=client, progress=progress)), stop - start)
        return SearchResult(distances=distances, ids=ids, lims=lims, extra=extra)

    return PreparedSearch(query_vectors, run, None, None, collection.count, batch_rows(None))


def part_decoded_range(quantizer, part, offset, decoder, queries, radius, block):
    """Every code of ``part`` (at ``offset``) whose decoded vector lies within squared L2
    ``radius`` of each raw query float32 (nq, d_in), CSR (lims, ids, distances) by
    (distance, id). Codes are decoded ``block`` at a time (memory O(block · (d_in + nq)));
    distances are computed in float64 as ‖q‖² − 2⟨q, x⟩ + ‖x‖² and clamped at 0."""
    batch = queries.astype(np.float64)
    query_norms = np.einsum("ij,ij->i", batch, batch)[:, None]
    found = []
    for first, decoded in zip(range(0, part.count, block),
                              decoded_blocks(quantizer, part, decoder, block)):
        decoded = decoded.astype(np.float64)
        dist = np.maximum(query_norms - 2 * batch @ decoded.T
                          + np.einsum("ij,ij->i", decoded, decoded)[None, :], 0.0)
        rows, cols = np.nonzero(dist <= radius)
        lims = np.zeros(len(batch) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(batch)), out=lims[1:])
        found.append((lims, part_ids(part, offset, cols + first),
                      dist[rows, cols].astype(np.float32)))
    return merge_ranges(found, len(batch))


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
