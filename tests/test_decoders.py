"""Learned decoders: least squares, the artifact round-trip, re-ranking and decoded search."""
import functools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import tiny_catalyzer, tiny_meta
from spreadcode import store
from spreadcode.catalyzer import catalyze, catalyzer_bytes, save_catalyzer
from spreadcode.container import SpcWriter
from spreadcode.collection import open_collection
from spreadcode.commands import info_command, train_decoder_command
from spreadcode.decoders import (BLEND_SCALE_TOP, BLEND_WEIGHT, CALIBRATION_SHORTLIST, DecoderMeta,
                                 DecoderNet, calibrate_blend, decoder_bytes, fit_decoder,
                                 fit_linear, held_out_split, load_decoder, save_decoder,
                                 squared_error, train_decoder)
from spreadcode.encode import encode_file
from spreadcode.errors import SpreadcodeError
from spreadcode.finetune import fine_tune_catalyzer
from spreadcode.quantizer import quantizer_from_spec
from spreadcode.sample import load_sample
from spreadcode.index import Index
from spreadcode.search import (DECODED_SEARCH_BLOCK, decoded_topk, default_rerank, int8_rows,
                               int8_vectors, prepare_decoded)

LATTICE = {"kind": "lattice", "d": 8, "param": 10}
SIGN = {"kind": "sign", "d": 16, "param": 16}
N_LEARN, N_BASE, N_QUERY = 1500, 600, 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A model store with a lattice and a sign catalyzer, a decoder of each kind, and .spc files."""
    root = tmp_path_factory.mktemp("decoders")
    models_dir = root / "store"
    sample = load_sample()
    out = {"store": models_dir, "root": root}
    np.save(root / "base.npy", sample.base[:N_BASE])
    for name, spec, seed in (("lattice", LATTICE, 0), ("sign", SIGN, 1)):
        model = tiny_catalyzer(spec["d"], seed, fit_rows=N_LEARN)
        meta = tiny_meta(model, spec, lam=0.02)
        sha, _ = save_catalyzer(model, meta, store=models_dir)
        spc = root / f"{name}.spc"
        encode_file(root / "base.npy", spc, model=sha, store=models_dir)
        out[name] = {"model": model, "sha": sha, "spc": spc, "meta": replace(meta, sha256=sha)}
    learn = sample.learn[:N_LEARN]
    for name in ("lattice", "sign"):
        entry = out[name]
        for kind in ("linear", "mlp"):
            net, dmeta = train_decoder(learn, entry["model"], entry["meta"], kind=kind, hidden=32,
                                       epochs=None if kind == "linear" else 2)
            entry[kind], _ = save_decoder(net, dmeta, store=models_dir)
    out["query"] = sample.query[:N_QUERY]
    return out


def searched(paths, queries, *, k, store, **options):
    """The `SearchResult` (extra included) of `Index.load` (``decoder`` option) + its search."""
    index = Index.load(paths, decoder=options.pop("decoder", None), store=store)
    return index.prepare_search(queries, k=k, **options).result()


def decoded_search(paths, queries, *, k, decoder, store, block=DECODED_SEARCH_BLOCK):
    """Decoded search of the .spc ``paths``, decoding ``block`` codes at a time."""
    return prepare_decoded(open_collection(paths), load_decoder(decoder, store), queries, k=k,
                           block=block).result()


def exact_decoded_knn(decoded, queries, k):
    """Brute force in float64: ids int64 (nq, k) by (squared L2, id), and those distances."""
    diff = queries[:, None, :].astype(np.float64) - decoded[None, :, :].astype(np.float64)
    dist = (diff ** 2).sum(axis=2)
    order = np.lexsort((np.broadcast_to(np.arange(decoded.shape[0]), dist.shape), dist), axis=1)[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def all_decoded(world, name, kind):
    decoder = load_decoder(world[name][kind], store=world["store"])
    collection = open_collection([world[name]["spc"]])
    assert len(collection.parts) == 1
    return decoder.decode(collection.codes(0))


def test_fit_linear_equals_numpy_least_squares():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = (x @ rng.standard_normal((6, 4)) + rng.standard_normal((200, 4))).astype(np.float32)
    expected = np.linalg.lstsq(np.hstack([x, np.ones((200, 1))]).astype(np.float64), y.astype(np.float64),
                               rcond=None)[0]
    weight, bias = fit_linear(x, y, batch=37)
    assert weight.shape == (4, 6) and bias.shape == (4,) and weight.dtype == np.float32
    np.testing.assert_allclose(weight, expected[:6].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected[6], rtol=1e-5, atol=1e-6)


def test_fit_linear_handles_collinear_one_hot_inputs():
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 4, size=(300, 2))
    one_hot = np.zeros((300, 8), dtype=np.float32)
    one_hot[np.arange(300), blocks[:, 0]] = 1
    one_hot[np.arange(300), 4 + blocks[:, 1]] = 1  # each block sums to 1, like the bias column
    y = rng.standard_normal((300, 3)).astype(np.float32)
    design = np.hstack([one_hot, np.ones((300, 1))]).astype(np.float64)
    best = design @ np.linalg.lstsq(design, y.astype(np.float64), rcond=None)[0]
    weight, bias = fit_linear(one_hot, y)
    np.testing.assert_allclose(one_hot @ weight.T + bias, best, atol=1e-5)


def test_linear_decoder_is_least_squares_on_the_training_codes(world):
    sample = load_sample()
    learn = sample.learn[:N_LEARN]
    decoder = load_decoder(world["lattice"]["linear"], store=world["store"])
    quantizer = quantizer_from_spec(**LATTICE)
    inputs = quantizer.reconstruct(quantizer.quantize(catalyze(world["lattice"]["model"], learn)))
    train_rows, val_rows = held_out_split(N_LEARN, seed=0)
    design = np.hstack([inputs[train_rows], np.ones((len(train_rows), 1))]).astype(np.float64)
    solution = np.linalg.lstsq(design, learn[train_rows].astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(decoder.net.linear.weight.detach().numpy(), solution[:-1].T, atol=2e-5)
    np.testing.assert_allclose(decoder.net.linear.bias.detach().numpy(), solution[-1], atol=2e-5)
    training = decoder.spec.training
    assert training["val_mse"] == training["baseline_val_mse"] == pytest.approx(
        squared_error(decoder.net.predict(inputs[val_rows]), learn[val_rows]), rel=1e-12)


def test_held_out_split_is_a_seeded_partition():
    train_rows, val_rows = held_out_split(1000, seed=3)
    assert len(val_rows) == 100
    assert np.array_equal(np.sort(np.concatenate([train_rows, val_rows])), np.arange(1000))
    again = held_out_split(1000, seed=3)
    assert np.array_equal(again[1], val_rows) and not np.array_equal(held_out_split(1000, 4)[1], val_rows)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_save_load_round_trip(world, kind, tmp_path):
    sha = world["lattice"][kind]
    decoder = load_decoder(sha, store=world["store"])
    assert decoder.sha256 == sha and decoder.kind == kind and not decoder.net.training
    assert decoder.catalyzer_sha256 == world["lattice"]["sha"]
    assert decoder.spec.quantizer.to_json() == LATTICE and decoder.spec.d_in == 96
    assert (decoder.spec.kind, decoder.spec.hidden) == (kind, 32 if kind == "mlp" else None)
    data = decoder_bytes(decoder.net, decoder.spec.to_json())
    assert store.sha256_file(decoder.path) == sha
    assert data == open(decoder.path, "rb").read()
    sha_again, _ = save_decoder(decoder.net, decoder.spec.to_json(), path=tmp_path / "copy", store=tmp_path / "s")
    assert sha_again == sha
    from_path = load_decoder(tmp_path / "copy")
    codes = quantizer_from_spec(**LATTICE).quantize(
        catalyze(world["lattice"]["model"], load_sample().query[:50]))
    assert np.array_equal(from_path.decode(codes), decoder.decode(codes))
    np.testing.assert_allclose(decoder.decode(codes, batch=7), decoder.decode(codes), atol=1e-6)


def test_metadata_is_one_sorted_json_string(world):
    path = load_decoder(world["sign"]["mlp"], store=world["store"]).path
    data = open(path, "rb").read()
    raw = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]["spreadcode"]
    meta = json.loads(raw)
    assert raw == json.dumps(meta, sort_keys=True, separators=(",", ":"))
    assert meta["artifact"] == "decoder" and meta["format_version"] == 1
    assert meta["catalyzer"] == world["sign"]["sha"] and meta["decoder"]["kind"] == "mlp"
    assert set(meta["training"]) >= {"n_train", "n_val", "val_mse", "baseline_val_mse", "seed"}
    assert meta["training"]["n_train"] + meta["training"]["n_val"] == N_LEARN


def test_mlp_training_is_deterministic(world):
    entry = world["sign"]
    meta = entry["meta"]
    learn = load_sample().learn[:400]
    runs = [decoder_bytes(*train_decoder(learn, entry["model"], meta, hidden=16, epochs=1, seed=5))
            for _ in range(2)]
    assert runs[0] == runs[1]
    other = decoder_bytes(*train_decoder(learn, entry["model"], meta, hidden=16, epochs=1, seed=6))
    assert other != runs[0]


def test_mlp_keeps_the_epoch_of_lowest_held_out_error():
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((300, 4)).astype(np.float32)
    targets = rng.standard_normal((300, 6)).astype(np.float32)
    # Targets are noise: whatever the MLP learns from its 40 training rows is memorisation,
    # so the held-out error rises as it trains.
    held_out = (inputs[200:], targets[200:])
    net, curve = fit_decoder(inputs[:40], targets[:40], hidden=64, epochs=12, held_out=held_out)
    assert len(curve) == 12 and curve.index(min(curve)) < 11
    assert squared_error(net.predict(held_out[0]), held_out[1]) == pytest.approx(min(curve), rel=1e-6)
    assert fit_decoder(inputs[:40], targets[:40], kind="linear", held_out=held_out)[1] == []
    assert fit_decoder(inputs[:40], targets[:40], hidden=8, epochs=2)[1] == []


def test_decoder_metadata_records_the_kept_epoch(world):
    training = load_decoder(world["sign"]["mlp"], store=world["store"]).spec.training
    curve = training["val_mse_curve"]
    assert len(curve) == training["epochs"] and training["best_epoch"] == curve.index(min(curve)) + 1
    assert training["val_mse"] == pytest.approx(min(curve), rel=1e-6)


@pytest.mark.slow
def test_fine_tune_keeps_its_best_epoch_and_leaves_the_original_alone(world):
    entry = world["lattice"]
    meta = replace(entry["meta"], training={"epochs": 2})
    learn = load_sample().learn[:N_LEARN]
    before = catalyzer_bytes(entry["model"], meta)
    runs = [fine_tune_catalyzer(learn, entry["model"], meta, epochs=2, hidden=16, decoder_epochs=1,
                                seed=seed) for seed in (0, 0, 2)]
    assert catalyzer_bytes(entry["model"], meta) == before
    assert catalyzer_bytes(*runs[0][:2]) == catalyzer_bytes(*runs[1][:2])  # seeded
    for tuned, tuned_meta, curve in (runs[0], runs[2]):
        record = tuned_meta.training["fine_tuned"]
        assert len(curve) == 3 and record["val_mse_curve"] == curve and record["from"] == entry["sha"]
        assert curve[record["best_epoch"]] == min(curve)
        assert tuned_meta.quantizer.to_json() == LATTICE and tuned_meta.training["epochs"] == 2
        assert tuned_meta.lam == 0.02 and tuned_meta.sha256 is None
        assert not tuned.training
        same = all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(),
                                                     entry["model"].state_dict().values()))
        # Epoch 0 is the catalyzer given: it is returned unchanged exactly when no epoch beat it
        # on held-out data (1,350 training vectors are too few for the joint model to generalise).
        assert same == (record["best_epoch"] == 0)
    with pytest.raises(SpreadcodeError, match="too few"):
        fine_tune_catalyzer(learn[:20], entry["model"], meta, epochs=1)


def test_info_lists_the_decoders_of_the_files_catalyzer(world):
    rows = dict(info_command(world["lattice"]["spc"], store_path=world["store"]).rows)
    listed = rows["decoders"]
    assert f"{world['lattice']['linear'][:12]} (linear)" in listed
    assert f"{world['lattice']['mlp'][:12]} (mlp)" in listed
    assert world["sign"]["mlp"][:12] not in listed


# 3 queries × 40 candidates < N_BASE codes: each block decodes its candidates; 30 × 40 >
# N_BASE: the whole collection is decoded once.
@pytest.mark.parametrize("name, kind, nq", [("lattice", "mlp", 3), ("lattice", "mlp", N_QUERY),
                                            ("sign", "linear", 3), ("sign", "linear", N_QUERY)])
def test_rerank_orders_the_shortlist_by_decoded_distance(world, name, kind, nq):
    entry = world[name]
    queries = world["query"][:nq]
    shortlist = searched([entry["spc"]], queries, k=40, store=world["store"]).ids
    result = searched([entry["spc"]], queries, k=10, decoder=entry[kind], rerank=40, blend=0,
                           store=world["store"])
    assert result.ids.shape == (nq, 10) and result.distances.dtype == np.float32
    assert all(set(row) <= set(allowed) for row, allowed in zip(result.ids, shortlist))
    assert result.extra == {"rerank": 40, "blend": 0, "decoder": entry[kind]}
    decoded = all_decoded(world, name, kind)
    for query, candidates, ids, distances in zip(queries, np.sort(shortlist, axis=1), result.ids,
                                                 result.distances):
        order, expected = exact_decoded_knn(decoded[candidates], query[None], 10)  # ties: lower id
        assert np.array_equal(ids, candidates[order[0]])
        np.testing.assert_allclose(distances, expected[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, kind", [("lattice", "mlp"), ("lattice", "linear"), ("sign", "mlp")])
def test_rerank_of_the_whole_base_is_exact_search_on_decoded_vectors(world, name, kind):
    entry = world[name]
    expected_ids, expected_dist = exact_decoded_knn(all_decoded(world, name, kind), world["query"], 20)
    result = searched([entry["spc"]], world["query"], k=20, decoder=entry[kind],
                           rerank=N_BASE, blend=0, store=world["store"])
    assert np.array_equal(result.ids, expected_ids)
    np.testing.assert_allclose(result.distances, expected_dist, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["sign", "lattice"])
def test_decoded_search_is_exact_search_on_decoded_vectors(world, name):
    expected_ids, expected_dist = exact_decoded_knn(all_decoded(world, name, "mlp"), world["query"], 15)
    result = decoded_search([world[name]["spc"]], world["query"], k=15, decoder=world[name]["mlp"],
                            store=world["store"], block=128)
    assert np.array_equal(result.ids, expected_ids)
    np.testing.assert_allclose(result.distances, expected_dist, rtol=1e-4, atol=1e-5)


def split_with_ids(world, name):
    """The .spc of ``name`` rewritten as two files: the first without ids, the second with
    explicit ids 10_000 + 3·position. Returns (paths, global ids of all rows in order)."""
    collection = open_collection([world[name]["spc"]])
    raw = np.asarray(collection.parts[0].codes_bytes)
    h, sha = collection.parts[0].header, collection.catalyzer_sha256
    paths, cut = [world["root"] / f"{name}-a.spc", world["root"] / f"{name}-b.spc"], 250
    for path, rows, with_ids in ((paths[0], slice(0, cut), False), (paths[1], slice(cut, None), True)):
        with SpcWriter(path, kind=h.kind, d=h.d, param=h.param, bits=h.bits, code_bytes=h.code_bytes,
                       input_dim=h.input_dim, input_dtype=h.input_dtype, catalyzer_sha256=sha,
                       with_ids=with_ids) as writer:
            part = raw[rows]
            writer.append(part, 10_000 + 3 * np.arange(len(part)) if with_ids else None)
    global_ids = np.concatenate([np.arange(cut), 10_000 + 3 * np.arange(raw.shape[0] - cut)])
    return paths, global_ids


def test_collection_codes_follow_global_ids(world):
    paths, global_ids = split_with_ids(world, "lattice")
    collection = open_collection(paths)
    whole = np.asarray(open_collection([world["lattice"]["spc"]]).parts[0].codes_bytes)
    pick = np.sort(np.random.default_rng(0).choice(len(global_ids), 60, replace=False))
    codes = collection.codes_by_id(global_ids[pick], check=True)
    assert np.array_equal(codes, collection.quantizer.codes_from_bytes(whole[pick]))
    with pytest.raises(SpreadcodeError, match="no code has the id 10007"):
        collection.codes_by_id(np.array([global_ids[0], 7 + 10_000]), check=True)


@pytest.mark.parametrize("search", ["rerank", "decoded"])
def test_several_files_with_stored_ids(world, search):
    paths, global_ids = split_with_ids(world, "sign")
    expected, _ = exact_decoded_knn(all_decoded(world, "sign", "linear"), world["query"], 10)
    if search == "rerank":
        result = searched(paths, world["query"], k=10, decoder=world["sign"]["linear"],
                               rerank=N_BASE, blend=0, store=world["store"])
    else:
        result = decoded_search(paths, world["query"], k=10, decoder=world["sign"]["linear"],
                                store=world["store"], block=100)
    assert np.array_equal(result.ids, global_ids[expected])


def test_k_beyond_the_codes_is_capped_not_padded(world):
    paths, global_ids = split_with_ids(world, "sign")
    first_file = global_ids[:250]
    for result in (searched(paths[:1], world["query"], k=300, decoder=world["sign"]["mlp"],
                                 store=world["store"]),
                   decoded_search(paths[:1], world["query"], k=300, decoder=world["sign"]["mlp"],
                                  store=world["store"])):
        assert result.ids.shape == result.distances.shape == (N_QUERY, 250)
        assert np.isfinite(result.distances).all()
        assert np.all(np.sort(result.ids, axis=1) == np.sort(first_file))


@pytest.mark.parametrize("blend", [0.5, None])
def test_blended_rerank_adds_the_compressed_distance(world, blend):
    entry = world["lattice"]
    decoder = load_decoder(entry["mlp"], store=world["store"])
    weight = decoder.blend if blend is None else blend
    shortlist = searched([entry["spc"]], world["query"], k=50, store=world["store"])
    result = searched([entry["spc"]], world["query"], k=10, decoder=decoder, rerank=50,
                           blend=blend, store=world["store"])
    assert result.extra["blend"] == weight
    decoded = all_decoded(world, "lattice", "mlp")
    diff = decoded[shortlist.ids].astype(np.float64) - world["query"][:, None, :]
    score = (diff ** 2).sum(axis=2) + weight * shortlist.distances
    order = np.lexsort((shortlist.ids, score), axis=1)[:, :10]
    assert np.array_equal(result.ids, np.take_along_axis(shortlist.ids, order, axis=1))
    np.testing.assert_allclose(result.distances, np.take_along_axis(score, order, axis=1),
                               rtol=1e-4, atol=1e-5)


def test_calibrated_blend_is_the_weight_times_the_distance_unit_ratio(world):
    entry = world["lattice"]
    decoder = load_decoder(entry["mlp"], store=world["store"])
    learn = load_sample().learn[:N_LEARN]
    quantizer = quantizer_from_spec(**LATTICE)
    catalyzed = catalyze(entry["model"], learn)
    codes = quantizer.quantize(catalyzed)
    _, val_rows = held_out_split(N_LEARN, seed=0)
    queries, database = val_rows[::5], np.setdiff1d(val_rows, val_rows[::5])
    assert decoder.spec.training["calibration_queries"] == len(queries) == 30
    blend, calibration = calibrate_blend(decoder.net, quantizer, codes[database],
                                         quantizer.reconstruct(codes[database]), learn[database],
                                         catalyzed[queries], learn[queries])
    assert blend == decoder.blend and calibration == decoder.spec.training["blend_calibration"]
    # The unit ratio by hand: mean decoded over mean compressed distance of the top candidates.
    distances, shortlist = quantizer.search(codes[database], catalyzed[queries], CALIBRATION_SHORTLIST)
    top = shortlist[:, :BLEND_SCALE_TOP]
    decoded = decoder.net.predict(quantizer.reconstruct(codes[database]))
    decoded_mean = ((decoded[top].astype(np.float64) - learn[queries][:, None, :]) ** 2).sum(axis=2).mean()
    scale = decoded_mean / distances[:, :BLEND_SCALE_TOP].astype(np.float64).mean()
    assert calibration["scale"] == pytest.approx(scale, rel=1e-5)
    assert calibration["weight"] == BLEND_WEIGHT and blend == pytest.approx(BLEND_WEIGHT * scale, rel=1e-5)
    nearest = exact_decoded_knn(learn[database], learn[queries], 1)[0][:, 0]
    recalls = calibration["recall_at_1"]
    assert recalls["compressed"] == np.mean(shortlist[:, 0] == nearest)
    for key, weight in (("decoded", 0.0), ("blended", blend)):
        score = ((decoded[shortlist].astype(np.float64) - learn[queries][:, None, :]) ** 2).sum(axis=2) \
            + weight * distances
        best = shortlist[np.arange(len(queries)), np.lexsort((shortlist, score), axis=1)[:, 0]]
        assert recalls[key] == np.mean(best == nearest)


def test_default_shortlist():
    assert default_rerank(1) == 100 and default_rerank(10) == 100 and default_rerank(50) == 500


def test_decoder_of_another_catalyzer_is_refused(world):
    with pytest.raises(SpreadcodeError) as info:
        searched([world["sign"]["spc"]], world["query"], k=5, decoder=world["lattice"]["mlp"],
                      store=world["store"])
    assert world["lattice"]["sha"] in str(info.value) and world["sign"]["sha"] in str(info.value)
    with pytest.raises(SpreadcodeError, match=world["sign"]["sha"]):
        decoded_search([world["lattice"]["spc"]], world["query"], k=5, decoder=world["sign"]["linear"],
                       store=world["store"])


def test_bad_inputs_raise_clear_errors(world, tmp_path):
    entry = world["lattice"]
    meta = entry["meta"]
    learn = load_sample().learn[:200]
    with pytest.raises(SpreadcodeError, match="unknown decoder kind 'pca'"):
        train_decoder(learn, entry["model"], meta, kind="pca")
    with pytest.raises(SpreadcodeError, match="epochs only apply to the mlp decoder"):
        train_decoder(learn, entry["model"], meta, kind="linear", epochs=3)
    with pytest.raises(SpreadcodeError, match="too few to train a decoder"):
        train_decoder(learn[:9], entry["model"], meta, kind="linear")
    with pytest.raises(SpreadcodeError, match="blend must be a finite number >= 0"):
        searched([entry["spc"]], world["query"], k=10, decoder=entry["mlp"], blend=-1,
                      store=world["store"])
    with pytest.raises(SpreadcodeError, match="must hold at least k=10"):
        searched([entry["spc"]], world["query"], k=10, decoder=entry["mlp"], rerank=5,
                      store=world["store"])
    with pytest.raises(SpreadcodeError, match="dimension 95"):
        searched([entry["spc"]], world["query"][:, :95], k=10, decoder=entry["mlp"],
                      store=world["store"])
    with pytest.raises(SpreadcodeError, match="not a decoder"):
        load_decoder(entry["sha"], store=world["store"])
    with pytest.raises(SpreadcodeError, match="no model with hash"):
        load_decoder("ab" * 10, store=world["store"])
    np.save(tmp_path / "learn95.npy", learn[:, :95])
    with pytest.raises(SpreadcodeError, match="learn95.npy: vectors have dimension 95"):
        train_decoder_command(tmp_path / "learn95.npy", model=entry["sha"], store=world["store"])


def test_train_decoder_command_end_to_end(world, tmp_path):
    np.save(tmp_path / "learn.npy", load_sample().learn[:N_LEARN])
    catalyzer_file = world["store"] / f"{world['lattice']['sha']}.safetensors"
    summary = train_decoder_command(tmp_path / "learn.npy", model=catalyzer_file, kind="linear",
                                    output=tmp_path / "dec.safetensors", store=tmp_path / "store",
                                    progress=False)
    # Same data, catalyzer, kind and seed as the fixture's linear decoder: the same artifact.
    assert summary.sha256 == world["lattice"]["linear"]
    assert (tmp_path / "store" / f"{summary.sha256}.safetensors").read_bytes() == \
        (tmp_path / "dec.safetensors").read_bytes()
    lines = summary.report().splitlines()
    assert lines[0] == f"decoder {summary.sha256}"
    assert any("held-out squared error per vector (150 vectors)" in line
               and f"{summary.val_mse:.5f}" in line for line in lines)
    assert summary.n_train == N_LEARN - 150 and summary.val_mse == summary.baseline_val_mse


def test_decoder_net_kinds():
    assert DecoderNet(4, 6).kind == "linear" and set(DecoderNet(4, 6).state_dict()) == {
        "linear.weight", "linear.bias"}
    mlp = DecoderNet(4, 6, hidden=8)
    assert mlp.kind == "mlp" and "residual_scale" in mlp.state_dict()
    assert mlp.predict(np.zeros((3, 4), np.float32)).shape == (3, 6)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(catalyzer="abc"), "bad 'catalyzer': 'abc' is not a SHA-256"),
    (lambda m: m.update(d_in=0), "bad 'd_in': 0 is not an integer"),
    (lambda m: m.update(quantizer={"kind": "lattice", "d": 8}), "bad 'quantizer': keys"),
    (lambda m: m["decoder"].update(kind="pca"), "bad 'decoder.kind': 'pca'"),
    (lambda m: m["decoder"].update(kind="mlp", hidden=None), "bad 'decoder.hidden': None"),
    (lambda m: m["decoder"].update(blend=float("inf")), "bad 'decoder.blend': inf"),
    (lambda m: m.update(training=[]), "bad 'training': not an object"),
])
def test_corrupt_decoder_metadata_names_the_field(world, edit, message):
    meta = store.read_metadata(store.resolve(world["lattice"]["linear"], world["store"],
                                             kind="decoder"))
    assert DecoderMeta.from_json(meta, "x").to_json() == {
        key: meta[key] for key in ("catalyzer", "quantizer", "d_in", "decoder", "training")}
    edit(meta)
    with pytest.raises(SpreadcodeError, match=f"^x: corrupt decoder metadata \\({message}"):
        DecoderMeta.from_json(meta, "x")


@pytest.mark.parametrize("n, nq, d, k", [(1, 1, 1, 1), (300, 7, 5, 300), (1000, 13, 97, 10),
                                         (513, 4, 384, 50)])
def test_decoded_topk_is_the_exact_nearest(n, nq, d, k):
    """The compiled float scan equals a float64 brute force: the same neighbours in the same
    order, squared L2 distances to float32 rounding (sizes that fill no tile exactly)."""
    rng = np.random.default_rng(n + d)
    db = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((nq, d)).astype(np.float32)
    exact = ((queries[:, None].astype(np.float64) - db[None]) ** 2).sum(2)
    expected = np.argsort(exact, axis=1, kind="stable")[:, :k]
    distances, rows = decoded_topk(db, queries, k)
    assert distances.dtype == np.float32 and rows.dtype == np.int64
    assert distances.shape == rows.shape == (nq, k)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(exact, expected, 1), rtol=1e-4,
                               atol=1e-4)


def test_decoded_topk_breaks_ties_by_row_and_checks_the_dimension():
    db = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # rows 0-3 equal, 4-7, 8-11
    distances, rows = decoded_topk(db, np.array([[0, 1, 0], [0, 0, 2]], np.float32), 6)
    np.testing.assert_array_equal(rows, [[4, 5, 6, 7, 0, 1], [8, 9, 10, 11, 0, 1]])
    np.testing.assert_array_equal(distances, [[0, 0, 0, 0, 2, 2], [1, 1, 1, 1, 5, 5]])
    with pytest.raises(SpreadcodeError, match="dimension 2 but the vectors have 3"):
        decoded_topk(db, np.zeros((1, 2), np.float32), 1)


def test_int8_rows_hold_each_coordinate_within_half_a_step():
    """`int8_rows`: d + 4 bytes a row, scale = max|x| / 127 (the largest coordinate exact up
    to float rounding), every coordinate within half a scale; a zero row stays zero; the
    codes are numpy's rint(x / scale) (halves to even) exactly, the rounding the int8 scan
    gives its queries; no rows, or rows of no dimensions, are fine."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((500, 37)) * rng.uniform(0.01, 100, (500, 1))).astype(np.float32)
    x[7] = 0
    rows = int8_rows(x)
    assert rows.shape == (500,) and rows.dtype.itemsize == 37 + 4
    held = int8_vectors(rows)
    assert np.all(np.abs(held - x) <= rows["scale"][:, None] * np.float32(0.5 + 1e-5))
    np.testing.assert_allclose(rows["scale"], np.abs(x).max(1) / 127, rtol=1e-6)
    assert np.abs(rows["codes"]).max() == 127 and not rows["codes"][7].any()
    assert rows["scale"][7] == 0
    x[8] = np.arange(37) - np.float32(17.5)  # scale 1 and exact halves: rounded to even
    x[8, 0] = 127
    scale = np.abs(x).max(1) / np.float32(127)
    want = np.rint(x / np.where(scale > 0, scale, np.float32(1))[:, None]).astype(np.int8)
    rows = int8_rows(x)
    np.testing.assert_array_equal(rows["codes"], want)
    np.testing.assert_array_equal(rows["scale"], scale)
    assert int8_rows(np.zeros((0, 5), np.float32)).shape == (0,)
    assert not int8_rows(np.zeros((3, 0), np.float32))["scale"].any()


