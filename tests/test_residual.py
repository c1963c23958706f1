"""Residual lattice models (spreadcode/residual.py): stages, training, the model file, and
search through Index and the CLI, which must agree with each other and with a direct
computation."""
import hashlib
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import spreadcode
from helpers import assert_clean_error, run
from spreadcode import _codec, int8, losses, residual, vecio
from spreadcode.catalyzer import catalyzer_bytes, load_catalyzer, save_catalyzer
from spreadcode.collection import DECODE_MIN_ROWS, open_collection
from spreadcode.errors import SpreadcodeError
from spreadcode.quantizer import QuantizerSpec
from spreadcode.knn import exact_knn
from spreadcode.sample import load_sample
from spreadcode.search import int8_rows, int8_vectors, rerank_candidates, residual_rerank
from spreadcode.torchutil import bfloat16_native
from spreadcode.training import command_config

TINY = residual.ResidualConfig(blocks=residual.stage_blocks(24), hidden=32, hidden_decoder=64,
                               hidden_chain=48, hidden_shortlist=32, epochs=4, batch_size=64,
                               device="cpu")


@pytest.fixture(scope="module")
def trained():
    """A tiny residual model (one S(12, 6) and one S(6, 4) stage) trained 4 epochs on 3,000
    sample learn vectors."""
    return residual.train_residual(load_sample().learn[:3000], TINY, progress=False)


def test_stage_blocks():
    assert residual.stage_blocks(64) == ((12, 6),) * 4
    assert residual.stage_blocks(24) == ((12, 6), (6, 4))
    assert residual.stage_blocks(8) == ((6, 4),)
    for bad in (0, 12, 1032, 64.0, True):
        with pytest.raises(SpreadcodeError, match="multiple of 8"):
            residual.stage_blocks(bad)


