"""Files written by the previous release (tests/data/release-0.1/, see its README) still load
and search identically: the model file, the decoder file and the .spc file."""
import hashlib
import shutil
from pathlib import Path

import numpy as np

import spreadcode
from spreadcode import vecio
from helpers import run
from spreadcode.catalyzer import catalyzer_bytes, load_catalyzer

FIXTURE = Path(__file__).parent / "data" / "release-0.1"
CATALYZER = "a2396605cb03f71978819a824f6354b6781621eb45603b195f5537b95a7ca1eb"
DECODER = "d83f8c723cef8964cdb690fe160c434110bdb9a2fa7cb236c11689f1793f23c1"


def _store(tmp_path):
    """A model store holding the fixture's catalyzer and decoder, as the release saved them."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(FIXTURE / "catalyzer.safetensors", store / f"{CATALYZER}.safetensors")
    shutil.copy(FIXTURE / "decoder.safetensors", store / f"{DECODER}.safetensors")
    return store


def test_release_model_loads_and_saves_to_the_same_bytes():
    data = (FIXTURE / "catalyzer.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == CATALYZER
    model, meta = load_catalyzer(FIXTURE / "catalyzer.safetensors")
    assert catalyzer_bytes(model, meta) == data


def test_release_files_search_identically(tmp_path):
    store = _store(tmp_path)
    expected = np.load(FIXTURE / "expected.npz")
    queries = vecio.read_vectors(FIXTURE / "queries.fvecs")
    index = spreadcode.Index.load(FIXTURE / "db.spc", store=store)
    distances, ids = index.search(queries, k=10)
    assert np.array_equal(ids, expected["ids"])
    assert np.array_equal(distances, expected["distances"])
    reranked = spreadcode.Index.load(FIXTURE / "db.spc", store=store, decoder=DECODER)
    distances, ids = reranked.search(queries, k=10, rerank=50)
    assert np.array_equal(ids, expected["rerank_ids"])
    np.testing.assert_allclose(distances, expected["rerank_distances"], rtol=1e-6)


def test_release_files_through_the_cli(tmp_path):
    store = _store(tmp_path)
    result = run("search", FIXTURE / "db.spc", FIXTURE / "queries.fvecs", "-k", 10,
                 "-o", tmp_path / "r.npy", "--store", store)
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(tmp_path / "r.npy"), np.load(FIXTURE / "expected.npz")["ids"])
    info = run("info", FIXTURE / "db.spc")
    assert info.exit_code == 0 and "checksum:             ok" in info.stdout and CATALYZER[:12] in info.stdout


RESIDUAL_FIXTURE = Path(__file__).parent / "data" / "residual-linear"
RESIDUAL = "a126902fe4d85047abf0e1024d994c763a1e9ad886f608be01ccb23f2788e137"


def test_residual_model_with_a_linear_shortlist_decoder_searches_identically(tmp_path):
    """A residual model written before the MLP shortlist decoder keeps its affine one, its
    shortlist of max(10·k, 1000) and its results (exactly in float32)."""
    data = (RESIDUAL_FIXTURE / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == RESIDUAL
    model, meta = load_catalyzer(RESIDUAL_FIXTURE / "model.safetensors")
    assert model.hidden_shortlist is None and meta.hidden_shortlist is None
    assert catalyzer_bytes(model, meta) == data
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(RESIDUAL_FIXTURE / "model.safetensors", store / f"{RESIDUAL}.safetensors")
    expected = np.load(RESIDUAL_FIXTURE / "expected.npz")
    queries = vecio.read_vectors(RESIDUAL_FIXTURE / "queries.fvecs")
    index = spreadcode.Index.load(RESIDUAL_FIXTURE / "db.spc", store=store)
    for name, rerank in (("default", None), ("rerank50", 50), ("shortlist", 0)):
        distances, ids = index.search(queries, k=10, rerank=rerank, precision="float32")
        assert np.array_equal(ids, expected[f"{name}_ids"]), name
        np.testing.assert_allclose(distances, expected[f"{name}_distances"], rtol=1e-6)
        # The default precision multiplies in bfloat16 where the CPU does natively: the same
        # distances to bfloat16's 2^-8 (distances ≈ 1 here), near-ties possibly swapped.
        distances, _ = index.search(queries, k=10, rerank=rerank)
        np.testing.assert_allclose(distances, expected[f"{name}_distances"], atol=4e-3)
