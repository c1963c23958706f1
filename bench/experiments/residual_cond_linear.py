"""Issue #14 scratch experiment: residual lattice stages whose decoder is *linear in the
code* with a context-dependent matrix ("cond-linear"), so that codes can be chosen by an
exact, cheap search instead of an amortised encoder.

Stage m, with context c = x̂_{m−1} (c = 0 for m = 0) and u the unit lattice point of
S(d_m, r_m²) (u = z / r_m)::

    x̂_m = c + A_m(c) u + b_m(c),   A_m(c) = A_m0 + Σ_k α_mk(c) B_mk   (K basis matrices)

α_m and b_m come from a small MLP of c (stage 0: constants). For a vector x the error of a
candidate u is ‖r − A u‖² with r = x − c − b, which costs d_in·d_m multiply-adds, so a stage
can score many candidates: the least-squares direction y = (AᵀA)⁻¹Aᵀr is rounded to its
``count`` nearest lattice candidates (`spreadcode.lattice.nearest_candidates`), each scored
exactly, and a beam keeps the best partial codes. There is no encoder network: training
chooses the codes with this same search (no gradient through it; QINCo-style) and fits the
decoder to them, so training and encoding agree by construction. A refiner (an MLP of
[x̂_M, u_0..u_{M−1}], hidden 1024, trained on the chain's detached output) re-ranks.

Run:
    python bench/experiments/residual_cond_linear.py DATA OUT.pt [epochs=25] [basis=32] [hidden=256] [count=16] [train_beam=1] ...
    python bench/experiments/residual_cond_linear.py eval MODEL.pt DATA BEAM[:COUNT] ...
One JSON row per run: train seconds, held-out MSE; per beam: encode seconds of the base,
MSE of the chain and of the refiner, exhaustive search over each's decoded base ("decall").
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from residual_beam import decall  # noqa: E402
from spreadcode import lattice, residual  # noqa: E402


class CondLinear(nn.Module):
    """The cond-linear chain and its refiner; every tensor in the preprocessed space
    (x − center) · scale, float32 (n, d_in)."""

    def __init__(self, d_in, blocks, basis=32, hidden=256, count=16, refine_hidden=1024):
        super().__init__()
        self.d_in, self.blocks, self.count = d_in, tuple(blocks), count
        self.register_buffer("center", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(1))
        self.a0 = nn.ParameterList()
        for m, (d, _) in enumerate(self.blocks):
            q, _ = torch.linalg.qr(torch.randn(d_in, d))
            self.a0.append(nn.Parameter(q * (4.0 if m == 0 else 2.0)))
        self.b0 = nn.Parameter(torch.zeros(d_in))
        self.basis = nn.ParameterList([nn.Parameter(0.01 * torch.randn(basis, d_in, d))
                                       for d, _ in self.blocks[1:]])
        self.hyper = nn.ModuleList()
        for _ in self.blocks[1:]:
            net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                nn.ReLU(), nn.Linear(hidden, basis + d_in))
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
            self.hyper.append(net)
        d_out = sum(d for d, _ in self.blocks)
        self.refine = residual._mlp(d_in + d_out, refine_hidden, d_in)

    def preprocess(self, x):
        return (x - self.center) * self.scale

    def stage(self, m, c):
        """(A, b) of stage m for contexts c (n, d_in): A (d_in, d) or (n, d_in, d), b (d_in,)
        or (n, d_in)."""
        if m == 0:
            return self.a0[0], self.b0
        out = self.hyper[m - 1](c)
        alpha, b = out[:, :-self.d_in], out[:, -self.d_in:]
        return self.a0[m] + torch.einsum("nk,kij->nij", alpha, self.basis[m - 1]), b

    @torch.no_grad()
    def encode(self, xs, beam=1, count=None):
        """Beam search over the stages: int8 lattice points (n, d_out) of xs (n, d_in)."""
        count = count or self.count
        n = xs.shape[0]
        rows = torch.arange(n)[:, None]
        c = torch.zeros(n, 1, self.d_in)
        points = torch.zeros(n, 1, 0, dtype=torch.int8)
        for m, (d, r2) in enumerate(self.blocks):
            width = c.shape[1]
            flat = c.reshape(n * width, self.d_in)
            A, b = self.stage(m, flat)
            r = xs.repeat_interleave(width, 0) - flat - b
            if A.dim() == 2:
                y = r @ (A @ torch.linalg.inv(A.T @ A)).contiguous()
            else:
                gram = A.transpose(1, 2) @ A + 1e-6 * torch.eye(d)
                y = torch.linalg.solve(gram, (A.transpose(1, 2) @ r[:, :, None]))[:, :, 0]
            z = torch.from_numpy(lattice.nearest_candidates(y.numpy(), r2, count))
            tried = z.shape[1]
            u = z.float() * r2 ** -0.5
            pred = (u @ A.T) if A.dim() == 2 else torch.einsum("nij,ncj->nci", A, u)
            error = (r[:, None] - pred).pow(2).sum(2).reshape(n, width * tried)
            keep = torch.topk(error, min(beam, width * tried), dim=1, largest=False).indices
            new = (flat + b)[:, None] + pred
            c = new.reshape(n, width * tried, self.d_in)[rows, keep]
            points = torch.cat([points[rows, keep // tried],
                                z.reshape(n, width * tried, d)[rows, keep]], 2)
        return points[:, 0]

    def units(self, points):
        out, start = [], 0
        for d, r2 in self.blocks:
            out.append(points[:, start:start + d].float() * r2 ** -0.5)
            start += d
        return out

    def decode(self, points):
        """(chain outputs x̂_1..x̂_M, refined x̂) of int8 points (n, d_out)."""
        units = self.units(points)
        c, chain = torch.zeros(points.shape[0], self.d_in), []
        for m, u in enumerate(units):
            A, b = self.stage(m, c)
            c = c + b + ((u @ A.T) if A.dim() == 2 else torch.einsum("nij,nj->ni", A, u))
            chain.append(c)
        last = chain[-1].detach()
        return chain, last + self.refine(torch.cat([last] + units, 1))


def train(data, out, epochs=25, basis=32, hidden=256, count=16, aux=0.5, lr=1e-3, batch=256,
          train_beam=1):
    torch.manual_seed(0)
    ds = load_dataset(data)
    blocks = residual.stage_blocks(64)
    train_rows, val_rows = residual.held_out_rows(ds.learn.shape[0], 0)
    x = torch.from_numpy(ds.learn[train_rows])
    model = CondLinear(x.shape[1], blocks, basis, hidden, count)
    center = x.double().mean(0)
    model.center.copy_(center.float())
    model.scale.fill_(float(1 / ((x.double() - center) ** 2).mean().sqrt()))
    xs, xv = model.preprocess(x), model.preprocess(torch.from_numpy(ds.learn[val_rows]))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps, step_count, t0 = xs.shape[0] // batch, 0, time.time()
    rng = np.random.default_rng(0)
    unit = float(model.scale) ** -2
    best = (math.inf, None)
    for epoch in range(epochs):
        te = time.time()
        order = torch.from_numpy(rng.permutation(xs.shape[0]))
        model.train()
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = residual.one_cycle_lr(lr, step_count / (epochs * steps))
            xb = xs[order[step * batch:(step + 1) * batch]]
            points = model.encode(xb, train_beam)
            chain, refined = model.decode(points)
            err = lambda v: (v - xb).pow(2).sum(1).mean()
            loss = err(chain[-1]) + aux * sum(err(v) for v in chain[:-1]) / (len(chain) - 1) \
                + err(refined)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_count += 1
        model.eval()
        with torch.no_grad():
            chain, refined = model.decode(model.encode(xv))
            mse = [float((v - xv).pow(2).sum(1).mean()) * unit for v in (chain[-1], refined)]
        if mse[1] < best[0]:
            best = (mse[1], {k: v.clone() for k, v in model.state_dict().items()})
        print(json.dumps({"epoch": epoch + 1, "val_mse_chain": round(mse[0], 4),
                          "val_mse_refined": round(mse[1], 4),
                          "s": round(time.time() - te, 1)}), flush=True)
    model.load_state_dict(best[1])
    torch.save(model, out)
    print(json.dumps({"tag": f"cond-linear K{basis} H{hidden} C{count} beam{train_beam}",
                      "data": ds.name, "train_s": round(time.time() - t0),
                      "val_mse_refined": round(best[0], 4)}), flush=True)


def evaluate(path, data, beams, batch=1024):
    model = torch.load(path, weights_only=False).eval()
    ds = load_dataset(data)
    xb = model.preprocess(torch.from_numpy(ds.base))
    unit = float(model.scale) ** -2
    for spec in beams:
        beam, count = (int(v) for v in (spec + ":0").split(":")[:2])
        t0 = time.time()
        points = torch.cat([model.encode(xb[s:s + batch], beam, count or None)
                            for s in range(0, xb.shape[0], batch)])
        seconds = time.time() - t0
        with torch.no_grad():
            parts = [model.decode(points[s:s + 8192]) for s in range(0, points.shape[0], 8192)]
        row = {"model": os.path.basename(path), "data": ds.name, "beam": beam,
               "count": count or model.count, "encode_s": round(seconds, 2)}
        for name, decoded in (("chain", torch.cat([p[0][-1] for p in parts])),
                              ("refined", torch.cat([p[1] for p in parts]))):
            row[f"mse_{name}"] = round(float((decoded - xb).pow(2).sum(1).mean()) * unit, 4)
            vectors = (decoded / model.scale + model.center).numpy()
            row[f"decall_{name}"] = decall(vectors, ds)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    if sys.argv[1] == "eval":
        evaluate(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        train(sys.argv[1], sys.argv[2], **{k: float(v) if k in ("aux", "lr") else int(v)
                                           for k, v in (a.split("=") for a in sys.argv[3:])})
