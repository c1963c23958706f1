"""Issue #14 scratch measurement: encoding with int8 weights and activations.

Greedy encoding spends its time in dense layers: the encoders f_0..f_{M−1} and the decoders
g_1..g_{M−2} that feed the next stage (g_0 is a table). On this machine (AVX2, no bf16 or VNNI
instructions) fp32 GEMM runs near peak, so the remaining lever without retraining is the
arithmetic: PyTorch's dynamic int8 quantization of nn.Linear (x86/fbgemm kernels, weights
quantized per tensor, activations per batch), after folding each BatchNorm into the Linear
before it. Only the encoding chain is quantized; the codes are
decoded by the model's fp32 decoders as always, so a code chosen under int8 is still an exact
code of the same model.

Run:  python bench/experiments/int8_encoding.py MODEL DATA
MODEL: a residual model file (one trained before lever 30 gets the learn set's norm). Prints,
for fp32 and int8: greedy encode seconds of the base (best of 3), share of codes equal to
fp32's, base MSE, R@1/10/100 of `Index.search(query, 100)` (BENCHMARKS.md, lever 32).
"""
import copy
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402
from spreadcode import int8  # noqa: E402


def fold_batch_norms(mlp):
    """An eval-mode Linear/ReLU Sequential equal to an eval-mode Linear/BatchNorm1d/ReLU one,
    each BatchNorm folded into the Linear before it (`spreadcode.int8.fold_batch_norms`)."""
    out = []
    for i, (weight, bias) in enumerate(int8.fold_batch_norms(mlp)):
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        out += [nn.ReLU(), linear] if i else [linear]
    return nn.Sequential(*out).eval()


def int8_encoder(model):
    """A copy of ``model`` whose f and g MLPs run with int8 dynamic quantization."""
    twin = copy.deepcopy(model).eval()
    for mlps in (twin.f, twin.g):
        for m in range(len(mlps)):
            mlps[m] = torch.ao.quantization.quantize_dynamic(
                fold_batch_norms(mlps[m]), {nn.Linear}, dtype=torch.qint8)
    return twin


def main(model_path, data_path):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    reference = None
    for name, encoder in (("fp32", model), ("int8", int8_encoder(model))):
        encoder.encode(data.base[:20000])  # warm up, and build g_0's table
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            codes = encoder.encode(data.base)
            seconds.append(time.perf_counter() - start)
        reference = codes if reference is None else reference
        print(json.dumps({"encoder": name, "encode s": round(min(seconds), 2),
                          "vectors/s": round(len(codes) / min(seconds)),
                          "codes equal to fp32 %": round(100 * float(
                              (codes == reference).all(1).mean()), 1),
                          **measure_codes(model, meta, data, codes)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
