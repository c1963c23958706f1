"""Reading and writing vector files, streamed in chunks so inputs larger than RAM work.

Formats, chosen by extension:

* ``.fvecs`` / ``.bvecs`` / ``.ivecs`` (texmex): per record an int32 little-endian dimension
  ``d`` then ``d`` values (float32 / uint8 / int32). Read through a memory map with a
  structured view (record = ``dim`` + ``vec``). Opening checks that the file is non-empty,
  that the first dim header is in 1..2^20, that the size is a whole number of records and
  that the last record's header agrees; every read then checks the dim headers of the
  records it returns (vectorised), so all headers are validated by the time a whole file
  has been read.
* ``.npy``: 2-D float16/32/64, uint8, int8 or int32; the header is parsed by
  ``np.load(mmap_mode='r')``, rows of C-ordered arrays are then read from the file like
  texmex records (Fortran-ordered ones are sliced from the memory map).
* ``.h5`` / ``.hdf5`` (ann-benchmarks layout: ``train``, ``test``, ``neighbors``,
  ``distances``): the dataset is picked by ``dataset=`` or a ``file.h5:name`` suffix;
  vectors default to ``train``, ground truth to ``neighbors``.
* ``.parquet``: a list column (`spreadcode.parquet`, pyarrow), picked by ``dataset=`` or a
  ``file.parquet:column`` suffix, else the only list column; ids an integer column.

Floating-point data is converted to float32 chunk by chunk and checked for NaN/Inf (an error
names the file and the first bad vector). Writers go through `spreadcode.fileio.atomic_output`:
a hidden temp file next to the target, renamed into place only when complete.
"""
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from spreadcode.errors import SpreadcodeError
from spreadcode.fileio import atomic_output

TEXMEX_VALUE_DTYPES = {
    ".fvecs": np.dtype("<f4"),
    ".bvecs": np.dtype("u1"),
    ".ivecs": np.dtype("<i4"),
}
HDF5_SUFFIXES = (".h5", ".hdf5")
PARQUET_SUFFIX = ".parquet"
MAX_TEXMEX_DIM = 1 << 20
VECTOR_DTYPES = tuple(np.dtype(t) for t in ("float16", "float32", "float64", "uint8", "int8",
                                            "int32"))
DEFAULT_BATCH = 65536
_KNOWN_SUFFIXES = ".fvecs, .bvecs, .ivecs, .npy, .h5, .hdf5, .parquet"


class VectorFile:
    """An opened vector file: ``n`` vectors of dimension ``d`` stored as ``dtype``.

    ``path`` is the file (without any ``:dataset`` suffix); ``dataset`` the HDF5 dataset or
    Parquet column name, or None. Nothing is loaded until `read` or `chunks` asks for rows.
    """

    def __init__(self, path, n, d, dtype, dataset=None):
        self.path = Path(path)
        self.n = int(n)
        self.d = int(d)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.dataset = dataset

    def __repr__(self):
        where = f"{self.path}:{self.dataset}" if self.dataset else str(self.path)
        return f"VectorFile({where!r}, n={self.n}, d={self.d}, dtype={self.dtype.name})"

    def _rows(self, start, stop):
        """Rows ``start:stop`` in the source dtype, (stop - start, d); subclasses implement."""
        raise NotImplementedError

    def read(self, start=0, stop=None):
        """Vectors ``start:stop`` (Python slice semantics) as a new float32 (b, d) array."""
        start, stop, _ = slice(start, stop).indices(self.n)
        stop = max(start, stop)
        rows = self._rows(start, stop)
        with np.errstate(over="ignore"):
            out = np.array(rows, dtype=np.float32, order="C")
        if self.dtype.kind == "f":
            check_finite(out, str(self.path), first_row=start)
        return out

    def chunks(self, batch=DEFAULT_BATCH):
        """Iterate over all vectors in order, as float32 (<= batch, d) arrays."""
        if int(batch) < 1:
            raise SpreadcodeError(f"batch size must be positive, got {batch}")
        for start in range(0, self.n, int(batch)):
            yield self.read(start, start + int(batch))


