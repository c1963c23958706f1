"""Issue #12, through the CLI: no input destroys data or escapes as a crash.

One test (or a few) per defect the fuzzing run found: outputs that alias inputs, k beyond the
collection or beyond reason, ids that an output format cannot hold, model metadata that lies
about its tensors, forged .spc headers with valid checksums, and SIGTERM / SIGKILL leaving
temporary files behind. Everything runs on a tiny random catalyzer (hidden width 32), so the
module takes a few seconds.
"""
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import safetensors.torch
import torch

from helpers import assert_clean_error, forge_spc, run, tiny_catalyzer, tiny_meta
from spreadcode import container, vecio
from spreadcode import store as model_store
from spreadcode.catalyzer import save_catalyzer
from spreadcode.cli import _Terminated
from spreadcode.decoders import save_decoder, train_decoder
from spreadcode.knn import exact_knn
from spreadcode.sample import load_sample
from spreadcode.encode import encode_file

REPO = Path(__file__).resolve().parents[1]
QUANTIZER = {"kind": "lattice", "d": 24, "param": 79}
N_BASE, N_QUERY = 2000, 50


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with the tiny catalyzer (also written to model.safetensors) and a linear decoder
    of it; base (2,000), queries (50, .fvecs and .npy), their ground truth, and db.spc."""
    root = tmp_path_factory.mktemp("robust")
    sample = load_sample()
    store = root / "store"
    model = tiny_catalyzer(QUANTIZER["d"])
    meta = tiny_meta(model, QUANTIZER)
    sha, _ = save_catalyzer(model, meta, path=root / "model.safetensors", store=store)
    net, meta = train_decoder(sample.learn[:1000], model, replace(meta, sha256=sha), kind="linear")
    decoder, _ = save_decoder(net, meta, store=store)
    vecio.write_vectors(root / "base.fvecs", sample.base[:N_BASE])
    vecio.write_vectors(root / "learn.fvecs", sample.learn[:1000])
    vecio.write_vectors(root / "q.fvecs", sample.query[:N_QUERY])
    np.save(root / "q.npy", sample.query[:N_QUERY])
    _, gt = exact_knn(sample.base[:N_BASE], sample.query[:N_QUERY], 10)
    vecio.write_vectors(root / "gt.ivecs", gt.astype(np.int32))
    encode_file(root / "base.fvecs", root / "db.spc", model=sha, store=store)
    return {"root": root, "store": store, "sha": sha, "decoder": decoder,
            "model_file": root / "model.safetensors", "db": root / "db.spc",
            "q": root / "q.fvecs", "base": root / "base.fvecs", "learn": root / "learn.fvecs"}


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(directory):
    return sorted(p.name for p in Path(directory).iterdir())


# ---- 1. an output that is an input ----------------------------------------------------------

def copy(src, dst):
    dst.write_bytes(Path(src).read_bytes())
    return dst


def test_output_that_is_an_input_is_refused_before_any_work(world, tmp_path, monkeypatch):
    store, sha = world["store"], world["sha"]
    x = copy(world["base"], tmp_path / "x.fvecs")
    q = copy(world["root"] / "q.npy", tmp_path / "q.npy")
    gt = copy(world["root"] / "gt.ivecs", tmp_path / "gt.ivecs")
    learn = copy(world["learn"], tmp_path / "l.fvecs")
    model = copy(world["model_file"], tmp_path / "m")
    queries_named_like_the_sidecar = copy(world["q"], tmp_path / "r.distances.fvecs")
    (tmp_path / "link.spc").symlink_to(x)
    (tmp_path / "sub").mkdir()
    os.link(q, tmp_path / "hard.npy")
    monkeypatch.chdir(tmp_path)
    stored_model = store / f"{sha}.safetensors"
    cases = [
        (("encode", "x.fvecs", "-o", "x.fvecs", "--model", sha), x),
        (("encode", x, "-o", tmp_path / "sub" / ".." / "x.fvecs", "--model", sha), x),
        (("encode", x, "-o", "link.spc", "--model", sha), x),
        (("encode", x, "-o", "m", "--model", "m"), model),
        (("encode", x, "-o", stored_model, "--model", "latest"), stored_model),
        (("search", world["db"], "q.npy", "-o", "q.npy"), q),
        (("search", world["db"], "q.npy", "-o", "hard.npy"), q),
        (("search", world["db"], queries_named_like_the_sidecar, "-o", "r.ivecs"),
         queries_named_like_the_sidecar),
        (("search", world["db"], world["q"], "-o", "gt.ivecs", "--gt", "gt.ivecs"), gt),
        (("train", "l.fvecs", "-o", "l.fvecs", "--epochs", 1), learn),
        (("train-decoder", "l.fvecs", "-o", "l.fvecs", "--model", sha), learn),
        (("fine-tune", "l.fvecs", "-o", "m", "--model", "m"), model),
    ]
    for args, victim in cases:
        before, files_before = digest(victim), listing(tmp_path)
        quiet = () if args[0] == "search" else ("-q",)
        result = run(*args, "--store", store, *quiet)
        assert_clean_error(result, "same file as the input")
        assert digest(victim) == before, args
        assert listing(tmp_path) == files_before, args


# ---- 2. and 5. k beyond the collection, k beyond reason ---------------------------------------

def read_ivecs_results(path):
    ids = vecio.read_groundtruth(path)
    distances = vecio.read_vectors(str(path).replace(".ivecs", ".distances.fvecs"))
    return ids, distances


@pytest.mark.parametrize("extra", [(), ("--decoder", "DECODER"), ("--decoder", "DECODER",
                                                                   "--decode-all")])
def test_k_beyond_the_collection_is_clamped_and_said_once(world, tmp_path, extra):
    extra = tuple(world["decoder"] if a == "DECODER" else a for a in extra)
    common = (world["db"], world["q"], "--store", world["store"], *extra)
    clamped = run("search", *common, "-k", 3000, "-o", tmp_path / "r.ivecs")
    assert clamped.exit_code == 0, clamped.output
    notes = [line for line in clamped.stderr.splitlines() if "2000" in line and "3000" in line]
    assert len(notes) == 1 and notes[0].startswith("spreadcode: note: "), clamped.stderr
    exact = run("search", *common, "-k", N_BASE, "-o", tmp_path / "e.ivecs")
    assert exact.exit_code == 0, exact.output
    ids, distances = read_ivecs_results(tmp_path / "r.ivecs")
    assert ids.shape == distances.shape == (N_QUERY, N_BASE)
    assert np.isfinite(distances).all()
    assert (np.sort(ids, axis=1) == np.arange(N_BASE)).all()
    for got, want in zip(read_ivecs_results(tmp_path / "r.ivecs"),
                         read_ivecs_results(tmp_path / "e.ivecs")):
        np.testing.assert_array_equal(got, want)


def test_empty_collection_is_refused_and_leaves_nothing(world, tmp_path):
    header = container.read_header(world["db"])
    empty = forge_spc(tmp_path / "empty.spc", kind=1, d=24, param=79, bits=header.bits,
                      code_bytes=8, catalyzer=bytes.fromhex(world["sha"]))
    for extra in ((), ("--decoder", world["decoder"])):
        result = run("search", empty, world["q"], "-k", 5, "-o", tmp_path / "r.ivecs",
                     "--store", world["store"], *extra)
        assert_clean_error(result, str(empty), "no codes")
        assert listing(tmp_path) == ["empty.spc"]
    ranged = run("search", empty, world["q"], "--radius", 1, "--store", world["store"])
    assert ranged.exit_code == 0 and ranged.stdout == "query\trank\tid\tdistance\n"


@pytest.mark.parametrize("option, value", [("-k", 2**63), ("-k", 2**31), ("--rerank", 2**63)])
def test_absurd_k_is_a_clear_error(world, option, value):
    extra = ("--decoder", world["decoder"], "-k", 5) if option == "--rerank" else ()
    result = run("search", world["db"], world["q"], option, value, "--store", world["store"],
                 *extra)
    assert_clean_error(result, f"{option.lstrip('-')}", str(value))


def test_huge_k_costs_what_the_collection_holds(world, tmp_path):
    result = run("search", world["db"], world["q"], "-k", 100_000_000, "--store",
                 world["store"], "-o", tmp_path / "r.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "r.npy").shape == (N_QUERY, N_BASE)


def test_results_are_written_query_batch_by_query_batch(world, tmp_path, monkeypatch):
    from spreadcode import search

    def searches(prefix):
        """Each output format once, TSV for k-NN and range search: their CLI results."""
        common = (world["db"], world["q"], "--store", world["store"])
        results = [run("search", *common, "-k", 30, "-o", tmp_path / f"{prefix}-{name}")
                   for name in ("r.ivecs", "r.npy", "r.h5")]
        results.append(run("search", *common, "--radius", 0.8, "-o",
                           tmp_path / f"{prefix}-range.h5"))
        return results + [run("search", *common, "-k", 30), run("search", *common, "--radius", 0.8)]

    whole = searches("whole")
    monkeypatch.setattr(search, "RESULT_BATCH_ENTRIES", 7 * 30)  # batches of 7 queries
    monkeypatch.setattr(search, "RANGE_BATCH_QUERIES", 7)
    parts = searches("parts")
    assert [r.exit_code for r in whole + parts] == [0] * 12
    assert parts[4].stdout == whole[4].stdout and parts[5].stdout == whole[5].stdout
    assert len(whole[5].stdout.splitlines()) > N_QUERY
    for name in ("r.ivecs", "r.distances.fvecs", "r.npy", "r.distances.npy"):
        assert (tmp_path / f"parts-{name}").read_bytes() == (tmp_path / f"whole-{name}").read_bytes()
    for name in ("r.h5", "range.h5"):
        with h5py.File(tmp_path / f"parts-{name}") as got, h5py.File(tmp_path / f"whole-{name}") as want:
            assert set(got) == set(want)
            for key in want:
                np.testing.assert_array_equal(got[key][:], want[key][:])


def test_negative_radius_is_a_usage_error(world):
    result = run("search", world["db"], world["q"], "--radius", -1, "--store", world["store"])
    assert result.exit_code == 2 and "radius" in result.stderr and result.stdout == ""


# ---- 3. and 4. ids: negative, and beyond what the output format holds -------------------------

def with_ids(world, path, ids):
    """A copy of db.spc whose codes carry the stored ``ids`` int64 (2000,)."""
    spc = container.open_spc(world["db"])
    h = spc.header
    with container.SpcWriter(path, kind=h.kind, d=h.d, param=h.param, bits=h.bits,
                             code_bytes=h.code_bytes, input_dim=h.input_dim,
                             input_dtype=h.input_dtype, catalyzer_sha256=h.catalyzer_sha256,
                             metadata=h.metadata, with_ids=True) as writer:
        writer.append(spc.codes_bytes, ids)
    return path


def tsv_ids(stdout, k):
    rows = [line.split("\t") for line in stdout.splitlines()[1:]]
    return np.array([int(row[2]) for row in rows], dtype=np.int64).reshape(-1, k)


def test_negative_stored_ids_reach_the_tsv(world, tmp_path):
    ids = np.arange(N_BASE, dtype=np.int64) - 1000
    db = with_ids(world, tmp_path / "neg.spc", ids)
    tsv = run("search", db, world["q"], "-k", 20, "--store", world["store"])
    assert tsv.exit_code == 0, tsv.output
    got = tsv_ids(tsv.stdout, 20)
    assert got.shape == (N_QUERY, 20) and (got < 0).any()
    plain = run("search", world["db"], world["q"], "-k", 20, "--store", world["store"])
    np.testing.assert_array_equal(got, ids[tsv_ids(plain.stdout, 20)])


def test_ties_go_to_the_lower_id_negative_ones_included(world, tmp_path):
    code = np.asarray(container.open_spc(world["db"]).codes_bytes[:1])
    path = tmp_path / "twins.spc"
    h = container.read_header(world["db"])
    with container.SpcWriter(path, kind=h.kind, d=h.d, param=h.param, bits=h.bits,
                             code_bytes=h.code_bytes, input_dim=h.input_dim,
                             input_dtype=h.input_dtype, catalyzer_sha256=h.catalyzer_sha256,
                             with_ids=True) as writer:
        writer.append(np.repeat(code, 3, axis=0), np.array([5, -3, 2**40]))
    result = run("search", path, world["q"], "-k", 3, "--store", world["store"])
    assert result.exit_code == 0, result.output
    assert (tsv_ids(result.stdout, 3) == [-3, 5, 2**40]).all()


def test_ids_beyond_int32_are_refused_for_ivecs_only(world, tmp_path):
    ids = np.arange(N_BASE, dtype=np.int64) - 2**40
    db = with_ids(world, tmp_path / "far.spc", ids)
    out = tmp_path / "out"
    out.mkdir()
    result = run("search", db, world["q"], "-k", 5, "--store", world["store"],
                 "-o", out / "r.ivecs")
    assert_clean_error(result, "int32", ".npy", ".h5")
    assert listing(out) == []
    assert run("search", db, world["q"], "-k", 5, "--store", world["store"],
               "-o", out / "r.npy").exit_code == 0
    plain = run("search", world["db"], world["q"], "-k", 5, "--store", world["store"])
    np.testing.assert_array_equal(np.load(out / "r.npy"), ids[tsv_ids(plain.stdout, 5)])


# ---- 6. model metadata that lies about its tensors -------------------------------------------

def forged_artifact(path, meta, tensors=None):
    """A safetensors file with spreadcode metadata ``meta`` and the given small tensors."""
    tensors = tensors or {"x": torch.zeros(2)}
    path.write_bytes(safetensors.torch.save(tensors, metadata={"spreadcode": json.dumps(meta)}))
    return path


@pytest.mark.parametrize("hidden, message", [(10**9, "bad 'arch.hidden'"),
                                             (2**20, "tensors do not match arch")])
def test_model_metadata_is_checked_against_the_tensors_first(world, tmp_path, hidden, message):
    catalyzer_meta = {"artifact": "catalyzer", "format_version": 1,
                      "arch": {"d_in": 96, "hidden": hidden, "d_out": 24},
                      "quantizer": QUANTIZER, "lambda": 0.0, "training": {}}
    huge = forged_artifact(tmp_path / "huge.safetensors", catalyzer_meta)
    assert huge.stat().st_size < 400
    started = time.monotonic()
    result = run("encode", world["base"], "-o", tmp_path / "x.spc", "--model", huge,
                 "--store", world["store"])
    assert_clean_error(result, str(huge), message)
    assert time.monotonic() - started < 5 and not (tmp_path / "x.spc").exists()


def test_decoder_and_model_files_must_hold_what_their_metadata_says(world, tmp_path):
    decoder_meta = store_meta(world["store"], world["decoder"])
    decoder_meta["d_in"] = 4096
    lying = forged_artifact(tmp_path / "dec.safetensors", decoder_meta,
                            load_tensors(world["store"], world["decoder"]))
    result = run("search", world["db"], world["q"], "-k", 5, "--decoder", lying,
                 "--store", world["store"])
    assert_clean_error(result, str(lying), "tensors do not match")

    # consistent names and shapes, but the tensor is shorter than its shape says
    good = world["model_file"].read_bytes()
    header_len = struct.unpack_from("<Q", good)[0]
    header = json.loads(good[8:8 + header_len])
    name = next(n for n in header if n != "__metadata__" and header[n]["shape"])
    header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    short = tmp_path / "short.safetensors"
    short.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + header_len:])
    result = run("encode", world["base"], "-o", tmp_path / "x.spc", "--model", short,
                 "--store", world["store"])
    assert_clean_error(result, str(short), f"tensor {name!r}")


def test_info_survives_a_decoder_entry_with_odd_metadata(world, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / f"{world['sha']}.safetensors").write_bytes(world["model_file"].read_bytes())
    meta = {"artifact": "decoder", "format_version": 1, "catalyzer": world["sha"], "decoder": 5}
    sha, _ = model_store.save_artifact(forged_artifact(tmp_path / "odd", meta), store)
    result = run("info", world["db"], "--store", store)
    assert result.exit_code == 0, result.output
    assert f"{sha[:12]} (?)" in result.stdout


def store_meta(store, sha):
    return model_store.read_metadata(store / f"{sha}.safetensors")


def load_tensors(store, sha):
    return safetensors.torch.load((store / f"{sha}.safetensors").read_bytes())


# ---- 7. forged .spc headers with valid checksums ----------------------------------------------

def test_forged_metadata_is_refused_by_info_and_search(world, tmp_path):
    sha = bytes.fromhex(world["sha"])
    bits = container.read_header(world["db"]).bits
    cases = {
        "nested": b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "surrogate": b'{"a":"\\ud800"}',
        "nan": b'{"a":NaN}',
    }
    for name, metadata in cases.items():
        path = forge_spc(tmp_path / f"{name}.spc", kind=1, d=24, param=79, bits=bits,
                         code_bytes=8, metadata=metadata, catalyzer=sha)
        assert_clean_error(run("info", path, "--store", world["store"]), str(path), "metadata")
        assert_clean_error(run("search", path, world["q"], "--store", world["store"]),
                           str(path), "metadata")


@pytest.mark.parametrize("fields, message", [
    (dict(kind=2, d=2**32 - 1, param=2**32 - 1, bits=2**32 - 1, code_bytes=2**29), "limit"),
    (dict(kind=1, d=1000, param=1, bits=1, code_bytes=8), "d=1000"),
    (dict(kind=1, d=24, param=79, bits=41, code_bytes=8), "41"),
    (dict(kind=1, d=24, param=100000, bits=64, code_bytes=8), "r2=100000"),
    (dict(kind=1, d=3, param=7, bits=1, code_bytes=8), "empty"),
])
def test_forged_code_parameters_are_refused_by_the_reader(world, tmp_path, fields, message):
    path = forge_spc(tmp_path / "forged.spc", **fields, catalyzer=bytes.fromhex(world["sha"]))
    info = run("info", path, "--store", world["store"])
    assert_clean_error(info, str(path), message)
    assert "checksum" not in info.stdout
    assert_clean_error(run("search", path, world["q"], "--store", world["store"]),
                       str(path), message)


def test_code_kind_that_disagrees_with_the_catalyzer_names_both(world, tmp_path):
    spc = container.open_spc(world["db"])
    path = forge_spc(tmp_path / "sign.spc", kind=2, d=64, param=64, bits=64, code_bytes=8,
                     count=spc.count, codes=spc.codes_bytes.tobytes(),
                     catalyzer=bytes.fromhex(world["sha"]))
    result = run("search", path, world["q"], "--store", world["store"])
    assert_clean_error(result, "sign d=64", "lattice d=24 r2=79", world["sha"][:12])


# ---- 8. SIGTERM and SIGKILL ------------------------------------------------------------------

def start_slow_encode(world, tmp_path, source):
    """Encode ``source`` one vector per batch in a real process; returns it once its temporary
    output exists."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "spreadcode.cli", "encode", str(source), "-o",
         str(tmp_path / "big.spc"), "--model", world["sha"], "--store", str(world["store"]),
         "--batch", "1", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".big.spc.*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("interrupt, code, word", [
    (_Terminated, 128 + signal.SIGTERM, "terminated"),
    (KeyboardInterrupt, 128 + signal.SIGINT, "interrupted")])
