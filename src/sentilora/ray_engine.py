"""Score files on a Ray cluster: `sentilora predict RUN --input ... --output ... --engine ray`.

The same rows, columns and predictions as the local engine (`scoring.py`), computed by a pool of Ray
actors that each load the model once and score whole chunks with `scoring.prediction_columns`.
About 400 lines: Ray, its file systems and its error wrapping need their own handling, and keeping
it in one module keeps the optional dependency out of every other one.

1. Ray Data reads the input (CSV, TSV, JSONL or Parquet; one file or a folder of them, local or
   s3://...) with `preserve_order` on, into blocks in file order.
2. The driver numbers the rows in input order (`row_id`, 0-based) and cuts them into chunks of
   `chunk_rows` rows at the same boundaries as the local engine (small remote tasks; only row counts
   and schemas travel to the driver), so every actor call sees the same texts as a local chunk would.
3. An actor pool (`map_batches` with `ActorPoolStrategy`) scores one chunk per call.
4. Ray writes a folder of Parquet files, one per chunk, whose names sort in row order. The driver
   reads back the `row_id` column and fails unless it is exactly 0..n-1 in file order; then it writes
   `_SUCCESS`, and a local folder is renamed from its temporary name to --output.

Ray is imported only here and only when this engine is asked for: `pip install 'sentilora[ray]'`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentilora.errors import DataError, SentiloraError
from sentilora.files import first_line

if TYPE_CHECKING:  # importing scoring loads torch: the small remote tasks below need only pyarrow
    from sentilora.scoring import ScoreResult

log = logging.getLogger(__name__)

ROW_ID = "row_id"
FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
SUCCESS = "_SUCCESS"
READ_HINTS = {
    ".csv": "Check that it is UTF-8 text with a header row and balanced quotes.",
    ".tsv": "Check that it is UTF-8 text with a header row and balanced quotes.",
    ".jsonl": "Each line must be one JSON object, and a field must keep one type on every line (Arrow reads columns).",
    ".parquet": "Check that it is a complete Parquet file.",
}


def require_ray() -> Any:
    """The `ray` module, or a one-line error that names the fix."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra: pyarrow readers and writers)
    except ImportError:
        raise SentiloraError("--engine ray needs Ray: pip install 'sentilora[ray]'.") from None
    return ray


def parse_actors(spec: str | None) -> int | tuple[int, int] | None:
    """'4' -> 4 actors; '2-8' -> an autoscaling pool of 2 to 8; None -> decided from the cluster's CPUs."""
    if spec is None:
        return None
    try:
        lo, _, hi = spec.partition("-")
        sizes = (int(lo), int(hi or lo))
    except ValueError:
        sizes = (0, 0)
    if not 1 <= sizes[0] <= sizes[1]:
        raise SentiloraError(f"--ray-actors must be a number like 4 or a range like 2-8; got '{spec}'.")
    return sizes[0] if sizes[0] == sizes[1] else sizes


