"""Issue #14 scratch experiment: the residual default with one encoder and one decoder shared
by the stages after the first (lever 80).

The models are data-limited: on raw 384-d text (28k training rows) the default's ~10 M
weights decode their training rows far better than new ones, and every regulariser tried
moved the held-out error by under 2 %. Sharing f_1 = f_2 = f_3 and g_1 = g_2 = g_3 halves
the weights at the same multiply-adds per vector (RQ-VAE-like weight sharing): each shared
MLP sees three times the rows. A one-hot of the stage is appended to the shared MLPs' inputs
and each stage keeps its own BatchNorms (the stages' activations differ in scale; a shared
BatchNorm's running statistics would be the stages' average in eval mode). Trained by the
library (`train_residual`, `spreadcode train`'s default config with FIELD=VALUE overrides),
then the base encoded greedily and searched by the default search, in this process (the
model's file would hold the shared weights once per stage).

Run:  python bench/experiments/shared_stages.py DATA [FIELD=VALUE ...]
One JSON row appended to results-issue14.jsonl (as residual_variants.py's).
"""
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset  # noqa: E402
from residual_variants import parse_overrides, train_variant  # noqa: E402
from spreadcode import residual  # noqa: E402


def shared_mlps(d_in, hidden, d_out, copies):
    """``copies`` Linear / BatchNorm1d / ReLU MLPs (residual._mlp's shape) whose Linear layers
    are the same modules and whose BatchNorms are their own."""
    template = residual._mlp(d_in, hidden, d_out)
    return [nn.Sequential(*[layer if isinstance(layer, nn.Linear) else
                            (nn.BatchNorm1d(layer.num_features)
                             if isinstance(layer, nn.BatchNorm1d) else nn.ReLU())
                            for layer in template]) for _ in range(copies)]


class SharedStages(residual.ResidualCatalyzer):
    """The default residual model with f_1..f_{M−1} and g_1..g_{M−1} sharing their Linear
    layers, a one-hot of the stage appended to their inputs."""

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        later = len(quantizer.blocks) - 1
        d = quantizer.blocks[1].d
        assert all(block.d == d for block in quantizer.blocks[1:]), "later stages differ"
        self.f = nn.ModuleList([self.f[0], *shared_mlps(2 * d_in + later, self.hidden, d, later)])
        self.g = nn.ModuleList([self.g[0], *shared_mlps(d + d_in + later, self.hidden_decoder,
                                                        d_in, later)])

    def _stage_code(self, m, rows, like):
        code = torch.zeros(rows, len(self.quantizer.blocks) - 1, dtype=like.dtype,
                           device=like.device)
        code[:, m - 1] = 1
        return code

    def _encode_stage(self, m, xs, xh, f=None):
        f = self.f if f is None else f
        if m == 0:
            return f[0](xs)
        return f[m](torch.cat([xs - xh, xh, self._stage_code(m, len(xs), xs)], 1))

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        if m == 0:
            return super()._decode_stage(m, z, xh, ranks, g)
        g = self.g if g is None else g
        return xh + g[m](torch.cat([z, xh, self._stage_code(m, len(z), z)], 1))

    def state_dict(self, *args, **kwargs):
        """Every tensor its own copy (the shared Linear weights appear once per stage), so
        that the model's bytes can be hashed."""
        return {name: value.clone() for name, value in super().state_dict(*args, **kwargs).items()}


def main():
    trained, row = train_variant("shared_stages", load_dataset(sys.argv[1]),
                                 parse_overrides(sys.argv[2:]), SharedStages)
    append_row({**row, "lever": 80,
                "parameters": sum(p.numel() for p in trained.model.parameters()),
                "val_recall": trained.meta.training.get("val_recall")})


if __name__ == "__main__":
    main()
