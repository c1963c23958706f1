"""Encoding: catalyze and quantize vectors into the codes a .spc file stores.

`encode_codes` does it for an array (the one implementation, used by `spreadcode.index.Index`
and by `encode_file`); `encode_file` streams a vector file into a .spc file
(``spreadcode encode``); `encode_collection` and `add_to_collection` stream vector files into
the shards of a collection directory (`spreadcode.collection_dir`; ``spreadcode encode -o DIR
--shard-size N``, ``spreadcode add``), one independent `ShardTask` per shard
(`write_shard`), the manifest written last.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, collection_dir, container, vecio
from . import store as model_store
from .errors import SpreadcodeError
from .quantizer import describe_quantizer


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


def encode_codes(catalyzer, quantizer, vectors, beam=1, precision="auto"):
    """Codes as a .spc stores them, uint8 (n, code_bytes), of vectors (n, d_in) of any real
    dtype: the catalyzer's output quantized, or a residual model's stages
    (`spreadcode.residual.ResidualCatalyzer.encode`, searched with a ``beam`` of partial
    codes when beam > 1, multiplied in bfloat16 where the device does so natively unless
    ``precision`` is "float32"; lattice and sign models always run in float32).
    SpreadcodeError for a wrong dimension, NaN or Inf, a beam for a model that has no stages
    to search, or an unknown precision."""
    from .catalyzer import catalyze
    from .residual import ResidualCatalyzer

    check_encode_options(catalyzer, beam, precision)
    if isinstance(catalyzer, ResidualCatalyzer):
        return catalyzer.encode(vectors, beam, precision)
    return quantizer.codes_to_bytes(quantizer.quantize(catalyze(catalyzer, vectors)))


def check_encode_options(catalyzer, beam, precision):
    """``beam`` as an int (`spreadcode.residual.check_beam`), or SpreadcodeError when it is
    above 1 for a catalyzer without stages to search (lattice and sign models), or when
    ``precision`` is not one of `spreadcode.residual.PRECISIONS`."""
    from .residual import ResidualCatalyzer, check_beam, check_precision

    beam = check_beam(beam)
    check_precision(precision)
    if beam > 1 and not isinstance(catalyzer, ResidualCatalyzer):
        raise SpreadcodeError("a beam search needs a residual model; this catalyzer's codes "
                              "are the nearest lattice points or signs of its output")
    return beam


def _check_dim(d_in, meta, what):
    """SpreadcodeError naming ``what`` unless vectors of dimension ``d_in`` fit the catalyzer
    of CatalyzerMeta ``meta``."""
    if d_in != meta.d_in:
        raise SpreadcodeError(
            f"{what}: vectors have dimension {d_in}, but catalyzer "
            f"{meta.sha256[:12]} expects {meta.d_in}")


def encode_file(input_path, output_path, *, model="latest", store=None, batch=65536,
                dataset=None, progress=False, beam=1, precision="auto") -> EncodeSummary:
    """Catalyze and quantize every vector of ``input_path`` into the .spc file ``output_path``
    (residual models: with a ``beam`` of partial codes, in ``precision``: `encode_codes`).

    Streams ``batch`` vectors at a time (peak memory ~ batch × d_in floats plus the
    catalyzer's forward chunk, not the input size); the output appears only when complete
    (temp file + rename). The same input and model always give byte-identical files on one
    machine (and on every machine with ``precision`` "float32" and the same BLAS kernels).
    """
    from .catalyzer import load_catalyzer

    model_file = model_store.resolve(model, store)
    vecio.check_outputs([output_path], [input_path, model_file])
    vectors = vecio.open_vectors(input_path, dataset=dataset)
    catalyzer, meta = load_catalyzer(model_file, store=store)
    _check_dim(vectors.d, meta, f"{input_path}")
    quantizer = meta.quantizer.quantizer()
    check_encode_options(catalyzer, beam, precision)
    chunks = vectors.chunks(batch)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, total=-(-vectors.n // batch), unit="batch",
                      desc=f"encode {os.path.basename(str(input_path))}")
    with container.SpcWriter(
        output_path, kind=quantizer.kind, d=quantizer.d, param=quantizer.param,
        bits=quantizer.bits, code_bytes=quantizer.code_bytes, input_dim=vectors.d,
        input_dtype=str(vectors.dtype), catalyzer_sha256=meta.sha256,
        metadata={"creator": f"spreadcode {__version__}",
                  "source": os.path.basename(str(input_path))},
    ) as writer:
        for chunk in chunks:
            writer.append(encode_codes(catalyzer, quantizer, chunk, beam, precision))
    return EncodeSummary(
        output=str(output_path), count=vectors.n, input_dim=vectors.d,
        input_bytes=vectors.n * vectors.d * 4, output_bytes=os.path.getsize(output_path),
        quantizer=describe_quantizer(quantizer), bits=quantizer.bits,
        catalyzer_sha256=meta.sha256)


@dataclass(frozen=True)
class ShardTask:
    """One shard to write, independent of every other: rows ``start:stop`` of the vector
    file ``input`` (HDF5: its ``dataset``) into the .spc file ``path``, with the ids ``ids``
    int64 (stop - start,) or, when None, ``first_id``, ``first_id + 1``, ..."""

    input: str
    dataset: str | None
    start: int
    stop: int
    path: Path
    first_id: int
    ids: np.ndarray | None = None


@dataclass(frozen=True)
class CollectionSummary:
    """What `encode_collection` / `add_to_collection` wrote: ``added`` codes in
    ``shards_added`` new shards (``output_bytes``), and the collection now: ``count`` codes
    in ``shards`` shards."""

    output: str
    added: int
    shards_added: int
    count: int
    shards: int
    input_bytes: int
    output_bytes: int
    quantizer: str
    bits: int
    catalyzer_sha256: str

    @property
    def compression_ratio(self) -> float:
        """Bytes of the float32 input vectors over bytes of the new shards."""
        return self.input_bytes / max(self.output_bytes, 1)


def plan_shards(directory, manifest, inputs, shard_size, ids=None):
    """The `ShardTask` list that adds the vector files ``inputs`` (opened `vecio.VectorFile`)
    to the collection of ``manifest`` in ``directory``: each input cut into shards of at most
    ``shard_size`` rows (a shard never spans two inputs), new file names, ids ``ids`` int64
    (total rows,) in input order or else consecutive from ``manifest.next_id``."""
    total = sum(vectors.n for vectors in inputs)
    if manifest.next_id > np.iinfo(np.int64).max - total:
        raise SpreadcodeError(f"{directory}: no room for {total} more consecutive int64 ids")
    cuts = [(vectors, start, min(start + shard_size, vectors.n))
            for vectors in inputs for start in range(0, vectors.n, shard_size)]
    names = manifest.new_names(len(cuts))
    tasks, done = [], 0
    for (vectors, start, stop), name in zip(cuts, names):
        rows = slice(done, done + stop - start)
        tasks.append(ShardTask(
            str(vectors.path), vectors.dataset, start, stop, Path(directory) / name, manifest.next_id + done,
            None if ids is None else ids[rows]))
        done = rows.stop
    return tasks


def write_shard(task, catalyzer, meta, batch=65536, vectors=None, beam=1, precision="auto"):
    """Encode the rows of `ShardTask` ``task`` with the catalyzer (torch module) of
    CatalyzerMeta ``meta`` into its shard (with ids; temp file + rename), ``batch`` rows at a
    time, read from ``vectors`` (a `vecio.VectorFile`; default: ``task.input`` opened; a
    generated source in bench/scale.py), with `encode_codes`'s ``beam`` and ``precision``.
    Returns its `collection_dir.ShardEntry`."""
    if vectors is None:
        vectors = vecio.open_vectors(task.input, dataset=task.dataset)
    quantizer = meta.quantizer.quantizer()
    count = task.stop - task.start
    ids = task.ids if task.ids is not None else \
        np.arange(task.first_id, task.first_id + count, dtype=np.int64)
    with container.SpcWriter(
        task.path, kind=quantizer.kind, d=quantizer.d, param=quantizer.param,
        bits=quantizer.bits, code_bytes=quantizer.code_bytes, input_dim=vectors.d,
        input_dtype=str(vectors.dtype), catalyzer_sha256=meta.sha256,
        metadata={"creator": f"spreadcode {__version__}", "rows": [task.start, task.stop],
                  "source": os.path.basename(str(task.input))},
        with_ids=True,
    ) as writer:
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            writer.append(encode_codes(catalyzer, quantizer,
                                       vectors.read(task.start + start, task.start + stop),
                                       beam, precision),
                          ids[start:stop])
    return collection_dir.ShardEntry(
        task.path.name, count, int(ids.min()) if count else None,
        int(ids.max()) if count else None, task.ids is not None,
        container.read_header(task.path).payload_sha256)


def encode_collection(inputs, out_dir, *, model="latest", shard_size, ids=None, id_column=None,
                      dataset=None, store=None, batch=65536, progress=False,
                      client=None, beam=1, precision="auto") -> CollectionSummary:
    """Catalyze and quantize the vector files ``inputs`` into a new collection directory
    ``out_dir`` (absent or empty): shards of at most ``shard_size`` vectors, then the
    manifest. ``ids``: an ids file or int array, one unique id per vector of all inputs in
    order (default 0, 1, ...); or ``id_column``, the integer column of each (Parquet) input
    that holds them. ``dataset``: the HDF5 dataset or Parquet column of the vectors in every
    input. Memory, all-or-nothing behaviour, ``client``, ``beam`` and ``precision``:
    `add_to_collection`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpreadcodeError(f"{out_dir}: exists and is not a directory")
    if collection_dir.manifest_path(out_dir).exists():
        raise SpreadcodeError(f"{out_dir}: already a collection; add to it with "
                              "`spreadcode add`, or remove it first")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise SpreadcodeError(f"{out_dir}: directory is not empty; a new collection needs "
                              "an empty or new directory")
    model_file = model_store.resolve(model, store)
    catalyzer, meta = _collection_model(model_file, out_dir, inputs, ids, store)
    manifest = collection_dir.Manifest(meta.sha256, meta.quantizer, meta.d_in,
                                       _check_shard_size(shard_size))
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _add(out_dir, manifest, inputs, shard_size, catalyzer, meta, ids=ids,
                    id_column=id_column, dataset=dataset, batch=batch, progress=progress,
                    client=client, beam=beam, precision=precision)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def add_to_collection(directory, inputs, *, ids=None, id_column=None, dataset=None,
                      shard_size=None, model=None, store=None, batch=65536, progress=False,
                      client=None, beam=1, precision="auto") -> CollectionSummary:
    """Append the vector files ``inputs`` to the collection ``directory`` as new shards of
    at most ``shard_size`` vectors (default: the manifest's), encoded by the collection's
    catalyzer (from ``store``, or ``model``, which must be it). ``ids``: an ids file or int
    array, one id per new vector, none already in the collection (default: consecutive after
    the largest id); or ``id_column``, the integer column of each (Parquet) input that holds
    them. ``dataset``: the HDF5 dataset or Parquet column of the vectors in every input.

    Streams ``batch`` vectors at a time. Each shard is written whole (temp file + rename) and
    the manifest is replaced last, so an error or Ctrl-C at any point leaves the previous
    collection as it was (the new shards are deleted; after SIGKILL they stay, unlisted, and
    the next add overwrites them). With a dask.distributed ``client``, the shards are
    written by its workers, one task per shard (`spreadcode.distributed.write_shards`).
    ``beam``, ``precision``: residual models' beam search and arithmetic (`encode_codes`)."""
    directory = Path(directory)
    manifest, _ = collection_dir.open_directory(directory, verify=False)
    model_file = model_store.resolve(manifest.catalyzer_sha256 if model is None else model,
                                     store)
    catalyzer, meta = _collection_model(model_file, directory, inputs, ids, store)
    if meta.sha256 != manifest.catalyzer_sha256:
        raise SpreadcodeError(f"model {meta.sha256} is not the catalyzer "
                              f"{manifest.catalyzer_sha256} of the collection {directory}")
    size = manifest.shard_size if shard_size is None else _check_shard_size(shard_size)
    return _add(directory, manifest, inputs, size, catalyzer, meta, ids=ids,
                id_column=id_column, dataset=dataset, batch=batch, progress=progress,
                client=client, beam=beam, precision=precision)


def _check_shard_size(shard_size):
    """``shard_size`` as a positive int (SpreadcodeError otherwise)."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) \
            or not 1 <= shard_size < 2**63:
        raise SpreadcodeError(f"shard size must be a positive integer, got {shard_size!r}")
    return int(shard_size)


def _collection_model(model_file, directory, inputs, ids, store):
    """(catalyzer, CatalyzerMeta) of ``model_file`` for writing into ``directory``, after
    refusing inputs that are the directory or its manifest (`vecio.check_outputs`)."""
    from .catalyzer import load_catalyzer

    if not inputs:
        raise SpreadcodeError(f"{directory}: no input vector file given")
    ids_file = ids if isinstance(ids, (str, os.PathLike)) else None
    vecio.check_outputs([directory, collection_dir.manifest_path(directory)],
                        [*inputs, model_file, ids_file])
    return load_catalyzer(model_file, store=store)


def _add(directory, manifest, inputs, shard_size, catalyzer, meta, *, ids, id_column, dataset,
         batch, progress, client, beam, precision):
    """Write the shards of ``inputs`` into ``directory``, then the manifest (see
    `add_to_collection`). Returns a `CollectionSummary`."""
    check_encode_options(catalyzer, beam, precision)
    write = functools.partial(write_shard, beam=beam, precision=precision)
    files = [vecio.open_vectors(path, dataset) for path in inputs]
    for path, vectors in zip(inputs, files):
        _check_dim(vectors.d, meta, f"{path}")
    total = sum(vectors.n for vectors in files)
    where = "ids"
    if id_column is not None:
        if ids is not None:
            raise SpreadcodeError("give ids or an id column, not both")
        where = f"id column {id_column!r}"
        ids = np.concatenate([vecio.read_ids(vectors.path, id_column) for vectors in files])
    if ids is not None:
        if isinstance(ids, (str, os.PathLike)):
            where, ids = str(ids), vecio.read_ids(ids)
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer) or ids.shape != (total,):
            raise SpreadcodeError(f"{where}: expected {total} integer ids (one per input "
                                  f"vector), got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        collection_dir.check_new_ids(directory, manifest, ids, where)
    tasks = plan_shards(directory, manifest, files, shard_size, ids)
    vecio.check_outputs([task.path for task in tasks], inputs)
    try:
        if client is None:
            entries = _write_shards(tasks, write, catalyzer, meta, batch, progress, directory)
        else:
            from .distributed import write_shards

            entries = write_shards(client, tasks, write, meta, batch, progress)
        manifest = collection_dir.with_shards(manifest, entries)
        collection_dir.write_manifest(directory, manifest)
    except BaseException:
        for task in tasks:  # new names, listed nowhere: written by this call, or stale
            task.path.unlink(missing_ok=True)
        raise
    quantizer = meta.quantizer.quantizer()
    return CollectionSummary(
        output=str(directory), added=total, shards_added=len(tasks), count=manifest.count,
        shards=len(manifest.shards), input_bytes=total * meta.d_in * 4,
        output_bytes=sum(task.path.stat().st_size for task in tasks),
        quantizer=describe_quantizer(quantizer), bits=quantizer.bits,
        catalyzer_sha256=meta.sha256)


def _write_shards(tasks, write, catalyzer, meta, batch, progress, directory):
    """``write`` (`write_shard`) of every `ShardTask` in this process, in order: their
    `ShardEntry`s."""
    if progress:
        from tqdm import tqdm
        tasks = tqdm(tasks, unit="shard", desc=f"encode into {Path(directory).name}")
    return [write(task, catalyzer, meta, batch) for task in tasks]
