"""Score files of any size: stream in chunks, write each chunk atomically, resume after a crash.

A job writes `<output>.parts/`: one file per finished chunk (temp file, then rename) and a manifest
that lists them. `resume=True` skips the chunks already there, so a job killed at any point and
resumed ends with the same bytes as one that never stopped. When every chunk is done the parts are
joined into `<output>` (again via a temp file) and the parts folder is removed.

Output rows = input rows, in order, every input column kept, plus `pred_label`, one
`prob_<label>` per class and `error` (empty, or why the row could not be scored).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentilora.data import CSV_OPTIONS, read_table
from sentilora.errors import DataError
from sentilora.predict import Classifier, LongTexts, text_problem

log = logging.getLogger(__name__)

STREAMED = (".csv", ".tsv", ".jsonl", ".parquet", ".txt")
OUTPUTS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass
class ScoreResult:
    rows: int
    bad_rows: int
    chunks: int
    resumed_chunks: int
    output: Path


# ---- reading in chunks -----------------------------------------------------------------------------


def count_rows(path: Path) -> int | None:
    """Row count for progress and ETA (cheap: Parquet metadata or one pass over the text)."""
    ext = path.suffix.lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if ext in (".csv", ".tsv"):
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            return max(0, sum(1 for _ in csv.reader(f, delimiter="\t" if ext == ".tsv" else ",")) - 1)
    if ext in (".jsonl", ".txt"):
        with open(path, "rb") as f:
            return sum(1 for line in f if ext == ".txt" or line.strip())
    return None


def iter_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The input as DataFrames of `rows` rows, read with the same rules as `data.read_table`."""
    ext = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the path passed to --input.")
    if ext not in STREAMED:
        yield from _slices(read_table(path), rows)  # .json arrays can't be streamed
        return
    if ext == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield batch.to_pandas()
        return
    if ext in (".csv", ".tsv"):
        try:
            reader = pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", chunksize=rows, encoding="utf-8", **CSV_OPTIONS)
            yield from reader
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start} of a chunk). Re-save the file as UTF-8.") from None
        except pd.errors.ParserError as e:
            raise DataError(f"{path}: could not parse ({str(e).splitlines()[0]}). Check delimiter and quoting.") from None
        return
    with open(path, encoding="utf-8") as f:  # .jsonl and .txt: line by line
        buf: list[Any] = []
        try:
            for n, line in enumerate(f, 1):
                if ext == ".txt":
                    buf.append(line.removesuffix("\n").removesuffix("\r"))
                elif line.strip():
                    try:
                        buf.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {n}: not valid JSON ({e.msg}). Write one object per line.") from None
                if len(buf) == rows:
                    yield _frame(buf, ext)
                    buf = []
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte 0x{e.object[e.start]:02x}). Re-save the file as UTF-8.") from None
        if buf:
            yield _frame(buf, ext)


def _frame(buf: list[Any], ext: str) -> pd.DataFrame:
    return pd.DataFrame({"text": buf}, dtype=object) if ext == ".txt" else pd.DataFrame(buf)


def _slices(df: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    for i in range(0, len(df), rows):
        yield df.iloc[i : i + rows].reset_index(drop=True)


# ---- writing parts and joining them --------------------------------------------------------------


def _part_name(i: int, ext: str) -> str:
    return f"part-{i:06d}{'.jsonl' if ext == '.json' else ext}"


def _write_part(df: pd.DataFrame, path: Path, *, first: bool) -> None:
    """One chunk in the output's own format, so joining is byte concatenation (CSV header on part 0 only)."""
    ext = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp")
    if ext in (".csv", ".tsv"):
        df.to_csv(tmp, sep="\t" if ext == ".tsv" else ",", index=False, header=first, lineterminator="\n")
    elif ext == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        records = df.astype(object).where(df.notna(), None).to_dict("records")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def _join(parts: list[Path], output: Path) -> None:
    ext = output.suffix.lower()
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
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
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


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
    input_path, output_path = Path(input_path), Path(output_path)
    ext = output_path.suffix.lower()
    if ext not in OUTPUTS:
        raise DataError(f"{output_path}: a scored file has several columns; write one of {', '.join(OUTPUTS)}.")
    if chunk_rows < 1:
        raise DataError("--chunk-rows must be at least 1.")
    if not input_path.is_file():
        raise DataError(f"{input_path}: file not found. Check the path passed to --input.")
    parts_dir = output_path.with_name(output_path.name + ".parts")
    manifest_path = parts_dir / "manifest.json"
    sig = _signature(clf, input_path, text_column, chunk_rows, long_texts)
    done: list[dict[str, Any]] = []
    if parts_dir.exists():
        if not resume:
            raise DataError(f"{parts_dir}: an unfinished job is there. Add --resume to continue it, or delete the folder.")
        state = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"signature": sig, "parts": []}
        if state["signature"] != sig:
            raise DataError(f"{parts_dir}: that job scored another input, model or settings; delete the folder to start over.")
        done = [p for p in state["parts"] if (parts_dir / p["file"]).is_file()]
    parts_dir.mkdir(parents=True, exist_ok=True)

    def save_state() -> None:
        tmp = manifest_path.with_name(".manifest.json.tmp")
        tmp.write_text(json.dumps({"signature": sig, "input": str(input_path), "parts": done}, indent=1))
        os.replace(tmp, manifest_path)

    rows = bad = 0
    resumed = len(done)
    for i, chunk in enumerate(iter_chunks(input_path, chunk_rows)):
        if i == 0 and text_column not in chunk.columns:
            raise DataError(f"{input_path}: no column '{text_column}' (columns: {', '.join(map(str, chunk.columns))}). "
                            "Pass the right one with --text-column.")
        if i < len(done):  # finished before the interruption
            rows += done[i]["rows"]
            bad += done[i]["bad"]
            if progress is not None:
                progress(len(chunk))
            continue
        scored, n_bad = score_chunk(clf, chunk, text_column, batch_size=batch_size, long_texts=long_texts, progress=progress)
        name = _part_name(i, ext)
        _write_part(scored, parts_dir / name, first=i == 0)
        done.append({"file": name, "rows": len(scored), "bad": n_bad})
        save_state()
        rows += len(scored)
        bad += n_bad
    if not done:
        raise DataError(f"{input_path}: no rows to score.")
    _join([parts_dir / p["file"] for p in done], output_path)
    shutil.rmtree(parts_dir)
    if bad:
        log.warning("%d of %d rows could not be scored (see the 'error' column)", bad, rows)
    return ScoreResult(rows=rows, bad_rows=bad, chunks=len(done), resumed_chunks=resumed, output=output_path)
