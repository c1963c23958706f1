"""What every torch training loop of spreadcode shares (catalyzer training, decoder fitting,
fine-tuning): the device chooser, the best-epoch keeper and the epoch progress bar."""
import os
from contextlib import contextmanager

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


def state_snapshot(module):
    """A CPU copy of ``module``'s state dict that later training steps leave alone (to restore
    the best epoch with ``load_state_dict``)."""
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


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
