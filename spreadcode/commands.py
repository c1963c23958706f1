"""The library behind each CLI command: the ``*_command`` functions, which read the inputs,
run one library operation and write the outputs, and the summaries the CLI prints.

`spreadcode.cli` only parses options and prints; everything else is here or below. torch is
imported only by the commands that need it, so ``spreadcode info`` starts instantly.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import collection_dir, container, fileio, vecio
from . import store as model_store
from .distributed import open_client
from .errors import SpreadcodeError
from .index import Index
from .quantizer import QuantizerSpec, describe_quantizer, quantizer_from_spec
from .search import first_hits, recalls_of

# Epochs of the demo's model (10,000 learn vectors: about a minute on 2 cores).
DEMO_EPOCHS = 10

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


def encode_command(inputs, output, *, shard_size=None, ids=None, id_column=None, column=None,
                   model="latest", store=None, batch=65536, progress=False, workers=None,
                   scheduler=None, beam=1, precision="auto"):
    """Everything ``spreadcode encode`` does: with ``shard_size``, the vector files
    ``inputs`` into the new collection directory ``output`` (`encode.encode_collection`,
    on Dask when ``workers`` or ``scheduler`` is given: `spreadcode.distributed.open_client`)
    -> `encode.CollectionSummary`; else the one input into the .spc file ``output``
    (`encode.encode_file`) -> `encode.EncodeSummary`. ``column``: the HDF5 dataset or Parquet
    column of the vectors; ``ids`` / ``id_column``: see `encode.encode_collection`; ``beam``,
    ``precision``: residual models' beam search and arithmetic (`encode.encode_codes`)."""
    from .encode import encode_collection, encode_file

    if shard_size is not None:
        with open_client(workers, scheduler) as client:
            return encode_collection(inputs, output, model=model, shard_size=shard_size,
                                     ids=ids, id_column=id_column, dataset=column, store=store,
                                     batch=batch, progress=progress, client=client,
                                     beam=beam, precision=precision)
    if len(inputs) != 1 or ids is not None or id_column is not None \
            or workers is not None or scheduler is not None:
        raise SpreadcodeError("several inputs, ids and Dask workers need a collection "
                              "directory (a shard size)")
    return encode_file(inputs[0], output, model=model, store=store, batch=batch,
                       dataset=column, progress=progress, beam=beam, precision=precision)


