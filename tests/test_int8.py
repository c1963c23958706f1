"""Row-scaled int8 inference (spreadcode/int8.py, csrc/int8.c): the same arithmetic as a
numpy re-statement of it, close to the float MLP, independent of batches and threads, and
clear errors for what it does not run."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from spreadcode import _codec, int8, lattice
from spreadcode.errors import SpreadcodeError
from spreadcode.residual import _mlp

pytestmark = pytest.mark.skipif(not int8.available(torch.device("cpu")),
                                reason="this torch does not multiply int8 matrices on CPUs")


def trained_mlp(d_in, hidden, d_out, seed=0):
    """An eval-mode encoder-shaped MLP whose BatchNorms hold non-trivial statistics."""
    torch.manual_seed(seed)
    mlp = _mlp(d_in, hidden, d_out)
    with torch.no_grad():
        for layer in mlp:
            if isinstance(layer, nn.BatchNorm1d):
                layer.weight.uniform_(0.5, 2.0)
                layer.bias.uniform_(-0.5, 0.5)
        mlp.train()
        for _ in range(3):
            mlp(torch.randn(512, d_in) * 2 + 0.3)
    return mlp.eval()


def reference(mlp, x):
    """The scheme of `spreadcode.int8` in numpy float64: float64 (n, d_out)."""
    layers = int8.fold_batch_norms(mlp)
    x = x.astype(np.float64)
    top = np.abs(x).max(1, keepdims=True)
    row_scale = top / 127
    rows = np.sign(x) * np.floor(np.abs(x) / np.where(top > 0, row_scale, 1) + 0.5)
    for i, (weight, bias) in enumerate(layers):
        weight = weight.double().numpy()
        col_scale = np.abs(weight).max(1) / 127
        codes = np.sign(weight) * np.floor(np.abs(weight) / col_scale[:, None] + 0.5)
        y = (rows @ codes.T) * row_scale * col_scale + bias.double().numpy()
        if i == len(layers) - 1:
            return y
        y = np.maximum(y, 0)
        top = y.max(1, keepdims=True)
        row_scale = top / 255
        rows = np.floor(y / np.where(top > 0, row_scale, 1) + 0.5)


def test_fold_batch_norms_gives_the_eval_mlp():
    mlp = trained_mlp(20, 64, 7)
    x = torch.randn(100, 20)
    y = x
    for i, (weight, bias) in enumerate(int8.fold_batch_norms(mlp)):
        y = y @ weight.T + bias
        y = torch.relu(y) if i < 2 else y
    with torch.no_grad():
        np.testing.assert_allclose(y.numpy(), mlp(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(192, 512, 12), (108, 1024, 96), (5, 3, 2)])
def test_int8_mlp_is_its_scheme_and_close_to_the_float_mlp(shape):
    """Int8Mlp computes the scheme its docstring states: a float64 re-statement agrees to
    float32 rounding on 95 % of the rows (on the others a hidden value fell within rounding
    of a half-way point and took the next code: one level of 255), and it is within 3 % of
    the float MLP's output."""
    mlp = trained_mlp(*shape)
    x = torch.randn(2000, shape[0]) * 2 + 0.3
    got = int8.Int8Mlp(mlp)(x).numpy()
    assert got.dtype == np.float32 and got.shape == (2000, shape[2])
    want = reference(mlp, x.numpy())
    scale = np.abs(want).max()
    assert np.mean((np.abs(got - want) < 1e-5 * scale).all(1)) > 0.95
    assert np.abs(got - want).max() < 0.01 * scale
    with torch.no_grad():
        exact = mlp(x).numpy()
    assert np.linalg.norm(got - exact) < 0.03 * np.linalg.norm(exact)


def test_int8_rows_do_not_depend_on_their_batch_or_the_thread_count():
    mlp = trained_mlp(96, 256, 12)
    model = int8.Int8Mlp(mlp)
    x = torch.randn(777, 96)
    full = model(x).numpy()
    assert np.array_equal(model(x[500:510]).numpy(), full[500:510])
    assert np.array_equal(model(x.flip(0)).numpy()[::-1], full)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert np.array_equal(model(x).numpy(), full)
    finally:
        torch.set_num_threads(threads)
    assert model(x[:0]).shape == (0, 12)


