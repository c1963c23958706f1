"""Issue #14 scratch measurement: decoded vectors as hubs, and what knowing it would buy R@1.

r(v) = the mean cosine of v to its K nearest of 20,000 learn vectors: how crowded v's
region is. A decoded vector x̂ (the re-ranking's mix of the full and shortlist decoders, on
the sphere) is a conditional mean, pulled towards the denser part of its code's cell, so
r(x̂) exceeds r(x). The exhaustive re-ranking score (the default blend, every base code) is
then given a per-candidate term:
- "csls": + 2λ r(x̂), the hubness correction of cross-domain similarity local scaling;
- "oracle": + 2λ (r(x̂) − r(x)), the exact excess (x is not in the code: an upper bound);
- "linear fit" / "mlp fit": + 2λ × the excess predicted from the code (its unit points, x̂,
  r(x̂), the decoded norm before the sphere, the two decoders' disagreement), fitted on
  half of the base and predicting the other half (two folds: every prediction out of fold).

Run:  python bench/experiments/hub_oracle.py DATA MODEL
"""
import json
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from disagreement_penalty import decoded_base, rerank_with_terms  # noqa: E402

K = 10
SAMPLE = 20_000


def crowding(x, sample, batch=2000):
    """r(x): mean cosine of each row of x float32 (n, d) (unit rows) to its K nearest rows of
    ``sample`` (unit rows): float32 (n,)."""
    out = np.empty(len(x), np.float32)
    for start in range(0, len(x), batch):
        sim = x[start:start + batch] @ sample.T
        out[start:start + batch] = np.partition(sim, -K, axis=1)[:, -K:].mean(1)
    return out


def out_of_fold(features, target, fit):
    """Predictions of ``target`` (n,) from ``features`` (n, f), each half by a fit on the other."""
    fold, pred = np.arange(len(target)) % 2, np.zeros(len(target), np.float32)
    for part in (0, 1):
        pred[fold == part] = fit(features[fold != part], target[fold != part])(
            features[fold == part])
    return pred


def linear_fit(x, y):
    w = np.linalg.lstsq(np.hstack([np.ones((len(x), 1)), x]).astype(np.float64), y,
                        rcond=None)[0]
    return lambda z: np.hstack([np.ones((len(z), 1)), z]) @ w


def mlp_fit(x, y, epochs=20):
    torch.manual_seed(0)
    mean, std = y.mean(), y.std()
    net = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 1))
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy((y - mean) / std)
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            rows = order[start:start + 256]
            loss = (net(xt[rows])[:, 0] - yt[rows]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()

    def predict(z):
        with torch.no_grad():
            return net(torch.from_numpy(z))[:, 0].numpy() * std + mean
    return predict


def main(data_path, model_path):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, codes, full, short, blend = decoded_base(data, model_path)
    rng = np.random.default_rng(0)
    sample = data.learn[rng.choice(len(data.learn), SAMPLE, replace=False)]
    sample = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    mix = full + blend * short
    mix /= np.linalg.norm(mix, axis=1, keepdims=True)
    r_hat = crowding(mix, sample)
    r_true = crowding(data.base / np.linalg.norm(data.base, axis=1, keepdims=True), sample)
    excess = r_hat - r_true
    norm, model.output_norm = model.output_norm, None
    decoded_norm = np.linalg.norm(model.decode(codes), axis=1)
    model.output_norm = norm
    disagreement = ((full - short) ** 2).sum(1)
    scalars = np.stack([r_hat, decoded_norm, disagreement], 1).astype(np.float32)
    features = np.hstack([model.unit_points(codes), full, scalars]).astype(np.float32)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    linear = out_of_fold(scalars.astype(np.float64), excess, linear_fit)
    mlp = out_of_fold(features, excess, mlp_fit)
    print(json.dumps({"model": os.path.basename(model_path), "K": K,
                      "mean r(x̂)": round(float(r_hat.mean()), 4),
                      "mean r(x)": round(float(r_true.mean()), 4),
                      "excess std": round(float(excess.std()), 4),
                      "corr r(x̂), r(x)": round(float(np.corrcoef(r_hat, r_true)[0, 1]), 3),
                      "R² linear fit": round(float(1 - ((linear - excess) ** 2).mean()
                                                   / excess.var()), 3),
                      "R² mlp fit": round(float(1 - ((mlp - excess) ** 2).mean()
                                                / excess.var()), 3)}), flush=True)
    terms = {("none", 0): np.zeros_like(r_hat)}
    terms.update({("csls", w): 2 * w * r_hat for w in (0.1, 0.25, 0.5, 1)})
    terms.update({("oracle", w): 2 * w * excess for w in (0.25, 0.5, 1)})
    terms.update({("linear fit", w): 2 * w * linear for w in (0.5, 1)})
    terms.update({("mlp fit", w): 2 * w * mlp for w in (0.25, 0.5)})
    ids = rerank_with_terms(data, full, short, blend, terms)
    for (name, weight), found in ids.items():
        print(json.dumps({"term": name, "lambda": weight,
                          **recall_columns(found, data.groundtruth)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