def test_one_cycle_lr():
    assert residual.one_cycle_lr(1.0, 0.0) == pytest.approx(0.04)
    assert residual.one_cycle_lr(1.0, 0.05) == pytest.approx(1.0)
    assert residual.one_cycle_lr(1.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    values = [residual.one_cycle_lr(1.0, p / 100) for p in range(5, 101)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("n, n_val", [(3000, 300), (20_000, 2000), (52_225, 2000), (15, 1)])
def test_held_out_rows_are_a_tenth_at_most_val_max(n, n_val):
    train_rows, val_rows = residual.held_out_rows(n, 3)
    assert len(val_rows) == n_val == min(max(1, n // residual.VAL_SHARE), residual.VAL_MAX)
    assert np.array_equal(np.sort(np.concatenate([train_rows, val_rows])), np.arange(n))
    assert np.all(np.diff(train_rows) > 0) and np.all(np.diff(val_rows) > 0)
    again = residual.held_out_rows(n, 3)
    assert np.array_equal(again[1], val_rows) and np.array_equal(again[0], train_rows)


def test_too_few_learn_vectors_for_a_held_out_recall_are_refused():
    least = 2 * residual.VAL_SHARE * residual.VAL_QUERY_SHARE
    with pytest.raises(SpreadcodeError, match=f"{least - 1} learn vectors are too few .*at least {least}"):
        residual.train_residual(load_sample().learn[:least - 1], TINY, progress=False)


def test_training_is_deterministic_and_learns(trained):
    again = residual.train_residual(load_sample().learn[:3000], TINY, progress=False)
    assert catalyzer_bytes(trained.model, trained.meta) == catalyzer_bytes(again.model, again.meta)
    training = trained.meta.training
    assert training["epochs"] == 4 and 1 <= training["best_epoch"] <= 4
    assert set(training["val_recall"]) == {"1", "10", "100"}
    assert trained.meta.quantizer == QuantizerSpec("product", 18, ((12, 6), (6, 4)))
    assert trained.meta.lam is None and trained.meta.sha256 is None
    assert training["weight_decay"] == residual.WEIGHT_DECAY > 0
    assert training["optimizer"] == "adamw, one-cycle"
    # The auto-encoder's reconstruction beats the mean vector (the best code-free guess) on
    # held-out vectors; decoded onto the unit sphere, it points closer to them than the mean.
    base = load_sample().base[:500]
    codes = trained.model.encode(base)
    assert codes.dtype == np.uint8 and codes.shape == (500, trained.model.quantizer.code_bytes)
    decoded = trained.model.decode(codes)
    assert decoded.shape == (500, 96) and decoded.dtype == np.float32
    with torch.no_grad():
        xh, _ = trained.model(torch.from_numpy(base))
    mse = ((trained.model.unprocess(xh).numpy() - base) ** 2).sum(1).mean()
    assert mse < ((base - base.mean(0)) ** 2).sum(1).mean()
    mean_direction = base.mean(0) / np.linalg.norm(base.mean(0))
    assert (decoded * base).sum(1).mean() > (base @ mean_direction).mean()
    assert training["val_mse"] == pytest.approx(min(h["val_mse"] for h in trained.history))


def test_weight_decay_changes_the_weights_and_bad_values_are_rejected(trained):
    plain = residual.train_residual(load_sample().learn[:3000], replace(TINY, weight_decay=0.0),
                                    progress=False)
    assert plain.meta.training["optimizer"] == "adam, one-cycle"
    assert not torch.equal(plain.model.g[1][0].weight, trained.model.g[1][0].weight)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(SpreadcodeError, match="weight_decay must be >= 0"):
            residual.train_residual(load_sample().learn[:300], replace(TINY, weight_decay=bad),
                                    progress=False)


def test_denoising_noise_reads_only_the_encoders_input(trained):
    """The loss with noise is the clean target against the chain run on the noisy input
    (drawn from the generator); without noise it is the plain loss."""
    model = trained.model
    x = torch.from_numpy(load_sample().learn[:64])
    with torch.no_grad():
        plain = model.training_loss(x, 0.0)
        assert torch.equal(model.training_loss(x, 0.0, 0.0, torch.Generator().manual_seed(1)),
                           plain)
        noisy = model.training_loss(x, 0.0, 0.3, torch.Generator().manual_seed(1))
        target = model.preprocess(x)
        draw = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
        xh, _ = model._chain(target + 0.3 * draw)
        assert torch.equal(noisy, (xh - target).pow(2).sum(1).mean())
        assert noisy > plain


def test_training_noise_is_seeded_recorded_and_checked(trained):
    config = replace(TINY, noise=TINY.noise + 0.2)  # another noise than the fixture's
    first = residual.train_residual(load_sample().learn[:3000], config, progress=False)
    again = residual.train_residual(load_sample().learn[:3000], config, progress=False)
    assert catalyzer_bytes(first.model, first.meta) == catalyzer_bytes(again.model, again.meta)
    assert first.meta.training["noise"] == TINY.noise + 0.2
    assert trained.meta.training["noise"] == TINY.noise
    assert not torch.equal(first.model.g[1][0].weight, trained.model.g[1][0].weight)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(SpreadcodeError, match="noise must be >= 0"):
            residual.train_residual(load_sample().learn[:300], replace(TINY, noise=bad),
                                    progress=False)


def test_crowding_is_the_mean_cosine_to_the_nearest_bank_rows():
    rng = np.random.default_rng(0)
    rows, bank = (torch.nn.functional.normalize(
        torch.from_numpy(rng.standard_normal(shape).astype(np.float32)), dim=1)
        for shape in ((7, 5), (20, 5)))
    expected = [np.sort((rows[i] @ bank.T).numpy())[-3:].mean() for i in range(7)]
    np.testing.assert_allclose(losses.crowding(rows, bank, 3).numpy(), expected, rtol=1e-6)


def test_the_crowding_term_is_the_decoded_vectors_excess_over_their_own(trained):
    """The term adds weight × (scale · sphere radius)² × the batch's mean excess of the
    decoded vectors' crowding over their own vectors'."""
    model, learn = trained.model, load_sample().learn
    x = torch.from_numpy(learn[:64])
    bank = torch.nn.functional.normalize(torch.from_numpy(learn[100:400]), dim=1)
    with torch.no_grad():
        plain = model.training_loss(x, 0.0)
        weighted = model.training_loss(x, 0.0, bank=bank, crowding=0.5)
        xh, _ = model._chain(model.preprocess(x))
        decoded = torch.nn.functional.normalize(model.unprocess(xh), dim=1)
        truth = torch.nn.functional.normalize(x, dim=1)
        excess = (losses.crowding(decoded, bank, residual.CROWDING_NEIGHBOURS)
                  - losses.crowding(truth, bank, residual.CROWDING_NEIGHBOURS)).mean()
    assert abs(float(excess)) > 1e-3
    unit = (float(model.scale) * model.output_norm) ** 2
    assert float(weighted) == pytest.approx(float(plain + 0.5 * unit * excess), rel=1e-5)


def test_crowding_banks_other_rows_and_applies_only_on_a_sphere(trained, monkeypatch):
    """Each step's bank is unit rows of other training vectors than the batch's; the weight
    is recorded, 0 for a learn set whose norms vary, and checked."""
    assert trained.meta.training["crowding"] == residual.CROWDING_WEIGHT > 0
    learn = load_sample().learn[:300]
    steps, plain_loss = [], residual.ResidualCatalyzer.training_loss

    def recording(model, x, *args, **terms):
        steps.append((x, terms))
        return plain_loss(model, x, *args, **terms)

    monkeypatch.setattr(residual.ResidualCatalyzer, "training_loss", recording)
    result = residual.train_residual(learn, replace(TINY, epochs=1), progress=False)
    assert result.meta.training["crowding"] == residual.CROWDING_WEIGHT and steps
    train_rows = {tuple(row) for row in torch.nn.functional.normalize(
        torch.from_numpy(learn[residual.held_out_rows(300, TINY.seed)[0]]), dim=1).numpy()}
    for x, terms in steps:
        assert terms["crowding"] == residual.CROWDING_WEIGHT
        bank = {tuple(row) for row in terms["bank"].numpy()}
        assert bank <= train_rows and len(bank) == len(train_rows) - len(x)
        assert not bank & {tuple(row) for row in
                           torch.nn.functional.normalize(x, dim=1).numpy()}
    steps.clear()
    varying = learn * np.linspace(0.5, 1.5, len(learn), dtype=np.float32)[:, None]
    result = residual.train_residual(varying, replace(TINY, epochs=1), progress=False)
    assert result.meta.training["crowding"] == 0.0 and all(not terms for _, terms in steps)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(SpreadcodeError, match="crowding must be >= 0"):
            residual.train_residual(learn, replace(TINY, crowding=bad), progress=False)


def test_mixed_precision_is_recorded_and_only_changes_native_bfloat16_machines(trained):
    """Steps run under bfloat16 autocast where the CPU multiplies bfloat16 natively (the
    training record says which); elsewhere the flag changes nothing, bit for bit. Either way
    the model reconstructs about as well."""
    native = bfloat16_native(torch.device("cpu"))
    assert trained.meta.training["precision"] == ("bfloat16 autocast" if native else "float32")
    fp32 = residual.train_residual(load_sample().learn[:3000],
                                   replace(TINY, mixed_precision=False), progress=False)
    assert fp32.meta.training["precision"] == "float32"
    if not native:
        assert (catalyzer_bytes(trained.model, trained.meta)
                == catalyzer_bytes(fp32.model, fp32.meta))
    assert trained.meta.training["val_mse"] == pytest.approx(fp32.meta.training["val_mse"], rel=0.05)


def test_encoding_matches_the_training_pass(trained):
    """encode + decode give the same reconstruction as the straight-through forward pass, put
    on the sphere of the learn set's norm (the sample's vectors are unit vectors)."""
    model, base = trained.model, load_sample().base[:300]
    with torch.no_grad():
        xh, _ = model(torch.from_numpy(base))
    on_sphere = torch.nn.functional.normalize(model.unprocess(xh), dim=1) * model.output_norm
    exact = "float32"
    np.testing.assert_allclose(model.decode(model.encode(base, precision=exact), precision=exact),
                               on_sphere.numpy(), rtol=1e-4, atol=1e-5)


def test_constant_norm_learn_sets_are_decoded_onto_their_sphere(trained):
    """A learn set of one norm (the sample: unit vectors) gives a model whose two decoders
    return vectors of exactly that norm; a learn set whose norms vary, or constant_norm off,
    gives one that decodes as trained (and no output_norm in its file)."""
    learn = load_sample().learn[:3000]
    norm = residual.learn_output_norm(learn[residual.held_out_rows(len(learn), TINY.seed)[0]])
    assert norm == pytest.approx(1.0, abs=1e-4)
    assert trained.model.output_norm == norm == trained.meta.output_norm
    assert trained.meta.arch()["output_norm"] == norm
    codes = trained.model.encode(load_sample().base[:200])
    for decoded in (trained.model.decode(codes), trained.model.decode_shortlist(codes)):
        np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), norm, rtol=1e-5)
    assert residual.learn_output_norm(3 * learn) == pytest.approx(3 * norm)
    varying = learn * np.linspace(0.5, 1.5, len(learn), dtype=np.float32)[:, None]
    assert residual.learn_output_norm(varying) is None
    assert residual.learn_output_norm(np.zeros_like(learn)) is None
    for result in (residual.train_residual(varying, replace(TINY, epochs=1), progress=False),
                   residual.train_residual(learn, replace(TINY, epochs=1, constant_norm=False),
                                           progress=False)):
        assert result.model.output_norm is None and "output_norm" not in result.meta.arch()
        base = load_sample().base[:100]
        with torch.no_grad():
            xh, _ = result.model(torch.from_numpy(base))
        codes = result.model.encode(base, precision="float32")
        np.testing.assert_allclose(result.model.decode(codes, precision="float32"),
                                   result.model.unprocess(xh).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_first_stage_table_changes_no_result_and_follows_the_weights(trained, monkeypatch,
                                                                     precision):
    """Once g_0 has decoded as many rows as block 0 has points, it is looked up by rank in a
    table (one per arithmetic: float32, or int8 under "auto" on a CPU): codes (greedy and
    beam) and decoded vectors are those of g_0 itself, a small encode builds no table, and a
    change of the weights replaces the table."""
    import copy

    tabled, direct = copy.deepcopy(trained.model), copy.deepcopy(trained.model)
    sample, count = load_sample(), 64416  # S(12, 6), TINY's first stage
    vectors = np.vstack([sample.learn, sample.base] * 4)[:count + 500]
    tabled.encode(sample.base[:1000], precision=precision)
    assert tabled._first_tables == {}
    monkeypatch.setattr(residual, "FIRST_TABLE_BYTES", 0)
    want_codes = direct.encode(vectors, precision=precision)
    want = direct.decode(want_codes, precision=precision)
    assert direct._first_tables == {}
    monkeypatch.undo()
    codes = tabled.encode(vectors, precision=precision)
    (arithmetic, table), = tabled._first_tables.items()
    assert table.shape == (count, 96)
    assert arithmetic == ("int8" if precision == "auto" and tabled._runs_int8("auto")
                          else "float32", False)
    g0 = tabled._int8_chain()[1][0]
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(tabled.decode(codes, precision=precision), want)
    monkeypatch.setattr(residual, "FIRST_TABLE_BYTES", 0)
    want_beam = direct.encode(vectors[:2000], beam=2, precision=precision)
    monkeypatch.undo()

    def not_called(*args):
        raise AssertionError("g_0 ran although its table is built")

    def int8_but_g0(mlp, *args, run=int8.Int8Mlp.__call__, **kwargs):
        return not_called() if mlp is g0 else run(mlp, *args, **kwargs)

    monkeypatch.setattr(tabled.g[0], "forward", not_called)
    monkeypatch.setattr(int8.Int8Mlp, "__call__", int8_but_g0)
    np.testing.assert_array_equal(tabled.encode(vectors[:2000], beam=2, precision=precision),
                                  want_beam)
    monkeypatch.undo()
    for model in tabled, direct:
        with torch.no_grad():
            model.g[0][-1].bias.add_(0.5)
    monkeypatch.setattr(residual, "FIRST_TABLE_BYTES", 0)
    want = direct.decode(codes[:3000], precision=precision)
    monkeypatch.undo()
    np.testing.assert_array_equal(tabled.decode(codes[:3000], precision=precision), want)
    assert tabled._first_tables == {}  # stale, and 3,000 rows do not pay for a new one


def test_a_search_that_will_decode_a_table_of_rows_builds_the_table_first(trained, monkeypatch):
    """A search whose re-ranking will decode at least as many codes as block 0 has points
    tells the model first (`ResidualCatalyzer.expect_decodes`): g_0's table is built before
    the first decode, so g_0 runs on the table's rows only (not on the first 64,416 decoded
    rows and then on the table's), and the results are those of a model without a table.
    Rows announced are not counted again when decoded."""
    import copy

    sample, count = load_sample(), 64416  # S(12, 6), TINY's first stage
    vectors = np.vstack([sample.learn, sample.base] * 4)[:count + 2000]
    codes = copy.deepcopy(trained.model).encode(vectors)

    def search(model):
        index = spreadcode.Index.from_catalyzer(model, trained.meta)
        with monkeypatch.context() as patch:  # the codes, without counting their encoding
            patch.setattr(model, "encode", lambda *args, **kwargs: codes)
            index.add(vectors)
        return index.search(sample.query[:400], k=100)  # 400 x 200 candidates

    model, g0_rows = copy.deepcopy(trained.model), []
    g0_int8, g0_float = model._int8_chain()[1][0], model.g[0].forward
    run_int8 = int8.Int8Mlp.__call__
    monkeypatch.setattr(int8.Int8Mlp, "__call__", lambda mlp, x, *args, **kwargs: (
        g0_rows.append(len(x)) if mlp is g0_int8 else None) or run_int8(mlp, x, *args, **kwargs))
    monkeypatch.setattr(model.g[0], "forward", lambda x: g0_rows.append(len(x)) or g0_float(x))
    got = search(model)
    assert model._first_tables and sum(g0_rows) == count
    monkeypatch.undo()
    monkeypatch.setattr(residual, "FIRST_TABLE_BYTES", 0)
    want = search(copy.deepcopy(trained.model))
    monkeypatch.undo()
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])

    fresh = copy.deepcopy(trained.model)
    fresh.expect_decodes(count - 1)
    fresh.decode(codes[:count - 1])
    assert fresh._first_tables == {}  # count - 1 rows in all, not twice as many
    fresh.decode(codes[:1])
    assert fresh._first_tables


def best_path_codes(model, base, counts):
    """The codes of the path of least reconstruction error in the tree whose stage m tries
    the counts[m] lattice points nearest its encoder's output, computed path by path from
    the model's parts; the last stage is scored as the model decodes (on the sphere of its
    ``output_norm`` when it has one)."""
    blocks = model.quantizer.blocks
    with torch.no_grad():
        xs = model.preprocess(torch.from_numpy(base))
        paths = [((), None)]  # (the int8 points of the stages so far, x̂)
        for m, (block, count) in enumerate(zip(blocks, counts)):
            grown = []
            for points, xh in paths:
                y = torch.nn.functional.normalize(model._encode_stage(m, xs, xh), dim=1)
                near = residual.lattice.nearest_candidates(y.numpy(), block.param, 2)
                for i in range(count):
                    z = np.ascontiguousarray(near[:, i])
                    unit = torch.from_numpy(z / np.float32(block.param ** 0.5))
                    grown.append((points + (z,), model._decode_stage(m, unit, xh)))
            paths = grown
        errors, codes = [], []
        for points, xh in paths:
            decoded = model.unprocess(xh)
            if model.output_norm is not None:
                decoded = torch.nn.functional.normalize(decoded, dim=1) * model.output_norm
            errors.append((decoded - torch.from_numpy(base)).pow(2).sum(1).numpy())
            codes.append(model.quantizer.join_block_codes(
                [residual.lattice.encode(z, block.param) for z, block in zip(points, blocks)]))
    best = np.argmin(np.stack(errors, 1), axis=1)
    return np.stack(codes, 1)[np.arange(len(base)), best]


@pytest.mark.parametrize("sphere", [True, False])
def test_beam_search_is_the_best_of_the_candidate_tree(trained, monkeypatch, sphere):
    """With two stages and beam 2, the beam keeps every path of the tree (2 candidates per
    stage): its codes are the path of least reconstruction error. With three stages, beam 2
    branches the last two (`residual.beam_first_branch`) and beam 4 all three."""
    model, base = trained.model, load_sample().base[:200]
    assert model.output_norm is not None
    if not sphere:
        monkeypatch.setattr(model, "output_norm", None)
    expected = best_path_codes(model, base, [2, 2])
    assert np.array_equal(model.encode(base, beam=2, precision="float32"), expected)
    # a wider beam finds no more
    assert np.array_equal(model.encode(base, beam=5, precision="float32"), expected)
    config = replace(TINY, blocks=((6, 4),) * 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        deeper = residual.ResidualCatalyzer(96, config.quantizer_spec().quantizer(), 32, 64, 32,
                                            model.output_norm)
    deeper.fit_preprocessing(torch.from_numpy(load_sample().learn[:1000]))
    deeper.eval()
    assert [residual.beam_first_branch(3, beam) for beam in (2, 3, 4, 8)] == [1, 0, 0, 0]
    for beam, counts in ((2, [1, 2, 2]), (4, [2, 2, 2])):
        assert np.array_equal(deeper.encode(base, beam=beam, precision="float32"),
                              best_path_codes(deeper, base, counts))


def test_beam_search_lowers_the_reconstruction_error(trained):
    model, base = trained.model, load_sample().base[:400]
    error = lambda codes: float(((model.decode(codes) - base) ** 2).sum(1).mean())  # noqa: E731
    greedy, beam = model.encode(base), model.encode(base, beam=2)
    assert beam.dtype == np.uint8 and beam.shape == greedy.shape
    assert error(beam) < error(greedy)
    assert np.array_equal(model.encode(base, beam=1), greedy)
    assert np.array_equal(model.encode(base[::-1], beam=2), beam[::-1])  # rows are independent
    for bad in (0, -2, 2.0, True, residual.MAX_BEAM + 1):
        with pytest.raises(SpreadcodeError, match="encoding beam must be an integer"):
            model.encode(base, beam=bad)


@pytest.mark.parametrize("native", [False, True])
def test_encoding_precision_auto_is_bfloat16_only_where_native(trained, monkeypatch, native):
    """precision "auto" multiplies in bfloat16 only on devices that do so natively (forced
    here, emulated where the CPU lacks it; greedy encoding's int8, tested below, kept out):
    elsewhere its codes are float32's to the bit; where it does, the codes that change are
    near-ties between lattice points, so the reconstruction error stays within 1 %, and rows
    stay independent of their batch. An unknown precision is refused."""
    from spreadcode import torchutil

    monkeypatch.setattr(torchutil, "bfloat16_native", lambda device: native)
    monkeypatch.setattr(int8, "available", lambda device: False)
    model, base = trained.model, load_sample().base[:1000]
    error = lambda codes: float(((model.decode(codes) - base) ** 2).sum(1).mean())  # noqa: E731
    exact, auto = model.encode(base, precision="float32"), model.encode(base)
    for beam in (1, 2):
        assert np.array_equal(model.encode(base[::-1], beam, "auto")[::-1],
                              model.encode(base, beam, "auto"))
    if not native:
        assert np.array_equal(auto, exact)
        assert np.array_equal(model.encode(base, beam=2),
                              model.encode(base, beam=2, precision="float32"))
    else:
        assert 0.8 < (auto == exact).all(1).mean() < 1
        assert error(auto) == pytest.approx(error(exact), rel=0.01)
    for decode in (model.decode, model.decode_shortlist):
        rows = decode(exact)
        # the same floats in any batch of at least DECODE_MIN_ROWS
        assert np.array_equal(decode(exact[:100], DECODE_MIN_ROWS + 5), rows[:100])
        if not native:
            assert np.array_equal(rows, decode(exact, precision="float32"))
        else:
            assert 0 < np.abs(rows - decode(exact, precision="float32")).max() < 0.02
    for bad in ("bfloat16", "fp32", None):
        with pytest.raises(SpreadcodeError, match="precision must be one of"):
            model.encode(base, precision=bad)
        with pytest.raises(SpreadcodeError, match="precision must be one of"):
            model.decode(exact, precision=bad)


@pytest.mark.skipif(not int8.available(torch.device("cpu")),
                    reason="this torch does not multiply int8 matrices on CPUs")
def test_the_shortlist_decoder_runs_its_mlp_in_int8_on_cpus(trained, monkeypatch):
    """precision "auto" on a CPU decodes the shortlist as linear(z) + residual_scale ·
    Int8Mlp(mlp)(z) on the sphere (the linear path in float32), within 2 % of float32's
    rows (the tiny model's int8 rounding: about 1 %); rows do not depend on their batch or the thread count; the int8 MLP is built once
    per weights and again when they change; float32 runs where int8 is not available."""
    model = trained.model
    codes = model.encode(load_sample().base[:600])
    rows = model.decode_shortlist(codes)
    net, mlp = model.shortlist, model._int8_shortlist_mlp("auto")
    assert isinstance(mlp, int8.Int8Mlp) and model._int8_shortlist_mlp("float32") is None
    with torch.no_grad():
        points = torch.from_numpy(model.unit_points(codes))
        expected = model._on_sphere(net.linear(points) + net.residual_scale * mlp(points))
    assert np.array_equal(rows, expected.numpy())
    exact = model.decode_shortlist(codes, precision="float32")
    assert 0 < np.linalg.norm(rows - exact) < 0.02 * np.linalg.norm(exact)
    assert np.array_equal(model.decode_shortlist(codes[:100], DECODE_MIN_ROWS + 5), rows[:100])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert np.array_equal(model.decode_shortlist(codes), rows)
    finally:
        torch.set_num_threads(threads)
    assert model._int8_shortlist_mlp("auto") is mlp
    with torch.no_grad():
        net.mlp[0].weight.mul_(1.0)  # a new version of the weights
    assert model._int8_shortlist_mlp("auto") is not mlp
    monkeypatch.setattr(int8, "available", lambda device: False)
    assert model._int8_shortlist_mlp("auto") is None
    assert not np.array_equal(model.decode_shortlist(codes), rows)


def test_greedy_encoding_auto_runs_the_chain_in_int8_on_cpus(monkeypatch):
    """precision "auto" encodes greedily with `spreadcode.int8` on a CPU (a three-stage model:
    f_0..f_2 and g_1 in int8), with a beam (g_2 too) and decodes with it (g_1, g_2): most codes are float32's and
    the others cost < 1 % reconstruction error; decoded rows are within 1 % of float32's;
    rows do not depend on their batch, their order or the thread count; the int8 chain is
    built once per weights and again when they change; the float chain runs where int8 is
    not available or a layer is too wide for it."""
    learn, base = load_sample().learn[:1000], load_sample().base[:1000]
    model = residual.train_residual(learn, replace(TINY, blocks=residual.stage_blocks(40),
                                                   epochs=1), progress=False).model
    error = lambda codes: float(((model.decode(codes) - base) ** 2).sum(1).mean())  # noqa: E731
    exact, auto = model.encode(base, precision="float32"), model.encode(base)
    assert 0.5 < (auto == exact).all(1).mean() < 1
    assert error(auto) == pytest.approx(error(exact), rel=0.01)
    assert np.array_equal(model.encode(base[::-1])[::-1], auto)
    assert np.array_equal(model.encode(base[:7]), auto[:7])
    decoded, exact_rows = model.decode(auto), model.decode(auto, precision="float32")
    assert 0 < np.linalg.norm(decoded - exact_rows) < 0.01 * np.linalg.norm(exact_rows)
    assert np.array_equal(model.decode(auto[:100], DECODE_MIN_ROWS + 5), decoded[:100])
    beam, exact_beam = model.encode(base, beam=2), model.encode(base, 2, "float32")
    assert error(beam) == pytest.approx(error(exact_beam), rel=0.01) and error(beam) < error(auto)
    assert np.array_equal(model.encode(base[::-1], beam=2)[::-1], beam)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert np.array_equal(model.encode(base), auto)
        assert np.array_equal(model.decode(auto), decoded)
    finally:
        torch.set_num_threads(threads)
    chain = model._int8_chain()
    assert model._int8_chain() is chain
    assert [type(mlp) for mlp in chain[0] + chain[1]] == [int8.Int8Mlp] * 6
    with torch.no_grad():
        model.f[1][0].weight.mul_(1.0)  # a new version of the weights
    assert model._int8_chain() is not chain
    monkeypatch.setattr(int8, "available", lambda device: False)
    assert not np.array_equal(model.encode(base), auto)
    assert not np.array_equal(model.encode(base, beam=2), beam)
    assert not np.array_equal(model.decode(auto), decoded)
    monkeypatch.undo()
    monkeypatch.setattr(int8, "MAX_WIDTH", model.hidden_decoder - 1)
    assert not model._runs_int8("auto") and not model._runs_int8("float32")


@pytest.mark.skipif(not _codec.INT8_FUSED,
                    reason="the fused int8 kernels need a CPU with AVX512-VNNI")
@pytest.mark.parametrize("chain_dim", [None, 32])
def test_fused_greedy_encoding_gives_the_stage_loops_codes(monkeypatch, chain_dim):
    """On a CPU with AVX512-VNNI, greedy encoding runs every stage in one compiled call per
    batch (`_codec.FusedGreedyEncoder`): its codes are the stage loop's, bit for bit (a
    three-stage model: g_0 then g_1 added to x̂; with ``chain_dim``, the state P x̂), for
    row counts that fill no tile, on 1 and 2 threads, with g_0 run or looked up in its
    table."""
    sample = load_sample()
    model = residual.train_residual(sample.learn[:1000], replace(
        TINY, blocks=residual.stage_blocks(40), epochs=1, chain_dim=chain_dim),
        progress=False).model
    assert model.chain_dim == chain_dim
    vectors = np.vstack([sample.base, sample.learn])
    assert model._fused_greedy(*model._int8_chain()) is not None

    def fused_and_loop(rows):
        fused = model.encode(rows)
        with monkeypatch.context() as patch:
            patch.setattr(residual.ResidualCatalyzer, "_fused_greedy", lambda *args: None)
            return fused, model.encode(rows)

    threads = torch.get_num_threads()
    try:
        for count in 1, 2:
            torch.set_num_threads(count)
            for n in 1, 47, 97, 2500:
                fused, loop = fused_and_loop(vectors[:n])
                np.testing.assert_array_equal(fused, loop)
        assert model._first_tables == {} and len(np.unique(fused, axis=0)) > 2000
        model.expect_decodes(64416)  # S(12, 6)'s points: the next encode builds g_0's table
        fused, loop = fused_and_loop(vectors)
        assert list(model._first_tables) == [("int8", chain_dim is not None)]
        np.testing.assert_array_equal(fused, loop)
    finally:
        torch.set_num_threads(threads)


def test_searches_in_either_precision_keep_their_own_decoded_rows(trained):
    """An index keeps the rows its searches decoded; a float32 search after a default one
    (bfloat16 where native) decodes again rather than reuse them: its results are those of a
    fresh index's float32 search."""
    base, queries = load_sample().base[:500], load_sample().query[:20]

    def index():
        built = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
        built.add(base, precision="float32")
        return built

    searched = index()
    searched.search(queries, k=10)
    searched.search(queries, k=10, decode_all=True)
    for options in ({}, {"decode_all": True}, {"rerank": 0}):
        got = searched.search(queries, k=10, precision="float32", **options)
        want = index().search(queries, k=10, precision="float32", **options)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert {residual.ModelDecoder(trained.model, "", role, precision=precision).kind
            for role in ("residual", "shortlist") for precision in ("auto", "float32")} == {
        "residual", "shortlist", "residual-float32", "shortlist-float32"}


def test_shortlist_decoder_is_distilled_from_the_full_decoder(trained):
    """On held-out codes, the MLP shortlist decoder reproduces the full decoder better than
    the best affine map of the same points fitted to it (the older models' kind)."""
    from spreadcode.decoders import fit_linear

    model, sample = trained.model, load_sample()
    train_rows, _ = residual.held_out_rows(3000, TINY.seed)
    learn_codes = model.encode(sample.learn[train_rows])
    weight, bias = fit_linear(model.unit_points(learn_codes), model.decode(learn_codes))
    codes = model.encode(sample.base[:2000])
    full = model.decode(codes)
    affine = model.unit_points(codes) @ weight.T + bias
    shortlist_error = ((model.decode_shortlist(codes) - full) ** 2).sum(1).mean()
    assert shortlist_error < 0.8 * ((affine - full) ** 2).sum(1).mean()


@pytest.mark.parametrize("bounds, steps", [((1, 30), 30), ((250, 400), 250)])
def test_shortlist_decoder_fit_is_bounded_in_batches(trained, monkeypatch, bounds, steps):
    """20 epochs of 10 batches (2,700 rows, batches of 256), raised or capped to whole epochs
    within the bounds."""
    import copy

    from torch.optim.optimizer import register_optimizer_step_post_hook

    model, counted = copy.deepcopy(trained.model), []
    monkeypatch.setattr(residual, "SHORTLIST_STEPS", bounds)
    handle = register_optimizer_step_post_hook(lambda *_: counted.append(1))
    try:
        residual.fit_shortlist_decoder(model, load_sample().learn[:2700])
    finally:
        handle.remove()
    assert len(counted) == steps


def test_linear_shortlist_decoder_of_older_models_is_the_least_squares_fit(trained):
    model = residual.ResidualCatalyzer(96, trained.model.quantizer, TINY.hidden,
                                       TINY.hidden_decoder)  # no hidden_shortlist: affine
    state = {name: value for name, value in trained.model.state_dict().items()
             if not name.startswith("shortlist.")}
    assert set(model.load_state_dict(state, strict=False).missing_keys) == {"linear.weight",
                                                                            "linear.bias"}
    learn = load_sample().learn[:3000]
    train_rows, _ = residual.held_out_rows(3000, TINY.seed)
    residual.fit_shortlist_decoder(model, learn[train_rows])
    points = model.unit_points(model.encode(learn[train_rows]))
    fitted = model.decode_shortlist(model.encode(learn[train_rows]), precision="float32")
    # Normal equations: the residual is orthogonal to the points and to the constant.
    design = np.hstack([points, np.ones((len(points), 1), np.float32)]).astype(np.float64)
    np.testing.assert_allclose(design.T @ (learn[train_rows] - fitted), 0, atol=0.05)


def test_the_rerank_blend_is_the_least_squares_mix_of_the_two_decoders(trained):
    """Training sets ``rerank_blend`` from the held-out rows: α minimising
    ‖x − ((1 − α) x̂ + α x̃)‖² over them (x̂ full, x̃ shortlist as int8 rows), clipped to
    [0, MAX_BLEND_SHARE], as α / (1 − α); searches add blend × the shortlist distance."""
    learn = load_sample().learn[:3000]
    _, val_rows = residual.held_out_rows(3000, TINY.seed)
    model, held_out = trained.model, learn[val_rows]
    codes = model.encode(held_out)
    full = model.decode(codes).astype(np.float64)
    short = int8_vectors(int8_rows(model.decode_shortlist(codes))).astype(np.float64)
    shares = np.linspace(0, residual.MAX_BLEND_SHARE, 51)
    errors = [((held_out - (1 - a) * full - a * short) ** 2).sum() for a in shares]
    share = model.rerank_blend / (1 + model.rerank_blend)
    assert model.rerank_blend == residual.calibrate_rerank_blend(model, held_out)
    assert trained.meta.rerank_blend == model.rerank_blend
    assert 0 <= share <= residual.MAX_BLEND_SHARE
    best = shares[int(np.argmin(errors))]
    assert abs(share - best) <= shares[1] or share == residual.MAX_BLEND_SHARE == best
    # a shortlist decoder that is the full one plus noise gets (almost) no weight
    assert residual.calibrate_rerank_blend(_noisy_shortlist(model), held_out) < 0.02


def _noisy_shortlist(model):
    """A copy of ``model`` whose shortlist decoder is its full decoder plus seeded noise."""
    import copy

    twin, rng = copy.deepcopy(model), np.random.default_rng(0)
    twin.decode_shortlist = lambda codes, *args, **kwargs: (
        twin.decode(codes) + rng.normal(0, 0.2, (len(codes), twin.d_in)).astype(np.float32))
    return twin


def test_model_file_round_trip(trained, tmp_path):
    sha, _ = save_catalyzer(trained.model, trained.meta, store=tmp_path)
    model, meta = load_catalyzer(sha, store=tmp_path)
    assert isinstance(model, residual.ResidualCatalyzer)
    assert meta.arch() == {"type": "residual", "d_in": 96, "hidden": 32, "hidden_decoder": 64,
                           "hidden_chain": 48, "hidden_shortlist": 32, "d_out": 18,
                           "output_norm": trained.model.output_norm,
                           "rerank_blend": trained.model.rerank_blend}
    assert model.rerank_blend == trained.model.rerank_blend
    assert meta == replace(trained.meta, sha256=sha, path=meta.path)
    base = load_sample().base[:200]
    codes = trained.model.encode(base)
    assert np.array_equal(model.encode(base), codes)
    assert np.array_equal(model.decode(codes), trained.model.decode(codes))
    assert np.array_equal(model.decode_shortlist(codes), trained.model.decode_shortlist(codes))
    assert hashlib.sha256(catalyzer_bytes(model, meta)).hexdigest() == sha


def test_chain_decoders_have_their_own_width(tmp_path):
    """``hidden_chain`` is the width of g_1..g_{M−2} only (encoding runs them; g_0 is a table
    and the last decoder only decodes), and the model file keeps it; without it (models
    written before) every decoder is ``hidden_decoder`` wide."""
    from spreadcode.catalyzer import CatalyzerMeta

    spec = replace(TINY, blocks=((6, 4),) * 4).quantizer_spec()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = residual.ResidualCatalyzer(96, spec.quantizer(), 32, 64, 32, 1.0,
                                           hidden_chain=16)
    widths = lambda m: [g[0].out_features for g in m.g]  # noqa: E731
    assert widths(model) == [64, 16, 16, 64]
    assert widths(residual.ResidualCatalyzer(96, spec.quantizer(), 32, 64, 32)) == [64] * 4
    sha, _ = save_catalyzer(model, CatalyzerMeta.for_model(model, spec, None, {}), store=tmp_path)
    loaded, meta = load_catalyzer(sha, store=tmp_path)
    assert meta.hidden_chain == 16 and meta.arch()["hidden_chain"] == 16
    assert widths(loaded) == [64, 16, 16, 64]
    codes = model.encode(load_sample().base[:100], precision="float32")
    assert np.array_equal(loaded.encode(load_sample().base[:100], precision="float32"), codes)
    assert np.array_equal(loaded.decode(codes), model.decode(codes))


def test_wide_inputs_are_read_through_a_learned_projection(tmp_path):
    """Learn vectors wider than ``chain_dim`` give a model whose stages read x and x̂
    through ``chain_proj``, started on the learn set's leading principal axes; the model file
    keeps it and loads to the same codes and decoded vectors (greedy, beam, float32), and a
    beam's codes decode like any others. Narrower inputs (the default CHAIN_DIM on the 96-d
    sample) get none."""
    learn, base = load_sample().learn[:1000], load_sample().base[:300]
    assert residual.train_residual(learn, replace(TINY, epochs=1),
                                   progress=False).model.chain_dim is None
    with torch.random.fork_rng(devices=[]):
        model = residual.ResidualCatalyzer(96, TINY.quantizer_spec().quantizer(), 32, 64, 32,
                                           chain_dim=8)
    model.fit_preprocessing(torch.from_numpy(learn))
    xs = model.preprocess(torch.from_numpy(learn)).double()
    model.init_chain_projection(xs.float())
    axes = model.chain_proj.weight.detach().double()
    torch.testing.assert_close(axes @ axes.T, torch.eye(8, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    variances = torch.linalg.eigvalsh(torch.cov(xs.T)).flip(0)
    torch.testing.assert_close(torch.var(xs @ axes.T, 0), variances[:8], rtol=1e-4, atol=0)
    trained = residual.train_residual(learn, replace(TINY, epochs=1, chain_dim=8),
                                      progress=False)
    assert trained.model.chain_dim == 8 and trained.model.f[1][0].in_features == 16
    assert trained.model.g[1][0].in_features == trained.model.quantizer.blocks[1].d + 8
    sha, _ = save_catalyzer(trained.model, trained.meta, store=tmp_path)
    loaded, meta = load_catalyzer(sha, store=tmp_path)
    assert meta.chain_dim == 8 and meta.arch()["chain_dim"] == 8
    for kwargs in {}, {"beam": 2}, {"precision": "float32"}:
        codes = trained.model.encode(base, **kwargs)
        assert np.array_equal(loaded.encode(base, **kwargs), codes)
        assert np.array_equal(loaded.decode(codes), trained.model.decode(codes))
    assert len(np.unique(codes, axis=0)) > 250


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["arch"].update(type="transformer"), "arch.type"),
    (lambda m: m["arch"].update(chain_dim=0), "arch.chain_dim"),
    (lambda m: m["arch"].update(hidden_decoder=0), "arch.hidden_decoder"),
    (lambda m: m["arch"].update(hidden_shortlist=0), "arch.hidden_shortlist"),
    (lambda m: m["arch"].update(hidden_chain=0), "arch.hidden_chain"),
    (lambda m: m["arch"].update(output_norm=-1.0), "arch.output_norm"),
    (lambda m: m["arch"].update(output_norm="1"), "arch.output_norm"),
    (lambda m: m["arch"].update(rerank_blend=-0.5), "arch.rerank_blend"),
    (lambda m: m["arch"].update(rerank_blend=True), "arch.rerank_blend"),
    (lambda m: m.update(quantizer={"kind": "lattice", "d": 18, "param": 10}), "quantizer.kind"),
])
def test_bad_residual_metadata_names_the_field(trained, tmp_path, edit, field):
    import safetensors.torch

    from spreadcode import store as model_store

    path = tmp_path / "m.safetensors"
    path.write_bytes(catalyzer_bytes(trained.model, trained.meta))
    meta = model_store.read_metadata(path)
    edit(meta)
    tensors = safetensors.torch.load(path.read_bytes())
    path.write_bytes(safetensors.torch.save(
        tensors, metadata={model_store.METADATA_KEY: json.dumps(meta)}))
    with pytest.raises(SpreadcodeError, match=f"bad '{field}'"):
        load_catalyzer(path)


def test_index_search_is_shortlist_then_full_decoder(trained):
    sample = load_sample()
    base, queries = sample.base[:1500], sample.query[:30]
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(base)
    assert index.is_residual and index.bits == 24 and len(index) == 1500
    distances, ids = index.search(queries, k=10, rerank=60)
    codes = trained.model.encode(base)
    # The shortlist: the shortlist decoder's vectors as int8 rows hold them, scanned by the
    # queries rounded the same way.
    rows, rounded = (int8_vectors(int8_rows(trained.model.decode_shortlist(codes))),
                     int8_vectors(int8_rows(queries)))
    _, shortlist = exact_knn(rows, rounded, 60)
    # the scan's distance: ‖x‖² − 2⟨q̃, x⟩ + ‖q‖²
    scanned = ((rows[shortlist] - rounded[:, None]) ** 2).sum(-1) \
        + (queries ** 2).sum(1)[:, None] - (rounded ** 2).sum(1)[:, None]
    decoded = trained.model.decode(codes)
    blend = trained.model.rerank_blend
    assert blend > 0
    want_d, want_i = rerank_candidates(queries, shortlist, lambda rows: decoded[rows], 10,
                                       scanned.astype(np.float32), blend)
    assert np.array_equal(ids, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-5)
    # blend= overrides the model's weight
    distances, ids = index.search(queries, k=10, rerank=60, blend=0.0)
    want_d, want_i = rerank_candidates(queries, shortlist, lambda rows: decoded[rows], 10)
    assert np.array_equal(ids, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-5)
    # a model written before the blend re-ranks by the full decoder alone
    trained.model.rerank_blend = None
    try:
        index = spreadcode.Index.from_catalyzer(trained.model,
                                                replace(trained.meta, rerank_blend=None))
        index.add(base)
        distances, ids = index.search(queries, k=10, rerank=60)
    finally:
        trained.model.rerank_blend = blend
    want_d, want_i = rerank_candidates(queries, shortlist, lambda rows: decoded[rows], 10)
    assert np.array_equal(ids, want_i)
    np.testing.assert_allclose(distances, want_d, rtol=1e-5)
    # The default shortlist: max(2 k, 50).
    assert [residual_rerank(trained.model, k) for k in (1, 10, 25, 26, 150)] == [50, 50, 50, 52, 300]
    assert np.array_equal(index.search(queries, k=10)[1], index.search(queries, k=10, rerank=50)[1])
    # rerank=0: the shortlist decoder's order (its float32 vectors: nothing re-ranks them);
    # decode_all: exact search over the full decoder's vectors.
    _, ids0 = index.search(queries, k=10, rerank=0)
    assert np.array_equal(ids0, exact_knn(trained.model.decode_shortlist(codes), queries, 10)[1])
    _, ids_all = index.search(queries, k=10, decode_all=True)
    assert np.array_equal(ids_all, exact_knn(decoded, queries, 10)[1])
    np.testing.assert_allclose(index.reconstruct([0, 7]), decoded[[0, 7]], rtol=1e-5, atol=1e-6)


def test_repeated_searches_decode_the_codes_once(trained, monkeypatch):
    """The decoded codes of a scan are held by the index's collection: a second search by the
    same decoder decodes nothing, another decoder replaces them, an ``add`` (a new
    collection) decodes again, a decoding that fails leaves nothing held; results are always
    those of the decoded vectors."""
    sample = load_sample()
    queries = sample.query[:5]
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(sample.base[:400])
    decoded_rows = []
    original = trained.model.decode_shortlist
    monkeypatch.setattr(trained.model, "decode_shortlist",
                        lambda codes, **kw: decoded_rows.append(len(codes)) or original(codes, **kw))

    def expected(full=False):
        codes = np.concatenate([part.codes_bytes for part in index._collection.parts])
        return exact_knn((trained.model.decode if full else original)(codes), queries, 10)[1]

    first = index.search(queries, k=10, rerank=0)
    assert sum(decoded_rows) == 400 and np.array_equal(first[1], expected())
    second = index.search(queries, k=10, rerank=0)
    assert sum(decoded_rows) == 400
    assert np.array_equal(first[1], second[1]) and np.array_equal(first[0], second[0])
    assert np.array_equal(index.search(queries, k=10, decode_all=True)[1], expected(True))
    assert np.array_equal(index.search(queries, k=10, rerank=0)[1], first[1])
    assert sum(decoded_rows) == 800
    index.add(sample.base[400:500])
    assert np.array_equal(index.search(queries, k=10, rerank=0)[1], expected())
    assert sum(decoded_rows) == 1300

    # The shortlist's decoded codes are held; the full decoder fails while replacing them.
    def failing(codes, **kw):
        raise MemoryError
    monkeypatch.setattr(trained.model, "decode", failing)
    with pytest.raises(MemoryError):
        index.search(queries, k=10, decode_all=True)
    monkeypatch.undo()
    assert np.array_equal(index.search(queries, k=10, rerank=0)[1], expected())


def test_reranking_decodes_each_candidate_once_per_index(trained, monkeypatch):
    """Candidates decoded by the full decoder are kept by the index's collection: a later
    search decodes only candidates no search decoded before, and its results are those of an
    index that never searched."""
    sample = load_sample()
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(sample.base[:1500])
    fresh = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    fresh.add(sample.base[:1500])
    calls = []
    original = trained.model.decode
    monkeypatch.setattr(trained.model, "decode",
                        lambda codes, **kw: calls.append(codes.copy()) or original(codes, **kw))
    first = index.search(sample.query[:20], k=10)
    decoded_once = np.unique(np.concatenate(calls), axis=0)
    calls.clear()
    second = index.search(sample.query[10:40], k=10)
    again = np.concatenate(calls)
    overlap = {row.tobytes() for row in decoded_once} & {row.tobytes() for row in again}
    assert len(calls) == 1 and len(again) >= 1 and not overlap
    monkeypatch.undo()
    for got, queries in ((first, sample.query[:20]), (second, sample.query[10:40])):
        want = fresh.search(queries, k=10)
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])


