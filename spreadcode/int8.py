"""Row-scaled int8 inference of an MLP: the arithmetic of greedy encoding and of the full
decoder on CPUs.

Greedy encoding is dense layers (BENCHMARKS.md, "Issue #14 levers": 85 % of its time in matrix
products under bfloat16). A CPU multiplies int8 matrices about twice as fast as bfloat16 ones
(AVX512-VNNI: 370 against 190 GMAC/s at 4,096 × 1,024 × 1,024 on 2 cores) and sums their
products exactly, so int8 codes are the same on every CPU. Each layer ``W x + b`` of an
eval-mode ``Linear / BatchNorm1d / ReLU`` stack (BatchNorms folded into the Linear before
them) runs as:

- weights: int8 per output channel, ``W ≈ diag(s_W) Q_W`` (symmetric, 127 levels);
- activations: one scale per row. The input rows (signed) take 127 levels; the rows after a
  ReLU (never negative) take 255, stored shifted by −128 in int8, and the layer that reads
  them adds ``128 · Σ_k Q_W[j, k]`` back to its sums;
- the int32 sums are scaled back, biased, passed through ReLU and quantized again per row
  by the compiled core (`spreadcode._codec`, ``csrc/int8.c``), a whole batch per call with
  the GIL released. On a CPU with AVX512-VNNI (``_codec.INT8_FUSED``) one call runs the
  whole MLP (`_codec.FusedInt8Mlp`): uint8 rows times the packed weights over row tiles that
  stay in cache, each layer's requantization as the tile's epilogue (greedy encoding 1.1×
  faster than through ``torch._int_mm``, BENCHMARKS.md lever 83); elsewhere, or where a
  layer's inputs are not a multiple of 4, each product is `int8_products`: ``torch._int_mm``
  on such a CPU, float32 products of whole integers on the others (AVX2 CPUs, where torch's
  int8 kernel runs ~40× slower than its float32 one), exact either way. Every route gives
  the same floats, bit for bit.

`spreadcode.residual.ResidualCatalyzer` runs its encoders f and decoders g this way
(precision "auto" on a CPU): greedy encoding 1.8-1.9×, beams ~1.45× and cold searches
~1.3× faster than in bfloat16, and g_0's table built 3.5× faster than in float32, with the
same error and recall (BENCHMARKS.md, "Issue #14 levers", 63-64 and 70).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from spreadcode import _codec
from spreadcode.errors import SpreadcodeError

# Activations after a ReLU are stored as uint8 − UNSIGNED_SHIFT in int8.
UNSIGNED_SHIFT = 128
# The widest layer output the compiled core requantizes (its row buffer lives on the stack).
MAX_WIDTH = _codec.INT8_MAX_WIDTH
# float32 holds every integer up to 2^24 exactly, so a float32 sum of at most this many
# products of int8 rows (|v| <= 128) and int8 weights (|w| <= 127) is the exact integer sum in
# any order of additions: 1,024 x 128 x 127 = 16,646,144 < 2^24 = 16,777,216.
EXACT_FLOAT32_TERMS = 1024


def available(device):
    """Whether ``device`` (a torch.device) runs Int8Mlp: a CPU whose torch multiplies int8
    matrices (``torch._int_mm`` on CPUs: torch 2.2 and later)."""
    return device.type == "cpu" and _cpu_int_mm()


@functools.cache
def _cpu_int_mm():
    """Whether this torch's ``_int_mm`` multiplies on the CPU (probed once per process)."""
    try:
        ones = torch.ones((1, 8), dtype=torch.int8)
        return int(torch._int_mm(ones, ones.t().contiguous())[0, 0]) == 8
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def fold_batch_norms(mlp):
    """The Linear layers of an eval-mode ``Linear / BatchNorm1d / ReLU`` Sequential, each
    BatchNorm1d folded into the Linear before it: [(weight float32 (m, k), bias float32 (m,))],
    one per Linear, the layers between them being ReLU."""
    layers = []
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            layers.append((layer.weight.detach().float().cpu(),
                           layer.bias.detach().float().cpu()))
        elif isinstance(layer, nn.BatchNorm1d):
            weight, bias = layers[-1]
            gain = (layer.weight / torch.sqrt(layer.running_var + layer.eps)).detach().float().cpu()
            shift = (layer.bias - layer.running_mean * gain).detach().float().cpu()
            layers[-1] = (weight * gain[:, None], bias * gain + shift)
        elif not isinstance(layer, nn.ReLU):
            raise SpreadcodeError(f"int8 inference takes Linear, BatchNorm1d and ReLU layers, "
                                  f"got {type(layer).__name__}")
    return layers


