"""spreadcode's rows: catalyzer + lattice / sign / OPQ, and PCA + lattice, through the library API.

Catalyzers are trained with `spreadcode.training.train_catalyzer` on the default config for
the row's code size (`default_config`), on the learn split. A trained catalyzer is cached:
key = sha256(learn float32 bytes + config JSON); the model goes into ``ctx.cache_dir`` (a
spreadcode model store, named by its own sha256) and ``<key>.json`` records that sha256 and
the training time, so a re-run reports the original training time without retraining.
Catalyzer rows go through `spreadcode.Index` (in memory): search is asymmetric, the catalyzed
query scored against the decoded codes.

The quality section's row is different: it is what a user gets, `spreadcode.Index.train`
with nothing but the code size, then the default `Index.search`; whatever the library's
defaults are at the time of the run, not a config chosen here, and never cached. Its
ablation rows (`QUALITY_LEVERS`) take that row's index, kept in memory for the run
(`_DEFAULT_INDEXES`), and change one thing each in how it encodes or searches.
"""
import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from bench import peers
from bench._methods import NotApplicable, Outcome, Stopwatch, cached_training
from spreadcode import lattice
from spreadcode.catalyzer import CatalyzerMeta, catalyze, load_catalyzer, save_catalyzer
from spreadcode.errors import SpreadcodeError
from spreadcode.index import Index
from spreadcode.quantizer import describe_quantizer, quantizer_from_spec
from spreadcode.training import default_config, train_catalyzer

QUICK_EPOCHS = 2
TABLE1_BITS = 64
FIGURE5_DOUTS = (16, 24, 32, 40)
# The plug-in catalyzer for OPQ: the widest Figure 5 catalyzer, 5 dims per sub-quantizer.
OPQ_CATALYZER_DOUT = 40
OPQ_FACTORY = "OPQ8,PQ8np"


@dataclass(frozen=True)
class TrainedCatalyzer:
    """A catalyzer ready to use: model (eval mode, CPU), its CatalyzerMeta, the seconds its
    training took and whether it came from the cache."""

    model: object
    meta: CatalyzerMeta
    train_s: float
    cached: bool

    def note(self):
        training = self.meta.training
        return (f"catalyzer d_out={self.model.d_out}, λ={self.meta.lam:g}, "
                f"epochs={training['epochs']}{' (cached)' if self.cached else ''}")


def trained_catalyzer(learn, config, ctx):
    """Train (or fetch from the cache) a catalyzer for ``config`` on learn float32 (n, d);
    quick mode trains QUICK_EPOCHS epochs, ``ctx.train_minutes`` sets a time budget."""
    if ctx.quick:
        config = dataclasses.replace(config, epochs=QUICK_EPOCHS)
    elif ctx.train_minutes is not None:
        config = dataclasses.replace(config, time_budget_s=60.0 * ctx.train_minutes)
    config_json = json.dumps(dataclasses.asdict(config), sort_keys=True)
    key = hashlib.sha256(learn.tobytes() + config_json.encode()).hexdigest()

    def save(result):
        sha, _ = save_catalyzer(result.model, result.meta, store=ctx.cache_dir)
        return sha, {"config": json.loads(config_json)}

    entry, result = cached_training(ctx.cache_dir, key, lambda: train_catalyzer(learn, config), save)
    if result is None:
        model, meta = load_catalyzer(entry["sha256"], store=ctx.cache_dir)
        return TrainedCatalyzer(model, meta, entry["train_s"], cached=True)
    return TrainedCatalyzer(result.model, result.meta, entry["train_s"], cached=False)


def _lattice_quantizer(d, bits):
    """The spherical lattice S(d, r²) with the largest r² whose code fits ``bits``."""
    try:
        return quantizer_from_spec("lattice", d, lattice.params(bits, d))
    except SpreadcodeError as err:
        raise NotApplicable(str(err)) from err


def _search_codes(trained, base, query, ctx, quantizer=None, hamming=False, note=""):
    """An `Index` of the catalyzer (and ``quantizer``, default its own): add base, search the
    k best of each query -> Outcome.

    hamming: rank sign codes by Hamming distance to the query's own sign code instead of
    the asymmetric score.
    """
    index = Index.from_catalyzer(trained.model, trained.meta, quantizer=quantizer)
    encode, search = Stopwatch(), Stopwatch()
    with encode.running():
        index.add(base)
    with search.running():
        _, ids = index.search(query, ctx.k, hamming=hamming)
    return Outcome(ids=ids, bits=index.bits, train_s=trained.train_s,
                   encode_s=encode.seconds, search_s=search.seconds,
                   note=", ".join(filter(None, [trained.note(), note])))