def test_a_row_of_zeros_and_the_extreme_codes():
    """A zero row quantizes to zeros with scale 0 (no division by zero); the largest entry of
    a row takes code ±127 (signed) or 255 − 128 (after a ReLU)."""
    x = np.array([[0, 0, 0, 0], [1, -2, 0.5, 2], [-3, 1, 1, 1]], dtype=np.float32)
    rows, scale = np.empty(x.shape, np.int8), np.empty(3, np.float32)
    _codec.quantize_rows(x, rows, scale, 2)
    assert rows.tolist() == [[0, 0, 0, 0], [64, -127, 32, 127], [-127, 42, 42, 42]]
    np.testing.assert_allclose(scale, [0, 2 / 127, 3 / 127], rtol=1e-6)
    shifted = np.empty(x.shape, np.int8)
    _codec.quantize_rows(x, shifted, scale, 2, plus_128=True)
    assert shifted.view(np.uint8).tolist() == (rows.astype(int) + 128).tolist()
    sums = np.array([[0, 0, 0], [10, -10, 5], [-1, -2, -3]], dtype=np.int32)
    ones, zero = np.ones(3, np.float32), np.zeros(3, np.int32)
    out, out_scale = np.empty((3, 3), np.int8), np.empty(3, np.float32)
    _codec.requantize_relu(sums, ones, ones, zero, np.zeros(3, np.float32), out, out_scale, 2)
    assert out.tolist() == [[-128, -128, -128], [127, -128, 0], [-128, -128, -128]]
    np.testing.assert_allclose(out_scale, [0, 10 / 255, 0], rtol=1e-6)
    floats = np.empty((3, 3), np.float32)
    _codec.dequantize(sums, np.full(3, 0.5, np.float32), ones, np.full(3, 2, np.int32),
                      np.ones(3, np.float32), floats, 2)
    np.testing.assert_allclose(floats, (sums + 2) * 0.5 + 1)