def test_decoded_at_pads_small_batches_and_decodes_each_code_once(trained, monkeypatch):
    from spreadcode import collection as collection_module
    from spreadcode.collection import DECODE_MIN_ROWS

    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(load_sample().base[:100])
    collection = index._collection

    class Recorder:
        sha256, d_in = "a" * 64, 3

        def __init__(self):
            self.calls = []

        def decode(self, codes):
            self.calls.append(codes.copy())
            return codes[:, :3].astype(np.float32)

    decoder = Recorder()
    codes = collection.codes_at(np.arange(100))
    got = collection.decoded_at(decoder, np.array([5, 3]))
    assert np.array_equal(got, codes[[5, 3], :3])
    assert [len(c) for c in decoder.calls] == [DECODE_MIN_ROWS]
    got = collection.decoded_at(decoder, np.array([9, 3, 7, 5]))
    assert np.array_equal(got, codes[[9, 3, 7, 5], :3])
    assert np.array_equal(decoder.calls[1][:2], codes[[9, 7]])
    assert len(decoder.calls[1]) == DECODE_MIN_ROWS
    collection.decoded_at(decoder, np.array([3, 5, 7]))
    assert len(decoder.calls) == 2
    many = np.arange(40, 90)
    assert np.array_equal(collection.decoded_at(decoder, many), codes[many, :3])
    assert len(decoder.calls[2]) == 50
    # Larger calls go to the decoder in chunks, each padded: no call of under 32 rows.
    monkeypatch.setattr(collection_module, "DECODE_CHUNK_ROWS", 35)
    rest = np.arange(0, 40)  # 36 not decoded yet (3, 5, 7 and 9 are)
    assert np.array_equal(collection.decoded_at(decoder, rest), codes[rest, :3])
    assert [len(c) for c in decoder.calls[3:]] == [35, DECODE_MIN_ROWS]
    assert (decoder.calls[4] == codes[39]).all()
    # Codes beyond keep_rows are decoded on every call, the ones before it once (a new
    # keep_rows starts a new store).
    calls = len(decoder.calls)
    for _ in range(2):
        got = collection.decoded_at(decoder, np.array([95, 2, 60]), keep_rows=50)
        assert np.array_equal(got, codes[[95, 2, 60], :3])
    decoded = ([2], [95, 60], [95, 60])
    assert [len(call) for call in decoder.calls[calls:]] == [DECODE_MIN_ROWS] * len(decoded)
    for call, want in zip(decoder.calls[calls:], decoded):
        assert np.array_equal(call[:len(want)], codes[want])
    assert collection._lookup["decoded_at"][1].shape == (50, 3)


