"""Issue #14 scratch experiment: architecture variants of the residual default
that its ResidualConfig cannot express, measured as `residual_variants.py` measures.

Variants (FIELD=VALUE; the rest are ResidualConfig overrides as in `residual_variants.py`):
- ``skip=1``: each decoder stage gets a linear path from its lattice point,
  x̂_m = x̂_{m−1} + W_m z_m + g_m([z_m, x̂_{m−1}]) — an additive (RQ-like) codebook that
  the MLP corrects, as QINCo refines a base codeword; a prior for small learn sets.
- ``table=1``: each decoder stage also adds a free codeword T_m[a(z_m)], a(z) the nearest
  of the 4·C(d, 2) directions ±e_i ± e_j (the points of S(d, 2)) to the lattice point: a
  learned codebook of 264 rows per 12-d stage, indexed by a coarse quantization of its code,
  so that directions the smooth MLP reaches poorly (the tail of a 384-d spectrum: lever 24)
  get free parameters, as LSQ's codewords are.
- ``pairs=1``: each decoder stage also adds Σ_{i<j} T_m[i, j, z_i, z_j], a free codeword for
  every pair of the lattice point's integer coordinates and their values (S(12, 6): 66 pairs
  × 5 × 5 values, 1,650 rows per stage, each trained by the many codes that share a pair of
  values): an additive codebook of 66 books summed per stage, as LSQ sums 7, at a resolution
  the coarse ``table`` lacks (lever 24: the MLP's increments lie on a 12-dimensional
  manifold, LSQ's codewords spread energy over all 384 axes).
- ``share=1``: the decoders of stages 1..M−1 share their linear layers (each stage keeps
  its own batch norms and is told its index by a one-hot input): a third of the decoders'
  weights, each trained by three times the rows, against the over-fitting of small learn
  sets (raw-384: MSE 0.344 on the training rows, 0.436 held out; lever 24).
- ``beams=[8]``: also encode the base with these beams and search it (default search).

Run:  python bench/experiments/residual_arch.py DATA OUT [skip=1 | table=1 | pairs=1 | share=1] [beams=[8]] ...
(weight decay: `residual_regularized.py ... wd=W`)
The model's state dict goes to OUT (torch.save; it does not load as a library model). One
JSON row per beam appended to results-issue14.jsonl.
"""
import math
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
from spreadcode import Index, residual  # noqa: E402


class SkipResidual(residual.ResidualCatalyzer):
    """The library model plus a linear path W_m z_m in every decoder stage."""

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        self.skip = nn.ModuleList([nn.Linear(block.d, self.d_in, bias=False)
                                   for block in quantizer.blocks])

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        return super()._decode_stage(m, z, xh, ranks, g) + self.skip[m](z)


def sphere_two_points(d):
    """The 4·C(d, 2) unit vectors (±e_i ± e_j)/√2, float32 (4·C(d, 2), d)."""
    points = []
    for i in range(d):
        for j in range(i + 1, d):
            for si in (1, -1):
                for sj in (1, -1):
                    p = np.zeros(d, np.float32)
                    p[i], p[j] = si, sj
                    points.append(p / np.sqrt(2))
    return torch.from_numpy(np.array(points, dtype=np.float32))


class TableResidual(residual.ResidualCatalyzer):
    """The library model plus a free codeword per stage, indexed by the lattice point's
    nearest S(d, 2) direction."""

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        for m, block in enumerate(quantizer.blocks):
            self.register_buffer(f"anchors{m}", sphere_two_points(block.d))
        self.tables = nn.ParameterList([
            nn.Parameter(torch.zeros(getattr(self, f"anchors{m}").shape[0], d_in))
            for m in range(len(quantizer.blocks))])

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        row = (z.detach() @ getattr(self, f"anchors{m}").T).argmax(1)
        return super()._decode_stage(m, z, xh, ranks, g) + self.tables[m][row]


