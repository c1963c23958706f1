"""Exact k-NN, the training losses, parameter tables, and short training runs on sample slices."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from spreadcode import store, training, vecio
from spreadcode.catalyzer import Catalyzer, catalyze, catalyzer_bytes, load_catalyzer
from spreadcode.errors import SpreadcodeError
from spreadcode.knn import exact_knn
from spreadcode.sample import load_sample
from spreadcode.commands import train_command
from spreadcode.losses import koleo_loss, straight_through, triplet_rank_loss
from spreadcode.quantizer import QuantizerSpec
from spreadcode.torchutil import epoch_progress
from spreadcode.training import (TrainConfig, default_config, lambda_for_dout, make_quantizer,
                                 split_sizes, train_catalyzer)


def reference_knn(db, queries, k, exclude_self=False):
    """float64 brute force with (distance, id) lexicographic order."""
    db64, q64 = db.astype(np.float64), queries.astype(np.float64)
    dist = ((q64[:, None, :] - db64[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    ids = np.lexsort((np.broadcast_to(np.arange(db.shape[0]), dist.shape), dist), axis=1)[:, :k]
    return np.take_along_axis(dist, ids, axis=1), ids


# ---------------------------------------------------------------- exact k-NN

@pytest.mark.parametrize("query_block, db_block", [(1024, 65536), (7, 13), (1, 50)])
def test_exact_knn_matches_brute_force(query_block, db_block):
    sample = load_sample()
    db, queries = sample.base[:300], sample.query[:40]
    distances, ids = exact_knn(db, queries, 12, query_block=query_block, db_block=db_block)
    ref_dist, ref_ids = reference_knn(db, queries, 12)
    assert ids.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(distances, ref_dist, atol=1e-5)


def test_exact_knn_ties_go_to_lower_id_across_blocks():
    # Points on a line with many duplicates: every query has ties straddling the k cut.
    db = np.repeat(np.arange(6, dtype=np.float32), 7)[:, None] * np.ones((1, 3), np.float32)
    queries = np.array([[0.0] * 3, [2.0] * 3, [2.5] * 3], np.float32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(db.shape[0])
    db = db[perm]
    for blocks in ((1024, 65536), (2, 5), (1, 3)):
        _, ids = exact_knn(db, queries, 10, query_block=blocks[0], db_block=blocks[1])
        np.testing.assert_array_equal(ids, reference_knn(db, queries, 10)[1])


def test_exact_knn_exclude_self_with_duplicates():
    x = np.array([[0, 0], [0, 0], [1, 0], [0, 0], [3, 3]], np.float32)
    _, ids = exact_knn(x, x, 3, exclude_self=True, query_block=2, db_block=2)
    np.testing.assert_array_equal(ids, [[1, 3, 2], [0, 3, 2], [0, 1, 3], [0, 1, 2], [2, 0, 1]])


def test_exact_knn_tensors_in_tensors_out():
    x = torch.from_numpy(load_sample().learn[:200])
    distances, ids = exact_knn(x, x, 5, exclude_self=True)
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and ids.shape == (200, 5)
    np.testing.assert_array_equal(ids.numpy(), reference_knn(x.numpy(), x.numpy(), 5, exclude_self=True)[1])


def test_exact_knn_float64_is_computed_in_float64():
    db = np.array([[1.0 + 1e-12], [1.0]], np.float64)  # equal once rounded to float32
    _, ids = exact_knn(db, np.zeros((1, 1)), 2)
    assert ids.tolist() == [[1, 0]]
    _, ids = exact_knn(db.astype(np.float32), np.zeros((1, 1), np.float32), 2)
    assert ids.tolist() == [[0, 1]]


def test_exact_knn_bad_arguments():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(SpreadcodeError, match="k=5 nearest neighbours requested but only 4"):
        exact_knn(x, x, 5, exclude_self=True)
    with pytest.raises(SpreadcodeError, match="queries have dimension 2 but the database has 3"):
        exact_knn(x, np.zeros((1, 2), np.float32), 1)
    with pytest.raises(SpreadcodeError, match="exclude_self needs the queries to be the database"):
        exact_knn(x, x[:2], 1, exclude_self=True)
    with pytest.raises(SpreadcodeError, match="2-D"):
        exact_knn(np.zeros(5, np.float32), x, 1)


# ---------------------------------------------------------------- losses

def test_koleo_on_hand_computed_points():
    # Nearest-neighbour distances: point 0 -> 1 (point 1), point 1 -> 1 (point 0),
    # point 2 -> 2 (point 1), point 3 -> sqrt(17) (point 2; sqrt(32) and 5 to the others).
    y = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 3.0], [4.0, 4.0]])
    expected = -(math.log(1) + math.log(1) + math.log(2) + math.log(math.sqrt(17))) / 4
    assert float(koleo_loss(y)) == pytest.approx(expected, abs=1e-6)


def test_koleo_gradient_pushes_nearest_points_apart():
    y = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]], requires_grad=True)
    koleo_loss(y).backward()
    # Descending the loss moves points 0 and 1 away from each other along their difference.
    step, diff = -y.grad, (y[0] - y[1]).detach()
    assert float(step[0] @ diff) > 0 and float(step[1] @ diff) < 0


def test_koleo_duplicates_stay_finite():
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = koleo_loss(y)
    loss.backward()
    assert math.isfinite(loss.item()) and bool(torch.isfinite(y.grad).all())
    with pytest.raises(SpreadcodeError, match="at least 2"):
        koleo_loss(torch.ones(1, 3))


def test_triplet_rank_loss_on_hand_computed_triplets():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])   # distances 5, 1, 0
    n = torch.tensor([[0.0, 2.0], [0.0, 3.0], [1.0, 1.0]])   # distances 2, 3, 0
    per = triplet_rank_loss(a, p, n, reduction="none")
    assert per.tolist() == pytest.approx([3.0, 0.0, 0.0])
    assert float(triplet_rank_loss(a, p, n)) == pytest.approx(1.0)


def test_lambda_table_and_interpolation():
    assert [lambda_for_dout(d) for d in (16, 24, 32, 40)] == pytest.approx([0.05, 0.02, 0.01, 0.005])
    assert lambda_for_dout(8) == pytest.approx(0.05) and lambda_for_dout(64) == pytest.approx(0.005)
    assert lambda_for_dout(28) == pytest.approx(math.sqrt(0.02 * 0.01))


# ---------------------------------------------------------------- parameter tables

def test_bits_table_and_codec_params():
    for bits, (d, r2) in {16: (24, 3), 32: (24, 10), 64: (24, 79)}.items():
        config = default_config(bits)
        assert (config.quantizer, config.d_out, config.r2, config.lam) == ("lattice", d, r2, pytest.approx(0.02))
    assert default_config(128).quantizer_spec() == QuantizerSpec("lattice", 48, 135)
    assert default_config(64, dout=32).quantizer_spec() == QuantizerSpec("lattice", 32, 36)
    assert default_config(64, dout=40, r2=20).quantizer_spec() == QuantizerSpec("lattice", 40, 20)
    sign = default_config(64, "sign")
    assert sign.quantizer_spec() == QuantizerSpec("sign", 64, 64)
    assert sign.lam == pytest.approx(0.005)


@pytest.mark.parametrize("kwargs, message", [
    ({"r2": 79}, "--r2 needs --dout"),
    ({"quantizer": "sign", "r2": 5}, "only applies to the lattice"),
    ({"quantizer": "pq"}, "unknown quantizer 'pq'"),
    ({"bits": 256}, "no lattice sphere .* fits 256 bits"),
    ({"dout": 24, "r2": 100000}, "r2=100000"),
    ({"dout": 0, "r2": 3}, "output dimension must be a positive integer"),
])
def test_default_config_rejects_bad_parameters(kwargs, message):
    with pytest.raises(SpreadcodeError, match=message):
        default_config(**kwargs)


def test_split_sizes():
    config = TrainConfig()
    assert split_sizes(52659, config) == (41659, 10000, 1000)
    assert split_sizes(10000, config) == (7500, 2000, 500)
    assert split_sizes(100, config) == (75, 20, 5)
    with pytest.raises(SpreadcodeError, match="60 learn vectors are too few"):
        split_sizes(60, config)


def test_learning_rate_schedule_is_proportional():
    config = TrainConfig()
    assert [config.learning_rate(e, 8) for e in range(8)] == [0.1] * 4 + [0.05] * 2 + [0.01] * 2


# ---------------------------------------------------------------- training runs

def small_config(**overrides):
    """64-bit lattice config shrunk for tests: small hidden layer, few epochs."""
    return replace(default_config(64), **{"hidden": 128, "batch_size": 64, "epochs": 2, **overrides})


def fixed_triplet_loss(model, x, lam):
    """Loss on fixed triplets: positive = input-space 1st neighbour, negative = 50th."""
    _, ids = exact_knn(x, x, 50, exclude_self=True)
    y = torch.from_numpy(catalyze(model, x))
    return float(triplet_rank_loss(y, y[ids[:, 0]], y[ids[:, 49]]) + lam * koleo_loss(y))


def test_training_lowers_loss_and_beats_untrained_recall():
    sample = load_sample()
    config = small_config(epochs=4)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        untrained = Catalyzer(96, config.d_out, config.hidden)
    untrained.fit_preprocessing(torch.from_numpy(sample.learn[:4000]))
    result = train_catalyzer(sample.learn[:4000], config, progress=False)
    assert not result.model.training and result.model.d_out == 24
    held_out = sample.base[:1000]
    assert fixed_triplet_loss(result.model, held_out, config.lam) < fixed_triplet_loss(untrained, held_out, config.lam)

    quantizer = make_quantizer(config)
    base, query = sample.base[:3000], sample.query[:300]
    truth = exact_knn(base, query, 1)[1]

    def recall_at_10(model):
        _, ids = quantizer.search(quantizer.quantize(catalyze(model, base)), catalyze(model, query), 10)
        return float((ids == truth).any(axis=1).mean())

    assert recall_at_10(result.model) > recall_at_10(untrained) + 0.05
    training = result.meta.training
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert [h["lr"] for h in result.history] == [0.1, 0.1, 0.05, 0.01]
    best = max(result.history, key=lambda h: (h["recall"]["10"], h["recall"]["1"]))
    assert training["best_epoch"] == best["epoch"] and training["val_recall"] == best["recall"]
    assert (training["n_train"], training["n_val_db"], training["n_val_queries"]) == (3000, 800, 200)


def test_same_seed_same_bytes_different_seed_different():
    learn = load_sample().learn[:600]
    first = train_catalyzer(learn, small_config(epochs=1), progress=False)
    again = train_catalyzer(learn, small_config(epochs=1), progress=False)
    other = train_catalyzer(learn, small_config(epochs=1, seed=1), progress=False)
    assert catalyzer_bytes(first.model, first.meta) == catalyzer_bytes(again.model, again.meta)
    assert catalyzer_bytes(first.model, first.meta) != catalyzer_bytes(other.model, other.meta)


def test_sign_and_end_to_end_runs():
    learn = load_sample().learn[:600]
    sign = train_catalyzer(learn, replace(default_config(16, "sign"), hidden=64, epochs=1), progress=False)
    assert sign.meta.quantizer == QuantizerSpec("sign", 16, 16)
    assert sign.model.d_out == 16 and set(sign.meta.training["val_recall"]) == {"1", "10", "100"}
    out = catalyze(sign.model, learn[:50])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    # End-to-end training sees positives and negatives through the quantizer: with the same
    # seed, data and schedule it must end in other weights than plain training.
    plain = train_catalyzer(learn, small_config(epochs=1, hidden=32), progress=False)
    e2e = train_catalyzer(learn, small_config(epochs=1, hidden=32, end_to_end=True), progress=False)
    assert e2e.meta.training["end_to_end"] is True
    assert plain.history[0]["triplet"] != e2e.history[0]["triplet"]
    assert not all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                     e2e.model.state_dict().values()))


def test_straight_through_forward_snaps_backward_is_identity():
    quantizer = make_quantizer(default_config(64))
    y = torch.nn.functional.normalize(torch.randn(5, 24, generator=torch.Generator().manual_seed(0)), dim=1)
    y.requires_grad_(True)
    snapped = straight_through(y, quantizer)
    expected = quantizer.reconstruct(quantizer.quantize(y.detach().numpy()))
    np.testing.assert_allclose(snapped.detach().numpy(), expected, atol=1e-7)
    weights = torch.arange(120, dtype=torch.float32).reshape(5, 24)
    (snapped * weights).sum().backward()
    assert torch.equal(y.grad, weights)


def test_time_budget_plans_from_first_epoch():
    result = train_catalyzer(load_sample().learn[:600], small_config(time_budget_s=1e-3), progress=False)
    assert result.meta.training["epochs"] == result.meta.training["planned_epochs"] == 1


def test_time_budget_replans_and_validates_the_last_epoch(monkeypatch):
    """Epochs of 10, 30 and 50 s under a 100 s budget (a fake clock): planned 10 after the
    first, 5 after the second, 3 after the third, which ends the run inside the budget; that
    epoch, the schedule's last, is validated although eval_every would skip it."""
    clock, durations = [0.0], iter([10.0, 30.0, 50.0, 50.0])
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    run_epoch = training._run_epoch

    def timed_epoch(*args):
        clock[0] += next(durations)
        return run_epoch(*args)
    monkeypatch.setattr(training, "_run_epoch", timed_epoch)
    result = train_catalyzer(load_sample().learn[:600],
                             small_config(epochs=50, time_budget_s=100.0, eval_every=4),
                             progress=False)
    assert result.meta.training["epochs"] == result.meta.training["planned_epochs"] == 3
    assert [row["recall"] is not None for row in result.history] == [True, False, True]

