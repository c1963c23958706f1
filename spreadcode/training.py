"""Training the catalyzer (Sablayrolles et al., ICLR 2019, §3-4 and Appendix A).

Objective per batch: the triplet rank loss without margin, max(0, ‖f(x)−f(x⁺)‖ − ‖f(x)−f(x⁻)‖),
plus λ·KoLeo, KoLeo = −mean_i log(min_{j≠i} ‖f(x_i) − f(x_j)‖) over the batch anchors.
x⁺ is drawn uniformly among the k_pos exact nearest neighbours of x in input space (computed
once); x⁻ is the k_neg-th nearest neighbour of f(x) among all f(x_i) in output space,
recomputed for the whole training set at the start of every epoch. Both k-NN are exact
(`spreadcode.knn.exact_knn`, blocked). SGD with momentum and a step learning-rate decay that
follows the paper's 300-epoch schedule proportionally (0.1, then 0.05 from half-way, then
0.01 for the last quarter).

Validation as in the paper: a random part of the learn set is held out as a small database
plus queries; every ``eval_every`` epochs the catalyzed database is quantized with the chosen
quantizer and searched with the catalyzed queries, giving 1-recall@1/10/100 against the exact
input-space nearest neighbour. The best checkpoint (recall@10, then @1) is kept.

`train_catalyzer` (with `command_config`) is what ``spreadcode train``
(`spreadcode.commands.train_command`) and `spreadcode.index.Index.train` run.
"""
import hashlib
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from spreadcode.catalyzer import Catalyzer, CatalyzerMeta, catalyze
from spreadcode.errors import SpreadcodeError
from spreadcode.knn import exact_knn
from spreadcode.losses import koleo_loss, straight_through, triplet_rank_loss
from spreadcode.quantizer import QuantizerSpec, quantizer_spec
from spreadcode.search import first_hits
from spreadcode.torchutil import (
    BestEpoch, epoch_progress, pick_device, plan_epochs, use_all_cores)

