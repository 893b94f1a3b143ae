"""Tables on disk: the one reader (whole, or in chunks of any size), the one writer, the one text check.

Formats: CSV, TSV, JSON (an array, column-oriented, or JSON lines), JSONL, Parquet and TXT (one
text per line). Training data (`sentilora.data`) reads a file whole, file scoring
(`sentilora.scoring`) streams it in chunks; both go through `iter_table`, so a file reads the same,
and fails with the same one-line `DataError`, either way. Only an empty cell is missing: a text
"NA" or "null" stays text.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentilora.errors import DataError
from sentilora.files import atomic_path, first_line

FORMATS = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")
CSV_OPTIONS: dict[str, Any] = {"keep_default_na": False, "na_values": [""]}
_BOM = b"\xef\xbb\xbf"  # Excel writes a UTF-8 byte order mark


def table_format(path: Path) -> str:
    """The file's extension, checked to be one sentilora reads and writes."""
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise DataError(f"{path}: unsupported file type '{path.suffix or '(none)'}'. Use one of {', '.join(FORMATS)}.")
    return ext


# ---- the text check ---------------------------------------------------------------------------


def is_missing(v: Any) -> bool:
    """None, pandas' NA/NaT or a float NaN: what readers make of an empty cell."""
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and math.isnan(v))


def text_problem(v: Any) -> str | None:
    """Why a value cannot be classified ("empty text", "not text (int 5)"), or None for a usable text."""
    if is_missing(v) or (isinstance(v, str) and not v.strip()):
        return "empty text"
    if not isinstance(v, str):
        return f"not text ({type(v).__name__} {v!r:.40})"
    return None


def check_texts(texts: Sequence[Any], *, origin: str = "input", column: str | None = None) -> None:
    """Every text must be a non-empty string; the error names the first bad row (1-based)."""
    bad = [i for i, t in enumerate(texts) if text_problem(t)]
    if bad:
        i = bad[0]
        where = f"{origin} row {i + 1}" + (f", column '{column}'" if column else "")
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DataError(f"{where}: {text_problem(texts[i])}{more}. Remove such rows or fill them in.")


# ---- reading ------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole CSV/TSV/JSON/JSONL/Parquet/TXT file: all columns kept, row order kept."""
    return next(iter_table(path))


