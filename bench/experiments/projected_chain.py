"""Issue #14 lever 92: on wide inputs, the encoding chain runs in a learned k-d projection.

On raw 384-d text the default encodes at ~7× LSQ's rate (96-d inputs: ~10.7×): its encoders
read [x − x̂, x̂] (768 inputs) and its chain decoders read x̂ (384) and output 384 (lever 89).
Lever 89's cheaper chains read fixed principal axes and cost ≈ 1-1.4 R@1. Here a linear map
P (k × d_in, no bias) is learned with the model, initialised to the learn set's k leading
principal axes: every encoder reads P x and P x̂ (f_0: P x; f_m: [P x − P x̂, P x̂]) and every
decoder g_m reads [z_m, P x̂_{m−1}], still adding a d_in-wide increment to x̂. Greedy encoding
then needs only P x̂, i.e. each chain decoder's output layer multiplied by P: the chain of a
k-d model (k = 96: the 96-d cost), plus P x once. The state x̂_{m−1} is a function of the
12·m coordinates of the earlier points, so a learned k-d summary of it can lose little; the
encoders' view of the residual is what the projection may cost. The data is rotated onto the
learn set's principal axes first (orthonormal: distances and ground truth unchanged), so the
initial P is the first k rows of the identity.

Two variants (environment variables, like PROJ): PER_STAGE=1 gives each stage m its own
projection P_m (f_m reads P_m x and P_m x̂, g_m reads P_m x̂): encoding would then carry
P_m x̂ for every later stage, ~k more outputs per chain decoder and stage; LAST_FULL=1 lets
the last decoder, which greedy encoding never runs, read x̂ in full.

    python bench/experiments/projected_chain.py DATA OUT [FIELD=VALUE ...]    (PROJ=k, 96)
    PROJ=k python bench/experiments/projected_chain.py --eval DATA MODEL...

Training saves the model to OUT (it loads only with this class, under the same PROJ,
PER_STAGE and LAST_FULL) and appends one row (residual_variants' columns, plus proj,
per_stage, last_full). --eval: the default search's recall of saved models on DATA (rotated
the same way) by eval_models.evaluate, one JSON line each.
"""
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import load_dataset  # noqa: E402
from encoder_axes import rotated  # noqa: E402
from eval_models import evaluate  # noqa: E402
from residual_variants import parse_overrides, save_and_append, train_variant  # noqa: E402
from spreadcode import int8, residual  # noqa: E402

PROJ = int(os.environ.get("PROJ", 96))
PER_STAGE = os.environ.get("PER_STAGE") == "1"
LAST_FULL = os.environ.get("LAST_FULL") == "1"


class ProjectedChain(residual.ResidualCatalyzer):
    """The default model whose encoders and decoders read x and x̂ through ``proj`` (a
    Linear d_in -> PROJ without bias, or one per stage under PER_STAGE), initialised to the
    first PROJ coordinates."""

    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        dims = [block.d for block in quantizer.blocks]
        projections = [nn.Linear(self.d_in, PROJ, bias=False)
                       for _ in dims[:len(dims) if PER_STAGE else 1]]
        with torch.no_grad():
            for proj in projections:
                proj.weight.copy_(torch.eye(PROJ, self.d_in))
        self.proj = nn.ModuleList(projections) if PER_STAGE else projections[0]
        self.f = nn.ModuleList([residual._mlp(PROJ * (2 if m else 1), self.hidden, d)
                                for m, d in enumerate(dims)])
        self.g = nn.ModuleList([residual._mlp(d + (0 if m == 0 else self._state_width(m)),
                                              self._decoder_width(m), self.d_in)
                                for m, d in enumerate(dims)])

    def _state_width(self, m):
        """How many inputs of x̂ g_m reads: all of them for the last stage under LAST_FULL
        (greedy encoding never runs it), else PROJ."""
        return self.d_in if LAST_FULL and m + 1 == len(self.quantizer.blocks) else PROJ

    def _proj(self, m):
        return self.proj[m] if PER_STAGE else self.proj

    def _encode_stage(self, m, xs, xh, f=None):
        f = self.f if f is None else f
        px = self._proj(m)(xs)
        return f[0](px) if m == 0 else int8.run_on_concat(f[m], px, self._proj(m)(xh),
                                                          difference=True)

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        if m == 0:
            return super()._decode_stage(m, z, xh, ranks, g)
        g = self.g if g is None else g
        state = xh if self._state_width(m) == self.d_in else self._proj(m)(xh)
        return xh + int8.run_on_concat(g[m], z, state)

    def _fused_greedy(self, f, g):
        return None


def main():
    if sys.argv[1] == "--eval":
        residual.ResidualCatalyzer = ProjectedChain  # what the loader builds
        return evaluate(rotated(load_dataset(sys.argv[2])), sys.argv[3:], proj=PROJ,
                        per_stage=PER_STAGE, last_full=LAST_FULL)
    data, out = rotated(load_dataset(sys.argv[1])), sys.argv[2]
    trained, row = train_variant("projected_chain", data, parse_overrides(sys.argv[3:]),
                                 ProjectedChain)
    row.update(lever=92, proj=PROJ, per_stage=PER_STAGE, last_full=LAST_FULL)
    save_and_append(trained, row, out)


if __name__ == "__main__":
    main()
