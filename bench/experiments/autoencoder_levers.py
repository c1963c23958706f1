"""Issue #14 exploration: code geometry x training objective for the catalyzer (scratch, not library code).

Trains a catalyzer by the library's triplet + KoLeo loop (--epochs) and/or as an auto-encoder
with an MLP decoder through the fixed quantizer (--ae, straight-through), optionally adding the
triplet loss (--ae-triplet), and reports 1-recall@1/10/100 on base/query of a dataset directory
(.fvecs texmex or float16 .npy splits): compressed-domain search, re-ranking of a 1000 shortlist
by the decoded distance (blended or not), and inner-product scores with a predicted norm.
Quantizer specs: lattice:D:R2, sign:D, product:D1xR1,D2xR2,... (each block on its own sphere,
the catalyzer normalising block by block).

It monkeypatches module globals of the pre-#13 layout, so it runs against commit 3a2c474:
`git worktree add /tmp/sc 3a2c474 && (cd /tmp/sc && python setup.py build_ext --inplace)` then
`SPREADCODE_SRC=/tmp/sc python bench/experiments/autoencoder_levers.py DATA SPEC ...`.
Results: BENCHMARKS.md, "Issue #14 levers".
"""
import argparse, json, math, os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np, torch
from torch import nn
from dataclasses import replace
sys.path.insert(0, os.environ.get("SPREADCODE_SRC", "."))
from spreadcode import training, decoders, lattice
from spreadcode.quantizer import LatticeQuantizer, SignQuantizer
from spreadcode.catalyzer import Catalyzer, catalyze
from spreadcode import vecio
from bench._data import load_dataset as _load_dataset, Dataset
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results-issue14.jsonl"


def recall_columns(ids, groundtruth, ks=(1, 10, 100)):
    """{"R@k": 1-recall@k in %, one decimal} of result ids int64 (nq, K)."""
    from spreadcode.search import recall_at

    return {f"R@{k}": round(100 * v, 1) for k, v in recall_at(ids, groundtruth, ks).items()}


def append_row(row):
    """Print the experiment's result row (a dict) as JSON and append it to RESULTS."""
    print(json.dumps(row), flush=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def load_dataset(path):
    p = Path(path)
    if (p / "learn.npy").exists():
        arr = {s: np.ascontiguousarray(np.load(p / f"{s}.npy").astype(np.float32)) for s in ("learn", "base", "query")}
        gt = vecio.read_groundtruth(str(p / "groundtruth.ivecs"))
        return Dataset(p.name, str(p), arr["learn"], arr["base"], arr["query"], gt)
    return _load_dataset(path)


class ProductQ:
    kind = "product"
    def __init__(self, blocks):
        self.blocks = [LatticeQuantizer(d, r2) for d, r2 in blocks]
        self.dims = [b.d for b in self.blocks]
        self.d = sum(self.dims)
        self.bits = sum(math.log2(lattice.count(b.d, b.param)) for b in self.blocks)
        self.param = 0
    def _split(self, x):
        out, s = [], 0
        for d in self.dims:
            out.append(np.ascontiguousarray(x[:, s:s + d])); s += d
        return out
    def quantize(self, x, threads=None):
        return np.stack([b.quantize(p) for b, p in zip(self.blocks, self._split(np.asarray(x, dtype=np.float32)))], 1)
    def reconstruct(self, codes, threads=None):
        M = len(self.blocks)
        return np.concatenate([b.reconstruct(np.ascontiguousarray(codes[:, i])) for i, b in enumerate(self.blocks)], 1) / np.float32(math.sqrt(M))
    def search(self, codes, queries, k, threads=None):
        return brute(self.reconstruct(codes), queries, k)


def brute(xb, xq, k):
    xb = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32)); xq = torch.from_numpy(np.ascontiguousarray(xq, dtype=np.float32))
    k = min(k, xb.shape[0]); D, I = [], []
    nb = (xb * xb).sum(1)
    for s in range(0, xq.shape[0], 1024):
        q = xq[s:s + 1024]
        dist = nb[None] - 2 * q @ xb.T + (q * q).sum(1, keepdim=True)
        d, i = torch.topk(dist, k, dim=1, largest=False)
        D.append(d); I.append(i)
    return torch.cat(D).numpy(), torch.cat(I).numpy().astype(np.int64)


