"""Issue #14 scratch experiment: the depth of the residual model's MLPs.

Every f_m (encoder) and g_m (decoder) of the default has two hidden layers (Linear, batch
norm, ReLU, twice, then a Linear out); widths were swept (levers 5, 15, 21, 26), depth never.
Lever 8 found the encoders to be the bottleneck (the same decoders reconstruct 8 % better
from codes found by search), so a third hidden layer in f buys capacity where it is short,
at + 262k multiply-adds per stage and vector (encoders 512: 366k → 628k).

``dec_rank=R``: the decoders' hidden-to-hidden layers factored through rank R (two Linears,
h → R → h, no nonlinearity between): 2·h·R multiply-adds instead of h² (h 1024, R 256: a
g_m of 1.26M → 0.73M), the width of the activations kept.

Run:  python bench/experiments/residual_depth.py DATA OUT [enc_layers=L] [dec_layers=L] [dec_rank=R] [FIELD=VALUE ...]
(the rest as `residual_variants.py`; the model file it writes does not load as a library
model when a depth differs from 2). One JSON row appended to results-issue14.jsonl.
"""
import os
import sys

from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import residual  # noqa: E402


def mlp_of_depth(layers, dec_rank=None):
    """An `residual._mlp` replacement: ``layers[kind]`` hidden layers, kind "f" for an
    encoder (its output narrower than its input), "g" for a decoder, whose hidden-to-hidden
    layers go through rank ``dec_rank`` (None: full rank)."""
    def build(d_in, hidden, d_out):
        kind = "f" if d_out < d_in and d_out <= 24 else "g"
        modules, width = [], d_in
        for _ in range(layers[kind]):
            if kind == "g" and dec_rank and width == hidden:
                linear = nn.Sequential(nn.Linear(width, dec_rank, bias=False),
                                       nn.Linear(dec_rank, hidden))
            else:
                linear = nn.Linear(width, hidden)
            modules += [linear, nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*modules, nn.Linear(width, d_out))
    return build


if __name__ == "__main__":
    depth, rank, rest = {"f": 2, "g": 2}, None, []
    for item in sys.argv[3:]:
        key, _, value = item.partition("=")
        if key in ("enc_layers", "dec_layers"):
            depth["f" if key == "enc_layers" else "g"] = int(value)
        elif key == "dec_rank":
            rank = int(value)
        else:
            rest.append(item)
    residual._mlp = mlp_of_depth(depth, rank)
    sys.argv[3:] = rest
    residual_variants.main(f"residual_depth f{depth['f']} g{depth['g']}"
                           + (f" rank {rank}" if rank else ""))
