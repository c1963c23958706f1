"""Issue #14 scratch measurement (lever 73): the encoding chain's MLPs pruned after training.

Greedy encoding is 69 % int8 products at this CPU's peak (lever 63), so only fewer
multiply-adds make it faster. Narrow chains trained as such (levers 35, 59, 62) cost recall
on pypi. Here the trained MLPs keep their weights and lose their weakest hidden units, the
layer after each pruned one refitted by least squares to what the full MLP computed there
(post-training pruning with reconstruction): each MLP Linear/BN/ReLU ×2 /Linear becomes
Linear/ReLU ×2 /Linear with ``keep`` × its hidden units, BatchNorms folded. Only encoding
runs the pruned chain (f_m, and g_1..g_{M−2}, whose x̂ feeds the next encoder); codes decode
by the model's own decoders as always.

A unit's weight is E[h_j²] · ‖W_next[:, j]‖² (its share of the next layer's input energy) on
CALIBRATION learn rows pushed through the float32 chain.

Run:  python bench/experiments/pruned_chain.py MODEL DATA KEEP_F KEEP_G [KEEP_F KEEP_G ...]
KEEP_*: the share of hidden units kept in the encoders f / the chain's decoders g (1: none
pruned). One JSON row per setting (and the model as it is): vectors/s of greedy "auto"
encoding (best of 3), multiply-adds per vector, codes equal to the model's, base MSE,
R@1/10/100 of the default search.
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
from spreadcode import int8  # noqa: E402

CALIBRATION = 30_000
RIDGE = 1e-3


def chain_inputs(model, x):
    """Inputs of f_m and g_m (m ≥ 1) on float32 greedy encoding of x: ({m: f_m input},
    {m: g_m input}) float32 tensors."""
    f_in, g_in = {}, {}
    with torch.no_grad():
        xs, xh = model.preprocess(torch.from_numpy(x)), None
        blocks = model.quantizer.blocks
        for m, block in enumerate(blocks):
            f_in[m] = xs if m == 0 else torch.cat([xs - xh, xh], 1)
            y = nn.functional.normalize(model.f[m](f_in[m]), dim=1)
            z = torch.from_numpy(block.reconstruct(block.quantize(y.numpy())))
            if m > 0:
                g_in[m] = torch.cat([z, xh], 1)
            xh = model._decode_stage(m, z, xh)
    return f_in, g_in


def least_squares(h, target):
    """(W (m, k), b (m,)) minimising ‖h Wᵀ + b − target‖² + RIDGE·‖W‖² · mean energy."""
    ones = torch.ones(h.shape[0], 1, dtype=torch.float64)
    a = torch.cat([h.double(), ones], 1)
    gram = a.T @ a
    gram += RIDGE * gram.diagonal().mean() * torch.eye(a.shape[1], dtype=torch.float64)
    sol = torch.linalg.solve(gram, a.T @ target.double())
    return sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()


def pruned(mlp, x, keep):
    """The MLP (Linear/BN/ReLU, Linear/BN/ReLU, Linear) as Linear/ReLU/Linear/ReLU/Linear with
    ``keep`` × its hidden units in each hidden layer, refitted on its inputs x."""
    (w1, b1), (w2, b2), (w3, b3) = int8.fold_batch_norms(mlp)
    if keep >= 1:
        layers = [(w1, b1), (w2, b2), (w3, b3)]
    else:
        k1, k2 = int(round(keep * w1.shape[0])), int(round(keep * w2.shape[0]))
        with torch.no_grad():
            h1 = torch.relu(x @ w1.T + b1)
            pre2 = h1 @ w2.T + b2
            h2 = torch.relu(pre2)
            out = h2 @ w3.T + b3
            kept1 = torch.argsort((h1.pow(2).mean(0) * w2.pow(2).sum(0)), descending=True)[:k1]
            w1p, b1p = w1[kept1], b1[kept1]
            h1p = h1[:, kept1]
            # the second layer's pre-activations refitted from the kept units, then its units
            # ranked on the refitted activations
            w2p, b2p = least_squares(h1p, pre2)
            h2r = torch.relu(h1p @ w2p.T + b2p)
            kept2 = torch.argsort((h2r.pow(2).mean(0) * w3.pow(2).sum(0)), descending=True)[:k2]
            w2p, b2p = w2p[kept2], b2p[kept2]
            w3p, b3p = least_squares(h2r[:, kept2], out)
        layers = [(w1p, b1p), (w2p, b2p), (w3p, b3p)]
    seq = []
    for i, (w, b) in enumerate(layers):
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data, lin.bias.data = w.clone(), b.clone()
        seq += [lin] if i == len(layers) - 1 else [lin, nn.ReLU()]
    return nn.Sequential(*seq).eval()


def macs(mlps):
    return sum(layer.in_features * layer.out_features for mlp in mlps for layer in mlp
               if isinstance(layer, nn.Linear))


def main(model_path, data_path, *keeps):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.eval()
    stages = len(model.quantizer.blocks)
    f_in, g_in = chain_inputs(model, data.learn[:CALIBRATION])
    model.encode(data.base[:70_000])  # warm up; g_0's table from then on
    own_f, own_g = model._int8_chain()
    reference = model.encode(data.base)
    settings = [(1.0, 1.0)] + [(float(a), float(b)) for a, b in zip(keeps[::2], keeps[1::2])]
    for keep_f, keep_g in settings:
        f = [pruned(model.f[m], f_in[m], keep_f) for m in range(stages)]
        g_chain = {m: pruned(model.g[m], g_in[m], keep_g) for m in range(1, stages - 1)}
        chain = ([int8.Int8Mlp(mlp) for mlp in f],
                 [own_g[m] if m not in g_chain else int8.Int8Mlp(g_chain[m])
                  for m in range(stages)])
        model._int8_chain = lambda chain=chain: chain
        try:
            rates = []
            for _ in range(3):
                start = time.perf_counter()
                codes = model.encode(data.base)
                rates.append(len(data.base) / (time.perf_counter() - start))
        finally:
            del model._int8_chain
        print(json.dumps({"keep f": keep_f, "keep g": keep_g, "vectors/s": round(max(rates)),
                          "MACs": macs(f) + macs(g_chain.values()) + sum(
                              macs([model.g[m]]) for m in range(1, stages - 1)
                              if m not in g_chain),
                          "codes equal %": round(100 * float((codes == reference).all(1).mean()), 1),
                          **measure_codes(model, meta, data, codes)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
