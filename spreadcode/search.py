"""Encode vector files into .spc collections and search them: the library behind
``spreadcode encode`` and ``spreadcode search``.

Search is asymmetric (paper §4): the query goes through the same catalyzer as the database
but is not quantized; it is scored against the decoded codes by the quantizer's scan kernel.
Several .spc files made with the same catalyzer and quantizer are searched as one collection:
file i's local id j becomes the global id ``offset_i + j`` (offset = codes in earlier files),
unless the file stores explicit ids, which are then used as they are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import __version__, container, vecio
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

    k-NN: ``distances`` float32 (nq, k) ascending and ``ids`` int64 (nq, k), padded with
    +inf / -1. Range search: the same arrays flattened, with ``lims`` int64 (nq+1,) so that
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

    vectors = vecio.open_vectors(input_path, dataset=dataset)
    catalyzer, meta = load_catalyzer(model, store=store)
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


def open_collection(db_paths, verify=True):
    """Open .spc files that form one collection and check they are compatible.

    Returns ``(files, quantizer, catalyzer_sha256)``. All files must share the code kind,
    d, parameter and catalyzer; ``verify`` recomputes their checksums.
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
    return files, quantizer, first.catalyzer_sha256


def _global_ids(spc, offset, local_ids):
    """Map local positions int64 (...) of ``spc`` to collection ids; -1 (padding) stays -1.

    A file with stored ids maps through them; otherwise ids are ``offset + position``.
    """
    valid = local_ids >= 0
    out = np.full(local_ids.shape, -1, dtype=np.int64)
    positions = local_ids[valid]
    out[valid] = spc.ids[positions] if spc.ids is not None else positions + offset
    return out


def merge_topk(distances, ids, k):
    """Merge per-file top-k lists into one: float32/int64 (nq, k·F) -> (nq, k).

    Sorted by (distance, id) so ties go to the lower id, padding (-1, inf) last.
    """
    dist = np.concatenate(distances, axis=1)
    idx = np.concatenate(ids, axis=1)
    tie_key = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((tie_key, dist), axis=1)[:, :k]
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


def search_files(db_paths, queries, *, k=10, radius=None, model=None, store=None,
                 verify=True, hamming=False) -> SearchResult:
    """k-NN (or range) search of ``queries`` in the collection made of ``db_paths``.

    The catalyzer is found by the hash in the files' header (in the model store), or given
    as ``model`` (hash, path or "latest"); a model whose hash differs from the header's is an
    error naming both. ``queries`` is a path or a float32 array (nq, d_in). With ``radius``
    it returns every code within that distance (range search, paper Appendix C).
    ``hamming`` (sign codes only) ranks by the Hamming distance between the query's own sign
    code and the codes, instead of the asymmetric score.
    """
    from .catalyzer import catalyze, load_catalyzer

    files, quantizer, sha = open_collection(db_paths, verify=verify)
    if hamming and quantizer.kind != "sign":
        raise SpreadcodeError(f"{files[0].path}: Hamming search needs sign codes, "
                              f"not {describe_quantizer(quantizer)}")
    scan_options = {"hamming": True} if hamming else {}
    if sha is None:
        raise SpreadcodeError(f"{files[0].path}: has no catalyzer hash; it cannot be searched "
                              "with a catalyzer")
    catalyzer, meta = load_catalyzer(model if model is not None else sha, store=store)
    if meta["sha256"] != sha:
        raise SpreadcodeError(
            f"model {meta['sha256']} does not match the catalyzer {sha} that encoded "
            f"{files[0].path}")
    query_vectors = load_queries(queries, meta["arch"]["d_in"])
    catalyzed = catalyze(catalyzer, query_vectors)
    offsets = np.cumsum([0] + [spc.count for spc in files])
    if radius is not None:
        parts = []
        for spc, offset in zip(files, offsets):
            lims, local, dist = quantizer.range_search(
                quantizer.codes_from_bytes(spc.codes_bytes), catalyzed, radius, **scan_options)
            parts.append((lims, _global_ids(spc, offset, local), dist))
        lims, ids, dist = merge_ranges(parts, len(catalyzed))
        return SearchResult(distances=dist, ids=ids, lims=lims)
    if k < 1:
        raise SpreadcodeError(f"k must be at least 1, got {k}")
    dists, idss = [], []
    for spc, offset in zip(files, offsets):
        dist, local = quantizer.search(quantizer.codes_from_bytes(spc.codes_bytes),
                                       catalyzed, k, **scan_options)
        dists.append(dist)
        idss.append(_global_ids(spc, offset, local))
    dist, ids = merge_topk(dists, idss, k)
    return SearchResult(distances=dist, ids=ids)