def test_a_signal_inside_a_c_call_still_exits_as_the_signal(world, tmp_path, monkeypatch,
                                                            interrupt, code, word):
    """A signal handler's exception raised while a C function runs reaches Python as a
    SystemError caused by it (seen once with SIGTERM inside PurePath.__str__): the CLI still
    reports the signal, exits with its code and leaves no output."""
    from spreadcode import encode

    def encode_codes(*args, **kwargs):
        raise SystemError("<built-in function> returned a result with an exception set") \
            from interrupt()
    monkeypatch.setattr(encode, "encode_codes", encode_codes)
    result = run("encode", world["base"], "-o", tmp_path / "out.spc", "--model", world["sha"],
                 "--store", world["store"], "-q")
    assert result.exit_code == code and result.stderr.strip() == f"spreadcode: {word}"
    assert listing(tmp_path) == []


def test_sigterm_cleans_up_and_sigkill_leftovers_go_at_the_next_write(world, tmp_path):
    source = tmp_path / "many.npy"
    np.save(source, np.tile(load_sample().base[:1000], (40, 1)))
    terminated = start_slow_encode(world, tmp_path, source)
    terminated.send_signal(signal.SIGTERM)
    _, stderr = terminated.communicate(timeout=30)
    assert terminated.returncode == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr and b"terminated" in stderr
    assert listing(tmp_path) == ["many.npy"]

    killed = start_slow_encode(world, tmp_path, source)
    killed.kill()
    killed.communicate(timeout=30)
    leftover = [name for name in listing(tmp_path) if name != "many.npy"]
    assert len(leftover) == 1 and leftover[0].startswith(".big.spc.spreadcode-tmp-")
    result = run("encode", world["base"], "-o", tmp_path / "big.spc", "--model", world["sha"],
                 "--store", world["store"], "-q")
    assert result.exit_code == 0, result.output
    assert listing(tmp_path) == ["big.spc", "many.npy"]