def chunk_plan(counts: list[int], chunk_rows: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Chunks of `chunk_rows` rows over blocks of `counts` rows: [(first_row, [(block, start, stop), ...])]."""
    plan: list[tuple[int, list[tuple[int, int, int]]]] = []
    first, filled, pieces = 0, 0, []
    for block, n in enumerate(counts):
        start = 0
        while start < n:
            take = min(n - start, chunk_rows - filled)
            pieces.append((block, start, start + take))
            start, filled = start + take, filled + take
            if filled == chunk_rows:
                plan.append((first, pieces))
                first, filled, pieces = first + filled, 0, []
    if pieces:
        plan.append((first, pieces))
    return plan


# ---- remote work (plain functions; wrapped with ray.remote at call time) --------------------------


def _block_info(table: Any) -> tuple[int, Any]:
    return table.num_rows, table.schema


def _make_chunk(first_row: int, pieces: list[tuple[int, int, int]], schema: Any, *tables: Any) -> Any:
    """One chunk: the slices of the input blocks it covers, in the shared schema, `row_id` first."""
    import pyarrow as pa

    def conform(t: Any) -> Any:  # blocks of different files may lack a column or type it differently
        return pa.Table.from_arrays([t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
                                     for f in schema], schema=schema)

    table = pa.concat_tables([conform(tables[i].slice(lo, hi - lo)) for i, lo, hi in pieces])
    return table.add_column(0, ROW_ID, pa.array(range(first_row, first_row + table.num_rows), type=pa.int64()))


class ChunkScorer:
    """A Ray actor: loads the model once, then adds the prediction columns to each chunk (an Arrow table)."""

    def __init__(self, run: str, *, text_column: str, batch_size: int, long_texts: str, precision: str, threads: int,
                 max_length: int | None) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the actor owns `threads` CPUs, no more
        import transformers

        from sentilora.predict import Classifier

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.clf = Classifier.load(run, precision=precision, threads=threads, max_length=max_length)
        self.text_column, self.batch_size, self.long_texts = text_column, batch_size, long_texts

    def __call__(self, table: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        from sentilora.scoring import prediction_columns

        columns, _ = prediction_columns(self.clf, table.column(self.text_column).to_pylist(),
                                        batch_size=self.batch_size, long_texts=self.long_texts)  # type: ignore[arg-type]
        for name, values in columns.items():
            # from_pandas: NaN -> null, as pandas writes the local engine's Parquet
            arr = pa.array(values, type=pa.float64() if isinstance(values, np.ndarray) else pa.string(), from_pandas=True)
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, arr) if i >= 0 else table.append_column(name, arr)
        return table


# ---- paths --------------------------------------------------------------------------------------


def _filesystem(path: str) -> tuple[Any, str, bool]:
    """(pyarrow filesystem, path within it, is_remote) for a local path or a URI such as s3://bucket/key."""
    import pyarrow.fs as pafs

    if "://" in path and not path.startswith("file://"):
        try:
            fs, inner = pafs.FileSystem.from_uri(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for unknown schemes and bad URIs
            raise DataError(f"{path}: {_first_line(e)}. Give a local path or an s3://, gs:// or hdfs:// URI.") from None
        return fs, inner.rstrip("/"), True
    return pafs.LocalFileSystem(), str(Path(path.removeprefix("file://")).resolve()), False


def input_files(path: str) -> tuple[Any, list[str], str]:
    """(filesystem, files in name order, extension) of --input: a file, or a folder of files of one format."""
    import pyarrow.fs as pafs

    fs, inner, _ = _filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{path}: file not found. Check the path passed to --input.")
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        files = sorted(f.path for f in found if f.type == pafs.FileType.File and not _hidden(f.path, inner))
    else:
        files = [inner]
    if not files:
        raise DataError(f"{path}: the folder holds no files to score.")
    exts = {Path(f).suffix.lower() for f in files}
    if len(exts) > 1 or not exts <= set(FORMATS):
        raise DataError(f"{path}: --engine ray reads {', '.join(FORMATS)} files (one format per folder); found "
                        f"{', '.join(sorted(e or '(no extension)' for e in exts))}. Use the local engine for other formats.")
    return fs, files, exts.pop()


def _hidden(path: str, root: str) -> bool:
    """Files and folders whose names start with '.' or '_' (markers, temp files) are not data."""
    return any(part.startswith((".", "_")) for part in Path(path[len(root):]).parts)


def _first_line(e: BaseException) -> str:
    """The innermost cause's message, first line (Ray wraps errors raised in its workers)."""
    while True:
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException) or inner is e:
            break
        e = inner
    return first_line(e)


def _first_sentence(e: BaseException) -> str:
    return re.split(r"(?<=\.)\s", _first_line(e))[0].rstrip(".")


def _read(ray: Any, fs: Any, files: list[str], ext: str, text_column: str) -> Any:
    """A Ray dataset over the input files, in order; CSV/TSV read with the local engine's rules."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if ext == ".parquet":
        return ray.data.read_parquet(files, filesystem=fs)
    if ext == ".jsonl":
        return ray.data.read_json(files, filesystem=fs)
    # as data.CSV_OPTIONS: only an empty cell is missing ("NA", "null" stay text); quoted newlines allowed;
    # the text column is text even where it looks like numbers
    return ray.data.read_csv(
        files, filesystem=fs,
        parse_options=pacsv.ParseOptions(delimiter="\t" if ext == ".tsv" else ",", newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={text_column: pa.string()}, null_values=[""],
                                             strings_can_be_null=True, quoted_strings_can_be_null=True),
    )


# ---- the job --------------------------------------------------------------------------------------


@dataclass
class _Output:
    fs: Any
    final: str  # where the folder ends up
    target: str  # where Ray writes: a temporary sibling for local paths, `final` itself on object stores
    remote: bool


def _prepare_output(output: str) -> _Output:
    import pyarrow.fs as pafs

    if Path(output.rstrip("/")).suffix.lower() in (".csv", ".tsv", ".json", ".jsonl", ".txt"):
        raise DataError(f"{output}: --engine ray writes a folder of Parquet files; name it like scored.parquet or "
                        "s3://bucket/scored/ (or use the local engine for one CSV/JSON file).")
    fs, final, remote = _filesystem(output)
    if fs.get_file_info(final).type != pafs.FileType.NotFound:
        raise DataError(f"{output}: already exists. Delete it or choose another --output; a Ray job never mixes "
                        "its files with an earlier one's.")
    if remote:
        return _Output(fs, final, final, True)
    Path(final).parent.mkdir(parents=True, exist_ok=True)
    return _Output(fs, final, str(Path(final).with_name(f".{Path(final).name}.tmp-{uuid.uuid4().hex[:8]}")), False)


def check_output(fs: Any, folder: str, rows: int) -> tuple[list[str], int]:
    """The Parquet files of `folder` in name order and the rows with an error; fails unless their
    `row_id`s are exactly 0..rows-1 in that order."""
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    found = fs.get_file_info(pafs.FileSelector(folder))
    files = sorted(f.path for f in found if f.path.endswith(".parquet") and not _hidden(f.path, folder))
    seen = bad = 0
    for f in files:
        t = pq.read_table(f, columns=[ROW_ID, "error"], filesystem=fs)
        ids = t.column(ROW_ID).to_numpy()
        if len(ids) and (ids[0] != seen or (ids[1:] - ids[:-1] != 1).any()):
            raise SentiloraError(f"{folder}: rows out of order in {Path(f).name} (row_id {ids[0]} where {seen} was due); "
                                 "nothing was published. Please report this with the Ray version.")
        seen += len(ids)
        bad += int(pc.sum(pc.not_equal(t.column("error"), "")).as_py() or 0)
    if seen != rows:
        raise SentiloraError(f"{folder}: {seen} rows written for {rows} read; nothing was published.")
    return files, bad


def _chunks(ray: Any, fs: Any, files: list[str], ext: str, input_path: str, text_column: str,
            chunk_rows: int) -> tuple[list[Any], list[int]]:
    """The input as Ray object refs of Arrow tables, cut at the local engine's chunk boundaries, and
    the row count of each input block."""
    try:
        blocks = _read(ray, fs, files, ext, text_column).to_arrow_refs()
        info = ray.get([ray.remote(_block_info).remote(b) for b in blocks])
    except Exception as e:  # Ray wraps reader errors (ArrowInvalid, UnicodeDecodeError, OSError ...) in its own
        raise DataError(f"{input_path}: could not read as {ext[1:].upper()} ({_first_sentence(e)}). {READ_HINTS[ext]} "
                        "The local engine (no --engine ray) names the row at fault.") from None
    counts = [n for n, _ in info]
    if not sum(counts):
        raise DataError(f"{input_path}: no rows to score.")
    import pyarrow as pa

    try:
        schema = pa.unify_schemas([s for _, s in info], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{input_path}: the files disagree on column types ({_first_line(e)}).") from None
    if text_column not in schema.names:
        raise DataError(f"{input_path}: no column '{text_column}' (columns: {', '.join(schema.names)}). "
                        "Pass the right one with --text-column.")
    if ROW_ID in schema.names:
        raise DataError(f"{input_path}: already has a column '{ROW_ID}', which the Ray engine adds; rename it.")
    make_chunk = ray.remote(_make_chunk)
    chunks = [make_chunk.remote(first, [(i, lo, hi) for i, (_, lo, hi) in enumerate(pieces)], schema,
                                *[blocks[b] for b, _, _ in pieces])
              for first, pieces in chunk_plan(counts, chunk_rows)]
    del blocks  # each chunk task holds what it needs
    ray.wait(chunks, num_returns=len(chunks), fetch_local=False)  # done before the actors take every CPU
    return chunks, counts


def _pool(ray: Any, actors: int | tuple[int, int] | None, threads: int, n_chunks: int) -> tuple[Any, Any]:
    """The actor pool: a fixed size or an autoscaling range, never more actors than chunks."""
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
    if isinstance(actors, int):  # no actor without a chunk to score: each one loads the model
        actors = min(actors, n_chunks)
        return actors, ray.data.ActorPoolStrategy(size=actors)
    actors = (min(actors[0], n_chunks), min(actors[1], n_chunks))
    return actors, ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])


def score_file_ray(
    run: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    text_column: str = "text",
    chunk_rows: int = 10_000,
    batch_size: int = 64,
    long_texts: str = "truncate",
    precision: str = "auto",
    threads: int | None = None,
    max_length: int | None = None,
    actors: int | tuple[int, int] | None = None,
    address: str | None = None,
    progress: bool = False,
) -> ScoreResult:
    """Score every row of a file or folder into a folder of Parquet files with a pool of Ray actors.

    `precision`, `max_length`, `batch_size`, `long_texts` and `text_column` mean what they mean to the
    local engine. `threads`: CPUs reserved by each actor and the torch threads it uses (default 1). `actors`: a
    fixed pool size or a (min, max) autoscaling range (default: the cluster's CPUs / `threads`).
    `address`: the cluster to join (default as `ray.init`: $RAY_ADDRESS, a running local cluster,
    else a new local one). Uses the Ray connection already made in this process, if there is one.
    """
    from sentilora.bundle import Manifest
    from sentilora.scoring import ScoreResult

    if chunk_rows < 1:
        raise DataError("--chunk-rows must be at least 1.")
    threads = threads or 1
    Manifest.read(Path(run))  # a bad model path fails here, before Ray starts
    ray = require_ray()
    fs, files, ext = input_files(str(input_path))
    out = _prepare_output(str(output_path))

    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as e:
            raise SentiloraError(f"could not start or join Ray{f' at {address}' if address else ''}: {_first_line(e)}") from None
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True  # blocks leave every stage in the order they entered it
    ctx.enable_progress_bars = progress
    if not progress:
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")  # off on purpose: spare the user Ray's warning about it
    try:
        t_ready = time.perf_counter()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        if nodes > 1 and not out.remote:
            log.warning("%s is a local path on a %d-node cluster: it must be a shared filesystem, or use s3://...",
                        output_path, nodes)
        chunks, counts = _chunks(ray, fs, files, ext, str(input_path), text_column, chunk_rows)
        t_read = time.perf_counter()

        actors, pool = _pool(ray, actors, threads, len(chunks))
        scored = ray.data.from_arrow_refs(chunks).map_batches(
            ChunkScorer, batch_size=None, batch_format="pyarrow", compute=pool, num_cpus=threads,
            fn_constructor_kwargs=dict(run=str(run), text_column=text_column, batch_size=batch_size,
                                       long_texts=long_texts, precision=precision, threads=threads, max_length=max_length))
        # writing is I/O: 0 CPUs, so it streams beside actors that hold every CPU
        scored.write_parquet(out.target, filesystem=out.fs, ray_remote_args={"num_cpus": 0})
        t_scored = time.perf_counter()
        rows = sum(counts)
        written, bad = check_output(out.fs, out.target, rows)
        with out.fs.open_output_stream(f"{out.target}/{SUCCESS}") as f:
            f.write(json.dumps({"rows": rows, "bad_rows": bad, "files": len(written), "input": str(input_path),
                                "model": str(run)}).encode())
        if not out.remote:
            os.rename(out.target, out.final)
    except BaseException:
        _remove(out)
        raise
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if started:
            ray.shutdown()
    log.info("ray: %s actor(s) x %d CPU(s); ready in %.1fs, read and chunked %d rows in %.1fs, scored and wrote in %.1fs",
             actors, threads, t_ready - t0, rows, t_read - t_ready, t_scored - t_read)
    if bad:
        log.warning("%d of %d rows could not be scored (see the 'error' column)", bad, rows)
    return ScoreResult(rows=rows, bad_rows=bad, chunks=len(written), resumed_chunks=0, output=Path(out.final))


def _remove(out: _Output) -> None:
    """Leave nothing half-written: the temporary folder, or what this job wrote to the object store."""
    import pyarrow.fs as pafs

    try:
        if not out.remote:
            shutil.rmtree(out.target, ignore_errors=True)
        elif out.fs.get_file_info(out.target).type != pafs.FileType.NotFound:
            out.fs.delete_dir(out.target)
    except OSError:
        log.warning("could not remove the partial output at %s; delete it by hand", out.target)