def add_command(directory, inputs, *, ids=None, id_column=None, column=None, shard_size=None,
                model=None, store=None, batch=65536, progress=False, workers=None,
                scheduler=None, beam=1, precision="auto"):
    """Everything ``spreadcode add`` does: `encode.add_to_collection`, on Dask when
    ``workers`` or ``scheduler`` is given (`spreadcode.distributed.open_client`).
    ``column``: the HDF5 dataset or Parquet column of the vectors; ``beam``, ``precision``:
    residual models' beam search and arithmetic (`encode.encode_codes`)."""
    from .encode import add_to_collection

    with open_client(workers, scheduler) as client:
        return add_to_collection(directory, inputs, ids=ids, id_column=id_column,
                                 dataset=column, shard_size=shard_size, model=model,
                                 store=store, batch=batch, progress=progress, client=client,
                                 beam=beam, precision=precision)


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
                   precision="auto", store=None, stream=None, workers=None, scheduler=None,
                   progress=False) -> SearchReport:
    """Everything ``spreadcode search`` does, query batch by query batch so that memory stays
    bounded whatever the number of queries and k.

    k-NN (``k``, default 10) or range search (``radius``; no k, decoder or ground truth),
    compressed-domain, or with a decoder (re-ranking, or with ``decode_all`` decoded search),
    through `spreadcode.index.Index` (``model`` and ``decoder`` are references: hash, prefix,
    path or "latest"). An output that is one of the files read
    (.spc, collection shards and manifests, queries, ground truth, models) is refused first. Results go to ``output``
    (`results_writer`, all-or-nothing), else as TSV to the text ``stream`` unless ``gt`` is
    given. ``gt``: ground-truth ids (read before searching), scored as 1-recall@1/10/100.
    ``precision``: a residual model's decoding arithmetic (`Index.search`).
    ``workers`` / ``scheduler``: search on Dask (`spreadcode.distributed.open_client`; one
    task per (file, query batch), ``progress`` a bar over them), with identical results.
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
        sha = collection_dir.catalyzer_of(db_paths[0])
        if model is not None or sha is not None:
            model = model_store.resolve(model if model is not None else sha, store)
    vecio.check_outputs(written, [*collection_dir.files_read(db_paths), queries, gt, model,
                                  decoder])
    with open_client(workers, scheduler) as client:
        index = Index.load(db_paths, model=model, decoder=decoder, store=store, client=client)
        prepared = index.prepare_search(queries, k=k, radius=radius, rerank=rerank,
                                        decode_all=decode_all, hamming=hamming,
                                        precision=precision, progress=progress)
        nq = len(prepared.queries)
        truth = None if gt is None else vecio.read_groundtruth(gt)
        if truth is not None and truth.shape[0] != nq:
            raise SpreadcodeError(f"{gt}: ground truth has {truth.shape[0]} rows for {nq} "
                                  "queries")
        hits = []
        with results_writer(output, nq, prepared.k, stream if gt is None else None) as write:
            for start, result in prepared.batches():
                write(result)
                if truth is not None:
                    hits.append(first_hits(result.ids, truth[start:start + len(result.ids)]))
    recalls = None if truth is None else recalls_of(np.concatenate(hits), prepared.k)
    return SearchReport(written=written, recalls=recalls, k=prepared.k,
                        k_requested=prepared.k_requested, count=prepared.count)


@dataclass
class TrainSummary:
    """What ``spreadcode train`` reports: where the model went and how good it is."""

    sha256: str
    store_path: str
    output_path: str | None
    quantizer: QuantizerSpec
    lam: float | None
    val_recall: dict
    best_epoch: int
    epochs_run: int
    interrupted: bool
    n_train: int
    wall_time_s: float
    lambda_search: dict = field(default_factory=dict)
    val_mse: float | None = None
    output_norm: float | None = None
    rerank_blend: float | None = None
    chain_dim: int | None = None
    d_in: int | None = None
    crowding: float | None = None
    time_budget_s: float | None = None
    budget_rows: int | None = None

    def report(self):
        """Human-readable lines; the first one is the model hash."""
        code = describe_quantizer(self.quantizer.quantizer())
        if self.lam is None:
            code = f"residual stages: {code}  (decoders in the model)"
        else:
            code = f"{code}  lambda={self.lam:g}"
        recall = "  ".join(f"R@{k}={100 * self.val_recall[k]:.1f}"
                           for k in sorted(self.val_recall, key=int))
        lines = [
            f"model {self.sha256}",
            f"stored: {self.store_path}",
            *([f"written: {self.output_path}"] if self.output_path else []),
            f"quantizer: {code}",
            *([] if self.lam is not None else [
                f"decoded onto the sphere of norm {self.output_norm:.6g} (the learn vectors' "
                f"constant norm)" if self.output_norm is not None
                else "decoded vectors keep their norm (the learn vectors' norms vary)"]),
            *([f"trained against decoded vectors crowding denser regions than their own "
               f"vectors (weight {self.crowding:g})"] if self.crowding else []),
            *([f"stages read the {self.d_in}-d inputs through a learned projection to "
               f"{self.chain_dim} dimensions (inputs wider than {self.chain_dim}: encoding "
               "costs what it does at that width)"] if self.chain_dim is not None else []),
            *([f"re-ranking: the full decoder's distance + {self.rerank_blend:.3g} x the "
               "shortlist decoder's (their least-squares mix on the held-out vectors)"]
              if self.rerank_blend is not None else []),
            *(["lambda search (val R@10): " + ", ".join(
                f"{lam}: {100 * r:.1f}" for lam, r in self.lambda_search.items())]
              if self.lambda_search else []),
            f"validation: {recall} (best epoch {self.best_epoch} of {self.epochs_run}"
            + (f", held-out MSE {self.val_mse:.4g})" if self.val_mse is not None else ")"),
            f"trained on {self.n_train} vectors in {self.wall_time_s:.0f} s"
            + self._budget()
            + ("  [interrupted: best model so far kept]" if self.interrupted else ""),
        ]
        return "\n".join(lines)

    def _budget(self):
        """The report's note on the time budget (empty without one)."""
        if self.time_budget_s is None:
            return ""
        grown = (f", grown with the learn set beyond {self.budget_rows:,} vectors"
                 if self.budget_rows is not None and self.n_train > self.budget_rows else "")
        return f" (time budget {self.time_budget_s / 60:.1f} min{grown})"