# bits -> (d_out, r²) of the spherical lattice (paper §5: d_out 24 at 16/32/64 bits); larger
# budgets come from `spreadcode.lattice.good_params`. At 64 bits d_out 32 (r² 36) wins on the
# sentence embeddings (R@1 34.3 vs 31.3) but loses on SIFT descriptors (27.4 vs 29.8), so the
# paper's 24 stays (BENCHMARKS.md, "Choosing d_out at 64 bits").
LATTICE_BITS_TABLE = {16: (24, 3), 32: (24, 10), 64: (24, 79)}
# d_out -> λ (paper Appendix A); other d_out interpolate log-linearly, clamped at the ends.
LAMBDA_TABLE = ((16, 0.05), (24, 0.02), (32, 0.01), (40, 0.005))
# λ grid of ``--lambda auto``, as multiples of the default λ for the d_out.
AUTO_LAMBDA_FACTORS = (0.5, 1.0, 2.0)
RECALL_KS = (1, 10, 100)
# Default epoch count per device, and the wall-clock cap ``spreadcode train`` adds when neither
# --epochs nor --time-budget is given. On 2 CPU cores an epoch of 52,659 x 96 learn vectors
# costs ~36 CPU-seconds (30 epochs: ~10 minutes); a GPU affords more.
DEFAULT_EPOCHS = {"cpu": 30, "cuda": 100}
DEFAULT_TIME_BUDGET_S = 14 * 60
QUANTIZER_KINDS = ("lattice", "sign")
# What ``spreadcode train --quantizer`` offers: the residual lattice model (the default, see
# spreadcode/residual.py) or the paper's catalyzer with one lattice sphere or sign bits.
TRAIN_KINDS = ("residual",) + QUANTIZER_KINDS
DEFAULT_TRAIN_KIND = "residual"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved, minus ``device``, in the model metadata).

    ``r2`` is the lattice's squared radius (None for sign codes). ``lr_schedule``: pairs
    (fraction of the planned epochs, learning rate), the last pair whose fraction has been
    reached applies. ``time_budget_s`` (wall clock, data preparation included) makes the epoch
    count planned after every epoch (`spreadcode.torchutil.plan_epochs`): as many as fit, at
    most ``epochs`` (None: no cap); training also stops when the budget is spent. ``val_db`` /
    ``val_queries`` are upper bounds on the held-out split (at most 1/5 and 1/20 of the learn
    set).
    """

    quantizer: str = "lattice"
    d_out: int = 24
    r2: int | None = 79
    lam: float = 0.02
    epochs: int | None = DEFAULT_EPOCHS["cpu"]
    time_budget_s: float | None = None
    batch_size: int = 256
    lr_schedule: tuple = ((0.0, 0.1), (0.5, 0.05), (0.75, 0.01))
    momentum: float = 0.9
    k_pos: int = 10
    k_neg: int = 50
    hidden: int = 1024
    seed: int = 0
    device: str = "auto"
    end_to_end: bool = False
    val_db: int = 10000
    val_queries: int = 1000
    eval_every: int = 1

    def quantizer_spec(self):
        """The quantizer as model files name it (a QuantizerSpec)."""
        return QuantizerSpec(**quantizer_spec(self.quantizer, self.d_out, self.r2))

    def learning_rate(self, epoch, planned_epochs):
        """Learning rate of 0-based ``epoch`` out of ``planned_epochs``."""
        progress = epoch / planned_epochs
        return [lr for start, lr in self.lr_schedule if start <= progress][-1]


@dataclass
class TrainResult:
    """A trained catalyzer (best checkpoint, eval mode, CPU), its CatalyzerMeta for the model
    file, and per-epoch history dicts (epoch, lr, triplet, koleo, offending, recall or None,
    seconds)."""

    model: Catalyzer
    meta: CatalyzerMeta
    history: list


def lambda_for_dout(d_out):
    """Default KoLeo weight λ for an output dimension (paper Appendix A: 16→0.05, 24→0.02,
    32→0.01, 40→0.005); log-linear interpolation in between, clamped outside [16, 40]."""
    dims = [d for d, _ in LAMBDA_TABLE]
    logs = [math.log(lam) for _, lam in LAMBDA_TABLE]
    return float(math.exp(np.interp(d_out, dims, logs)))


def default_config(bits=64, quantizer="lattice", dout=None, r2=None):
    """TrainConfig for a code size, with the paper's λ for the resulting d_out.

    Lattice: (d_out, r²) from `LATTICE_BITS_TABLE` (16/32/64 bits) or the first (smallest d)
    of `spreadcode.lattice.good_params` (other budgets: 128 bits -> S(48, 135)); ``dout`` alone picks the largest r² that
    fits ``bits`` in that dimension (`spreadcode.lattice.params`); ``dout`` and ``r2`` together
    override the table. Sign: d_out = ``dout`` or ``bits``. Raises SpreadcodeError for unknown
    sizes and parameters the codec refuses.
    """
    from spreadcode import lattice

    if quantizer not in QUANTIZER_KINDS:
        raise SpreadcodeError(f"unknown quantizer {quantizer!r}; choose one of {', '.join(QUANTIZER_KINDS)}")
    if quantizer == "sign":
        if r2 is not None:
            raise SpreadcodeError("--r2 only applies to the lattice quantizer")
        d_out = bits if dout is None else dout
    elif dout is not None and r2 is not None:
        d_out = dout
    elif r2 is not None:
        raise SpreadcodeError("--r2 needs --dout (the lattice sphere is S(dout, r2))")
    elif dout is not None:
        d_out, r2 = dout, lattice.params(bits, dout)
    elif bits in LATTICE_BITS_TABLE:
        d_out, r2 = LATTICE_BITS_TABLE[bits]
    else:
        choices = lattice.good_params(bits)
        if not choices:
            raise SpreadcodeError(f"no lattice sphere with a fast nearest-point search fits {bits} bits; "
                                  "give --dout and --r2, or use --quantizer sign")
        d_out, r2 = choices[0]
    if not isinstance(d_out, (int, np.integer)) or d_out < 1:
        raise SpreadcodeError(f"output dimension must be a positive integer, got {d_out}")
    config = TrainConfig(quantizer=quantizer, d_out=int(d_out), r2=None if r2 is None else int(r2),
                         lam=lambda_for_dout(d_out))
    make_quantizer(config)
    return config


def make_quantizer(config):
    """The codec's quantizer for a config (raises SpreadcodeError if the codec refuses it)."""
    return config.quantizer_spec().quantizer()


def resolve_device(device):
    """`pick_device`; on the CPU, torch then uses every core this process may run on."""
    device = pick_device(device)
    if device.type == "cpu":
        use_all_cores()
    return device


