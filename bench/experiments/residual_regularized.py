"""Issue #14 scratch experiment: regularise the library's residual model, which over-fits its
learn set (wordnet: MSE 0.241 on the training rows, 0.309 held out and on base).

Options (any combination), applied by patching the library's training for this process:
    noise=S     the library's denoising noise (`ResidualConfig.noise`) S × the RMS coordinate
                instead of its default
    dropout=P   dropout P after each hidden ReLU of the decoders g
    wd=W        AdamW's decoupled weight decay W instead of the library's default
    mixup=P     a share P of each batch is replaced by points between a vector and one of its
                10 nearest training vectors (uniform, at most half way), input and target
                alike: new points along the data's own neighbourhoods, fresh every step
    mask=P      the encoders read each training vector (preprocessed) with a share P of its
                coordinates zeroed and the rest divided by 1 − P (then the library's noise),
                the loss comparing with the clean vector: masking noise, after denoising
                auto-encoders' (Vincent et al. 2008)
    gauss=P     a share P of each batch is replaced by draws of a Gaussian with the training
                rows' mean and covariance, scaled to their mean norm, input and target alike:
                unlimited data with the learn set's second moments (its long spectral tail,
                which the decoders reconstruct worst on raw 384-d text, lever 24)
    anneal=1    the noise falls linearly from its level to 0 over the planned steps (the decoders
                end on the codes of clean vectors, which encoding gives them), instead of
                staying constant
    sphere=1    the loss (and the held-out error that picks the epoch) is taken after the
                decoded vector is put on the sphere the library's decoders put it on
                (`ResidualCatalyzer.output_norm`: data of constant norm)
Run: python bench/experiments/residual_regularized.py DATA OUT.safetensors [noise=S] [dropout=P] [wd=W] [mixup=P] [mask=P] [gauss=P] [anneal=1] [sphere=1] [epochs=E]
Then: python bench/experiments/residual_beam.py library OUT.safetensors DATA 1 8
"""
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.catalyzer import save_catalyzer  # noqa: E402


def neighbour_mix(x, train, share, generator, k=10, reach=0.5):
    """x float32 (b, d): a share of its rows moved to x + u·(n − x), n one of the row's k
    nearest rows of ``train`` (t, d) other than itself, u ~ U(0, reach)."""
    rows = torch.rand(x.shape[0], generator=generator) < share
    if not rows.any():
        return x
    picked = x[rows]
    distances = (train * train).sum(1)[None] - 2 * picked @ train.T
    nearest = distances.topk(k + 1, dim=1, largest=False).indices[:, 1:]
    which = torch.randint(0, k, (picked.shape[0], 1), generator=generator)
    neighbour = train[nearest.gather(1, which)[:, 0]]
    u = reach * torch.rand(picked.shape[0], 1, generator=generator)
    x = x.clone()
    x[rows] = picked + u * (neighbour - picked)
    return x


def gaussian_rows(x, share, generator, mean, factor, norm):
    """x float32 (b, d) with a share of its rows replaced by mean + factor · N(0, I) draws
    scaled to norm ``norm``."""
    rows = torch.rand(x.shape[0], generator=generator) < share
    if not rows.any():
        return x
    draws = torch.randn((int(rows.sum()), x.shape[1]), generator=generator) @ factor.T + mean
    x = x.clone()
    x[rows] = draws * (norm / draws.norm(dim=1, keepdim=True))
    return x


