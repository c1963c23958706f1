"""Issue #14 lever 96: a training term against decoded vectors that crowd dense regions.

The MSE-optimal decoder returns each code's conditional mean, pulled towards the denser part
of the code's cell, so decoded vectors sit where the data is denser than where their own
vectors lie: on wordnet the mean cosine of a decoded base vector to its 10 nearest learn
vectors is 0.605 against 0.567 for the vector itself (`hub_oracle.py`). A decoded vector
that crowds a dense region is near many queries: a hub, an impostor at R@1. Re-ranking with
each vector's true excess (an oracle) gains + 2.0 R@1, but no feature of the code predicts
it. Here training is asked for less of it: the loss adds HUB_WEIGHT × the batch mean of
r(x̂) − r(x), r(v) the mean cosine of v (on the sphere) to its 10 nearest rows of a bank
of the last HUB_BANK training rows (earlier batches, so a row is never its own neighbour):
the library's term (`residual.ResidualCatalyzer.training_loss`) with this bank and weight.

    HUB_WEIGHT=W python bench/experiments/hub_penalty.py DATA OUT crowding=0 [FIELD=VALUE ...]

The saved model is a plain residual model (the term only trains): evaluate with the library.
The library adopted the term (`ResidualConfig.crowding`, its bank the rows that follow the
batch instead of those before it, its weight in the squared error's units): this script
adds its own, so it refuses the library's (its rows were trained before it existed).
"""
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from residual_variants import run_model_class  # noqa: E402
from spreadcode import residual  # noqa: E402

HUB_WEIGHT = float(os.environ.get("HUB_WEIGHT", 10))
HUB_BANK = int(os.environ.get("HUB_BANK", 4096))


class HubPenalty(residual.ResidualCatalyzer):
    """The library's loss with its crowding term weighted HUB_WEIGHT in the preprocessed
    squared error's units, against a bank of the last HUB_BANK rows trained on (kept here, a
    batch never in its own bank); the first step, with no bank yet, goes without."""

    def training_loss(self, x, aux, noise=0.0, generator=None, bank=None, crowding=0.0):
        if crowding:
            raise SystemExit("run with crowding=0: this script adds its own crowding term")
        own, truth = getattr(self, "_bank", None), nn.functional.normalize(x.float(), dim=1)
        self._bank = truth.detach() if own is None else \
            torch.cat([own, truth.detach()])[-HUB_BANK:]
        if own is None or len(own) < residual.CROWDING_NEIGHBOURS:
            return super().training_loss(x, aux, noise, generator)
        return super().training_loss(
            x, aux, noise, generator, own,
            HUB_WEIGHT / (float(self.scale) * self.output_norm) ** 2)


if __name__ == "__main__":
    run_model_class("hub_penalty", HubPenalty, 96, hub_weight=HUB_WEIGHT,
                    hub_k=residual.CROWDING_NEIGHBOURS, hub_bank=HUB_BANK)
