"""Issue #14 scratch experiment: rank by an estimate of the true squared distance,
‖q − x̂‖² + ê(code), instead of ‖q − x̂‖².

With a decoder that is the conditional mean (what MSE training aims at), E[x − x̂ | code] = 0,
so E[‖q − x‖² | code] = ‖q − x̂‖² + E[‖x − x̂‖² | code]: the decoded distance is biased by the
code's own expected error, which differs from code to code. ê is a small MLP of the decoded
vector and the unit lattice points, fitted on the learn set's codes (held out: the model's
validation rows are not used here; the learn set is split 90/10 for ê's early stop).

Run: python bench/experiments/error_corrected_distance.py MODEL DATA [BEAM ...]
One JSON row per beam: decall of ‖q − x̂‖², and of the corrected distance (weights 0.5, 1).
"""
import json
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402


def features(model, codes):
    decoded = model.decode(codes)
    return decoded, np.hstack([decoded, model.unit_points(codes)]).astype(np.float32)


def fit_error_head(feats, target, epochs=30, seed=0):
    torch.manual_seed(seed)
    n = feats.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    val, tr = order[: n // 10], order[n // 10:]
    x, y = torch.from_numpy(feats), torch.from_numpy(target.astype(np.float32))
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    head = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 1))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    best, state = np.inf, None
    for _ in range(epochs):
        perm = torch.from_numpy(np.random.default_rng(_).permutation(tr))
        for s in range(0, len(perm), 256):
            b = perm[s:s + 256]
            loss = (head((x[b] - mu) / sd)[:, 0] - y[b]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            v = float((head((x[val] - mu) / sd)[:, 0] - y[val]).pow(2).mean())
        if v < best:
            best, state = v, {k: t.clone() for k, t in head.state_dict().items()}
    head.load_state_dict(state)
    print(json.dumps({"head_val_mse": round(best, 5), "target_var": round(float(y[val].var()), 5)}),
          flush=True)
    return lambda f: head((torch.from_numpy(f) - mu) / sd)[:, 0].detach().numpy()


def recall_of(ids, gt):
    hit = ids == gt[:, :1]
    first = np.where(hit.any(1), hit.argmax(1), 1 << 30)
    return [round(100 * float(np.mean(first < r)), 1) for r in (1, 10, 100)]


def main(path, data, beams):
    torch.set_num_threads(2)
    model, _ = load_catalyzer(path)
    ds = load_dataset(data)
    for beam in beams:
        learn_codes = model.encode(ds.learn, beam=beam)
        decoded, feats = features(model, learn_codes)
        predict = fit_error_head(feats, ((decoded - ds.learn) ** 2).sum(1))
        codes = model.encode(ds.base, beam=beam)
        decoded, feats = features(model, codes)
        err_hat = predict(feats)
        true_err = ((decoded - ds.base) ** 2).sum(1)
        row = {"data": ds.name, "beam": beam, "corr_pred_true": round(float(
            np.corrcoef(err_hat, true_err)[0, 1]), 3)}
        # Re-rank the 1,000 nearest decoded vectors (the same shortlist for every weight).
        dist, cand = exact_knn(decoded, ds.query, 1000)
        for weight in (0.0, 0.5, 1.0):
            score = dist + weight * err_hat[cand]
            order = np.argsort(score, axis=1, kind="stable")[:, :100]
            row[f"w{weight}"] = recall_of(np.take_along_axis(cand, order, 1), ds.groundtruth)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(v) for v in sys.argv[3:]] or [1])