class Int8Mlp:
    """An eval-mode ``Linear / BatchNorm1d / ReLU`` Sequential (ReLU between Linears, none
    after the last) in row-scaled int8 arithmetic; called on a float32 CPU tensor (n, k), it
    returns float32 (n, m), a row's result independent of its batch, on torch's thread count.
    ``fused``: the `_codec.FusedInt8Mlp` that runs it, or None (the ``torch._int_mm`` route).
    SpreadcodeError for other layers or a hidden layer wider than MAX_WIDTH."""

    def __init__(self, mlp):
        self.layers = []
        folded = fold_batch_norms(mlp)
        if any(weight.shape[0] > MAX_WIDTH for weight, _ in folded[:-1]):
            raise SpreadcodeError(f"int8 inference takes hidden layers of at most {MAX_WIDTH} "
                                  "units")
        for i, (weight, bias) in enumerate(folded):
            scale = weight.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
            codes = torch.round(weight / scale[:, None]).to(torch.int8)
            shift = 0 if i == 0 else UNSIGNED_SHIFT  # after a ReLU, rows are uint8 − 128
            offset = (shift * codes.to(torch.int32).sum(1, dtype=torch.int32)).numpy()
            self.layers.append((codes.t().contiguous(), scale.numpy(), offset,
                                bias.contiguous().numpy()))
        self.fused = self._fused_mlp()

    def _fused_mlp(self):
        """The `_codec.FusedInt8Mlp` of the layers where this CPU runs it, else None."""
        if not _codec.INT8_FUSED or not all(codes.shape[0] % 4 == 0
                                            and codes.shape[0] <= MAX_WIDTH
                                            for codes, *_ in self.layers):
            return None
        # the fused kernel reads every layer's rows as uint8 (the first layer's signed rows
        # + 128), so each layer's offset loses 128 × its weight column sums
        return _codec.FusedInt8Mlp([
            (codes.numpy(), scale,
             offset - UNSIGNED_SHIFT * codes.to(torch.int32).sum(0, dtype=torch.int32).numpy(),
             bias) for codes, scale, offset, bias in self.layers])

    def __getstate__(self):
        """Pickles and copies without the compiled kernel's state, which `__setstate__`
        rebuilds for the CPU that loads them."""
        return {**self.__dict__, "fused": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.fused = self._fused_mlp()

    def __call__(self, x, second=None, difference=False):
        """The MLP of the rows of x float32 (n, k), or, with ``second`` (n, k2), of the rows
        [x, second] or [x − second, second] (``difference``), quantized without building
        the concatenation: float32 tensor (n, m)."""
        x = _numpy_rows(x)
        second = None if second is None else _numpy_rows(second)
        width = x.shape[1] + (0 if second is None else second.shape[1])
        rows = np.empty((x.shape[0], width), dtype=np.int8)
        row_scale = np.empty(x.shape[0], dtype=np.float32)
        threads = torch.get_num_threads()
        _codec.quantize_rows(x, rows, row_scale, threads, second, difference,
                             plus_128=self.fused is not None)
        if self.fused is None:
            return self._run_layers(rows, row_scale, threads)
        out = np.empty((rows.shape[0], self.fused.m), dtype=np.float32)
        self.fused(rows.view(np.uint8), row_scale, out, threads)
        return torch.from_numpy(out)

    def _run_layers(self, rows, row_scale, threads):
        """The MLP on its input rows int8 (n, k) with one scale per row, float32 (n,),
        layer by layer through `int8_products` (where the fused kernel does not run):
        float32 tensor (n, m)."""
        last = len(self.layers) - 1
        for i in range(len(self.layers)):
            codes, col_scale, offset, bias = self.layers[i]
            sums = int8_products(rows, codes, native=_codec.INT8_FUSED)
            if i == last:
                out = np.empty(sums.shape, dtype=np.float32)
                _codec.dequantize(sums, row_scale, col_scale, offset, bias, out, threads)
                return torch.from_numpy(out)
            rows = np.empty(sums.shape, dtype=np.int8)
            next_scale = np.empty(sums.shape[0], dtype=np.float32)
            _codec.requantize_relu(sums, row_scale, col_scale, offset, bias, rows, next_scale,
                                   threads)
            row_scale = next_scale


def int8_products(rows, codes, native):
    """The exact int32 sums of int8 rows (n, k) numpy times int8 codes (k, m) tensor: int32
    numpy (n, m). ``native`` (a CPU with int8 dot products, AVX512-VNNI): one
    ``torch._int_mm``; else float32 products of at most EXACT_FLOAT32_TERMS terms, each an
    exact integer under torch's IEEE float32 matmul (its default), summed in int32 (on an
    AVX2 CPU ``torch._int_mm`` falls back to a kernel ~40x slower than float32's: 0.4
    against 15 GMAC/s at 4,096 x 1,024 x 1,024 on one core). Both routes give the same
    sums, bit for bit."""
    if native:
        return torch._int_mm(torch.from_numpy(rows), codes).numpy()
    rows = torch.from_numpy(rows)
    sums = None
    for start in range(0, rows.shape[1], EXACT_FLOAT32_TERMS):
        stop = start + EXACT_FLOAT32_TERMS
        part = (rows[:, start:stop].float() @ codes[start:stop].float()).to(torch.int32)
        sums = part if sums is None else sums.add_(part)
    return sums.numpy()


def _numpy_rows(x):
    """A float32 tensor's rows as a C-contiguous numpy array (no copy when already one)."""
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


def run_on_concat(mlp, x, second, difference=False):
    """``mlp`` (a torch module or an Int8Mlp) of the rows [x, second], or [x − second,
    second] when ``difference``, for tensors x (n, k) and second (n, k2): (n, m). An Int8Mlp
    quantizes the rows without building them (one pass over x and second)."""
    if isinstance(mlp, Int8Mlp):
        return mlp(x, second, difference)
    return mlp(torch.cat([x - second if difference else x, second], 1))
