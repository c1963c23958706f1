"""Vector file I/O: round trips, streaming, and a clear error for every malformed input."""
import io
import os

import h5py
import numpy as np
import pytest

from spreadcode import vecio
from spreadcode.errors import SpreadcodeError


def texmex_bytes(rows, value_dtype, dims=None):
    """Bytes of a texmex file: per row an int32 dim (``dims[i]`` or the row length) + values."""
    out = b""
    for i, row in enumerate(rows):
        dim = len(row) if dims is None else dims[i]
        out += np.int32(dim).tobytes() + np.asarray(row, dtype=value_dtype).tobytes()
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.mark.parametrize("suffix, dtype", [(".fvecs", np.float32), (".bvecs", np.uint8),
                                           (".ivecs", np.int32), (".npy", np.float32),
                                           (".npy", np.int8)])
def test_write_then_read_round_trips_exactly(tmp_path, rng, suffix, dtype):
    x = (rng.integers(0, 200, size=(37, 5)) if dtype != np.float32
         else rng.standard_normal((37, 5))).astype(dtype)
    path = tmp_path / f"x{suffix}"
    vecio.write_vectors(path, x)
    vf = vecio.open_vectors(path)
    assert (vf.n, vf.d, vf.dtype) == (37, 5, np.dtype(dtype))
    got = vecio.read_vectors(path)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, x.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_texmex_layout_matches_the_format(tmp_path):
    rows = [[1.5, -2.0, 3.25], [0.0, 4.0, -1.0]]
    path = tmp_path / "x.fvecs"
    vecio.write_vectors(path, np.array(rows, dtype=np.float32))
    assert path.read_bytes() == texmex_bytes(rows, "<f4")
    (tmp_path / "y.bvecs").write_bytes(texmex_bytes([[1, 2], [250, 0]], "u1"))
    np.testing.assert_array_equal(vecio.read_vectors(tmp_path / "y.bvecs"), [[1, 2], [250, 0]])


def test_chunks_and_slices_cover_the_file_in_order(tmp_path, rng):
    x = rng.standard_normal((23, 4)).astype(np.float32)
    vecio.write_vectors(tmp_path / "x.fvecs", x)
    vf = vecio.open_vectors(tmp_path / "x.fvecs")
    chunks = list(vf.chunks(5))
    assert [c.shape for c in chunks] == [(5, 4)] * 4 + [(3, 4)]
    np.testing.assert_array_equal(np.concatenate(chunks), x)
    np.testing.assert_array_equal(vf.read(7, 12), x[7:12])
    np.testing.assert_array_equal(vf.read(-3), x[-3:])
    assert vf.read(30, 40).shape == (0, 4)
    with pytest.raises(SpreadcodeError, match="batch size"):
        next(vf.chunks(0))


