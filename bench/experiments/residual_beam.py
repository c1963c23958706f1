"""Issue #14 scratch experiment: beam-search encoding of residual lattice codes.

The library's encoder picks, at each stage, the lattice point nearest the encoder's output
(greedy, one candidate). Here each stage keeps the B best partial reconstructions (the beam)
and, for each, tries the A lattice points nearest the encoder's output, scored by the error
of a decoder chain on the input: ``‖x − x̃_m‖²``. The chain that scores is either the model's
own decoder g (exact, but 1.3 M multiply-adds per candidate) or a small chain h (hidden H,
trained jointly as in `residual_small_cond.py`, but over all M stages, so the last stage can
be scored too), which makes B·A candidates cost about what one g evaluation does.

The A nearest points of S(d, r²) to y come from `spreadcode.lattice.nearest_candidates`
(the sphere's own two nearest for A ≤ 2; for A > 2 the nearest of its templates, the same
196 for S(12, 6) as this script's own copy that ran the rows of BENCHMARKS lever 8). The
beam carries integer points; only the winners are ranked, by the quantizer itself.

Run:
    python bench/experiments/residual_beam.py train DATA OUT.pt [EPOCHS [H [COND]]]
    python bench/experiments/residual_beam.py finetune MODEL DATA OUT.pt A B [EPOCHS [LR [EPOCHS_F]]]
    python bench/experiments/residual_beam.py eval MODEL DATA A B [A B ...]
    python bench/experiments/residual_beam.py library MODEL DATA BEAM [BEAM ...]
MODEL is OUT.pt of ``train`` (scored by h) or a library model file (scored by g).
One JSON row per (A, B): encode seconds of the base, MSE of the full decoder, R@1/10/100 of
the exhaustive search over decoded base vectors ("decall").
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
from residual_small_cond import SmallConditioned  # noqa: E402
from spreadcode import lattice, residual  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402


class ScoredResidual(SmallConditioned):
    """The library's residual model plus a small decoder chain h over all M stages, which the
    encoders read (x̃) and the beam search scores with; g decodes for search."""

    chain_last = True
    chain_stage = SmallConditioned._chain


def encode_beam(model, x, A, B, batch=1024):
    """Codes uint8 (n, code_bytes) of float32 x (n, d_in) by a beam of B partial codes, A
    candidates per beam and stage, scored by the model's chain (h if it has one, else g).
    The beam carries integer lattice points; only the winners are ranked."""
    chain = model.chain_stage if hasattr(model, "chain_stage") else model._decode_stage
    blocks = model.quantizer.blocks
    codes = np.empty((x.shape[0], model.quantizer.code_bytes), np.uint8)
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            xs = model.preprocess(torch.from_numpy(np.ascontiguousarray(x[s:s + batch])))
            n = xs.shape[0]
            xc = None  # (n, b, d_in)
            picked = torch.zeros(n, 1, 0)  # integer points of the stages so far (n, b, Σd)
            for m, block in enumerate(blocks):
                b = 1 if xc is None else xc.shape[1]
                xs_b = xs[:, None].expand(n, b, xs.shape[1]).reshape(n * b, -1)
                xc_f = None if xc is None else xc.reshape(n * b, -1)
                y = nn.functional.normalize(model._encode_stage(m, xs_b, xc_f), dim=1)
                z = torch.from_numpy(  # (n*b, a, d)
                    lattice.nearest_candidates(y.numpy(), block.param, A).astype(np.float32))
                a = z.shape[1]
                xc_rep = None if xc_f is None else \
                    xc_f[:, None].expand(n * b, a, xc_f.shape[1]).reshape(n * b * a, -1)
                unit = z.reshape(n * b * a, -1) / float(block.param) ** 0.5
                cand = chain(m, unit, xc_rep).reshape(n, b * a, -1)
                err = (cand - xs[:, None]).pow(2).sum(-1)
                keep = err.topk(min(B, b * a), dim=1, largest=False).indices  # (n, B')
                xc = torch.gather(cand, 1, keep[..., None].expand(-1, -1, cand.shape[2]))
                parents = torch.gather(picked, 1, (keep // a)[..., None].expand(-1, -1, picked.shape[2]))
                new = torch.gather(z.reshape(n, b * a, -1), 1,
                                   keep[..., None].expand(-1, -1, block.d))
                picked = torch.cat([parents, new], 2)
            # A lattice point is its own nearest point: quantizing the winners ranks them.
            codes[s:s + n] = model.quantizer.quantize(np.ascontiguousarray(picked[:, 0].numpy()))
    return codes


def decall(decoded, ds):
    _, ids = exact_knn(decoded, ds.query, 100)
    hit = ids == ds.groundtruth[:, :1]
    first = np.where(hit.any(1), hit.argmax(1), 1 << 30)
    return [round(100 * float(np.mean(first < r)), 1) for r in (1, 10, 100)]


def train(data, out, epochs=25, hidden_chain=128, cond=1.0):
    ds = load_dataset(data)
    original = residual.ResidualCatalyzer
    ScoredResidual.hidden_chain, ScoredResidual.cond = hidden_chain, cond
    residual.ResidualCatalyzer = ScoredResidual
    try:
        t0 = time.time()
        result = residual.train_residual(ds.learn, residual.ResidualConfig(epochs=epochs),
                                         progress=False)
    finally:
        residual.ResidualCatalyzer = original
    torch.save(result.model, out)
    print(json.dumps({"tag": f"beam-h{hidden_chain}-c{cond}", "train_s": round(time.time() - t0),
                      "val_mse": result.meta.training["val_mse"]}), flush=True)


def load_model(path):
    model = torch.load(path, weights_only=False) if path.endswith(".pt") else load_catalyzer(path)[0]
    return model.eval()


def _decode_points(model, points):
    xh, start = None, 0
    for m, block in enumerate(model.quantizer.blocks):
        xh = model._decode_stage(m, points[:, start:start + block.d], xh)
        start += block.d
    return xh


def distill_encoders(model, points, target, train_rows, val_rows, epochs, lr=5e-4, batch=256):
    """Train the encoders f to point at the beam's lattice points (teacher forcing: stage m
    reads the decoders' reconstruction of the beam's first m points), by cosine loss.
    points: float32 tensor (n, Σd) unit points of the beam codes; target: preprocessed
    learn vectors (n, d_in). Returns the share of held-out stage choices that greedy
    encoding gets right, per epoch."""
    blocks = model.quantizer.blocks
    starts = np.cumsum([0] + [b.d for b in blocks])
    with torch.no_grad():
        inputs, xh = [], None
        for m in range(len(blocks)):
            inputs.append(target if m == 0 else torch.cat([target - xh, xh], 1))
            xh = model._decode_stage(m, points[:, starts[m]:starts[m + 1]], xh)
    optimizer = torch.optim.Adam(model.f.parameters(), lr=lr)
    rng = np.random.default_rng(1)

    def agreement():
        model.f.eval()
        with torch.no_grad():
            hits = []
            for m, block in enumerate(blocks):
                y = model.f[m](inputs[m][val_rows]).numpy()
                z = block.reconstruct(block.quantize(np.ascontiguousarray(y)))
                hits.append(float(np.mean(np.abs(z - points[val_rows, starts[m]:starts[m + 1]]
                                                 .numpy()).max(1) < 1e-6)))
        return [round(h, 3) for h in hits]

    history = [agreement()]
    for epoch in range(epochs):
        model.f.train()
        order = rng.permutation(train_rows)
        for step in range(len(order) // batch):
            rows = order[step * batch:(step + 1) * batch]
            loss = sum((1 - nn.functional.cosine_similarity(
                model.f[m](inputs[m][rows]), points[rows, starts[m]:starts[m + 1]], dim=1)).mean()
                for m in range(len(blocks)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(agreement())
    model.f.eval()
    return history


def finetune_decoder(path, data, out, A, B, epochs=5, lr=2e-4, epochs_f=0, batch=256):
    """Train the decoders g (only) further on the codes the beam search gives the learn
    vectors (fixed targets: no straight-through), then (``epochs_f``) the encoders to point
    at those codes (`distill_encoders`), then refit the shortlist decoder."""
    from spreadcode.decoders import fit_linear
    model, ds = load_model(path), load_dataset(data)
    train_rows, val_rows = residual.held_out_rows(ds.learn.shape[0], 0)
    t0 = time.time()
    codes = encode_beam(model, ds.learn, A, B)
    encode_s = time.time() - t0
    points = torch.from_numpy(model.unit_points(codes))
    target = model.preprocess(torch.from_numpy(ds.learn))
    unit = float(model.scale) ** -2
    val = lambda: float((_decode_points(model, points[val_rows]) - target[val_rows])  # noqa: E731
                        .pow(2).sum(1).mean()) * unit
    optimizer = torch.optim.Adam(model.g.parameters(), lr=lr)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        history = [val()]
    best = (history[0], {k: v.clone() for k, v in model.g.state_dict().items()})
    for epoch in range(epochs):
        model.g.train()
        order = rng.permutation(train_rows)
        for step in range(len(order) // batch):
            rows = order[step * batch:(step + 1) * batch]
            loss = (_decode_points(model, points[rows]) - target[rows]).pow(2).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.g.eval()
        with torch.no_grad():
            history.append(val())
        if history[-1] < best[0]:
            best = (history[-1], {k: v.clone() for k, v in model.g.state_dict().items()})
    model.g.load_state_dict(best[1])
    model.g.eval()
    agreement = distill_encoders(model, points, target, train_rows, val_rows, epochs_f) \
        if epochs_f else None
    weight, bias = fit_linear(points[train_rows].numpy(), ds.learn[train_rows])
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(weight))
        model.linear.bias.copy_(torch.from_numpy(bias))
    torch.save(model, out)
    print(json.dumps({"finetune": os.path.basename(path), "A": A, "B": B, "epochs": epochs,
                      "lr": lr, "encode_learn_s": round(encode_s, 1),
                      "seconds": round(time.time() - t0), "val_mse": [round(v, 4) for v in history],
                      "epochs_f": epochs_f, "greedy_agreement": agreement}),
          flush=True)


def evaluate(path, data, pairs):
    model, ds = load_model(path), load_dataset(data)
    for A, B in pairs:
        t0 = time.time()
        codes = encode_beam(model, ds.base, A, B)
        seconds = time.time() - t0
        decoded = model.decode(codes)
        mse = float(((decoded - ds.base) ** 2).sum(1).mean())
        print(json.dumps({"model": os.path.basename(path), "data": ds.name, "A": A, "B": B,
                          "encode_s": round(seconds, 1), "mse": round(mse, 4),
                          "decall": decall(decoded, ds)}), flush=True)


def library(path, data, beams):
    """The library's own beam search (`spreadcode.Index.add(beam=...)`, 2 candidates per
    partial code) and default search (`spreadcode.search.prepare_residual`)."""
    import spreadcode
    model, meta = load_catalyzer(path)
    ds = load_dataset(data)
    for beam in beams:
        index = spreadcode.Index.from_catalyzer(model, meta)
        t0 = time.time()
        index.add(ds.base, beam=beam)
        seconds = time.time() - t0
        decoded = model.decode(index._collection.parts[0].codes_bytes)
        _, ids = index.search(ds.query, k=100)
        hit = ids == ds.groundtruth[:, :1]
        first = np.where(hit.any(1), hit.argmax(1), 1 << 30)
        print(json.dumps({"model": os.path.basename(path), "data": ds.name, "beam": beam,
                          "encode_s": round(seconds, 2),
                          "mse": round(float(((decoded - ds.base) ** 2).sum(1).mean()), 4),
                          "search": [round(100 * float(np.mean(first < r)), 1) for r in (1, 10, 100)]}),
              flush=True)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    if sys.argv[1] == "train":
        extra = [int(sys.argv[4]) if len(sys.argv) > 4 else 25,
                 int(sys.argv[5]) if len(sys.argv) > 5 else 128,
                 float(sys.argv[6]) if len(sys.argv) > 6 else 1.0]
        train(sys.argv[2], sys.argv[3], *extra)
    elif sys.argv[1] == "library":
        library(sys.argv[2], sys.argv[3], [int(v) for v in sys.argv[4:]])
    elif sys.argv[1] == "finetune":
        finetune_decoder(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]),
                         *(float(v) if "." in v else int(v) for v in sys.argv[7:]))
    else:
        numbers = list(map(int, sys.argv[4:]))
        evaluate(sys.argv[2], sys.argv[3], list(zip(numbers[::2], numbers[1::2])))