def main(data, out, noise=None, dropout=0.0, wd=None, mixup=0.0, mask=0.0, gauss=0.0,
         anneal=0.0, sphere=0.0, epochs=residual.DEFAULT_EPOCHS):
    torch.set_num_threads(2)
    ds = load_dataset(data)
    train_rows, _ = residual.held_out_rows(ds.learn.shape[0], 0)
    train_set = torch.from_numpy(ds.learn[train_rows])
    mix_rng = torch.Generator().manual_seed(1)
    centred = train_set.double() - train_set.double().mean(0)
    covariance = centred.T @ centred / (len(train_set) - 1)
    factor = torch.linalg.cholesky(covariance + 1e-9 * torch.eye(covariance.shape[0])).float()
    mean, norm = train_set.mean(0), float(train_set.norm(dim=1).mean())
    base_loss = residual.ResidualCatalyzer.training_loss
    base_init = residual.ResidualCatalyzer.__init__
    base_chain = residual.ResidualCatalyzer._chain
    base_lr = residual.one_cycle_lr
    progress = [0.0]  # of the planned steps, as the learning rate schedule last saw it

    def one_cycle_lr(peak, at):
        progress[0] = at
        return base_lr(peak, at)

    def chain_on_sphere(self, x):
        """The training pass with x̂_M moved onto the output sphere (preprocessed): the loss
        and the held-out error both read it."""
        xh, first = base_chain(self, x)
        return self.preprocess(self._on_sphere(self.unprocess(xh))), first

    def training_loss(self, x, aux, noise=0.0, generator=None):
        if anneal:
            noise = noise * max(0.0, 1.0 - progress[0])
        if mixup > 0:
            x = neighbour_mix(x, train_set, mixup, mix_rng)
        if gauss > 0:
            x = gaussian_rows(x, gauss, mix_rng, mean, factor, norm)
        if not mask:
            return base_loss(self, x, aux, noise, generator)
        target = self.preprocess(x)
        kept = torch.rand(target.shape, generator=generator) >= mask
        xs = target * kept / (1 - mask)
        if noise:
            xs = xs + noise * torch.randn(target.shape, generator=generator)
        xh, first = self._chain(xs)
        return (xh - target).pow(2).sum(1).mean() + aux * (first - target).pow(2).sum(1).mean()

    def init(self, *args, **kwargs):
        base_init(self, *args, **kwargs)
        if dropout > 0:
            for g in self.g:
                layers = list(g)
                g_new = []
                for layer in layers:
                    g_new.append(layer)
                    if isinstance(layer, nn.ReLU):
                        g_new.append(nn.Dropout(dropout))
                g._modules.clear()
                for i, layer in enumerate(g_new):
                    g.add_module(str(i), layer)

    residual.ResidualCatalyzer.training_loss = training_loss
    residual.one_cycle_lr = one_cycle_lr
    if sphere:
        residual.ResidualCatalyzer._chain = chain_on_sphere
    residual.ResidualCatalyzer.__init__ = init
    t0 = time.time()
    config = residual.ResidualConfig(epochs=epochs)  # the library's default, but for:
    if noise is not None:
        config = replace(config, noise=noise)
    if wd is not None:
        config = replace(config, weight_decay=wd)
    result = residual.train_residual(ds.learn, config, progress=False)
    model = result.model
    for g in model.g:  # drop the Dropout layers (identity in eval) so the file loads as usual
        kept = [layer for layer in g if not isinstance(layer, nn.Dropout)]
        g._modules.clear()
        for i, layer in enumerate(kept):
            g.add_module(str(i), layer)
    save_catalyzer(model, result.meta, out)
    train_x = ds.learn[train_rows[:10000]]
    train_mse = float(((model.decode(model.encode(train_x)) - train_x) ** 2).sum(1).mean())
    print(json.dumps({"tag": f"regularized noise={config.noise} dropout={dropout} wd={wd} mixup={mixup} "
                             f"mask={mask} gauss={gauss} anneal={anneal} "
                             f"sphere={sphere}",
                      "data": ds.name, "epochs": epochs, "train_s": round(time.time() - t0),
                      "val_mse": round(result.meta.training["val_mse"], 4),
                      "train_mse": round(train_mse, 4),
                      "val_recall": result.meta.training["val_recall"]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], **{k: int(v) if k == "epochs" else float(v)
                                      for k, v in (a.split("=") for a in sys.argv[3:])})
