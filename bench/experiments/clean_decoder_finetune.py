"""Issue #14 scratch experiment (lever 86): decoders fine-tuned on the codes of clean inputs.

The default trains a denoising auto-encoder: the encoders read x plus Gaussian noise, the
decoders learn E[x | code of a noisy x]. Search decodes codes of clean vectors, whose
distribution differs. This fine-tunes a copy of the decoders, from the trained weights, on
the fixed greedy codes of the clean training rows (teacher forcing: the chain
x̂_m = x̂_{m-1} + g_m([z_m, x̂_{m-1}]) run through the copy, loss ‖x̂_M − x‖² in the
preprocessed space; BatchNorms frozen; AdamW with the default decay, one-cycle at ``lr``).

``stages``: "last" fine-tunes g_{M-1} only, which greedy encoding does not run, so the
codes stay the model's and the default search (`Index`, k = 100) measures it as shipped;
"all" fine-tunes every g, measured by decoding the base with the copy (on the sphere) and
searching it exhaustively by cosine, next to the same for the model's own decoders.

Run:  python bench/experiments/clean_decoder_finetune.py MODEL DATA SEED [epochs=E] [lr=L]
      [stages=last|all]
SEED: the model's training seed (its held-out split). Appends one JSON row: the held-out
error per epoch and the recall of the model's decoders and of the fine-tuned ones.
"""
import copy
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset, recall_columns  # noqa: E402
from residual_variants import parse_overrides  # noqa: E402
from spreadcode import Index  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402
from spreadcode.residual import WEIGHT_DECAY, held_out_rows, one_cycle_lr  # noqa: E402
from spreadcode.torchutil import adam  # noqa: E402

BATCH = 256


def chain(model, g, z, xh=None, first=0, stop=None):
    """x̂ (n, d_in) of the unit points z (n, d_out) through the decoders ``g`` of stages
    ``first`` to ``stop`` (excluded; default: all), x̂ before them being ``xh`` (n, d_in)
    (None for the first stage)."""
    start = sum(block.d for block in model.quantizer.blocks[:first])
    for m, block in enumerate(model.quantizer.blocks[first:stop], first):
        zm = z[:, start:start + block.d]
        start += block.d
        xh = g[0](zm) if m == 0 else xh + g[m](torch.cat([zm, xh], 1))
    return xh


def finetune(model, z, xs, z_val, xs_val, epochs, lr, stages):
    """A fine-tuned copy of model.g and its held-out error per epoch (before, after each)."""
    g = copy.deepcopy(model.g).eval()
    first = len(g) - 1 if stages == "last" else 0
    for m, module in enumerate(g):
        module.requires_grad_(m >= first)
    with torch.no_grad():  # the frozen stages' x̂, once
        prefix, prefix_val = ((None, None) if first == 0 else
                              (chain(model, g, z, stop=first), chain(model, g, z_val, stop=first)))

    def error():
        with torch.no_grad():
            return float((chain(model, g, z_val, prefix_val, first) - xs_val).pow(2).sum(1).mean())

    optimizer = adam([p for p in g.parameters() if p.requires_grad], lr, WEIGHT_DECAY)
    steps = len(xs) // BATCH
    gen = torch.Generator().manual_seed(0)
    history = [error()]
    for epoch in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = one_cycle_lr(lr, (epoch * steps + step) / (epochs * steps))
            rows = order[step * BATCH:(step + 1) * BATCH]
            out = chain(model, g, z[rows], None if prefix is None else prefix[rows], first)
            loss = (out - xs[rows]).pow(2).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(error())
    return g, history


def decoded_search(model, codes, queries, k=100):
    """Exhaustive cosine search of the decoded base: int64 (nq, k)."""
    base = model.decode(codes)
    base = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ base.T
    return np.argsort(-scores, axis=1)[:, :k]


def main():
    model_path, data = sys.argv[1], load_dataset(sys.argv[2])
    seed = int(sys.argv[3])
    opts = {"epochs": 8, "lr": 1e-4, "stages": "last", **parse_overrides(sys.argv[4:])}
    torch.manual_seed(0)
    model, meta = load_catalyzer(model_path)
    train_rows, val_rows = held_out_rows(len(data.learn), seed)
    learn = data.learn
    start = time.time()
    codes = model.encode(learn)
    z = torch.from_numpy(model.unit_points(codes))
    xs = model.preprocess(torch.from_numpy(learn)).detach()
    g, history = finetune(model, z[train_rows], xs[train_rows], z[val_rows], xs[val_rows],
                          opts["epochs"], opts["lr"], opts["stages"])
    tune_s = time.time() - start
    tuned = copy.deepcopy(model)
    tuned.g = g
    row = {"experiment": "clean_decoder_finetune", "lever": 86, "data": data.name,
           "model": os.path.basename(model_path), "overrides": opts,
           "val_mse_before": round(history[0], 5), "val_mse_after": round(history[-1], 5),
           "val_mse_per_epoch": [round(h, 5) for h in history], "tune_s": round(tune_s, 1)}
    if opts["stages"] == "last":  # the codes are the model's: search as shipped
        for name, m in (("search model", model), ("search tuned", tuned)):
            index = Index.from_catalyzer(m, meta)
            index.add(data.base)
            _, ids = index.search(data.query, k=100)
            row[name] = recall_columns(ids, data.groundtruth)
    base_codes = model.encode(data.base)
    for name, m in (("model decall", model), ("tuned decall", tuned)):
        row[name] = recall_columns(decoded_search(m, base_codes, data.query), data.groundtruth)
    append_row(row)


if __name__ == "__main__":
    main()
