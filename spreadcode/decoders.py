"""Learned decoders: from a code back to the input space, and re-ranking with them.

Amara, Douze, Sablayrolles & Jégou (2021), *Nearest neighbor search with compact codes: a
decoder perspective*, read a compact code as the bottleneck of an auto-encoder whose encoder is
fixed (here: catalyzer + quantizer) and show that a decoder learned afterwards, for the same
codes, reconstructs better and finds neighbours better. The catalyzer has no inverse, so a
code's plain decoding lives on the unit sphere of R^d_out; a decoder maps the quantizer's
reconstruction r (z/r for the lattice, s/√d for signs), float32 (n, d), to an estimate of the
input vector, float32 (n, d_in):

* linear: x̂ = W r + b, closed-form least squares (normal equations in float64);
* mlp: the same linear map plus a learned correction, x̂ = W r + b + s·MLP(r), with
  MLP = Linear(d, h)-BN-ReLU-Linear(h, h)-BN-ReLU-Linear(h, d_in) trained by Adam on the squared
  error of the linear map's residual, and s the RMS of that residual (so the MLP learns at unit
  scale whatever the data's scale).

Existing .spc files are never rewritten: a decoder is its own artifact in the model store
(safetensors named by its SHA-256) that records the catalyzer it belongs to. Metadata (JSON,
sorted keys, under "spreadcode"): {"artifact": "decoder", "format_version": 1, "catalyzer":
sha256, "quantizer": {"kind", "d", "param"}, "d_in", "decoder": {"kind", "hidden"},
"training": {"seed", "n_train", "n_val", "val_mse", "baseline_val_mse", ...}}.

Search with a decoder (`spreadcode.search`): `prepare_rerank` re-ranks the compressed-domain
shortlist of N candidates by the squared L2 distance between the raw query and the decoded
candidates; `prepare_decoded` decodes every code (in blocks) and ranks all of them that way
(for sign codes: no Hamming).
"""
import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spreadcode import store as model_store
from spreadcode.catalyzer import (catalyze, check_number, check_width, load_module,
                                  state_dict_bytes)
from spreadcode.errors import SpreadcodeError
from spreadcode.fileio import canonical_json
from spreadcode.knn import exact_knn
from spreadcode.quantizer import QuantizerSpec, metadata_error
from spreadcode.search import recall_at, rerank_candidates
from spreadcode.torchutil import BestEpoch, adam, epoch_progress, pick_device

ARTIFACT_KIND = "decoder"
DECODER_KINDS = ("linear", "mlp")
HELD_OUT_FRACTION = 0.1
# Every CALIBRATION_QUERY_STRIDE-th held-out vector is a calibration query, the others its database.
CALIBRATION_QUERY_STRIDE = 5
MLP_HIDDEN = 1024
MLP_EPOCHS = 30
MLP_BATCH = 256
MLP_LR = 1e-3
DECODE_BATCH = 65536
# Re-ranking scores a candidate by decoded distance + blend × compressed distance. The two are
# in different units (input space, unit sphere), so `calibrate_blend` sets blend = BLEND_WEIGHT ×
# their ratio on held-out data (mean over the first BLEND_SCALE_TOP candidates of each query's
# shortlist of CALIBRATION_SHORTLIST). Picking the weight by held-out recall@1 instead was
# dropped: the held-out database is ~14× sparser than a real one and ~1,000 queries give a noisy
# recall, so it chose weights costing up to 2 points of R@1; 0.5 is within 0.3 of the best weight
# on the base of both benchmark datasets (BENCHMARKS.md, "Blend weight").
BLEND_WEIGHT = 0.5
BLEND_SCALE_TOP = 10
CALIBRATION_SHORTLIST = 100
# fit_linear accumulates its normal equations over chunks of about this many float64 values.
LSTSQ_CHUNK_VALUES = 1 << 23