def _lattice_row(config):
    """Table 1 row: catalyzer trained with ``config``, coded with its lattice."""
    def method(learn, base, query, ctx):
        trained = trained_catalyzer(learn, config, ctx)
        return _search_codes(trained, base, query, ctx,
                             note=f"r²={trained.meta.quantizer.param}")
    return method


def pca_lattice(learn, base, query, ctx):
    """PCA (fit on learn) to the lattice dimension of the 64-bit default, L2-normalise,
    lattice-quantize; queries are projected and normalised, not quantized."""
    config = default_config(TABLE1_BITS)
    if base.shape[1] < config.d_out:
        raise NotApplicable(f"PCA to {config.d_out} dims needs d >= {config.d_out}")
    quantizer = config.quantizer_spec().quantizer()
    train, encode, search = Stopwatch(), Stopwatch(), Stopwatch()
    with train.running():
        mean = learn.mean(axis=0, dtype=np.float64)
        centered = learn - mean
        _, eigenvectors = np.linalg.eigh(centered.T @ centered)
        projection = np.ascontiguousarray(eigenvectors[:, ::-1][:, :config.d_out], np.float32)
        mean = mean.astype(np.float32)

    def project(x):
        y = (x - mean) @ projection
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-30)

    with encode.running():
        codes = quantizer.quantize(project(base))
    with search.running():
        _, ids = quantizer.search(codes, project(query), ctx.k)
    return Outcome(ids=ids, bits=quantizer.bits, train_s=train.seconds,
                   encode_s=encode.seconds, search_s=search.seconds,
                   note=f"PCA {config.d_out}, r²={quantizer.param}")


def catalyzer_opq(learn, base, query, ctx):
    """faiss OPQ on catalyzed vectors: the catalyzer as a plug-in preprocessor."""
    trained = trained_catalyzer(learn, default_config(TABLE1_BITS, dout=OPQ_CATALYZER_DOUT), ctx)
    prepare, encode_in, search_in = Stopwatch(), Stopwatch(), Stopwatch()
    with prepare.running():
        learn_out = catalyze(trained.model, learn)
    with encode_in.running():
        base_out = catalyze(trained.model, base)
    with search_in.running():
        query_out = catalyze(trained.model, query)
    faiss_part = peers.run_factory(OPQ_FACTORY, learn_out, base_out, query_out, ctx)
    return dataclasses.replace(
        faiss_part, train_s=trained.train_s + prepare.seconds + faiss_part.train_s,
        encode_s=encode_in.seconds + faiss_part.encode_s,
        search_s=search_in.seconds + faiss_part.search_s,
        note=f"{trained.note()} + {OPQ_FACTORY}")


def catalyzer_sign(hamming):
    """Table 2 sweep row: catalyzer with d_out = bits, sign codes."""
    def method(learn, base, query, ctx, bits):
        trained = trained_catalyzer(learn, default_config(bits, "sign"), ctx)
        return _search_codes(trained, base, query, ctx, hamming=hamming)
    return method


def catalyzer_lattice_at(d_out):
    """Figure 5 sweep row: one catalyzer of output ``d_out`` (trained with its 64-bit
    default), coded at each bit budget by the largest lattice sphere that fits."""
    def method(learn, base, query, ctx, bits):
        quantizer = _lattice_quantizer(d_out, bits)
        trained = trained_catalyzer(learn, default_config(TABLE1_BITS, dout=d_out), ctx)
        return _search_codes(trained, base, query, ctx, quantizer=quantizer,
                             note=f"r²={quantizer.param}")
    return method


# The quality row's trained indexes, for its ablation rows: (id and shape of the learn array,
# quick mode, bits) -> (Index, train seconds); one learn set's at a time (the suite's dataset
# lives for the whole run, so its id names it).
_DEFAULT_INDEXES = {}