def test_interrupt_keeps_best_checkpoint(monkeypatch):
    calls = []
    real_epoch = training._run_epoch

    def interrupted_second_epoch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(training, "_run_epoch", interrupted_second_epoch)
    result = train_catalyzer(load_sample().learn[:600], small_config(epochs=5), progress=False)
    assert result.meta.training["interrupted"] is True
    assert result.meta.training["epochs"] == result.meta.training["best_epoch"] == 1


@pytest.mark.parametrize("learn, message", [
    (np.zeros(96, np.float32), "2-D array"),
    (np.array([["x"] * 4] * 100), "must be numbers"),
    (np.full((60, 96), 1.0, np.float32), "60 learn vectors are too few"),
])
def test_bad_learn_sets_are_rejected(learn, message):
    with pytest.raises(SpreadcodeError, match=message):
        train_catalyzer(learn, small_config(), progress=False)


def test_nan_and_inf_rows_are_named():
    learn = np.array(load_sample().learn[:300])
    learn[123, 4] = np.inf
    with pytest.raises(SpreadcodeError, match="learn vector 123 contains NaN or Inf"):
        train_catalyzer(learn, small_config(), progress=False)


def test_identical_learn_vectors_are_rejected():
    with pytest.raises(SpreadcodeError, match="identical"):
        train_catalyzer(np.ones((300, 8), np.float32), small_config(), progress=False)


