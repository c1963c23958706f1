"""Issue #14 scratch measurement: does the query's own code tell its neighbour from impostors?

Search compares the raw query with decoded candidates (asymmetric). The query can be encoded
too: if its true nearest neighbour shared its lattice points more often than the other top
candidates do, a bonus per shared stage would re-order the nearest few. Prints, per stage,
how often the true neighbour and the other top-20 candidates share the query's point, and
the R@1 of the default search's top 20 re-ranked by distance − λ · (median gap between the
first two distances) · (shared stages, or the shared prefix's length).

Run:  python bench/experiments/query_code_agreement.py MODEL DATA
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from spreadcode import Index  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402

TOP = 20


def main(model_path, data_path):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_catalyzer(model_path)[:2]
    index = Index.from_catalyzer(model, meta)
    index.add(data.base)
    distances, ids = index.search(data.query, k=100)
    distances, ids = distances[:, :TOP], ids[:, :TOP]
    query_points = model.quantizer.block_codes(model.encode(data.query))
    base_points = model.quantizer.block_codes(model.encode(data.base))
    truth = data.groundtruth[:, 0]
    same = np.stack([base_points[m][ids] == query_points[m][:, None]
                     for m in range(len(query_points))], 2)  # (nq, TOP, M)
    hit = ids == truth[:, None]
    print(json.dumps({"shares the query's point, true neighbour (per stage)":
                      [round(float(same[..., m][hit].mean()), 4) for m in range(same.shape[2])],
                      "other candidates": [round(float(same[..., m][~hit].mean()), 4)
                                           for m in range(same.shape[2])]}))
    gap = float(np.median(distances[:, 1] - distances[:, 0]))
    for weight in (0, 0.25, 0.5, 1, 2):
        row = {"model": os.path.basename(model_path), "lambda": weight}
        for name, bonus in (("shared stages", same.sum(2)),
                            ("shared prefix", np.cumprod(same, 2).sum(2))):
            order = np.argsort(distances - weight * gap * bonus, axis=1, kind="stable")
            first = np.take_along_axis(ids, order, 1)[:, 0]
            row[f"R@1, {name}"] = round(100 * float((first == truth).mean()), 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
