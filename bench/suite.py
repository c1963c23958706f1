"""One command answering "how does spreadcode compare with what I would use instead, on my data".

    python bench/suite.py DATASET [--quick] [--out bench/results] [--only table1,...]
                          [--bits 16,32,64,128] [--learn-size N]

DATASET is a directory with learn/base/query (.fvecs, .bvecs or .npy) and groundtruth.ivecs,
or an ann-benchmarks .hdf5 file (see bench/_data.py). Every method in bench/_registry.py is
run on the same machine in the same process; results go to ``<out>/<dataset>/``
(``-learn<N>`` appended with --learn-size, ``-quick`` in quick mode) as results.json,
results.md and PNG figures. Sections: table1, table2, figure5, figure3, appendixc, decoders
(the paper's experiments and the learned decoders) and quality (spreadcode's default,
``spreadcode.Index.train(learn, bits=b)``, against every faiss compact code of the same
size, and the same model with one lever changed). BENCHMARKS.md explains each section.
"""
import argparse
import datetime
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Before torch, faiss and the codec load their OpenMP runtimes, the library's wait policy
# (`spreadcode.openmp`) for all of them: threads that spin-wait long between parallel regions
# made faiss training and catalyzer SGD several times slower on a machine shared with other
# jobs (measured here: OPQ8,PQ8 on 5k vectors 117 s -> 15 s). An explicit user setting wins.
from spreadcode.openmp import set_wait_policy  # noqa: E402

set_wait_policy()

from tqdm import tqdm  # noqa: E402

from bench import _registry, _report, decoders, peers  # noqa: E402
from bench._data import load_dataset, quick_slice, subsample_learn  # noqa: E402
from bench._methods import SWEEP_BITS, Context, NotApplicable  # noqa: E402
from bench._spreadcode_methods import reference_catalyzed  # noqa: E402
from bench._metrics import (neighbor_distances, prob_first_exceeds_kth,  # noqa: E402
                            range_agreement)
from spreadcode.errors import SpreadcodeError  # noqa: E402
from spreadcode.search import recall_at  # noqa: E402

RECALL_KS = (1, 10, 100)
NEIGHBOR_RANK = 100


def measure(method, ds, ctx, *args):
    """Run one method and score it -> JSON-able dict (recall {} and a note when n/a)."""
    try:
        outcome = method(ds.learn, ds.base, ds.query, ctx, *args)
    except NotApplicable as reason:
        return {"recall": {}, "bits": None, "train_s": None, "encode_s": None,
                "search_s": None, "note": f"n/a: {reason}"}
    recall = recall_at(outcome.ids, ds.groundtruth, RECALL_KS)
    return {"recall": {str(k): v for k, v in recall.items()}, "bits": outcome.bits,
            "train_s": outcome.train_s, "encode_s": outcome.encode_s,
            "search_s": outcome.search_s, "note": outcome.note, "code": outcome.code}


def _describe(cell):
    if not cell["recall"]:
        return cell["note"]
    recall = " ".join(f"R@{k}={100 * v:.1f}" for k, v in cell["recall"].items())
    return (f"{recall}  ({cell['bits']} bits; train {cell['train_s']:.1f}s, "
            f"encode {cell['encode_s']:.1f}s, search {cell['search_s']:.1f}s)")


def run_table1(ds, ctx, progress, folder, can_plot):
    rows = []
    for name, method in _registry.TABLE1.items():
        progress.set_description(f"table1: {name}")
        row = {"method": name, **measure(method, ds, ctx)}
        progress.write(f"table1 | {name}: {_describe(row)}")
        progress.update()
        rows.append(row)
    return {"rows": rows}


def _run_sweep(section, methods, ds, ctx, progress):
    """Every method at every code size of ``ctx.sweep_bits``."""
    rows = []
    for name, method in methods.items():
        cells = {}
        for bits in ctx.sweep_bits:
            progress.set_description(f"{section}: {name} @ {bits} bits")
            cells[str(bits)] = measure(method, ds, ctx, bits)
            progress.write(f"{section} | {name} @ {bits} bits: {_describe(cells[str(bits)])}")
            progress.update()
        rows.append({"method": name, "cells": cells})
    return {"bits": list(ctx.sweep_bits), "rows": rows}