@pytest.mark.parametrize("overrides, message", [
    ({"lam": -1.0}, "lambda must be"), ({"lam": math.nan}, "lambda must be"),
    ({"batch_size": 1}, "batch_size must be >= 2"), ({"epochs": 0}, "epochs must be >= 1"),
    ({"time_budget_s": 0.0}, "time budget must be positive"), ({"k_neg": 0}, "k_neg must be >= 1"),
])
def test_bad_configs_are_rejected(overrides, message):
    with pytest.raises(SpreadcodeError, match=message):
        train_catalyzer(load_sample().learn[:300], small_config(**overrides), progress=False)


# ---------------------------------------------------------------- the CLI entry point

def test_train_command_saves_to_store_and_exact_output(tmp_path):
    learn_path = tmp_path / "learn.fvecs"
    vecio.write_vectors(learn_path, load_sample().learn[:800])
    output = tmp_path / "my.model"
    summary = train_command(learn_path, bits=32, quantizer="lattice", epochs=1, output=output,
                            store=tmp_path / "store", seed=3, progress=False)
    assert summary.sha256 == store.sha256_file(output) == store.sha256_file(summary.store_path)
    assert summary.store_path == str(tmp_path / "store" / f"{summary.sha256}.safetensors")
    assert summary.output_path == str(output) and summary.epochs_run == 1 and summary.n_train == 600
    assert summary.report().splitlines()[0] == f"model {summary.sha256}"
    model, meta = load_catalyzer("latest", store=tmp_path / "store")
    assert meta.sha256 == summary.sha256
    assert meta.quantizer == QuantizerSpec("lattice", 24, 10) == summary.quantizer
    assert meta.lam == pytest.approx(0.02) and meta.training["seed"] == 3
    assert meta.training["val_recall"] == summary.val_recall
    assert meta.training["data"]["n"] == 800


