"""Issue #14 scratch measurement: what the re-ranking's disagreement term does to R@1.

The default re-ranking scores a candidate by ‖q − x̂‖² + b ‖q − x̃‖² (x̂ the full decoder's
vector, x̃ the shortlist decoder's, b the model's ``rerank_blend``), which is
(1 + b) ‖q − m‖² + b / (1 + b) · ‖x̂ − x̃‖² with m the mix (x̂ + b x̃) / (1 + b): a mixed
vector plus a penalty on codes whose two decodings disagree. Levers 10 and 93 found that a
per-code error term hurts R@1, lever 72 that the blend helps: which part helps? Here the
penalty's weight is moved on its own, c · ‖x̂ − x̃‖² added to the default score (c = 0: the
default, c = − b / (1 + b): the mix alone). Every base code is scored (no shortlist), so
rows compare exactly with each other, not with the default search's.

Run:  python bench/experiments/disagreement_penalty.py DATA MODEL [c ...]
"""
import json
import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0] + "/../..")
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402


def squared_distances(q, x):
    return (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None]


def main(data_path, model_path, *weights):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model = load_catalyzer(model_path)[0]
    codes = model.encode(data.base)
    full, short = model.decode(codes), model.decode_shortlist(codes)
    blend = model.rerank_blend or 0.0
    penalty = ((full - short) ** 2).sum(1)
    weights = [float(w) for w in weights] or [0.0]
    ids = {w: [] for w in weights}
    for start in range(0, len(data.query), 500):
        q = data.query[start:start + 500]
        score = squared_distances(q, full) + blend * squared_distances(q, short)
        for w in weights:
            s = score + w * penalty[None]
            top = np.argpartition(s, 100, axis=1)[:, :100]
            order = np.argsort(np.take_along_axis(s, top, 1), axis=1)
            ids[w].append(np.take_along_axis(top, order, 1))
    for w in weights:
        print(json.dumps({"model": model_path, "blend": blend, "c": w,
                          "mix alone at c": round(-blend / (1 + blend), 3),
                          **recall_columns(np.vstack(ids[w]), data.groundtruth)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
