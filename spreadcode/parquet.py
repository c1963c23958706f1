"""Parquet vector files, read through pyarrow (imported on first use: ``pip install
spreadcode[dist]``).

Vectors are one column of ``fixed_size_list<number>`` or ``list<number>`` (``large_list``
too), picked by name (`spreadcode.vecio`'s ``dataset``: ``--column NAME`` or
``file.parquet:NAME``) or else the file's only list column; its values are one of vecio's
element types (float16/32/64, uint8, int8, int32). ``d`` is the fixed size, or the length of
the first row of a ``list`` column. Rows are read by whole row groups (the smallest unit a
Parquet reader can decode), so memory stays at about the row groups one read touches,
whatever the file size. Every read checks its rows: a null row or value, or a row whose
length is not ``d`` (ragged lists), is a SpreadcodeError naming the file and the row
(NaN/Inf are checked by `spreadcode.vecio.VectorFile.read`). Ids are an integer column
(`read_ids`). No torch.
"""
import numpy as np

from spreadcode.errors import SpreadcodeError
from spreadcode.vecio import VectorFile, accepted_dtype


def _pyarrow():
    """(pyarrow, pyarrow.parquet, pyarrow.compute); SpreadcodeError when not installed."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise SpreadcodeError("install spreadcode[dist] for Parquet input (pyarrow is "
                              "missing)") from None
    return pyarrow, pyarrow.parquet, pyarrow.compute


def _open_file(path):
    """The pyarrow ParquetFile of ``path``; SpreadcodeError when it is not one."""
    pa, pq, _ = _pyarrow()
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise SpreadcodeError(f"{path}: not a readable Parquet file ({err})") from None


def _is_list(arrow_type):
    pa, _, _ = _pyarrow()
    return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type))


def _numpy_dtype(arrow_type, what):
    """The numpy dtype of an arrow value type; SpreadcodeError for non-numbers."""
    try:
        return np.dtype(arrow_type.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        raise SpreadcodeError(f"{what}: values of type {arrow_type} are not numbers") from None


class ParquetVectors(VectorFile):
    """The vectors of one list column of a Parquet file (see the module docstring);
    ``dataset`` is the column's name."""

    def __init__(self, path, column, dtypes):
        self._file = _open_file(path)
        schema = self._file.schema_arrow
        lists = [field.name for field in schema if _is_list(field.type)]
        if column is None:
            if len(lists) != 1:
                found = f"list columns {', '.join(lists)}" if lists else "no list column"
                raise SpreadcodeError(f"{path}: {found}; name the vector column (--column "
                                      "NAME)")
            column = lists[0]
        if column not in schema.names:
            raise SpreadcodeError(f"{path}: no column {column!r} (list columns: "
                                  f"{', '.join(lists) or 'none'})")
        arrow_type = schema.field(column).type
        if not _is_list(arrow_type):
            raise SpreadcodeError(f"{path}: column {column!r} holds {arrow_type}, not vectors "
                                  f"(list columns: {', '.join(lists) or 'none'})")
        where = f"{path}:{column}"
        dtype = accepted_dtype(_numpy_dtype(arrow_type.value_type, where), dtypes, where)
        metadata = self._file.metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        self._starts = np.cumsum([0] + sizes)
        if self._starts[-1] == 0:
            raise SpreadcodeError(f"{path}: no vectors (no rows)")
        self._fixed = getattr(arrow_type, "list_size", None)
        self._cached = (None, None)  # (first and last row group, their rows) of the last read
        d = self._fixed or self._first_length(path, column)
        if d < 1:
            raise SpreadcodeError(f"{where}: vectors have dimension 0")
        super().__init__(path, int(self._starts[-1]), d, dtype, dataset=column)

    def _first_length(self, path, column):
        """The length of the first row of the ``list`` column ``column``."""
        _, _, pc = _pyarrow()
        first = next(self._file.iter_batches(batch_size=1, columns=[column])).column(0)
        if first.null_count:
            raise SpreadcodeError(f"{path}: column {column!r}: row 0 is null")
        return int(pc.list_value_length(first)[0].as_py())

    def _rows(self, start, stop):
        if stop <= start:
            return np.zeros((0, self.d), dtype=self.dtype)
        groups = (int(np.searchsorted(self._starts, start, side="right")) - 1,
                  int(np.searchsorted(self._starts, stop, side="left")) - 1)
        if self._cached[0] != groups:
            table = self._file.read_row_groups(list(range(groups[0], groups[1] + 1)),
                                               columns=[self.dataset])
            self._cached = (groups, self._values(table.column(0),
                                                 int(self._starts[groups[0]])))
        first = int(self._starts[groups[0]])
        return self._cached[1][start - first:stop - first]

    def _values(self, column, first_row):
        """The rows of the chunked list ``column`` (starting at file row ``first_row``) as
        an array (n, d) of ``dtype``, checked: no null row or value, every row of length d."""
        _, _, pc = _pyarrow()
        out = np.empty((len(column), self.d), dtype=self.dtype)
        done = 0
        for chunk in column.chunks:
            at = first_row + done
            if chunk.null_count:
                row = at + int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
                raise SpreadcodeError(f"{self.path}: column {self.dataset!r}: row {row} is null")
            if self._fixed is None:
                lengths = pc.list_value_length(chunk).to_numpy(zero_copy_only=False)
                bad = np.flatnonzero(lengths != self.d)
                if bad.size:
                    raise SpreadcodeError(
                        f"{self.path}: column {self.dataset!r}: row {at + int(bad[0])} has "
                        f"{int(lengths[bad[0]])} values, the first row {self.d} (ragged "
                        "lists; vectors need one dimension)")
            values = chunk.flatten()
            if values.null_count:
                index = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                raise SpreadcodeError(f"{self.path}: column {self.dataset!r}: row "
                                      f"{at + index // self.d} holds a null value")
            out[done:done + len(chunk)] = values.to_numpy(zero_copy_only=False).reshape(
                len(chunk), self.d)
            done += len(chunk)
        return out


def read_ids(path, column):
    """The integer column ``column`` of the Parquet file ``path`` as int64 (n,), read row
    group by row group; SpreadcodeError for a missing or non-integer column, a null, or a
    uint64 value beyond int64."""
    pa, _, _ = _pyarrow()
    parquet_file = _open_file(path)
    schema = parquet_file.schema_arrow
    if column not in schema.names:
        missing = "name the id column" if column is None else f"no column {column!r}"
        raise SpreadcodeError(f"{path}: {missing} (columns: {', '.join(schema.names)})")
    where = f"{path}:{column}"
    arrow_type = schema.field(column).type
    if not pa.types.is_integer(arrow_type):
        raise SpreadcodeError(f"{where}: holds {arrow_type} values, expected integer ids")
    dtype = np.dtype(arrow_type.to_pandas_dtype())
    parts, done = [], 0
    for group in range(parquet_file.metadata.num_row_groups):
        values = parquet_file.read_row_group(group, columns=[column]).column(0)
        if values.null_count:
            row = done + int(np.flatnonzero(values.is_null().to_numpy())[0])
            raise SpreadcodeError(f"{where}: row {row} has no id (null)")
        values = values.to_numpy()
        if dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
            raise SpreadcodeError(f"{where}: ids larger than 2^63 - 1")
        parts.append(values.astype(np.int64))
        done += len(values)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
