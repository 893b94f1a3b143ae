"""Score files of any size: stream in chunks, write each chunk atomically, resume after a crash.

A job writes `<output>.parts/`: one file per finished chunk (temp file, then rename) and a manifest
that lists them. `resume=True` skips the chunks already there, so a job killed at any point and
resumed ends with the same bytes as one that never stopped. When every chunk is done the parts are
joined into `<output>` (again via a temp file) and the parts folder is removed.

Output rows = input rows, in order, every input column kept, plus `pred_label`, one
`prob_<label>` per class and `error` (empty, or why the row could not be scored).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentilora.errors import DataError, OutputError
from sentilora.files import atomic_path, atomic_write_json, read_json_object, remove
from sentilora.predict import Classifier, LongTexts
from sentilora.tables import count_rows, input_file, iter_table, json_records, text_problem, write_table

__all__ = ["ScoreResult", "check_job", "count_rows", "prediction_columns", "score_chunk", "score_file"]

log = logging.getLogger(__name__)

OUTPUTS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass
class ScoreResult:
    rows: int
    bad_rows: int
    chunks: int
    resumed_chunks: int
    output: Path


# ---- parts ---------------------------------------------------------------------------------------


def _part_name(i: int, ext: str) -> str:
    return f"part-{i:06d}{'.jsonl' if ext == '.json' else ext}"


def _write_part(df: pd.DataFrame, path: Path, *, first: bool) -> None:
    """One chunk in the output's own format, so joining is byte concatenation (CSV header on part 0 only)."""
    write_table(df, path, header=first)


