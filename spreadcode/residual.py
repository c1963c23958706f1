"""Residual lattice models: a catalyzer and a decoder trained together, stage by stage.

A residual model codes a vector in M stages, each on its own spherical lattice S(d_m, r_m²)
(the blocks of a product code, `spreadcode.quantizer.ProductQuantizer`). Stage m sees what
the stages before it left unexplained::

    x̂_0 = 0
    y_m  = normalize(f_m([x − x̂_{m−1}, x̂_{m−1}]))     (f_0 sees x alone)
    z_m  = nearest point of S(d_m, r_m²) to r_m·y_m, divided by r_m      → code of stage m
    x̂_m = x̂_{m−1} + g_m([z_m, x̂_{m−1}])               (g_0 sees z_0 alone)

f_m and g_m are small MLPs; x is first centred and scaled like the catalyzer's input
(`spreadcode.catalyzer.Catalyzer.fit_preprocessing`). Inputs wider than CHAIN_DIM are read
by every f_m and g_m through one learned projection P (x and x̂ as P x, P x̂), so that
greedy encoding, which only needs what the next stage reads, carries P x̂ and not x̂. All
stages train together as an auto-encoder on ‖x̂_M − x‖² (+ ``aux`` × ‖x̂_1 − x‖², 0 by
default, which kept the first stage a useful coarse code when search used it), with
straight-through gradients through the lattices (paper §4.2) — the decoder perspective of
Amara et al. (2021) taken to training time: the code is learnt for the decoder that will
read it. On data of one norm a crowding term (CROWDING_WEIGHT) keeps the decoded vectors,
conditional means, from sitting in denser regions than their own vectors, where they would
be false nearest neighbours. Encoding needs the decoders of stages 0..M−2 (x̂ feeds the next
stage), so the model file holds both; a .spc file still needs only its header to turn a code
into lattice points, and names the model by its hash.

Encoding picks z_m greedily (the nearest point) unless asked for a beam: then each of the last
stages (`beam_first_branch`) keeps the ``beam`` partial codes of least error ‖x − x̂_m‖² (the
last stage's x̂ as decoded, on the data's sphere where it has one), each extended by the
stage's two nearest points (`ResidualCatalyzer.encode`). The decoder is the same, so any code
decodes the same way; only the choice of codes improves (the encoder f is an amortised guess).

Search (`spreadcode.search`): a shortlist by squared L2 between the raw query and the codes
decoded by the *shortlist decoder* ``shortlist`` (a `spreadcode.decoders.DecoderNet` of the
M unit lattice points: affine map plus a small MLP, distilled after training to reproduce the
full decoder: ~1/30 of its cost, so every code can be decoded), re-ranked by the full
decoder x̂_M. Models written before it have ``linear`` instead (an affine map of the unit
points fitted by least squares), which ranks worse and needs a shortlist of 1,000
(`spreadcode.search.residual_rerank`).
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from spreadcode import _codec, int8, lattice, losses
from spreadcode.catalyzer import (
    CatalyzerMeta, Preprocessed, forward_batches, model_device)
from spreadcode.errors import SpreadcodeError
from spreadcode.losses import straight_through
from spreadcode.quantizer import QuantizerSpec
from spreadcode.torchutil import (
    BestEpoch, adam, bfloat16_native, epoch_progress, mixed_precision, plan_epochs)

# bits -> stages: 16-bit S(12, 6) blocks (64,416 points, 15.98 bits; 1 + 12·?·... atoms, an
# exact nearest point in microseconds), plus one 8-bit S(6, 4) block (252 points) for a
# remainder of 8 bits. 4 × S(12, 6) beat 2 × S(24, 10) at 64 bits (MSE 0.310 vs 0.325 on
# wordnet-minilm96: BENCHMARKS.md, "Issue #14 levers").
STAGE_BLOCK = (12, 6)
HALF_STAGE_BLOCK = (6, 4)
# Encoders of hidden 512 with no first-stage loss term (`ResidualConfig.aux` 0): pypi-minilm96
# 35.1 / 79.8 / 97.6 greedy, 38.9 / 83.5 / 98.1 with `--beam 8`, against 256 with aux 0.5's
# 32.5-33.2 / 77.0-77.5 / 96.5-96.7 (BENCHMARKS.md, "Issue #14 levers", rows 21, 26, 28).
# The decoders g_1..g_{M−2} that greedy encoding runs keep the others' width by default
# (`ResidualConfig.hidden_chain` None): encoders 384 with a chain of 512 encode 2.1× faster
# (≈ 13× LSQ's rate) at + 1.4-1.9 % held-out error, recall level on wordnet (44.2 / 87.5)
# but − 1.1 / − 0.9 on pypi, the same with encoders 512 (lever 59): not the default.
ENCODER_HIDDEN = 512
DECODER_HIDDEN = 1024
# The shortlist decoder: hidden width and distillation epochs. Hidden 256 decodes 60k codes in
# 0.15 s (the full decoder: 4.4 s), and its top 200 re-ranked by the full decoder give the
# recall of the linear decoder's top 1,000 (BENCHMARKS.md, "Issue #14 levers", row 12).
SHORTLIST_HIDDEN = 256
SHORTLIST_EPOCHS = 20
# ...but whole epochs of at least and at most this many batches in all: more epochs for small
# learn sets, fewer for large ones (120k vectors: 9,360 batches, 46 s on 2 cores).
SHORTLIST_STEPS = (3000, 10000)
# Codes per batch of `ResidualCatalyzer.decode_shortlist`: its int8 products ran at 36-282
# GMAC/s on batches of 65,536 rows (the int32 sums of one product, up to 64 MB, out of cache)
# and at 337-416 on 8,192: a million codes decoded in 0.90 s instead of 1.56.
SHORTLIST_DECODE_BATCH = 8192
# Epochs (within `spreadcode train`'s 14-minute budget) and denoising noise (below): together,
# 50 epochs with noise lower wordnet-minilm96's held-out error 3 % on two seeds (0.2822 →
# 0.2734, 0.2869 → 0.2782) and raw 384-d text's 1.7 %; either alone moves it ≤ 1 %. Recall
# follows less: wordnet R@10 + 0.4 and R@1 inside the spread over three runs, raw-384 + 0.5 /
# + 0.6; pypi's 120k vectors fit 19-23 epochs in the budget (error + 1 %), R@1 / R@10 + 0.5 /
# + 0.2 over two runs (BENCHMARKS.md, "Issue #14 levers", levers 42 and 50; Quality runs).
DEFAULT_EPOCHS = 50
# ...and at most this many training vectors in all (epochs × training rows), so that a larger
# learn set runs fewer epochs: pypi-minilm96's 118,000 training rows for 50 epochs (5.9 M)
# ended at 1.9 % more held-out error and − 2.1 / − 2.0 R@1 / R@10 than 23 epochs (2.7 M),
# where 35 (4.1 M) gave 1 % less error and the same recall (BENCHMARKS.md, "Issue #14
# levers", lever 61); wordnet-minilm96's 50 epochs are 2.5 M. On 2 cores the 14-minute
# budget stopped pypi first (19-31 epochs); with the budget grown for such a set (BUDGET_ROWS)
# the cap stops it on a fast CPU, and without the cap a faster machine (a GPU) would run all
# 50 epochs on it and lose. `spreadcode train`'s default; ``--epochs`` lifts it.
TRAINING_VECTORS = 4_000_000
# `spreadcode train`'s 14-minute budget is for learn sets of up to this many training rows;
# a larger one gets proportionally more time (`time_budget`, `ResidualConfig.budget_rows`),
# as many epochs as a set of this size would run, still at most TRAINING_VECTORS vectors in
# all. On a CPU of 2 cores that fits the default's epochs (AVX512-VNNI, bfloat16) pypi's
# 118,000 rows reach that cap, 33 epochs instead of 21-24 (lever 61 measured 35: recall
# level, 1 % less held-out error); on one that does not (AVX2 only, float32) 14 minutes ran
# 9 epochs at 64 bits and 3 at 128, where RQ15x8 led by 0.6 R@1, and 27.5 minutes run 15
# and 8: 36.8 / 83.0 / 98.5 against 35.9 / 82.5 / 98.5, and 59.2 / 97.2 / 100.0 against 52.4
# / 94.8 / 100.0 (BENCHMARKS.md, "Issue #14 levers", lever 99).
BUDGET_ROWS = 60_000
# AdamW's decoupled weight decay of the weight matrices (`ResidualConfig.weight_decay`): the
# model over-fits its ~50k learn vectors. On wordnet-minilm96's held-out split, decay 0 / 0.1
# / 0.5 / 1 / 2 gave MSE 0.2985 / 0.2956 / 0.2885 / 0.2845 / 0.2833 and recall 41.7 / 85.2
# / 98.8 at 0 against 42.3-42.8 / 85.7-86.5 / 98.9-99.2 with decay; 1 and 2 are within
# the seed spread, 1 is the milder (BENCHMARKS.md, "Issue #14 levers", lever 41).
WEIGHT_DECAY = 1.0
# Denoising (`ResidualConfig.noise`): the encoders read each training vector plus Gaussian
# noise of this many RMS coordinates, the loss compares with the clean vector. The model
# over-fits its learn set (wordnet: training rows' error 17-23 % below held-out rows'); noise
# makes each epoch show the decoders codes they have not seen, so longer training pays.
TRAINING_NOISE = 0.2
# Crowding (`ResidualConfig.crowding`): the MSE-optimal decoder returns each code's mean
# vector, pulled towards the denser part of the code's cell, so decoded vectors sit where the
# data is denser than where their own vectors lie (wordnet-minilm96: mean cosine 0.605 to the
# 10 nearest learn vectors against 0.567) and come nearer more queries than their vectors do:
# impostors at R@1. Re-ranking with each vector's true excess would gain 2 R@1, but no
# function of the code predicts it. Where the decoders put their output on a sphere, training
# adds this weight × the batch's mean excess r(x̂) − r(x), r the mean cosine to the
# CROWDING_NEIGHBOURS nearest of CROWDING_BANK other training rows, in the units of the
# squared error (× the sphere's squared radius): wordnet's four seeds 44.9 / 88.0 / 99.0
# against 44.1 / 87.6 / 99.0 (three gain 0.8-2.8 R@1, one loses 1.7), raw 384-d text's two
# runs 31.75 / 75.3 / 94.75 against four runs' 31.5 / 74.75 / 94.35, pypi-minilm96's two runs 38.45 / 83.8
# against eight runs' 37.74 / 83.2-84.5, SIFT level, for 0.5-1.1 % more held-out error; five times as
# much over-corrects (decoded vectors less crowded than the data): + 14 % error and − 0.3 R@1
# (BENCHMARKS.md, "Issue #14 levers", lever 96).
CROWDING_WEIGHT = 0.2
CROWDING_NEIGHBOURS = 10
CROWDING_BANK = 4096
# Held out of the learn set for the best-epoch choice and the validation recall: one row in
# VAL_SHARE, at most VAL_MAX, of which one in VAL_QUERY_SHARE are the queries of the
# recall. The models are data-limited, so the rows beyond 2,000 train instead: on
# wordnet-minilm96 (50,225 training rows instead of 47,003) + 0.8 R@1 and + 0.4 R@10 over
# three seeds (BENCHMARKS.md, "Issue #14 levers", lever 44).
VAL_SHARE = 10
VAL_MAX = 2000
VAL_QUERY_SHARE = 6
# The largest share of the shortlist decoder in the re-ranking's mix (`calibrate_rerank_blend`):
# blend <= 1, the shortlist decoder never counting more than the full one.
MAX_BLEND_SHARE = 0.5
RECALL_KS = (1, 10, 100)
# Inputs wider than this are read by the stages through a learned linear map to this many
# dimensions (`ResidualCatalyzer` ``chain_dim``, started on the learn set's leading principal
# axes), so that greedy encoding costs about what it costs on 128-d inputs: on raw 384-d text
# the encoders read [x − x̂, x̂] whole (768 inputs) and the chain decoders read and write
# 384-d x̂, ≈ 6.1 M multiply-adds per vector against ≈ 4.2 M. Raw 384-d MiniLM text (30k
# learn): 85.2k vectors/s against 63.1k, 12.9× the median of LSQ7x8_Nqint8's passes in the
# same rounds (9.6× its fastest) against 9.6× (7.1×); on 14,000 queries four runs average
# 31.5 / 74.75 / 94.35 against three seeds of whole inputs' 31.8 / 75.0 / 94.1, held-out
# error level (seeds 0 and 1: 0.4002-0.4007 and 0.3960-0.3966 against 0.4002 and 0.3975),
# training in 340-460 s instead of 480-520 s; 96 dimensions lose more (BENCHMARKS.md,
# "Issue #14 levers", lever 92).
CHAIN_DIM = 128
# Beam-search encoding (`ResidualCatalyzer.encode` with beam > 1): each partial code is
# extended by the 2 nearest lattice points of the stage (exactly the sphere's two nearest);
# on wordnet, 2 candidates × beam 4 beat 4 × 2 at half the work (BENCHMARKS.md, lever 8).
# Only the last 1 + ⌈log₂ beam⌉ stages branch (`beam_first_branch`): a choice matters more
# the later it is made, and branching the first stages too costs beams 2 and 4 about 1.5× the
# time for the same recall (BENCHMARKS.md, lever 33).
BEAM_CANDIDATES = 2
# Vectors per beam-search batch times the beam: keeps the decoders' activations in cache.
BEAM_BATCH_ROWS = 2048
# Vectors per greedy-encoding batch: each batch pays ~2 ms of calls and OpenMP wake-ups
# between the int8 products, so with the fused int8 MLP 16,384 rows encode 1.1-1.2x faster
# than 2,048, for up to ~90 MiB more peak memory (BENCHMARKS.md, lever 87).
GREEDY_BATCH_ROWS = 16384
MAX_BEAM = 256
# g_0 reads the lattice point alone, so its output over every point of block 0 is a table
# (S(12, 6): 64,416 rows of d_in floats) looked up by rank: a fifth of each full decode and a
# third of greedy encoding's decoders saved. Built when an encode or decode brings the rows g_0
# decoded since its weights last changed to the table's size (a small encode never pays for
# it), at most this many bytes. Its rows are the floats g_0 gives on batches of > 16 rows.
FIRST_TABLE_BYTES = 256 << 20
FIRST_TABLE_BATCH = 4096
# Learn sets whose norms spread less than this (standard deviation / mean) have a constant
# norm (sentence embeddings L2-normalised by their model: ~1e-5; SIFT descriptors, normalised
# to 512 before rounding: ~1e-3); the decoders of a model trained on one put their output
# back on that sphere (`ResidualCatalyzer.output_norm`).
CONSTANT_NORM_SPREAD = 0.01


def check_beam(beam):
    """``beam`` as an int, or SpreadcodeError unless it is an integer from 1 to MAX_BEAM."""
    if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) \
            or not 1 <= beam <= MAX_BEAM:
        raise SpreadcodeError(f"the encoding beam must be an integer from 1 to {MAX_BEAM}, "
                              f"got {beam!r}")
    return int(beam)


# How `ResidualCatalyzer.encode`, `decode` and `decode_shortlist` multiply: "auto" in
# bfloat16 (float32 accumulation) where the device does so natively
# (`spreadcode.torchutil.bfloat16_native`: AVX512-BF16 and AMX CPUs, most GPUs), else float32,
# except on a CPU encoding (greedy or beam), the full decoder and the shortlist decoder's MLP,
# which run in row-scaled int8 (`spreadcode.int8`); "float32" everywhere. On an AVX512-BF16 CPU bfloat16 encodes 1.8-2.1×
# and decodes 2.2-2.5× faster than float32, 94-96 % of the codes being the float32 ones (the
# others near-ties between lattice points), the error and recall the same to ± 0.4
# (BENCHMARKS.md, levers 57-58); int8 encodes 1.8-1.9× faster again with 69-81 % of
# bfloat16's codes, the same error to 0.1 % and recall to ± 0.2 (lever 63), and decodes the
# re-ranked shortlists of a search faster at the same recall (lever 64). The models are
# trained under bfloat16 autocast on such CPUs (`ResidualConfig.mixed_precision`).
PRECISIONS = ("auto", "float32")


def check_precision(precision):
    """``precision`` if it is one of PRECISIONS, else SpreadcodeError."""
    if precision not in PRECISIONS:
        raise SpreadcodeError(f"the precision must be one of "
                              f"{', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def beam_first_branch(stages, beam):
    """The first of ``stages`` stages at which a beam of ``beam`` (≥ 2) partial codes branches:
    the last 1 + ⌈log₂ beam⌉ stages do, so that up to ``beam`` partial codes reach the last
    stage's choice; the stages before take the nearest point."""
    return max(0, stages - 1 - math.ceil(math.log2(beam)))