def recall_at(ids, groundtruth, ks=(1, 10, 100)):
    """1-recall@k: share of queries whose true nearest neighbour (groundtruth[:, 0]) is
    among the first k results. ids int64 (nq, K), groundtruth int (nq, >=1) -> {k: float}."""
    ids = np.asarray(ids)
    groundtruth = np.asarray(groundtruth)
    if groundtruth.ndim != 2 or groundtruth.shape[0] != ids.shape[0]:
        raise SpreadcodeError(
            f"ground truth has {groundtruth.shape[0] if groundtruth.ndim else 0} rows, "
            f"results have {ids.shape[0]} queries")
    hit_rank = np.where(ids == groundtruth[:, :1], np.arange(ids.shape[1]), ids.shape[1])
    first_hit = hit_rank.min(axis=1) if ids.shape[1] else np.zeros(len(ids))
    return {k: float(np.mean(first_hit < k)) for k in ks if k <= max(ids.shape[1], 1)}


def write_results(path, result: SearchResult):
    """Write search results by extension, atomically.

    ``.ivecs``: ids (int32 per record) + distances in ``<stem>.distances.fvecs`` beside it;
    ``.npy``: ids + ``<stem>.distances.npy``; ``.h5``/``.hdf5``: datasets ``neighbors`` and
    ``distances`` (ann-benchmarks names) and ``lims`` for range search. Range results are
    written to .h5 only (their rows have different lengths).
    """
    path = str(path)
    stem, ext = os.path.splitext(path)
    ext = ext.lower()
    if ext in (".h5", ".hdf5"):
        arrays = {"neighbors": result.ids, "distances": result.distances}
        if result.lims is not None:
            arrays["lims"] = result.lims
        vecio.write_h5(path, arrays)
        return [path]
    if result.lims is not None:
        raise SpreadcodeError(f"{path}: range-search results go to .h5 or to stdout (TSV)")
    if ext == ".ivecs":
        if result.ids.max(initial=-1) > np.iinfo(np.int32).max:
            raise SpreadcodeError(f"{path}: ids exceed int32; write .npy or .h5 instead")
        written = [path, f"{stem}.distances.fvecs"]
        vecio.write_vectors(written[0], result.ids.astype(np.int32))
        vecio.write_vectors(written[1], result.distances.astype(np.float32))
        return written
    if ext == ".npy":
        written = [path, f"{stem}.distances.npy"]
        vecio.write_vectors(written[0], result.ids)
        vecio.write_vectors(written[1], result.distances)
        return written
    raise SpreadcodeError(f"{path}: unknown results format (use .ivecs, .npy, .h5 or stdout)")


def write_tsv(stream, result: SearchResult):
    """Write results as TSV lines ``query<TAB>rank<TAB>id<TAB>distance`` (padding skipped)."""
    if result.lims is None:
        nq, k = result.ids.shape
        query = np.repeat(np.arange(nq), k)
        rank = np.tile(np.arange(k), nq)
        ids, dist = result.ids.ravel(), result.distances.ravel()
    else:
        counts = np.diff(result.lims)
        query = np.repeat(np.arange(len(counts)), counts)
        rank = np.arange(len(query)) - np.repeat(result.lims[:-1], counts)
        ids, dist = result.ids, result.distances
    keep = ids >= 0
    stream.write("query\trank\tid\tdistance\n")
    columns = np.rec.fromarrays([query[keep], rank[keep], ids[keep], dist[keep]])
    np.savetxt(stream, columns, fmt=["%d", "%d", "%d", "%.6g"], delimiter="\t")
