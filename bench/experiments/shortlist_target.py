"""Issue #14 scratch measurement (lever 75): what the shortlist decoder is distilled to.

Since lever 72 the shortlist decoder is also the re-ranking's second opinion, weighted by the
held-out least-squares share α (`residual.calibrate_rerank_blend`); it adds most where its
errors are least like the full decoder's. Today it is fitted on the training rows' codes to
the full decoder's output there (`residual.fit_shortlist_decoder`), which on those rows the
full decoder over-fits to the vectors themselves. Here it is refitted to targets
(1 − t) · x̂_full + t · x, t = 0 (today), 0.5 and 1 (the vectors), and each fit is calibrated
and searched as training would.

Run:  [SHORTLIST_HIDDEN=H] python bench/experiments/shortlist_target.py MODEL DATA T...
(SHORTLIST_HIDDEN: refit a shortlist decoder of that width instead of the model's.)
One JSON row per t: the held-out α and blend, held-out MSE of the full decoder, of the
shortlist decoder and of the mix, and R@1/10/100 of the default search (with the blend) and of
the shortlist alone (`Index.search(..., rerank=0)`).
"""
import json
import os
import sys
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from beam_sphere import load_on_sphere  # noqa: E402

from spreadcode import Index, residual  # noqa: E402
from spreadcode.decoders import fit_decoder  # noqa: E402
from spreadcode.search import int8_rows, int8_vectors  # noqa: E402


def recall(ids, nearest, ks=(1, 10, 100)):
    return {f"R@{k}": round(100 * float(np.mean((ids[:, :k] == nearest[:, None]).any(1))), 1)
            for k in ks}


def refit(model, rows, share):
    """`residual.fit_shortlist_decoder` with targets (1 − share) x̂_full + share · x."""
    codes = model.encode(rows)
    points = model.unit_points(codes)
    target = (1 - share) * model.decode(codes) + share * rows
    steps = max(1, points.shape[0] // 256)
    epochs = min(max(residual.SHORTLIST_EPOCHS, -(-residual.SHORTLIST_STEPS[0] // steps)),
                 max(1, residual.SHORTLIST_STEPS[1] // steps))
    net, _ = fit_decoder(points, target, hidden=model.hidden_shortlist, epochs=epochs, seed=0)
    model.shortlist.load_state_dict(net.state_dict())


def main(model_path, data_path, *shares):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    hidden = int(os.environ.get("SHORTLIST_HIDDEN", model.hidden_shortlist))
    if hidden != model.hidden_shortlist:  # a wider (or narrower) shortlist decoder
        from spreadcode.decoders import DecoderNet
        model.hidden_shortlist, model.shortlist = hidden, DecoderNet(model.d_out, model.d_in, hidden)
        meta = replace(meta, hidden_shortlist=hidden)
    train, held_out = residual.held_out_rows(len(data.learn), 0)
    rows, val = data.learn[train], data.learn[held_out]
    nearest = np.asarray(data.groundtruth)[:, 0]
    mse = lambda a, b: round(float(((a - b) ** 2).sum(1).mean()), 4)  # noqa: E731
    for share in [float(s) for s in shares]:
        refit(model, rows, share)
        model.rerank_blend = residual.calibrate_rerank_blend(model, val)
        alpha = model.rerank_blend / (1 + model.rerank_blend)
        codes = model.encode(val)
        full = model.decode(codes)
        short = int8_vectors(int8_rows(model.decode_shortlist(codes)))
        index = Index.from_catalyzer(model, replace(meta, rerank_blend=model.rerank_blend))
        index.add(data.base)
        print(json.dumps({
            "experiment": "shortlist_target", "lever": 75, "data": data.name, "t": share, "hidden": hidden,
            "alpha": round(alpha, 3), "blend": round(model.rerank_blend, 3),
            "held-out MSE": {"full": mse(val, full), "shortlist": mse(val, short),
                             "mix": mse(val, (1 - alpha) * full + alpha * short)},
            "default": recall(index.search(data.query, 100)[1], nearest),
            "shortlist alone": recall(index.search(data.query, 100, rerank=0)[1], nearest)}),
            flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
