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


def decoded_base(data, model_path):
    """The model's greedy codes of data.base, decoded by both decoders: (model, codes,
    full float32 (n, d_in), shortlist float32 (n, d_in), the model's re-ranking blend)."""
    model = load_catalyzer(model_path)[0]
    codes = model.encode(data.base)
    return (model, codes, model.decode(codes), model.decode_shortlist(codes),
            model.rerank_blend or 0.0)


def rerank_with_terms(data, full, short, blend, terms, k=100, batch=500):
    """Each query's k best base codes by the blended score ‖q − x̂‖² + blend ‖q − x̃‖² plus
    a term per candidate: {key: ids int64 (n_query, k)} for ``terms`` {key: float32 (n,)}."""
    ids = {key: [] for key in terms}
    for start in range(0, len(data.query), batch):
        q = data.query[start:start + batch]
        score = squared_distances(q, full) + blend * squared_distances(q, short)
        for key, term in terms.items():
            s = score + term[None]
            top = np.argpartition(s, k, axis=1)[:, :k]
            order = np.argsort(np.take_along_axis(s, top, 1), axis=1)
            ids[key].append(np.take_along_axis(top, order, 1))
    return {key: np.vstack(found) for key, found in ids.items()}


def main(data_path, model_path, *weights):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    _, _, full, short, blend = decoded_base(data, model_path)
    penalty = ((full - short) ** 2).sum(1)
    weights = [float(w) for w in weights] or [0.0]
    ids = rerank_with_terms(data, full, short, blend, {w: w * penalty for w in weights})
    for w in weights:
        print(json.dumps({"model": model_path, "blend": blend, "c": w,
                          "mix alone at c": round(-blend / (1 + blend), 3),
                          **recall_columns(ids[w], data.groundtruth)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
