"""End-to-end tests of every CLI command on small real data (slices of the bundled sample),
and of the promise that bad input gives one clear error line, a non-zero exit and no output."""
import hashlib
import platform
import re
import shutil
import struct

import numpy as np
import pytest

from helpers import assert_clean_error, run, write_raw_fvecs
from spreadcode import container, malloc, vecio
from spreadcode.catalyzer import load_catalyzer
from spreadcode.knn import exact_knn
from spreadcode.sample import load_sample


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A trained lattice catalyzer (2 epochs on 3,000 sample vectors), a database and
    queries (the default residual model: tests/test_residual.py)."""
    root = tmp_path_factory.mktemp("cli")
    sample = load_sample()
    paths = {name: root / f"{name}.fvecs" for name in ("learn", "base", "query")}
    vecio.write_vectors(paths["learn"], sample.learn[:3000])
    vecio.write_vectors(paths["base"], sample.base[:2000])
    vecio.write_vectors(paths["query"], sample.query[:40])
    _, gt = exact_knn(sample.base[:2000], sample.query[:40], 100)
    vecio.write_vectors(root / "gt.ivecs", gt.astype(np.int32))
    store = root / "store"
    trained = run("train", paths["learn"], "--quantizer", "lattice", "--epochs", 2, "--store", store, "-q",
                  "-o", root / "model.catalyzer")
    assert trained.exit_code == 0, trained.output
    sha = trained.stdout.split()[1]
    encoded = run("encode", paths["base"], "-o", root / "db.spc", "--store", store, "-q")
    assert encoded.exit_code == 0, encoded.output
    return {"root": root, "store": store, "sha": sha, "gt": gt, **paths}


def test_train_prints_hash_and_writes_exact_output_path(work):
    output = (work["root"] / "model.catalyzer").read_bytes()
    assert hashlib.sha256(output).hexdigest() == work["sha"]
    assert (work["store"] / f"{work['sha']}.safetensors").read_bytes() == output
    model, meta = load_catalyzer(work["root"] / "model.catalyzer")
    assert (model.d_in, model.d_out) == (96, 24)
    assert meta.quantizer.to_json() == {"kind": "lattice", "d": 24, "param": 79}  # --bits 64
    training = meta.training
    assert training["epochs"] == 2 and training["n_train"] + training["n_val_db"] \
        + training["n_val_queries"] == 3000
    assert 1 <= training["best_epoch"] <= 2 and 0 < training["val_recall"]["10"] <= 1


def test_encode_writes_one_code_per_vector_and_is_deterministic(work):
    again = run("encode", work["base"], "-o", work["root"] / "db2.spc", "--store", work["store"],
                "--model", work["sha"][:12], "--batch", 333, "-q")
    assert again.exit_code == 0, again.output
    first = (work["root"] / "db.spc").read_bytes()
    assert first == (work["root"] / "db2.spc").read_bytes()
    spc = container.open_spc(work["root"] / "db.spc")
    assert (spc.count, spc.header.kind, spc.header.d, spc.header.param) == (2000, "lattice", 24, 79)
    assert spc.header.catalyzer_sha256 == work["sha"]


def test_info_reports_header_checksum_and_model(work):
    result = run("info", work["root"] / "db.spc", "--store", work["store"])
    assert result.exit_code == 0, result.output
    rows = {key.rstrip(":"): value.strip() for key, value in
            (line.split(":", 1) for line in result.stdout.splitlines())}
    assert rows["vectors"] == "2000" and rows["code"] == "lattice S(24, r²=79)"
    assert rows["checksum"].startswith("ok")
    assert rows["catalyzer sha256"] == work["sha"]
    assert rows["catalyzer in store"] == str(work["store"] / f"{work['sha']}.safetensors")
    assert rows["decoders"] == "none"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_cli_raises_its_malloc_thresholds(work, monkeypatch):
    """Every command runs with the thresholds of `spreadcode.malloc` (set once per process)."""
    monkeypatch.setattr(malloc, "thresholds_set", None)
    assert run("info", work["root"] / "db.spc", "--store", work["store"]).exit_code == 0
    assert malloc.thresholds_set is True


def test_search_tsv_ivecs_h5_and_recall(work):
    db, query, store = work["root"] / "db.spc", work["query"], work["store"]
    tsv = run("search", db, query, "-k", 5, "--store", store)
    assert tsv.exit_code == 0, tsv.output
    rows = [line.split("\t") for line in tsv.stdout.strip().splitlines()]
    assert rows[0] == ["query", "rank", "id", "distance"] and len(rows) == 1 + 40 * 5

    out = work["root"] / "res.ivecs"
    assert run("search", db, query, "-k", 5, "--store", store, "-o", out).exit_code == 0
    ids = vecio.read_groundtruth(out)
    dist = vecio.read_vectors(work["root"] / "res.distances.fvecs")
    assert ids.shape == (40, 5) and dist.shape == (40, 5)
    assert np.all(np.diff(dist, axis=1) >= 0)
    tsv_ids = np.array([int(r[2]) for r in rows[1:]]).reshape(40, 5)
    np.testing.assert_array_equal(ids, tsv_ids)

    with_gt = run("search", db, query, "-k", 100, "--store", store, "--gt", work["root"] / "gt.ivecs")
    assert with_gt.exit_code == 0, with_gt.output
    recalls = dict(part.split("=") for part in with_gt.stdout.split())
    assert set(recalls) == {"1-recall@1", "1-recall@10", "1-recall@100"}
    assert 0.0 <= float(recalls["1-recall@1"]) <= float(recalls["1-recall@100"]) <= 1.0
    assert float(recalls["1-recall@100"]) > 0.5


def test_search_several_files_is_one_collection(work, tmp_path):
    base = vecio.read_vectors(work["base"])
    halves = []
    for i, part in enumerate((base[:1200], base[1200:])):
        src = tmp_path / f"part{i}.fvecs"
        vecio.write_vectors(src, part)
        halves.append(tmp_path / f"part{i}.spc")
        assert run("encode", src, "-o", halves[-1], "--store", work["store"], "-q").exit_code == 0
    whole = tmp_path / "whole.npy"
    split = tmp_path / "split.npy"
    assert run("search", work["root"] / "db.spc", work["query"], "-k", 20, "--store",
               work["store"], "-o", whole).exit_code == 0
    assert run("search", *halves, work["query"], "-k", 20, "--store", work["store"],
               "-o", split).exit_code == 0
    np.testing.assert_array_equal(np.load(whole), np.load(split))


def test_range_search_returns_every_code_within_radius(work, tmp_path):
    out = tmp_path / "range.h5"
    knn = tmp_path / "knn.h5"
    db, store = work["root"] / "db.spc", work["store"]
    assert run("search", db, work["query"], "-k", 2000, "--store", store, "-o", knn).exit_code == 0
    result = run("search", db, work["query"], "--radius", 0.6, "--store", store, "-o", out)
    assert result.exit_code == 0, result.output
    import h5py
    with h5py.File(out) as ranged, h5py.File(knn) as full:
        lims, ids = ranged["lims"][:], ranged["neighbors"][:]
        all_dist, all_ids = full["distances"][:], full["neighbors"][:]
    for q in (0, 7, 39):
        expected = set(all_ids[q][all_dist[q] <= 0.6])
        assert set(ids[lims[q]:lims[q + 1]]) == expected


@pytest.mark.slow
def test_demo_runs_on_the_bundled_sample():
    result = run("demo", "--epochs", 1, "-q")
    assert result.exit_code == 0, result.output
    recalls = dict(re.findall(r"1-recall@(\d+)=([\d.]+)%", result.stdout))
    assert set(recalls) == {"1", "10", "100"}
    assert 0 < float(recalls["1"]) <= float(recalls["10"]) <= float(recalls["100"]) <= 100
    assert float(recalls["10"]) > 20  # far above chance (10 of 10,000) after one epoch
    ratio = float(re.search(r"([\d.]+)x smaller than float32", result.stdout).group(1))
    assert 40 < ratio <= 48  # 64-bit codes of 96 floats, plus the header
    assert "encoded 10000 vectors" in result.stdout and "searched 500 queries" in result.stdout


# ---- bad inputs: one clear line, non-zero exit, nothing left behind ------------------------

def _copy_with(path, target, mutate):
    data = bytearray(path.read_bytes())
    mutate(data)
    target.write_bytes(bytes(data))
    return target


def test_corrupt_spc_files_are_refused(work, tmp_path):
    good = work["root"] / "db.spc"
    header = container.read_header(good)
    cases = {
        "truncated": (lambda b: b.__delitem__(slice(len(b) - 5, None)), "truncated"),
        "flipped": (lambda b: b.__setitem__(header.payload_offset + 3,
                                            b[header.payload_offset + 3] ^ 0x10), "checksum"),
        "magic": (lambda b: b.__setitem__(slice(0, 8), b"NOTSPC!!"), "not a .spc file"),
        "newer": (lambda b: b.__setitem__(slice(8, 10), struct.pack("<H", 2)), "version 2"),
    }
    for name, (mutate, message) in cases.items():
        bad = _copy_with(good, tmp_path / f"{name}.spc", mutate)
        out = tmp_path / f"{name}.ivecs"
        result = run("search", bad, work["query"], "-k", 5, "--store", work["store"], "-o", out)
        assert_clean_error(result, str(bad), message)
        assert not out.exists()
    flipped = run("info", tmp_path / "flipped.spc", "--store", work["store"])
    assert flipped.exit_code != 0 and "MISMATCH" in flipped.stdout
    assert "checksum mismatch" in flipped.stderr


def test_bad_queries_are_refused(work, tmp_path):
    db, store = work["root"] / "db.spc", work["store"]
    wrong_dim = tmp_path / "q32.fvecs"
    vecio.write_vectors(wrong_dim, np.ones((3, 32), np.float32))
    assert_clean_error(run("search", db, wrong_dim, "-k", 5, "--store", store), "dimension 32", "96")
    nan_q = tmp_path / "nan.fvecs"
    queries = vecio.read_vectors(work["query"]).copy()
    queries[2, 5] = np.nan
    write_raw_fvecs(nan_q, queries)
    assert_clean_error(run("search", db, nan_q, "-k", 5, "--store", store), "vector 2", "NaN")
    malformed = tmp_path / "bad.fvecs"
    malformed.write_bytes(work["query"].read_bytes()[:-7])
    assert_clean_error(run("search", db, malformed, "-k", 5, "--store", store), str(malformed))


def test_bad_encode_inputs_leave_no_output(work, tmp_path):
    store = work["store"]
    base = vecio.read_vectors(work["base"])[:100].copy()
    base[50, 0] = np.inf
    inf_file = tmp_path / "inf.fvecs"
    write_raw_fvecs(inf_file, base)
    empty = tmp_path / "empty.fvecs"
    empty.write_bytes(b"")
    wrong_dim = tmp_path / "w.fvecs"
    vecio.write_vectors(wrong_dim, np.ones((4, 12), np.float32))
    for source, message in ((inf_file, "vector 50 contains NaN or Inf"), (empty, "no vectors"), (wrong_dim, "dimension 12")):
        out = tmp_path / f"{source.stem}.spc"
        assert_clean_error(run("encode", source, "-o", out, "--store", store), message)
        assert not out.exists()
        assert list(tmp_path.glob("*.spc*")) == []


def test_missing_or_mismatched_model_is_refused(work, tmp_path):
    db = work["root"] / "db.spc"
    empty_store = tmp_path / "empty-store"
    assert_clean_error(run("search", db, work["query"], "-k", 5, "--store", empty_store),
                       work["sha"][:12])
    assert_clean_error(run("encode", work["base"], "-o", tmp_path / "x.spc", "--store",
                           empty_store), "no catalyzer")
    assert not (tmp_path / "x.spc").exists()
    other = run("train", work["learn"], "--quantizer", "lattice", "--epochs", 1, "--seed", 1, "--store", tmp_path / "s2",
                "-q")
    assert other.exit_code == 0, other.output
    other_sha = other.stdout.split()[1]
    result = run("search", db, work["query"], "-k", 5, "--store", tmp_path / "s2",
                 "--model", other_sha)
    assert_clean_error(result, other_sha, work["sha"])


# ---- learned decoders and sign codes ------------------------------------------------------

def test_train_decoder_and_rerank(work, tmp_path):
    store, db, query = work["store"], work["root"] / "db.spc", work["query"]
    trained = run("train-decoder", work["learn"], "--model", work["sha"], "--kind", "linear",
                  "--store", store, "-q", "-o", tmp_path / "lin.decoder")
    assert trained.exit_code == 0, trained.output
    decoder_sha = trained.stdout.split()[1]
    assert "best linear map" in trained.stdout and (tmp_path / "lin.decoder").is_file()
    info = run("info", db, "--store", store)
    assert decoder_sha[:12] in info.stdout and "linear" in info.stdout

    plain, reranked, everything = (tmp_path / n for n in ("plain.npy", "rr.npy", "all.npy"))
    assert run("search", db, query, "-k", 50, "--store", store, "-o", plain).exit_code == 0
    result = run("search", db, query, "-k", 10, "--store", store, "--decoder", decoder_sha,
                 "--rerank", 50, "-o", reranked)
    assert result.exit_code == 0, result.output
    shortlist, top = np.load(plain), np.load(reranked)
    assert all(set(t) <= set(s) for t, s in zip(top, shortlist))
    result = run("search", db, query, "-k", 10, "--store", store, "--decoder", decoder_sha,
                 "--decode-all", "-o", everything)
    assert result.exit_code == 0, result.output
    assert np.load(everything).shape == (40, 10)


@pytest.mark.slow
def test_fine_tune_then_encode_with_the_new_catalyzer(work, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(work["store"], store)
    result = run("fine-tune", work["learn"], "--model", work["sha"], "--epochs", 1,
                 "--store", store, "-q", "-o", tmp_path / "tuned.catalyzer")
    assert result.exit_code == 0, result.output
    tuned_sha = result.stdout.split()[1]
    assert tuned_sha != work["sha"] and (tmp_path / "tuned.catalyzer").is_file()
    assert f"fine-tuned from {work['sha'][:12]}" in result.stdout
    assert (store / f"{work['sha']}.safetensors").read_bytes() == \
        (work["store"] / f"{work['sha']}.safetensors").read_bytes()
    db = tmp_path / "tuned.spc"
    assert run("encode", work["base"], "-o", db, "--model", tuned_sha, "--store", store,
               "-q").exit_code == 0
    assert container.open_spc(db).header.catalyzer_sha256 == tuned_sha
    searched = run("search", db, work["query"], "-k", 100, "--store", store,
                   "--gt", work["root"] / "gt.ivecs")
    assert searched.exit_code == 0 and "1-recall@100=" in searched.stdout
    wrong = tmp_path / "wrong.fvecs"
    write_raw_fvecs(wrong, np.ones((50, 7)))
    assert_clean_error(run("fine-tune", wrong, "--model", tuned_sha, "--store", store),
                       "dimension 7")


def test_decoder_of_another_catalyzer_is_refused(work, tmp_path):
    other_store = tmp_path / "s"
    other = run("train", work["learn"], "--quantizer", "lattice", "--epochs", 1, "--seed", 3, "--store", other_store, "-q")
    other_sha = other.stdout.split()[1]
    dec = run("train-decoder", work["learn"], "--model", other_sha, "--kind", "linear",
              "--store", other_store, "-q")
    assert dec.exit_code == 0, dec.output
    decoder_sha = dec.stdout.split()[1]
    result = run("search", work["root"] / "db.spc", work["query"], "-k", 5, "--store",
                 work["store"], "--decoder", other_store / f"{decoder_sha}.safetensors")
    assert_clean_error(result, other_sha[:12], work["sha"][:12])


def test_sign_codes_asymmetric_and_hamming(work, tmp_path):
    store = tmp_path / "store"
    trained = run("train", work["learn"], "--quantizer", "sign", "--bits", 32, "--epochs", 1,
                  "--store", store, "-q")
    assert trained.exit_code == 0, trained.output
    db = tmp_path / "sign.spc"
    assert run("encode", work["base"], "-o", db, "--store", store, "-q").exit_code == 0
    assert container.open_spc(db).header.code_bytes == 4
    gt = work["root"] / "gt.ivecs"
    for extra in ((), ("--hamming",)):
        result = run("search", db, work["query"], "-k", 100, "--store", store, "--gt", gt, *extra)
        assert result.exit_code == 0, result.output
        assert "1-recall@100=" in result.stdout
    lattice_db = work["root"] / "db.spc"
    assert_clean_error(run("search", lattice_db, work["query"], "-k", 5, "--store",
                           work["store"], "--hamming"), "Hamming search needs sign codes")


def test_product_codes_end_to_end(work, tmp_path):
    """A catalyzer of d_out = 48 saved with a 4 x S(12, 6) product quantizer: encode, info
    (the blocks), search (equal to ProductQuantizer.search on the file's codes), and the
    Python API on the same file."""
    from helpers import tiny_catalyzer, tiny_meta
    from spreadcode.catalyzer import catalyze, save_catalyzer
    from spreadcode.index import Index
    from spreadcode.quantizer import ProductQuantizer

    store = tmp_path / "store"
    model = tiny_catalyzer(48, seed=3)
    spec = {"kind": "product", "d": 48, "param": [[12, 6]] * 4}
    sha, _ = save_catalyzer(model, tiny_meta(model, spec), store=store)
    loaded, meta = load_catalyzer(sha, store=store)
    assert meta.quantizer.to_json() == spec
    db = tmp_path / "product.spc"
    encoded = run("encode", work["base"], "-o", db, "--store", store, "--model", sha[:12])
    assert encoded.exit_code == 0, encoded.output
    assert "2000 codes, product d=48 4×S(12,6), 64 bits/vector" in encoded.stdout
    spc = container.open_spc(db)
    h = spc.header
    assert (h.kind, h.d, h.param, h.bits, h.code_bytes, h.version_minor) == (
        "product", 48, ((12, 6),) * 4, 64, 8, 1)
    q = ProductQuantizer(h.param)
    sample = load_sample()
    np.testing.assert_array_equal(spc.codes_bytes, q.quantize(catalyze(loaded, sample.base[:2000])))

    info = run("info", db, "--store", store)
    assert info.exit_code == 0, info.output
    rows = {key.rstrip(":"): value.strip() for key, value in
            (line.split(":", 1) for line in info.stdout.splitlines())}
    assert rows["code"] == "product of 4 lattices 4×S(12, r²=6)"
    assert (rows["format"], rows["bits per code"], rows["bytes per code"]) == (".spc 1.1", "64", "8")
    assert rows["checksum"].startswith("ok")

    out = tmp_path / "found.npy"
    searched = run("search", db, work["query"], "-k", 7, "--store", store, "-o", out)
    assert searched.exit_code == 0, searched.output
    want_d, want_i = q.search(np.ascontiguousarray(spc.codes_bytes),
                              catalyze(loaded, sample.query[:40]), 7)
    np.testing.assert_array_equal(np.load(out), want_i)
    np.testing.assert_array_equal(np.load(tmp_path / "found.distances.npy"), want_d)
    ranged = run("search", db, work["query"], "--radius", 0.8, "--store", store)
    assert ranged.exit_code == 0, ranged.output

    index = Index.load(db, store=store)
    distances, ids = index.search(sample.query[:40], 7)
    np.testing.assert_array_equal(ids, want_i)
    index.add(sample.base[:5])  # copies of codes 0..4, as ids 2000..2004
    more_d, more_i = index.search(sample.query[:40], 7)
    assert (more_d <= want_d).all() and set(more_i.ravel()) - set(want_i.ravel()) <= set(
        range(2000, 2005))
    lattice_db = work["root"] / "db.spc"
    assert_clean_error(run("search", db, lattice_db, work["query"], "--store", store),
                       "not compatible")
