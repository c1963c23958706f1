"""Issue #14 scratch measurement (lever 65): encoders fine-tuned to pick what a beam picks.

The encoders f_m are an amortised guess (module docstring of `spreadcode.residual`): a beam
over the lattices' two nearest points finds codes of lower error with the same decoders
(wordnet, `--beam 8`: + 3.5 R@1), at 11× greedy's time. Here, after training, the model's
learn rows are encoded with a beam; the decoders are frozen, and each f_m is fine-tuned so
that its output's nearest point of S(d_m, r_m²) is the beam's choice z*_m, reading the
running reconstruction x̂*_{m−1} of the beam's own codes (teacher forcing). The loss is a
hinge on the dot products of the unit output y with z*_m and with its most dangerous rival
(the nearest point that is not z*_m; `spreadcode.lattice.nearest_candidates`):
relu(MARGIN − y·z*_m + y·z_rival), summed over the stages. Greedy encoding then runs as
always, at greedy speed. BatchNorm statistics stay frozen (eval mode).

Run:  python bench/experiments/beam_distilled_encoder.py MODEL DATA [BEAM [EPOCHS [LR [MARGIN]]]]
Prints one JSON row per epoch (per stage, the share of greedy choices equal to the beam's,
and the MSE, on the first 10,000 base rows and on 10,000 training rows), then the final rows: greedy before / after, on the whole base (MSE,
R@1/10/100 of `Index.search(query, 100)`), and the time the distillation took.
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
from spreadcode import lattice, residual  # noqa: E402

MARGIN = 0.02
BATCH = 256
CHECK_ROWS = 10_000


def teacher(model, vectors, beam):
    """What the beam makes of float32 vectors (n, d_in): codes uint8 (n, code_bytes), and per
    stage the unit points z*_m float32 (n, d_m) and the stage's input x̂*_{m−1} (None, then
    float32 (n, d_in)), in the preprocessed space."""
    codes = model.encode(vectors, beam=beam)
    blocks = model.quantizer.blocks
    points, inputs, xh = [], [], None
    with torch.no_grad():
        for m, (block, ranks) in enumerate(zip(blocks, model.quantizer.block_codes(codes))):
            z = torch.from_numpy(block.reconstruct(ranks))
            points.append(z)
            inputs.append(xh)
            xh = model._decode_stage(m, z, xh, ranks).float()
    return codes, points, inputs


def hinge(model, m, xs, xh, target, margin):
    """The stage-m loss of a batch: mean relu(margin − y·z* + y·z_rival)."""
    block = model.quantizer.blocks[m]
    y = nn.functional.normalize(model._encode_stage(m, xs, xh), dim=1)
    near = lattice.nearest_candidates(y.detach().numpy(), block.param, 2)
    near = torch.from_numpy(near.astype(np.float32) * np.float32(block.param ** -0.5))
    first_is_target = (near[:, 0] - target).abs().amax(1) < 1e-6
    rival = torch.where(first_is_target[:, None], near[:, 1], near[:, 0])
    return torch.relu(margin - (y * target).sum(1) + (y * rival).sum(1)).mean()


def agreement(model, vectors, beam_codes):
    """Greedy codes of vectors against the beam's: [% of stages equal, one per stage], MSE."""
    codes = model.encode(vectors)
    mse = float(((model.decode(codes) - vectors) ** 2).sum(1).mean())
    same = [round(100 * float((a == b).mean()), 1) for a, b in
            zip(model.quantizer.block_codes(codes), model.quantizer.block_codes(beam_codes))]
    return same, round(mse, 4)


def main(model_path, data_path, beam=8, epochs=5, lr=1e-4, margin=MARGIN):
    margin = float(margin)
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    train_rows, _ = residual.held_out_rows(len(data.learn), meta.to_json()["training"]["seed"])
    learn = np.ascontiguousarray(data.learn[train_rows])
    check = np.ascontiguousarray(data.base[:CHECK_ROWS])
    model.eval()
    greedy = model.encode(data.base)
    print(json.dumps({"model": "greedy, before", **measure_codes(model, meta, data, greedy)}),
          flush=True)
    start = time.perf_counter()
    learn_beam, points, inputs = teacher(model, learn, int(beam))
    teacher_s = time.perf_counter() - start
    check_beam = model.encode(check, beam=int(beam))
    print(json.dumps({"epoch": 0, "teacher s": round(teacher_s, 1),
                      "greedy = beam % / MSE (base[:10k])": agreement(model, check, check_beam),
                      "(learn[:10k])": agreement(model, learn[:CHECK_ROWS],
                                                 learn_beam[:CHECK_ROWS])}),
          flush=True)
    xs_all = model.preprocess(torch.from_numpy(learn)).detach()
    optimizer = torch.optim.Adam([p for f in model.f for p in f.parameters()], lr=float(lr))
    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, int(epochs) + 1):
        order = torch.randperm(len(learn), generator=generator)
        total = 0.0
        for batch in order.split(BATCH):
            xs = xs_all[batch]
            loss = sum(hinge(model, m, xs, None if xh is None else xh[batch], z[batch], margin)
                       for m, (xh, z) in enumerate(zip(inputs, points)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        print(json.dumps({"epoch": epoch, "loss": round(total / len(learn), 5),
                          "s": round(time.perf_counter() - start, 1),
                          "greedy = beam % / MSE (base[:10k])": agreement(model, check,
                                                                           check_beam),
                          "(learn[:10k])": agreement(model, learn[:CHECK_ROWS],
                                                     learn_beam[:CHECK_ROWS])}),
              flush=True)
    after = model.encode(data.base)
    print(json.dumps({"model": f"greedy, encoders distilled from beam {beam}", "epochs": epochs,
                      "lr": lr, "margin": margin,
                      "distillation s": round(time.perf_counter() - start, 1),
                      **measure_codes(model, meta, data, after)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