def test_range_search_is_exact_among_decoded_vectors(trained):
    sample = load_sample()
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(sample.base[:700], ids=np.arange(700) * 3 - 5)
    decoded = trained.model.decode(trained.model.encode(sample.base[:700]))
    queries = sample.query[:6]
    dist = ((queries[:, None, :].astype(np.float64) - decoded[None]) ** 2).sum(-1)
    radius = float(np.quantile(dist, 0.02))
    lims, distances, ids = index.range_search(queries, radius)
    for q in range(len(queries)):
        rows = np.nonzero(dist[q] <= radius)[0]
        rows = rows[np.lexsort((rows, dist[q, rows]))]
        assert np.array_equal(ids[lims[q]:lims[q + 1]], rows * 3 - 5)
        np.testing.assert_allclose(distances[lims[q]:lims[q + 1]], dist[q, rows], rtol=1e-4)
    assert lims[-1] > 0


def test_index_refuses_what_residual_codes_cannot_do(trained):
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(load_sample().base[:300])
    queries = load_sample().query[:3]
    for call, what in ((lambda: index.search(queries, 5, hamming=True), "a Hamming search"),
                       (lambda: index.search(queries, 5, blend=-1.0), "blend must be"),
                       (lambda: index.search(queries, 5, blend=float("nan")), "blend must be"),
                       (lambda: index.search(queries, 5, decode_all=True, blend=0.5),
                        "do not re-rank"),
                       (lambda: index.search(queries, 5, rerank=0, blend=0.5), "do not re-rank"),
                       (lambda: index.search(queries, 5, rerank=3), "at least k=5")):
        with pytest.raises(SpreadcodeError, match=what):
            call()


