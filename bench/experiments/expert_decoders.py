"""Issue #14 scratch experiment: piecewise decoders, E experts per later stage keyed by the
stage's own lattice point (lever 81).

Lever 80 halved the weights at equal multiply-adds and raw 384-d text lost 3.9 % of held-out
error: weights, not multiply-adds, are what its decoders lack, and lever 24 found their
error in the long tail of the spectrum, which LSQ's free codewords reach and a smooth
function of a 12-d lattice point does not. Here each decoder g_m (m ≥ 1) is E MLPs of the
default's shape; a code's stage-m point z picks one by the signs of ⟨z, v_b⟩ for
log2(E) fixed random directions v_b (a partition of the sphere that the lattice's sign
symmetry balances), so the decoder holds E× the weights at the same multiply-adds per
vector, each expert resolving its part of the sphere. Trained by the library
(`train_residual`, `spreadcode train`'s default config with FIELD=VALUE overrides), encoded
and searched in this process in float32 arithmetic (the int8 chain takes plain MLPs).

Run:  python bench/experiments/expert_decoders.py DATA [experts=E] [FIELD=VALUE ...]  (E: 2)
One JSON row appended to results-issue14.jsonl (as residual_variants.py's).
"""
import math
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

class ExpertMlp(nn.Module):
    """E MLPs of one shape; row i of the input [z, x̂] (z: the first ``d`` columns) goes to
    the expert of z's side of log2(E) fixed hyperplanes through the origin."""

    def __init__(self, d, d_in, hidden, d_out, experts, seed):
        super().__init__()
        self.d = d
        self.experts = nn.ModuleList([residual._mlp(d_in, hidden, d_out) for _ in range(experts)])
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("directions", torch.randn(d, int(math.log2(experts)),
                                                       generator=generator))
        self.register_buffer("powers", 2 ** torch.arange(int(math.log2(experts))))

    def forward(self, inp):
        key = ((inp[:, :self.d].float() @ self.directions > 0).long() * self.powers).sum(1)
        out = None
        for e, mlp in enumerate(self.experts):
            rows = (key == e).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            part = mlp(inp[rows])
            if out is None:
                out = part.new_zeros(inp.shape[0], part.shape[1])
            out = out.index_copy(0, rows, part)
        return out


class ExpertDecoders(residual.ResidualCatalyzer):
    """The default residual model with g_1..g_{M−1} as ExpertMlp of ``experts`` experts."""

    experts = 2

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        self.g = nn.ModuleList([self.g[0], *[
            ExpertMlp(block.d, block.d + d_in, self._decoder_width(m), d_in, self.experts,
                      seed=m)
            for m, block in enumerate(quantizer.blocks) if m > 0]])

    def _runs_int8(self, precision):
        return False


def main():
    overrides = parse_overrides(sys.argv[2:])
    ExpertDecoders.experts = overrides.pop("experts", ExpertDecoders.experts)
    trained, row = train_variant("expert_decoders", load_dataset(sys.argv[1]), overrides,
                                 ExpertDecoders)
    append_row({**row, "overrides": {"experts": ExpertDecoders.experts, **overrides},
                "lever": 81, "parameters": sum(p.numel() for p in trained.model.parameters()),
                "val_recall": trained.meta.training.get("val_recall")})


if __name__ == "__main__":
    main()
