"""What every torch training loop of spreadcode shares (catalyzer training, decoder fitting,
fine-tuning): the device chooser, the optimizer and precision of a step, the epoch count under
a time budget, the best-epoch keeper and the epoch progress bar."""
import os
from contextlib import contextmanager, nullcontext

import torch

from spreadcode.errors import SpreadcodeError


def pick_device(device="auto"):
    """"auto" -> cuda if torch sees a GPU, else cpu; "cpu" / "cuda" as asked (SpreadcodeError
    for an unknown name, or cuda without a GPU). Returns a torch.device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise SpreadcodeError(f"unknown device {device!r}; use cpu, cuda or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpreadcodeError("--device cuda requested but torch sees no CUDA GPU")
    return torch.device(device)


def use_all_cores():
    """Let torch use every core this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, cores or 1))


def adam(params, lr, weight_decay=0.0):
    """Adam over ``params`` (an iterable of tensors or of param-group dicts), fused into one
    kernel for all of them where this torch has it: the per-tensor loop of the plain Adam took
    a quarter of a residual training step on 2 CPU cores (BENCHMARKS.md, lever 17).

    ``weight_decay`` > 0 (tensors only): AdamW, decoupled decay of the weight matrices
    (tensors of 2 or more dimensions) by lr · weight_decay of their value per step; biases
    and batch-norm scales and shifts are not decayed."""
    params = list(params)
    optimizer = torch.optim.Adam
    if weight_decay:
        optimizer = torch.optim.AdamW
        params = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        return optimizer(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return optimizer(params, lr=lr)


def bfloat16_native(device):
    """Whether ``device`` (a torch.device) multiplies bfloat16 matrices natively: a CUDA GPU
    that supports it, or a CPU with AVX512-BF16 (AMX CPUs have it too). Elsewhere bfloat16
    runs emulated, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", bool)()


def mixed_precision(device, enabled):
    """Context of a training step's forward pass: bfloat16 autocast (matrix products in
    bfloat16, accumulation, weights and optimizer in float32) when ``enabled`` and the device
    has native bfloat16 (`bfloat16_native`), else float32 throughout."""
    if enabled and bfloat16_native(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def state_snapshot(module):
    """A CPU copy of ``module``'s state dict that later training steps leave alone (to restore
    the best epoch with ``load_state_dict``)."""
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


# Epochs whose mean duration predicts the next ones' in `plan_epochs`.
RECENT_EPOCHS = 3


def plan_epochs(budget_s, cap, elapsed, epoch_seconds, planned=None):
    """Epoch count of a run under a wall-clock budget of ``budget_s`` seconds, planned again
    after every epoch. ``epoch_seconds``: the durations of the epochs run so far, ``elapsed``
    seconds since the budget started; ``cap``: the most epochs wanted (None: no cap);
    ``planned``: the count planned after the epoch before (None after the first).

    As many epochs as fit at the mean duration of the last RECENT_EPOCHS, at most ``cap``,
    never more than ``planned`` and never fewer than have run: the learning-rate schedule, a
    function of the fraction of the planned steps run, only moves forward and ends where the
    budget does. Planned once from a fast first epoch, a run whose later epochs were slower
    stopped mid-schedule at a high rate (BENCHMARKS.md, "Issue #14 levers", lever 56)."""
    done = len(epoch_seconds)
    recent = epoch_seconds[-RECENT_EPOCHS:]
    per_epoch = max(sum(recent) / len(recent), 1e-9)
    count = done + int(max(budget_s - elapsed, 0.0) // per_epoch)
    if cap is not None:
        count = min(count, cap)
    if planned is not None:
        count = min(count, planned)
    return max(count, done, 1)


class BestEpoch:
    """The best epoch of a training run so far: its number (``epoch``, None before any),
    ``score`` (larger is better; tuples compare in order) and a `state_snapshot` of
    ``module`` then."""

    def __init__(self, module):
        self.module = module
        self.epoch = self.score = self.state = None

    def offer(self, epoch, score):
        """Keep ``epoch`` if its ``score`` beats the best so far (the first one always does);
        returns whether it was kept."""
        if self.score is not None and not score > self.score:
            return False
        self.epoch, self.score, self.state = epoch, score, state_snapshot(self.module)
        return True

    def restore(self):
        """Load the kept weights back into the module."""
        self.module.load_state_dict(self.state)


@contextmanager
def epoch_progress(total, desc, enabled):
    """Context of a tqdm epoch bar on stderr (None when progress is off), closed on exit
    however the block ends; total: planned epochs, or None when not known yet."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