def _load_learn(learn_path):
    """LEARN_FILE through `spreadcode.vecio`, or the bundled sample's learn set when None."""
    if learn_path is None:
        from .sample import load_sample

        return load_sample().learn
    return vecio.read_vectors(learn_path)


def train_command(learn_path=None, *, bits=64, quantizer="residual", dout=None, r2=None, lam=None,
                  epochs=None, time_budget_min=None, device="auto", output=None, store=None,
                  seed=0, progress=True):
    """Everything ``spreadcode train`` does: read, train, save into the store (and to ``output``).

    learn_path: vector file (.fvecs/.bvecs/.npy/.h5) or None for the bundled sample; the
    options: see `spreadcode.training.command_config`. Returns a TrainSummary (hash, paths, validation recalls,
    wall time).
    """
    from .catalyzer import save_catalyzer
    from .training import command_config, train_catalyzer

    started = time.monotonic()
    config = command_config(bits, quantizer, dout=dout, r2=r2, lam=lam, epochs=epochs,
                            time_budget_min=time_budget_min, device=device, seed=seed)
    vecio.check_outputs([output], [learn_path])
    learn = _load_learn(learn_path)
    result = train_catalyzer(learn, config, progress=progress, auto_lambda=lam == "auto")
    sha, stored = save_catalyzer(result.model, result.meta, path=output, store=store)
    training = result.meta.training
    return TrainSummary(
        sha256=sha, store_path=str(stored), output_path=None if output is None else str(output),
        quantizer=result.meta.quantizer, lam=result.meta.lam, val_recall=training["val_recall"],
        best_epoch=training["best_epoch"], epochs_run=training["epochs"], interrupted=training["interrupted"],
        n_train=training["n_train"], wall_time_s=time.monotonic() - started,
        lambda_search=training.get("lambda_search", {}), val_mse=training.get("val_mse"),
        output_norm=result.meta.output_norm, rerank_blend=result.meta.rerank_blend,
        chain_dim=result.meta.chain_dim, d_in=result.meta.d_in,
        crowding=training.get("crowding"), time_budget_s=training.get("time_budget_s"),
        budget_rows=training.get("budget_rows"))


@dataclass(frozen=True)
class DecoderSummary:
    """What ``spreadcode train-decoder`` reports."""

    sha256: str
    store_path: str
    output_path: str | None
    kind: str
    hidden: int | None
    epochs: int | None
    best_epoch: int | None
    catalyzer_sha256: str
    quantizer: str
    d_in: int
    n_train: int
    n_val: int
    val_mse: float
    baseline_val_mse: float
    blend: float
    blend_calibration: dict
    calibration_queries: int
    calibration_database: int
    wall_time_s: float

    def report(self):
        """Human-readable lines; the first one is the decoder hash."""
        from .decoders import CALIBRATION_SHORTLIST

        arch = "closed-form least squares" if self.kind == "linear" else \
            f"linear + MLP correction, hidden {self.hidden}, epoch {self.best_epoch} of {self.epochs} " \
            f"kept (lowest held-out error)"
        gain = 100 * (self.val_mse / self.baseline_val_mse - 1) if self.baseline_val_mse > 0 else 0.0
        calibration = self.blend_calibration
        recalls = calibration["recall_at_1"]
        return "\n".join([
            f"decoder {self.sha256}",
            f"stored: {self.store_path}",
            *([f"written: {self.output_path}"] if self.output_path else []),
            f"{self.kind} decoder ({arch}): {self.quantizer} codes -> {self.d_in} dims, "
            f"catalyzer {self.catalyzer_sha256[:12]}",
            f"held-out squared error per vector ({self.n_val} vectors): decoder "
            f"{self.val_mse:.5f}, best linear map {self.baseline_val_mse:.5f} ({gain:+.1f}%)",
            f"held-out 1-recall@1 ({self.calibration_queries} queries, {self.calibration_database} "
            f"database vectors, shortlist {CALIBRATION_SHORTLIST}): compressed order "
            f"{100 * recalls['compressed']:.1f}, decoded distance {100 * recalls['decoded']:.1f}, "
            f"decoded + {self.blend:.4g} x compressed distance {100 * recalls['blended']:.1f} "
            f"(the default blend: {calibration['weight']:g} x distance-unit ratio "
            f"{calibration['scale']:.4g})",
            f"trained on {self.n_train} vectors in {self.wall_time_s:.0f} s",
        ])


