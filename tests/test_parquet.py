"""Parquet input (spreadcode/parquet.py through spreadcode.vecio): list and fixed_size_list
columns read row group by row group give exactly the vectors of the same .npy, ids come from
an integer column, and every malformed file is one clear error naming the file and row."""
import sys

import numpy as np
import pytest

from helpers import assert_clean_error, run, tiny_catalyzer, tiny_meta
from spreadcode import collection_dir, vecio
from spreadcode.catalyzer import save_catalyzer
from spreadcode.errors import SpreadcodeError
from spreadcode.sample import load_sample

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_table(path, columns, row_group_size=None):
    """Write {name: pyarrow array or numpy array} as a Parquet file; returns the path."""
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def vector_columns(x):
    """(fixed_size_list<float>, list<float>) arrays of the rows of x float32 (n, d)."""
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    return fixed, pa.array(list(x), type=pa.list_(pa.float32()))


@pytest.fixture(scope="module")
def vectors():
    return load_sample().base[:300]


@pytest.mark.parametrize("column", ["fixed", "ragged_ok"])
@pytest.mark.parametrize("row_group_size", [7, 64, None])
def test_columns_read_row_group_by_row_group_equal_the_vectors(tmp_path, vectors, column,
                                                               row_group_size):
    fixed, listed = vector_columns(vectors)
    path = write_table(tmp_path / "x.parquet", {"id": np.arange(300) * 5, "fixed": fixed,
                                                "ragged_ok": listed}, row_group_size)
    opened = vecio.open_vectors(path, column)
    assert (opened.n, opened.d, opened.dtype, opened.dataset) == (300, 96, np.float32, column)
    np.testing.assert_array_equal(opened.read(), vectors)
    np.testing.assert_array_equal(np.vstack(list(opened.chunks(50))), vectors)
    np.testing.assert_array_equal(opened.read(33, 250), vectors[33:250])
    np.testing.assert_array_equal(vecio.read_vectors(f"{path}:{column}"), vectors)
    np.testing.assert_array_equal(vecio.read_ids(path, "id"), np.arange(300) * 5)


def test_the_only_list_column_is_the_default(tmp_path, vectors):
    values = vectors.astype(np.float16)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 96)
    path = write_table(tmp_path / "x.parquet", {"name": [str(i) for i in range(300)],
                                                "v": fixed})
    opened = vecio.open_vectors(path)
    assert (opened.dataset, opened.dtype) == ("v", np.float16)
    np.testing.assert_array_equal(opened.read(), values.astype(np.float32))


def bad_file(tmp_path, case):
    """(path, column or None) of a malformed Parquet input."""
    two = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], type=pa.list_(pa.float32()))
    tables = {
        "ragged": {"v": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0]], type=pa.list_(pa.float32()))},
        "null row": {"v": pa.array([[1.0, 2.0], None, [5.0, 6.0]], type=pa.list_(pa.float32()))},
        "null value": {"v": pa.array([[1.0, 2.0], [3.0, None], [5.0, 6.0]],
                                     type=pa.list_(pa.float32(), 2))},
        "nan": {"v": pa.array([[1.0, 2.0], [3.0, 4.0], [float("nan"), 6.0]],
                              type=pa.list_(pa.float64()))},
        "two lists": {"a": two, "b": two},
        "no list": {"a": [1.0, 2.0, 3.0]},
        "strings": {"v": pa.array([["a"], ["b"], ["c"]])},
    }
    if case == "not parquet":
        path = tmp_path / "x.parquet"
        path.write_bytes(b"PAR1 but not really")
        return path, None
    path = write_table(tmp_path / "x.parquet", tables[case], row_group_size=2)
    return path, {"two lists": None, "no list": None}.get(case, "v")