class PairTableResidual(residual.ResidualCatalyzer):
    """The library model plus a free codeword per stage for each pair of the lattice point's
    coordinates and their two values, summed over the pairs."""

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        self.levels, self.pair_tables = [], nn.ModuleList()
        for m, block in enumerate(quantizer.blocks):
            first, second = torch.triu_indices(block.d, block.d, 1)
            self.register_buffer(f"pairs{m}", torch.stack([first, second]))
            levels = 2 * math.isqrt(block.param) + 1  # integer coordinates -√r²..√r²
            table = nn.EmbeddingBag(len(first) * levels * levels, d_in, mode="sum")
            nn.init.zeros_(table.weight)
            self.levels.append(levels)
            self.pair_tables.append(table)

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        levels, (first, second) = self.levels[m], getattr(self, f"pairs{m}")
        values = torch.round(z.detach() * math.sqrt(self.quantizer.blocks[m].param)).long() \
            + levels // 2
        rows = (torch.arange(len(first), device=z.device) * levels * levels
                + values[:, first] * levels + values[:, second])
        return super()._decode_stage(m, z, xh, ranks, g) + self.pair_tables[m](rows)


class SharedStages(nn.Module):
    """One decoder MLP for stages 1..M−1 (input [z_m, x̂_{m−1}, one-hot m]), with batch norms
    per stage, as `residual._mlp` otherwise."""

    def __init__(self, d_z, d_in, hidden, stages):
        super().__init__()
        self.stages = stages
        self.first = nn.Linear(d_z + d_in + stages, hidden)
        self.second = nn.Linear(hidden, hidden)
        self.last = nn.Linear(hidden, d_in)
        self.norms = nn.ModuleList([nn.ModuleList([nn.BatchNorm1d(hidden), nn.BatchNorm1d(hidden)])
                                    for _ in range(stages)])

    def forward(self, stage, z, xh):
        onehot = torch.zeros(z.shape[0], self.stages, dtype=z.dtype, device=z.device)
        onehot[:, stage] = 1
        norm1, norm2 = self.norms[stage]
        h = torch.relu(norm1(self.first(torch.cat([z, xh, onehot], 1))))
        return self.last(torch.relu(norm2(self.second(h))))


class SharedResidual(residual.ResidualCatalyzer):
    """The library model with one decoder for stages 1..M−1 (`SharedStages`)."""

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        dims = {block.d for block in quantizer.blocks[1:]}
        assert len(dims) == 1, "share=1 needs stages 1..M-1 of one dimension"
        self.shared = SharedStages(dims.pop(), d_in, self.hidden_decoder,
                                   len(quantizer.blocks) - 1)
        self.g = nn.ModuleList([self.g[0]])

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        if m == 0:
            return super()._decode_stage(m, z, xh, ranks, g)
        return xh + self.shared(m - 1, z, xh)


MODELS = {"skip": SkipResidual, "table": TableResidual, "pairs": PairTableResidual,
          "share": SharedResidual}


def main():
    data, out = load_dataset(sys.argv[1]), sys.argv[2]
    overrides = parse_overrides(sys.argv[3:])
    variant = {name: overrides.pop(name) for name in (*MODELS, "beams") if name in overrides}
    for name, model_class in MODELS.items():
        if variant.get(name):
            residual.ResidualCatalyzer = model_class
    config = variant_config(overrides)
    start = time.time()
    trained = residual.train_residual(data.learn, config, progress=False)
    train_s = time.time() - start
    torch.save(trained.model.state_dict(), out)
    best = min(trained.history, key=lambda row: row["val_mse"])
    for beam in [1] + list(variant.get("beams", [])):
        index = Index.from_catalyzer(trained.model, trained.meta)
        start = time.time()
        index.add(data.base, beam=beam)
        encode_s = time.time() - start
        codes = index._collection.codes_by_id(np.arange(len(data.base)))
        base_mse = float(((trained.model.decode(codes) - data.base) ** 2).sum(1).mean())
        start = time.time()
        _, ids = index.search(data.query, k=100)
        search_s = time.time() - start
        append_row({"experiment": "residual_arch", "data": data.name, "variant": variant,
                    "overrides": overrides, "beam": beam, "epochs": len(trained.history),
                    "best_epoch": best["epoch"], "val_mse": round(best["val_mse"], 5),
                    "base_mse": round(base_mse, 5), "train_s": round(train_s, 1),
                    "encode_s": round(encode_s, 1), "search_s": round(search_s, 1),
                    **recall_columns(ids, data.groundtruth)})


if __name__ == "__main__":
    main()