class _TexmexFile(VectorFile):
    """.fvecs / .bvecs / .ivecs through a structured memory map."""

    def __init__(self, path, value_dtype):
        size = path.stat().st_size
        if size == 0:
            raise SpreadcodeError(f"{path}: no vectors (empty file)")
        if size < 4:
            raise SpreadcodeError(f"{path}: truncated: {size} bytes, shorter than one dim header")
        d = int(np.fromfile(path, dtype="<i4", count=1)[0])
        if not 1 <= d <= MAX_TEXMEX_DIM:
            raise SpreadcodeError(
                f"{path}: bad dim header {d} in the first record (expected 1..{MAX_TEXMEX_DIM}); "
                f"is this really a {path.suffix} file?")
        record = np.dtype([("dim", "<i4"), ("vec", value_dtype, (d,))])
        if size % record.itemsize:
            raise SpreadcodeError(
                f"{path}: file size {size} is not a multiple of the record size "
                f"{record.itemsize} (4 + {d} x {value_dtype.itemsize} bytes): "
                "truncated, or records with different dims")
        super().__init__(path, size // record.itemsize, d, value_dtype)
        self._record = record
        self._rows(self.n - 1, self.n)  # checks the last record's dim header

    def _rows(self, start, stop):
        records = _read_span(self.path, self._record, start, stop)
        bad = np.flatnonzero(records["dim"] != self.d)
        if bad.size:
            row = start + int(bad[0])
            raise SpreadcodeError(
                f"{self.path}: record {row} has dim header {int(records['dim'][bad[0]])}, but "
                f"the first record has {self.d} (inconsistent dims)")
        return records["vec"]


class _NpyFile(VectorFile):
    """.npy through ``np.load(mmap_mode='r')``."""

    def __init__(self, path, dtypes, allow_1d):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise SpreadcodeError(f"{path}: not a readable .npy array ({err})") from None
        n, d = _checked_shape(array.shape, path, allow_1d)
        self._array = array.reshape(n, d)
        # One file record per row when C-ordered; Fortran-ordered rows are not contiguous.
        self._row = np.dtype((array.dtype, (d,))) if self._array.flags.c_contiguous else None
        super().__init__(path, n, d, accepted_dtype(array.dtype, dtypes, path))

    def _rows(self, start, stop):
        if self._row is None:
            return self._array[start:stop]
        return _read_span(self.path, self._row, start, stop, offset=self._array.offset)


class _Hdf5File(VectorFile):
    """One dataset of an HDF5 file; the file is opened for each read (cheap next to a chunk),
    so no handle stays open between calls."""

    def __init__(self, path, dataset, dtypes, allow_1d):
        import h5py

        try:
            with h5py.File(path, "r") as h5:
                if dataset not in h5 or not isinstance(h5[dataset], h5py.Dataset):
                    names = ", ".join(k for k in h5 if isinstance(h5[k], h5py.Dataset))
                    raise SpreadcodeError(
                        f"{path}: no dataset {dataset!r} (datasets: {names or 'none'})")
                shape, dtype = h5[dataset].shape, h5[dataset].dtype
        except OSError as err:
            raise SpreadcodeError(f"{path}: not a readable HDF5 file ({err})") from None
        dtype = accepted_dtype(dtype, dtypes, f"{path}:{dataset}")
        n, d = _checked_shape(shape, f"{path}:{dataset}", allow_1d)
        super().__init__(path, n, d, dtype, dataset=dataset)

    def _rows(self, start, stop):
        import h5py

        with h5py.File(self.path, "r") as h5:
            rows = h5[self.dataset][start:stop]
        return rows.reshape(stop - start, self.d)


def _read_span(path, record, start, stop, offset=0):
    """Records ``start:stop`` of a file of fixed-size ``record``s beginning at byte ``offset``,
    read into a fresh array (stop - start,) of that dtype."""
    return np.fromfile(path, dtype=record, count=stop - start,
                       offset=offset + start * record.itemsize)


def _checked_shape(shape, name, allow_1d):
    """(n, d) of an array ``shape`` holding at least one vector; (n,) counts as (n, 1) when
    ``allow_1d``."""
    if len(shape) == 1 and allow_1d:
        shape = (shape[0], 1)
    if len(shape) != 2:
        raise SpreadcodeError(f"{name}: expected a 2-D array (n, d), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise SpreadcodeError(f"{name}: no vectors (shape {tuple(shape)})")
    if shape[1] == 0:
        raise SpreadcodeError(f"{name}: vectors have dimension 0 (shape {tuple(shape)})")
    return int(shape[0]), int(shape[1])


def accepted_dtype(dtype, dtypes, name):
    """``dtype`` in native byte order if it is one of ``dtypes`` (or of the kinds in a str)."""
    dtype = np.dtype(dtype)
    ok = dtype.kind in dtypes if isinstance(dtypes, str) else dtype.newbyteorder("=") in dtypes
    if not ok or dtype.fields is not None:
        wanted = ("integers" if isinstance(dtypes, str)
                  else ", ".join(t.name for t in dtypes))
        raise SpreadcodeError(f"{name}: unsupported element type {dtype} (expected {wanted})")
    return dtype


def _split_dataset(path, dataset):
    """Split ``file.h5:name`` / ``file.parquet:column`` into (Path, name); an explicit
    ``dataset`` must agree."""
    text = os.fspath(path)
    head, sep, tail = text.rpartition(":")
    if sep and head.lower().endswith((*HDF5_SUFFIXES, PARQUET_SUFFIX)) \
            and not os.path.exists(text):
        if dataset is not None and dataset != tail:
            raise SpreadcodeError(
                f"{text}: dataset {tail!r} in the path conflicts with dataset={dataset!r}")
        return Path(head), tail
    return Path(text), dataset


def _open(path, dataset, default_dataset, dtypes, allow_1d=False):
    """Open any supported format; ``dtypes`` are the accepted element types."""
    path, dataset = _split_dataset(path, dataset)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == PARQUET_SUFFIX:
        from spreadcode.parquet import ParquetVectors

        return ParquetVectors(path, dataset, dtypes)
    if dataset is not None and suffix not in HDF5_SUFFIXES:
        raise SpreadcodeError(f"{path}: a dataset or column name only applies to .h5/.hdf5 "
                              "(dataset) and .parquet (column) files")
    if suffix in TEXMEX_VALUE_DTYPES:
        return _TexmexFile(path, TEXMEX_VALUE_DTYPES[suffix])
    if suffix == ".npy":
        return _NpyFile(path, dtypes, allow_1d)
    if suffix in HDF5_SUFFIXES:
        return _Hdf5File(path, dataset or default_dataset, dtypes, allow_1d)
    raise SpreadcodeError(f"{path}: unknown vector file type (expected {_KNOWN_SUFFIXES})")


def _check_file(path):
    """SpreadcodeError unless ``path`` (a Path) is a regular file."""
    if not path.exists():
        raise SpreadcodeError(f"{path}: no such file")
    if not path.is_file():
        raise SpreadcodeError(f"{path}: not a regular file")


def open_vectors(path, dataset=None):
    """Open a vector file for streaming; see the module docstring for formats and checks.

    ``path``: str or Path, optionally ``file.h5:dataset`` / ``file.parquet:column``; HDF5
    defaults to ``train``, Parquet to its only list column.
    Returns a `VectorFile` whose ``read``/``chunks`` give float32 (b, d) arrays.
    """
    return _open(path, dataset, "train", VECTOR_DTYPES)


def read_vectors(path, dataset=None):
    """All vectors of a file as float32 (n, d), C-contiguous, finite."""
    return open_vectors(path, dataset).read()


def read_groundtruth(path, dataset=None):
    """Neighbor ids as int64 (nq, k): ``.ivecs``, integer ``.npy``, or HDF5 ``neighbors``."""
    return _read_integers(_open(path, dataset, "neighbors", "iu"))


def read_ids(path, dataset=None):
    """One int64 id per vector, (n,): ``.ivecs`` with d = 1, or integer ``.npy`` / HDF5 of
    shape (n,) or (n, 1) (HDF5 dataset default ``ids``), or the integer column ``dataset`` of
    a ``.parquet`` file."""
    split, column = _split_dataset(path, dataset)
    if split.suffix.lower() == PARQUET_SUFFIX:
        from spreadcode.parquet import read_ids as read_parquet_ids

        _check_file(split)
        return read_parquet_ids(split, column)
    ids_file = _open(path, dataset, "ids", "iu", allow_1d=True)
    if ids_file.d != 1:
        raise SpreadcodeError(
            f"{ids_file.path}: expected one id per row, got {ids_file.d} values per row")
    return _read_integers(ids_file)[:, 0]


def _read_integers(vector_file):
    """Every row of an integer-typed file as int64 (n, d), refusing texmex float/byte files
    and uint64 values beyond int64."""
    if vector_file.dtype.kind not in "iu":
        raise SpreadcodeError(
            f"{vector_file.path}: holds {vector_file.dtype.name} values, expected integer ids")
    rows = vector_file._rows(0, vector_file.n)
    if vector_file.dtype == np.uint64 and rows.size and rows.max() > np.iinfo(np.int64).max:
        raise SpreadcodeError(f"{vector_file.path}: ids larger than 2^63 - 1")
    return np.array(rows, dtype=np.int64, order="C")


def check_finite(x, what, first_row=0):
    """Raise SpreadcodeError naming ``what`` and the first row of ``x`` (float (n, d)) that
    holds NaN or Inf; ``first_row`` is the index of ``x[0]`` in the whole file."""
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise SpreadcodeError(
            f"{what}: vector {first_row + row} contains NaN or Inf "
            "(or a value beyond the float32 range)")


def check_outputs(outputs, inputs):
    """Refuse (SpreadcodeError) an output that is the same file as an input, whatever the
    paths say (relative, through symlinks, hard links: same device and inode), before
    anything is read or written. ``outputs`` / ``inputs``: paths, None entries skipped;
    inputs may be ``file.h5:dataset`` names or arrays (not files, skipped)."""
    read = {}
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            path = _split_dataset(item, None)[0]
            read.setdefault(_file_identity(path), path)
    read.pop(None, None)
    for output in outputs:
        if output is not None and _file_identity(output) in read:
            raise SpreadcodeError(
                f"{output}: this output is the same file as the input "
                f"{read[_file_identity(output)]}; nothing was done (choose another output path)")


def _file_identity(path):
    """(device, inode) of the file at ``path``, or None when there is none."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return stat.st_dev, stat.st_ino


def write_vectors(path, x):
    """Write ``x`` (n, d) atomically in the format of the extension: ``.fvecs`` (float32,
    finite), ``.ivecs`` (int32) or ``.bvecs`` (uint8) from integers in range, or ``.npy``
    (dtype kept)."""
    path = Path(path)
    x = np.asarray(x)
    n, d = _checked_shape(x.shape, path, allow_1d=False)
    with atomic_output(path) as fh:
        rows_writer(fh, path, n, d, x.dtype)(x)


def rows_writer(fh, path, n, d, dtype):
    """A function that appends rows (b, d) to ``fh``, the open binary file that becomes
    ``path``, so that n rows in all make a vector file of ``path``'s extension: texmex records
    (values checked as `write_vectors` does; errors name ``path`` and the row), or a ``.npy``
    array of ``dtype`` (n, d) whose header is written now."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        dtype = np.dtype(dtype)
        np.lib.format.write_array_header_1_0(fh, {
            "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n, d)})
        return lambda rows: fh.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())
    if suffix not in TEXMEX_VALUE_DTYPES:
        raise SpreadcodeError(
            f"{path}: cannot write this file type (expected .fvecs, .bvecs, .ivecs or .npy)")
    value_dtype = TEXMEX_VALUE_DTYPES[suffix]
    record = np.dtype([("dim", "<i4"), ("vec", value_dtype, (d,))])
    written = 0

    def append(rows):
        nonlocal written
        rows = np.asarray(rows)
        if rows.size:
            _check_convertible(rows, value_dtype, path)
        for start in range(0, rows.shape[0], DEFAULT_BATCH):
            block = rows[start:start + DEFAULT_BATCH]
            records = np.empty(block.shape[0], dtype=record)
            records["dim"] = d
            with np.errstate(over="ignore"):
                records["vec"] = block
            if value_dtype.kind == "f":
                check_finite(records["vec"], str(path), first_row=written + start)
            fh.write(records.tobytes())
        written += rows.shape[0]
    return append


def write_h5(path, arrays):
    """Write ``arrays`` ({dataset name: array}) as one HDF5 file, atomically; e.g. search
    results as ann-benchmarks ``neighbors`` int64 (nq, k) and ``distances`` float32 (nq, k)."""
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    with atomic_output(path) as fh, h5_appenders(
            fh, {name: (a.shape, a.dtype) for name, a in arrays.items()}) as append:
        for name, array in arrays.items():
            append[name](array)


@contextmanager
def h5_appenders(fh, datasets):
    """Write an HDF5 file into the open binary ``fh`` with the datasets {name: (shape, dtype)};
    a first dimension of None makes a dataset grow as rows come. Yields {name: append(rows)},
    functions that fill each dataset from the start, in order."""
    import h5py

    def appender(dataset):
        filled = 0

        def append(rows):
            nonlocal filled
            rows = np.asarray(rows)
            if dataset.maxshape[0] is None:
                dataset.resize(filled + rows.shape[0], axis=0)
            dataset[filled:filled + rows.shape[0]] = rows
            filled += rows.shape[0]
        return append

    with h5py.File(fh, "w") as h5:
        yield {name: appender(h5.create_dataset(
            name, shape=(shape[0] or 0, *shape[1:]), dtype=dtype,
            maxshape=(None, *shape[1:]) if shape[0] is None else None,
            chunks=True if shape[0] is None else None))
            for name, (shape, dtype) in datasets.items()}


def _check_convertible(x, value_dtype, path):
    """Refuse element types ``value_dtype`` cannot hold exactly: non-numbers into .fvecs,
    floats or out-of-range integers into .ivecs/.bvecs (NaN/Inf are checked while writing)."""
    if value_dtype.kind == "f":
        if x.dtype.kind not in "fiub":
            raise SpreadcodeError(f"{path}: cannot store {x.dtype} values as float32")
        return
    if x.dtype.kind not in "iub":
        raise SpreadcodeError(
            f"{path}: {path.suffix} stores {value_dtype.name}; got {x.dtype} values")
    info = np.iinfo(value_dtype)
    if x.min() < info.min or x.max() > info.max:
        raise SpreadcodeError(
            f"{path}: values from {x.min()} to {x.max()} do not fit the {value_dtype.name} range "
            f"[{info.min}, {info.max}] of {path.suffix} files; .npy or .h5 hold them")