class DecoderNet(nn.Module):
    """Code reconstruction float32 (n, d) -> input-space estimate float32 (n, d_in).

    ``linear`` is nn.Linear(d, d_in); with ``hidden`` the module also has ``mlp`` (the
    correction, see the module docstring) and the buffer ``residual_scale`` float32 (1,).
    """

    def __init__(self, d, d_in, hidden=None):
        super().__init__()
        self.d, self.d_in = int(d), int(d_in)
        self.hidden = None if hidden is None else int(hidden)
        self.linear = nn.Linear(self.d, self.d_in)
        self.mlp = None
        if self.hidden is not None:
            self.register_buffer("residual_scale", torch.ones(1))
            self.mlp = nn.Sequential(
                nn.Linear(self.d, self.hidden), nn.BatchNorm1d(self.hidden), nn.ReLU(),
                nn.Linear(self.hidden, self.hidden), nn.BatchNorm1d(self.hidden), nn.ReLU(),
                nn.Linear(self.hidden, self.d_in),
            )

    @property
    def kind(self):
        """"linear" or "mlp"."""
        return "linear" if self.mlp is None else "mlp"

    def forward(self, r):
        """r: float32 tensor (n, d) -> float32 tensor (n, d_in)."""
        out = self.linear(r)
        if self.mlp is not None:
            out = out + self.residual_scale * self.mlp(r)
        return out

    def predict(self, inputs, batch=DECODE_BATCH):
        """Eval-mode, no-grad forward in chunks: array (n, d) -> float32 numpy (n, d_in)."""
        inputs = np.asarray(inputs)
        out = np.empty((inputs.shape[0], self.d_in), dtype=np.float32)
        device = self.linear.weight.device
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for start in range(0, inputs.shape[0], batch):
                    chunk = np.ascontiguousarray(inputs[start:start + batch], dtype=np.float32)
                    out[start:start + batch] = self(torch.from_numpy(chunk).to(device)).cpu().numpy()
        finally:
            self.train(was_training)
        return out


