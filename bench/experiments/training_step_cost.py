"""Issue #14 lever 98: where a residual training step's time goes on this CPU.

The library's default model (`spreadcode train`'s 64-bit config), loss (noise, crowding
against a bank) and fused AdamW on batches of DATA's learn set, timed after a warm-up: the
step at each batch size as seconds per epoch of the learn set, the same step on one thread,
then the share of each operator in a profile and the rate of the matrix products.

    python bench/experiments/training_step_cost.py DATA [BATCH ...]

Prints a JSON object; run it alone on the machine.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.profiler import profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import load_dataset  # noqa: E402
from spreadcode import residual, torchutil  # noqa: E402
from spreadcode.training import command_config  # noqa: E402

WARM_UP = 3
TIMED_ROWS = 12_288


def default_model(learn):
    """The default 64-bit residual model of ``learn`` float32 (n, d), preprocessing fitted,
    in training mode, with the library's optimizer."""
    config = command_config(64)
    torch.manual_seed(0)
    model = residual.ResidualCatalyzer(
        learn.shape[1], config.quantizer_spec().quantizer(), config.hidden,
        config.hidden_decoder, config.hidden_shortlist, residual.learn_output_norm(learn),
        config.hidden_chain, None,
        config.chain_dim if learn.shape[1] > config.chain_dim else None)
    x = torch.from_numpy(learn)
    model.fit_preprocessing(x)
    model.train()
    return model, config, torchutil.adam(model.parameters(), config.lr, config.weight_decay)


def multiply_adds_per_row(model):
    """Multiply-adds of one training row's forward pass through the encoders f_m and the
    decoders g_m (the projection of wide inputs, when there is one, not counted)."""
    return sum(layer.in_features * layer.out_features for mlp in [*model.f, *model.g]
               for layer in mlp if isinstance(layer, nn.Linear))


def main():
    data = load_dataset(sys.argv[1])
    batches = [int(b) for b in sys.argv[2:]] or [256, 512, 1024]
    learn = data.learn
    model, config, optimizer = default_model(learn)
    x = torch.from_numpy(learn)
    bank = nn.functional.normalize(x[:residual.CROWDING_BANK], dim=1)
    generator = torch.Generator().manual_seed(0)

    def step(i, rows):
        start = (i * rows) % (len(x) - rows)
        loss = model.training_loss(x[start:start + rows], config.aux, config.noise, generator,
                                   bank=bank, crowding=config.crowding)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def seconds_per_step(rows):
        for i in range(WARM_UP):
            step(i, rows)
        count = max(TIMED_ROWS // rows, 4)
        start = time.perf_counter()
        for i in range(count):
            step(i, rows)
        return (time.perf_counter() - start) / count

    result = {"data": data.name, "threads": torch.get_num_threads(), "batches": {}}
    for rows in batches:
        per_step = seconds_per_step(rows)
        result["batches"][rows] = {"ms_per_step": round(per_step * 1e3, 1),
                                   "s_per_epoch": round(per_step * len(x) / rows, 1)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result["one_thread_ms_per_step"] = round(seconds_per_step(batches[0]) * 1e3, 1)
    torch.set_num_threads(threads)
    with profile() as prof:
        for i in range(10):
            step(i, batches[0])
    totals = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    everything = sum(totals.values())
    products = totals.get("aten::mm", 0) + totals.get("aten::addmm", 0)
    macs = 3 * multiply_adds_per_row(model) * batches[0] * 10
    result.update(
        forward_multiply_adds_per_row=multiply_adds_per_row(model),
        share={key: round(value / everything, 3) for key, value in
               sorted(totals.items(), key=lambda kv: -kv[1])[:8]},
        product_gmac_per_s=round(macs / (products / 1e6) / 1e9, 1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