def test_a_concatenation_quantizes_as_the_built_rows():
    """quantize_rows of (x, y) and of (x, y, difference) give the bytes and scales of the
    rows [x, y] and [x − y, y] built in memory; Int8Mlp and `run_on_concat` agree with
    the module run on the concatenation's quantized rows."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 20)).astype(np.float32)
    y = rng.standard_normal((300, 20)).astype(np.float32) * 3
    for second, difference, built in ((y[:, :7], False, np.hstack([x, y[:, :7]])),
                                      (y, True, np.hstack([x - y, y]))):
        want, want_scale = np.empty(built.shape, np.int8), np.empty(300, np.float32)
        _codec.quantize_rows(np.ascontiguousarray(built), want, want_scale, 1)
        got, got_scale = np.empty(built.shape, np.int8), np.empty(300, np.float32)
        _codec.quantize_rows(x, got, got_scale, 2, np.ascontiguousarray(second), difference)
        assert np.array_equal(got, want) and np.array_equal(got_scale, want_scale)
    mlp = trained_mlp(40, 64, 5)
    model = int8.Int8Mlp(mlp)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    built = torch.cat([xt - yt, yt], 1)
    assert np.array_equal(model(xt, yt, difference=True).numpy(), model(built).numpy())
    assert np.array_equal(int8.run_on_concat(model, xt, yt, difference=True).numpy(),
                          model(built).numpy())
    with torch.no_grad():
        assert torch.equal(int8.run_on_concat(mlp, xt, yt, difference=True), mlp(built))
    with pytest.raises(SpreadcodeError, match="quantize_rows: buffer sizes"):
        _codec.quantize_rows(x, np.empty((300, 27), np.int8), np.empty(300, np.float32), 1,
                             np.ascontiguousarray(y[:, :7]), True)
    with pytest.raises(SpreadcodeError, match="a difference needs y"):
        _codec.quantize_rows(x, np.empty((300, 20), np.int8), np.empty(300, np.float32), 1,
                             None, True)


def test_the_kernels_refuse_buffers_of_the_wrong_size():
    f32, i32, i8 = np.float32, np.int32, np.int8
    with pytest.raises(SpreadcodeError, match="quantize_rows: buffer sizes"):
        _codec.quantize_rows(np.zeros((4, 3), f32), np.zeros((4, 2), i8), np.zeros(4, f32), 1)
    sums, ones = np.zeros((4, 3), i32), np.ones(3, f32)
    with pytest.raises(SpreadcodeError, match="dequantize: buffer sizes"):
        _codec.dequantize(sums, np.ones(3, f32), ones, np.zeros(3, i32), ones,
                          np.zeros((4, 3), f32), 1)
    with pytest.raises(SpreadcodeError, match="requantize_relu: buffer sizes"):
        _codec.requantize_relu(sums, np.ones(4, f32), ones, np.zeros(3, i32), ones,
                               np.zeros((4, 3), i8), np.zeros(2, f32), 1)
    wide = _codec.INT8_MAX_WIDTH + 1
    with pytest.raises(SpreadcodeError, match="at most"):
        _codec.requantize_relu(np.zeros((1, wide), i32), np.ones(1, f32), np.ones(wide, f32),
                               np.zeros(wide, i32), np.ones(wide, f32),
                               np.zeros((1, wide), i8), np.zeros(1, f32), 1)


def test_what_int8_inference_refuses():
    with pytest.raises(SpreadcodeError, match="Linear, BatchNorm1d and ReLU"):
        int8.Int8Mlp(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).eval())
    wide = nn.Sequential(nn.Linear(2, int8.MAX_WIDTH + 1), nn.ReLU(),
                         nn.Linear(int8.MAX_WIDTH + 1, 2)).eval()
    with pytest.raises(SpreadcodeError, match=f"at most {int8.MAX_WIDTH}"):
        int8.Int8Mlp(wide)
    assert not int8.available(torch.device("meta"))


@pytest.mark.parametrize("k", [1, 5, 1024, 1025, 2100])
@pytest.mark.parametrize("extreme", [False, True])
def test_both_routes_of_the_int8_products_give_the_exact_integer_sums(k, extreme):
    """int8_products sums through torch._int_mm (CPUs with int8 dot products) or through
    float32 products of at most EXACT_FLOAT32_TERMS terms (the others): both are the exact
    integer sums, for inputs long enough to need several float32 parts and for the largest
    magnitudes the scheme produces (rows −128 and 127, weights ±127)."""
    rng = np.random.default_rng(k)
    if extreme:
        rows = np.full((6, k), -128, np.int8)
        rows[1::2] = 127
        codes = torch.full((k, 8), 127, dtype=torch.int8)
        codes[:, ::2] = -127
    else:
        rows = rng.integers(-128, 128, (6, k)).astype(np.int8)
        codes = torch.from_numpy(rng.integers(-127, 128, (k, 8)).astype(np.int8))
    exact = rows.astype(np.int64) @ codes.numpy().astype(np.int64)
    for native in (True, False):
        sums = int8.int8_products(rows, codes, native=native)
        assert sums.dtype == np.int32 and np.array_equal(sums, exact)


def test_the_mlp_gives_the_same_floats_through_either_product(monkeypatch):
    """Int8Mlp's layer-by-layer route gives the same floats, bit for bit, whichever way the
    products are summed (a hidden layer wider than EXACT_FLOAT32_TERMS included): codes do
    not depend on the CPU's int8 instructions."""
    model = int8.Int8Mlp(trained_mlp(12, 1100, 40))
    model.fused = None
    x = torch.randn(300, 12) * 2 + 0.3
    outputs = []
    for native in (True, False):
        monkeypatch.setattr(_codec, "INT8_FUSED", native)
        outputs.append(model(x).numpy())
    assert np.array_equal(outputs[0], outputs[1])


fused_only = pytest.mark.skipif(not _codec.INT8_FUSED,
                                reason="the fused int8 kernel needs a CPU with AVX512-VNNI")


@fused_only
@pytest.mark.parametrize("shape,n", [((192, 512, 12), 2048), ((108, 1024, 96), 1001),
                                     ((8, 20, 3), 7), ((12, 100, 100), 1), ((4, 64, 130), 97)])
