"""Issue #14 scratch experiment: residual stages whose encoders see a cheap running
reconstruction (an additive linear decoder of the stages so far, trained jointly) instead of
the MLP decoder's, so that encoding needs no MLP decoder at all.

    x̂lin_m = x̂lin_{m-1} + W_m z_m          (W_0 has a bias)
    y_m    = normalize(f_m([x − x̂lin_{m-1}, x̂lin_{m-1}]))
    x̂_m    = x̂_{m-1} + g_m([z_m, x̂_{m-1}])  (the MLP decoder, for re-ranking only)

Training: the library's loop (`spreadcode.residual.train_residual`) with the model class
swapped and aux = 1 on the linear reconstruction ‖x̂lin_M − x‖² (instead of the first stage's).
Run: python bench/experiments/residual_linear_encoder.py DATA [EPOCHS]; one JSON row.
"""
import json, os, sys, time
import numpy as np, torch
from torch import nn
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset
from spreadcode import residual
from spreadcode.knn import exact_knn
from spreadcode.losses import straight_through
from spreadcode.search import rerank_candidates


class LinearConditioned(residual.ResidualCatalyzer):
    def __init__(self, d_in, quantizer, hidden, hidden_decoder):
        super().__init__(d_in, quantizer, hidden, hidden_decoder)
        self.w = nn.ModuleList([nn.Linear(b.d, self.d_in, bias=m == 0)
                                for m, b in enumerate(quantizer.blocks)])

    def forward(self, x):
        xs = self.preprocess(x)
        xh = xl = None
        for m, block in enumerate(self.quantizer.blocks):
            y = nn.functional.normalize(self._encode_stage(m, xs, xl), dim=1)
            z = straight_through(y, block)
            xh = self._decode_stage(m, z, xh)
            xl = self.w[0](z) if m == 0 else xl + self.w[m](z)
        return xh, xl

    def _encode_batch(self, x, f, g):  # its own chain, in the model's arithmetic
        xs, xl, ranks = self.preprocess(x), None, []
        for m, block in enumerate(self.quantizer.blocks):
            y = nn.functional.normalize(self._encode_stage(m, xs, xl), dim=1)
            ranks.append(block.quantize(y.cpu().numpy()))
            z = torch.from_numpy(block.reconstruct(ranks[-1]))
            xl = self.w[0](z) if m == 0 else xl + self.w[m](z)
        return self.quantizer.join_block_codes(ranks)


def evaluate(result, ds, row):
    """Add to ``row`` the encoding time of ds.base (best of 3), the MSE of both decoders, and
    R@1/10/100 of: the linear decoder alone, its shortlists of 100 and 1,000 re-ranked by the
    MLP decoder, and every code through the MLP decoder; print it as one JSON line."""
    model = result.model
    times = []
    for _ in range(3):
        t1 = time.perf_counter(); codes = model.encode(ds.base); times.append(time.perf_counter() - t1)
    row["encode_s"] = round(min(times), 2)
    xb, xl = model.decode(codes), model.decode_linear(codes)
    row["mse"] = round(float(((xb - ds.base) ** 2).sum(1).mean()), 4)
    row["lin_mse"] = round(float(((xl - ds.base) ** 2).sum(1).mean()), 4)
    rec = lambda I: [round(100 * float(np.mean((I[:, :k] == ds.groundtruth[:, :1]).any(1))), 1) for k in (1, 10, 100)]
    _, il = exact_knn(xl, ds.query, 1000)
    row["lin"] = rec(il)
    for s in (100, 1000):
        _, I = rerank_candidates(ds.query, np.ascontiguousarray(il[:, :s]), lambda u: xb[u], 100)
        row[f"rr{s}"] = rec(I)
    row["decall"] = rec(exact_knn(xb, ds.query, 100)[1])
    row["val_mse_curve"] = [round(h["val_mse"], 4) for h in result.history][::5]
    print(json.dumps(row), flush=True)


def main():
    data, epochs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25
    ds = load_dataset(data)
    residual.ResidualCatalyzer = LinearConditioned
    t0 = time.time()
    result = residual.train_residual(ds.learn, residual.ResidualConfig(epochs=epochs, aux=1.0),
                                     progress=False)
    evaluate(result, ds, {"tag": "lin-cond", "data": os.path.basename(data.rstrip("/")),
                          "epochs": epochs, "train_s": round(time.time() - t0)})


if __name__ == "__main__":
    main()