def _load_catalyzer_and_learn(model, learn_path, output, store):
    """(catalyzer, its meta, learn vectors) for a command writing ``output``; SpreadcodeError
    on a dimension mismatch, or first when ``output`` is the learn file or the catalyzer."""
    from .catalyzer import load_catalyzer

    model_file = model_store.resolve(model, store)
    vecio.check_outputs([output], [learn_path, model_file])
    catalyzer, catalyzer_meta = load_catalyzer(model_file, store=store)
    learn = vecio.read_vectors(learn_path)
    if learn.ndim != 2 or learn.shape[1] != catalyzer.d_in:
        raise SpreadcodeError(f"{learn_path}: vectors have dimension {learn.shape[-1]}, but catalyzer "
                              f"{catalyzer_meta.sha256[:12]} expects {catalyzer.d_in}")
    return catalyzer, catalyzer_meta, learn


def train_decoder_command(learn_path, *, model, kind="mlp", output=None, store=None, epochs=None,
                          seed=0, progress=True) -> DecoderSummary:
    """Everything ``spreadcode train-decoder`` does: read LEARN_FILE, encode it with the
    catalyzer ``model`` (hash, prefix, path or "latest") and its quantizer, train a ``kind``
    decoder (`train_decoder`), save it into the store (and to ``output``)."""
    from .decoders import DECODER_KINDS, save_decoder, train_decoder

    started = time.monotonic()
    if kind not in DECODER_KINDS:
        raise SpreadcodeError(f"unknown decoder kind {kind!r}; choose one of {', '.join(DECODER_KINDS)}")
    catalyzer, catalyzer_meta, learn = _load_catalyzer_and_learn(model, learn_path, output, store)
    net, meta = train_decoder(learn, catalyzer, catalyzer_meta, kind=kind, epochs=epochs,
                              seed=seed, progress=progress)
    sha, stored = save_decoder(net, meta, path=output, store=store)
    training = meta["training"]
    return DecoderSummary(
        sha256=sha, store_path=str(stored), output_path=None if output is None else str(output),
        kind=kind, hidden=net.hidden, epochs=training["epochs"], best_epoch=training["best_epoch"],
        catalyzer_sha256=meta["catalyzer"],
        quantizer=describe_quantizer(quantizer_from_spec(**meta["quantizer"])), d_in=net.d_in,
        n_train=training["n_train"], n_val=training["n_val"], val_mse=training["val_mse"],
        baseline_val_mse=training["baseline_val_mse"], blend=meta["decoder"]["blend"],
        blend_calibration=training["blend_calibration"], calibration_queries=training["calibration_queries"],
        calibration_database=training["calibration_database"], wall_time_s=time.monotonic() - started)