def _default_index(learn, ctx, bits):
    """(Index, train seconds) of ``Index.train(learn, bits=bits)`` (quick mode: QUICK_EPOCHS
    epochs), trained once per learn set and code size in this process; each row `reset`s it
    before adding its codes."""
    key = (id(learn), learn.shape, ctx.quick, bits)
    if key not in _DEFAULT_INDEXES:
        for other in [other for other in _DEFAULT_INDEXES if other[:3] != key[:3]]:
            del _DEFAULT_INDEXES[other]
        options = {"epochs": QUICK_EPOCHS} if ctx.quick else {}
        train = Stopwatch()
        try:
            with train.running():
                index = Index.train(learn, bits=bits, progress=False, **options)
        except SpreadcodeError as err:
            raise NotApplicable(str(err)) from err
        _DEFAULT_INDEXES[key] = (index, train.seconds)
    return _DEFAULT_INDEXES[key]


def _default_row(beam=1, rerank=None, off_sphere=False):
    """A quality row of the default index (`_default_index`): ``add(base, beam=beam)`` and
    ``search(query, k, rerank=rerank)``; ``off_sphere``: a copy of its model whose decoders'
    output stays where they put it instead of on the learn set's sphere (NotApplicable for a
    model without one). The default row is ``_default_row()``; its train seconds are the
    training's, in every row that shares it."""
    def method(learn, base, query, ctx, bits):
        index, train_s = _default_index(learn, ctx, bits)
        meta = index.catalyzer_meta
        if off_sphere:
            if getattr(index.catalyzer, "output_norm", None) is None:
                raise NotApplicable("the learn vectors have no common norm: nothing to take "
                                    "off the sphere")
            catalyzer = copy.deepcopy(index.catalyzer)
            catalyzer.output_norm = None
            index = Index.from_catalyzer(catalyzer, dataclasses.replace(
                meta, output_norm=None, sha256=None, path=None))
        index.reset()
        encode, search = Stopwatch(), Stopwatch()
        with encode.running():
            index.add(base, beam=beam)
        with search.running():
            _, ids = index.search(query, ctx.k, rerank=rerank)
        return Outcome(ids=np.asarray(ids, dtype=np.int64), bits=index.bits, train_s=train_s,
                       encode_s=encode.seconds, search_s=search.seconds,
                       note=_epochs_note(meta, ctx), code=describe_quantizer(index.quantizer))
    return method


def _epochs_note(meta, ctx):
    """How many epochs a model of the quality rows trained: a time budget may stop it short
    of its planned count, and then its row differs from another run's of the same code."""
    epochs = meta.training.get("epochs")
    return f"epochs={epochs}{' (quick)' if ctx.quick else ''}" if epochs is not None else ""


library_default = _default_row()


@dataclass(frozen=True)
class Catalyzed:
    """Base and query float32 (n, d_out) after the reference catalyzer."""

    base: np.ndarray
    query: np.ndarray


def reference_catalyzed(ds, ctx):
    """The Table 1 catalyzer + lattice model applied to base and query -> (Catalyzed, note)."""
    trained = trained_catalyzer(ds.learn, default_config(TABLE1_BITS), ctx)
    return (Catalyzed(catalyze(trained.model, ds.base), catalyze(trained.model, ds.query)),
            trained.note())


TABLE1 = {
    "PCA + lattice": pca_lattice,
    "catalyzer + OPQ": catalyzer_opq,
    "catalyzer + lattice": _lattice_row(default_config(TABLE1_BITS)),
    "catalyzer + lattice, end-to-end": _lattice_row(
        dataclasses.replace(default_config(TABLE1_BITS), end_to_end=True)),
}
TABLE2 = {
    "catalyzer + sign (asymmetric)": catalyzer_sign(hamming=False),
    "catalyzer + sign (Hamming)": catalyzer_sign(hamming=True),
}
FIGURE5 = {f"catalyzer + lattice, d_out={d_out}": catalyzer_lattice_at(d_out)
           for d_out in FIGURE5_DOUTS}
QUALITY = {"spreadcode default": library_default}
# One change each to the default row, on its model (a residual model: the default of every
# code size). "--beam B": the encoder searches (`ResidualCatalyzer.encode`, BENCHMARKS.md
# levers 8, 33); "off the sphere": decoded as the MSE-optimal vectors (lever 30);
# "shortlist alone": the shortlist decoder's ranking, not re-ranked by the full decoder
# (levers 12, 13).
QUALITY_LEVERS = {
    "spreadcode default, --beam 2": _default_row(beam=2),
    "spreadcode default, --beam 4": _default_row(beam=4),
    "spreadcode default, off the sphere": _default_row(off_sphere=True),
    "spreadcode default, shortlist alone": _default_row(rerank=0),
}