def _check_config(config):
    """Reject configurations that cannot train (SpreadcodeError names the field)."""
    if config.quantizer not in QUANTIZER_KINDS:
        raise SpreadcodeError(f"unknown quantizer {config.quantizer!r}; choose one of {', '.join(QUANTIZER_KINDS)}")
    if not (math.isfinite(config.lam) and config.lam >= 0):
        raise SpreadcodeError(f"lambda must be a finite number >= 0, got {config.lam}")
    if config.epochs is None and config.time_budget_s is None:
        raise SpreadcodeError("give a number of epochs, a time budget, or both")
    if config.epochs is not None and config.epochs < 1:
        raise SpreadcodeError(f"epochs must be >= 1, got {config.epochs}")
    if config.time_budget_s is not None and not config.time_budget_s > 0:
        raise SpreadcodeError(f"time budget must be positive, got {config.time_budget_s}")
    for name in ("batch_size", "k_pos", "k_neg", "hidden", "d_out", "eval_every", "val_db", "val_queries"):
        minimum = 2 if name == "batch_size" else 1
        if getattr(config, name) < minimum:
            raise SpreadcodeError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


@dataclass
class TrainingData:
    """The learn set split and indexed once, shared by every run on it (λ search included).

    ``train`` float32 (n_train, d_in) and ``positives`` int64 (n_train, k_pos) (exact input-space
    neighbours, self excluded) on the training device; ``val_db`` float32 (n_val_db, d_in),
    ``val_queries`` float32 (n_val_queries, d_in) and ``val_nearest`` int64 (n_val_queries,)
    (exact nearest database row) as numpy; ``data`` describes the whole learn set for the
    metadata (n, d, sha256 of the float32 bytes).
    """

    train: torch.Tensor
    positives: torch.Tensor
    val_db: np.ndarray
    val_queries: np.ndarray
    val_nearest: np.ndarray
    data: dict


def check_learn(learn):
    """Learn vectors -> float32 C-contiguous (n, d); SpreadcodeError for bad shapes or values."""
    learn = np.asarray(learn)
    if learn.ndim != 2 or learn.shape[1] < 1:
        raise SpreadcodeError(f"learn vectors must be a 2-D array (n, d), got shape {learn.shape}")
    if not (np.issubdtype(learn.dtype, np.integer) or np.issubdtype(learn.dtype, np.floating)):
        raise SpreadcodeError(f"learn vectors must be numbers, got dtype {learn.dtype}")
    learn = np.ascontiguousarray(learn, dtype=np.float32)
    finite = np.isfinite(learn).all(axis=1)
    if not finite.all():
        raise SpreadcodeError(f"learn vector {int(np.argmin(finite))} contains NaN or Inf values "
                              "(or a value too large for float32)")
    return learn


