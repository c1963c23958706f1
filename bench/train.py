"""Catalyzer training benchmark: recall of catalyzer + lattice after the default training, next
to PCA + lattice (the paper's ablation), with training wall time, and a λ sweep.

    python bench/train.py                        # wordnet-minilm96, 64 bits, default config
    python bench/train.py --epochs 4 --lambdas 0.01,0.02 --sweep-epochs 2
    python bench/train.py --dout 32 --r2 36 --batch-size 512 --no-sweep

Everything goes through the library (`command_config`, `train_catalyzer`, `catalyze`, the
codec's quantizer), so the numbers are those of ``spreadcode train --quantizer lattice`` +
``encode`` + ``search``.
1-recall@k = share of queries whose exact nearest neighbour (ground truth column 0) is among
the first k results, on base/query (validation recall is on the held-out part of learn).
The default run (default training + a 3-point λ sweep at reduced epochs) takes about 20
minutes on 2 CPU cores.
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# training first: it sets the OpenMP wait policy before torch loads.
from spreadcode.training import (DEFAULT_EPOCHS, DEFAULT_TIME_BUDGET_S, command_config,  # noqa: E402, I001
                                 make_quantizer, train_catalyzer)
from spreadcode import vecio  # noqa: E402
from spreadcode.catalyzer import catalyze  # noqa: E402
from spreadcode.search import recall_at  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wordnet-minilm96"
KS = (1, 10, 100)


def recall(ids, groundtruth):
    """1-recall@1/10/100 in % (`spreadcode.search.recall_at`): ids int64 (nq, >=100),
    groundtruth int (nq, >=1)."""
    return [100.0 * value for value in recall_at(ids, groundtruth, KS).values()]


def search_recall(quantizer, base_out, query_out, groundtruth):
    """Quantize mapped base vectors, search mapped queries: float32 (n, d), (nq, d) unit rows."""
    _, ids = quantizer.search(quantizer.quantize(base_out), query_out, max(KS))
    return recall(ids, groundtruth)


def pca_lattice(learn, base, query, groundtruth, quantizer):
    """PCA to the quantizer's dimension (fitted on learn), L2-normalise, lattice-code."""
    started = time.monotonic()
    mean = learn.mean(axis=0, dtype=np.float64)
    centred = learn - mean
    _, vectors = np.linalg.eigh(centred.T.astype(np.float64) @ centred)
    projection = vectors[:, ::-1][:, :quantizer.d].astype(np.float32)

    def mapped(x):
        y = (x - mean.astype(np.float32)) @ projection
        return np.ascontiguousarray(y / np.linalg.norm(y, axis=1, keepdims=True), dtype=np.float32)

    fit_s = time.monotonic() - started
    return search_recall(quantizer, mapped(base), mapped(query), groundtruth), fit_s


def catalyzer_lattice(learn, base, query, groundtruth, config):
    """Train with ``config``; return (test recalls, validation recalls %, epochs, train seconds)."""
    started = time.monotonic()
    result = train_catalyzer(learn, config, progress=True)
    train_s = time.monotonic() - started
    quantizer = make_quantizer(config)
    test = search_recall(quantizer, catalyze(result.model, base), catalyze(result.model, query), groundtruth)
    training = result.meta.training
    val = [100.0 * training["val_recall"][str(k)] for k in KS]
    return test, val, training["epochs"], train_s


def row(cells):
    return "| " + " | ".join(cells) + " |"


def fmt(values):
    return [f"{v:.1f}" for v in values]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Recall of catalyzer + lattice after training vs PCA + lattice, and a λ sweep.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="directory with learn/base/query.fvecs and groundtruth.ivecs")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--dout", type=int, default=None)
    parser.add_argument("--r2", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default: like `spreadcode train`, {DEFAULT_EPOCHS} epochs by device, "
                             f"fewer if they would not fit {DEFAULT_TIME_BUDGET_S / 60:g} minutes")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                        help="train for this many minutes instead of a fixed epoch count "
                             "(not with --epochs)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig's")
    parser.add_argument("--lambda", dest="lam", type=float, default=None, help="default: per d_out")
    parser.add_argument("--end-to-end", action="store_true",
                        help="straight-through lattice layer on the positive and negative branches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lambdas", default=None,
                        help="comma-separated λ values for the sweep (default: ×0.5, ×1, ×2 the default λ)")
    parser.add_argument("--sweep-epochs", type=int, default=4, help="epochs of each sweep run")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args(argv)

    learn = vecio.read_vectors(args.data / "learn.fvecs")
    base = vecio.read_vectors(args.data / "base.fvecs")
    query = vecio.read_vectors(args.data / "query.fvecs")
    groundtruth = vecio.read_groundtruth(args.data / "groundtruth.ivecs")
    config = command_config(args.bits, "lattice", dout=args.dout, r2=args.r2, lam=args.lam,
                            epochs=args.epochs, time_budget_min=args.time_budget, seed=args.seed)
    config = replace(config, end_to_end=args.end_to_end)
    if args.batch_size is not None:
        config = replace(config, batch_size=args.batch_size)
    quantizer = make_quantizer(config)
    print(f"# {args.data.name}: learn {learn.shape}, base {base.shape}, query {query.shape}; "
          f"lattice S({config.d_out}, {config.r2}) = {quantizer.bits} bits\n")

    pca, pca_s = pca_lattice(learn, base, query, groundtruth, quantizer)
    test, val, epochs, train_s = catalyzer_lattice(learn, base, query, groundtruth, config)
    print(row(["method", "epochs", "batch", "λ", "train s", "R@1", "R@10", "R@100", "val R@1/10/100"]))
    print(row(["---"] * 9))
    print(row([f"PCA {config.d_out} + lattice", "-", "-", "-", f"{pca_s:.1f}", *fmt(pca), "-"]))
    print(row([f"catalyzer {config.d_out} + lattice", str(epochs), str(config.batch_size),
               f"{config.lam:g}", f"{train_s:.0f}", *fmt(test), "/".join(fmt(val))]))
    sys.stdout.flush()

    if args.no_sweep:
        return
    lambdas = ([float(v) for v in args.lambdas.split(",")] if args.lambdas
               else [config.lam * f for f in (0.5, 1.0, 2.0)])
    print(f"\n## λ sweep ({args.sweep_epochs} epochs each)\n")
    print(row(["λ", "train s", "R@1", "R@10", "R@100", "val R@1/10/100"]))
    print(row(["---"] * 6))
    for lam in lambdas:
        test, val, _, train_s = catalyzer_lattice(
            learn, base, query, groundtruth,
            replace(config, lam=lam, epochs=args.sweep_epochs, time_budget_s=None))
        print(row([f"{lam:g}", f"{train_s:.0f}", *fmt(test), "/".join(fmt(val))]))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
