"""Issue #14 scratch experiment (lever 62): a narrow decoder chain h for encoding only, trained
with the model, while the wide chain g decodes.

Greedy encoding runs f_0..f_{M−1} and the decoders g_1..g_{M−2}, whose running reconstruction
x̂ the next encoder reads; g_1, g_2 are two thirds of its multiply-adds. Lever 59 narrowed
g_1, g_2 themselves (encoding 2.1× faster) and lost ~1 R@1 on pypi: they decode too. Here the
encoders read the running reconstruction ĥ of a second, narrow chain instead::

    ĥ_1 = x̂_1 = g_0(z_0)                      (the table)
    ĥ_{m+1} = ĥ_m + h_m([z_m, ĥ_m])             m = 1..M−2, hidden ``hidden_h``
    y_m = normalize(f_m([x − ĥ_m, ĥ_m]))

and g keeps its width and decodes (x̂_M as before). h trains with everything else: the main
loss reaches it through the encoders' inputs, plus ``distill`` × Σ_m ‖ĥ_{m+1} − x̂_{m+1}‖²
(x̂ detached), so ĥ follows the chain it stands in for. Lever 7 ("small-cond", hidden 128,
an earlier recipe) lost 0.8 R@1 on wordnet; lever 35 distilled h after training and lost 1.1.

Run:  python bench/experiments/encoding_chain.py DATA OUT [hidden_h=384] [distill=1.0]
      [FIELD=VALUE ...]   (ResidualConfig overrides as in residual_variants.py)
One JSON row (appended to results-issue14.jsonl). Greedy encoding only; the model lives in this
process (OUT: the training history as JSON).
"""
import json
import os
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset  # noqa: E402
from residual_variants import parse_overrides, result_row, variant_config  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.losses import straight_through  # noqa: E402


def encoding_chain_model(hidden_h, distill):
    """A ResidualCatalyzer subclass whose encoders read a narrow chain h of width hidden_h."""

    class EncodingChainCatalyzer(residual.ResidualCatalyzer):
        def __init__(self, d_in, quantizer, *args, **kwargs):
            super().__init__(d_in, quantizer, *args, **kwargs)
            dims = [block.d for block in quantizer.blocks]
            self.h = nn.ModuleList([residual._mlp(d + self.d_in, hidden_h, self.d_in)
                                    for d in dims[1:-1]])
            self._distill = 0.0

        def _chain(self, xs):
            blocks = self.quantizer.blocks
            xh = eh = first = None
            self._distill = 0.0
            for m, block in enumerate(blocks):
                y = nn.functional.normalize(self._encode_stage(m, xs, eh), dim=1)
                z = straight_through(y, block)
                decoded = self._decode_stage(m, z, xh)
                if m == 0:
                    eh = first = decoded
                elif m + 1 < len(blocks):
                    eh = eh + self.h[m - 1](torch.cat([z, eh], 1))
                    self._distill = self._distill + (eh - decoded.detach()).pow(2).sum(1).mean()
                xh = decoded
            return xh, first

        def training_loss(self, x, aux, noise=0.0, generator=None):
            loss = super().training_loss(x, aux, noise, generator)
            return loss + distill * self._distill

        def _encode_batch(self, x, f, g):  # its own chain: the model's f, its h
            xs, eh, ranks = self.preprocess(x), None, []
            blocks = self.quantizer.blocks
            for m, block in enumerate(blocks):
                y = nn.functional.normalize(self._encode_stage(m, xs, eh).float(),
                                            dim=1)
                ranks.append(block.quantize(y.cpu().numpy()))
                if m + 1 < len(blocks):
                    z = torch.from_numpy(block.reconstruct(ranks[-1])).to(x.device)
                    if m == 0:
                        eh = self._decode_stage(0, z, None, ranks[-1]).float()
                    else:
                        eh = (eh + self.h[m - 1](torch.cat([z, eh], 1))).float()
            return self.quantizer.join_block_codes(ranks)

        def _encode_beam_batch(self, x, beam, f, g):
            raise NotImplementedError("greedy encoding only in this experiment")

    return EncodingChainCatalyzer


def encode_rate(model, vectors, rounds=3):
    """Best of ``rounds`` greedy encodings of vectors: vectors per second."""
    model.encode(vectors[:4096])
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        model.encode(vectors)
        best = max(best, len(vectors) / (time.perf_counter() - start))
    return best


def main():
    data, out = load_dataset(sys.argv[1]), sys.argv[2]
    overrides = parse_overrides(sys.argv[3:])
    hidden_h = int(overrides.pop("hidden_h", 384))
    distill = float(overrides.pop("distill", 1.0))
    config = variant_config(overrides)
    residual.ResidualCatalyzer, base_class = encoding_chain_model(hidden_h, distill), \
        residual.ResidualCatalyzer
    try:
        start = time.time()
        trained = residual.train_residual(data.learn, config, progress=False)
        train_s = time.time() - start
    finally:
        residual.ResidualCatalyzer = base_class
    with open(out, "w") as fh:
        json.dump(trained.history, fh)
    row = result_row("encoding_chain", data,
                     {**overrides, "hidden_h": hidden_h, "distill": distill}, trained, train_s)
    append_row({**row, "encode_vec_s": round(encode_rate(trained.model, data.base[:30000]))})


if __name__ == "__main__":
    main()
