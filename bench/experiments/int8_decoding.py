"""Issue #14/#15 scratch measurement (lever 64): search with the decoders in row-scaled int8.

Lever 63 moved greedy encoding's chain to `spreadcode.int8` at the same error and recall.
Search spends its time decoding too: the shortlist decoder over every code (an affine map plus
an MLP of the unit lattice points) and the full decoder over each query's shortlist (g_0's
table, then g_1..g_{M−1}: 3.8 M multiply-adds per code), in bfloat16 today (lever 58). Here
the MLPs of either or both run as `spreadcode.int8.Int8Mlp` (g_0 stays a table, the affine
map of the shortlist decoder stays as it is) and the same codes (greedy, "auto") are searched
by the default search (k = 100), cold (a new index each time), best of 3. The full decoder
runs in int8 as `ResidualCatalyzer.decode` does since lever 64, or in bfloat16 as before.

Run:  python bench/experiments/int8_decoding.py MODEL DATA
One JSON row per variant: search seconds, R@1/10/100.
"""
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from beam_sphere import index_of_codes, load_on_sphere  # noqa: E402
from spreadcode.int8 import Int8Mlp  # noqa: E402


class Int8Module(nn.Module):
    """An Int8Mlp where a module is expected (the shortlist decoder's ``mlp``)."""

    def __init__(self, mlp):
        super().__init__()
        self.int8 = Int8Mlp(mlp)

    def forward(self, x):
        return self.int8(x)


def search(model, meta, data, codes):
    """Best-of-3 cold default search of ``codes`` (k = 100): (seconds, recall columns)."""
    best, ids = float("inf"), None
    for _ in range(3):
        index = index_of_codes(model, meta, data, codes)
        start = time.perf_counter()
        _, ids = index.search(data.query, k=100)
        best = min(best, time.perf_counter() - start)
    return round(best, 2), recall_columns(ids, data.groundtruth)


def main(model_path, data_path):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.eval()
    codes = model.encode(data.base)
    for variant in ("bfloat16", "int8 full decoder", "int8 shortlist decoder", "int8 both"):
        model, meta = load_on_sphere(model_path, data)
        model.eval()
        if variant not in ("int8 full decoder", "int8 both"):  # the library's before lever 64
            model._runs_int8 = lambda precision: False
        if variant in ("int8 shortlist decoder", "int8 both"):
            model.shortlist.mlp = Int8Module(model.shortlist.mlp)
        seconds, recall = search(model, meta, data, codes)
        print(json.dumps({"decoders": variant, "search s": seconds, **recall}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
