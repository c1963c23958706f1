"""Learned decoders at 64 bits: recall without and with them, and what re-ranking costs.

    python bench/decoders.py [DATASET] [--model HASH|PATH] [--sign-model HASH|PATH]
                             [--store DIR] [--quick] [--out bench/results] [--cache bench/cache]

DATASET: a directory with learn/base/query and groundtruth.ivecs, or an ann-benchmarks .hdf5
(see bench/_data.py); default /work/shared/data/wordnet-minilm96. The lattice and sign
catalyzers come from --model / --sign-model (hash or path, in --store), or are trained with the
library defaults for 64 bits (`spreadcode.training.default_config`) and cached under --cache,
shared with bench/suite.py. Decoders are trained on the learn split with the library defaults
(`spreadcode.decoders.train_decoder`) and cached there too.

Also the ``decoders`` section of bench/suite.py (`run` measures, `markdown` renders). Run
standalone, the tables are printed and written as markdown to ``<out>/<dataset>/decoders.md``:

1. 1-recall@1/10/100 at k=100 of: catalyzer + lattice, alone and re-ranked by each decoder
   (`spreadcode.Index.search` on .spc files, default shortlist), and with every code
   decoded; catalyzer + sign with Hamming ranking, the asymmetric scan, and every code decoded
   (``decode_all=True``); the lattice catalyzer fine-tuned with a decoder (`spreadcode fine-tune`,
   cached too), alone and re-ranked by its own MLP decoder; faiss ITQ (±1 bits) and PQ
   (one-hot codes) with a linear decoder
   (`spreadcode.decoders.fit_linear`), re-ranking their own shortlist or decoding every code.
2. The shortlist size N of re-ranking with the MLP decoder: R@1/R@10 at k=10 and the re-ranking
   cost per query (search with re-ranking minus the shortlist search alone, over all queries).
"""
import argparse
import dataclasses
import datetime
import hashlib
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench import peers  # noqa: E402
from bench._data import load_dataset, quick_slice  # noqa: E402
from bench._methods import Context, cached_training  # noqa: E402
from bench._spreadcode_methods import QUICK_EPOCHS, trained_catalyzer  # noqa: E402
from spreadcode import decoders, finetune, store as model_store  # noqa: E402
from spreadcode.catalyzer import (CatalyzerMeta, catalyze, load_catalyzer,  # noqa: E402
                                  save_catalyzer)
from spreadcode.knn import exact_knn  # noqa: E402
from spreadcode.encode import encode_file  # noqa: E402
from spreadcode.index import Index  # noqa: E402
from spreadcode.search import default_rerank, recall_at, rerank_candidates  # noqa: E402
from spreadcode.training import default_config  # noqa: E402

DEFAULT_DATASET = Path("/work/shared/data/wordnet-minilm96")
BITS = 64
K = 100
RECALL_KS = (1, 10, 100)
SHORTLISTS = (10, 20, 50, 100, 200, 500, 1000)
SWEEP_K = 10


@dataclasses.dataclass
class Row:
    """One line of the recall table: 1-recall@k {"k": float}, search seconds (all queries), note."""

    method: str
    recall: dict
    search_s: float
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Setup:
    """A catalyzer, the .spc file of the base it encoded, and the store holding both + decoders."""

    model: object
    meta: CatalyzerMeta
    spc: Path
    store: Path
    train_s: float


def cached_decoder(learn, setup, kind, ctx):
    """Train (or fetch from ctx.cache_dir) a ``kind`` decoder of setup's catalyzer on learn.

    Cache key: sha256 of (catalyzer hash, kind, quick epochs, blend rule, learn float32 bytes);
    training is seeded, so the cached artifact is what training would produce up to the CPU's
    run-to-run float noise (about ±0.5 R@1 after re-ranking). Returns (sha256, training
    seconds)."""
    epochs = QUICK_EPOCHS if ctx.quick and kind == "mlp" else None
    blend_rule = f"blend {decoders.BLEND_WEIGHT} x unit ratio of top {decoders.BLEND_SCALE_TOP}"
    key = hashlib.sha256(f"{setup.meta.sha256}-{kind}-{epochs}-{blend_rule}".encode()
                         + learn.tobytes()).hexdigest()

    def train():
        return decoders.train_decoder(learn, setup.model, setup.meta, kind=kind, epochs=epochs,
                                      progress=True)

    def save(trained):
        net, meta = trained
        sha, _ = decoders.save_decoder(net, meta, store=ctx.cache_dir)
        return sha, {"training": meta["training"]}

    entry, _ = cached_training(ctx.cache_dir, f"decoder-{key}", train, save)
    model_store.save_artifact(ctx.cache_dir / f"{entry['sha256']}.safetensors", setup.store)
    return entry["sha256"], entry["train_s"]


