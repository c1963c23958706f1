"""The benchmark suite cannot rot: ``bench/suite.py --quick`` runs end to end on a tiny
generated dataset, and its measurement helpers give exact answers on hand-checked inputs.

faiss rows and figures are checked only when faiss-cpu / matplotlib are installed; the
spreadcode rows run regardless.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench._data import load_dataset, subsample_learn
from bench._metrics import prob_first_exceeds_kth, range_agreement
from spreadcode import vecio
from spreadcode.errors import SpreadcodeError
from spreadcode.knn import exact_knn

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "bench" / "suite.py"
SECTIONS = ("table1", "table2", "figure5", "figure3", "appendixc", "decoders")


def _clustered(rng, n, centers):
    """float32 (n, d): points around random centres, like real embeddings in miniature."""
    labels = rng.integers(len(centers), size=n)
    return (centers[labels] + 0.3 * rng.standard_normal((n, centers.shape[1]))).astype(np.float32)


def _write_tiny(folder, sizes, seed=7, d=32):
    """A clustered dataset directory of ``sizes`` {split: n} with exact ground truth."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d))
    splits = {split: _clustered(rng, n, centers) for split, n in sizes.items()}
    for split, x in splits.items():
        vecio.write_vectors(folder / f"{split}.fvecs", x)
    _, gt = exact_knn(splits["base"], splits["query"], 100)
    vecio.write_vectors(folder / "groundtruth.ivecs", gt.astype(np.int32))
    return folder


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Run the quick suite once on a 32-d clustered dataset -> (results dict, folder)."""
    root = tmp_path_factory.mktemp("bench")
    data = _write_tiny(root / "tiny", {"learn": 2000, "base": 2000, "query": 100})
    out = root / "results"
    # The quality section has its own fast test below (LSQ at 128 bits alone takes a minute).
    subprocess.run([sys.executable, str(SUITE), str(data), "--quick", "--out", str(out),
                    "--cache", str(root / "cache"), "--only", ",".join(SECTIONS)],
                   check=True, cwd=root)
    folder = out / "tiny-quick"
    return json.loads((folder / "results.json").read_text()), folder


def test_quality_section_quick(tmp_path):
    """The quality section alone, two code sizes, a learn subset: one row per method with a
    cell per size, recalls in [0, 1], spreadcode's row from Index.train, peers at the exact
    size, and the markdown table that BENCHMARKS.md takes."""
    from bench import _registry

    data = _write_tiny(tmp_path / "tiny", {"learn": 600, "base": 500, "query": 40}, d=16)
    # A subprocess, so that the suite sets OMP_WAIT_POLICY before faiss and torch load.
    subprocess.run([sys.executable, str(SUITE), str(data), "--quick", "--only", "quality",
                    "--bits", "16,32", "--learn-size", "400", "--out", str(tmp_path / "out"),
                    "--cache", str(tmp_path / "cache")], check=True, cwd=tmp_path)
    folder = tmp_path / "out" / "tiny-learn400-quick"
    results = json.loads((folder / "results.json").read_text())
    assert results["dataset"]["n_learn"] == 400 and set(results) >= {"quality"}
    section = results["quality"]
    assert section["bits"] == [16, 32]
    assert [row["method"] for row in section["rows"]] == list(_registry.QUALITY)
    faiss_here = importlib.util.find_spec("faiss") is not None
    for row in section["rows"]:
        assert set(row["cells"]) == {"16", "32"}
        ours = row["method"].startswith("spreadcode default")
        for bits, cell in row["cells"].items():
            if row["method"] == "spreadcode default, off the sphere":
                # the tiny learn set's norms differ: no sphere to take the model off
                assert cell["note"].startswith("n/a") and "no common norm" in cell["note"]
                continue
            if not ours and not faiss_here:
                assert cell["note"].startswith("n/a")
                continue
            assert set(cell["recall"]) == {"1", "10", "100"}
            assert all(0.0 <= value <= 1.0 for value in cell["recall"].values())
            if ours:
                assert 0 < cell["bits"] <= int(bits) and cell["code"]
            else:
                assert cell["bits"] == int(bits)
    # The ablation rows share the default row's model: the same training seconds and the
    # same code.
    cells = {row["method"]: row["cells"]["32"] for row in section["rows"]}
    default = cells["spreadcode default"]
    for name in ("spreadcode default, --beam 2", "spreadcode default, shortlist alone"):
        assert cells[name]["train_s"] == default["train_s"]
        assert cells[name]["code"] == default["code"]
    markdown = (folder / "results.md").read_text()
    assert "## Quality at 16/32 bits" in markdown and "--only quality" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith(("| 16", "| 32"))]
    assert len(table_rows) == 2 * len(_registry.QUALITY)


def _all_recalls(results):
    for row in results["table1"]["rows"]:
        yield row["method"], row["recall"]
    for section in ("table2", "figure5"):
        for row in results[section]["rows"]:
            for bits, cell in row["cells"].items():
                yield f"{row['method']} @ {bits}", cell["recall"]


@pytest.mark.slow  # the benchmark suite in quick mode: over a minute
def test_quick_run_writes_every_section(quick_run):
    results, folder = quick_run
    assert set(SECTIONS) <= set(results)
    assert (folder / "results.md").is_file()
    markdown = (folder / "results.md").read_text()
    for title in ("Table 1", "Table 2", "Figure 5", "Figure 3", "Appendix C", "Learned decoders"):
        assert title in markdown
    assert results["dataset"]["n_query"] == 100 and results["dataset"]["d"] == 32
    for _, recall in _all_recalls(results):
        assert all(0.0 <= value <= 1.0 for value in recall.values())


@pytest.mark.slow  # the benchmark suite in quick mode: over a minute
def test_quick_run_spreadcode_rows_have_recalls(quick_run):
    results, _ = quick_run
    table1 = {row["method"]: row for row in results["table1"]["rows"]}
    for name in ("PCA + lattice", "catalyzer + lattice", "catalyzer + lattice, end-to-end"):
        assert set(table1[name]["recall"]) == {"1", "10", "100"}
        assert table1[name]["bits"] <= 64
    signs = {row["method"]: row for row in results["table2"]["rows"]}
    for bits in ("16", "32", "64", "128"):
        assert signs["catalyzer + sign (asymmetric)"]["cells"][bits]["bits"] == int(bits)


@pytest.mark.slow  # the benchmark suite in quick mode: over a minute
def test_quick_run_neighbour_statistics(quick_run):
    results, _ = quick_run
    for space in ("input", "catalyzed"):
        stats = results["figure3"]["spaces"][space]
        assert 0.0 <= stats["prob_first_exceeds_kth"] <= 1.0
        assert stats["mean_first"] <= stats["mean_kth"]
        points = results["appendixc"]["spaces"][space]
        results_per_query = [p["mean_results"] for p in points]
        assert results_per_query == sorted(results_per_query)


@pytest.mark.slow  # the benchmark suite in quick mode: over a minute
def test_quick_run_decoder_rows(quick_run):
    results, _ = quick_run
    section = results["decoders"]
    rows = {row["method"]: row for row in section["rows"]}
    for name in ("catalyzer + lattice", "catalyzer + sign (Hamming)",
                 "catalyzer + lattice, fine-tuned with a decoder"):
        assert set(rows[name]["recall"]) == {"1", "10", "100"}
    assert {(d["code"], d["kind"]) for d in section["decoders"]} == {
        ("lattice", "linear"), ("lattice", "mlp"), ("sign", "linear"), ("sign", "mlp"),
        ("lattice, fine-tuned", "mlp")}
    assert all(d["val_mse"] <= d["baseline_val_mse"] + 1e-6 for d in section["decoders"]
               if d["kind"] == "linear")
    n_values = [entry["N"] for entry in section["sweep"]["rows"]]
    assert n_values == sorted(n_values) and n_values[0] >= section["sweep"]["k"]


@pytest.mark.slow  # the benchmark suite in quick mode: over a minute
def test_quick_run_faiss_rows(quick_run):
    pytest.importorskip("faiss")
    results, _ = quick_run
    table1 = {row["method"]: row for row in results["table1"]["rows"]}
    for name in ("PQ8", "OPQ8,PQ8", "LSQ8x8_Nnone", "RQ8x8_Nnone", "catalyzer + OPQ"):
        assert table1[name]["bits"] == 64 and set(table1[name]["recall"]) == {"1", "10", "100"}
    itq = next(row for row in results["table2"]["rows"] if row["method"] == "ITQ")
    assert itq["cells"]["64"]["recall"] == {}  # 64 bits > d = 32: n/a, as in the paper
    assert itq["cells"]["32"]["recall"]


@pytest.mark.slow  # the benchmark suite in quick mode: over a minute
def test_quick_run_figures(quick_run):
    pytest.importorskip("matplotlib")
    _, folder = quick_run
    for png in ("figure5_recall_vs_bits.png", "figure3_neighbor_distances.png",
                "appendixc_range_search.png"):
        assert (folder / png).stat().st_size > 0


def test_prob_first_exceeds_kth_counts_ordered_pairs():
    # Pairs (x, y), x != y, with first[x] > kth[y]: (1, 0) and (1, 2) out of 6.
    first = np.array([1.0, 5.0, 2.0])
    kth = np.array([3.0, 6.0, 4.0])
    assert prob_first_exceeds_kth(first, kth) == pytest.approx(2 / 6)


def test_range_agreement_on_a_line():
    base = np.array([[0.0], [1.0], [3.0], [10.0]], dtype=np.float32)
    query = np.array([[0.4], [9.0]], dtype=np.float32)
    true_nn = np.array([0, 3])  # distances 0.4 and 1.0
    half, full = range_agreement(base, query, true_nn, target_recalls=(0.5, 1.0))
    # ε = 0.7: query 0 sees base 0 and 1, query 1 sees nothing.
    assert half["epsilon"] == pytest.approx(0.7)
    assert (half["recall"], half["mean_results"]) == (0.5, 1.0)
    # ε = 1.0: query 1 now reaches its neighbour at 10.
    assert (full["recall"], full["mean_results"]) == (1.0, 1.5)


def test_dataset_directory_of_float16_npy(tmp_path):
    # The layout of pypi-minilm96: float16 .npy splits, ivecs ground truth.
    rng = np.random.default_rng(3)
    splits = {split: rng.standard_normal((n, 8)).astype(np.float16)
              for split, n in (("learn", 30), ("base", 20), ("query", 5))}
    for split, x in splits.items():
        np.save(tmp_path / f"{split}.npy", x)
    _, gt = exact_knn(splits["base"].astype(np.float32), splits["query"].astype(np.float32), 3)
    vecio.write_vectors(tmp_path / "groundtruth.ivecs", gt.astype(np.int32))
    ds = load_dataset(tmp_path)
    for split, x in splits.items():
        assert getattr(ds, split).dtype == np.float32
        assert np.array_equal(getattr(ds, split), x.astype(np.float32))
    assert np.array_equal(ds.groundtruth, gt)
    small = subsample_learn(ds, 10)
    assert np.array_equal(small.learn, ds.learn[:10]) and small.name == f"{ds.name}-learn10"
    with pytest.raises(SpreadcodeError):
        subsample_learn(ds, 31)


def test_sift_dataset_split_is_distinct_seeded_and_sized():
    from bench.make_sift_dataset import LEARN_SHARE, split

    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (3000, 128), dtype=np.uint8)
    descriptors = np.concatenate([rows, rows[:500]])  # 500 duplicates to drop
    learn, base, query = split(descriptors, 200, seed=3)
    assert (len(query), len(learn)) == (200, int(2800 * LEARN_SHARE))
    assert len(learn) + len(base) + len(query) == 3000
    together = np.concatenate([learn, base, query])
    assert len(np.unique(together, axis=0)) == 3000
    assert np.array_equal(np.unique(together, axis=0), np.unique(rows, axis=0))
    again = split(descriptors, 200, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((learn, base, query), again))
    assert not np.array_equal(split(descriptors, 200, seed=4)[2], query)


def test_quality_ablation_off_the_sphere(tmp_path):
    """On unit-norm vectors the default model decodes onto their sphere; the "off the sphere"
    row searches a copy of that model without it, and leaves the default row's model as it
    was (the rows share it)."""
    from bench import _spreadcode_methods
    from bench._methods import Context

    rng = np.random.default_rng(3)
    x = _clustered(rng, 700, rng.standard_normal((20, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    learn, base, query = x[:400], x[400:680], x[680:]
    ctx = Context(k=10, quick=True, cache_dir=tmp_path)
    default = _spreadcode_methods.library_default(learn, base, query, ctx, 16)
    off = _spreadcode_methods.QUALITY_LEVERS["spreadcode default, off the sphere"](
        learn, base, query, ctx, 16)
    index, train_s = _spreadcode_methods._default_index(learn, ctx, 16)
    model, meta = index.catalyzer, index.catalyzer_meta
    assert model.output_norm == pytest.approx(1.0) and meta.output_norm == model.output_norm
    assert off.train_s == default.train_s == train_s and off.code == default.code
    assert off.ids.shape == default.ids.shape == (20, 10)