def stage_blocks(bits):
    """The (d, r²) of each stage for a code of ``bits`` bits (a multiple of 8, 8 to 1024)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
            or bits < 8 or bits > 1024 or bits % 8:
        raise SpreadcodeError(f"residual codes take a multiple of 8 bits from 8 to 1024, got {bits}")
    blocks = [STAGE_BLOCK] * (int(bits) // 16)
    if bits % 16:
        blocks.append(HALF_STAGE_BLOCK)
    return tuple(blocks)


def _mlp(d_in, hidden, d_out):
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, d_out))


@torch.no_grad()
def _project_output(mlp, proj):
    """An eval-mode copy of the Sequential ``mlp`` whose last Linear is multiplied by the
    bias-free Linear ``proj``: its outputs are proj(mlp(·)), (n, proj.out_features)."""
    layers, last = copy.deepcopy(list(mlp)[:-1]), mlp[-1]
    out = nn.Linear(last.in_features, proj.out_features)
    out.weight.copy_(proj.weight @ last.weight)
    out.bias.copy_(proj.weight @ last.bias)
    return nn.Sequential(*layers, out).eval()


class ResidualCatalyzer(Preprocessed):
    """M encoder stages ``f``, M decoder stages ``g`` and a shortlist decoder.

    ``quantizer``: the ProductQuantizer of the stages (block m = S(d_m, r_m²)); ``hidden`` /
    ``hidden_decoder``: the MLP widths of f and g; ``hidden_chain``: the width of the
    decoders g_1..g_{M−2} instead, the ones that greedy encoding runs (None: as the others,
    models written before it); ``hidden_shortlist``: the width of the MLP shortlist decoder
    ``shortlist``, or None for the affine ``linear`` of older models.
    ``output_norm``: the norm of every learn vector when it was constant
    (CONSTANT_NORM_SPREAD), else None: both decoders then scale what they decode onto that
    sphere. The MSE-optimal decoder shrinks uncertain vectors towards the mean (median norm
    0.86 for unit text embeddings), by a different amount for each code, and that spread,
    not the direction, misorders neighbours: on the sphere pypi-minilm96 goes from 35.1 / 79.8
    / 98.0 to 37.1 / 83.2 / 98.5 with the same codes (BENCHMARKS.md, lever 30).
    ``rerank_blend``: the weight of the shortlist decoder's distance added to the full
    decoder's when a search re-ranks (`calibrate_rerank_blend`), None (0) in models written
    before it.
    ``chain_dim``: when set, every stage reads x and x̂ through ``chain_proj``, a linear map
    (no bias) from d_in to chain_dim dimensions learned with the rest (`init_chain_projection`
    starts it on the principal axes): f_0 reads P x, f_m [P x − P x̂, P x̂], g_m [z_m, P x̂]
    (still adding a d_in-wide increment to x̂), so greedy encoding carries only P x̂, through
    the decoders' output layers multiplied by P (`_chain_decoders`); None: they read x and x̂
    whole (CHAIN_DIM says when training sets it).
    Buffers ``center`` float32 (d_in,) and ``scale`` float32 (1,) hold the preprocessing
    ``(x − center) · scale``.
    """

    def __init__(self, d_in, quantizer, hidden=ENCODER_HIDDEN, hidden_decoder=DECODER_HIDDEN,
                 hidden_shortlist=None, output_norm=None, hidden_chain=None, rerank_blend=None,
                 chain_dim=None):
        super().__init__(d_in)
        self.hidden, self.hidden_decoder = int(hidden), int(hidden_decoder)
        self.hidden_chain = None if hidden_chain is None else int(hidden_chain)
        self.hidden_shortlist = None if hidden_shortlist is None else int(hidden_shortlist)
        self.output_norm = None if output_norm is None else float(output_norm)
        self.rerank_blend = None if rerank_blend is None else float(rerank_blend)
        self.chain_dim = None if chain_dim is None else int(chain_dim)
        self.quantizer = quantizer
        self.d_out = quantizer.d
        dims = [block.d for block in quantizer.blocks]
        read = self.d_in if self.chain_dim is None else self.chain_dim
        if self.chain_dim is not None:
            self.chain_proj = nn.Linear(self.d_in, self.chain_dim, bias=False)
        self.f = nn.ModuleList([_mlp(read if m == 0 else 2 * read, self.hidden, d)
                                for m, d in enumerate(dims)])
        self.g = nn.ModuleList([_mlp(d if m == 0 else d + read, self._decoder_width(m),
                                     self.d_in) for m, d in enumerate(dims)])
        if self.hidden_shortlist is None:
            self.linear = nn.Linear(self.d_out, self.d_in)
        else:
            from spreadcode.decoders import DecoderNet

            self.shortlist = DecoderNet(self.d_out, self.d_in, self.hidden_shortlist)
        self._first_key, self._first_rows, self._first_expected, self._first_tables = \
            None, 0, 0, {}
        self._int8_key, self._int8 = None, None
        self._int8_shortlist_key, self._int8_shortlist = None, None
        self._chain_key, self._chain_g = None, None

    def _decoder_width(self, m):
        """Hidden width of g_m: ``hidden_chain`` for the stages between the first and the
        last (encoding runs them; g_0 is a table and the last only decodes), when set."""
        chain = 0 < m < len(self.quantizer.blocks) - 1 and self.hidden_chain is not None
        return self.hidden_chain if chain else self.hidden_decoder

    def arch(self):
        """The model file's "arch" object."""
        arch = {"type": "residual", "d_in": self.d_in, "hidden": self.hidden,
                "hidden_decoder": self.hidden_decoder, "d_out": self.d_out}
        if self.hidden_chain is not None:
            arch["hidden_chain"] = self.hidden_chain
        if self.hidden_shortlist is not None:
            arch["hidden_shortlist"] = self.hidden_shortlist
        if self.output_norm is not None:
            arch["output_norm"] = self.output_norm
        if self.rerank_blend is not None:
            arch["rerank_blend"] = self.rerank_blend
        if self.chain_dim is not None:
            arch["chain_dim"] = self.chain_dim
        return arch

    def _view(self, x):
        """x or x̂ float32 tensor (n, d_in) as the stages read it: (n, chain_dim) through
        ``chain_proj`` (in float32, under any autocast) when the model has one, else x."""
        if self.chain_dim is None:
            return x
        with torch.autocast(x.device.type, enabled=False):
            return self.chain_proj(x.float())

    @torch.no_grad()
    def init_chain_projection(self, xs):
        """Start ``chain_proj`` on the leading principal axes of the preprocessed learn
        vectors xs float32 tensor (n, d_in): its rows the eigenvectors of their covariance
        with the chain_dim largest eigenvalues (orthonormal)."""
        centred = (xs - xs.mean(0)).double()
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        self.chain_proj.weight.copy_(vectors[:, -self.chain_dim:].flip(1).T)

    def _chain_decoders(self, g):
        """The decoders as greedy encoding runs them, on the state P x̂ (`_view`): ``g``
        itself without ``chain_proj``, else each g_m with its output layer multiplied by P
        (chain_dim outputs, P g_m), in ``g``'s arithmetic (`spreadcode.int8.Int8Mlp` when
        ``g`` is `_int8_chain`'s), built once per weights."""
        if self.chain_dim is None:
            return g
        in_int8 = isinstance(g[0], int8.Int8Mlp)
        key = (self._weights_key(self.g, self.chain_proj), in_int8)
        if self._chain_key != key:
            projected = [_project_output(mlp, self.chain_proj) for mlp in self.g]
            self._chain_key = key
            self._chain_g = [int8.Int8Mlp(mlp) for mlp in projected] if in_int8 else projected
        return self._chain_g

    def _on_sphere(self, decoded):
        """Decoded vectors float32 tensor (n, d_in) scaled to ``output_norm`` (when set)."""
        if self.output_norm is None:
            return decoded
        return self.output_norm * nn.functional.normalize(decoded, dim=1)

    def _encode_stage(self, m, xs, xh, f=None):
        """The encoder output of stage m (n, d_m), not yet on the sphere: f_m(xs) for the
        first stage, then f_m([xs − x̂_{m−1}, x̂_{m−1}]) for the preprocessed input xs and
        the reconstruction x̂_{m−1} so far, both as the stages read them (`_view`: (n,
        chain_dim) or (n, d_in)). ``f``: the encoders to run f_m with (default: the
        model's own)."""
        f = self.f if f is None else f
        return f[m](xs) if m == 0 else int8.run_on_concat(f[m], xs, xh, difference=True)

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        """x̂_m from the unit points z (n, d_m) of stage m and x̂_{m−1} (n, d_in); in eval mode
        without gradients, the ranks uint64 (n,) of stage 0 let g_0 be a table lookup.
        ``g``: the decoders to run g_m with (default: the model's own)."""
        g = self.g if g is None else g
        if m > 0:
            return xh + int8.run_on_concat(g[m], z, self._view(xh))
        return g[0](z) if ranks is None else self._first_stage(ranks, z, g[0])

    def _chain_stage(self, m, z, state, ranks, g):
        """Greedy encoding's state after stage m from the unit points z (n, d_m), their ranks
        uint64 (n,) and the state before (None at stage 0): `_decode_stage`'s x̂_m where the
        stages read x̂ whole; else P x̂_m (n, chain_dim) by ``g``, `_chain_decoders`'s
        decoders (g_0 looked up in its own table once it exists)."""
        if self.chain_dim is None:
            return self._decode_stage(m, z, state, ranks, g)
        if m > 0:
            return state + int8.run_on_concat(g[m], z, state)
        return self._first_stage(ranks, z, g[0], chain=True)

    @staticmethod
    def _weights_key(*modules):
        """What identifies the current weights of ``modules``: a table or copy built from
        them is stale once it changes."""
        return tuple((t.data_ptr(), t._version) for module in modules
                     for t in itertools.chain(module.parameters(), module.buffers()))

    def _first_stage_key(self):
        return self._weights_key(self.g[0], *([] if self.chain_dim is None
                                              else [self.chain_proj]))

    def _int8_chain(self):
        """(f, g) in int8 (`spreadcode.int8.Int8Mlp`), built once per weights: every encoder
        f_m and every decoder g_m. Greedy encoding runs f and g_0..g_{M−2}, a beam and
        `decode` g_{M−1} too; g_0 mostly as its table (`_first_stage`), which it builds 3.5×
        faster than the float32 g_0 does (BENCHMARKS.md, lever 70)."""
        key = self._weights_key(self.f, self.g)
        if self._int8_key != key:
            self._int8_key, self._int8 = key, (
                [int8.Int8Mlp(mlp) for mlp in self.f], [int8.Int8Mlp(mlp) for mlp in self.g])
        return self._int8

    def _int8_shortlist_mlp(self, precision):
        """The MLP of the shortlist decoder in int8 (`spreadcode.int8.Int8Mlp`), built once
        per weights, where ``precision`` runs the chain in int8 (`_runs_int8`); else None
        (and for older models' linear shortlist decoder)."""
        if self.hidden_shortlist is None or self.hidden_shortlist > int8.MAX_WIDTH \
                or not self._runs_int8(precision):
            return None
        key = self._weights_key(self.shortlist.mlp)
        if self._int8_shortlist_key != key:
            self._int8_shortlist_key = key
            self._int8_shortlist = int8.Int8Mlp(self.shortlist.mlp)
        return self._int8_shortlist

    def _count_first_stage_rows(self, rows, expected=False):
        """Count ``rows`` that g_0 is about to decode (`encode`, `decode`), since its weights
        last changed: the table is built once they reach its size. ``expected``: rows that
        later `decode` calls will ask for (`expect_decodes`); those calls then count nothing
        for them."""
        key = self._first_stage_key()
        if key != self._first_key:  # new or changed weights: any table is stale
            self._first_key, self._first_rows, self._first_expected, self._first_tables = \
                key, 0, 0, {}
        rows = int(rows)
        if expected:
            self._first_expected += rows
        else:
            counted = min(rows, self._first_expected)
            self._first_expected -= counted
            rows -= counted
        self._first_rows += rows

    def expect_decodes(self, rows):
        """Tell the model that `decode` is about to be asked for ``rows`` codes over many
        small calls (a search's re-ranking: queries × candidates, in blocks), so that g_0's
        table is built before the first of them once they reach its size, not after as many
        rows as the table has were decoded without it (a 1,000-query search of 1M codes at
        k = 100: 200,000 rows, of which the first 64,416 would pay for g_0 twice).
        Changes no result (`_first_stage`)."""
        self._count_first_stage_rows(rows, expected=True)

    def _first_table(self, g0, chain=False):
        """g_0 of every point of block 0 in code order by ``g0`` (the model's g_0 in float32,
        or its `spreadcode.int8.Int8Mlp`; ``chain``: `_chain_decoders`'s P g_0): a float32
        tensor (count, d_in or chain_dim), built once `_count_first_stage_rows` has counted
        as many rows as it has (FIRST_TABLE_BYTES) and kept per arithmetic ("float32" or
        "int8") and ``chain`` (`_first_tables`) until the weights change; else None. A row of
        either g0 does not depend on its batch, so a code does not depend on whether the
        table exists yet, and `decode` reads the table too."""
        block = self.quantizer.blocks[0]
        count = lattice.count(block.d, block.param)
        if self._first_key != self._first_stage_key():
            return None
        arithmetic = ("int8" if isinstance(g0, int8.Int8Mlp) else "float32", chain)
        table = self._first_tables.get(arithmetic)
        if table is None and self._first_rows >= count \
                and count * self.d_in * 4 <= FIRST_TABLE_BYTES:
            device = model_device(self)
            with torch.autocast(device.type, enabled=False):
                points = torch.from_numpy(block.reconstruct(np.arange(count, dtype=np.uint64)))
                table = self._first_tables[arithmetic] = torch.cat(
                    [g0(points[start:start + FIRST_TABLE_BATCH].to(device))
                     for start in range(0, count, FIRST_TABLE_BATCH)])
        return table

    def _first_stage(self, ranks, z, g0, chain=False):
        """g_0(z) for block-0 ranks uint64 (n,) and their unit points z (n, d_0), in eval mode
        without gradients, by ``g0`` (in float32 even under `encode`'s bfloat16 autocast;
        ``chain`` as in `_first_table`): looked up in `_first_table` once it exists."""
        table = self._first_table(g0, chain)
        if table is None:
            with torch.autocast(z.device.type, enabled=False):
                return g0(z)
        return table[torch.from_numpy(ranks.astype(np.int64)).to(z.device)]

    def forward(self, x):
        """Training pass: x float32 tensor (n, d_in) -> (x̂_M, x̂_1), both (n, d_in) in the
        preprocessed space, with straight-through gradients through the lattices."""
        return self._chain(self.preprocess(x))

    def _chain(self, xs):
        """`forward` from the preprocessed input xs (n, d_in)."""
        xh = first = None
        read = self._view(xs)
        for m, block in enumerate(self.quantizer.blocks):
            y = nn.functional.normalize(
                self._encode_stage(m, read, None if xh is None else self._view(xh)), dim=1)
            xh = self._decode_stage(m, straight_through(y, block), xh)
            first = xh if m == 0 else first
        return xh, first

    def training_loss(self, x, aux, noise=0.0, generator=None, bank=None, crowding=0.0):
        """Training objective on a float32 tensor batch (n, d_in): ‖x̂_M − x‖² + aux·‖x̂_1 − x‖²,
        means over the batch, in the preprocessed space (a scalar tensor). ``noise`` > 0: the
        encoders read x plus Gaussian noise of that many RMS coordinates (drawn from the
        torch ``generator``), the target staying x: a denoising auto-encoder. ``crowding`` > 0
        (a model with ``output_norm``): plus that weight × the mean excess of x̂'s crowding
        over x's (`spreadcode.losses.crowding` against ``bank``, unit rows (m, d_in) of other
        training vectors; CROWDING_WEIGHT), in the same units as the squared error."""
        target = self.preprocess(x)
        xs = target
        if noise:
            xs = target + noise * torch.randn(target.shape, generator=generator,
                                               device=target.device, dtype=target.dtype)
        xh, first = self._chain(xs)
        loss = self._squared_error(xh, target).mean() \
            + aux * self._squared_error(first, target).mean()
        if crowding:
            decoded = nn.functional.normalize(self.unprocess(xh.float()), dim=1)
            truth = nn.functional.normalize(x.float(), dim=1)
            excess = (losses.crowding(decoded, bank, CROWDING_NEIGHBOURS)
                      - losses.crowding(truth, bank, CROWDING_NEIGHBOURS)).mean()
            loss = loss + crowding * (float(self.scale) * self.output_norm) ** 2 * excess
        return loss

    @staticmethod
    def _squared_error(decoded, target):
        """The training loss's error of each row: ‖decoded − target‖², (n,) from two (n,
        d_in) tensors (a subclass may measure it in another metric)."""
        return (decoded - target).pow(2).sum(1)

    def _encode_batch(self, x, f, g, fused=None):
        """Eval-mode greedy encoding of a tensor (n, d_in) -> uint8 numpy (n, code_bytes), with
        the encoders ``f`` and decoders ``g`` (the model's own, or `_int8_chain`'s), or by
        ``fused`` (`_fused_greedy` of them: the same steps in one compiled call, the same
        codes). Each stage takes the lattice point nearest its encoder's output, which does not
        depend on that output's norm. Under bfloat16 autocast (`encode`) the MLPs' outputs
        are bfloat16: each is taken back to float32, so x̂ accumulates in float32. The stages
        carry x̂ as they read it (`_view`, by `_chain_decoders`)."""
        xs, xh, ranks = self._view(self.preprocess(x)).float(), None, []
        g = self._chain_decoders(g)
        if fused is not None:  # g_0's table only where a later stage reads x̂
            table = (self._first_table(g[0], self.chain_dim is not None)
                     if len(self.quantizer.blocks) > 1 else None)
            ranks = fused(np.ascontiguousarray(xs.cpu().numpy()),
                          None if table is None else table.numpy(), torch.get_num_threads())
            return self.quantizer.join_block_codes(ranks)
        for m, block in enumerate(self.quantizer.blocks):
            y = self._encode_stage(m, xs, xh, f).float()
            ranks.append(block.quantize(np.ascontiguousarray(y.cpu().numpy())))
            if m + 1 < len(self.quantizer.blocks):
                z = torch.from_numpy(block.reconstruct(ranks[-1])).to(x.device)
                xh = self._chain_stage(m, z, xh, ranks[-1], g).float()
        return self.quantizer.join_block_codes(ranks)

    def _fused_greedy(self, f, g):
        """A `spreadcode._codec.FusedGreedyEncoder` of the int8 chain (f, g) of `_int8_chain`
        (g as `_chain_decoders` makes it) where every MLP that greedy encoding runs is fused
        (`spreadcode.int8.Int8Mlp.fused`) and every stage's codes fit one word; else None
        (`_encode_batch`'s stage loop). Each tile of rows runs every stage while it stays in
        cache (BENCHMARKS.md, lever 88)."""
        g, blocks = self._chain_decoders(g), self.quantizer.blocks
        if not all(isinstance(mlp, int8.Int8Mlp) and mlp.fused is not None
                   for mlp in [*f, *g[:-1]]) \
                or any(lattice.words(block.d, block.param) != 1 for block in blocks):
            return None
        last = len(blocks) - 1
        return _codec.FusedGreedyEncoder(
            [(f[m].fused, lattice.tables(block.d, block.param), block.unit_scale,
              None if m == last else g[m].fused) for m, block in enumerate(blocks)],
            self.d_in if self.chain_dim is None else self.chain_dim)

    def _encode_beam_batch(self, x, beam, f, g):
        """Eval-mode beam-search encoding of a tensor (n, d_in) -> uint8 numpy (n, code_bytes).

        The stages before `beam_first_branch` take the nearest point; each later stage
        extends each of the (at most) ``beam`` partial codes kept for a vector by the
        BEAM_CANDIDATES lattice points nearest its encoder's output
        (`spreadcode.lattice.nearest_candidates`), decodes every extension with g_m and
        keeps the ``beam`` of lowest error ‖x − x̂_m‖² (ties: the earlier extension); the
        last stage is scored as `decode` returns it, on the sphere of ``output_norm`` when
        the model has one (BENCHMARKS.md, lever 31). g_0 is looked up in its table once
        `encode` has counted enough rows (`_first_stage`). `encode` calls it for beam ≥ 2
        (beam 1 is `_encode_batch`'s greedy nearest point), with the encoders ``f`` and
        decoders ``g`` as there. MLP outputs are taken back to float32 as in
        `_encode_batch`.
        """
        xs, n = self.preprocess(x), x.shape[0]
        read = self._view(xs)
        xh, points, rows = None, np.zeros((n, 1, 0), dtype=np.int8), np.arange(n)[:, None]
        blocks = self.quantizer.blocks
        first_branch = beam_first_branch(len(blocks), beam)
        for m, block in enumerate(blocks):
            width = 1 if xh is None else xh.shape[1]
            flat = None if xh is None else xh.reshape(n * width, self.d_in)
            y = nn.functional.normalize(self._encode_stage(
                m, read.repeat_interleave(width, 0), None if flat is None else self._view(flat),
                f).float(), dim=1)
            count = BEAM_CANDIDATES if m >= first_branch else 1
            z = lattice.nearest_candidates(y.cpu().numpy(), block.param, count)
            tried = z.shape[1]
            flat_z = np.ascontiguousarray(z.reshape(-1, block.d))
            unit = torch.from_numpy(flat_z.astype(np.float32)
                                    * np.float32(block.param ** -0.5)).to(x.device)
            decoded = self._decode_stage(
                m, unit, None if flat is None else flat.repeat_interleave(tried, 0),
                lattice.encode(flat_z, block.param) if m == 0 else None, g).float()
            decoded = decoded.reshape(n, width * tried, self.d_in)
            scored = decoded
            if self.output_norm is not None and m + 1 == len(blocks):
                flat_decoded = self.unprocess(decoded.reshape(-1, self.d_in))
                scored = self.preprocess(self._on_sphere(flat_decoded)).reshape(decoded.shape)
            error = (scored - xs[:, None]).pow(2).sum(2)
            keep = torch.sort(error, dim=1, stable=True).indices[:, :beam]
            xh = decoded[torch.from_numpy(rows).to(x.device), keep]
            keep = keep.cpu().numpy()
            points = np.concatenate([points[rows, keep // tried],
                                     z.reshape(n, width * tried, block.d)[rows, keep]], axis=2)
        # A lattice point is its own nearest point, so quantizing the winners ranks them.
        return self.quantizer.quantize(points[:, 0].astype(np.float32))

    def encode(self, vectors, beam=1, precision="auto"):
        """Codes of vectors (n, d_in), any real dtype: uint8 (n, code_bytes), as .spc files
        store them. ``beam`` > 1 searches that many partial codes per vector over the last
        stages (`_encode_beam_batch`): lower reconstruction error for more time (wordnet,
        BENCHMARKS.md lever 33: beam 2 2.5×, beam 4 5×, beam 8 11× the greedy encoding
        time). ``precision``: "auto" runs the encoders and decoders in int8 on a CPU
        (`_int8_chain`; a beam 1.45× faster than in bfloat16, lever 63) and multiplies in
        bfloat16 where the device does so natively otherwise, "float32" everywhere
        (PRECISIONS): any code decodes the same way, only the choice between near-equal
        lattice points may differ. SpreadcodeError for a wrong dimension, NaN or Inf, a beam
        that is not an integer from 1 to MAX_BEAM, or an unknown precision."""
        beam, arithmetic = check_beam(beam), self._arithmetic(precision)
        with arithmetic:
            f, g = self._int8_chain() if self._runs_int8(precision) else (self.f, self.g)
            if beam == 1:
                self._count_first_stage_rows(len(vectors))
                fused = self._fused_greedy(f, g)
                return forward_batches(self, vectors,
                                       lambda x: self._encode_batch(x, f, g, fused),
                                       self.quantizer.code_bytes, np.uint8,
                                       batch=GREEDY_BATCH_ROWS)
            stages = len(self.quantizer.blocks)
            self._count_first_stage_rows(
                len(vectors) * (BEAM_CANDIDATES if beam_first_branch(stages, beam) == 0 else 1))
            return forward_batches(self, vectors,
                                   lambda x: self._encode_beam_batch(x, beam, f, g),
                                   self.quantizer.code_bytes, np.uint8,
                                   batch=max(1, BEAM_BATCH_ROWS // beam))

    def _runs_int8(self, precision):
        """Whether `encode` and `decode` run `_int8_chain`: for ``precision`` "auto"
        on a CPU that multiplies int8 matrices (`spreadcode.int8.available`) when every
        hidden layer fits its compiled core."""
        return precision == "auto" and int8.available(model_device(self)) \
            and max(self.hidden, self.hidden_decoder, self.hidden_chain or 0) <= int8.MAX_WIDTH

    def _arithmetic(self, precision):
        """The context `encode`, `decode` and `decode_shortlist` run in for ``precision``
        (PRECISIONS): bfloat16 autocast for "auto" where the model's device multiplies it
        natively, else float32. SpreadcodeError for an unknown precision."""
        return mixed_precision(model_device(self), check_precision(precision) == "auto")

    def unit_points(self, codes):
        """The M unit lattice points of each code, concatenated: float32 (n, d_out)."""
        blocks = self.quantizer.blocks
        return np.hstack([block.reconstruct(ranks) for block, ranks in
                          zip(blocks, self.quantizer.block_codes(codes))]).astype(np.float32)

    def _decode_batch(self, codes, g):
        xh = None
        for m, (block, ranks) in enumerate(zip(self.quantizer.blocks,
                                                self.quantizer.block_codes(codes))):
            xh = self._decode_stage(m, torch.from_numpy(block.reconstruct(ranks)), xh,
                                    ranks, g).float()
        return self._on_sphere(self.unprocess(xh))

    @torch.no_grad()
    def decode(self, codes, batch=4096, precision="auto"):
        """The full decoder x̂_M of codes uint8 (n, code_bytes): float32 (n, d_in), on the
        sphere of ``output_norm`` when the model has one. ``precision`` as in `encode`:
        "auto" runs g_0..g_{M−1} in int8 on a CPU (`_int8_chain`; BENCHMARKS.md, levers 64, 70),
        elsewhere in bfloat16 where native (lever 58); x̂ accumulates in float32. A row
        decodes to the same floats in any batch of at least
        `spreadcode.collection.DECODE_MIN_ROWS` rows."""
        arithmetic = self._arithmetic(precision)
        self.eval()
        self._count_first_stage_rows(codes.shape[0])
        g = self._int8_chain()[1] if self._runs_int8(precision) else self.g
        out = np.empty((codes.shape[0], self.d_in), dtype=np.float32)
        with arithmetic:
            for start in range(0, codes.shape[0], batch):
                out[start:start + batch] = self._decode_batch(codes[start:start + batch],
                                                              g).numpy()
        return out

    @torch.no_grad()
    def decode_shortlist(self, codes, batch=SHORTLIST_DECODE_BATCH, precision="auto"):
        """The shortlist decoder of codes uint8 (n, code_bytes): float32 (n, d_in), from the
        unit lattice points by ``shortlist`` or by ``linear`` (older models), on the sphere of
        ``output_norm`` when the model has one; ``precision`` as in `decode`: under "auto" on
        a CPU, the shortlist MLP runs in row-scaled int8 (`_int8_shortlist_mlp`) and its
        linear path in float32: 1.6× bfloat16's rate at the same recall (BENCHMARKS.md,
        "Collections at 1M vectors", run AA). A search's first pass decodes every code with
        it, and every later scan the codes not kept decoded."""
        arithmetic = self._arithmetic(precision)
        self.eval()
        out = np.empty((codes.shape[0], self.d_in), dtype=np.float32)
        net = self.linear if self.hidden_shortlist is None else self.shortlist
        mlp = self._int8_shortlist_mlp(precision)
        with arithmetic:
            for start in range(0, codes.shape[0], batch):
                points = torch.from_numpy(self.unit_points(codes[start:start + batch]))
                if mlp is None:
                    decoded = net(points).float()
                else:
                    with torch.autocast(points.device.type, enabled=False):
                        decoded = net.linear(points) + net.residual_scale * mlp(points)
                out[start:start + batch] = self._on_sphere(decoded).numpy()
        return out


def refuse_residual(catalyzer, what):
    """SpreadcodeError when ``catalyzer`` is a residual model, for ``what`` (e.g. "a separate
    decoder") that only single-sphere catalyzers take: a residual model decodes its codes
    with its own, jointly trained decoders."""
    if isinstance(catalyzer, ResidualCatalyzer):
        raise SpreadcodeError(f"{what} applies to lattice and sign catalyzers; this is a "
                              "residual model, which decodes its codes with its own decoders")


@dataclass(frozen=True)
class ModelDecoder:
    """One of a residual model's decoders, shaped like `spreadcode.decoders.Decoder` for the
    searches of `spreadcode.search`: ``decode(codes) -> float32 (n, d_in)``, in ``precision``
    (`ResidualCatalyzer.decode`). Its ``kind`` names the precision too, so the decoded rows
    that searches keep (keyed by kind and hash) never mix precisions."""

    model: ResidualCatalyzer
    sha256: str
    role: str  # "residual" (the full decoder) or "shortlist" (the shortlist decoder)
    blend: float = 0.0
    precision: str = "auto"

    @property
    def kind(self):
        """``role``, with "-float32" appended when ``precision`` is "float32"."""
        return self.role if self.precision == "auto" else f"{self.role}-{self.precision}"

    @property
    def catalyzer_sha256(self):
        return self.sha256

    @property
    def quantizer(self):
        return self.model.quantizer

    @property
    def d_in(self):
        return self.model.d_in

    @property
    def row_dtype(self):
        """One decoded vector: float32 (d_in,)."""
        return np.dtype((np.float32, (self.d_in,)))

    def decode(self, codes):
        if self.role == "residual":
            return self.model.decode(codes, precision=self.precision)
        return self.model.decode_shortlist(codes, precision=self.precision)


@dataclass(frozen=True)
class ResidualConfig:
    """A residual model's training run (saved, minus ``device``, in the model metadata).

    ``blocks``: the stages' (d, r²); ``hidden``, ``hidden_decoder``, ``hidden_chain``: the
    widths of `ResidualCatalyzer`; ``hidden_shortlist``: the shortlist decoder's width
    (None: the affine shortlist decoder of older models). Adam with a one-cycle learning rate
    (warm-up to ``lr`` over the first 5 % of the planned steps, cosine decay after), AdamW's
    decoupled decay of the weight matrices by ``weight_decay`` (0: plain Adam); ``aux``:
    weight of the first stage's reconstruction error; ``noise``: the denoising noise of
    `ResidualCatalyzer.training_loss` (TRAINING_NOISE); ``crowding``: the weight of its
    crowding term where the decoders put their output on a sphere (CROWDING_WEIGHT; 0: none).
    ``time_budget_s`` (wall clock) plans the epoch count after every epoch
    (`spreadcode.torchutil.plan_epochs`): as many as fit, at most ``epochs``; ``budget_rows``
    (None: none) makes it the budget of that many training rows, more for more
    (`time_budget`); ``max_vectors`` caps the epochs at that many training vectors in all
    (`epoch_cap`). The epoch of lowest held-out error (`held_out_rows`) is kept.
    ``mixed_precision``: forward passes in bfloat16 autocast where the device has native
    bfloat16 (`spreadcode.torchutil.mixed_precision`): 1.4× the steps per second on
    AVX512-BF16 CPUs, the same held-out error (BENCHMARKS.md, lever 17); float32 elsewhere.
    ``constant_norm``: when the learn vectors all have one norm (`learn_output_norm`), the
    decoders put their output on that sphere (`ResidualCatalyzer.output_norm`).
    ``chain_dim``: learn vectors of more dimensions are read by the stages through a learned
    projection to this many (`ResidualCatalyzer` ``chain_dim``; CHAIN_DIM); None: never.
    """

    blocks: tuple = field(default_factory=lambda: stage_blocks(64))
    hidden: int = ENCODER_HIDDEN
    hidden_decoder: int = DECODER_HIDDEN
    hidden_chain: int | None = None
    hidden_shortlist: int | None = SHORTLIST_HIDDEN
    epochs: int | None = DEFAULT_EPOCHS
    time_budget_s: float | None = None
    budget_rows: int | None = None
    max_vectors: int | None = None
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = WEIGHT_DECAY
    aux: float = 0.0
    noise: float = TRAINING_NOISE
    crowding: float = CROWDING_WEIGHT
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    constant_norm: bool = True
    chain_dim: int | None = CHAIN_DIM

    @property
    def quantizer(self):
        return "residual"

    def quantizer_spec(self):
        """The product code of the stages as model files name it (a QuantizerSpec)."""
        return QuantizerSpec("product", sum(d for d, _ in self.blocks),
                             tuple(tuple(block) for block in self.blocks))


def check_residual_config(config):
    """Reject residual configurations that cannot train (SpreadcodeError names the field)."""
    if config.epochs is None and config.time_budget_s is None:
        raise SpreadcodeError("give a number of epochs, a time budget, or both")
    if config.epochs is not None and config.epochs < 1:
        raise SpreadcodeError(f"epochs must be >= 1, got {config.epochs}")
    if config.time_budget_s is not None and not config.time_budget_s > 0:
        raise SpreadcodeError(f"time budget must be positive, got {config.time_budget_s}")
    for name, minimum in (("hidden", 1), ("hidden_decoder", 1), ("hidden_chain", 1),
                          ("hidden_shortlist", 1), ("batch_size", 2), ("max_vectors", 1),
                          ("budget_rows", 1), ("chain_dim", 1)):
        if getattr(config, name) is not None and getattr(config, name) < minimum:
            raise SpreadcodeError(f"{name} must be >= {minimum}, got {getattr(config, name)}")
    if not (math.isfinite(config.lr) and config.lr > 0 and math.isfinite(config.aux)
            and config.aux >= 0):
        raise SpreadcodeError(f"lr must be > 0 and aux >= 0, got {config.lr}, {config.aux}")
    for name in ("weight_decay", "noise", "crowding"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise SpreadcodeError(f"{name} must be >= 0, got {value}")


def learn_output_norm(learn):
    """The norm of the learn vectors float32 (n, d_in) when it is constant (standard deviation
    below CONSTANT_NORM_SPREAD of the mean, the mean positive): their mean norm as a float,
    else None."""
    norms = np.linalg.norm(learn.astype(np.float64), axis=1)
    mean = float(norms.mean())
    return mean if mean > 0 and float(norms.std()) <= CONSTANT_NORM_SPREAD * mean else None


def one_cycle_lr(peak, progress):
    """Learning rate at ``progress`` (0..1) of the planned steps: linear warm-up from
    peak/25 over the first 5 %, then cosine decay to ~0 (the one-cycle policy)."""
    warm = 0.05
    if progress < warm:
        return peak * (0.04 + 0.96 * progress / warm)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warm) / (1 - warm))))