def run_table2(ds, ctx, progress, folder, can_plot):
    return _run_sweep("table2", _registry.TABLE2, ds, ctx, progress)


def run_figure5(ds, ctx, progress, folder, can_plot):
    section = _run_sweep("figure5", _registry.FIGURE5, ds, ctx, progress)
    if can_plot:
        _report.plot_figure5(folder, section)
    return section


def run_quality(ds, ctx, progress, folder, can_plot):
    """spreadcode's default next to the faiss peers of the same code size; the dataset is
    recorded with the section so that its table can be pasted on its own."""
    section = _run_sweep("quality", _registry.QUALITY, ds, ctx, progress)
    return {"dataset": {"name": ds.name, "n_learn": ds.learn.shape[0],
                        "n_base": ds.base.shape[0], "n_query": ds.query.shape[0]},
            **section}


def run_figure3(ds, ctx, progress, folder, can_plot):
    progress.set_description("figure3: neighbour distances")
    catalyzed, model = reference_catalyzed(ds, ctx)
    k = min(NEIGHBOR_RANK, ds.base.shape[0])
    distances = {"input": neighbor_distances(ds.base, ds.query, k),
                 "catalyzed": neighbor_distances(catalyzed.base, catalyzed.query, k)}
    section = {"k": k, "model": model, "spaces": {
        space: {"mean_first": float(first.mean()), "mean_kth": float(kth.mean()),
                "prob_first_exceeds_kth": prob_first_exceeds_kth(first, kth)}
        for space, (first, kth) in distances.items()}}
    for space, stats in section["spaces"].items():
        progress.write(f"figure3 | {space}: P(d_1(x) > d_{k}(y)) = "
                       f"{100 * stats['prob_first_exceeds_kth']:.1f}%")
    if can_plot:
        _report.plot_figure3(folder, section, distances)
    progress.update()
    return section


def run_appendixc(ds, ctx, progress, folder, can_plot):
    progress.set_description("appendixc: range search")
    catalyzed, model = reference_catalyzed(ds, ctx)
    true_nn = ds.groundtruth[:, 0]
    spaces = {"input": range_agreement(ds.base, ds.query, true_nn),
              "catalyzed": range_agreement(catalyzed.base, catalyzed.query, true_nn)}
    section = {"model": model, "spaces": spaces,
               "target_recalls": [p["target_recall"] for p in spaces["input"]]}
    for space, points in spaces.items():
        at_80 = next(p for p in points if p["target_recall"] == 0.8)
        progress.write(f"appendixc | {space}: 80% recall needs "
                       f"{at_80['mean_results']:.1f} results per query")
    if can_plot:
        _report.plot_appendixc(folder, section)
    progress.update()
    return section


def run_decoders(ds, ctx, progress, folder, can_plot):
    progress.set_description("decoders: learned decoders and re-ranking")
    section = decoders.run(ds, ctx)
    for row in section["rows"]:
        progress.write(f"decoders | {row['method']}: "
                       + " ".join(f"R@{k}={100 * v:.1f}" for k, v in row["recall"].items()))
    progress.update()
    return section


SECTION_RUNNERS = {"table1": run_table1, "table2": run_table2, "figure5": run_figure5,
                   "figure3": run_figure3, "appendixc": run_appendixc, "decoders": run_decoders,
                   "quality": run_quality}
SECTIONS_HELP = (
    "sections: table1 (every method at 64 bits), table2 (binary codes), figure5 (recall vs "
    "bits), figure3 (neighbour distances), appendixc (range search), decoders (learned "
    "decoders), quality (spreadcode's default, Index.train(learn, bits=b) and "
    "search(query, 100), next to faiss PQ, OPQ, RQ and LSQ with a norm byte at the same "
    "bits, then the default's model with one lever changed: --beam 2, --beam 4, off the "
    "sphere, shortlist alone; its table is BENCHMARKS.md's \"Quality at 16/32/64/128 "
    "bits\"). "
    "See BENCHMARKS.md.")
