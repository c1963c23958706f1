"""Issue #14 scratch measurement: where in the code tree the encoding beam pays.

`ResidualCatalyzer._encode_beam_batch` branches every stage the same way (2 candidates per
partial code, ``beam`` partial codes kept). Here each stage gets its own (candidates, keep):
a schedule such as ``1x1,1x1,2x2,2x1`` is greedy for stages 0-1 and a 2-way tree over the
last two. The cost counts the encoder (f) and decoder (g) MLP rows each vector runs (g_0 as
a table, the last stage's g only when it is scored), so schedules compare at equal work.

Run:  python bench/experiments/beam_schedule.py MODEL DATA SCHEDULE [SCHEDULE ...]
MODEL: a residual model file (one without ``output_norm`` gets the learn set's norm, as in
`beam_sphere.py`). One JSON row per schedule: f and g rows per vector, encode seconds, base
MSE of the full decoder, R@1/10/100 of `Index.search(query, 100)`.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402
from spreadcode import lattice  # noqa: E402
from spreadcode.catalyzer import forward_batches  # noqa: E402


def parse(schedule):
    """'1x1,2x2,...' -> [(candidates, keep), ...]."""
    return [tuple(int(v) for v in stage.split("x")) for stage in schedule.split(",")]


def cost(stages):
    """(f rows, g rows) per vector of a schedule; g_0 is a table, the last stage's g runs
    only when it chooses between candidates."""
    width, f_rows, g_rows = 1, 0, 0
    for m, (cands, keep) in enumerate(stages):
        f_rows += width
        last = m + 1 == len(stages)
        if m > 0 and not (last and width * cands == 1):
            g_rows += width * cands
        width = min(keep, width * cands)
    return f_rows, g_rows


def encode_schedule(model, x, stages):
    """The library's beam, each stage with its own (candidates, keep): uint8 (n, code_bytes)."""
    xs, n = model.preprocess(x), x.shape[0]
    xh, points, rows = None, np.zeros((n, 1, 0), dtype=np.int8), np.arange(n)[:, None]
    blocks = model.quantizer.blocks
    for m, (block, (cands, keep)) in enumerate(zip(blocks, stages)):
        width = 1 if xh is None else xh.shape[1]
        flat = None if xh is None else xh.reshape(n * width, model.d_in)
        y = nn.functional.normalize(
            model._encode_stage(m, xs.repeat_interleave(width, 0), flat), dim=1)
        if cands == 1:
            z = lattice.nearest_candidates(y.numpy(), block.param, 2)[:, :1]
        else:
            z = lattice.nearest_candidates(y.numpy(), block.param, cands)
        tried = z.shape[1]
        last = m + 1 == len(blocks)
        if last and width * tried == 1:
            points = np.concatenate([points, z.reshape(n, 1, block.d)], axis=2)
            break
        unit = torch.from_numpy(z.reshape(-1, block.d).astype(np.float32)
                                * np.float32(block.param ** -0.5))
        decoded = model._decode_stage(m, unit, None if flat is None
                                      else flat.repeat_interleave(tried, 0))
        decoded = decoded.reshape(n, width * tried, model.d_in)
        scored = decoded
        if last:
            flat_decoded = model.unprocess(decoded.reshape(-1, model.d_in))
            scored = model.preprocess(model._on_sphere(flat_decoded)).reshape(decoded.shape)
        error = (scored - xs[:, None]).pow(2).sum(2)
        order = torch.sort(error, dim=1, stable=True).indices[:, :keep]
        xh = decoded[torch.from_numpy(rows), order]
        order = order.numpy()
        points = np.concatenate([points[rows, order // tried],
                                 z.reshape(n, width * tried, block.d)[rows, order]], axis=2)
    return model.quantizer.quantize(points[:, 0].astype(np.float32))


def main(model_path, data_path, *schedules):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    for text in schedules:
        stages = parse(text)
        start = time.perf_counter()
        codes = forward_batches(model, data.base, lambda rows: encode_schedule(model, rows, stages),
                                model.quantizer.code_bytes, np.uint8, batch=1024)
        seconds = time.perf_counter() - start
        f_rows, g_rows = cost(stages)
        print(json.dumps({"schedule": text, "f rows": f_rows, "g rows": g_rows,
                          "encode s": round(seconds, 1),
                          **measure_codes(model, meta, data, codes)}), flush=True)

if __name__ == "__main__":
    main(*sys.argv[1:])