def input_file(path: str | Path, *, flag: str | None = None) -> Path:
    """`path` checked to be a readable table file of a supported format; the error names `flag` if given."""
    path = Path(path).expanduser()
    check = f"Check the path passed to {flag}." if flag else "Check the path."
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file. {check}")
    table_format(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found. {check}")
    return path


def iter_table(path: str | Path, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """The file as DataFrames of `rows` rows (None: one frame with every row), streamed where the format allows."""
    path = input_file(path)
    ext = table_format(path)
    _check_not_empty(path, ext)
    if ext == ".parquet":
        yield from _parquet(path, rows)
    elif ext in (".csv", ".tsv"):
        yield from _csv(path, ext, rows)
    elif ext == ".json":  # an array cannot be streamed: read whole, then cut
        df = _json_frame(path)
        yield from ([df] if rows is None else _slices(df, rows))
    else:
        yield from _lines(path, ext, rows)


def count_rows(path: str | Path) -> int | None:
    """Row count for progress and ETA (cheap: Parquet metadata or one pass over the text); None if unknown."""
    path = Path(path)
    ext = path.suffix.lower()
    if not path.is_file():
        return None  # the reader says what is wrong with it
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if ext in (".csv", ".tsv"):
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                return max(0, sum(1 for _ in csv.reader(f, delimiter="\t" if ext == ".tsv" else ",")) - 1)
        if ext in (".jsonl", ".txt"):
            with open(path, "rb") as f:
                return sum(1 for line in f if ext == ".txt" or line.strip())
    except (OSError, ValueError, csv.Error):
        return None
    return None


def _check_not_empty(path: Path, ext: str) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(65536)
    if size == 0 or (ext != ".parquet" and size <= 65536 and not head.removeprefix(_BOM).strip()):
        raise DataError(f"{path}: the file is empty. Give a file with a header and data rows.")


def decode_text(path: Path, raw: bytes) -> str:
    """A file's bytes as text (UTF-8, a byte order mark dropped); the error names the first bad byte."""
    try:
        return raw.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> DataError:
    """The exact place of the first invalid byte (found by a second, incremental pass)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                at = offset + e.start
                line = lines + block[: e.start].count(b"\n") + 1
                return DataError(f"{path}: not valid UTF-8 (byte 0x{block[e.start]:02x} at offset {at}, line {line}). "
                                 "Re-save the file as UTF-8.")
            offset += len(block)
            lines += block.count(b"\n")
    return DataError(f"{path}: not valid UTF-8 (it ends inside a character). Re-save the file as UTF-8.")


def _parquet(path: Path, rows: int | None) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        if rows is None:
            yield pd.read_parquet(path)
            return
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({first_line(e)}). Re-export it.") from None


def _csv(path: Path, ext: str, rows: int | None) -> Iterator[pd.DataFrame]:
    try:
        frames = pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", encoding="utf-8-sig", chunksize=rows, **CSV_OPTIONS)
        if rows is None:
            yield frames
        else:
            yield from frames
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise DataError(
            f"{path}: could not parse as {ext[1:].upper()} ({first_line(e)}). "
            "Check the delimiter and quoting (.csv: comma-separated, .tsv: tab-separated)."
        ) from None


def _lines(path: Path, ext: str, rows: int | None) -> Iterator[pd.DataFrame]:
    """JSONL and TXT, line by line: only "\\n" ends a line (a "\\r" before it is dropped)."""
    buf: list[Any] = []
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            start = 3 if n == 1 and raw.startswith(_BOM) else 0
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                at = offset + start + e.start
                raise DataError(f"{path}: not valid UTF-8 (byte 0x{raw[start + e.start]:02x} at offset {at}, line {n}). "
                                "Re-save the file as UTF-8.") from None
            offset += len(raw)
            if ext == ".txt":
                buf.append(line.removesuffix("\n").removesuffix("\r"))
            elif line.strip():
                buf.append(_json_line(path, n, line))
            if rows is not None and len(buf) == rows:
                yield _frame(buf, ext)
                buf = []
    if buf or rows is None:
        yield _frame(buf, ext)


def _json_line(path: Path, n: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {n}: not valid JSON ({e.msg}, column {e.colno}). "
                        "A JSON lines file holds one object per line.") from None
    if not isinstance(record, dict):
        raise DataError(f'{path} row {n}: expected an object like {{"text": ..., "label": ...}}, '
                        f"got {type(record).__name__}. Write one object per record.")
    return record


def _frame(buf: list[Any], ext: str) -> pd.DataFrame:
    return pd.DataFrame({"text": buf}, dtype=object) if ext == ".txt" else pd.DataFrame(buf)


def _json_frame(path: Path) -> pd.DataFrame:
    text = decode_text(path, path.read_bytes())
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):
            raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
        return next(_lines(path, ".jsonl", None))  # a .json file holding JSON lines
    if isinstance(obj, dict) and obj and all(isinstance(v, (list, dict)) for v in obj.values()):
        return pd.DataFrame(obj).reset_index(drop=True)  # column-oriented
    records = [obj] if isinstance(obj, dict) else obj
    if not isinstance(records, list):
        raise DataError(f"{path}: expected an array of records ([{{...}}, ...]) or JSON lines.")
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise DataError(f'{path} row {n}: expected an object like {{"text": ..., "label": ...}}, '
                            f"got {type(r).__name__}. Write one object per record.")
    return pd.DataFrame(records)


def _slices(df: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    for i in range(0, len(df), rows):
        yield df.iloc[i : i + rows].reset_index(drop=True)


# ---- writing ------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)  # timestamps and the like


def json_records(df: pd.DataFrame) -> list[str]:
    """One JSON text per row, missing cells as null."""
    records = [{k: None if is_missing(v) else v for k, v in r.items()} for r in df.to_dict("records")]
    return [json.dumps(r, ensure_ascii=False, default=_jsonable) for r in records]


def write_table(df: pd.DataFrame, path: str | Path, *, header: bool = True) -> None:
    """Write `df` in the format its extension names, atomically. `header=False` leaves out a CSV/TSV header."""
    path = Path(path)
    ext = table_format(path)
    if ext == ".txt":
        _check_txt(df, path)
    with atomic_path(path) as tmp:
        if ext in (".csv", ".tsv"):
            df.to_csv(tmp, sep="\t" if ext == ".tsv" else ",", index=False, header=header, lineterminator="\n")
        elif ext == ".parquet":
            df.to_parquet(tmp, index=False)
        elif ext == ".txt":
            values = ["" if is_missing(v) else str(v) for v in df.iloc[:, 0].tolist()]
            tmp.write_text("".join(v + "\n" for v in values), encoding="utf-8")
        else:
            dump = json_records(df)
            body = "".join(d + "\n" for d in dump) if ext == ".jsonl" else "[\n" + ",\n".join(dump) + "\n]\n"
            tmp.write_text(body, encoding="utf-8")


def _check_txt(df: pd.DataFrame, path: Path) -> None:
    if df.shape[1] != 1:
        raise DataError(
            f"{path}: a .txt file holds one column (one text per line), but the table "
            f"has {df.shape[1]}: {', '.join(map(str, df.columns))}. Write .csv, .tsv, "
            ".jsonl or .parquet instead."
        )
    values = ["" if is_missing(v) else str(v) for v in df.iloc[:, 0].tolist()]
    bad = [i for i, v in enumerate(values) if "\n" in v or "\r" in v]
    if bad:
        raise DataError(
            f"{path} row {bad[0] + 1}: the value holds a line break, which a .txt file "
            "(one text per line) cannot store. Write .csv, .jsonl or .parquet instead."
        )