@pytest.mark.parametrize("n, nq, d, k", [(1, 1, 1, 1), (300, 7, 5, 300), (1000, 13, 97, 10),
                                        (600, 8, 1100, 20)])
def test_an_int8_decoded_topk_ranks_the_vectors_it_holds_by_exact_integer_sums(n, nq, d, k):
    """The compiled int8 scan rounds each query as `int8_rows` rounds a vector (q ≈ t · b)
    and ranks rows by ‖s · c‖² − 2 s t ⟨b, c⟩ with ⟨b, c⟩ an exact integer sum, one rounding
    after it: the top-k of that formula computed here (ids exactly, distances to float
    rounding), also bounded, also in range searches, and the same floats from the AVX512-VNNI
    kernel and the portable one (both the portable one where the CPU has no VNNI). d = 1,100
    takes the portable kernel's sums over two slices of 1,024 dimensions."""
    from spreadcode import _codec

    rng = np.random.default_rng(n + d)
    rows = int8_rows(rng.standard_normal((n, d)).astype(np.float32))
    queries = rng.standard_normal((nq, d)).astype(np.float32)
    held_queries = int8_rows(queries)
    dots = held_queries["codes"].astype(np.int64) @ rows["codes"].astype(np.int64).T
    weights = (np.float32(2) * held_queries["scale"])[:, None] * rows["scale"][None, :]
    norms = (int8_vectors(rows).astype(np.float64) ** 2).sum(1)
    formula = (norms[None, :] - weights.astype(np.float64) * dots).astype(np.float32)
    formula += np.einsum("ij,ij->i", queries, queries)[:, None]
    order = np.lexsort((np.broadcast_to(np.arange(n), formula.shape), formula), axis=1)[:, :k]
    for bound in (None, np.take_along_axis(formula, order, 1)[:, (k - 1) // 2].copy()):
        got = decoded_topk(rows, queries, k, bound)
        within = np.take_along_axis(formula, order, 1) <= (np.inf if bound is None else bound[:, None])
        np.testing.assert_array_equal(got[1], np.where(within, order, -1))
        np.testing.assert_allclose(got[0][within], np.take_along_axis(formula, order, 1)[within],
                                   rtol=1e-5, atol=1e-5)
    as_bytes = np.ascontiguousarray(rows).view(np.uint8).reshape(n, d + 4)
    scans = [_codec.int8_scan(as_bytes, queries, portable) for portable in (False, True)]
    tops = [scan.topk(k, 2, None) for scan in scans]
    radius = float(np.median(tops[0][0][:, -1]))
    ranges = [scan.range(radius, 2) for scan in scans]
    assert len(ranges[0][1]) > 0
    for vnni, portable in zip(tops[0] + ranges[0], tops[1] + ranges[1]):
        np.testing.assert_array_equal(vnni, portable)
    with pytest.raises(SpreadcodeError, match=f"dimension {d + 1} but the int8 rows hold {d}"):
        decoded_topk(rows, np.zeros((1, d + 1), np.float32), 1)
    wide = _codec.INT8_SCAN_MAX_D + 1
    with pytest.raises(SpreadcodeError, match=f"at most {wide - 1} dimensions"):
        _codec.int8_scan(np.zeros((1, wide + 4), np.uint8), np.zeros((1, wide), np.float32))


def test_a_bounded_decoded_topk_keeps_what_lies_within_the_bound():
    """With a bound per query, the scan returns the unbounded top-k's entries at a distance
    up to the bound (the bound itself included, ties still to the lower row) and (inf, -1)
    in the slots left; an infinite bound changes nothing."""
    rng = np.random.default_rng(7)
    db = rng.standard_normal((700, 24)).astype(np.float32)
    db[[10, 20, 30]] = db[5]  # rows 5, 10, 20, 30 lie at the same distance of every query
    queries = rng.standard_normal((9, 24)).astype(np.float32)
    queries[0] = db[5] + 0.01
    full_d, full_r = decoded_topk(db, queries, 40)
    bound = full_d[np.arange(9), [0, 2, 5, 13, 21, 39, 0, 1, 3]].copy()
    bound[0] = full_d[0, 1]  # the 4th of the tie at row 5: 10, 20 and 30 enter, not beyond
    bound[-1] = np.inf
    got_d, got_r = decoded_topk(db, queries, 40, bound)
    within = full_d <= bound[:, None]
    assert within[0, :4].all() and not within[0, 4]
    np.testing.assert_array_equal(got_r, np.where(within, full_r, -1))
    np.testing.assert_array_equal(got_d, np.where(within, full_d, np.float32(np.inf)))


def test_a_decoded_search_over_many_parts_equals_one_part():
    """The decoded k-NN of a collection scans part after part, each bounded by the k-th
    distance found so far (`search.bounded_knn`); the result equals the search of the same
    codes as one part, ids and distances, with a tie across parts going to the lower id."""
    from spreadcode import search

    rng = np.random.default_rng(3)
    decoded = rng.standard_normal((900, 8)).astype(np.float32)
    decoded[850] = decoded[3]  # a tie across parts

    class Part:
        def __init__(self, rows):
            self.rows, self.count, self.ids = rows, len(rows), None

    def blocks_of(quantizer, part, offset, decoder, block):
        return [decoded[part.rows]]

    queries = np.vstack([decoded[3] + 0.001, rng.standard_normal((20, 8))]).astype(np.float32)
    one = search.part_decoded_knn(None, Part(np.arange(900)), 0, None, queries, 30, 64,
                                  blocks_of)
    best = search.bounded_knn(
        (functools.partial(search.part_decoded_knn, None, Part(np.arange(first, stop)), first,
                           None, queries, 30, 64, blocks_of)
         for first, stop in ((0, 5), (5, 400), (400, 410), (410, 900))), 30)
    np.testing.assert_array_equal(best[1], one[1])
    np.testing.assert_array_equal(best[0], one[0])
    assert best[1][0, 0] == 3 and best[1][0, 1] == 850