def test_cli_round_trip_matches_index(trained, tmp_path):
    """train's model through the store: encode, info and search on the CLI give what the
    Index gives, and Index.load of the file searches identically."""
    sample = load_sample()
    store = tmp_path / "store"
    sha, _ = save_catalyzer(trained.model, trained.meta, store=store)
    vecio.write_vectors(tmp_path / "base.fvecs", sample.base[:1000])
    vecio.write_vectors(tmp_path / "q.fvecs", sample.query[:20])
    assert run("encode", tmp_path / "base.fvecs", "-o", tmp_path / "db.spc", "--model", sha,
               "--store", store, "-q").exit_code == 0
    info = run("info", tmp_path / "db.spc")
    assert info.exit_code == 0 and "S(12" in info.stdout
    result = run("search", tmp_path / "db.spc", tmp_path / "q.fvecs", "-k", "5",
                 "-o", tmp_path / "r.npy", "--store", store)
    assert result.exit_code == 0, result.output
    cli_ids = np.load(tmp_path / "r.npy")
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(sample.base[:1000])
    _, ids = index.search(sample.query[:20], k=5)
    assert np.array_equal(cli_ids, ids)
    loaded = spreadcode.Index.load(tmp_path / "db.spc", store=store)
    assert np.array_equal(loaded.search(sample.query[:20], k=5)[1], ids)
    assert_clean_error(run("search", tmp_path / "db.spc", tmp_path / "q.fvecs", "--hamming",
                           "--store", store), "Hamming search")
    assert_clean_error(run("train-decoder", tmp_path / "base.fvecs", "--model", sha,
                           "--store", store), "residual model")