def test_train_command_lambda_auto_keeps_best_of_grid(tmp_path):
    learn_path = tmp_path / "learn.npy"
    vecio.write_vectors(learn_path, load_sample().learn[:400])
    summary = train_command(learn_path, bits=16, quantizer="sign", lam="auto", epochs=1,
                            store=tmp_path, progress=False)
    grid = [f"{0.05 * f:.6g}" for f in training.AUTO_LAMBDA_FACTORS]
    assert list(summary.lambda_search) == grid
    assert f"{summary.lam:.6g}" in grid
    assert summary.val_recall["10"] == max(summary.lambda_search.values())


def test_default_schedule_is_capped_by_time():
    configs = [training.command_config(16, "lattice", device="cpu"),
               training.command_config(16, "lattice", device="cpu", epochs=3),
               training.command_config(16, device="cpu", time_budget_min=2)]
    assert [(c.epochs, c.time_budget_s) for c in configs] == [
        (training.DEFAULT_EPOCHS["cpu"], training.DEFAULT_TIME_BUDGET_S), (3, None), (None, 120.0)]
    with pytest.raises(SpreadcodeError, match="either --epochs or --time-budget"):
        training.command_config(16, epochs=3, time_budget_min=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 2, "time_budget_min": 1.0}, "either --epochs or --time-budget"),
    ({"lam": "big", "quantizer": "lattice"}, "--lambda must be a number or 'auto'"),
    ({"lam": 0.1}, "--lambda applies to the lattice and sign quantizers"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_train_command_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(SpreadcodeError, match=message):
        train_command(None, store=tmp_path, progress=False, **kwargs)


def test_epoch_progress_closes_its_bar_however_the_block_ends():
    with epoch_progress(3, "test", enabled=False) as bar:
        assert bar is None
    with pytest.raises(KeyboardInterrupt):
        with epoch_progress(3, "test", enabled=True) as bar:
            bar.update(1)
            raise KeyboardInterrupt
    assert bar.n == 1 and bar.disable  # tqdm marks a closed bar disabled