def test_read_returns_a_writable_copy(tmp_path, rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got = vecio.read_vectors(tmp_path / "x.npy")
    got *= 2
    np.testing.assert_array_equal(vecio.read_vectors(tmp_path / "x.npy"), x)


@pytest.mark.parametrize("dtype", ["float16", "float64", "uint8", "int8", "int32", ">f4"])
def test_npy_element_types_are_converted_to_float32(tmp_path, dtype):
    x = np.arange(12).reshape(4, 3).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    vf = vecio.open_vectors(tmp_path / "x.npy")
    assert vf.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(vf.read(), np.arange(12, dtype=np.float32).reshape(4, 3))


def test_fortran_ordered_npy_reads_as_c_order(tmp_path):
    x = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    np.save(tmp_path / "x.npy", x)
    got = vecio.read_vectors(tmp_path / "x.npy")
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("array, message", [
    (np.zeros(5, np.float32), "expected a 2-D array"),
    (np.zeros((2, 3, 4), np.float32), "expected a 2-D array"),
    (np.zeros((0, 4), np.float32), "no vectors"),
    (np.zeros((4, 0), np.float32), "dimension 0"),
    (np.zeros((2, 2), np.int64), "unsupported element type int64"),
    (np.zeros((2, 2), np.complex64), "unsupported element type complex64"),
    (np.zeros(2, [("a", "f4"), ("b", "f4")]), "expected a 2-D array"),
])
def test_unusable_npy_is_rejected(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(SpreadcodeError, match=message) as err:
        vecio.open_vectors(tmp_path / "x.npy")
    assert str(tmp_path / "x.npy") in str(err.value)


def test_garbage_npy_is_rejected(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"this is not numpy")
    with pytest.raises(SpreadcodeError, match="not a readable .npy"):
        vecio.open_vectors(tmp_path / "x.npy")


@pytest.mark.parametrize("content, message", [
    (b"", "no vectors"),
    (b"\x03\x00", "truncated"),
    (texmex_bytes([[1.0, 2.0]], "<f4", dims=[0]), "bad dim header 0"),
    (texmex_bytes([[1.0, 2.0]], "<f4", dims=[-2]), "bad dim header -2"),
    (np.int32(1 << 21).tobytes() + bytes(8), "bad dim header 2097152"),
    (texmex_bytes([[1.0, 2.0], [3.0, 4.0]], "<f4")[:-1], "not a multiple of the record size 12"),
    (texmex_bytes([[1.0, 2.0], [3.0, 4.0, 5.0]], "<f4"), "not a multiple of the record size"),
    (texmex_bytes([[1.0, 2.0], [3.0, 4.0]], "<f4", dims=[2, 7]),
     "record 1 has dim header 7, but the first record has 2"),
])
def test_malformed_fvecs_is_rejected_at_open(tmp_path, content, message):
    path = tmp_path / "x.fvecs"
    path.write_bytes(content)
    with pytest.raises(SpreadcodeError, match=message) as err:
        vecio.open_vectors(path)
    assert str(err.value).startswith(f"{path}: ")


def test_inconsistent_dim_header_inside_the_file_is_found_when_read(tmp_path):
    rows = [[1.0, 2.0]] * 6
    path = tmp_path / "x.fvecs"
    path.write_bytes(texmex_bytes(rows, "<f4", dims=[2, 2, 2, 2, 9, 2]))
    vf = vecio.open_vectors(path)
    np.testing.assert_array_equal(vf.read(0, 4), rows[:4])
    with pytest.raises(SpreadcodeError, match="record 4 has dim header 9"):
        list(vf.chunks(3))
    with pytest.raises(SpreadcodeError, match="record 4 has dim header 9"):
        vecio.read_vectors(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_file_and_vector(tmp_path, rng, bad):
    x = rng.standard_normal((10, 3)).astype(np.float32)
    x[7, 1] = bad
    path = tmp_path / "x.fvecs"
    path.write_bytes(texmex_bytes(x, "<f4"))
    vf = vecio.open_vectors(path)
    np.testing.assert_array_equal(vf.read(0, 7), x[:7])
    with pytest.raises(SpreadcodeError, match=f"^{path}: vector 7 contains NaN or Inf"):
        list(vf.chunks(4))


def test_float64_beyond_float32_range_is_rejected(tmp_path):
    x = np.ones((3, 2))
    x[2, 0] = 1e300
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(SpreadcodeError, match="vector 2 contains NaN or Inf"):
        vecio.read_vectors(tmp_path / "x.npy")


def test_check_finite_reports_the_first_bad_row_with_offset():
    x = np.zeros((5, 2), np.float32)
    vecio.check_finite(x, "queries")
    x[3, 1] = np.nan
    x[4, 0] = np.inf
    with pytest.raises(SpreadcodeError, match="^queries: vector 103 "):
        vecio.check_finite(x, "queries", first_row=100)


def test_unknown_missing_and_directory_paths(tmp_path):
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(SpreadcodeError, match="unknown vector file type"):
        vecio.open_vectors(tmp_path / "x.txt")
    with pytest.raises(SpreadcodeError, match="no such file"):
        vecio.open_vectors(tmp_path / "missing.fvecs")
    (tmp_path / "d.fvecs").mkdir()
    with pytest.raises(SpreadcodeError, match="not a regular file"):
        vecio.open_vectors(tmp_path / "d.fvecs")
    (tmp_path / "x.fvecs").write_bytes(texmex_bytes([[1.0]], "<f4"))
    with pytest.raises(SpreadcodeError, match="only applies to .h5"):
        vecio.open_vectors(tmp_path / "x.fvecs", dataset="train")


@pytest.fixture
def ann_h5(tmp_path, rng):
    """An ann-benchmarks style file with train (20, 6), test (4, 6), neighbors (4, 3)."""
    path = tmp_path / "data.hdf5"
    arrays = {"train": rng.standard_normal((20, 6)).astype(np.float32),
              "test": rng.standard_normal((4, 6)).astype(np.float32),
              "neighbors": rng.integers(0, 20, (4, 3)).astype(np.int32),
              "distances": rng.random((4, 3)).astype(np.float32)}
    with h5py.File(path, "w") as h5:
        for name, array in arrays.items():
            h5[name] = array
        h5.create_group("extra")
    return path, arrays


def test_hdf5_datasets_by_default_suffix_and_argument(ann_h5):
    path, arrays = ann_h5
    vf = vecio.open_vectors(path)
    assert (vf.n, vf.d, vf.dtype, vf.dataset) == (20, 6, np.float32, "train")
    np.testing.assert_array_equal(np.concatenate(list(vf.chunks(6))), arrays["train"])
    np.testing.assert_array_equal(vecio.read_vectors(f"{path}:test"), arrays["test"])
    np.testing.assert_array_equal(vecio.read_vectors(path, dataset="test"), arrays["test"])
    np.testing.assert_array_equal(vecio.read_vectors(f"{path}:test", dataset="test"),
                                  arrays["test"])
    gt = vecio.read_groundtruth(path)
    assert gt.dtype == np.int64
    np.testing.assert_array_equal(gt, arrays["neighbors"])


def test_hdf5_errors(ann_h5, tmp_path):
    path, _ = ann_h5
    with pytest.raises(SpreadcodeError,
                       match="no dataset 'query' .datasets: distances, neighbors, test, train"):
        vecio.open_vectors(f"{path}:query")
    with pytest.raises(SpreadcodeError, match="no dataset 'extra'"):
        vecio.open_vectors(path, dataset="extra")
    with pytest.raises(SpreadcodeError, match="conflicts with dataset='train'"):
        vecio.open_vectors(f"{path}:test", dataset="train")
    with pytest.raises(SpreadcodeError, match="expected integers"):
        vecio.read_groundtruth(path, dataset="distances")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(SpreadcodeError, match="not a readable HDF5 file"):
        vecio.open_vectors(tmp_path / "bad.h5")


def test_groundtruth_keeps_integer_values(tmp_path):
    gt = np.array([[5, 2**30, 0], [1, 2, 3]], dtype=np.int32)
    vecio.write_vectors(tmp_path / "gt.ivecs", gt)
    np.save(tmp_path / "gt.npy", gt.astype(np.int64) * 4)
    got = vecio.read_groundtruth(tmp_path / "gt.ivecs")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, gt)
    np.testing.assert_array_equal(vecio.read_groundtruth(tmp_path / "gt.npy"),
                                  gt.astype(np.int64) * 4)
    vecio.write_vectors(tmp_path / "x.fvecs", gt.astype(np.float32))
    with pytest.raises(SpreadcodeError, match="holds float32 values, expected integer ids"):
        vecio.read_groundtruth(tmp_path / "x.fvecs")


def test_read_ids_from_one_column(tmp_path):
    ids = np.array([10, -4, 2**40], dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    np.testing.assert_array_equal(vecio.read_ids(tmp_path / "ids.npy"), ids)
    vecio.write_vectors(tmp_path / "ids.ivecs", np.array([[7], [8]], np.int32))
    got = vecio.read_ids(tmp_path / "ids.ivecs")
    assert got.dtype == np.int64 and got.shape == (2,)
    np.testing.assert_array_equal(got, [7, 8])
    vecio.write_vectors(tmp_path / "two.ivecs", np.array([[7, 1]], np.int32))
    with pytest.raises(SpreadcodeError, match="one id per row, got 2"):
        vecio.read_ids(tmp_path / "two.ivecs")
    np.save(tmp_path / "big.npy", np.array([2**63], dtype=np.uint64))
    with pytest.raises(SpreadcodeError, match="larger than 2.63 - 1"):
        vecio.read_ids(tmp_path / "big.npy")


@pytest.mark.parametrize("name, x, message", [
    ("x.ivecs", np.ones((2, 2), np.float32), "stores int32; got float32"),
    ("x.bvecs", np.array([[1, 256]]), r"values from 1 to 256 do not fit the uint8 range \[0, 255\] "
                                      r"of .bvecs files; .npy or .h5 hold them"),
    ("x.ivecs", np.array([[-2**31 - 1]]), r"do not fit the int32 range \[-2147483648, 2147483647\]"),
    ("x.fvecs", np.array([[1.0], [np.nan]]), "vector 1 contains NaN"),
    ("x.fvecs", np.array([["a"]]), "cannot store <U1 values"),
    ("x.fvecs", np.zeros((0, 3), np.float32), "no vectors"),
    ("x.csv", np.ones((2, 2), np.float32), "cannot write this file type"),
])
def test_write_vectors_refuses_and_leaves_nothing(tmp_path, name, x, message):
    with pytest.raises(SpreadcodeError, match=message):
        vecio.write_vectors(tmp_path / name, x)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_an_existing_file_atomically(tmp_path):
    path = tmp_path / "x.fvecs"
    vecio.write_vectors(path, np.ones((3, 2), np.float32))
    with pytest.raises(SpreadcodeError):
        vecio.write_vectors(path, np.full((3, 2), np.inf, np.float32))
    np.testing.assert_array_equal(vecio.read_vectors(path), np.ones((3, 2)))
    vecio.write_vectors(path, np.zeros((1, 5), np.float32))
    np.testing.assert_array_equal(vecio.read_vectors(path), np.zeros((1, 5)))
    assert [p.name for p in tmp_path.iterdir()] == ["x.fvecs"]


@pytest.mark.parametrize("name", ["x.npy", "x.fvecs", "x.ivecs"])
def test_rows_written_in_batches_make_the_same_file(tmp_path, rng, name):
    x = rng.integers(-50, 50, (10, 3)).astype(np.int32 if name.endswith("ivecs") else np.float32)
    vecio.write_vectors(tmp_path / name, x)
    with open(tmp_path / f"b{name}", "wb") as fh:
        append = vecio.rows_writer(fh, tmp_path / f"b{name}", 10, 3, x.dtype)
        for start in (0, 1, 4):
            append(x[start:{0: 1, 1: 4, 4: 10}[start]])
    assert (tmp_path / f"b{name}").read_bytes() == (tmp_path / name).read_bytes()
    if name == "x.npy":
        buffer = io.BytesIO()
        np.save(buffer, x)
        assert buffer.getvalue() == (tmp_path / name).read_bytes()


def test_h5_datasets_can_grow_as_rows_come(tmp_path):
    with open(tmp_path / "g.h5", "wb") as fh:
        with vecio.h5_appenders(fh, {"ids": ((None,), np.int64), "fixed": ((3, 2), np.float32)}) as append:
            append["ids"]([1, 2])
            append["fixed"](np.ones((1, 2)))
            append["ids"]([3])
            append["fixed"](np.zeros((2, 2)))
    with h5py.File(tmp_path / "g.h5") as h5:
        np.testing.assert_array_equal(h5["ids"][:], [1, 2, 3])
        np.testing.assert_array_equal(h5["fixed"][:], [[1, 1], [0, 0], [0, 0]])


def test_write_h5_round_trips(tmp_path, rng):
    ids = rng.integers(0, 100, (3, 4))
    dist = rng.random((3, 4)).astype(np.float32)
    vecio.write_h5(tmp_path / "res.h5", {"neighbors": ids, "distances": dist})
    np.testing.assert_array_equal(vecio.read_groundtruth(tmp_path / "res.h5"), ids)
    np.testing.assert_array_equal(vecio.read_vectors(tmp_path / "res.h5:distances"), dist)
    assert [p.name for p in tmp_path.iterdir()] == ["res.h5"]


def test_check_outputs_finds_an_input_under_any_name(tmp_path, monkeypatch):
    vecio.write_vectors(tmp_path / "a.fvecs", np.ones((2, 3), np.float32))
    vecio.write_h5(tmp_path / "d.h5", {"train": np.ones((2, 3), np.float32)})
    (tmp_path / "link").symlink_to(tmp_path / "a.fvecs")
    os.link(tmp_path / "a.fvecs", tmp_path / "hard.fvecs")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for output in ("../a.fvecs", tmp_path / "link", tmp_path / "hard.fvecs",
                   tmp_path / "sub" / ".." / "a.fvecs"):
        with pytest.raises(SpreadcodeError, match=f"^{output}: this output is the same file as "
                                                  f"the input {tmp_path / 'a.fvecs'}"):
            vecio.check_outputs([None, output], [np.ones(3), None, tmp_path / "a.fvecs"])
    with pytest.raises(SpreadcodeError, match="same file as the input"):
        vecio.check_outputs([tmp_path / "d.h5"], [f"{tmp_path / 'd.h5'}:train"])
    vecio.check_outputs([tmp_path / "new.fvecs", tmp_path / "d.h5"], [tmp_path / "a.fvecs"])