def split_sizes(n, config):
    """(n_train, n_val_db, n_val_queries) for n learn vectors; SpreadcodeError if too few."""
    n_queries = min(config.val_queries, n // 20)
    n_db = min(config.val_db, n // 5)
    n_train = n - n_queries - n_db
    needed = max(config.k_neg, config.k_pos) + 1
    if n_queries < 1 or n_train < needed:
        minimum = max(20, math.ceil(needed / 0.75))
        raise SpreadcodeError(
            f"{n} learn vectors are too few: training needs more than k_neg={config.k_neg} "
            f"neighbours plus a validation split (at least about {minimum} vectors)")
    return n_train, n_db, n_queries


def prepare_training_data(learn, config, device):
    """Validate and split the learn set, compute positives and validation ground truth.

    learn: array-like (n, d_in). Split by a permutation seeded with ``config.seed``.
    """
    learn = check_learn(learn)
    n_train, n_db, n_queries = split_sizes(learn.shape[0], config)
    order = np.random.default_rng(config.seed).permutation(learn.shape[0])
    val_queries = learn[order[:n_queries]]
    val_db = learn[order[n_queries:n_queries + n_db]]
    train = torch.from_numpy(learn[np.sort(order[n_queries + n_db:])]).to(device)
    centred = train - train.mean(dim=0)  # same neighbours, smaller norms: less float32 cancellation
    _, positives = exact_knn(centred, centred, config.k_pos, exclude_self=True)
    _, val_nearest = exact_knn(val_db.astype(np.float64), val_queries.astype(np.float64), 1)
    return TrainingData(train, positives, val_db, val_queries, val_nearest[:, 0],
                        data_record(learn))


def data_record(learn):
    """What a model's metadata says of its learn set float32 (n, d): n, d and the SHA-256 of
    its float32 bytes."""
    return {"n": int(learn.shape[0]), "d": int(learn.shape[1]),
            "sha256": hashlib.sha256(learn.tobytes()).hexdigest()}


def validation_recall(model, quantizer, prepared):
    """1-recall@1/10/100 of the quantized, catalyzed validation database -> {"1": r, ...}."""
    codes = quantizer.quantize(catalyze(model, prepared.val_db))
    k = min(max(RECALL_KS), prepared.val_db.shape[0])
    _, ids = quantizer.search(codes, catalyze(model, prepared.val_queries), k)
    hits = first_hits(ids, prepared.val_nearest[:, None])
    return {str(r): float(np.mean(hits < r)) for r in RECALL_KS}


def _catalyze_tensor(model, x, batch=65536):
    """Eval-mode outputs of the model for a device tensor (n, d_in) -> (n, d_out), no grad."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[start:start + batch]) for start in range(0, x.shape[0], batch)])


def _run_epoch(model, optimizer, prepared, config, quantizer, rng, on_batch):
    """One pass over the training set in shuffled batches; returns mean (triplet, koleo, offending)."""
    train = prepared.train
    n = train.shape[0]
    # Negatives: the k_neg-th output-space neighbour of every training vector, for this epoch.
    outputs = _catalyze_tensor(model, train)
    _, neighbours = exact_knn(outputs, outputs, config.k_neg, exclude_self=True)
    negatives = neighbours[:, config.k_neg - 1]
    choice = torch.from_numpy(rng.integers(0, config.k_pos, n)).to(train.device)
    positives = prepared.positives.gather(1, choice[:, None])[:, 0]
    batch = min(config.batch_size, n)
    order = torch.from_numpy(rng.permutation(n)).to(train.device)
    model.train()
    sums = torch.zeros(3, dtype=torch.float64)
    steps = n // batch
    for step in range(steps):
        anchors = order[step * batch:(step + 1) * batch]
        out = model(torch.cat([train[anchors], train[positives[anchors]], train[negatives[anchors]]]))
        y_anchor, y_pos, y_neg = out[:batch], out[batch:2 * batch], out[2 * batch:]
        if config.end_to_end:
            y_pos, y_neg = straight_through(y_pos, quantizer), straight_through(y_neg, quantizer)
        per_triplet = triplet_rank_loss(y_anchor, y_pos, y_neg, reduction="none")
        triplet = per_triplet.mean()
        koleo = koleo_loss(y_anchor)
        optimizer.zero_grad(set_to_none=True)
        (triplet + config.lam * koleo).backward()
        optimizer.step()
        sums += torch.stack([triplet.detach(), koleo.detach(), (per_triplet > 0).float().mean()]).double().cpu()
        on_batch(step + 1, steps, sums / (step + 1))
    return tuple(float(v) for v in sums / steps)


def fit(prepared, config, progress=True, desc="train", started=None):
    """Train one catalyzer on prepared data; see `train_catalyzer`. ``started``: the
    ``time.monotonic()`` the time budget counts from (default: now)."""
    _check_config(config)
    started = time.monotonic() if started is None else started
    device = prepared.train.device
    quantizer = make_quantizer(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Catalyzer(prepared.train.shape[1], config.d_out, config.hidden)
    model.fit_preprocessing(prepared.train.cpu())
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr_schedule[0][1], momentum=config.momentum)
    rng = np.random.default_rng(config.seed)
    # Without a budget the schedule is known; with one it is planned after every epoch.
    planned = config.epochs if config.time_budget_s is None else None
    history, best, best_recall, last_recall = [], BestEpoch(model), None, None
    interrupted = False
    with epoch_progress(planned, desc, progress) as bar:
        try:
            epoch = 0
            while planned is None or epoch < planned:
                epoch_start = time.monotonic()
                lr = config.learning_rate(epoch, planned or 1)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                def on_batch(step, steps, means, epoch=epoch):
                    if bar is not None and (step % 20 == 0 or step == steps):
                        bar.set_postfix_str(_postfix(epoch + 1, f"{step}/{steps}", means, last_recall),
                                            refresh=True)

                means = _run_epoch(model, optimizer, prepared, config, quantizer, rng, on_batch)
                epoch += 1
                first_plan = planned is None
                if config.time_budget_s is not None:  # before the check of the last epoch
                    planned = plan_epochs(config.time_budget_s, config.epochs,
                                          time.monotonic() - started,
                                          [row["seconds"] for row in history]
                                          + [time.monotonic() - epoch_start], planned)
                    if bar is not None:
                        bar.total = planned
                out_of_time = (config.time_budget_s is not None
                               and time.monotonic() - started >= config.time_budget_s)
                recall = None
                if first_plan or out_of_time or epoch == planned or epoch % config.eval_every == 0:
                    recall = last_recall = validation_recall(model, quantizer, prepared)
                    if best.offer(epoch, _rank(recall)):
                        best_recall = recall
                history.append({"epoch": epoch, "lr": lr, "triplet": means[0], "koleo": means[1],
                                "offending": means[2], "recall": recall,
                                "seconds": time.monotonic() - epoch_start})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(_postfix(epoch, "done", means, last_recall), refresh=True)
                if out_of_time:
                    break
        except KeyboardInterrupt:
            interrupted = True
    if best.epoch is None:
        best_recall = validation_recall(model, quantizer, prepared)
        best.offer(len(history), _rank(best_recall))
    model.cpu()
    best.restore()
    model.eval()
    meta = CatalyzerMeta.for_model(model, config.quantizer_spec(), config.lam, {
        "seed": config.seed, "epochs": len(history), "planned_epochs": planned,
        "time_budget_s": config.time_budget_s, "batch_size": config.batch_size,
        "lr_schedule": [list(pair) for pair in config.lr_schedule], "momentum": config.momentum,
        "k_pos": config.k_pos, "k_neg": config.k_neg, "end_to_end": config.end_to_end,
        "hidden": config.hidden, "preprocessing": "center, divide by RMS coordinate",
        "n_train": int(prepared.train.shape[0]), "n_val_db": int(prepared.val_db.shape[0]),
        "n_val_queries": int(prepared.val_queries.shape[0]), "data": prepared.data,
        "device": device.type, "best_epoch": best.epoch, "val_recall": best_recall,
        "interrupted": interrupted,
    })
    return TrainResult(model, meta, history)


def _rank(recall):
    """Checkpoint order: validation recall@10 first, recall@1 breaks ties."""
    return recall["10"], recall["1"]


def _postfix(epoch, where, means, recall):
    """Progress text: epoch and batch position, triplet loss, KoLeo, offending triplets (%),
    last validation 1-recall@1/10/100 (%)."""
    triplet, koleo, offending = (float(v) for v in means)
    text = f"ep {epoch} {where} triplet {triplet:.4f} koleo {koleo:.3f} offending {100 * offending:.1f}%"
    if recall is not None:
        text += " val R@1/10/100 " + "/".join(f"{100 * recall[str(k)]:.1f}" for k in RECALL_KS)
    return text


def train_catalyzer(learn, config, progress=True, auto_lambda=False):
    """Train a catalyzer on ``learn`` (array-like (n, d_in); float32 after conversion); with
    ``auto_lambda``, the best of several λ around config.lam (`search_lambda`). A
    `spreadcode.residual.ResidualConfig` trains a residual model instead
    (`spreadcode.residual.train_residual`).

    Returns TrainResult (best-checkpoint model in eval mode on the CPU, metadata for
    `spreadcode.catalyzer.save_catalyzer`, per-epoch history). On CPU the same seed, data and
    config give identical weights. Ctrl-C stops training and keeps the best checkpoint so far
    (meta.training["interrupted"] = True). Raises SpreadcodeError for bad inputs.
    """
    from spreadcode.residual import ResidualConfig, train_residual

    if isinstance(config, ResidualConfig):
        return train_residual(learn, config, progress=progress)
    if auto_lambda:
        return search_lambda(learn, config, progress=progress)
    started = time.monotonic()
    _check_config(config)
    make_quantizer(config)
    device = resolve_device(config.device)
    prepared = prepare_training_data(learn, config, device)
    return fit(prepared, config, progress, started=started)


def search_lambda(learn, config, factors=AUTO_LAMBDA_FACTORS, progress=True):
    """``--lambda auto``: train with λ = config.lam × each factor, keep the best by validation
    recall@10 (then @1). With a time budget, each run gets an equal share. Returns the best
    TrainResult; its meta.training["lambda_search"] maps each λ to its validation recall@10.
    """
    _check_config(config)
    make_quantizer(config)
    device = resolve_device(config.device)
    started = time.monotonic()
    prepared = prepare_training_data(learn, config, device)
    results = {}
    for i, factor in enumerate(factors):
        run_config = replace(config, lam=config.lam * factor)
        if config.time_budget_s is not None:
            remaining = config.time_budget_s - (time.monotonic() - started)
            run_config = replace(run_config, time_budget_s=max(remaining / (len(factors) - i), 1e-3))
        results[run_config.lam] = fit(prepared, run_config, progress, desc=f"lambda {run_config.lam:.4g}")
        if results[run_config.lam].meta.training["interrupted"]:
            break
    best = max(results.values(), key=lambda result: _rank(result.meta.training["val_recall"]))
    best.meta = replace(best.meta, training={**best.meta.training, "lambda_search": {
        f"{lam:.6g}": result.meta.training["val_recall"]["10"] for lam, result in results.items()}})
    return best


def command_config(bits=64, quantizer=DEFAULT_TRAIN_KIND, *, dout=None, r2=None, lam=None,
                   epochs=None, time_budget_min=None, device="auto", seed=0, hidden=None):
    """The training config of ``spreadcode train``'s options (and `spreadcode.index.Index.train`'s).

    quantizer "residual" (default): a `spreadcode.residual.ResidualConfig` whose stages come
    from ``bits`` (`spreadcode.residual.stage_blocks`); "lattice" / "sign": a TrainConfig,
    bits / dout / r2 as in `default_config`, lam None (default for d_out), a number, or "auto"
    (the default λ, to search around: `train_catalyzer` with ``auto_lambda``).
    epochs / time_budget_min: at most one; with neither, the default epochs for the device,
    fewer if they would not fit in the default time budget (planned after every epoch), and
    for residual codes at most `spreadcode.residual.TRAINING_VECTORS` training vectors in all,
    the budget growing with learn sets of more than `spreadcode.residual.BUDGET_ROWS`
    training rows.
    hidden: the encoder's hidden width (None: the config's). SpreadcodeError for bad options.
    """
    from spreadcode.residual import (
        BUDGET_ROWS, TRAINING_VECTORS, ResidualConfig, check_residual_config, stage_blocks)

    if epochs is not None and time_budget_min is not None:
        raise SpreadcodeError("give either --epochs or --time-budget, not both")
    if quantizer not in TRAIN_KINDS:
        raise SpreadcodeError(f"unknown quantizer {quantizer!r}; choose one of {', '.join(TRAIN_KINDS)}")
    overrides = {"seed": seed, "device": device, "epochs": epochs, "time_budget_s": None}
    if hidden is not None:
        overrides["hidden"] = hidden
    if time_budget_min is not None:
        overrides["time_budget_s"] = float(time_budget_min) * 60
    if quantizer == "residual":
        for name, value in (("--dout", dout), ("--r2", r2), ("--lambda", lam)):
            if value is not None:
                raise SpreadcodeError(f"{name} applies to the lattice and sign quantizers, not "
                                      "to residual codes")
        pick_device(device)
        config = ResidualConfig(blocks=stage_blocks(bits))
        if time_budget_min is None and epochs is None:
            overrides.update(epochs=config.epochs, time_budget_s=DEFAULT_TIME_BUDGET_S,
                             budget_rows=BUDGET_ROWS, max_vectors=TRAINING_VECTORS)
        config = replace(config, **overrides)
        check_residual_config(config)
        return config
    config = default_config(bits, quantizer, dout, r2)
    if time_budget_min is None and epochs is None:
        overrides.update(epochs=DEFAULT_EPOCHS[resolve_device(device).type],
                         time_budget_s=DEFAULT_TIME_BUDGET_S)
    if lam is not None and lam != "auto":
        if isinstance(lam, str):
            raise SpreadcodeError(f"--lambda must be a number or 'auto', got {lam!r}")
        overrides["lam"] = float(lam)
    config = replace(config, **overrides)
    _check_config(config)
    return config