def test_the_fused_kernel_gives_the_int_mm_route_floats(shape, n):
    """Where the CPU has AVX512-VNNI and every layer's inputs are a multiple of 4, Int8Mlp
    runs the fused kernel; its outputs are the torch._int_mm route's, bit for bit, for row
    counts that fill no tile and output widths that fill no panel."""
    model = int8.Int8Mlp(trained_mlp(*shape))
    assert model.fused is not None
    x = torch.randn(n, shape[0]) * 2 + 0.3
    fused = model(x).numpy()
    model.fused = None
    assert np.array_equal(fused, model(x).numpy())
    copied = pickle.loads(pickle.dumps(model))
    assert copied.fused is not None and np.array_equal(copied(x).numpy(), fused)


@fused_only
def test_layers_the_fused_kernel_does_not_take_run_through_int_mm():
    """Inputs that are not a multiple of 4 wide leave the fused kernel out; FusedInt8Mlp
    refuses layers that do not chain."""
    assert int8.Int8Mlp(trained_mlp(5, 3, 2)).fused is None
    i8, f32, i32 = np.int8, np.float32, np.int32
    layer = (np.zeros((8, 4), i8), np.ones(4, f32), np.zeros(4, i32), np.zeros(4, f32))
    with pytest.raises(SpreadcodeError, match="does not chain"):
        _codec.FusedInt8Mlp([layer, layer])
    with pytest.raises(SpreadcodeError, match="does not chain"):
        _codec.FusedInt8Mlp([(np.zeros((6, 4), i8),) + layer[1:]])
    model = _codec.FusedInt8Mlp([layer])
    with pytest.raises(SpreadcodeError, match="FusedInt8Mlp: buffer sizes"):
        model(np.zeros((3, 8), np.uint8), np.ones(3, f32), np.zeros((3, 5), f32), 1)


@fused_only
def test_the_fused_greedy_encoder_is_its_steps_and_refuses_stages_that_do_not_chain():
    """FusedGreedyEncoder (the residual model's greedy encoding in one call) gives the codes
    of its steps run one by one: the first encoder reads x, the later ones [x − x̂, x̂]; each
    stage's code is the nearest point's; the first decoder sets x̂ from the unit point z,
    each later one adds its output on [z, x̂]. It refuses stages that do not chain, the last
    stage with a decoder, and inputs or a table of the wrong size."""
    mlps = [int8.Int8Mlp(trained_mlp(*shape, seed=s)) for s, shape in enumerate(
        [(8, 16, 4), (4, 16, 8), (16, 16, 4), (12, 16, 8), (16, 16, 4)])]
    f0, g0, f1, g1, f2 = (mlp.fused for mlp in mlps)
    sphere, unit = lattice.tables(4, 2), np.float32(2 ** -0.5)  # S(4, 2): 24 points
    stages = [(f0, sphere, unit, g0), (f1, sphere, unit, g1), (f2, sphere, unit, None)]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    want, xh = [], None
    for m, (f, g) in enumerate(zip(mlps[0::2], mlps[1::2] + [None])):
        y = f(x) if m == 0 else f(x, xh, difference=True)
        want.append(lattice.quantize(y.numpy(), 2))
        if g is not None:
            z = torch.from_numpy(lattice.decode(want[-1], 4, 2).astype(np.float32) * unit)
            xh = g(z) if m == 0 else xh + g(z, xh)
    encoder = _codec.FusedGreedyEncoder(stages, 8)
    for threads in 1, 2:
        codes = encoder(x.numpy(), None, threads)
        assert len(codes) == 3 and all(np.array_equal(c, w) for c, w in zip(codes, want))
    assert all(len(set(w.tolist())) > 2 for w in want)  # codes that depend on the rows
    with pytest.raises(SpreadcodeError, match="no stages"):
        _codec.FusedGreedyEncoder([], 8)
    for bad in ([stages[0]], [stages[0][:3] + (None,)] + stages[1:],
                [stages[0], stages[1], stages[2][:3] + (g1,)], [stages[1]] + stages[1:],
                [stages[0], (f0,) + stages[1][1:], stages[2]],
                [stages[0], stages[1][:3] + (g0,), stages[2]]):
        with pytest.raises(SpreadcodeError, match="stage [0-2] does not chain"):
            _codec.FusedGreedyEncoder(bad, 8)
    with pytest.raises(SpreadcodeError, match="buffer sizes"):
        encoder(np.zeros((3, 9), np.float32), None, 1)
    with pytest.raises(SpreadcodeError, match="table: buffer sizes"):
        encoder(x.numpy(), np.zeros((23, 8), np.float32), 1)