SWEEPS = {"table2": _registry.TABLE2, "figure5": _registry.FIGURE5,
          "quality": _registry.QUALITY}


def section_steps(section, n_bits):
    """Progress-bar steps of a section: one per row (sweeps: per row and code size)."""
    if section in SWEEPS:
        return len(SWEEPS[section]) * n_bits
    return len(_registry.TABLE1) if section == "table1" else 1


def _bit_sizes(text):
    """argparse type of --bits: comma-separated positive integers -> tuple, in order given."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers like 16,64, got {text!r}")
    return sizes


def _learn_size(text):
    """argparse type of --learn-size: a positive integer."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python bench/suite.py", description=__doc__.split("\n\n")[0],
        epilog=SECTIONS_HELP)
    parser.add_argument("dataset", help="dataset directory or ann-benchmarks .hdf5 file")
    parser.add_argument("--quick", action="store_true",
                        help="small slices and few epochs: a smoke run of a few minutes")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="results root; a folder per dataset is made inside")
    parser.add_argument("--only", default=",".join(SECTION_RUNNERS),
                        help="comma-separated sections to run (default all: "
                             f"{','.join(SECTION_RUNNERS)})")
    parser.add_argument("--train-minutes", type=float, default=None,
                        help="time budget per catalyzer (default: the library's epoch "
                             "schedule; ignored with --quick and by the quality section, "
                             "whose spreadcode row is the library's default)")
    parser.add_argument("--cache", default=str(REPO / "bench" / "cache"),
                        help="where trained catalyzers are kept between runs")
    parser.add_argument("--bits", type=_bit_sizes, default=SWEEP_BITS,
                        help="code sizes of the sweep sections table2, figure5 and quality "
                             f"(default {','.join(map(str, SWEEP_BITS))})")
    parser.add_argument("--learn-size", type=_learn_size, default=None, metavar="N",
                        help="train on the first N learn vectors only (for training-size "
                             "curves); results go to <dataset>-learnN/")
    args = parser.parse_args(argv)
    if args.train_minutes is not None and not args.train_minutes > 0:
        parser.error(f"--train-minutes must be positive, got {args.train_minutes}")
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTION_RUNNERS))
    if unknown or not args.sections:
        parser.error(f"--only: unknown section(s) {unknown}; "
                     f"choose from {','.join(SECTION_RUNNERS)}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        ds = load_dataset(args.dataset)
        if args.learn_size is not None:
            ds = subsample_learn(ds, args.learn_size)
    except SpreadcodeError as err:
        sys.exit(f"error: {err}")
    if args.quick:
        ds = quick_slice(ds)
    folder = Path(args.out) / ds.name
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(k=min(max(RECALL_KS), ds.base.shape[0]), quick=args.quick,
                  cache_dir=Path(args.cache), train_minutes=args.train_minutes,
                  sweep_bits=args.bits)
    can_plot = _report.matplotlib_available()
    if not can_plot:
        print("matplotlib is not installed: figures are skipped", file=sys.stderr)
    if not peers.available():
        print("faiss is not installed: faiss rows are reported as n/a", file=sys.stderr)

    results = _report.load_previous(folder)
    results["dataset"] = {"name": ds.name, "source": ds.source, "n_learn": ds.learn.shape[0],
                          "n_base": ds.base.shape[0], "n_query": ds.query.shape[0],
                          "d": ds.base.shape[1]}
    results["machine"] = _report.machine_description()
    stamp = {"command": shlex.join(["python", "bench/suite.py", *argv]),
             "date": datetime.datetime.now().isoformat(timespec="seconds")}
    with tqdm(total=sum(section_steps(s, len(args.bits)) for s in args.sections), unit="step",
              file=sys.stderr) as progress:
        for section in args.sections:
            result = SECTION_RUNNERS[section](ds, ctx, progress, folder, can_plot)
            results[section] = {**stamp, **result}
            _report.write_json(folder, results)
            _report.write_markdown(folder, results)
    print(f"results in {folder}/", file=sys.stderr)
    return folder


if __name__ == "__main__":
    main()
