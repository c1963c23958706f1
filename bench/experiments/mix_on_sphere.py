"""Issue #14 scratch measurement (lever 74): the re-ranking's mix of two decoders put back on
the sphere.

Lever 72's blended score ‖q − x̂‖² + blend · ‖q − x̃‖² (x̂ the full decoder's vector, x̃ the
shortlist decoder's, both on the data's sphere when the model has ``output_norm``) equals
(1 + blend) · (const − 2 ⟨q, m⟩) with m = (1 − α) x̂ + α x̃, α = blend / (1 + blend): it ranks
by the inner product with the mix, whose norm falls where the two decodings disagree. Lever
30 / 53 found that the cosine, not the inner product, ranks a shrunken decoding best; here
the mix is ranked by ⟨q, m⟩ / ‖m‖^p, p = 0 (today) ... 1 (the mix on the sphere), and by a
per-code share fitted on the held-out rows in bins of the two decodings' disagreement.

Run:  python bench/experiments/mix_on_sphere.py MODEL DATA P...
One row of the per-quartile shares, then one JSON row per (p, one share or a share per
quartile): R@1/10/100 of DATA's queries, the shortlist of the default search (200
candidates, its int8 scan) re-ranked by the score.
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

from spreadcode import residual  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402
from spreadcode.search import int8_rows, int8_vectors  # noqa: E402

CANDIDATES = 200
BINS = 4


def recall(ids, nearest, ks=(1, 10, 100)):
    return {f"R@{k}": round(100 * float(np.mean((ids[:, :k] == nearest[:, None]).any(1))), 1)
            for k in ks}


def main(model_path, data_path, *powers):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    _, held_out = residual.held_out_rows(len(data.learn), 0)
    blend = residual.calibrate_rerank_blend(model, data.learn[held_out])
    share = blend / (1 + blend)
    codes = model.encode(data.base)
    short = int8_vectors(int8_rows(model.decode_shortlist(codes)))
    full = model.decode(codes)
    _, candidates = exact_knn(short, data.query, CANDIDATES)
    nearest = np.asarray(data.groundtruth)[:, 0]
    q = data.query.astype(np.float32)
    rows = data.learn[held_out]
    h_codes = model.encode(rows)
    h_full = model.decode(h_codes).astype(np.float64)
    h_offset = int8_vectors(int8_rows(model.decode_shortlist(h_codes))) - h_full
    h_gap = (h_offset ** 2).sum(1)
    edges = np.quantile(h_gap, np.linspace(0, 1, BINS + 1)[1:-1])
    h_bin = np.searchsorted(edges, h_gap)
    shares = np.array([((rows[h_bin == b] - h_full[h_bin == b]) * h_offset[h_bin == b]).sum()
                       / (h_offset[h_bin == b] ** 2).sum() for b in range(BINS)])
    shares = np.clip(shares, 0, residual.MAX_BLEND_SHARE)
    per_code = shares[np.searchsorted(edges, ((short - full) ** 2).sum(1))][:, None]
    print(json.dumps({"per-bin shares": [round(float(s), 3) for s in shares]}))
    for p, binned in [(float(p), b) for p in powers for b in (False, True)]:
        mix = (1 - share) * full + share * short if not binned else \
            (1 - per_code) * full + per_code * short
        norm = np.linalg.norm(mix, axis=1) ** p
        score = np.einsum("qd,qcd->qc", q, mix[candidates]) / norm[candidates]
        order = np.argsort(-score, axis=1, kind="stable")
        ids = np.take_along_axis(candidates, order, 1)
        print(json.dumps({"experiment": "mix_on_sphere", "lever": 74, "data": data.name,
                          "blend": round(blend, 3), "p": p, "per-bin share": binned, **recall(ids, nearest)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
