"""Issue #14 scratch experiment (lever 25): a learned 8-bit first stage under the lattice
stages. Raw 384-d text is where LSQ's additive codebooks reconstruct far better than the
lattice stages (BENCHMARKS.md, lever 24); this gives the residual model one free codebook of
256 centroids (k-means initialised, then trained with the rest by the auto-encoder loss,
nearest-centroid assignment) as its coarse stage, and 56 bits of lattice stages
(3 × S(12, 6) + S(6, 4)) for the residual, every lattice stage reading the context:

    x̂_0 = C[argmin_i ‖x − C_i‖²]
    z_m  = lattice point of normalize(f_m([x − x̂_{m−1}, x̂_{m−1}]))
    x̂_m = x̂_{m−1} + g_m([z_m, x̂_{m−1}])

The .spc format has no such code, so this measures in memory: greedy codes of the base,
decoded, searched exhaustively ("decall", which the default search matches: lever 12).

Run:  python bench/experiments/residual_kmeans_first.py DATA [FIELD=VALUE ...]
One JSON row appended to results-issue14.jsonl.
"""
import os
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset, recall_columns  # noqa: E402
from residual_variants import parse_overrides, variant_config  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.losses import straight_through  # noqa: E402
from spreadcode.search import decoded_topk  # noqa: E402

CENTROIDS = 256
KMEANS_ITERATIONS = 20


class KMeansFirst(residual.ResidualCatalyzer):
    """A codebook of CENTROIDS vectors as stage 0; every lattice stage reads the context."""

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        first = quantizer.blocks[0].d
        self.f[0] = residual._mlp(2 * self.d_in, self.hidden, first)
        self.g[0] = residual._mlp(first + self.d_in, self.hidden_decoder, self.d_in)
        self.codebook = nn.Parameter(torch.zeros(CENTROIDS, d_in))

    def fit_preprocessing(self, x):
        super().fit_preprocessing(x)
        with torch.no_grad():
            xs = self.preprocess(x)
            generator = torch.Generator().manual_seed(0)
            centroids = xs[torch.randperm(xs.shape[0], generator=generator)[:CENTROIDS]].clone()
            for _ in range(KMEANS_ITERATIONS):
                nearest = self._nearest(xs, centroids)
                sums = torch.zeros_like(centroids).index_add_(0, nearest, xs)
                counts = torch.bincount(nearest, minlength=CENTROIDS).float()[:, None]
                centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
            self.codebook.copy_(centroids)

    @staticmethod
    def _nearest(xs, centroids):
        scores = (centroids * centroids).sum(1)[None] - 2 * xs @ centroids.T
        return scores.argmin(1)

    def _stage_input(self, m, xs, xh):
        return torch.cat([xs - xh, xh], 1)

    def _decode_stage(self, m, z, xh):
        return xh + self.g[m](torch.cat([z, xh], 1))

    def forward(self, x):
        xs = self.preprocess(x)
        xh = first = self.codebook[self._nearest(xs.detach(), self.codebook.detach())]
        for m, block in enumerate(self.quantizer.blocks):
            y = nn.functional.normalize(self.f[m](self._stage_input(m, xs, xh)), dim=1)
            xh = self._decode_stage(m, straight_through(y, block), xh)
        return xh, first

    @torch.no_grad()
    def reconstruct(self, x, batch=4096):
        """Greedy codes of x float32 (n, d_in), decoded: float32 (n, d_in)."""
        self.eval()
        out = np.empty_like(x)
        for start in range(0, len(x), batch):
            xs = self.preprocess(torch.from_numpy(x[start:start + batch]))
            xh = self.codebook[self._nearest(xs, self.codebook)]
            for m, block in enumerate(self.quantizer.blocks):
                y = nn.functional.normalize(self.f[m](self._stage_input(m, xs, xh)), dim=1)
                z = torch.from_numpy(block.reconstruct(block.quantize(y.numpy())))
                xh = self._decode_stage(m, z, xh)
            out[start:start + batch] = self.unprocess(xh).numpy()
        return out


def main():
    data = load_dataset(sys.argv[1])
    overrides = {"blocks": [[12, 6], [12, 6], [12, 6], [6, 4]], **parse_overrides(sys.argv[2:])}
    residual.ResidualCatalyzer = KMeansFirst
    residual.fit_shortlist_decoder = lambda *args, **kwargs: None  # library codes only
    residual.validation_recall = lambda *args: {}
    residual.calibrate_rerank_blend = lambda *args: 0.0  # (the library's encode, too)
    config = variant_config({**overrides, "blocks": tuple(map(tuple, overrides["blocks"]))})
    start = time.time()
    trained = residual.train_residual(data.learn, config, progress=False)
    train_s = time.time() - start
    start = time.time()
    decoded = trained.model.reconstruct(data.base)
    encode_s = time.time() - start
    _, ids = decoded_topk(decoded, data.query, 100)
    best = min(trained.history, key=lambda row: row["val_mse"])
    append_row({"experiment": "residual_kmeans_first", "data": data.name,
                "overrides": overrides, "centroids": CENTROIDS, "epochs": len(trained.history),
                "best_epoch": best["epoch"], "val_mse": round(best["val_mse"], 5),
                "base_mse": round(float(((decoded - data.base) ** 2).sum(1).mean()), 5),
                "train_s": round(train_s, 1), "encode_decode_s": round(encode_s, 1),
                **recall_columns(ids, data.groundtruth)})


if __name__ == "__main__":
    main()
