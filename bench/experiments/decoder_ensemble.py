"""Issue #14 scratch experiment: a second decoder chain, trained after the fact, averaged in.

The residual models are data-limited (held-out MSE ~20 % above the training rows'), so part
of their decoders' error is variance. A second chain g' of the model's shape, trained from a
fresh initialisation on the fixed greedy codes of the same training rows (teacher forcing:
x̂'_m = x̂'_{m−1} + g'_m([z_m, x̂'_{m−1}]), AdamW with the model's decay, one-cycle, the epoch
of lowest held-out error kept), errs differently; the average of the two reconstructions
(then put on the sphere, as the model's decoder does) should err less than either. Encoding
is unchanged (it runs the model's own chain); only re-ranking would decode twice.

Run:  python bench/experiments/decoder_ensemble.py MODEL DATA [EPOCHS] [SEED]
Prints JSON rows: held-out / base MSE and R@1/10/100 of an exhaustive search over the base
decoded by g (the model), g' and their mean.
"""
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from beam_sphere import load_on_sphere  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402
from spreadcode.torchutil import adam  # noqa: E402


def chain_decode(model, points):
    """x̂_M in the preprocessed space from the stages' unit points, a list of float32
    tensors (n, d_m): the model's decoder chain run on them (no table lookup)."""
    xh = None
    for m, z in enumerate(points):
        xh = model._decode_stage(m, z, xh)
    return xh


def stage_points(model, codes):
    return [torch.from_numpy(block.reconstruct(ranks)) for block, ranks in
            zip(model.quantizer.blocks, model.quantizer.block_codes(codes))]


@torch.no_grad()
def decoded(model, codes, batch=8192):
    model.eval()
    return torch.cat([chain_decode(model, stage_points(model, codes[s:s + batch]))
                      for s in range(0, len(codes), batch)])


def main(model_path, data_path, epochs=25, seed=1):
    epochs, seed = int(epochs), int(seed)
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.eval()
    train_rows, val_rows = residual.held_out_rows(len(data.learn), meta.training["seed"])
    x, x_val = data.learn[train_rows], data.learn[val_rows]
    codes, codes_val = model.encode(x), model.encode(x_val)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        other = residual.ResidualCatalyzer(model.d_in, model.quantizer, model.hidden,
                                           model.hidden_decoder, None, model.output_norm)
    other.load_state_dict({k: v for k, v in model.state_dict().items()
                           if k in ("center", "scale")}, strict=False)
    params = [p for g in other.g for p in g.parameters()]
    optimizer = adam(params, 1e-3, residual.WEIGHT_DECAY)
    target = other.preprocess(torch.from_numpy(x))
    target_val = other.preprocess(torch.from_numpy(x_val))
    points = stage_points(other, codes)
    unit = float(other.scale) ** -2
    rng = np.random.default_rng(seed)
    steps, batch = len(x) // 256, 256
    best, best_state, started = None, None, time.perf_counter()
    for epoch in range(epochs):
        other.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = residual.one_cycle_lr(1e-3, (epoch * steps + step) / (epochs * steps))
            pick = order[step * batch:(step + 1) * batch]
            loss = (chain_decode(other, [z[pick] for z in points]) - target[pick]).pow(2).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val = float((decoded(other, codes_val) - target_val).pow(2).sum(1).mean()) * unit
        print(json.dumps({"epoch": epoch + 1, "held-out mse": round(val, 4),
                          "s": round(time.perf_counter() - started)}), flush=True)
        if best is None or val < best:
            best, best_state = val, {k: v.clone() for k, v in other.state_dict().items()}
    other.load_state_dict(best_state)
    other.eval()
    base_codes = model.encode(data.base)
    own, new = decoded(model, base_codes), decoded(other, base_codes)
    own_val, new_val = decoded(model, codes_val), decoded(other, codes_val)
    for name, a, b in (("g (the model)", own, own_val), ("g' (trained after)", new, new_val),
                       ("mean of g and g'", (own + new) / 2, (own_val + new_val) / 2)):
        with torch.no_grad():
            base_hat = model._on_sphere(model.unprocess(a)).numpy()
            val_hat = model._on_sphere(model.unprocess(b)).numpy()
        _, ids = exact_knn(base_hat.astype(np.float32), data.query, 100)
        print(json.dumps({"decoder": name,
                          "held-out mse": round(float(((val_hat - x_val) ** 2).sum(1).mean()), 4),
                          "base mse": round(float(((base_hat - data.base) ** 2).sum(1).mean()), 4),
                          **recall_columns(ids, data.groundtruth)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
