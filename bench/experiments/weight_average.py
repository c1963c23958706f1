"""Issue #14 scratch experiment: the residual default with an exponential moving average of
its weights (Polyak averaging), the average being what is evaluated, kept and saved.

The models are data-limited and train with fresh denoising noise every step (lever 50), so
the iterates of the last epochs scatter around a better point; their average may reconstruct
held-out vectors better at no cost to encoding or search. Every step, after the optimizer's,
each parameter and floating-point buffer (the batch norms' running statistics) moves towards
its live value: shadow ← d · shadow + (1 − d) · live, d = min(DECAY, (1 + t) / (10 + t)) at
step t (the early steps average less). Each epoch's held-out error is taken on the shadow
weights, which the best-epoch choice then keeps; training continues from the live weights.

Run:  python bench/experiments/weight_average.py DATA OUT ema=DECAY [FIELD=VALUE ...]
(the other arguments as `residual_variants.py`'s; one JSON row appended to
results-issue14.jsonl, experiment "weight_average ema=DECAY").
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import residual  # noqa: E402


class WeightAverage:
    """The shadow weights of the one model being trained (the first ResidualCatalyzer made)."""

    def __init__(self, decay):
        self.decay, self.model, self.steps = decay, None, 0
        self.live = self.shadow = self.kept = None

    def update(self, *_):
        if self.shadow is None:  # the first step: the preprocessing buffers are fitted now
            self.live = [t for t in [*self.model.parameters(), *self.model.buffers()]
                         if t.is_floating_point()]
            self.shadow = [t.detach().clone() for t in self.live]
        self.steps += 1
        weight = 1 - min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [t.detach() for t in self.live], weight)

    def swap_in(self):
        """Put the shadow weights into the model, keeping the live ones aside."""
        with torch.no_grad():
            if self.kept is None:
                self.kept = [t.detach().clone() for t in self.live]
            for live, shadow in zip(self.live, self.shadow):
                live.copy_(shadow)

    def swap_out(self):
        """Put the live weights back (before training goes on)."""
        if self.kept is None:
            return
        with torch.no_grad():
            for live, kept in zip(self.live, self.kept):
                live.copy_(kept)
        self.kept = None


def install(decay):
    """Patch the library's residual training in this process: the first model made keeps a
    WeightAverage of ``decay``, updated after each optimizer step, swapped in for each held-out
    error (so the best epoch keeps it) and out again when training resumes."""
    average = WeightAverage(decay)
    base_init, base_adam = residual.ResidualCatalyzer.__init__, residual.adam
    base_error = residual._held_out_error

    def init(self, *args, **kwargs):
        base_init(self, *args, **kwargs)
        if average.model is None:
            average.model = self
            base_train = self.train

            def train(mode=True):
                if mode:
                    average.swap_out()
                return base_train(mode)
            self.train = train

    def adam(params, lr, weight_decay=0.0):
        optimizer = base_adam(params, lr, weight_decay)
        optimizer.register_step_post_hook(average.update)
        return optimizer

    def held_out_error(model, x, *args, **kwargs):
        if model is average.model and average.shadow is not None:
            average.swap_in()
        return base_error(model, x, *args, **kwargs)

    residual.ResidualCatalyzer.__init__ = init
    residual.adam = adam
    residual._held_out_error = held_out_error


if __name__ == "__main__":
    decay = None
    for item in list(sys.argv[3:]):
        if item.startswith("ema="):
            decay = float(item.split("=", 1)[1])
            sys.argv.remove(item)
    if decay is None or not 0 < decay < 1:
        sys.exit("give ema=DECAY, 0 < DECAY < 1")
    install(decay)
    residual_variants.main(f"weight_average ema={decay}")