@dataclass
class FineTuneSummary:
    """What `fine_tune_command` did, for the CLI to print."""

    sha256: str
    store_path: str
    output_path: str | None
    source_sha256: str
    epochs: int
    best_epoch: int
    val_mse_curve: list
    wall_time_s: float

    def report(self):
        """Human-readable lines; the first one is the new catalyzer's hash."""
        kept = (f"epoch {self.best_epoch} of {self.epochs} kept" if self.best_epoch
                else "no epoch improved it: the weights are the original ones")
        return "\n".join([
            f"catalyzer {self.sha256}",
            f"stored: {self.store_path}",
            *([f"written: {self.output_path}"] if self.output_path else []),
            f"fine-tuned from {self.source_sha256[:12]} for reconstruction: held-out squared "
            f"error of decoded codes {self.val_mse_curve[0]:.5f} -> "
            f"{self.val_mse_curve[self.best_epoch]:.5f} ({kept})",
            "its codes differ from the original's: encode with it, then `spreadcode "
            "train-decoder` for it",
            f"took {self.wall_time_s:.0f} s",
        ])


def fine_tune_command(learn_path, *, model, epochs=None, output=None, store=None,
                      seed=0, progress=True) -> FineTuneSummary:
    """Everything ``spreadcode fine-tune`` does: read LEARN_FILE, fine-tune the catalyzer
    ``model`` (hash, prefix, path or "latest") with `fine_tune_catalyzer` (``epochs`` None:
    `spreadcode.finetune.FINE_TUNE_EPOCHS`), save the new catalyzer into the store (and to ``output``)."""
    from .catalyzer import save_catalyzer
    from .finetune import FINE_TUNE_EPOCHS, fine_tune_catalyzer

    started = time.monotonic()
    epochs = FINE_TUNE_EPOCHS if epochs is None else epochs
    catalyzer, catalyzer_meta, learn = _load_catalyzer_and_learn(model, learn_path, output, store)
    tuned, meta, curve = fine_tune_catalyzer(learn, catalyzer, catalyzer_meta, epochs=epochs,
                                             seed=seed, progress=progress)
    sha, stored = save_catalyzer(tuned, meta, path=output, store=store)
    return FineTuneSummary(
        sha256=sha, store_path=str(stored), output_path=None if output is None else str(output),
        source_sha256=catalyzer_meta.sha256, epochs=epochs,
        best_epoch=meta.training["fine_tuned"]["best_epoch"], val_mse_curve=curve,
        wall_time_s=time.monotonic() - started)


@dataclass(frozen=True)
class FileReport:
    """Rows of (field, value) for display, and whether the payload checksum matched."""

    path: str
    rows: list
    ok: bool

    def raise_if_corrupt(self):
        """Raise SpreadcodeError when the payload checksum did not match."""
        if not self.ok:
            raise SpreadcodeError(f"{self.path}: payload checksum mismatch: the file is corrupted")


def info_command(path, store_path=None) -> FileReport:
    """Everything ``spreadcode info`` does: describe the .spc file or collection directory
    at ``path`` (`collection_report`).

    Adds to the container's own summary whether the catalyzer named in the header is in the
    model store, and which learned decoders exist there for it. A corrupt header raises
    SpreadcodeError; a corrupt payload is reported in the rows and by ``ok=False``, so the
    user sees the header before the error.
    """
    if Path(path).is_dir():
        report = collection_report(path)
        sha = collection_dir.catalyzer_of(path)
    else:
        spc = container.open_spc(path, verify=False)
        report = FileReport(path=str(path), rows=list(container.describe(spc).items()),
                            ok=spc.checksum_ok)
        sha = spc.header.catalyzer_sha256
    rows = report.rows
    if sha is not None:
        catalyzers = [a for a in model_store.list_artifacts("catalyzer", store_path) if a.sha256 == sha]
        rows.append(("catalyzer in store", str(catalyzers[0].path) if catalyzers
                     else f"no (not in {model_store.store_dir(store_path)})"))
        decoders = [a for a in model_store.list_artifacts("decoder", store_path)
                    if a.meta.get("catalyzer") == sha]
        rows.append(("decoders", ", ".join(
            f"{a.sha256[:12]} ({_decoder_kind(a.meta)})" for a in decoders) or "none"))
    return FileReport(path=report.path, rows=rows, ok=report.ok)


