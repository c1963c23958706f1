"""Issue #14 scratch measurement (lever 72): a residual model's re-ranking score blended with
the shortlist decoder's distance, and whether the learn set's validation split can choose
the weight.

The default search re-ranks the shortlist by the full decoder alone (blend 0); the shortlist
decoder, a small MLP distilled from it, is a second, partly independent estimate of each
candidate's distance, which `spreadcode.search.rerank_candidates` can add with a weight:
score = ‖q − x̂_full‖² + blend · ‖q − x̃_short‖² (x̃: its int8 row, as the scan ranks).

Run:  python bench/experiments/residual_blend.py MODEL DATA BLEND...
One JSON row per blend (0 first) and design:
* "test": the default search of DATA's queries over its base (`Index.search(query, 100)`),
  R@1/10/100 against its ground truth;
* "held-out": the model's 2,000 held-out learn rows (`residual.held_out_rows`, seed 0),
  each a query against the 1,999 others (leave-one-out), 200 candidates as at k = 100;
* "train-db": the held-out rows as queries against the training rows as the database.
Then one "share" row: the least-squares share α of the shortlist decoder in the mix
(1 − α) x̂_full + α x̃_short (`residual.calibrate_rerank_blend`, unclipped here) on the
held-out rows, on the first 20,000 base rows and on the first 20,000 training rows, and the
held-out squared error of the full decoder alone and of the mix.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from beam_sphere import load_on_sphere  # noqa: E402

from spreadcode import Index, residual, search  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402
from spreadcode.search import int8_rows, int8_vectors, rerank_candidates  # noqa: E402

CANDIDATES = 200  # residual_rerank at k = 100


def recall(ids, nearest, ks):
    """Percent of queries whose nearest neighbour is among the first k ids, for each k."""
    return {f"R@{k}": round(100 * float(np.mean((ids[:, :k] == nearest[:, None]).any(1))), 1)
            for k in ks}


def test_recall(model, meta, data, blend):
    """The default search with ``blend`` in its re-ranking."""
    rerank = search.rerank_shortlist
    search.rerank_shortlist = lambda collection, shortlist, decoder, k, _=0.0: rerank(
        collection, shortlist, decoder, k, blend)
    try:
        index = Index.from_catalyzer(model, meta)
        index.add(data.base)
        ids = index.search(data.query, k=100)[1]
    finally:
        search.rerank_shortlist = rerank
    return recall(ids, np.asarray(data.groundtruth)[:, 0], (1, 10, 100))


def validation_recalls(model, queries, database, blends, leave_one_out):
    """{blend: R@1, R@10} of re-ranking CANDIDATES shortlist candidates of ``queries`` among
    ``database`` (the same rows when ``leave_one_out``, each query excluding itself)."""
    codes = model.encode(database)
    short = int8_vectors(int8_rows(model.decode_shortlist(codes)))
    full = model.decode(codes)
    extra = 1 if leave_one_out else 0
    _, nearest = exact_knn(database, queries, 1 + extra)
    distances, candidates = exact_knn(short, queries, CANDIDATES + extra)
    nearest, distances, candidates = nearest[:, extra], distances[:, extra:], candidates[:, extra:]
    out = {}
    for blend in blends:
        _, ids = rerank_candidates(queries, candidates, lambda rows: full[rows], 10,
                                   distances.astype(np.float32), blend)
        out[blend] = recall(ids, nearest, (1, 10))
    return out


def mix_share(model, rows):
    """(α, MSE of x̂_full, MSE of the mix) of the least-squares mix on ``rows``."""
    codes = model.encode(rows)
    full = model.decode(codes).astype(np.float64)
    offset = int8_vectors(int8_rows(model.decode_shortlist(codes))) - full
    share = float(((rows - full) * offset).sum() / (offset * offset).sum())
    mse = lambda decoded: round(float(((rows - decoded) ** 2).sum(1).mean()), 4)  # noqa: E731
    return round(share, 3), mse(full), mse(full + share * offset)


def main(model_path, data_path, *blends):
    torch.set_num_threads(2)
    blends = [0.0] + [float(b) for b in blends]
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    train, held_out = residual.held_out_rows(len(data.learn), 0)
    designs = {"held-out": validation_recalls(model, data.learn[held_out], data.learn[held_out],
                                              blends, True),
               "train-db": validation_recalls(model, data.learn[held_out], data.learn[train],
                                              blends, False)}
    for blend in blends:
        row = {"experiment": "residual_blend", "lever": 72, "data": data.name, "blend": blend,
               "test": test_recall(model, meta, data, blend),
               **{name: found[blend] for name, found in designs.items()}}
        print(json.dumps(row), flush=True)
    shares = {name: mix_share(model, rows) for name, rows in (
        ("held-out", data.learn[held_out]), ("base", data.base[:20000]),
        ("training rows", data.learn[train[:20000]]))}
    print(json.dumps({"experiment": "residual_blend", "lever": 72, "data": data.name,
                      "share": {name: found[0] for name, found in shares.items()},
                      "held-out MSE": {"full": shares["held-out"][1],
                                       "mix": shares["held-out"][2]}}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
