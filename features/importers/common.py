"""Shared reading, checking and writing helpers of the real-dataset importers.

Every problem with the input becomes a one-line `SchemaError` naming the file (the path as given) and, where there
is one, the column; never a pandas/pyarrow traceback. Files are read as strings first and converted column by
column, so a bad value is reported with its column and 1-based data row.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from core.actions import ACTION_NAMES
from core.errors import SchemaError
from core.io import atomic_dir
from core.schema import TABLES, Manifest, conform, validate, write_dataset

DAY_MS = 86_400_000
# pandas writes an integer column that has blanks as floats ("87433.0"): a zero fraction is accepted, nothing else.
_INT_PATTERN = r"^-?[0-9]+(\.0+)?$"
_ZERO_FRACTION = r"\.0+$"


def find_file(src: Path, name: str) -> Path:
    """`src/name` or `src/name.gz`, whichever exists (exactly one of them must)."""
    check_src(src)
    plain, packed = src / name, src / f"{name}.gz"
    if plain.is_file() and packed.is_file():
        raise SchemaError(f"{plain}: both {name} and {name}.gz exist; keep one")
    if packed.is_file():
        return packed
    if not plain.is_file():
        raise SchemaError(f"{plain}: missing file (nor {packed.name})")
    return plain


def find_files(src: Path, prefix: str, suffix: str) -> list[Path]:
    """All `src/<prefix>*<suffix>[.gz]` files, in name order (a file may not exist both plain and gzipped)."""
    check_src(src)
    found = sorted(p for p in src.iterdir() if p.is_file() and p.name.startswith(prefix))
    found = [p for p in found if p.name.endswith(suffix) or p.name.endswith(f"{suffix}.gz")]
    if not found:
        raise SchemaError(f"{src / f'{prefix}*{suffix}'}: missing file (no {prefix}*{suffix}[.gz] in {src})")
    plain = {p.name for p in found}
    for p in found:
        if p.name.endswith(".gz") and p.name[:-3] in plain:
            raise SchemaError(f"{p}: both {p.name[:-3]} and {p.name} exist; keep one")
    return found


def check_src(src: Path) -> None:
    if not src.is_dir():
        raise SchemaError(f"{src}: --src is not a directory")


def source_name(src: Path) -> str:
    """The basename of `src` (no absolute path in the manifest, so its bytes do not depend on the checkout)."""
    return Path(os.path.abspath(src)).name


def _first_line(path: Path) -> bytes:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            return fh.readline()
    except (OSError, EOFError) as err:  # a corrupt or truncated gzip stream
        raise SchemaError(f"{path}: unreadable ({_one_line(err)})") from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_csv(
    path: Path,
    columns: Sequence[str],
    *,
    header: bool,
    delimiter: str = ",",
    quoting: bool = True,
    encoding: str = "utf8",
) -> pa.Table:
    """Reads a delimited text file (plain or .gz) into a table of string columns.

    Args:
        path: the file.
        columns: the expected columns: with `header`, the header must name exactly these (any order); without,
            every row must have exactly this many fields.
        header: whether the first line is a header.
        delimiter: the field separator.
        quoting: whether `"` quotes values (KuaiRand's tag lists); MovieLens titles contain bare quotes.
        encoding: the text encoding.

    Raises:
        SchemaError: an empty file, a missing/unexpected/duplicate column, a row with a wrong field count, no data
            rows, or bytes that do not decode.
    """
    line = _first_line(path)
    if not line.strip():
        raise SchemaError(f"{path}: empty file")
    names = _header_names(path, line, columns, delimiter) if header else list(columns)
    bad_rows: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        bad_rows.append(row)
        return "skip"  # reported below as a SchemaError (an exception raised here would surface as ArrowInvalid)

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                column_names=None if header else names, encoding=encoding, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char='"' if quoting else False, invalid_row_handler=on_invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError) as err:
        raise SchemaError(f"{path}: unreadable ({_one_line(err)})") from None
    if bad_rows:
        raise _field_count_error(path, bad_rows[0], names)
    if table.num_rows == 0:
        raise SchemaError(f"{path}: no data rows")
    return table


def _header_names(path: Path, line: bytes, columns: Sequence[str], delimiter: str) -> list[str]:
    """The header's column names, in file order, when they are exactly `columns`; else the first problem."""
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SchemaError(f"{path}: header is not UTF-8 text") from None
    found = next(csv.reader(io.StringIO(text), delimiter=delimiter))
    for name in found:
        if found.count(name) > 1:
            raise SchemaError(f"{path}: duplicate column '{name}'")
    for name in columns:
        if name not in found:
            raise SchemaError(f"{path}: missing column '{name}'")
    for name in found:
        if name not in columns:
            raise SchemaError(f"{path}: unexpected column '{name}'")
    return found


def _field_count_error(path: Path, row: Any, names: list[str]) -> SchemaError:
    """The error for a row with the wrong number of fields (pyarrow's invalid-row record), naming the line."""
    where = f"line {row.number}" if row.number is not None else "a line"
    n = row.actual_columns
    problem = f"missing column '{names[n]}'" if n < len(names) else f"unexpected column after '{names[-1]}'"
    return SchemaError(f"{path}: {where} has {n} fields, expected {len(names)} ({problem})")


def bad_value(path: Path, column: str, index: int, value: object, expected: str) -> SchemaError:
    return SchemaError(f"{path}: column '{column}' has {value!r} in data row {index + 1}, expected {expected}")


def int_column(
    table: pa.Table,
    column: str,
    path: Path,
    *,
    lo: int | None = None,
    hi: int | None = None,
    blank: int | None = None,
) -> np.ndarray:
    """Parses a string column as int64.

    Args:
        lo, hi: the inclusive range every value must lie in (checked after `blank` is filled in).
        blank: the value that stands for an empty cell; None means empty cells are an error.
    """
    values = table.column(column).combine_chunks()
    if blank is not None:
        values = pc.if_else(pc.equal(values, ""), str(blank), values)
    ok = pc.match_substring_regex(values, _INT_PATTERN)
    if not pc.all(ok).as_py():
        i = int(pc.index(ok, False).as_py())
        raise bad_value(path, column, i, values[i].as_py(), "an integer")
    try:
        ints = pc.cast(pc.replace_substring_regex(values, _ZERO_FRACTION, ""), pa.int64()).to_numpy()
    except pa.ArrowInvalid:  # every value matched the pattern, so the only failure left is overflow
        i = next(i for i, v in enumerate(values.to_pylist()) if not -(2**63) <= int(v.split(".")[0]) < 2**63)
        raise bad_value(path, column, i, values[i].as_py(), "a 64-bit integer") from None
    check_range(ints, column, path, lo, hi)
    return ints


def check_range(values: np.ndarray, column: str, path: Path, lo: int | None, hi: int | None) -> None:
    out = np.zeros(len(values), dtype=bool)
    if lo is not None:
        out |= values < lo
    if hi is not None:
        out |= values > hi
    if out.any():
        i = int(np.argmax(out))
        bounds = f"{lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise bad_value(path, column, i, int(values[i]), bounds)


def str_column(table: pa.Table, column: str) -> pa.Array:
    return table.column(column).combine_chunks()


def constant(n: int, value: str) -> pa.Array:
    """A string column holding `value` n times (e.g. "unknown" where the source has no such attribute)."""
    return pa.array([value] * n, pa.string())


def date_column(table: pa.Table, column: str, path: Path, fmt: str, *, blank_ok: bool = False) -> pa.Array:
    """Parses a date column into UTC-midnight epoch milliseconds (int64; null for a blank cell when `blank_ok`)."""
    values = str_column(table, column)
    parsed = pc.strptime(values, fmt, "ms", error_is_null=True)
    bad = pc.is_null(parsed)
    if blank_ok:
        bad = pc.and_(bad, pc.not_equal(values, ""))
    if pc.any(bad).as_py():
        i = int(pc.index(bad, True).as_py())
        raise bad_value(path, column, i, values[i].as_py(), f"a date like {fmt!r}")
    return parsed.cast(pa.int64())


def lookup(keys: np.ndarray, ids: np.ndarray, column: str, path: Path, target: Path) -> np.ndarray:
    """Positions of `keys` in the unique `ids`; every key must be there (a foreign key into `target`)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, keys).clip(0, max(len(ids) - 1, 0))
    missing = sorted_ids[pos] != keys
    if missing.any():
        i = int(np.argmax(missing))
        raise bad_value(path, column, i, int(keys[i]), f"an id listed in {target.name}")
    return order[pos]


def check_unique(ids: np.ndarray, column: str, path: Path) -> None:
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = ids[first[np.argmax(counts > 1)]]
        i = int(np.flatnonzero(ids == dup)[1])
        raise SchemaError(f"{path}: column '{column}' repeats id {dup} in data row {i + 1}")


def request_ids(user_id: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """One id per distinct (user, timestamp), numbered 1.. in order of first appearance (so stable for a file)."""
    if len(user_id) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(np.stack([user_id, ts], axis=1), axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(first) + 1)
    return rank[inverse.reshape(-1)]


def action_columns(n: int, observed: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Every canonical action column as int8: the observed ones from `observed`, the rest all zero."""
    unknown = set(observed) - set(ACTION_NAMES)
    assert not unknown, f"not in the action vocabulary: {unknown}"
    zeros = np.zeros(n, dtype=np.int8)
    return {a: pa.array(observed[a].astype(np.int8) if a in observed else zeros) for a in ACTION_NAMES}


def write_canonical(
    out: Path, tables: dict[str, pa.Table], dataset: str, observed_actions: Sequence[str], params: dict[str, Any]
) -> Manifest:
    """Validates every table, then writes the dataset directory atomically (nothing under `out` on failure)."""
    for name, table in tables.items():
        # Checked before `out` (or even its parent) is touched, so a mapping bug leaves no trace either.
        validate(conform(table, TABLES[name]), TABLES[name], f"{name}.parquet")
    observed = tuple(a for a in ACTION_NAMES if a in observed_actions)  # vocabulary order, like the synthetic feed
    with atomic_dir(out) as tmp:
        return write_dataset(tmp, tables, dataset, observed, params)