def epoch_cap(config, n_train):
    """The most epochs a run of ``config`` on ``n_train`` training rows may take: ``epochs``,
    lowered to ``max_vectors // n_train`` (at least 1) when that is set; None when neither
    bounds it (a time budget alone)."""
    if config.max_vectors is None:
        return config.epochs
    by_vectors = max(1, config.max_vectors // n_train)
    return by_vectors if config.epochs is None else min(config.epochs, by_vectors)


def time_budget(config, n_train):
    """The wall-clock budget in seconds of a run of ``config`` on ``n_train`` training rows:
    ``time_budget_s``, scaled by n_train / ``budget_rows`` where that is more than 1 (None: no
    budget)."""
    if config.time_budget_s is None or config.budget_rows is None:
        return config.time_budget_s
    return config.time_budget_s * max(1.0, n_train / config.budget_rows)


def held_out_rows(n, seed):
    """Seeded split of n learn rows -> (train rows, held-out rows), sorted int64 arrays: a
    tenth of the rows (VAL_SHARE; at most VAL_MAX) held out."""
    n_val = min(max(1, n // VAL_SHARE), VAL_MAX)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def validation_recall(model, held_out):
    """1-recall@1/10/100 of the default search (`spreadcode.search.prepare_residual`'s
    shortlist re-ranked by the full decoder, with the model's ``rerank_blend``) on held-out
    learn vectors float32 (n, d_in):
    the first n // VAL_QUERY_SHARE are queries, the rest the database -> {"1": r, ...}."""
    from spreadcode.knn import exact_knn
    from spreadcode.search import (first_hits, int8_rows, int8_vectors, rerank_candidates,
                                  residual_rerank)

    n_queries = max(1, held_out.shape[0] // VAL_QUERY_SHARE)
    queries, database = held_out[:n_queries], held_out[n_queries:]
    _, nearest = exact_knn(database.astype(np.float64), queries.astype(np.float64), 1)
    codes = model.encode(database)
    k = min(max(RECALL_KS), database.shape[0])
    distances, shortlist = exact_knn(int8_vectors(int8_rows(model.decode_shortlist(codes))),
                                     queries, min(residual_rerank(model, k), database.shape[0]))
    decoded = model.decode(codes)
    _, ids = rerank_candidates(queries, shortlist, lambda rows: decoded[rows], k,
                               distances.astype(np.float32), model.rerank_blend or 0.0)
    hits = first_hits(ids, nearest)
    return {str(r): float(np.mean(hits < r)) for r in RECALL_KS}


def calibrate_rerank_blend(model, held_out):
    """The weight of the shortlist decoder's distance in a search's re-ranking score
    ‖q − x̂‖² + blend · ‖q − x̃‖² (x̂: the full decoder's vector, x̃: the shortlist decoder's
    as the scan ranks it, `spreadcode.search.int8_rows`), from held-out learn vectors x
    float32 (n, d_in) and their codes: the weight α of the mix (1 − α) x̂ + α x̃ nearest x in
    squared error, by least squares, α = ⟨x − x̂, x̃ − x̂⟩ / ‖x̃ − x̂‖² over every row, clipped
    to [0, MAX_BLEND_SHARE]; blend = α / (1 − α). The blended score is the mix's distance
    scaled by 1 + blend, plus blend / (1 + blend) · ‖x̂ − x̃‖²: a candidate whose two
    decodings disagree ranks lower. The two decoders' errors are partly independent, and how
    much the second one adds depends on the data: α was 0.13 / 0.17 / 0.25 on pypi /
    wordnet / raw 384-d text with 2,000 held-out rows, within 0.01 of its value on each base,
    and blends near it gained − 0.1 / + 0.7 / + 0.6 R@1 and + 0.4 / + 0.3 / + 0.5 R@10
    (BENCHMARKS.md, "Issue #14 levers", lever 72). Rows a model trained on would say the
    full decoder needs no help: it decodes them far better than new ones. Returns a float
    >= 0."""
    from spreadcode.search import int8_rows, int8_vectors

    codes = model.encode(held_out)
    full = model.decode(codes).astype(np.float64)
    offset = int8_vectors(int8_rows(model.decode_shortlist(codes))) - full
    norm = float(np.einsum("ij,ij->", offset, offset))
    share = float(np.einsum("ij,ij->", held_out - full, offset)) / norm if norm > 0 else 0.0
    share = min(max(share, 0.0), MAX_BLEND_SHARE)
    return share / (1.0 - share)


def fit_shortlist_decoder(model, learn, seed=0, progress=False):
    """Fit the model's shortlist decoder on the codes of the learn vectors float32 (n, d_in).

    ``shortlist`` is distilled to the full decoder's output on those codes
    (`spreadcode.decoders.fit_decoder`: least squares, then the MLP correction for
    SHORTLIST_EPOCHS epochs, as many whole epochs as keep it within SHORTLIST_STEPS batches,
    seeded), so that it ranks like the decoder that re-ranks its shortlist; ``linear`` (older
    models) is fitted by least squares to the vectors themselves. ``progress``: an epoch
    bar."""
    from spreadcode.decoders import MLP_BATCH, fit_decoder, fit_linear

    codes = model.encode(learn)
    points = model.unit_points(codes)
    if model.hidden_shortlist is None:
        weight, bias = fit_linear(points, learn)
        with torch.no_grad():
            model.linear.weight.copy_(torch.from_numpy(weight))
            model.linear.bias.copy_(torch.from_numpy(bias))
        return
    steps = max(1, points.shape[0] // MLP_BATCH)
    epochs = min(max(SHORTLIST_EPOCHS, -(-SHORTLIST_STEPS[0] // steps)),
                 max(1, SHORTLIST_STEPS[1] // steps))
    net, _ = fit_decoder(points, model.decode(codes), hidden=model.hidden_shortlist,
                         epochs=epochs, seed=seed, progress=progress)
    model.shortlist.load_state_dict(net.state_dict())


def _held_out_error(model, x, batch=8192):
    """Mean squared reconstruction error (preprocessed space) of float32 tensor rows x."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            chunk = x[start:start + batch]
            xh, _ = model(chunk)
            total += float((xh - model.preprocess(chunk)).pow(2).sum())
    return total / x.shape[0]


def train_residual(learn, config, progress=True):
    """Train a residual model on ``learn`` (array (n, d_in), any real dtype) -> TrainResult
    (model in eval mode on the CPU, its CatalyzerMeta, per-epoch history of
    {"epoch", "loss", "val_mse", "seconds"}). ``val_mse`` is in units of the input vectors.
    Ctrl-C stops and keeps the best epoch so far. SpreadcodeError for bad inputs."""
    from spreadcode.training import TrainResult, check_learn, data_record, resolve_device

    started = time.monotonic()
    check_residual_config(config)
    learn = check_learn(learn)
    quantizer = config.quantizer_spec().quantizer()
    n = learn.shape[0]
    train_rows, val_rows = held_out_rows(n, config.seed)
    if len(val_rows) < 2 * VAL_QUERY_SHARE:
        raise SpreadcodeError(f"{n} learn vectors are too few to train a residual model "
                              f"(need at least {2 * VAL_SHARE * VAL_QUERY_SHARE})")
    batch_size = min(config.batch_size, len(train_rows))
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ResidualCatalyzer(
            learn.shape[1], quantizer, config.hidden, config.hidden_decoder,
            config.hidden_shortlist,
            learn_output_norm(learn[train_rows]) if config.constant_norm else None,
            config.hidden_chain, None,
            config.chain_dim if config.chain_dim is not None
            and learn.shape[1] > config.chain_dim else None)
    x = torch.from_numpy(learn[train_rows])
    model.fit_preprocessing(x)
    if model.chain_dim is not None:
        model.init_chain_projection(model.preprocess(x))
    model.to(device)
    x, x_val = x.to(device), torch.from_numpy(learn[val_rows]).to(device)
    # The crowding term's bank: the CROWDING_BANK rows that follow the batch in the epoch's
    # order (wrapping round), never the batch's own.
    bank_size = min(CROWDING_BANK, x.shape[0] - batch_size)
    crowding = config.crowding if model.output_norm is not None \
        and bank_size >= CROWDING_NEIGHBOURS else 0.0
    unit_rows = nn.functional.normalize(x, dim=1) if crowding else None
    optimizer = adam(model.parameters(), config.lr, config.weight_decay)
    bfloat16 = config.mixed_precision and bfloat16_native(device)
    rng = np.random.default_rng(config.seed)
    noise_rng = torch.Generator(device).manual_seed(config.seed)
    steps = x.shape[0] // batch_size
    most_epochs = epoch_cap(config, len(train_rows))
    budget_s = time_budget(config, len(train_rows))
    planned = most_epochs if budget_s is None else None
    history, best, interrupted, step_count = [], BestEpoch(model), False, 0
    unit = float(model.scale) ** -2  # preprocessed squared error -> input units
    with epoch_progress(planned, "train residual", progress) as bar:
        try:
            epoch = 0
            while planned is None or epoch < planned:
                epoch_start = time.monotonic()
                order = torch.from_numpy(rng.permutation(x.shape[0])).to(device)
                model.train()
                loss_sum = 0.0
                for step in range(steps):
                    lr = one_cycle_lr(config.lr,
                                      step_count / ((planned or most_epochs or 1) * steps))
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    terms = {}
                    if crowding:
                        after = torch.arange((step + 1) * batch_size,
                                             (step + 1) * batch_size + bank_size, device=device)
                        terms = {"bank": unit_rows[order[after % len(order)]],
                                 "crowding": crowding}
                    with mixed_precision(device, bfloat16):
                        loss = model.training_loss(
                            x[order[step * batch_size:(step + 1) * batch_size]], config.aux,
                            config.noise, noise_rng, **terms)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach())
                    step_count += 1
                epoch += 1
                val_mse = _held_out_error(model, x_val) * unit
                best.offer(epoch, -val_mse)
                history.append({"epoch": epoch, "loss": loss_sum / steps * unit,
                                "val_mse": val_mse, "seconds": time.monotonic() - epoch_start})
                out_of_time = (budget_s is not None
                               and time.monotonic() - started >= budget_s)
                if budget_s is not None:
                    planned = plan_epochs(budget_s, most_epochs,
                                          time.monotonic() - started,
                                          [row["seconds"] for row in history], planned)
                    if bar is not None:
                        bar.total = planned
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"held-out MSE {val_mse:.4f}", refresh=True)
                if out_of_time:
                    break
        except KeyboardInterrupt:
            interrupted = True
    if best.epoch is None:
        best.offer(len(history), -_held_out_error(model, x_val) * unit)
    model.cpu()
    best.restore()
    model.eval()
    fit_shortlist_decoder(model, learn[train_rows], config.seed, progress)
    model.rerank_blend = calibrate_rerank_blend(model, learn[val_rows])
    val_recall = validation_recall(model, learn[val_rows])
    meta = CatalyzerMeta.for_model(model, config.quantizer_spec(), None, {
        "objective": "residual auto-encoder", "seed": config.seed, "epochs": len(history),
        "planned_epochs": planned, "time_budget_s": budget_s,
        "budget_rows": config.budget_rows, "max_vectors": config.max_vectors,
        "batch_size": batch_size, "lr": config.lr, "aux": config.aux,
        "weight_decay": config.weight_decay, "noise": config.noise, "crowding": crowding,
        "optimizer": f"{'adamw' if config.weight_decay else 'adam'}, one-cycle",
        "precision": "bfloat16 autocast" if bfloat16 else "float32",
        "preprocessing": "center, divide by RMS coordinate",
        "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "data": data_record(learn),
        "device": device.type, "best_epoch": best.epoch, "val_mse": -best.score,
        "val_recall": val_recall, "interrupted": interrupted,
    })
    return TrainResult(model, meta, history)