def cached_fine_tune(learn, setup, ctx):
    """Fine-tune setup's catalyzer (`finetune.fine_tune_catalyzer`, library defaults; 1 epoch
    in quick mode) or fetch it from ctx.cache_dir. Returns (sha256 of the new catalyzer in
    ctx.cache_dir, training seconds)."""
    epochs = 1 if ctx.quick else finetune.FINE_TUNE_EPOCHS
    key = hashlib.sha256(f"{setup.meta.sha256}-fine-tune-{epochs}".encode() + learn.tobytes()).hexdigest()

    def train():
        return finetune.fine_tune_catalyzer(learn, setup.model, setup.meta, epochs=epochs,
                                            progress=True)

    def save(tuned):
        model, meta, _ = tuned
        sha, _ = save_catalyzer(model, meta, store=ctx.cache_dir)
        return sha, {"fine_tuned": meta.training["fine_tuned"]}

    entry, _ = cached_training(ctx.cache_dir, f"fine-tune-{key}", train, save)
    return entry["sha256"], entry["train_s"]


def prepare(ds, model_ref, store, config, ctx, work):
    """Load (``model_ref``) or train (``config``) a catalyzer, copy it into the work store
    ``work``/store, and encode the base (``work``/../base.npy, written by the first call) into a
    .spc file in ``work`` -> Setup."""
    work.mkdir()
    work_store = work / "store"
    if model_ref is not None:
        model, meta = load_catalyzer(model_ref, store=store)
        model_store.save_artifact(meta.path, work_store)
        train_s = float("nan")
    else:
        trained = trained_catalyzer(ds.learn, config, ctx)
        sha, _ = save_catalyzer(trained.model, trained.meta, store=work_store)
        model, meta = load_catalyzer(sha, store=work_store)
        train_s = trained.train_s
    base_file = work.parent / "base.npy"
    if not base_file.is_file():
        np.save(base_file, ds.base)
    spc = work / f"base-{meta.sha256[:12]}.spc"
    encode_file(base_file, spc, model=meta.sha256, store=work_store)
    return Setup(model, meta, spc, work_store, train_s)


