"""Reading a user's tabular file (CSV, TSV, optionally gzipped, or Parquet) with one-line errors.

CSV columns are read as text, not by pyarrow's type inference, so the loaders convert and report bad
values themselves with a row number; a row with a wrong field count is found again on one thread, the only
way pyarrow knows its line number. Every problem is a `DataError` naming the file (and line where known).
"""

from __future__ import annotations

import csv
import gzip
import logging
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from alignuser_sim.errors import DataError

log = logging.getLogger(__name__)


def read_table(path: Path) -> pa.Table:
    """A CSV (every column as text) or Parquet file; one-line DataErrors for what cannot be read."""
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):  # compressed inside; a gzipped Parquet file is not one
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            log.debug("%s: %s", path, exc)
            raise DataError(path, "not a Parquet file, or a damaged one") from None
    elif name.removesuffix(".gz").endswith((".csv", ".tsv", ".txt")):
        table = _read_csv(path, "\t" if name.removesuffix(".gz").endswith(".tsv") else ",")
    else:
        raise DataError(path, f"unknown file type '{path.suffix}' (expected .csv, .tsv or .parquet)")
    if table.num_rows == 0:
        raise DataError(path, "no data rows (only a header)")
    return table


def _read_csv(path: Path, delimiter: str) -> pa.Table:
    header = _header(path, delimiter)
    seen: set[str] = set()
    for column in (h.strip() for h in header):
        if column in seen:
            raise DataError(path, f"column '{column}' appears twice in the header")
        seen.add(column)
    try:
        table = _arrow_csv(path, header, delimiter, threads=True)
    except _BadRow:
        try:  # again on one thread, the only way pyarrow knows the line number of the bad row
            _arrow_csv(path, header, delimiter, threads=False)
        except _BadRow as bad:
            row = bad.row
            where = f"line {row.number}: " if row.number is not None else ""
            message = f"{where}expected {row.expected_columns} fields, found {row.actual_columns}"
            raise DataError(path, message) from None
        except pa.ArrowInvalid:
            pass
        raise DataError(path, "a row has the wrong number of fields") from None
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc):
            raise DataError(path, _utf8_problem(path)) from None
        raise DataError(path, f"cannot read as CSV ({_first_line(exc)})") from None
    return table.rename_columns([c.strip() for c in table.column_names])  # " rating" is meant as "rating"


class _BadRow(Exception):
    def __init__(self, row: pa_csv.InvalidRow):
        self.row = row


def _arrow_csv(path: Path, header: list[str], delimiter: str, threads: bool) -> pa.Table:
    """Every column as text (we convert and report bad values ourselves); _BadRow for a wrong field count."""
    bad_rows: list[pa_csv.InvalidRow] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        bad_rows.append(row)
        return "error"

    try:
        return pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(use_threads=threads),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except pa.ArrowInvalid:
        if bad_rows:
            raise _BadRow(bad_rows[0]) from None
        raise


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")  # noqa: SIM115


def _header(path: Path, delimiter: str) -> list[str]:
    try:
        with _open_binary(path) as raw:
            first = raw.readline()
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot read ({exc})") from None
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, "line 1: not UTF-8 text") from None
    header = next(csv.reader([text], delimiter=delimiter), None)
    if not header or not any(h.strip() for h in header):
        raise DataError(path, "empty file")
    return header


def _utf8_problem(path: Path) -> str:
    with _open_binary(path) as raw:
        for number, line in enumerate(raw, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return f"line {number}: not UTF-8 text"
    return "not UTF-8 text"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
