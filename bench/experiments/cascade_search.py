"""Issue #15 scratch experiment: a three-step search cascade for residual models, to cut the
full decoder's re-ranking (5 M multiply-adds per candidate, the cost of search at 1M).

linear decoder scan -> top S1 -> a small "mid" decoder (MLP of the unit lattice points,
hidden H, distilled on the learn set's codes to the full decoder's output) -> top S2 -> full
decoder -> top k. The default today is S1 = 1,000 straight into the full decoder.

Run: python bench/experiments/cascade_search.py MODEL DATA [H [EPOCHS]]
One JSON row per (S1, S2): R@1/10/100 and the full-decoder decodes per query.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from error_corrected_distance import recall_of  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402


def distill_mid(model, codes, target, hidden, epochs, batch=256, lr=1e-3):
    torch.manual_seed(0)
    x = torch.from_numpy(model.unit_points(codes))
    y = model.preprocess(torch.from_numpy(target))
    mid = residual._mlp(x.shape[1], hidden, y.shape[1])
    opt = torch.optim.Adam(mid.parameters(), lr=lr)
    steps = x.shape[0] // batch
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(x.shape[0]))
        mid.train()
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = residual.one_cycle_lr(lr, (epoch * steps + step) / (epochs * steps))
            b = order[step * batch:(step + 1) * batch]
            loss = (mid(x[b]) - y[b]).pow(2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    mid.eval()
    return lambda c: model.unprocess(mid(torch.from_numpy(model.unit_points(c)))).detach().numpy()


def rerank(queries, cand, vectors, width):
    diff = vectors[cand] - queries[:, None]
    dist = np.einsum("qcd,qcd->qc", diff, diff)
    order = np.argsort(dist, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(cand, order, 1)


def main(path, data, hidden=256, epochs=20):
    torch.set_num_threads(2)
    model, _ = load_catalyzer(path)
    ds = load_dataset(data)
    train_rows, _ = residual.held_out_rows(ds.learn.shape[0], 0)
    learn_codes = model.encode(ds.learn[train_rows])
    t0 = time.time()
    mid = distill_mid(model, learn_codes, model.decode(learn_codes), hidden, epochs)
    train_s = time.time() - t0
    codes = model.encode(ds.base)
    full, lin = model.decode(codes), model.decode_linear(codes)
    with torch.no_grad():
        t0 = time.time()
        mid_vectors = np.vstack([mid(codes[s:s + 8192]) for s in range(0, len(codes), 8192)])
        mid_s = time.time() - t0
    t0 = time.time()
    model.decode(codes[:20000])
    full_s = (time.time() - t0) * len(codes) / 20000
    print(json.dumps({"mid_hidden": hidden, "distill_s": round(train_s), "mid_decode_s": round(mid_s, 2),
                      "full_decode_s": round(full_s, 2),
                      "mse_mid": round(float(((mid_vectors - ds.base) ** 2).sum(1).mean()), 4),
                      "mse_full": round(float(((full - ds.base) ** 2).sum(1).mean()), 4)}), flush=True)
    queries = ds.query
    _, short = exact_knn(lin, queries, 1000)
    _, mid_short = exact_knn(mid_vectors, queries, 1000)
    print(json.dumps({"mid_alone": recall_of(mid_short[:, :100], ds.groundtruth)}), flush=True)
    for s1, s2 in ((1000, 1000), (1000, 300), (1000, 200), (1000, 100), (2000, 100)):
        if s1 == 2000:
            _, first = exact_knn(lin, queries, 2000)
        else:
            first = short
        second = rerank(queries, first, mid_vectors, s2) if s2 < s1 else first
        final = rerank(queries, second, full, 100)
        print(json.dumps({"S1": s1, "S2": s2, "search": recall_of(final, ds.groundtruth)}), flush=True)
    # The mid decoder as the scan itself.
    for s2 in (100, 200):
        final = rerank(queries, mid_short[:, :s2], full, 100)
        print(json.dumps({"scan": "mid", "S2": s2, "search": recall_of(final, ds.groundtruth)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *[int(v) for v in sys.argv[3:]])
