"""`spreadcode.Index`: the Python API gives what the CLI gives, with the same checks."""
from dataclasses import replace

import numpy as np
import pytest

import spreadcode
from helpers import run, tiny_catalyzer, tiny_meta
from spreadcode import store as model_store
from spreadcode import vecio
from spreadcode.catalyzer import save_catalyzer
from spreadcode.decoders import save_decoder, train_decoder
from spreadcode.errors import SpreadcodeError
from spreadcode.sample import load_sample

QUANTIZER = {"kind": "lattice", "d": 8, "param": 10}
SIGN = {"kind": "sign", "d": 16, "param": 16}
N_BASE, N_QUERY = 1200, 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with a tiny lattice and a tiny sign catalyzer and a linear decoder of the
    lattice one; base, queries, and db.spc / sign.spc encoded by the CLI."""
    root = tmp_path_factory.mktemp("index")
    sample = load_sample()
    store = root / "store"
    shas = {}
    for name, spec in (("lattice", QUANTIZER), ("sign", SIGN)):
        model = tiny_catalyzer(spec["d"], seed=len(shas))
        meta = tiny_meta(model, spec)
        shas[name], _ = save_catalyzer(model, meta, store=store)
        if name == "lattice":
            net, meta = train_decoder(sample.learn[:1000], model,
                                      replace(meta, sha256=shas[name]), kind="linear")
            decoder, _ = save_decoder(net, meta, store=store)
    base, query = sample.base[:N_BASE], sample.query[:N_QUERY]
    vecio.write_vectors(root / "base.fvecs", base)
    vecio.write_vectors(root / "q.fvecs", query)
    for name, spc in (("lattice", "db.spc"), ("sign", "sign.spc")):
        assert run("encode", root / "base.fvecs", "-o", root / spc, "--model", shas[name],
                   "--store", store, "-q").exit_code == 0
    return {"root": root, "store": store, "sha": shas["lattice"], "sign_sha": shas["sign"],
            "decoder": decoder, "db": root / "db.spc", "sign_db": root / "sign.spc",
            "q": root / "q.fvecs", "base": base, "query": query}


def cli_search(world, db, *options):
    """(distances, ids) of ``spreadcode search DB q.fvecs OPTIONS -o r.npy``."""
    out = world["root"] / "cli-result.npy"
    result = run("search", db, world["q"], "--store", world["store"], "-o", out, *options)
    assert result.exit_code == 0, result.stderr
    return np.load(world["root"] / "cli-result.distances.npy"), np.load(out)


def test_index_search_is_the_cli_search(world):
    loaded = spreadcode.Index.load(world["db"], store=world["store"])
    built = spreadcode.Index(model=world["sha"], store=world["store"])
    built.add(world["base"].astype(np.float64))  # any accepted dtype
    want_d, want_i = cli_search(world, world["db"], "-k", 25)
    for index in (loaded, built):
        distances, ids = index.search(world["query"], k=25)
        assert distances.dtype == np.float32 and ids.dtype == np.int64
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_array_equal(distances, want_d)


def test_range_search_is_the_cli_range_search(world, tmp_path):
    import h5py

    out = tmp_path / "range.h5"
    assert run("search", world["db"], world["q"], "--radius", 0.9, "--store", world["store"],
               "-o", out).exit_code == 0
    lims, distances, ids = spreadcode.Index.load(world["db"], store=world["store"]).range_search(
        world["query"], 0.9)
    with h5py.File(out) as h5:
        np.testing.assert_array_equal(lims, h5["lims"][:])
        np.testing.assert_array_equal(ids, h5["neighbors"][:])
        np.testing.assert_array_equal(distances, h5["distances"][:])
    assert lims.shape == (N_QUERY + 1,) and lims[-1] == len(ids) > 0
    assert np.all(distances <= 0.9)


def test_hamming_and_decoder_searches_are_the_cli_ones(world):
    sign = spreadcode.Index.load(world["sign_db"], store=world["store"])
    for options, hamming in (((), False), (("--hamming",), True)):
        want_d, want_i = cli_search(world, world["sign_db"], "-k", 10, *options)
        distances, ids = sign.search(world["query"], 10, hamming=hamming)
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_array_equal(distances, want_d)
    with_decoder = spreadcode.Index.load(world["db"], decoder=world["decoder"],
                                         store=world["store"])
    for options, kwargs in (((), {}), (("--rerank", 50), {"rerank": 50}),
                            (("--decode-all",), {"decode_all": True})):
        want_d, want_i = cli_search(world, world["db"], "-k", 10, "--decoder", world["decoder"],
                                    *options)
        distances, ids = with_decoder.search(world["query"], 10, **kwargs)
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_array_equal(distances, want_d)
    plain_d, plain_i = cli_search(world, world["db"], "-k", 10)
    distances, ids = with_decoder.search(world["query"], 10, rerank=0)
    np.testing.assert_array_equal(ids, plain_i)


def test_save_then_load_and_the_cli_read_the_same_codes(world, tmp_path):
    index = spreadcode.Index(model=world["sha"], store=world["store"])
    index.add(world["base"][:500])
    index.add(world["base"][500:])
    store = tmp_path / "other-store"
    index.save(tmp_path / "db.spc", store=store)
    assert model_store.resolve(world["sha"], store).is_file()  # the catalyzer went along
    again = spreadcode.Index.load(tmp_path / "db.spc", store=store)
    assert len(again) == N_BASE and again.d == 96 and again.bits == index.bits
    original = spreadcode.Index.load(world["db"], store=world["store"])
    assert np.array_equal(np.asarray(again._collection.parts[0].codes_bytes),
                          np.asarray(original._collection.parts[0].codes_bytes))
    np.testing.assert_array_equal(again.search(world["query"], 7)[1],
                                  index.search(world["query"], 7)[1])
    result = run("search", tmp_path / "db.spc", world["q"], "-k", 7, "--store", store)
    assert result.exit_code == 0
    tsv_ids = np.loadtxt(result.stdout.splitlines()[1:], usecols=2, dtype=np.int64)
    np.testing.assert_array_equal(tsv_ids.reshape(N_QUERY, 7), index.search(world["query"], 7)[1])


def test_explicit_ids_search_reconstruct_and_save(world, tmp_path):
    index = spreadcode.Index(model=world["sha"], store=world["store"])
    ids = 1_000_000 - 7 * np.arange(N_BASE)
    index.add(world["base"][:600], ids=ids[:600])
    index.add(world["base"][600:], ids=ids[600:])
    plain = spreadcode.Index(model=world["sha"], store=world["store"])
    plain.add(world["base"])
    distances, found = index.search(world["query"], 5)
    assert set(found.ravel()) <= set(ids)
    np.testing.assert_array_equal(distances, plain.search(world["query"], 5)[0])
    np.testing.assert_array_equal(index.reconstruct(ids[[3, 900]]), plain.reconstruct([3, 900]))
    assert plain.reconstruct([3]).shape == (1, QUANTIZER["d"])  # catalyzed space, unit norm
    np.testing.assert_allclose(np.linalg.norm(plain.reconstruct(np.arange(10)), axis=1), 1,
                               rtol=1e-5)
    with pytest.raises(SpreadcodeError, match="no code has the id 5"):
        index.reconstruct([5])
    with pytest.raises(SpreadcodeError, match="no code has the id 1200"):
        plain.reconstruct([1200])
    with pytest.raises(SpreadcodeError, match="every add or for none"):
        index.add(world["base"][:2])
    with pytest.raises(SpreadcodeError, match="every add or for none"):
        plain.add(world["base"][:2], ids=[1, 2])
    index.save(tmp_path / "ids.spc", store=world["store"])
    loaded = spreadcode.Index.load(tmp_path / "ids.spc", store=world["store"])
    np.testing.assert_array_equal(np.asarray(loaded._collection.parts[0].ids), ids)
    np.testing.assert_array_equal(loaded.search(world["query"], 5)[1], found)


def test_decoder_reconstructs_input_space(world):
    index = spreadcode.Index(model=world["sha"], decoder=world["decoder"], store=world["store"])
    index.add(world["base"][:100])
    decoded = index.reconstruct(np.arange(100))
    assert decoded.shape == (100, 96) and decoded.dtype == np.float32
    base = world["base"][:100]
    assert np.mean((decoded - base) ** 2) < np.mean((base - base.mean(axis=0)) ** 2)


def test_len_d_bits_repr(world):
    index = spreadcode.Index(model=world["sha"], decoder=world["decoder"], store=world["store"])
    assert len(index) == index.ntotal == 0 and index.d == 96 and index.bits == 14
    index.add(world["base"][:10])
    text = repr(index)
    assert len(index) == 10
    for fragment in ("10 codes", "d=96", "lattice d=8 r2=10", "14 bits", world["sha"][:12],
                     "decoder linear", world["decoder"][:12]):
        assert fragment in text, text


def test_same_checks_and_errors_as_the_cli(world):
    empty = spreadcode.Index(model=world["sha"], store=world["store"])
    with pytest.raises(SpreadcodeError, match="holds no codes"):
        empty.search(world["query"], 5)
    index = spreadcode.Index.load(world["db"], store=world["store"])
    bad_query = world["query"].copy()
    bad_query[3, 2] = np.nan
    with pytest.raises(SpreadcodeError, match="NaN"):
        index.search(bad_query, 5)
    with pytest.raises(SpreadcodeError, match="dimension 95"):
        index.search(world["query"][:, :95], 5)
    with pytest.raises(SpreadcodeError, match="k must be an integer"):
        index.search(world["query"], 0)
    with pytest.raises(SpreadcodeError, match="radius must be a finite number"):
        index.range_search(world["query"], -1.0)
    with pytest.raises(SpreadcodeError, match="need an index with a decoder"):
        index.search(world["query"], 5, rerank=20)
    with pytest.raises(SpreadcodeError, match="Hamming search needs sign codes"):
        index.search(world["query"], 5, hamming=True)
    with pytest.raises(SpreadcodeError, match="dimension 95"):
        empty.add(world["base"][:4, :95])
    with pytest.raises(SpreadcodeError, match="2-D"):
        empty.add(world["base"][0])
    with pytest.raises(SpreadcodeError, match="NaN or Inf"):
        empty.add(np.full((2, 96), np.inf, dtype=np.float32))
    with pytest.raises(SpreadcodeError, match="real numbers"):
        index.search(np.array([["a"] * 96]), 5)
    assert len(empty) == 0  # nothing half-added
    _, ids = index.search(world["query"], 10**6)  # k capped at the codes, as in the CLI
    assert ids.shape == (N_QUERY, N_BASE)
    with pytest.raises(SpreadcodeError, match="no model with hash"):
        spreadcode.Index(model="ab" * 10, store=world["store"])
    with pytest.raises(SpreadcodeError, match="belongs to catalyzer"):
        spreadcode.Index.load(world["sign_db"], decoder=world["decoder"], store=world["store"])


def test_train_in_memory_touches_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPREADCODE_HOME", str(tmp_path / "home"))
    sample = load_sample()
    index = spreadcode.Index.train(sample.learn[:1500], bits=32, epochs=1, hidden=32)
    assert not (tmp_path / "home").exists()
    assert index.bits == 32 and index.d == 96 and len(index) == 0
    index.add(sample.base[:1000])
    distances, ids = index.search(sample.query[:20], k=10)
    assert ids.shape == (20, 10) and np.all(np.diff(distances, axis=1) >= 0)
    index.save(tmp_path / "db.spc")
    assert list((tmp_path / "home").rglob("*.safetensors"))  # saved only when asked
    again = spreadcode.Index.load(tmp_path / "db.spc")
    np.testing.assert_array_equal(again.search(sample.query[:20], k=10)[1], ids)
    # The training report travels with the model: in memory and loaded from the store.
    assert index.catalyzer_meta.training["epochs"] == 1
    assert again.catalyzer_meta.training == index.catalyzer_meta.training
    assert again.catalyzer_meta.sha256 == again.catalyzer_sha256 == index.catalyzer_sha256


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch):
    """The README's Python API example, as it is (a real 2-epoch training)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPREADCODE_HOME", str(tmp_path / "home"))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["index"]) == 10_000 and namespace["D"].shape == (500, 10)
    assert namespace["x"].shape == (500, 96) and namespace["index"].is_residual
    assert (tmp_path / "db.spc").is_file()