def timed(function, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def search_spc(setup, query, k, **options):
    """(distances, ids) of `Index.load` (setup's .spc, its store) + `Index.search`;
    ``decoder`` and the search options go to them."""
    decoder = options.pop("decoder", None)
    index = Index.load(setup.spc, decoder=decoder, store=setup.store)
    return index.search(query, k, **options)


def recall(ids, ds):
    """1-recall@1/10/100 as {"k": float} (string keys, as JSON keeps them)."""
    return {str(k): v for k, v in recall_at(ids, ds.groundtruth, RECALL_KS).items()}


def catalyzer_rows(ds, lattice, sign, decoder_shas):
    """Table 1 rows of the catalyzer codes: lattice and sign, without and with decoders."""
    rows = []
    k = min(K, ds.base.shape[0])
    (_, ids), seconds = timed(search_spc, lattice, ds.query, k)
    rows.append(Row("catalyzer + lattice", recall(ids, ds), seconds,
                    f"r²={lattice.meta.quantizer.param}"))
    for kind, blend in (("linear", 0.0), ("linear", None), ("mlp", 0.0), ("mlp", None)):
        rows.append(rerank_row("catalyzer + lattice", lattice, decoder_shas[("lattice", kind)],
                               kind, blend, ds, k))
    (_, ids), seconds = timed(search_spc, lattice, ds.query, k,
                              decoder=decoder_shas[("lattice", "mlp")], decode_all=True)
    rows.append(Row("catalyzer + lattice, mlp decoder, every code decoded", recall(ids, ds),
                    seconds))
    quantizer = sign.meta.quantizer.quantizer()
    codes = quantizer.quantize(catalyze(sign.model, ds.base))
    (_, ids), seconds = timed(lambda: quantizer.search(codes, catalyze(sign.model, ds.query), k,
                                                       hamming=True))
    rows.append(Row("catalyzer + sign (Hamming)", recall(ids, ds), seconds, f"d={quantizer.d}"))
    (_, ids), seconds = timed(search_spc, sign, ds.query, k)
    rows.append(Row("catalyzer + sign (asymmetric)", recall(ids, ds), seconds))
    for kind in decoders.DECODER_KINDS:
        (_, ids), seconds = timed(search_spc, sign, ds.query, k,
                                  decoder=decoder_shas[("sign", kind)], decode_all=True)
        rows.append(Row(f"catalyzer + sign, {kind} decoder, every code decoded",
                        recall(ids, ds), seconds))
    rows.append(rerank_row("catalyzer + sign (asymmetric)", sign, decoder_shas[("sign", "mlp")],
                           "mlp", None, ds, k))
    return rows


def fine_tuned_rows(ds, tuned, decoder_sha):
    """Rows of the fine-tuned lattice catalyzer: compressed-domain search, then MLP re-ranking."""
    k = min(K, ds.base.shape[0])
    (_, ids), seconds = timed(search_spc, tuned, ds.query, k)
    return [Row("catalyzer + lattice, fine-tuned with a decoder", recall(ids, ds), seconds,
                "spreadcode fine-tune"),
            rerank_row("catalyzer + lattice, fine-tuned with a decoder", tuned, decoder_sha, "mlp",
                       None, ds, k)]


def rerank_row(name, setup, decoder_sha, kind, blend, ds, k):
    """The row of decoder re-ranking with the default shortlist; blend None = the decoder's
    calibrated weight."""
    (_, ids), seconds = timed(search_spc, setup, ds.query, k, decoder=decoder_sha, blend=blend)
    weight = decoders.load_decoder(decoder_sha, store=setup.store).blend if blend is None else blend
    how = "decoded distance only" if blend == 0 else f"blend {weight:.3g}"
    return Row(f"{name}, {kind} decoder re-rank, {how}", recall(ids, ds), seconds,
               f"shortlist N={default_rerank(k)}")


def _faiss_rows(name, factory, features, ds, k):
    """A faiss code, then a linear decoder fitted on its learn codes: the faiss search alone,
    its shortlist re-ranked with the decoder, and every code decoded.

    features(index, x) -> the decoder's input for the codes of x (float or uint8 (n, f)).
    """
    import faiss

    index = faiss.index_factory(ds.base.shape[1], factory)
    index.train(ds.learn)
    index.add(ds.base)
    (_, ids), seconds = timed(index.search, ds.query, k)
    rows = [Row(name, recall(ids, ds), seconds)]
    weight, bias = decoders.fit_linear(features(index, ds.learn), ds.learn)
    start = time.perf_counter()
    decoded = features(index, ds.base) @ weight.T + bias
    decode_s = time.perf_counter() - start
    shortlist_n = default_rerank(k)
    (_, shortlist), shortlist_s = timed(index.search, ds.query, shortlist_n)
    (_, ids), rerank_s = timed(rerank_candidates, ds.query, shortlist.astype(np.int64),
                               lambda unique: decoded[unique], k)
    rows.append(Row(f"{name}, linear decoder re-rank", recall(ids, ds),
                    shortlist_s + decode_s + rerank_s, f"shortlist N={shortlist_n}"))
    (_, ids), seconds = timed(exact_knn, decoded, ds.query, k)
    rows.append(Row(f"{name}, linear decoder, every code decoded", recall(ids, ds),
                    decode_s + seconds))
    return rows


def _itq_bits(index, x):
    """ITQ codes as ±1 float32 (n, 64)."""
    return np.unpackbits(index.sa_encode(x), axis=1).astype(np.float32) * 2 - 1


def _pq_one_hot(index, x):
    """PQ codes as one-hot uint8 (n, M·256)."""
    codes = index.sa_encode(x)
    one_hot = np.zeros((codes.shape[0], codes.shape[1] * 256), dtype=np.uint8)
    one_hot[np.arange(codes.shape[0])[:, None], np.arange(codes.shape[1]) * 256 + codes] = 1
    return one_hot


def faiss_rows(ds):
    """ITQ64,LSH (only when 64 <= d, as in the paper) and PQ8 (64 bits each) without and with
    a linear decoder; [] without faiss."""
    if not peers.available():
        return []
    k = min(K, ds.base.shape[0])
    itq = (_faiss_rows("ITQ64,LSH (Hamming)", f"ITQ{BITS},LSH", _itq_bits, ds, k)
           if BITS <= ds.base.shape[1] else [])
    return itq + _faiss_rows("PQ8 (ADC)", f"PQ{BITS // 8}", _pq_one_hot, ds, k)


def shortlist_sweep(ds, lattice, decoder_sha):
    """R@1/R@10 at k=10 and re-ranking cost per query for each shortlist size N, with the
    decoded distance alone and with the decoder's calibrated blend."""
    rows = []
    decoder = decoders.load_decoder(decoder_sha, store=lattice.store)
    for n_short in [n for n in SHORTLISTS if SWEEP_K <= n <= ds.base.shape[0]]:
        _, shortlist_s = timed(search_spc, lattice, ds.query, n_short)
        entry = {"N": n_short}
        for label, blend in (("decoded", 0.0), ("blend", None)):
            (_, ids), seconds = timed(search_spc, lattice, ds.query, SWEEP_K, decoder=decoder,
                                      rerank=n_short, blend=blend)
            entry[label] = {"recall": recall(ids, ds),
                            "rerank_ms": 1000 * max(seconds - shortlist_s, 0.0) / ds.query.shape[0]}
        rows.append(entry)
    return rows, decoder.blend


def _pct(value):
    return "" if value is None else f"{100 * value:.1f}"


def run(ds, ctx, model=None, sign_model=None, store=None):
    """Every measurement of this benchmark on ``ds`` -> JSON-able dict (the suite's
    ``decoders`` section): "rows" (method, recall {"k": float}, search_s, note), "decoders"
    (code, kind, training metadata, blend, train_s) and "sweep" (blend, rows)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lattice = prepare(ds, model, store, default_config(BITS), ctx, work / "lattice")
        sign = prepare(ds, sign_model, store, default_config(BITS, "sign"), ctx, work / "sign")
        decoder_shas, decoder_info = {}, []
        for code, setup in (("lattice", lattice), ("sign", sign)):
            for kind in decoders.DECODER_KINDS:
                sha, train_s = cached_decoder(ds.learn, setup, kind, ctx)
                decoder_shas[(code, kind)] = sha
                decoder_info.append(_decoder_info(code, kind, sha, setup, train_s))
        tuned_sha, tune_s = cached_fine_tune(ds.learn, lattice, ctx)
        tuned = prepare(ds, tuned_sha, ctx.cache_dir, None, ctx, work / "tuned")
        tuned_decoder, tuned_decoder_s = cached_decoder(ds.learn, tuned, "mlp", ctx)
        decoder_info.append(_decoder_info("lattice, fine-tuned", "mlp", tuned_decoder, tuned,
                                          tune_s + tuned_decoder_s))
        rows = (catalyzer_rows(ds, lattice, sign, decoder_shas)
                + fine_tuned_rows(ds, tuned, tuned_decoder) + faiss_rows(ds))
        sweep, blend = shortlist_sweep(ds, lattice, decoder_shas[("lattice", "mlp")])
    return {"bits": BITS, "k": min(K, ds.base.shape[0]),
            "rows": [dataclasses.asdict(row) for row in rows], "decoders": decoder_info,
            "sweep": {"k": SWEEP_K, "blend": blend, "rows": sweep}}


def _decoder_info(code, kind, sha, setup, train_s):
    """The decoders-table entry of one trained decoder (JSON-able)."""
    decoder = decoders.load_decoder(sha, store=setup.store)
    return {"code": code, "kind": kind, "sha256": sha, **decoder.spec.training,
            "blend": decoder.blend, "train_s": train_s}


def markdown(section):
    """The ``decoders`` section (from `run`, stamped with "date" and "command") as markdown
    lines, under a level-2 title."""
    lines = [f"## Learned decoders, {section['bits']} bits", "",
             f"*Run {section['date']}: `{section['command']}`*", "",
             f"1-recall@k in % at k={section['k']}; search seconds for all queries (re-ranking "
             "rows include the shortlist search and the decoding).", "",
             "| method | R@1 | R@10 | R@100 | search s | note |", "|---|---|---|---|---|---|"]
    for row in section["rows"]:
        lines.append(f"| {row['method']} | "
                     f"{' | '.join(_pct(row['recall'].get(str(k))) for k in RECALL_KS)} | "
                     f"{row['search_s']:.2f} | {row['note']} |")
    lines += ["", "Decoders: held-out squared error per vector (the baseline is the best linear map), "
              f"and held-out 1-recall@1 re-ranking a shortlist of {decoders.CALIBRATION_SHORTLIST} "
              "(held-out learn vectors, unseen by the decoder, as queries and database). The "
              f"blend is {decoders.BLEND_WEIGHT:g} × the ratio of decoded to compressed distances "
              "on that shortlist (`spreadcode.decoders.calibrate_blend`):", "",
              "| code | kind | val MSE | linear baseline MSE | R@1 compressed | R@1 decoded | "
              "R@1 blended | blend | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for info in section["decoders"]:
        recalls = info["blend_calibration"]["recall_at_1"]
        lines.append(f"| {info['code']} | {info['kind']} | {info['val_mse']:.5f} | "
                     f"{info['baseline_val_mse']:.5f} | {_pct(recalls['compressed'])} | "
                     f"{_pct(recalls['decoded'])} | {_pct(recalls['blended'])} | "
                     f"{info['blend']:.3g} | {info['train_s']:.0f} |")
    sweep = section["sweep"]
    blend = sweep["blend"]
    lines += ["", f"### Shortlist size: catalyzer + lattice, mlp decoder re-rank, k={sweep['k']}",
              "", "Re-rank cost: search with re-ranking minus the shortlist search alone, per "
              "query (all queries in one batch).", "",
              f"| N | R@1 decoded | R@10 decoded | ms/query | R@1 blend {blend:.3g} | "
              f"R@10 blend {blend:.3g} | ms/query |", "|---|---|---|---|---|---|---|"]
    for entry in sweep["rows"]:
        cells = [f"{_pct(entry[label]['recall'].get('1'))} | "
                 f"{_pct(entry[label]['recall'].get('10'))} | {entry[label]['rerank_ms']:.3f}"
                 for label in ("decoded", "blend")]
        lines.append(f"| {entry['N']} | {' | '.join(cells)} |")
    return lines + [""]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python bench/decoders.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET))
    parser.add_argument("--model", default=None, help="lattice catalyzer (hash or path)")
    parser.add_argument("--sign-model", default=None, help="sign catalyzer (hash or path)")
    parser.add_argument("--store", default=None, help="model store of --model / --sign-model")
    parser.add_argument("--quick", action="store_true", help="small slices, few epochs")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--cache", default=str(REPO / "bench" / "cache"))
    return parser.parse_args(argv)


def main(argv=None):
    """Standalone run: the section alone, printed and written to <out>/<dataset>/decoders.md
    (`bench/suite.py --only decoders` puts the same section into results.md/json instead)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ds = load_dataset(args.dataset)
    if args.quick:
        ds = quick_slice(ds)
    ctx = Context(k=min(K, ds.base.shape[0]), quick=args.quick, cache_dir=Path(args.cache))
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    section = {"command": shlex.join(["python", "bench/decoders.py", *argv]),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               **run(ds, ctx, args.model, args.sign_model, args.store)}
    text = "\n".join([f"# {ds.name}: {ds.base.shape[0]} base, {ds.query.shape[0]} queries, "
                      f"d={ds.base.shape[1]}", "", *markdown(section)])
    folder = Path(args.out) / ds.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decoders.md").write_text(text)
    print(text)
    print(f"written: {folder / 'decoders.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