def _rows_hash(chunk: pd.DataFrame) -> str:
    """Fingerprint of a chunk of input rows: a resumed part must have been scored from these rows."""
    h = hashlib.sha256(json.dumps([str(c) for c in chunk.columns]).encode())
    for record in json_records(chunk):
        h.update(record.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _join(parts: list[Path], output: Path) -> None:
    ext = output.suffix.lower()
    with atomic_path(output) as tmp:
        if ext == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
            with pq.ParquetWriter(tmp, schema) as writer:
                for p in parts:
                    writer.write_table(pq.read_table(p).cast(schema))
        else:
            with open(tmp, "wb") as out:
                if ext == ".json":
                    out.write(b"[\n")
                for i, p in enumerate(parts):
                    data = p.read_bytes()
                    if ext == ".json":  # JSON lines -> one array, the layout write_table uses
                        data = b",\n".join(data.rstrip(b"\n").split(b"\n")) + (b",\n" if i < len(parts) - 1 else b"\n")
                    out.write(data)
                if ext == ".json":
                    out.write(b"]\n")


# ---- the job ---------------------------------------------------------------------------------------


def _signature(clf: Classifier, input_path: Path, text_column: str, chunk_rows: int, long_texts: str) -> str:
    st = input_path.stat()
    key = json.dumps([str(input_path.resolve()), st.st_size, st.st_mtime_ns, text_column, chunk_rows, long_texts,
                      clf.max_length, clf.manifest.__dict__], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def prediction_columns(clf: Classifier, texts: Sequence[Any], *, batch_size: int,
                       long_texts: LongTexts) -> tuple[dict[str, list[Any] | np.ndarray], int]:
    """`pred_label`, `prob_<label>` per class and `error` for `texts`, and the number of unusable rows.

    The one place a scored row is made: the local engine (`score_chunk`) and the Ray engine's actors call it.
    Unusable rows get an `error` and no prediction (None / NaN); usable rows get an empty `error`.
    """
    errors = [text_problem(t) or "" for t in texts]
    ok = [i for i, e in enumerate(errors) if not e]
    probs = np.full((len(texts), len(clf.label_names)), np.nan, dtype=np.float64)
    labels: list[str | None] = [None] * len(texts)
    if ok:
        p = clf.predict_proba([texts[i] for i in ok], batch_size=batch_size, long_texts=long_texts)
        probs[ok] = p
        for i, name in zip(ok, clf.decide(p)):
            labels[i] = name
    columns: dict[str, list[Any] | np.ndarray] = {"pred_label": labels}
    for j, name in enumerate(clf.label_names):
        columns[f"prob_{name}"] = probs[:, j]
    columns["error"] = errors
    return columns, len(texts) - len(ok)


def score_chunk(clf: Classifier, df: pd.DataFrame, text_column: str, *, batch_size: int, long_texts: LongTexts,
                progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, int]:
    """The chunk with prediction columns added; unusable rows get an `error` and no prediction."""
    columns, bad = prediction_columns(clf, df[text_column].tolist(), batch_size=batch_size, long_texts=long_texts)
    out = df.copy()
    for name, values in columns.items():
        out[name] = values
    if progress is not None:
        progress(len(df))
    return out, bad


def check_job(input_path: str | Path, output_path: str | Path, *, chunk_rows: int) -> tuple[Path, Path]:
    """The paths of a file job, checked without reading the input: cheap enough to run before the model loads."""
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() not in OUTPUTS:
        raise DataError(f"{output_path}: a scored file has several columns; write one of {', '.join(OUTPUTS)}.")
    if chunk_rows < 1:
        raise DataError("--chunk-rows must be at least 1.")
    input_path = input_file(input_path, flag="--input")
    if output_path.exists() and output_path.samefile(input_path):
        raise OutputError(f"{output_path}: that is the --input file; scoring would overwrite it. Write the scored rows to another file.")
    return input_path, output_path


def score_file(
    clf: Classifier,
    input_path: str | Path,
    output_path: str | Path,
    *,
    text_column: str = "text",
    chunk_rows: int = 10_000,
    batch_size: int = 64,
    long_texts: LongTexts = "truncate",
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ScoreResult:
    """Score every row of a CSV/TSV/JSON/JSONL/Parquet/TXT file into `output_path` (format from its extension)."""
    input_path, output_path = check_job(input_path, output_path, chunk_rows=chunk_rows)
    ext = output_path.suffix.lower()
    parts_dir = output_path.with_name(output_path.name + ".parts")
    manifest_path = parts_dir / "manifest.json"
    sig = _signature(clf, input_path, text_column, chunk_rows, long_texts)
    done: list[dict[str, Any]] = []
    fresh = not parts_dir.is_dir() or not any(parts_dir.iterdir())  # an empty folder holds nothing to resume
    if not fresh:
        if not resume:
            raise DataError(f"{parts_dir}: an unfinished job is there. Add --resume to continue it, or delete the folder.")
        done = _finished_parts(parts_dir, manifest_path, sig)
    # The first chunk is read before anything is written: an input that cannot be scored (no such column,
    # not UTF-8, only a header) leaves no parts folder behind to block the next run.
    chunks = iter_table(input_path, chunk_rows)
    first = next(chunks, None)
    if first is None or first.empty:
        raise DataError(f"{input_path}: no rows to score (the file has no data rows). Give a file with at least one row.")
    columns = _conform_columns(first, None, input_path, text_column, first_row=0)
    parts_dir.mkdir(parents=True, exist_ok=True)

    rows = bad = 0
    i = -1
    resumed = len(done)
    try:
        for i, chunk in enumerate(itertools.chain([first], chunks)):
            columns = _conform_columns(chunk, columns, input_path, text_column, first_row=rows)
            chunk = chunk[columns] if list(chunk.columns) != columns else chunk
            if i < len(done):  # finished before the interruption
                _check_part(done[i], chunk, rows, parts_dir)
                rows += done[i]["rows"]
                bad += done[i]["bad"]
                if progress is not None:
                    progress(len(chunk))
                continue
            scored, n_bad = score_chunk(clf, chunk, text_column, batch_size=batch_size, long_texts=long_texts, progress=progress)
            name = _part_name(i, ext)
            _write_part(scored, parts_dir / name, first=i == 0)
            done.append({"file": name, "first_row": rows, "rows": len(scored), "bad": n_bad, "input_hash": _rows_hash(chunk),
                         "sha256": _file_hash(parts_dir / name)})
            atomic_write_json(manifest_path, {"signature": sig, "input": str(input_path), "parts": done})
            rows += len(scored)
            bad += n_bad
    except BaseException as e:
        # A folder this job made goes when it holds nothing to resume: no part finished yet, or an input that
        # cannot be read to the end (fixing the file changes its signature, so --resume could not use the parts).
        # Parts of an interrupted job (Ctrl-C, a full disk, a kill) stay for --resume.
        if fresh and (not done or isinstance(e, DataError)):
            remove(parts_dir)
        raise
    if len(done) > i + 1:
        raise DataError(f"{parts_dir}: holds more parts than the input has chunks; the input changed. "
                        "Delete the folder to start over.")
    _join([parts_dir / p["file"] for p in done], output_path)
    shutil.rmtree(parts_dir)
    if bad:
        log.warning("%d of %d rows could not be scored (see the 'error' column)", bad, rows)
    return ScoreResult(rows=rows, bad_rows=bad, chunks=len(done), resumed_chunks=resumed, output=output_path)


def _finished_parts(parts_dir: Path, manifest_path: Path, sig: str) -> list[dict[str, Any]]:
    """The parts an interrupted job finished, in order; refuses a folder from another job or with gaps."""
    if not manifest_path.is_file():
        return []  # killed before its first part was recorded
    try:
        state = read_json_object(manifest_path)
        parts = state["parts"]
    except (ValueError, KeyError):
        raise DataError(f"{manifest_path}: damaged; delete {parts_dir} to start over.") from None
    if state.get("signature") != sig:
        raise DataError(f"{parts_dir}: that job scored another input, model or settings; delete the folder to start over.")
    for n, p in enumerate(parts):
        if not {"file", "first_row", "rows", "bad", "input_hash", "sha256"} <= set(p):
            raise DataError(f"{manifest_path}: part {n} has no row range or input hash (written by an older "
                            f"version); delete {parts_dir} to start over.")
        if not (parts_dir / p["file"]).is_file():
            raise DataError(f"{parts_dir}: {p['file']} (rows {p['first_row'] + 1}-{p['first_row'] + p['rows']}) is missing; "
                            "its rows would be lost. Delete the folder to start over.")
        if _file_hash(parts_dir / p["file"]) != p["sha256"]:
            raise DataError(f"{parts_dir / p['file']}: not the part this job wrote (its content changed); its rows "
                            f"{p['first_row'] + 1}-{p['first_row'] + p['rows']} cannot be trusted. Delete the folder to start over.")
    return list(parts)


def _check_part(part: dict[str, Any], chunk: pd.DataFrame, first_row: int, parts_dir: Path) -> None:
    """A finished part must cover exactly this chunk's rows, and have been scored from the same rows."""
    if part["first_row"] != first_row or part["rows"] != len(chunk) or part["input_hash"] != _rows_hash(chunk):
        raise DataError(
            f"{parts_dir / part['file']}: scored rows {part['first_row'] + 1}-{part['first_row'] + part['rows']} of "
            f"another input (this input's rows {first_row + 1}-{first_row + len(chunk)} differ). "
            "Delete the folder to start over."
        )


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def _conform_columns(chunk: pd.DataFrame, columns: list[Any] | None, path: Path, text_column: str, *, first_row: int) -> list[Any]:
    """Every chunk gets the first chunk's columns, so the parts join into one table.

    JSON lines may differ from record to record: a key missing from a later chunk becomes an empty
    cell (a row without its text is marked in `error`), a key the first chunk did not have is dropped.
    """
    if columns is None:
        if text_column not in chunk.columns:
            raise DataError(f"{path}: no column '{text_column}' (columns: {', '.join(map(str, chunk.columns))}). "
                            "Pass the right one with --text-column.")
        return list(chunk.columns)
    extra = [c for c in chunk.columns if c not in columns]
    missing = [c for c in columns if c not in chunk.columns]
    if missing:
        for c in missing:
            chunk[c] = None
        log.warning("%s rows %d-%d: no %s; those cells are left empty", path, first_row + 1, first_row + len(chunk),
                    ", ".join(f"'{c}'" for c in missing))
    if extra:
        log.warning("%s rows %d-%d: fields %s are not in the first rows and are left out", path, first_row + 1,
                    first_row + len(chunk), ", ".join(map(str, extra[:5])))
    return columns