@pytest.mark.parametrize("case, fragments", [
    ("ragged", ["row 2 has 1 values", "ragged"]),
    ("null row", ["row 1 is null"]),
    ("null value", ["row 1 holds a null value"]),
    ("nan", ["vector 2 contains NaN"]),
    ("two lists", ["list columns a, b", "--column"]),
    ("no list", ["no list column"]),
    ("strings", ["unsupported element type"]),
    ("not parquet", ["not a readable Parquet file"]),
])
def test_malformed_files_are_one_clear_error(tmp_path, case, fragments):
    path, column = bad_file(tmp_path, case)
    with pytest.raises(SpreadcodeError) as err:
        vecio.read_vectors(path, column)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_bad_columns_are_named(tmp_path, vectors):
    fixed, _ = vector_columns(vectors[:4])
    path = write_table(tmp_path / "x.parquet", {"v": fixed, "name": ["a", "b", "c", "d"],
                                                "id": pa.array([1, None, 3, 4])})
    for call, fragment in ((lambda: vecio.open_vectors(path, "w"),
                            r"no column 'w' \(list columns: v\)"),
                           (lambda: vecio.open_vectors(path, "name"), "holds string, not vectors"),
                           (lambda: vecio.read_ids(path, "name"), "expected integer ids"),
                           (lambda: vecio.read_ids(path, "id"), "row 1 has no id"),
                           (lambda: vecio.read_ids(path), "name the id column")):
        with pytest.raises(SpreadcodeError, match=fragment):
            call()


def test_without_pyarrow_the_error_says_what_to_install(tmp_path, vectors, monkeypatch):
    fixed, _ = vector_columns(vectors[:4])
    path = write_table(tmp_path / "x.parquet", {"v": fixed})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(SpreadcodeError, match=r"install spreadcode\[dist\] for Parquet input"):
        vecio.read_vectors(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(store, sha) of the tiny lattice catalyzer."""
    store = tmp_path_factory.mktemp("parquet-store")
    model = tiny_catalyzer(24)
    return store, save_catalyzer(model, tiny_meta(model, {"kind": "lattice", "d": 24,
                                                          "param": 79}), store=store)[0]


def test_cli_encodes_parquet_like_npy(tmp_path, vectors, store):
    """encode from Parquet (a column by name, ids from a column, row groups smaller than the
    shards) writes the same codes and ids as from .npy with an ids file."""
    store, sha = store
    fixed, listed = vector_columns(vectors)
    ids = np.arange(300, dtype=np.int64)[::-1] * 7
    write_table(tmp_path / "a.parquet", {"key": ids[:200], "emb": fixed[:200],
                                         "other": listed[:200]}, row_group_size=30)
    write_table(tmp_path / "b.parquet", {"key": ids[200:], "emb": listed[200:]},
                row_group_size=17)
    np.save(tmp_path / "a.npy", vectors[:200])
    np.save(tmp_path / "b.npy", vectors[200:])
    np.save(tmp_path / "ids.npy", ids)
    common = ("--shard-size", 64, "--model", sha, "--store", store, "-q")
    from_npy = run("encode", tmp_path / "a.npy", tmp_path / "b.npy", "-o", tmp_path / "npy",
                   "--ids", tmp_path / "ids.npy", *common)
    assert from_npy.exit_code == 0, from_npy.output
    from_parquet = run("encode", tmp_path / "a.parquet", tmp_path / "b.parquet", "-o",
                       tmp_path / "pq", "--column", "emb", "--id-column", "key", *common)
    assert from_parquet.exit_code == 0, from_parquet.output
    assert_same_collection(tmp_path / "npy", tmp_path / "pq")
    assert_clean_error(run("encode", tmp_path / "a.parquet", "-o", tmp_path / "x", *common),
                       "list columns emb, other", "--column")
    missing = run("add", tmp_path / "pq", tmp_path / "a.npy", "--id-column", "key",
                  "--store", store)
    assert_clean_error(missing, "a.npy", "dataset or column name only applies")
    assert collection_dir.read_manifest(tmp_path / "pq").count == 300


def assert_same_collection(one, other):
    """The two collection directories list the same shards with the same codes and ids
    (their manifests, payload hashes included, are equal) and both open."""
    assert (one / "manifest.json").read_bytes() == (other / "manifest.json").read_bytes()
    for directory in (one, other):
        collection_dir.open_directory(directory, verify=True)
