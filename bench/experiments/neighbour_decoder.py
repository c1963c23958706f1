"""Issue #14 scratch experiment (the issue's lever 4 on the residual model): fine-tune a
trained model's decoders for neighbour ranking instead of reconstruction alone.

Search ranks a query's candidates by ‖q − x̂‖² (raw query, decoded candidate), so what
matters is that, for a query, the decoded distances order its neighbours as the true ones do.
The model's codes stay fixed (its encoders are frozen, so .spc files keep their codes); its
decoders g (batch norms frozen) are fine-tuned on the learn set's training rows: each anchor
x_a (a training row, playing a query) and its K nearest training rows j, decoded from their
codes onto the model's sphere as search decodes them:

    loss = rank × KL(softmax(−d_a/τ) ‖ softmax(−d̂_a/τ)) + ‖x̂_j − x_j‖²  (means over the batch)

with d_aj = ‖x_a − x_j‖², d̂_aj = ‖x_a − x̂_j‖², τ = the batch's mean spread d_aK − d_a1 over
4. Then the shortlist decoder is distilled again (`residual.fit_shortlist_decoder`) and the
default search measured. Per epoch: the exhaustive search over the decoded base ("decall").

Run:  python bench/experiments/neighbour_decoder.py MODEL DATA OUT [rank=W] [epochs=E]
      [lr=LR] [k=K]
One JSON row per epoch (decall) and one for the result (default search), appended to
results-issue14.jsonl.
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import append_row, load_dataset  # noqa: E402
import residual_beam  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402
from residual_beam import _decode_points  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.catalyzer import save_catalyzer  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402
from spreadcode.torchutil import adam  # noqa: E402

BATCH = 128


def decode_points(model, points):
    """The full decoder on unit lattice points float32 tensor (n, d_out), with gradients,
    onto the model's sphere: float32 tensor (n, d_in) in input units."""
    return model._on_sphere(model.unprocess(_decode_points(model, points)))


def decall(model, data, codes):
    """R@k of the exhaustive search over the decoded base (codes uint8 (n_base, bytes))."""
    model.eval()
    return dict(zip(("R@1", "R@10", "R@100"), residual_beam.decall(model.decode(codes), data)))


def main(model_path, data_path, out, *options):
    opts = {"rank": 1.0, "epochs": 5, "lr": 1e-4, "k": 16}
    opts.update({key: float(value) for key, value in (o.split("=", 1) for o in options)})
    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.eval()
    train_rows, _ = residual.held_out_rows(len(data.learn), meta.training["seed"])
    learn = np.ascontiguousarray(data.learn[train_rows], dtype=np.float32)
    points = torch.from_numpy(model.unit_points(model.encode(learn)))
    neighbours = torch.from_numpy(exact_knn(learn, learn, int(opts["k"]), exclude_self=True)[1])
    x = torch.from_numpy(learn)
    base_codes = model.encode(data.base)
    row = {"experiment": "neighbour_decoder", "data": data.name, "options": opts}
    append_row({**row, "epoch": 0, "decall": decall(model, data, base_codes)})
    params = [p for g in model.g for p in g.parameters()]
    optimizer = adam(params, opts["lr"])
    rng = np.random.default_rng(0)
    for epoch in range(1, int(opts["epochs"]) + 1):
        start, sums = time.time(), np.zeros(2)
        for anchors in np.array_split(rng.permutation(len(learn)), len(learn) // BATCH):
            anchors = torch.from_numpy(anchors)
            near = neighbours[anchors]                       # (b, K)
            flat = near.reshape(-1)
            decoded = decode_points(model, points[flat]).reshape(*near.shape, -1)
            true = (x[anchors][:, None] - x[near]).pow(2).sum(2)
            got = (x[anchors][:, None] - decoded).pow(2).sum(2)
            tau = (true[:, -1] - true[:, 0]).mean() / 4
            target = torch.softmax(-true / tau, 1)
            rank = (target * (target.clamp_min(1e-12).log()
                              - torch.log_softmax(-got / tau, 1))).sum(1).mean()
            mse = (decoded - x[near]).pow(2).sum(2).mean()
            loss = opts["rank"] * rank + mse
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += (float(rank.detach()), float(mse.detach()))
        steps = len(learn) // BATCH
        append_row({**row, "epoch": epoch, "seconds": round(time.time() - start, 1),
                    "rank_loss": round(sums[0] / steps, 4), "mse": round(sums[1] / steps, 4),
                    "decall": decall(model, data, base_codes)})
    residual.fit_shortlist_decoder(model, learn, meta.training["seed"])
    save_catalyzer(model, meta, out, store=os.path.join(os.path.dirname(os.path.abspath(out)),
                                                        "store"))
    append_row({**row, "result": "default search", **measure_codes(model, meta, data, base_codes)})


if __name__ == "__main__":
    main(*sys.argv[1:])
