"""Issue #14 scratch measurement: the last stage's lattice point chosen by a small scorer.

Greedy encoding takes, at every stage, the lattice point nearest the encoder's output. At
the last stage any of the K nearest points can be tried without running another encoder:
the one whose decoded vector is nearest x sets the final error (lever 33: scoring the last
stage's 2 nearest points by the full decoder g_{M−1} gave + 0.4 R@1). The full decoder costs
~1.3 M multiply-adds per candidate, as much again as the greedy chain per point; here each
candidate is scored by a small MLP g̃ ([z, x̂_{M−2}] -> increment, hidden H) distilled after
training to g_{M−1}'s increments on the learn set's K candidates, and only the winner is
decoded by g_{M−1} (at search, as now). Codes stay S(d, r²) ranks; g̃ would live in the
model. ``kind=score`` fits instead a scalar scorer of [z, x − x̂_{M−2}, x̂_{M−2}] to the full
decoder's errors (each row's mean removed: only their order counts).

Run:  python bench/experiments/last_choice_scorer.py MODEL DATA [kind=increment|score]
          [hidden=H] [cands=K,...] [epochs=E, 0: no scorer]
One JSON row per scoring: greedy, the full decoder's choice among K (on the sphere, as the
library's beam scores its last stage), and g̃'s choice among K (its agreement with the full
decoder's), each with the base MSE and the default search's R@1/10/100.
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
from spreadcode.residual import _mlp, one_cycle_lr  # noqa: E402


@torch.no_grad()
def greedy_stages(model, xs, pick):
    """Float32 greedy encoding of the preprocessed rows xs (n, d_in), stage by stage: at stage
    m, ``pick(m, block, y, xs)`` returns the stage's points int8 (n, d_m) for the encoder's
    unit output y (n, d_m), or None to stop before it. -> (the points of the stages run, a
    list; x̂ after them (n, d_in), None before any; y of the stage stopped at, or None)."""
    blocks = model.quantizer.blocks
    read, xh, points = model._view(xs), None, []
    for m, block in enumerate(blocks):
        y = nn.functional.normalize(
            model._encode_stage(m, read, None if xh is None else model._view(xh)), dim=1)
        z = pick(m, block, y, xs)
        if z is None:
            return points, xh, y
        points.append(z)
        if m + 1 < len(blocks):
            xh = model._decode_stage(m, torch.from_numpy(unit(z, block)), xh)
    return points, xh, None


def nearest_point(m, block, y, xs):
    """`greedy_stages`'s pick of the nearest point, the greedy encoder's."""
    return lattice.nearest_candidates(y.numpy(), block.param, 1)[:, 0]


@torch.no_grad()
def last_stage_inputs(model, x, cands, batch=8192):
    """Greedy encoding of x float32 (n, d_in) up to the last stage: (xs (n, d_in), x̂_{M−2}
    (n, d_in), both preprocessed; the earlier stages' points int8 (n, d_out − d_last); the
    last stage's ``cands`` nearest points int8 (n, K, d_last))."""
    last = len(model.quantizer.blocks) - 1

    def up_to_last(m, block, y, xs):
        return None if m == last else nearest_point(m, block, y, xs)

    out = [[], [], [], []]
    for start in range(0, len(x), batch):
        xs = model.preprocess(torch.from_numpy(x[start:start + batch]).float())
        points, xh, y = greedy_stages(model, xs, up_to_last)
        z = lattice.nearest_candidates(y.numpy(), model.quantizer.blocks[last].param, cands)
        for part, value in zip(out, (xs, xh, np.hstack(points), z)):
            part.append(value)
    return (torch.cat(out[0]), torch.cat(out[1]), np.concatenate(out[2]),
            np.concatenate(out[3]))


def unit(z, block):
    """Lattice points int8 (..., d) as unit float32 vectors."""
    return z.astype(np.float32) * np.float32(block.param ** -0.5)


@torch.no_grad()
def full_increments(model, xh, z, batch=4096):
    """g_{M−1}'s increments for every candidate: float32 (n, K, d_in)."""
    block, last = model.quantizer.blocks[-1], len(model.quantizer.blocks) - 1
    n, k, _ = z.shape
    out = []
    for start in range(0, n, batch):
        rows = xh[start:start + batch]
        flat = torch.from_numpy(unit(z[start:start + batch], block).reshape(-1, block.d))
        rep = rows.repeat_interleave(k, 0)
        out.append((model._decode_stage(last, flat, rep) - rep).reshape(len(rows), k, -1))
    return torch.cat(out)


def on_sphere_error(model, xs, xh, inc):
    """‖x − x̂‖² of each candidate as `decode` returns it (on the sphere): (n, K)."""
    n, k, d = inc.shape
    decoded = (xh[:, None] + inc).reshape(-1, d)
    scored = model.preprocess(model._on_sphere(model.unprocess(decoded))).reshape(n, k, d)
    return (scored - xs[:, None]).pow(2).sum(2)


def scorer_inputs(model, xh, z, xs=None):
    """[z_c, view(x̂)] per candidate, with view(x − x̂) too when ``xs`` is given (the scalar
    scorer): float32 (n, K, width)."""
    block = model.quantizer.blocks[-1]
    n, k, _ = z.shape
    with torch.no_grad():
        parts = [model._view(xh)] if xs is None else [model._view(xs - xh), model._view(xh)]
    return torch.cat([torch.from_numpy(unit(z, block))]
                     + [p[:, None].expand(n, k, p.shape[1]) for p in parts], 2)


def train_scorer(model, xh, z, target, hidden, epochs, batch=256, peak=2e-3, seed=0, xs=None):
    """g̃: _mlp([z, view(x̂)] -> d_in) fitted to the increments ``target`` (n, K, d_in); with
    ``xs``, a scalar scorer _mlp([z, view(x − x̂), view(x̂)] -> 1) fitted to the full decoder's
    errors ``target`` (n, K), each row's mean removed from both (only their order counts)."""
    torch.manual_seed(seed)
    inputs = scorer_inputs(model, xh, z, xs)
    n, k, width = inputs.shape
    scorer = _mlp(width, hidden, 1 if xs is not None else target.shape[2])
    optimizer = torch.optim.Adam(scorer.parameters(), lr=peak)
    steps, step = epochs * ((n + batch - 1) // batch), 0
    for epoch in range(epochs):
        order, total = torch.randperm(n), 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            for group in optimizer.param_groups:
                group["lr"] = one_cycle_lr(peak, step / steps)
            out = scorer(inputs[rows].reshape(-1, width))
            if xs is None:
                loss = (out - target[rows].reshape(-1, target.shape[2])).pow(2).sum(1).mean()
            else:
                diff = out.reshape(len(rows), k) - target[rows]
                loss = (diff - diff.mean(1, keepdim=True)).pow(2).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            step += 1
        print(json.dumps({"epoch": epoch, "distil mse": round(total / n, 5)}), flush=True)
    return scorer.eval()


@torch.no_grad()
def scorer_errors(model, scorer, xs, xh, z, scalar, batch=4096):
    """g̃'s estimate of each candidate's error: float32 (n, K)."""
    out = []
    for start in range(0, len(xh), batch):
        part = slice(start, start + batch)
        inputs = scorer_inputs(model, xh[part], z[part], xs[part] if scalar else None)
        n, k, width = inputs.shape
        pred = scorer(inputs.reshape(-1, width)).reshape(n, k, -1)
        out.append(pred[:, :, 0] if scalar
                   else ((xs[part] - xh[part])[:, None] - pred).pow(2).sum(2))
    return torch.cat(out)


def codes_of(model, points, z, choice):
    chosen = z[np.arange(len(z)), choice]
    return model.quantizer.quantize(np.hstack([points, chosen]).astype(np.float32))


def main(model_path, data_path, *fields):
    torch.set_num_threads(2)
    options = dict(field.split("=", 1) for field in fields)
    hidden, epochs = int(options.get("hidden", 128)), int(options.get("epochs", 10))
    counts = [int(v) for v in options.get("cands", "8").split(",")]
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.eval()
    kmax = max(counts)
    start = time.perf_counter()
    scalar = options.get("kind", "increment") == "score"
    scorer = None
    if epochs:  # epochs=0: the full decoder's choice alone
        xs_l, xh_l, _, z_l = last_stage_inputs(model, data.learn, kmax)
        target = full_increments(model, xh_l, z_l)
        if scalar:
            target = ((xs_l - xh_l)[:, None] - target).pow(2).sum(2)
        scorer = train_scorer(model, xh_l, z_l, target, hidden, epochs,
                              xs=xs_l if scalar else None)
        del target
    distil_s = time.perf_counter() - start
    xs, xh, points, z = last_stage_inputs(model, data.base, kmax)
    full = on_sphere_error(model, xs, xh, full_increments(model, xh, z))
    base = {"model": os.path.basename(model_path), "kind": "score" if scalar else "increment",
            "hidden": hidden, "epochs": epochs,
            "distil s": round(distil_s, 1)}
    print(json.dumps({**base, "scoring": "greedy",
                      **measure_codes(model, meta, data, codes_of(model, points, z,
                                                                  np.zeros(len(z), int)))}),
          flush=True)
    for k in counts:
        best_full = full[:, :k].argmin(1).numpy()
        choices = [("full g", best_full)]
        summary = {"K": k, "full g keeps greedy": round(float((best_full == 0).mean()), 3),
                   "full error gain": round(float((full[:, 0] - full[:, :k].min(1).values)
                                                  .mean()), 4)}
        if scorer is not None:
            best_small = scorer_errors(model, scorer, xs, xh, z, scalar)[:, :k].argmin(1).numpy()
            choices.append(("scorer", best_small))
            summary["scorer error gain"] = round(float(
                (full[:, 0] - full[np.arange(len(z)), best_small]).mean()), 4)
        print(json.dumps(summary), flush=True)
        for name, choice in choices:
            print(json.dumps({**base, "scoring": name, "K": k,
                              "agrees with full": round(float((choice == best_full).mean()), 3),
                              **measure_codes(model, meta, data,
                                              codes_of(model, points, z, choice))}),
                  flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