class BlockCatalyzer(Catalyzer):
    dims = None
    def forward(self, x):
        y = self.mlp((x - self.center) * self.scale)
        parts = torch.split(y, self.dims, dim=1)
        return torch.cat([nn.functional.normalize(p, dim=1) for p in parts], 1) / math.sqrt(len(self.dims))


def make_q(spec):
    kind, rest = spec.split(":", 1)
    if kind == "lattice":
        d, r2 = map(int, rest.split(":")); return LatticeQuantizer(d, r2), None
    if kind == "sign":
        return SignQuantizer(int(rest)), None
    blocks = [tuple(map(int, b.split("x"))) for b in rest.split(",")]
    return ProductQ(blocks), [b[0] for b in blocks]


def recall(I, gt, ks=(1, 10, 100)):
    return [round(100 * float((I[:, :k] == gt[:, :1]).any(1).mean()), 1) for k in ks]


def joint_train(model, q, learn, epochs, lr, koleo_w, dec_hidden, batch=256, seed=0, triplet_w=0.0):
    from spreadcode.training import straight_through, koleo_loss, state_snapshot, triplet_rank_loss, _catalyze_tensor
    from spreadcode.knn import exact_knn
    tr, va = decoders.held_out_split(learn.shape[0], seed)
    x = torch.from_numpy(np.ascontiguousarray(learn[tr])); xv = learn[va]
    rec = q.reconstruct(q.quantize(catalyze(model, learn[tr])))
    net, _ = decoders.fit_decoder(rec, learn[tr], kind="linear")
    torch.manual_seed(seed)
    net2 = decoders.DecoderNet(q.d, learn.shape[1], dec_hidden)
    net2.linear.load_state_dict(net.linear.state_dict()); net = net2
    with torch.no_grad():
        net.residual_scale.fill_(0.1)
    params = list(model.parameters()) + list(net.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    steps = x.shape[0] // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    def err():
        return decoders.squared_error(net.predict(q.reconstruct(q.quantize(catalyze(model, xv)))), xv)
    curve = [err()]; best = (curve[0], state_snapshot(model), state_snapshot(net))
    if triplet_w:
        xc = x - x.mean(0)
        _, pos_nn = exact_knn(xc, xc, 10, exclude_self=True)
    for ep in range(epochs):
        order = torch.from_numpy(rng.permutation(x.shape[0]))
        if triplet_w:
            out = _catalyze_tensor(model, x)
            _, nn_out = exact_knn(out, out, 50, exclude_self=True)
            negs = nn_out[:, 49]
            poss = pos_nn.gather(1, torch.from_numpy(rng.integers(0, 10, x.shape[0]))[:, None])[:, 0]
        model.train(); net.train()
        for s in range(steps):
            rows = order[s * batch:(s + 1) * batch]
            y = model(x[rows])
            loss = (net(straight_through(y, q)) - x[rows]).pow(2).sum(1).mean()
            if koleo_w:
                loss = loss + koleo_w * koleo_loss(y)
            if triplet_w:
                yp = model(x[poss[rows]]); yn = model(x[negs[rows]])
                loss = loss + triplet_w * triplet_rank_loss(y, straight_through(yp, q), straight_through(yn, q))
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
        curve.append(err())
        print("ae epoch", ep + 1, round(curve[-1], 4), flush=True)
        if curve[-1] < best[0]:
            best = (curve[-1], state_snapshot(model), state_snapshot(net))
    model.load_state_dict(best[1]); net.load_state_dict(best[2])
    return model.eval(), net.eval(), curve


def compressed_search(model, q, ds):
    """Base codes, catalyzed queries and compressed-domain 1-recall@1/10/100 of a catalyzer."""
    cb = q.quantize(catalyze(model, ds.base)); cq = catalyze(model, ds.query)
    _, I = q.search(cb, cq, 100)
    return cb, cq, recall(I, ds.groundtruth)


def norm_model(xhat_learn, x_learn):
    """Least-squares predictor of E[||x||^2 | code] from [x_hat, ||x_hat||^2, 1] -> function."""
    def feats(xh):
        return np.hstack([xh, (xh * xh).sum(1, keepdims=True), np.ones((xh.shape[0], 1), np.float32)]).astype(np.float64)
    w, *_ = np.linalg.lstsq(feats(xhat_learn), (x_learn.astype(np.float64) ** 2).sum(1), rcond=None)
    return lambda xh: (feats(xh) @ w).astype(np.float32)


def ip_search(decoded, norms, queries, k, shortlist=None, sdist=None, blend=0.0):
    """Rank by ||q||^2 - 2<q, x_hat> + E||x||^2 (+ blend * compressed distance) -> ids (nq, k)."""
    if shortlist is None:
        xb = torch.from_numpy(decoded); xq = torch.from_numpy(queries); nb = torch.from_numpy(norms)
        out = []
        for s in range(0, xq.shape[0], 1024):
            sc = nb[None] - 2 * xq[s:s + 1024] @ xb.T
            out.append(torch.topk(sc, k, dim=1, largest=False)[1])
        return torch.cat(out).numpy()
    cand = decoded[shortlist]
    sc = norms[shortlist] - 2 * np.einsum("qkd,qd->qk", cand, queries) + blend * sdist
    o = np.argsort(sc, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(shortlist, o, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data"); ap.add_argument("spec"); ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lam", type=float, default=None); ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--finetune", type=int, default=0); ap.add_argument("--decoder", action="store_true")
    ap.add_argument("--out", default="bench/experiments/results.jsonl"); ap.add_argument("--tag", default="")
    ap.add_argument("--kpos", type=int, default=10); ap.add_argument("--kneg", type=int, default=50)
    ap.add_argument("--save", default=None)
    ap.add_argument("--ae", type=int, default=0); ap.add_argument("--ae-lr", type=float, default=1e-3)
    ap.add_argument("--ae-koleo", type=float, default=0.0); ap.add_argument("--dec-hidden", type=int, default=1024)
    ap.add_argument("--ae-triplet", type=float, default=0.0)
    a = ap.parse_args()
    ds = load_dataset(a.data)
    q, dims = make_q(a.spec)
    training.make_quantizer = lambda config: q
    decoders.quantizer_from_spec = lambda **kw: q
    if dims:
        BlockCatalyzer.dims = dims
        training.Catalyzer = BlockCatalyzer
    lam = a.lam if a.lam is not None else training.lambda_for_dout(q.d)
    cfg = training.TrainConfig(quantizer="lattice", d_out=q.d, r2=None, lam=lam, epochs=a.epochs, hidden=a.hidden,
                               k_pos=a.kpos, k_neg=a.kneg, eval_every=max(1, a.epochs // 5))
    t0 = time.time()
    dev = training.resolve_device("cpu")
    prep = training.prepare_training_data(ds.learn, cfg, dev)
    if a.epochs > 0:
        res = training.fit(prep, cfg, progress=False)
        model = res.model
        val = res.meta["training"]["val_recall"]
    else:
        torch.manual_seed(0)
        model = training.Catalyzer(ds.learn.shape[1], q.d, a.hidden)
        model.fit_preprocessing(torch.from_numpy(ds.learn))
        model.eval(); val = None
    t_train = time.time() - t0
    if a.save:
        torch.save({"state": model.state_dict(), "spec": a.spec, "hidden": a.hidden}, a.save)
    row = {"tag": a.tag, "data": ds.name, "spec": a.spec, "bits": round(q.bits, 1), "lam": lam, "epochs": a.epochs,
           "hidden": a.hidden, "val": val, "train_s": round(t_train)}
    cb, cq, row["cat"] = compressed_search(model, q, ds)
    print(row, flush=True)
    if a.finetune:
        t1 = time.time()
        meta = {"quantizer": {"kind": "x", "d": q.d, "param": 0}, "sha256": "x", "training": {}}
        model, _, curve = decoders.fine_tune_catalyzer(ds.learn, model, meta, epochs=a.finetune)
        row["ft_s"] = round(time.time() - t1); row["ft_curve"] = [round(c, 4) for c in curve[::5]]
        cb, cq, row["ft_cat"] = compressed_search(model, q, ds)
        print(row, flush=True)
    if a.ae:
        t1 = time.time()
        model, net, curve = joint_train(model, q, ds.learn, a.ae, a.ae_lr, a.ae_koleo, a.dec_hidden, triplet_w=a.ae_triplet)
        row["ae_triplet"] = a.ae_triplet
        row["ae"] = a.ae; row["ae_lr"] = a.ae_lr; row["ae_koleo"] = a.ae_koleo
        row["ae_s"] = round(time.time() - t1); row["ae_curve"] = [round(c, 4) for c in curve[::5]] + [round(curve[-1], 4)]
        cb, cq, row["ae_cat"] = compressed_search(model, q, ds)
        decoded = net.predict(q.reconstruct(cb))
        row["ae_base_mse"] = round(float(((decoded - ds.base) ** 2).sum(1).mean()), 4)
        Ds, Is = q.search(cb, cq, 1000)
        # blend scale: decoded/compressed distance ratio on the top 10
        dd = ((decoded[Is[:, :10]] - ds.query[:, None]) ** 2).sum(-1).mean(); sc = dd / Ds[:, :10].mean()
        for name, w in (("ae_rr", 0.5 * sc), ("ae_rr0", 0.0)):
            _, I = decoders.rerank_candidates(ds.query, Is, lambda u: decoded[u], 100, Ds, w)
            row[name] = recall(I, ds.groundtruth)
        dl = net.predict(q.reconstruct(q.quantize(catalyze(model, ds.learn))))
        nm = norm_model(dl, ds.learn); nb = nm(decoded)
        row["ae_ip_all"] = recall(ip_search(decoded, nb, ds.query, 100), ds.groundtruth)
        row["ae_ip_rr0"] = recall(ip_search(decoded, nb, ds.query, 100, Is, Ds, 0.0), ds.groundtruth)
        row["ae_ip_rr"] = recall(ip_search(decoded, nb, ds.query, 100, Is, Ds, 0.5 * sc), ds.groundtruth)
    if a.decoder:
        t1 = time.time()
        learn = ds.learn
        tr, va = decoders.held_out_split(learn.shape[0], 0)
        rec = q.reconstruct(q.quantize(catalyze(model, learn)))
        net, curve = decoders.fit_decoder(rec[tr], learn[tr], held_out=(rec[va], learn[va]))
        qc = catalyze(model, learn[va][::5]); 
        blend, cal = decoders.calibrate_blend(net, q, q.quantize(catalyze(model, learn[va][np.arange(len(va)) % 5 != 0])),
                                              rec[va][np.arange(len(va)) % 5 != 0], learn[va][np.arange(len(va)) % 5 != 0], qc, learn[va][::5])
        row["dec_s"] = round(time.time() - t1); row["dec_err"] = round(min(curve), 4)
        Ds, Is = q.search(cb, cq, 1000)
        decoded = net.predict(q.reconstruct(cb))
        for name, w in (("rr", blend), ("rr0", 0.0)):
            _, I = decoders.rerank_candidates(ds.query, Is, lambda u: decoded[u], 100, Ds, w)
            row[name] = recall(I, ds.groundtruth)
        _, I = brute(decoded, ds.query, 100); row["decall"] = recall(I, ds.groundtruth)
    print(json.dumps(row), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