def fit_linear(inputs, targets, batch=None):
    """Least-squares affine map from ``inputs`` to ``targets``: argmin ‖[inputs, 1] A − targets‖².

    inputs: real array (n, d) (any code representation: reconstructions, ±1 bits, one-hot);
    targets: real array (n, d_out). The normal equations are accumulated in float64 over chunks
    of ``batch`` rows (default: about LSTSQ_CHUNK_VALUES values per chunk; memory
    O(batch·d + d² + d·d_out)) and solved by `numpy.linalg.lstsq`, which gives
    the minimum-norm solution when the inputs are collinear (e.g. one-hot blocks).
    Returns (weight float32 (d_out, d), bias float32 (d_out,)), nn.Linear's layout.
    """
    n, d = inputs.shape
    batch = batch or max(1, LSTSQ_CHUNK_VALUES // (d + 1))
    gram = np.zeros((d + 1, d + 1))
    moment = np.zeros((d + 1, targets.shape[1]))
    for start in range(0, n, batch):
        chunk = np.asarray(inputs[start:start + batch], dtype=np.float64)
        design = np.hstack([chunk, np.ones((chunk.shape[0], 1))])
        gram += design.T @ design
        moment += design.T @ np.asarray(targets[start:start + batch], dtype=np.float64)
    solution = np.linalg.lstsq(gram, moment, rcond=None)[0]
    return (np.ascontiguousarray(solution[:d].T, dtype=np.float32),
            np.ascontiguousarray(solution[d], dtype=np.float32))


def squared_error(predicted, targets):
    """Mean over rows of ‖predicted − target‖² (squared L2 per vector), in float64.

    predicted, targets: real arrays (n, d_in) -> float."""
    diff = np.asarray(predicted, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.einsum("ij,ij->i", diff, diff).mean())


def fit_decoder(inputs, targets, *, kind="mlp", hidden=MLP_HIDDEN, epochs=MLP_EPOCHS,
                seed=0, held_out=None, progress=False):
    """Learn a decoder from code representations to input vectors.

    inputs: float (n, d); targets: float (n, d_in); n ≥ 2. ``kind="linear"``: `fit_linear`
    only. ``kind="mlp"``: `fit_linear`, then the MLP correction of its residual, ``epochs``
    passes of Adam (batches of MLP_BATCH, cosine learning-rate decay from MLP_LR, seeded by
    ``seed``). ``held_out``: optional (inputs, targets) scored after every MLP epoch; the
    epoch with the lowest squared error is the one kept (early stopping: an MLP on few codes,
    e.g. 64 sign bits, memorises its training vectors after a few epochs). Returns
    (DecoderNet in eval mode on the CPU, list of the held-out squared error after each epoch:
    empty without ``held_out`` and for a linear decoder).
    """
    if kind not in DECODER_KINDS:
        raise SpreadcodeError(f"unknown decoder kind {kind!r}; choose one of {', '.join(DECODER_KINDS)}")
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    targets = np.ascontiguousarray(targets, dtype=np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DecoderNet(inputs.shape[1], targets.shape[1], hidden if kind == "mlp" else None)
    weight, bias = fit_linear(inputs, targets)
    with torch.no_grad():
        net.linear.weight.copy_(torch.from_numpy(weight))
        net.linear.bias.copy_(torch.from_numpy(bias))
    curve = []
    if kind == "mlp":
        if not (isinstance(epochs, int) and epochs >= 1):
            raise SpreadcodeError(f"epochs must be a positive integer, got {epochs}")
        curve = _train_correction(net, inputs, targets, epochs, seed, held_out, progress)
    return net.eval(), curve


def _train_correction(net, inputs, targets, epochs, seed, held_out, progress):
    """Train ``net.mlp`` (the linear part stays fixed) on the linear map's scaled residual;
    with ``held_out``, restore the epoch of lowest held-out error. Returns the error curve."""
    device = pick_device()
    net.to(device)
    x = torch.from_numpy(inputs).to(device)
    with torch.no_grad():
        residual = torch.from_numpy(targets).to(device) - net.linear(x)
        scale = residual.pow(2).mean().sqrt().clamp(min=torch.finfo(torch.float32).tiny)
        net.residual_scale.fill_(float(scale))
        residual /= scale
    n = x.shape[0]
    batch = min(MLP_BATCH, n)
    steps = n // batch
    optimizer = adam(net.mlp.parameters(), MLP_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps)
    rng = np.random.default_rng(seed)
    curve, best = [], BestEpoch(net)
    with epoch_progress(epochs, "train decoder", progress) as bar:
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(n)).to(device)
            net.train()
            total = torch.zeros((), dtype=torch.float64, device=device)
            for step in range(steps):
                rows = order[step * batch:(step + 1) * batch]
                loss = (net.mlp(x[rows]) - residual[rows]).pow(2).sum(dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach()
            if held_out is not None:
                curve.append(squared_error(net.predict(held_out[0]), held_out[1]))
                best.offer(len(curve), -curve[-1])
            if bar is not None:
                text = f"train squared error {float(total) / steps * float(scale) ** 2:.4f}"
                if curve:
                    text += f"  held-out {curve[-1]:.4f} (best {min(curve):.4f})"
                bar.set_postfix_str(text, refresh=False)
                bar.update(1)
    if curve:
        best.restore()
    net.cpu()
    return curve


def held_out_split(n, seed):
    """Seeded split of n learn rows -> (train rows, held-out rows), sorted int64 arrays;
    the held-out part is HELD_OUT_FRACTION of n (at least one row)."""
    n_val = max(1, round(HELD_OUT_FRACTION * n))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_learn(n, quantizer, seed):
    """`held_out_split` of n learn vectors, or SpreadcodeError when either part is too small
    to fit a decoder of the quantizer's codes and calibrate it."""
    train_rows, val_rows = held_out_split(n, seed)
    if len(train_rows) < quantizer.d + 2 or len(val_rows) < CALIBRATION_QUERY_STRIDE:
        minimum = max(math.ceil((quantizer.d + 2) / (1 - HELD_OUT_FRACTION)) + 1,
                      math.ceil(CALIBRATION_QUERY_STRIDE / HELD_OUT_FRACTION))
        raise SpreadcodeError(
            f"{n} learn vectors are too few to train a decoder of d={quantizer.d} codes "
            f"(need at least {minimum})")
    return train_rows, val_rows


def calibrate_blend(net, quantizer, codes, inputs, targets, query_catalyzed, query_targets):
    """Set the blend weight of re-ranking from held-out data, and measure what it does.

    Queries: catalyzed float32 (nq, d) and raw float32 (nq, d_in); database: codes as the
    quantizer stores them, their reconstructions float32 (n, d) and raw vectors float32
    (n, d_in). Both must be unseen by the decoder: it decodes its own training vectors far
    better than new ones, which would understate the decoded distance. Each query's
    compressed-domain shortlist of CALIBRATION_SHORTLIST gives the unit ratio ``scale`` = mean
    decoded distance / mean compressed distance over its first BLEND_SCALE_TOP candidates
    (0 when the compressed distances are all 0), and blend = BLEND_WEIGHT × scale. Returns
    (blend, {"scale", "weight", "recall_at_1": {"compressed", "decoded", "blended"}}): the
    held-out 1-recall@1 against the exact input-space nearest neighbour of the shortlist
    order, of re-ranking by the decoded distance alone, and of re-ranking with the blend.
    """
    n_short = min(CALIBRATION_SHORTLIST, codes.shape[0])
    shortlist_distances, shortlist = quantizer.search(codes, query_catalyzed, n_short)
    _, nearest = exact_knn(targets, query_targets, 1)
    decoded = net.predict(inputs)
    top = shortlist[:, :BLEND_SCALE_TOP]
    diff = decoded[top] - query_targets[:, None, :]
    decoded_mean = float(np.einsum("qkd,qkd->qk", diff, diff, dtype=np.float64).mean())
    compressed_mean = float(shortlist_distances[:, :BLEND_SCALE_TOP].mean(dtype=np.float64))
    scale = decoded_mean / compressed_mean if compressed_mean > 0 else 0.0
    blend = BLEND_WEIGHT * scale

    def recall_at_1(weight):
        _, ids = rerank_candidates(query_targets, shortlist, lambda unique: decoded[unique], 1,
                                   shortlist_distances, weight)
        return recall_at(ids, nearest, ks=(1,))[1]

    recalls = {"compressed": recall_at(shortlist, nearest, ks=(1,))[1],
               "decoded": recall_at_1(0.0), "blended": recall_at_1(blend)}
    return blend, {"scale": scale, "weight": BLEND_WEIGHT, "recall_at_1": recalls}


def train_decoder(learn, catalyzer, catalyzer_meta, *, kind="mlp", hidden=MLP_HIDDEN, epochs=None,
                  seed=0, progress=False):
    """Encode ``learn`` with the catalyzer and its quantizer, learn a decoder of the codes.

    learn: real array (n, d_in); catalyzer, catalyzer_meta (CatalyzerMeta): as returned by
    `load_catalyzer` (the decoder names the catalyzer by ``catalyzer_meta.sha256``).
    HELD_OUT_FRACTION of the vectors (seeded split) are held out to measure the squared error
    per vector of the decoder and of the linear baseline, and to choose the decoder's blend
    weight for re-ranking (`calibrate_blend`: every CALIBRATION_QUERY_STRIDE-th held-out vector
    is a query, the other held-out vectors are the database). ``epochs``: MLP epochs (default
    MLP_EPOCHS; not allowed for a linear decoder), ``hidden``: MLP width. Returns (DecoderNet, metadata for
    `save_decoder`).
    """
    from .residual import refuse_residual

    refuse_residual(catalyzer, "training a separate decoder")
    if kind not in DECODER_KINDS:
        raise SpreadcodeError(f"unknown decoder kind {kind!r}; choose one of {', '.join(DECODER_KINDS)}")
    if kind == "linear" and epochs is not None:
        raise SpreadcodeError("epochs only apply to the mlp decoder; a linear decoder is solved in closed form")
    if catalyzer_meta.sha256 is None:
        raise SpreadcodeError("save the catalyzer first: a decoder names its catalyzer by hash")
    quantizer = catalyzer_meta.quantizer.quantizer()
    catalyzed = catalyze(catalyzer, learn)
    targets = np.ascontiguousarray(learn, dtype=np.float32)
    n = targets.shape[0]
    train_rows, val_rows = split_learn(n, quantizer, seed)
    codes = quantizer.quantize(catalyzed)
    inputs = np.ascontiguousarray(quantizer.reconstruct(codes), dtype=np.float32)
    held_out = (inputs[val_rows], targets[val_rows])
    epochs = MLP_EPOCHS if kind == "mlp" and epochs is None else epochs
    net, curve = fit_decoder(inputs[train_rows], targets[train_rows], kind=kind, hidden=hidden,
                             epochs=epochs, seed=seed, held_out=held_out, progress=progress)
    with torch.no_grad():
        baseline = net.linear(torch.from_numpy(held_out[0])).numpy()
    is_query = np.arange(len(val_rows)) % CALIBRATION_QUERY_STRIDE == 0
    queries, database = val_rows[is_query], val_rows[~is_query]
    blend, blend_calibration = calibrate_blend(net, quantizer, codes[database], inputs[database],
                                               targets[database], catalyzed[queries], targets[queries])
    meta = {
        "catalyzer": catalyzer_meta.sha256,
        "quantizer": catalyzer_meta.quantizer.to_json(),
        "d_in": int(targets.shape[1]),
        "decoder": {"kind": kind, "hidden": net.hidden, "blend": blend},
        "training": {
            "seed": seed, "n_train": int(len(train_rows)), "n_val": int(len(val_rows)),
            "epochs": epochs, "batch_size": MLP_BATCH if kind == "mlp" else None,
            "best_epoch": int(np.argmin(curve)) + 1 if curve else None, "val_mse_curve": curve,
            "lr": MLP_LR if kind == "mlp" else None,
            "val_mse": squared_error(net.predict(held_out[0]), held_out[1]),
            "baseline_val_mse": squared_error(baseline, held_out[1]),
            "blend_calibration": blend_calibration, "calibration_shortlist": CALIBRATION_SHORTLIST,
            "calibration_queries": int(len(queries)), "calibration_database": int(len(database)),
            "data": {"n": int(n), "d": int(targets.shape[1]),
                     "sha256": hashlib.sha256(targets.tobytes()).hexdigest()},
        },
    }
    return net, meta


def decoder_bytes(net, meta):
    """The decoder file's bytes: safetensors of ``net`` + sorted-key JSON metadata.

    meta: {"catalyzer", "quantizer", "d_in", "decoder", "training"} (see the module docstring).
    Deterministic: the same weights and meta give the same bytes.
    """
    if meta["decoder"]["kind"] != net.kind or meta["d_in"] != net.d_in \
            or meta["quantizer"]["d"] != net.d:
        raise SpreadcodeError("decoder metadata does not describe this network")
    header = {"artifact": ARTIFACT_KIND, "format_version": model_store.FORMAT_VERSION,
              **{key: meta[key] for key in ("catalyzer", "quantizer", "d_in", "decoder", "training")}}
    return state_dict_bytes(net, canonical_json(header))


def save_decoder(net, meta, path=None, store=None):
    """Save into the store (``<store>/<sha>.safetensors``) and, if given, to exactly ``path``.
    Returns (sha256 hex, Path in the store)."""
    data = decoder_bytes(net, meta)
    sha, stored = model_store.save_artifact(data, store)
    if path is not None:
        model_store.write_file(path, data)
    return sha, stored


@dataclass(frozen=True)
class DecoderMeta:
    """What a decoder file's metadata says: the ``catalyzer`` it belongs to (hex SHA-256 of its
    file), the ``quantizer`` (QuantizerSpec) of the codes it reads, the input dimension
    ``d_in`` it decodes to, its ``kind`` ("linear" or "mlp"), the MLP width ``hidden`` (None
    for a linear decoder), the re-ranking ``blend`` weight and the ``training`` record."""

    catalyzer: str
    quantizer: QuantizerSpec
    d_in: int
    kind: str
    hidden: int | None
    blend: float
    training: dict

    @classmethod
    def from_json(cls, meta, path):
        """Check a decoder file's metadata (JSON object); SpreadcodeError
        "<path>: corrupt decoder metadata (bad '<field>': why)" naming the first bad field."""
        where = f"{path}: corrupt decoder metadata"
        catalyzer = meta.get("catalyzer")
        if not (isinstance(catalyzer, str) and re.fullmatch("[0-9a-f]{64}", catalyzer)):
            raise metadata_error(where, "catalyzer", f"{catalyzer!r} is not a SHA-256 in hex")
        quantizer = QuantizerSpec.from_json(meta.get("quantizer"), where)
        d_in = check_width(meta.get("d_in"), where, "d_in")
        spec = meta.get("decoder")
        if not isinstance(spec, dict):
            raise metadata_error(where, "decoder", "not an object")
        kind = spec.get("kind")
        if kind not in DECODER_KINDS:
            raise metadata_error(where, "decoder.kind", f"{kind!r} is not one of "
                                 f"{', '.join(DECODER_KINDS)}")
        hidden = check_width(spec.get("hidden"), where, "decoder.hidden") if kind == "mlp" else None
        blend = check_number(spec.get("blend"), where, "decoder.blend")
        training = meta.get("training", {})
        if not isinstance(training, dict):
            raise metadata_error(where, "training", "not an object")
        return cls(catalyzer, quantizer, d_in, kind, hidden, blend, training)

    def to_json(self):
        """The metadata object `decoder_bytes` writes (see the module docstring)."""
        return {"catalyzer": self.catalyzer, "quantizer": self.quantizer.to_json(),
                "d_in": self.d_in, "training": self.training,
                "decoder": {"kind": self.kind, "hidden": self.hidden, "blend": self.blend}}


@dataclass
class Decoder:
    """A decoder loaded from its artifact: ``net`` (DecoderNet, eval mode, CPU), ``spec`` (its
    checked `DecoderMeta`), ``sha256`` (of the file), ``path`` and the ``quantizer`` of the
    codes it decodes."""

    net: DecoderNet
    spec: DecoderMeta
    sha256: str
    path: str
    quantizer: object

    @property
    def kind(self):
        return self.spec.kind

    @property
    def blend(self):
        """Weight of the compressed-domain distance when re-ranking (see `calibrate_blend`)."""
        return self.spec.blend

    @property
    def catalyzer_sha256(self):
        return self.spec.catalyzer

    @property
    def d_in(self):
        return self.net.d_in

    @property
    def row_dtype(self):
        """One decoded vector: float32 (d_in,)."""
        return np.dtype((np.float32, (self.d_in,)))

    def decode(self, codes, batch=DECODE_BATCH):
        """Codes as the quantizer stores them (n, ...) -> float32 (n, d_in), ``batch`` at a time."""
        out = np.empty((codes.shape[0], self.d_in), dtype=np.float32)
        for start in range(0, codes.shape[0], batch):
            stop = start + batch
            out[start:stop] = self.net.predict(self.quantizer.reconstruct(codes[start:stop]), batch)
        return out


def load_decoder(ref, store=None):
    """Load a decoder by path, hash (or unique prefix of ≥ 8 hex digits) or "latest".

    Returns a Decoder. Raises SpreadcodeError for foreign, corrupt or non-decoder files.
    """
    path = model_store.resolve(ref, store, kind=ARTIFACT_KIND)
    meta = model_store.read_metadata(path)
    if meta["artifact"] != ARTIFACT_KIND:
        raise SpreadcodeError(f"{path}: a {meta['artifact']!r} artifact, not a decoder")
    spec = DecoderMeta.from_json(meta, path)
    quantizer = spec.quantizer.quantizer()
    net, sha256 = load_module(path, lambda: DecoderNet(quantizer.d, spec.d_in, spec.hidden),
                              "decoder (tensors do not match its metadata)")
    return Decoder(net, spec, sha256, str(path), quantizer)
