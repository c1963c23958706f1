"""Fine-tuning a catalyzer with a decoder (Amara et al. 2021): catalyzer, fixed quantizer and an
MLP decoder trained together as an auto-encoder on the reconstruction error, so that the codes
keep what a decoder needs as well as neighbourhoods."""
import copy
import hashlib
from dataclasses import replace

import numpy as np
import torch

from spreadcode.catalyzer import catalyze
from spreadcode.decoders import MLP_BATCH, MLP_HIDDEN, fit_decoder, split_learn, squared_error
from spreadcode.errors import SpreadcodeError
from spreadcode.losses import straight_through
from spreadcode.torchutil import BestEpoch, adam, epoch_progress, pick_device

# fine_tune_catalyzer: joint passes, decoder warm-up epochs, Adam learning rates (the catalyzer
# moves ten times slower than the decoder it is paired with). On wordnet-minilm96 (64-bit
# lattice) the held-out error still fell after 10 epochs and bottomed out at epoch 21 of 30
# (~9 s per epoch on 2 cores); the best epoch is kept, so extra epochs cost only time.
FINE_TUNE_EPOCHS = 30
FINE_TUNE_DECODER_EPOCHS = 8
FINE_TUNE_CATALYZER_LR = 1e-4
FINE_TUNE_DECODER_LR = 3e-4


def fine_tune_catalyzer(learn, catalyzer, catalyzer_meta, *, epochs=FINE_TUNE_EPOCHS,
                        hidden=MLP_HIDDEN, decoder_epochs=FINE_TUNE_DECODER_EPOCHS, seed=0,
                        progress=False):
    """Fine-tune a trained catalyzer so that its codes also reconstruct the input well.

    The catalyzer f, its fixed quantizer q and an MLP decoder g form an auto-encoder. g is
    first fitted to f's codes (`fit_decoder`, ``decoder_epochs``), then f and g are trained
    together for ``epochs`` passes of Adam on the squared error ‖g(q(f(x))) − x‖², q being the
    quantizer's reconstruction forward and the identity backward (`straight_through`, paper
    §4.2). The triplet + KoLeo training makes codes that keep neighbourhoods; this step makes
    them keep what a decoder needs as well, which lifts both the compressed-domain search and
    decoder re-ranking. HELD_OUT_FRACTION of learn (seeded) is held out: after every epoch the
    held-out error of g(q(f(x))) is measured, and the catalyzer of the best epoch is kept
    (epoch 0 = the catalyzer given), so the result is never worse on held-out data.

    learn: real array (n, d_in); catalyzer, catalyzer_meta (CatalyzerMeta): as from
    `load_catalyzer`. The codes change, so files must be re-encoded with the new catalyzer and
    a decoder trained for it (`train_decoder`); g itself is discarded. Returns (catalyzer in
    eval mode on the CPU, its CatalyzerMeta for `save_catalyzer` (training record plus
    "fine_tuned"), held-out squared error per epoch: list of epochs + 1 floats).
    """
    from .residual import refuse_residual

    refuse_residual(catalyzer, "fine-tuning")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise SpreadcodeError(f"epochs must be a positive integer, got {epochs}")
    quantizer = catalyzer_meta.quantizer.quantizer()
    model = copy.deepcopy(catalyzer).cpu()
    targets = np.ascontiguousarray(learn, dtype=np.float32)
    train_rows, val_rows = split_learn(targets.shape[0], quantizer, seed)
    codes = quantizer.quantize(catalyze(model, targets[train_rows]))
    net, _ = fit_decoder(quantizer.reconstruct(codes), targets[train_rows], hidden=hidden,
                         epochs=decoder_epochs, seed=seed)

    def held_out_error():
        codes = quantizer.quantize(catalyze(model, targets[val_rows]))
        return squared_error(net.predict(quantizer.reconstruct(codes)), targets[val_rows])

    curve = [held_out_error()]
    best = BestEpoch(model)
    best.offer(0, -curve[0])
    device = pick_device()
    model.to(device)
    net.to(device)
    x = torch.from_numpy(targets[train_rows]).to(device)
    batch = min(MLP_BATCH, x.shape[0])
    optimizer = adam([{"params": model.parameters(), "lr": FINE_TUNE_CATALYZER_LR},
                      {"params": net.parameters()}], FINE_TUNE_DECODER_LR)
    rng = np.random.default_rng(seed)
    with epoch_progress(epochs, "fine-tune", progress) as bar:
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(x.shape[0])).to(device)
            model.train()
            net.train()
            for step in range(x.shape[0] // batch):
                rows = order[step * batch:(step + 1) * batch]
                decoded = net(straight_through(model(x[rows]), quantizer))
                loss = (decoded - x[rows]).pow(2).sum(dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            curve.append(held_out_error())
            best.offer(len(curve) - 1, -curve[-1])
            if bar is not None:
                bar.set_postfix_str(f"held-out squared error {curve[-1]:.4f} (start {curve[0]:.4f})",
                                    refresh=False)
                bar.update(1)
    best.restore()
    model.cpu().eval()
    fine_tuned = {
        "from": catalyzer_meta.sha256, "epochs": epochs, "best_epoch": int(np.argmin(curve)),
        "decoder_epochs": decoder_epochs, "hidden": hidden, "batch_size": batch,
        "catalyzer_lr": FINE_TUNE_CATALYZER_LR, "decoder_lr": FINE_TUNE_DECODER_LR, "seed": seed,
        "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "val_mse_curve": curve,
        "data_sha256": hashlib.sha256(targets.tobytes()).hexdigest(),
    }
    meta = replace(catalyzer_meta, training={**catalyzer_meta.training, "fine_tuned": fine_tuned},
                   sha256=None, path=None)
    return model, meta, curve
