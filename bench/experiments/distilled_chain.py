"""Issue #14 scratch experiment: encoding through small decoders distilled from the model's.

Greedy encoding spends most of its time in the decoders g_1..g_{M−2}, which only compute
x̂_m for the next stage's encoder. Here each is replaced, for encoding only, by an MLP of
hidden HIDDEN (two layers, as g) distilled after training to g_m's output on the learn set's
greedy codes (teacher forcing, Adam 1e-3, EPOCHS epochs); the codes are decoded and searched
by the model's own decoders as always (lever 7 trained such a chain jointly instead).

Run:  python bench/experiments/distilled_chain.py MODEL DATA HIDDEN EPOCHS
Prints JSON rows: greedy with g, greedy with the distilled chain (encode s, base MSE on the
sphere, R@1/10/100 of the default search).
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
from spreadcode import residual  # noqa: E402
from spreadcode.catalyzer import forward_batches  # noqa: E402


def chain(model, x, small=None):
    """Greedy encoding of a tensor batch; ``small``: {m: MLP} replacing g_m's increment for
    the stages it names. Returns (codes uint8, [(z_m, x̂_{m−1}, increment_m)] per stage)."""
    xs, xh, ranks, pairs = model.preprocess(x), None, [], []
    blocks = model.quantizer.blocks
    for m, block in enumerate(blocks):
        y = nn.functional.normalize(model._encode_stage(m, xs, xh), dim=1)
        ranks.append(block.quantize(y.numpy()))
        if m + 1 < len(blocks):
            z = torch.from_numpy(block.reconstruct(ranks[-1]))
            if m > 0 and small is not None and m in small:
                xh = xh + small[m](torch.cat([z, xh], 1))
            else:
                new = model._decode_stage(m, z, xh, ranks[-1])
                if m > 0:
                    pairs.append((m, z, xh, new - xh))
                xh = new
    return model.quantizer.join_block_codes(ranks), pairs


def main(model_path, data_path, hidden, epochs):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.eval()
    model.encode(np.vstack([data.base] * 2)[:70000])  # the g_0 table
    inputs = {}
    with torch.no_grad():
        for start in range(0, len(data.learn), 4096):
            for m, z, xh, inc in chain(model, torch.from_numpy(
                    np.ascontiguousarray(data.learn[start:start + 4096], dtype=np.float32)))[1]:
                inputs.setdefault(m, []).append((z, xh, inc))
    small = {}
    started = time.perf_counter()
    for m, rows in inputs.items():
        z, xh, inc = (torch.cat(parts) for parts in zip(*rows))
        net = residual._mlp(z.shape[1] + model.d_in, int(hidden), model.d_in)
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)
        steps = int(epochs) * (len(z) // 256)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = residual.one_cycle_lr(1e-3, step / steps)
            pick = torch.randint(0, len(z), (256,))
            loss = (net(torch.cat([z[pick], xh[pick]], 1)) - inc[pick]).pow(2).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        small[m] = net.eval()
    distill_s = time.perf_counter() - started
    for name, nets in (("g (the model)", None), (f"distilled, hidden {hidden}", small)):
        started = time.perf_counter()
        codes = forward_batches(model, data.base, lambda rows: chain(model, rows, nets)[0],
                                model.quantizer.code_bytes, np.uint8)
        seconds = time.perf_counter() - started
        print(json.dumps({"chain": name, "distill s": round(distill_s, 1),
                          "encode s": round(seconds, 2),
                          **measure_codes(model, meta, data, codes)}), flush=True)

if __name__ == "__main__":
    main(*sys.argv[1:])
