"""The library behind each CLI command: the ``*_command`` functions, which read the inputs,
run one library operation and write the outputs, and the summaries the CLI prints.

`spreadcode.cli` only parses options and prints; everything else is here or below.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import container, fileio, vecio
from . import store as model_store
from .errors import SpreadcodeError
from .index import Index
from .search import first_hits, recalls_of

TSV_HEADER = "query\trank\tid\tdistance\n"


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
    compressed-domain, or with a decoder (re-ranking, or with ``decode_all`` decoded search),
    through `spreadcode.index.Index` (``model`` and ``decoder`` are references: hash, prefix,
    path or "latest"). An output that is one of the files read
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
    index = Index.load(db_paths, model=model, decoder=decoder, store=store)
    prepared = index.prepare_search(queries, k=k, radius=radius, rerank=rerank,
                                    decode_all=decode_all, hamming=hamming)
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