def collection_report(directory) -> FileReport:
    """The summary rows of the collection ``directory``: manifest and shard headers checked
    (`collection_dir.open_directory`), every shard's payload checksum computed; the
    report's ``path`` is the first corrupt shard, if any."""
    from .quantizer import describe_code

    manifest, files = collection_dir.open_directory(directory, verify=False)
    code = manifest.code
    quantizer = code.quantizer()
    bad = [spc for spc in files if not spc.checksum_ok]
    ranges = [(s.first_id, s.last_id) for s in manifest.shards if s.last_id is not None]
    explicit = sum(shard.explicit_ids for shard in manifest.shards)
    rows = [
        ("collection", str(directory)),
        ("format", f"{collection_dir.FORMAT} {collection_dir.VERSION}"),
        ("code", describe_code(code.kind, code.d, code.param)),
        ("bits per code", quantizer.bits),
        ("bytes per code", quantizer.code_bytes),
        ("shards", len(files)),
        ("vectors", manifest.count),
        ("ids", (f"{min(r[0] for r in ranges)} to {max(r[1] for r in ranges)}"
                 if ranges else "none") + (f" ({explicit} shards with explicit ids)"
                                           if explicit else "")),
        ("input dimension", manifest.input_dim),
        ("shard size", manifest.shard_size),
        ("catalyzer sha256", manifest.catalyzer_sha256),
        ("size", sum(spc.header.file_size for spc in files)),
        ("checksums", f"ok ({len(files)} shards)" if not bad else "MISMATCH in "
         + ", ".join(spc.path.name for spc in bad) + " (corrupted)"),
    ]
    return FileReport(path=str(bad[0].path if bad else directory), rows=rows, ok=not bad)


def _decoder_kind(meta):
    """The kind a decoder's metadata states, or "?" when it states none it could be."""
    spec = meta.get("decoder")
    kind = spec.get("kind") if isinstance(spec, dict) else None
    return kind if isinstance(kind, str) else "?"


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured."""

    model_sha256: str
    quantizer: str
    n_base: int
    n_query: int
    recall: dict
    compression_ratio: float
    train_s: float
    encode_s: float
    search_s: float

    def text(self):
        """A short human-readable report."""
        recall = "  ".join(f"1-recall@{k}={100 * v:.1f}%" for k, v in self.recall.items())
        return "\n".join([
            f"catalyzer {self.model_sha256[:12]} ({self.quantizer}), trained in "
            f"{self.train_s:.0f} s",
            f"encoded {self.n_base} vectors in {self.encode_s:.1f} s: "
            f"{self.compression_ratio:.1f}x smaller than float32",
            f"searched {self.n_query} queries in {self.search_s:.2f} s: {recall}",
        ])


def demo_command(epochs=None, progress=True) -> DemoReport:
    """Everything ``spreadcode demo`` does: train the default 64-bit model on the bundled
    sample's 10,000 learn vectors (``epochs``, default DEMO_EPOCHS), encode its 10,000 base
    vectors into a .spc file, search its 500 queries; everything in a temporary directory
    (model store included), so the user's own store is left untouched."""
    from .encode import encode_file
    from .sample import load_sample
    from .search import recall_at

    sample = load_sample()
    with tempfile.TemporaryDirectory(prefix="spreadcode-demo-") as tmp:
        tmp = Path(tmp)
        store = tmp / "models"
        base_path = tmp / "base.fvecs"
        vecio.write_vectors(base_path, sample.base)
        started = time.monotonic()
        trained = train_command(None, bits=64, epochs=epochs or DEMO_EPOCHS, store=store,
                                progress=progress)
        trained_at = time.monotonic()
        encoded = encode_file(base_path, tmp / "base.spc", model=trained.sha256, store=store,
                              progress=progress)
        encoded_at = time.monotonic()
        _, ids = Index.load(tmp / "base.spc", store=store).search(sample.query, k=100)
        searched_at = time.monotonic()
    return DemoReport(
        model_sha256=trained.sha256, quantizer=encoded.quantizer, n_base=encoded.count,
        n_query=len(sample.query), recall=recall_at(ids, sample.groundtruth),
        compression_ratio=encoded.compression_ratio, train_s=trained_at - started,
        encode_s=encoded_at - trained_at, search_s=searched_at - encoded_at)
