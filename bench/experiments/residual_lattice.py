"""Issue #14 exploration: a residual multi-stage lattice auto-encoder (scratch, not library code).

Stage m codes f_m([x - x_hat, x_hat]) on its own sphere S(d_m, r_m^2) (exact nearest point and
rank from spreadcode.lattice); the decoder adds g_m([z_m, x_hat]) to x_hat. All stages train
together on the squared reconstruction error (straight-through through the quantizers, plus
--aux x the first stage's error). Reports held-out / base MSE and 1-recall@1/10/100 of
exhaustive search over the decoded base ("decall") and of re-ranking a stage-1 shortlist ("rr").

Runs against commit 3a2c474 like autoencoder_levers.py (SPREADCODE_SRC). Results:
BENCHMARKS.md, "Issue #14 levers".
"""
import argparse, json, math, os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np, torch
from torch import nn
sys.path.insert(0, os.environ.get("SPREADCODE_SRC", ".")); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spreadcode.quantizer import LatticeQuantizer
from spreadcode.training import straight_through, state_snapshot
from spreadcode import decoders
from autoencoder_levers import load_dataset, brute, recall, norm_model, ip_search

def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o))

class Res2(nn.Module):
    """M stages: stage m codes f_m([x - x_hat, x_hat]) on its sphere, x_hat += g_m([z_m, x_hat])."""
    def __init__(self, d_in, qs, h_enc, h_dec):
        super().__init__()
        self.qs = qs
        self.f = nn.ModuleList([mlp(d_in if m == 0 else 2 * d_in, h_enc, q.d) for m, q in enumerate(qs)])
        self.g = nn.ModuleList([mlp(q.d if m == 0 else q.d + d_in, h_dec, d_in) for m, q in enumerate(qs)])
        self.register_buffer("center", torch.zeros(d_in)); self.register_buffer("scale", torch.ones(1))
    def forward(self, x, hard=True):
        xs = (x - self.center) * self.scale
        xh = None; ys = []; zs = []; xhs = []
        for m, q in enumerate(self.qs):
            inp = xs if m == 0 else torch.cat([xs - xh, xh], 1)
            y = nn.functional.normalize(self.f[m](inp), dim=1)
            z = straight_through(y, q)
            xh = self.g[m](z) if m == 0 else xh + self.g[m](torch.cat([z, xh], 1))
            ys.append(y); zs.append(z); xhs.append(xh)
        return xhs[0] / self.scale + self.center, xh / self.scale + self.center, ys[0], ys[-1], zs[0], torch.cat(zs, 1)

def run_batches(model, x, bs=4096):
    model.eval(); outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], bs):
            outs.append([t.numpy() for t in model(torch.from_numpy(np.ascontiguousarray(x[s:s + bs])))])
    return [np.concatenate(p) for p in zip(*outs)]

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("data"); ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--stages", default="24:10,24:10")
    ap.add_argument("--h-enc", type=int, default=512); ap.add_argument("--h-dec", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--aux", type=float, default=0.5)
    ap.add_argument("--tag", default=""); ap.add_argument("--out", default="bench/experiments/results.jsonl")
    a = ap.parse_args()
    ds = load_dataset(a.data)
    qs = [LatticeQuantizer(*map(int, st.split(":"))) for st in a.stages.split(",")]
    torch.manual_seed(0)
    model = Res2(ds.learn.shape[1], qs, a.h_enc, a.h_dec)
    x_all = torch.from_numpy(ds.learn)
    with torch.no_grad():
        c = x_all.double().mean(0); model.center.copy_(c.float()); model.scale.fill_(float(1 / ((x_all.double() - c) ** 2).mean().sqrt()))
    tr, va = decoders.held_out_split(ds.learn.shape[0], 0)
    x = x_all[tr]; xv = ds.learn[va]
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    bs = 256; steps = x.shape[0] // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps, pct_start=0.05)
    rng = np.random.default_rng(0); t0 = time.time(); curve = []; best = None
    for ep in range(a.epochs):
        order = torch.from_numpy(rng.permutation(x.shape[0])); model.train()
        for s in range(steps):
            xb = x[order[s * bs:(s + 1) * bs]]
            x1, x2, *_ = model(xb)
            loss = (x2 - xb).pow(2).sum(1).mean() + a.aux * (x1 - xb).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
        x1v, x2v, *_ = run_batches(model, xv)
        curve.append(round(float(((x2v - xv) ** 2).sum(1).mean()), 4))
        print("epoch", ep + 1, curve[-1], round(float(((x1v - xv) ** 2).sum(1).mean()), 4), flush=True)
        if best is None or curve[-1] <= min(curve):
            best = state_snapshot(model)
    model.load_state_dict(best); t_train = time.time() - t0
    t1 = time.time(); x1b, x2b, y1b, y2b, z1b, z2b = run_batches(model, ds.base); t_enc = time.time() - t1
    x1q, x2q, y1q, *_ = run_batches(model, ds.query)
    row = {"tag": a.tag, "mode": "res2", "stages": a.stages, "bits": sum(q.bits for q in qs), "epochs": a.epochs,
           "h_enc": a.h_enc, "h_dec": a.h_dec, "lr": a.lr, "aux": a.aux, "train_s": round(t_train), "enc_s_60k_incl_dec": round(t_enc, 1),
           "curve": curve[::5] + [curve[-1]], "base_mse": round(float(((x2b - ds.base) ** 2).sum(1).mean()), 4),
           "base_mse1": round(float(((x1b - ds.base) ** 2).sum(1).mean()), 4)}
    # stage-1 compressed shortlist (catalyzed query vs z1), then re-rank by full decoded vectors
    Ds, Is = brute(z1b, y1q, 1000)
    row["stage1_cat"] = recall(Is, ds.groundtruth)
    _, I = decoders.rerank_candidates(ds.query, Is, lambda u: x2b[u], 100); row["rr"] = recall(I, ds.groundtruth)
    _, I = brute(x2b, ds.query, 100); row["decall"] = recall(I, ds.groundtruth)
    _, I = brute(x1b, ds.query, 100); row["decall1"] = recall(I, ds.groundtruth)
    x1l, x2l, _, _, _, zl = run_batches(model, ds.learn)
    # Additive linear decoder over all stages' lattice points (least squares on learn): the
    # candidate compressed-domain score; its shortlist of 1000 is re-ranked by the MLP decoder.
    lin, _ = decoders.fit_decoder(zl, ds.learn, kind="linear")
    xlin = lin.predict(z2b)
    row["lin_mse"] = round(float(((xlin - ds.base) ** 2).sum(1).mean()), 4)
    Dl, Il = brute(xlin, ds.query, 1000)
    row["lin_all"] = recall(Il, ds.groundtruth)
    _, I = decoders.rerank_candidates(ds.query, Il, lambda u: x2b[u], 100); row["lin_rr"] = recall(I, ds.groundtruth)
    nb = norm_model(x2l, ds.learn)(x2b)
    row["ip_all"] = recall(ip_search(x2b, nb, ds.query, 100), ds.groundtruth)
    row["ip_rr"] = recall(ip_search(x2b, nb, ds.query, 100, Is, Ds, 0.0), ds.groundtruth)
    print(json.dumps(row), flush=True)
    open(a.out, "a").write(json.dumps(row) + "\n")

main()
