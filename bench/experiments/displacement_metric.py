"""Issue #14 lever 100: the reconstruction error weighted by where neighbours differ.

Search ranks a candidate x by ‖q − x̂‖² = ‖q − x‖² − 2 (q − x)·e + ‖e‖², e = x̂ − x. For the
queries that matter, q lies near x, so the ranking's distortion is mostly (q − x)·e, whose
mean square over them is eᵀ D e with D = E[δ δᵀ], δ the displacement from a vector to one of
its near neighbours. The library's loss is ‖e‖² = eᵀ I e: every direction weighted alike.
Here the training error is measured in the metric (1 − β) I + β D / mean eig(D) instead
(same trace, so the loss keeps its scale), D estimated from the learn set: the exact
NEIGHBOURS nearest learn rows of SAMPLE rows. The crowding term and everything else are the
library's (the subclass replaces `ResidualCatalyzer._squared_error` only, so aux's term
is measured in the metric too); the reported held-out MSE is the plain one.

    BETA=B python bench/experiments/displacement_metric.py DATA OUT [FIELD=VALUE ...]
    python bench/experiments/displacement_metric.py DATA --spectra

``--spectra`` prints D's share of its trace along bands of the data covariance's principal
axes next to the covariance's own, and how far D is from isotropic (its eigenvalues over
their median, their geometric over arithmetic mean: 1 − GM / AM bounds what re-weighting an
evenly spread error could gain).

The saved model is a plain residual model (the metric only trains): evaluate with the
library.
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import load_dataset  # noqa: E402
from residual_variants import run_model_class  # noqa: E402
from spreadcode import residual  # noqa: E402

BETA = float(os.environ.get("BETA", 1.0))
NEIGHBOURS = 10
SAMPLE = 10_000


def displacement_moment(learn, seed=0):
    """D = E[δ δᵀ] float64 (d, d) over δ = (a near neighbour) − (the vector), for SAMPLE rows
    of ``learn`` float32 (n, d) and their NEIGHBOURS nearest other rows (exact)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(learn), min(SAMPLE, len(learn)), replace=False)
    base = torch.from_numpy(learn)
    moment = torch.zeros(learn.shape[1], learn.shape[1], dtype=torch.float64)
    for start in range(0, len(rows), 1024):
        chunk = torch.from_numpy(rows[start:start + 1024])
        dist = torch.cdist(base[chunk], base)
        dist[torch.arange(len(chunk)), chunk] = float("inf")
        near = dist.topk(NEIGHBOURS, largest=False).indices
        delta = (base[near] - base[chunk][:, None, :]).reshape(-1, learn.shape[1]).double()
        moment += delta.T @ delta
    return (moment / (len(rows) * NEIGHBOURS)).numpy()


def metric_root(moment, beta):
    """The symmetric square root W float32 (d, d) of (1 − β) I + β D / mean eig(D), so that
    ‖e W‖² is e's squared error in that metric."""
    values, vectors = np.linalg.eigh(moment)
    values = (1 - beta) + beta * values / values.mean()
    return torch.from_numpy((vectors * np.sqrt(values)) @ vectors.T).float()


def spectra(learn, moment, bands=(8, 16, 32, 48, 64)):
    """{band: (C's share, D's share)} along the principal axes of ``learn``'s covariance C
    (bands of axes ending at each of ``bands`` and at d), and D's eigenvalue statistics."""
    centred = learn - learn.mean(0)
    values, axes = np.linalg.eigh(centred.T.astype(np.float64) @ centred / len(learn))
    values, axes = values[::-1], axes[:, ::-1]
    along = np.einsum("ij,jk,ki->i", axes.T, moment, axes)
    edges = [0, *[b for b in bands if b < len(values)], len(values)]
    rows = {f"{a + 1}-{b}": (round(values[a:b].sum() / values.sum(), 3),
                             round(along[a:b].sum() / along.sum(), 3))
            for a, b in zip(edges, edges[1:])}
    eig = np.linalg.eigvalsh(moment)
    return {"bands (C share, D share)": rows,
            "D eigenvalues / median": [round(eig.min() / np.median(eig), 2),
                                       round(eig.max() / np.median(eig), 2)],
            "D GM / AM": gm_over_am(eig)}


class DisplacementMetric(residual.ResidualCatalyzer):
    """The library's loss with each row's squared error in the metric ``METRIC_ROOT``."""

    METRIC_ROOT = None

    def _squared_error(self, decoded, target):
        return ((decoded - target) @ self.METRIC_ROOT).pow(2).sum(1)


def gm_over_am(values):
    """The geometric over the arithmetic mean of positive ``values``."""
    return round(float(np.exp(np.log(values).mean()) / values.mean()), 4)


if __name__ == "__main__":
    if sys.argv[2:] == ["--spectra"]:
        learn = load_dataset(sys.argv[1]).learn
        print(json.dumps(spectra(learn, displacement_moment(learn)), indent=1))
        sys.exit()
    moment = displacement_moment(load_dataset(sys.argv[1]).learn)
    DisplacementMetric.METRIC_ROOT = metric_root(moment, BETA)
    run_model_class("displacement_metric", DisplacementMetric, 100, beta=BETA,
                    neighbours=NEIGHBOURS, sample=SAMPLE,
                    eig_gm_over_am=gm_over_am(np.linalg.eigvalsh(moment)))