@pytest.mark.parametrize("beam, precision", [(3, "auto"), (2, "float32")])
def test_beam_encoding_is_the_same_on_every_path(trained, tmp_path, beam, precision):
    """encode --beam --precision into a .spc, into a collection and with add, and
    Index.add(beam=, precision=) all store the codes of ResidualCatalyzer.encode(beam=,
    precision=); a beam of 0, or an unknown precision, is one clear error."""
    base = load_sample().base[:300]
    store = tmp_path / "store"
    sha, _ = save_catalyzer(trained.model, trained.meta, store=store)
    vecio.write_vectors(tmp_path / "base.fvecs", base)
    expected = trained.model.encode(base, beam=beam, precision=precision)
    assert not np.array_equal(expected, trained.model.encode(base, precision=precision))
    common = ("--model", sha, "--store", store, "-q", "--beam", str(beam),
              "--precision", precision)
    assert run("encode", tmp_path / "base.fvecs", "-o", tmp_path / "db.spc", *common).exit_code == 0
    assert np.array_equal(open_collection([tmp_path / "db.spc"]).parts[0].codes_bytes, expected)
    assert run("encode", tmp_path / "base.fvecs", "-o", tmp_path / "dir", "--shard-size", "200",
               *common).exit_code == 0
    assert run("add", tmp_path / "dir", tmp_path / "base.fvecs", *common).exit_code == 0
    parts = open_collection([tmp_path / "dir"]).parts
    assert np.array_equal(np.concatenate([part.codes_bytes for part in parts]),
                          np.concatenate([expected, expected]))
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(base, beam=beam, precision=precision)
    assert np.array_equal(index._collection.parts[0].codes_bytes, expected)
    for option, value in (("--beam", "0"), ("--precision", "bfloat16")):
        refused = run("encode", tmp_path / "base.fvecs", "-o", tmp_path / "x.spc", "--model",
                      sha, "--store", store, option, value)
        assert refused.exit_code == 2 and f"'{option}'" in refused.stderr
        assert "Traceback" not in refused.output and not (tmp_path / "x.spc").exists()
    with pytest.raises(SpreadcodeError, match="precision must be one of"):
        index.add(base, precision="bfloat16")


def test_beam_search_needs_a_residual_model():
    from spreadcode.encode import encode_codes
    index = spreadcode.Index.train(load_sample().learn[:2000], bits=16, quantizer="sign",
                                   epochs=1)
    with pytest.raises(SpreadcodeError, match="a beam search needs a residual model"):
        index.add(load_sample().base[:10], beam=2)
    assert np.array_equal(encode_codes(index.catalyzer, index.quantizer, load_sample().base[:10], 1),
                          encode_codes(index.catalyzer, index.quantizer, load_sample().base[:10]))


def test_time_budget_replans_so_that_slower_epochs_still_end_the_schedule(monkeypatch):
    """Epochs of 10 s, then 30 s, under a 100 s budget: planned 10 after the first, the plan
    shrinks as they slow (5, then 4), and the run ends at its planned 4th epoch with the
    learning rate annealed, not cut off 40 % of the way through its schedule as a plan fixed
    after the first epoch would be (4 of 10 epochs run)."""
    clock, durations, rates = [0.0], iter([10.0, 30.0, 30.0, 30.0, 30.0]), []
    monkeypatch.setattr(residual.time, "monotonic", lambda: clock[0])
    held_out_error = residual._held_out_error

    def epoch_end(model, x, *args):  # once per epoch, after its steps
        clock[0] += next(durations)
        return held_out_error(model, x, *args)
    monkeypatch.setattr(residual, "_held_out_error", epoch_end)
    one_cycle_lr = residual.one_cycle_lr
    monkeypatch.setattr(residual, "one_cycle_lr",
                        lambda peak, progress: rates.append(progress) or one_cycle_lr(peak, progress))
    config = replace(TINY, epochs=50, time_budget_s=100.0, hidden_shortlist=None)
    result = residual.train_residual(load_sample().learn[:3000], config, progress=False)
    assert result.meta.training["epochs"] == result.meta.training["planned_epochs"] == 4
    steps = len(rates) // 4
    assert rates[-1] == pytest.approx(1 - 1 / (4 * steps))  # the last step of a 4-epoch plan


def test_max_vectors_caps_the_epochs_of_larger_learn_sets(monkeypatch):
    """``max_vectors`` of 2.5 × the 2,700 training rows: 2 of the 4 epochs, planned from the
    start (the schedule anneals at the last step of the second), recorded; smaller learn sets
    keep ``epochs``; a cap below one epoch still runs one; 0 is refused."""
    assert residual.epoch_cap(replace(TINY, max_vectors=6750), 2700) == 2
    assert residual.epoch_cap(replace(TINY, max_vectors=6750), 1000) == 4
    assert residual.epoch_cap(replace(TINY, max_vectors=100), 2700) == 1
    assert residual.epoch_cap(replace(TINY, epochs=None, time_budget_s=60.0,
                                      max_vectors=6750), 2700) == 2
    assert residual.epoch_cap(TINY, 10 ** 9) == TINY.epochs
    rates = []
    one_cycle_lr = residual.one_cycle_lr
    monkeypatch.setattr(residual, "one_cycle_lr",
                        lambda peak, progress: rates.append(progress) or one_cycle_lr(peak, progress))
    config = replace(TINY, max_vectors=6750, hidden_shortlist=None)
    result = residual.train_residual(load_sample().learn[:3000], config, progress=False)
    training = result.meta.training
    assert training["n_train"] == 2700 and training["max_vectors"] == 6750
    assert training["epochs"] == training["planned_epochs"] == len(result.history) == 2
    steps = len(rates) // 2
    assert rates[-1] == pytest.approx(1 - 1 / (2 * steps))
    with pytest.raises(SpreadcodeError, match="max_vectors must be >= 1"):
        residual.train_residual(load_sample().learn[:300], replace(TINY, max_vectors=0),
                                progress=False)


def test_the_time_budget_grows_with_learn_sets_beyond_budget_rows(monkeypatch):
    """`time_budget`: the budget as given up to ``budget_rows`` training rows, scaled by the
    rows beyond; none without a budget. A run on 2,700 rows with 100 s per 1,350 rows plans
    from 200 s: epochs of 30 s, 6 of them (1 + 170 // 30), where 100 s would fit 3; the model
    records the budget it ran under."""
    budget = replace(TINY, time_budget_s=100.0, budget_rows=1350)
    assert residual.time_budget(budget, 1000) == residual.time_budget(budget, 1350) == 100.0
    assert residual.time_budget(budget, 2700) == 200.0
    assert residual.time_budget(replace(budget, budget_rows=None), 2700) == 100.0
    assert residual.time_budget(replace(budget, time_budget_s=None), 2700) is None
    clock = [0.0]
    monkeypatch.setattr(residual.time, "monotonic", lambda: clock[0])
    held_out_error = residual._held_out_error

    def epoch_end(model, x, *args):  # once per epoch, after its steps
        clock[0] += 30.0
        return held_out_error(model, x, *args)
    monkeypatch.setattr(residual, "_held_out_error", epoch_end)
    config = replace(budget, epochs=50, hidden_shortlist=None)
    training = residual.train_residual(load_sample().learn[:3000], config,
                                       progress=False).meta.training
    assert training["n_train"] == 2700 and training["budget_rows"] == 1350
    assert training["time_budget_s"] == 200.0
    assert training["epochs"] == training["planned_epochs"] == 6
    with pytest.raises(SpreadcodeError, match="budget_rows must be >= 1"):
        residual.train_residual(load_sample().learn[:300], replace(budget, budget_rows=0),
                                progress=False)


def test_command_config_for_residual_codes():
    config = command_config(64, epochs=3)
    assert isinstance(config, residual.ResidualConfig)
    assert config.blocks == ((12, 6),) * 4 and config.epochs == 3
    assert config.max_vectors is None and command_config(64, time_budget_min=2).max_vectors is None
    default = command_config(32, device="cpu")
    assert default.epochs == residual.DEFAULT_EPOCHS and default.time_budget_s == 14 * 60
    assert default.max_vectors == residual.TRAINING_VECTORS
    assert default.budget_rows == residual.BUDGET_ROWS == 60_000
    assert command_config(64, epochs=3).budget_rows is None
    assert command_config(64, time_budget_min=2).budget_rows is None
    with pytest.raises(SpreadcodeError, match="--dout applies to the lattice"):
        command_config(64, dout=32)
    with pytest.raises(SpreadcodeError, match="unknown quantizer"):
        command_config(64, "pq")


def test_decoded_search_is_the_same_whatever_is_kept_decoded(trained):
    """Every code kept decoded, the first ones (whole parts, then whole blocks of the next),
    or none: the same results; the collection holds what `decode_memory` allows."""
    from spreadcode import search
    from spreadcode.collection import MemoryPart

    sample = load_sample()
    index = spreadcode.Index.from_catalyzer(trained.model, trained.meta)
    index.add(sample.base[:900], ids=900 - np.arange(900))
    once = index.search(sample.query[:25], k=20, decode_all=True)
    shortlisted = index.search(sample.query[:25], k=20)
    for memory in (0, 400 * index.d * 4):
        index.decode_memory = memory
        for got, want in ((index.search(sample.query[:25], k=20, decode_all=True), once),
                          (index.search(sample.query[:25], k=20), shortlisted)):
            assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    assert index._collection._lookup["decoded_at"][1].shape == (400, index.d)

    whole = index._collection
    decoder = residual.ModelDecoder(trained.model, whole.catalyzer_sha256, "residual")
    codes = whole.parts[0]
    parts = tuple(MemoryPart(codes.codes_bytes[i:i + 300], codes.ids[i:i + 300])
                  for i in (0, 300, 600))
    first = None
    for memory, kept in ((None, {0: 300, 300: 300, 600: 300}), (400, {0: 300, 300: 64}),
                         (0, None)):
        split = replace(whole, parts=parts, _lookup={},
                        decode_memory=None if memory is None else memory * index.d * 4)
        got = search.prepare_decoded(split, decoder, sample.query[:25], k=20,
                                     block=64).result()
        assert np.array_equal(got.ids, once[1])  # blocks of 64, not 65,536: other floats
        np.testing.assert_allclose(got.distances, once[0], rtol=1e-5)
        first = first or got
        assert np.array_equal(got.distances, first.distances)
        held = split._lookup.get("cached")
        assert (None if held is None else {offset: len(rows) for offset, rows
                                           in held[1].items()}) == kept
    # A re-ranked shortlist keeps int8 rows: d + 4 bytes a code.
    shortlist = search.Int8Decoder(residual.ModelDecoder(trained.model, whole.catalyzer_sha256,
                                                         "shortlist"))
    assert search.kept_rows(replace(whole, decode_memory=100 * (index.d + 4)), shortlist) == 100
    with pytest.raises(SpreadcodeError, match="decode_memory must be"):
        index.decode_memory = -1


def test_the_train_report_names_the_rerank_blend(trained):
    from spreadcode.commands import TrainSummary

    summary = TrainSummary(
        sha256="ab" * 32, store_path="store", output_path=None, quantizer=trained.meta.quantizer,
        lam=None, val_recall=trained.meta.training["val_recall"], best_epoch=1, epochs_run=4,
        interrupted=False, n_train=2700, wall_time_s=1.0, output_norm=trained.meta.output_norm,
        rerank_blend=0.2052)
    assert "re-ranking: the full decoder's distance + 0.205 x the shortlist decoder's" \
        in summary.report()
    assert "re-ranking" not in replace(summary, rerank_blend=None).report()
    assert "learned projection" not in summary.report()
    assert "stages read the 384-d inputs through a learned projection to 128 dimensions" \
        in replace(summary, chain_dim=128, d_in=384).report()
    assert "crowding" not in summary.report()
    assert "trained against decoded vectors crowding denser regions than their own vectors " \
        "(weight 0.2)" in replace(summary, crowding=0.2).report()
    assert "budget" not in summary.report()
    assert "trained on 2700 vectors in 1 s (time budget 14.0 min)" in replace(
        summary, time_budget_s=840.0, budget_rows=60000).report()
    assert "trained on 118000 vectors in 1 s (time budget 27.5 min, grown with the learn set " \
        "beyond 60,000 vectors)" in replace(summary, n_train=118000, time_budget_s=1652.0,
                                           budget_rows=60000).report()
