"""Command line: thin wrappers that parse flags, call a library function and print the result.

Only this module prints, and only here does an exception become a one-line message and exit code 2.
Over 400 lines because each of the seven commands is a typer signature whose option help texts are
the `--help` users read; the work itself is one call into the library per command.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from sentilora import __version__
from sentilora.config import PRESETS, Config, all_options, parse_overrides
from sentilora.config import preset as preset_overrides
from sentilora.errors import SentiloraError
from sentilora.tokens import check_long_texts  # light: no torch
from sentilora.guard import ServeSettings  # light: no torch, no FastAPI; the serve command's defaults

app = typer.Typer(
    name="sentilora",
    help="Fine-tune a pretrained transformer encoder with LoRA for text classification, then evaluate, "
    "predict and merge it. Start with: sentilora train --model minilm --data imdb-sample --out runs/demo",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)
_SERVE_DEFAULTS = ServeSettings()

MAX_LENGTH_HELP = ("Tokens read per text, cut with the truncation the model was trained with. Default: the bundle's "
                   "prediction length (for runs trained by this version: all the encoder takes, e.g. 512; shorter is faster).")


def _print_version(value: bool) -> None:
    if value:
        out.print(f"sentilora {__version__}")  # the package's own, without importing torch
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the installed version and exit.")] = False) -> None:
    pass  # the options every command shares; the app's help is the Typer(help=...) above


def _options_epilog() -> str:
    from rich.markup import escape

    lines = ["[bold]Config options[/] (YAML keys, or flags like --train.epochs 3):\n\n"]
    for name, typ, default, help in all_options():
        lines.append(f"  [bold]--{name}[/] [dim]{typ}[/] = {escape(repr(default))}  {escape(help)}\n\n")
    return "".join(lines)


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        from rich.logging import RichHandler

        handler = RichHandler(console=err, show_path=False, show_time=False)
        lg = logging.getLogger("sentilora")
        lg.handlers[:] = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False
    except ImportError:  # pragma: no cover
        pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def _reflow(doc: str | None) -> str | None:
    """A command's docstring as --help shows it: typer's rich mode keeps every line break, so lines
    wrapped in the source are joined (blank lines still part paragraphs); an example block ("Example:"
    and the indented lines under it) keeps its lines."""
    if not doc:
        return doc
    paragraphs = []
    for par in inspect.cleandoc(doc).split("\n\n"):
        lines = par.split("\n")
        text = lines[0]
        for before, line in zip(lines, lines[1:]):
            keep = line[:1].isspace() or before.startswith("Example") or before[:1].isspace()
            text += ("\n" if keep else " ") + line
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors into one line on stderr and exit code 2 (and reflow the command's help)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _quiet_libraries()
            return fn(*args, **kwargs)
        except SentiloraError as e:
            _fail(str(e))
        except OSError as e:  # the library's own errors are SentiloraErrors; this is the file system speaking
            _fail(os_error_message(e))
        except KeyboardInterrupt:
            err.print("[yellow]interrupted.[/]")
            raise typer.Exit(130) from None

    wrapper.__doc__ = _reflow(fn.__doc__)
    return wrapper


def _fail(message: str) -> None:
    from rich.markup import escape

    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # keeps "sentilora[ray]" as typed
    raise typer.Exit(2) from None


def os_error_message(e: OSError) -> str:
    """One line for a file-system error: the path, what went wrong and what to do."""
    import errno

    path = e.filename or "a file"
    other = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    fixes = {
        errno.ENOENT: "no such file or folder; check the path",
        errno.EACCES: "permission denied; pick a path you can read and write, or change its permissions",
        errno.EPERM: "operation not permitted; pick another path",
        errno.EISDIR: "is a folder where a file was expected; give a file path",
        errno.ENOTDIR: "a file is in the way where a folder was expected; give another path",
        errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
        errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
        errno.EROFS: "the file system is read-only; write elsewhere",
        errno.EEXIST: "already exists; choose a new path or remove it",
        errno.ENOTEMPTY: "folder is not empty; choose a new path or remove it",
    }
    what = fixes.get(e.errno) or (e.strerror or type(e).__name__).lower()
    return f"{path}{other}: {what}."


def _sample_progress(total: int | None, what: str, unit: str = "texts") -> tuple[Any, Callable[[int], None]]:
    """A progress bar with rate and ETA on a terminal; a log line every 30 s elsewhere (CI, nohup)."""
    from sentilora.progress import Progress

    bar = Progress(total, what, unit=unit, console=err, transient=True)
    return bar, bar.advance


def _rows(n: int) -> str:
    return f"{n} row{'s' * (n != 1)}"


def _unscored(bad_rows: int) -> str:
    """The end of a file job's summary: how many rows could not be scored, if any."""
    return f"; {_rows(bad_rows)} could not be scored (see the error column)" if bad_rows else ""


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=_options_epilog(),
)
@friendly
def train(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create; it becomes the bundle.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file with config sections (model, lora, data, train, eval).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Shortcut for --model.name (e.g. minilm, distilbert, a path).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Shortcut for --data.source (e.g. imdb-sample, reviews.csv).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out from its last checkpoint, or finish what follows training (combining several models, the TF-IDF blend).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    preset: Annotated[Optional[str], typer.Option("--preset", help="A recipe: 'auto' (the default) or a measured trade-off against it. "
        + " ".join(f"'{k}': {v[1]}." for k, v in PRESETS.items()))] = None,
) -> None:
    """Fine-tune a base encoder with LoRA and write a run bundle to --out.

    Settings come from defaults, then --preset, then --config YAML, then flags like --lora.r 8
    --train.epochs 3. The resolved config is saved in the run folder.

    On several GPUs or machines, start the same command with torchrun or accelerate launch
    (torchrun --nproc_per_node 4 -m sentilora train ...): --train.batch_size is then per process
    (a step takes processes x batch size texts), rank 0 alone writes --out, and --resume needs
    the same number of processes.
    """
    from sentilora.distributed import env_rank
    from sentilora.train import train as run_train

    main_process = env_rank() == 0
    try:
        overrides = parse_overrides(list(ctx.args))
        if model:
            overrides["model.name"] = model
        if data:
            overrides["data.source"] = data
        if resume and (overrides or config or preset):
            raise SentiloraError("--resume continues with the run's saved config.yaml; drop the other settings.")
        cfg = Config().override(preset_overrides(preset)) if preset else Config()
        cfg = Config.from_yaml(config, base=cfg) if config else cfg
        cfg = cfg.override(overrides)
        result = run_train(cfg, out_dir, resume=resume, progress=not quiet)
    except SentiloraError:
        if not main_process:  # under a launcher every process fails alike; rank 0 prints the one line
            raise typer.Exit(2) from None
        raise
    if not main_process:
        return
    best = result.best_metrics
    which = f"best epoch {result.best_epoch}"
    if result.models > 1:
        which = f"{result.models} models averaged" if result.combined == "soup" else f"an ensemble of {result.models} models"
    scored = (f"{which} — validation accuracy {best['accuracy']:.4f}, F1 {best['f1']:.4f}"
              if "accuracy" in best else f"{result.best_epoch} epoch{'s' * (result.best_epoch != 1)}, final weights kept (no validation texts held out)")
    if result.blend and result.blend["weight"]:
        scored += (f"; with the TF-IDF baseline mixed in at weight {result.blend['weight']:g}: accuracy "
                   f"{result.blend['blend']['accuracy']:.4f} on the {result.blend['texts']} validation texts")
    out.print(f"[green]done[/]: {scored}; {result.steps} steps in {result.train_seconds:.0f}s. Bundle: {result.run_dir}")


@app.command()
@friendly
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder from `sentilora train` (or `merge`).")],
    data: Annotated[Optional[str], typer.Option("--data", help="Evaluate on this file, folder or dataset instead of the run's own data.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to score: test, validation, train, or a named split.")] = "test",
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="Text column of --data.")] = None,
    label_column: Annotated[Optional[str], typer.Option("--label-column", help="Label column of --data.")] = None,
    compare_base: Annotated[bool, typer.Option("--compare-base", help="Also score the untuned base model (fresh head), side by side.")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Texts per forward pass.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Where to write the metrics JSON (default RUN_DIR/metrics.json).")] = None,
    report: Annotated[bool, typer.Option("--report", help="Also write report.html (self-contained) and its PNGs: plots, calibration, before/after, error analysis.")] = False,
    report_dir: Annotated[Optional[Path], typer.Option("--report-dir", help="Folder for the report (default RUN_DIR/report); implies --report.")] = None,
    base_sample: Annotated[int, typer.Option("--base-sample", help="Rows (seeded subsample) the report scores the untuned base model on; 0 = none. --compare-base scores all.")] = 2000,
    report_note: Annotated[Optional[str], typer.Option("--report-note", help="A sentence shown under the report's title, e.g. where the calibration data came from.")] = None,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where the hardware has it, as `predict` uses), fp32 or bf16.")] = "auto",
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=MAX_LENGTH_HELP)] = None,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Also fit TF-IDF + logistic regression on the run's own training texts and show it beside the model; --no-baseline skips it.")] = True,
    long_texts: Annotated[str, typer.Option("--long-texts", help="truncate: as in training; chunk: average overlapping windows over the whole text (as `predict --long-texts chunk`). With --max-length at the training length, chunk is often the most accurate on long documents.")] = "truncate",
) -> None:
    """Score a trained run: accuracy, precision, recall, F1, ROC-AUC, log-loss, ECE, confusion matrix.

    Predictions use the temperature and threshold stored by `sentilora calibrate`, if any. A TF-IDF +
    logistic-regression baseline, fitted on the run's training texts, is shown beside the model.
    """
    from sentilora.baseline import verdict
    from sentilora.evaluate import confusion_table, evaluate_run, metrics_table

    bar, tick = _sample_progress(None, "scoring")  # tuned model, then the base model if asked for
    with bar:
        result = evaluate_run(run_dir, data=data, split=split, text_column=text_column, label_column=label_column,
                              compare_base=compare_base, batch_size=batch_size, output=output, progress=tick,
                              report=report or report_dir is not None, report_dir=report_dir, base_sample=base_sample,
                              report_note=report_note, precision=precision, max_length=max_length, baseline=baseline,
                              long_texts=long_texts)  # type: ignore[arg-type]
    out.print(metrics_table(result))
    if "baseline" in result:
        out.print(verdict(result["metrics"]["accuracy"], result["baseline"]))
    out.print(confusion_table(result))
    out.print(f"metrics written to {result['written_to']}")
    if "report" in result:
        out.print(f"report written to {result['report']}")


@app.command()
@friendly
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder from `sentilora train` (or `merge`).")],
    data: Annotated[Optional[str], typer.Option("--data", help="Labelled validation data (every row of a file is used). Default: the run's own validation split. Never the test data.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split of --data to use when it is a folder or hub dataset.")] = None,
    text_column: Annotated[Optional[str], typer.Option("--text-column", help="Text column of --data.")] = None,
    label_column: Annotated[Optional[str], typer.Option("--label-column", help="Label column of --data.")] = None,
    threshold: Annotated[str, typer.Option("--threshold", help="Binary only: also choose a decision threshold for: none, f1, precision-at-recall.")] = "none",
    min_recall: Annotated[Optional[float], typer.Option("--min-recall", help="With --threshold precision-at-recall: the recall to keep, e.g. 0.9.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Texts per forward pass.")] = None,
) -> None:
    """Fit temperature scaling (and optionally a binary decision threshold) on validation data.

    Both are stored in the bundle's sentilora.json and applied by every prediction path (predict,
    evaluate, the Python API, merge); details go to RUN_DIR/calibration.json. Re-running replaces them.
    """
    from sentilora.calibrate import calibrate_run

    metric = threshold.replace("-", "_")
    if metric not in ("none", "f1", "precision_at_recall"):
        raise SentiloraError(f"--threshold must be none, f1 or precision-at-recall; got '{threshold}'.")
    result = calibrate_run(run_dir, data=data, split=split, text_column=text_column, label_column=label_column,
                           threshold=metric, min_recall=min_recall, batch_size=batch_size)
    b, a = result["before"], result["after"]
    out.print(f"fitted on {result['n']} texts from {result['data']}: temperature {result['temperature']:.4f}"
              + (f", threshold {result['threshold']:.4f}" if result["threshold"] is not None else ""))
    out.print(f"log-loss {b['loss']:.4f} -> {a['loss']:.4f}, ECE {b['ece']:.4f} -> {a['ece']:.4f}, "
              f"accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}, F1 {b['f1']:.4f} -> {a['f1']:.4f}")
    out.print(f"stored in {run_dir / 'sentilora.json'}; details in {result['written_to']}")


@app.command()
@friendly
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder from `sentilora train`, or a `merge` or `export` folder.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify (or use --input).")] = None,
    input: Annotated[Optional[str], typer.Option("--input", "-i", help="File to score: .csv .tsv .json .jsonl .parquet .txt (one text per line). "
                                                 "With --engine ray: a .csv .tsv .jsonl .parquet file or a folder of them, local or s3://...")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Where to write the scored file: .csv .tsv .jsonl .json .parquet. "
                                                  "With --engine ray: a new folder (local or s3://...) of Parquet files, one per chunk, whose names "
                                                  "sort in row order; it appears only once complete (local: renamed from a temporary name; "
                                                  "_SUCCESS is written last) and must not exist yet.")] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="Column of --input holding the text.")] = "text",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted --input job after its last finished chunk.")] = False,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows read, scored and written per chunk (bounds memory).")] = 10_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Most texts per forward pass (batches are also capped at 8,192 tokens).")] = 64,
    long_texts: Annotated[str, typer.Option("--long-texts", help="truncate: as in training; chunk: average overlapping windows over the whole text.")] = "truncate",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where the hardware has it), fp32 or bf16; PyTorch models only.")] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores). With --engine ray: CPUs "
                                                   "reserved by each actor and its torch threads (default 1).")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=MAX_LENGTH_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON Lines instead of a table: one object per text, per line.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local: this process, streamed, resumable. ray: a pool of Ray actors on a "
                                        "local Ray or a cluster (pip install 'sentilora\\[ray]'); adds row_id (0-based input order).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="With --engine ray: the cluster to join, e.g. "
                                                       "HEAD:6379 or ray://HEAD:10001 (default: $RAY_ADDRESS, else a local Ray).")] = None,
    ray_actors: Annotated[Optional[str], typer.Option("--ray-actors", help="With --engine ray: actors, each loading the model once: "
                                                      "N, or MIN-MAX to autoscale (default: the cluster's CPUs / --threads).")] = None,
) -> None:
    """Classify texts given on the command line, or every row of a file.

    Examples: sentilora predict runs/demo "It was good." "Not a fan, don't recommend."
              sentilora predict runs/demo --input reviews.csv --output scored.csv
    A scored file keeps every input row and column, in order, and adds pred_label, prob_<label> per
    class and error (why a row could not be scored: such rows are counted, not fatal). Files are
    streamed in chunks, each written atomically, so a killed job continues with --resume.
    --engine ray scores a file or folder with Ray actors, locally or on a cluster, into a Parquet folder
    with the same rows and columns plus row_id; --resume does not apply (a Ray job starts over).
    """
    from sentilora.predict import Classifier

    if bool(texts) == bool(input):
        raise SentiloraError("give either texts to classify or --input FILE (with --output FILE), not both or neither.")
    if input and not output:
        raise SentiloraError("--input needs --output FILE to write the scored rows to.")
    check_long_texts(long_texts)
    if precision not in ("auto", "fp32", "bf16"):
        raise SentiloraError(f"--precision must be auto, fp32 or bf16; got '{precision}'.")
    if engine not in ("local", "ray"):
        raise SentiloraError(f"--engine must be local or ray; got '{engine}'.")
    if engine == "local" and (ray_address or ray_actors):
        raise SentiloraError("--ray-address and --ray-actors need --engine ray.")
    counts = {"--batch-size": batch_size, "--chunk-rows": chunk_rows, "--max-length": max_length, "--threads": threads}
    bad_counts = [f"{flag} {n}" for flag, n in counts.items() if n is not None and n < 1]
    if bad_counts:
        raise SentiloraError(f"{', '.join(bad_counts)}: must be at least 1; leave the option out for its default.")
    if run_dir.is_file():
        raise SentiloraError(f"{run_dir}: is a file, not a run folder. The first argument is the --out folder of "
                             "`sentilora train` (or a merge or export folder); to score a file, pass it with --input.")
    if engine == "ray":
        if texts:
            raise SentiloraError("--engine ray scores files: give --input and --output instead of texts.")
        if resume:
            raise SentiloraError("--resume belongs to the local engine; a Ray job starts over (Ray retries failed chunks "
                                 "itself). Delete the partial output, if any, and run again without --resume.")
        from sentilora.ray_engine import parse_actors, require_ray, score_file_ray

        require_ray()
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-stage INFO lines; warnings still show
        res = score_file_ray(run_dir, input, output, text_column=text_column, chunk_rows=chunk_rows,  # type: ignore[arg-type]
                             batch_size=batch_size, long_texts=long_texts, precision=precision, threads=threads,
                             max_length=max_length, actors=parse_actors(ray_actors), address=ray_address, progress=err.is_terminal)
        out.print(f"scored {_rows(res.rows)} -> {output} ({res.chunks} Parquet file{'s' * (res.chunks != 1)} in row order){_unscored(res.bad_rows)}")
        return
    if input:  # before the model loads: that takes a while
        from sentilora.scoring import check_job

        check_job(input, output, chunk_rows=chunk_rows)  # type: ignore[arg-type]
    clf = Classifier.load(run_dir, precision=precision, threads=threads, max_length=max_length)
    if input:
        from sentilora.scoring import count_rows, score_file

        bar, tick = _sample_progress(count_rows(Path(input)), "scoring", unit="rows")
        with bar:
            res = score_file(clf, input, output, text_column=text_column, chunk_rows=chunk_rows, batch_size=batch_size,
                             long_texts=long_texts, resume=resume, progress=tick)  # type: ignore[arg-type]
        resumed = f" ({res.resumed_chunks} of {res.chunks} chunks from before the interruption)" if res.resumed_chunks else ""
        out.print(f"scored {_rows(res.rows)} -> {output}{resumed}{_unscored(res.bad_rows)}")
        return
    probs = clf.predict_proba(texts, batch_size=batch_size, long_texts=long_texts)  # type: ignore[arg-type]
    labels, names = clf.decide(probs), clf.label_names
    if as_json:
        for text, label, p in zip(texts, labels, probs):
            # JSON Lines: one compact object per line, never wrapped or styled by rich
            typer.echo(json.dumps({"text": text, "label": label, "probs": dict(zip(names, map(float, p)))}, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table()
    table.add_column("text", overflow="fold")
    table.add_column("label")
    for n in names:
        table.add_column(f"p({n})", justify="right")
    for text, label, p in zip(texts, labels, probs):
        table.add_row(text, label, *(f"{v:.3f}" for v in p))
    out.print(table)


@app.command()
@friendly
def explain(
    run_dir: Annotated[Path, typer.Argument(help="A run folder from `sentilora train`, or a `merge` folder (not an ONNX export).")],
    texts: Annotated[list[str], typer.Argument(help="Texts to explain.")],
    target: Annotated[Optional[str], typer.Option("--target", help="Explain this label instead of the predicted one.")] = None,
    method: Annotated[str, typer.Option("--method", help="integrated_gradients (exact up to --steps) or grad_x_input (one pass, rougher).")] = "integrated_gradients",
    steps: Annotated[int, typer.Option("--steps", help="Interpolation points for integrated gradients: more is closer, slower.")] = 20,
    top: Annotated[int, typer.Option("--top", help="Words listed for and against the label.")] = 5,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where the hardware has it), fp32 or bf16.")] = "auto",
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=MAX_LENGTH_HELP)] = None,
    long_texts: Annotated[str, typer.Option("--long-texts", help="truncate: as in training (cut words are struck through); "
                                            "chunk: every word, as `predict --long-texts chunk` reads it (slower: one explanation per window).")] = "truncate",
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines: one object per text, per line, with every word's character offsets and score.")] = False,
) -> None:
    """Show which words drove each prediction.

    Example: sentilora explain runs/demo "Great cast, but the plot was a mess."
    Each word is shaded by its contribution to the label's logit (green raises it, red lowers it);
    the words the model never read (cut by its truncation) are struck through. The scores add up to
    the logit's change from an all-padding text (integrated gradients; `gap` says how far off).
    """
    from rich.text import Text

    from sentilora.explain import shades
    from sentilora.predict import Classifier

    clf = Classifier.load(run_dir, precision=precision, max_length=max_length)
    for e in clf.explain(texts, target=target, method=method, steps=steps, long_texts=long_texts):  # type: ignore[arg-type]
        if as_json:
            typer.echo(json.dumps(e.to_dict(), ensure_ascii=False))  # JSON Lines, as predict --json
            continue
        shaded, at = Text(), 0
        for w, strength in zip(e.words, shades(e.words)):
            shaded.append(e.text[at : w.start])
            if strength is None:
                shaded.append(w.word, style="strike dim")
            else:
                level = round(255 - 180 * abs(strength))
                shaded.append(w.word, style=f"on rgb({level},255,{level})" if strength > 0 else f"on rgb(255,{level},{level})")
            at = w.end
        shaded.append(e.text[at:])
        out.print(f"[bold]{e.target}[/]" + (f" (predicted: {e.predicted})" if e.target != e.predicted else "")
                  + f" — {e.method.replace('_', ' ')}, logit {e.logit:+.3f} vs {e.baseline_logit:+.3f} for padding, gap {e.gap:+.3f}"
                  + (f", mean of {e.windows} windows" if e.windows > 1 else ""))
        out.print(shaded)
        up, down = e.top(top)
        out.print("  for:     " + (", ".join(f"{w.word} ({w.score:+.3f})" for w in up) or "-"))
        out.print("  against: " + (", ".join(f"{w.word} ({w.score:+.3f})" for w in down) or "-"))
        unread = sum(w.score is None for w in e.words)
        if unread:
            out.print(f"  {unread} words not read (truncated at {clf.max_length} tokens)")


@app.command()
@friendly
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder from `sentilora train` (or a merged folder).")],
    out_dir: Annotated[Path, typer.Argument(help="New folder for the exported model.")],
    format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    quantize: Annotated[str, typer.Option("--quantize", help="none, or int8 (dynamic quantisation: smaller and faster on CPU; "
                                          "the most sensitive layers stay fp32 when that is what it takes to pass the gate).")] = "none",
    min_agreement: Annotated[float, typer.Option("--min-agreement", help="Fail unless decisions (with the bundle's calibration and "
                                                 "threshold) agree with PyTorch on this share of the parity texts.")] = 0.995,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="Fuse attention, layer norms and GELU with ONNX Runtime's transformer optimizer (faster; the graph then needs ONNX Runtime).")] = True,
) -> None:
    """Export a run for fast CPU inference: ONNX fp32 or int8, with a parity check.

    The folder holds model.onnx, the tokenizer and the manifest; `sentilora predict OUT_DIR` and
    Classifier.load(OUT_DIR) use it directly. The export is compared with the PyTorch model on 200
    fixed texts (decision agreement, largest probability difference: printed and stored in parity.json,
    with the agreement on 200 held-apart texts too) and fails, writing nothing, below --min-agreement.
    With --quantize int8, when plain int8 misses the gate, nodes whose quantisation moves the outputs
    most (measured on the run's own training texts) are kept in fp32, trying the sets with the fewest
    fp32 weights first, until one passes; the nodes kept are listed in the manifest and in the output.
    """
    from sentilora.export import export_onnx

    if format != "onnx":
        raise SentiloraError(f"--format {format} is not supported; use --format onnx.")
    if quantize not in ("none", "int8"):
        raise SentiloraError(f"--quantize must be none or int8; got '{quantize}'.")
    check = export_onnx(run_dir, out_dir, quantize=quantize, min_agreement=min_agreement, optimize=optimize)  # type: ignore[arg-type]
    out.print(f"exported to {out_dir}: decisions agree on {check['label_agreement']:.1%} of {check['texts']} parity texts "
              f"({check['heldout']['label_agreement']:.1%} of {check['heldout']['texts']} held-apart texts), "
              f"largest probability difference {check['max_prob_diff']:.2g}")
    if check.get("int8_fp32_nodes"):
        out.print(f"int8: kept in fp32 to pass the gate: {', '.join(check['int8_fp32_nodes'])}")


@app.command()
@friendly
def merge(
    run_dir: Annotated[Path, typer.Argument(help="A run folder from `sentilora train`.")],
    out_dir: Annotated[Path, typer.Argument(help="New folder for the standalone merged model.")],
) -> None:
    """Fold the LoRA weights into the base model and save a standalone Transformers model.

    The result loads with plain AutoModelForSequenceClassification.from_pretrained(OUT_DIR) and
    AutoTokenizer.from_pretrained(OUT_DIR), with the real label names, and with Classifier.load.
    """
    from sentilora.bundle import merge_bundle

    path = merge_bundle(run_dir, out_dir)
    out.print(f"merged model written to {path}")


@app.command()
@friendly
def serve(
    models: Annotated[list[str], typer.Argument(
        help="Models to serve: RUN_DIR or NAME=RUN_DIR (run bundles, merged models or ONNX exports). "
        "The first is the default; adapter runs on the same base model share its weights.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but loopback requires "
                                       "an API key in $SENTILORA_API_KEY.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    # The defaults from here on are ServeSettings' own, declared once there. sentilora.guard imports
    # neither torch nor FastAPI, so reading it here costs the other commands nothing.
    max_texts: Annotated[int, typer.Option("--max-texts", help="Texts per request (more: 422).")] = (
        _SERVE_DEFAULTS.max_texts),
    max_chars: Annotated[int, typer.Option("--max-chars", help="Characters per text (more: 422).")] = (
        _SERVE_DEFAULTS.max_chars),
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Request body size (more: 413).")] = (
        _SERVE_DEFAULTS.max_body_bytes),
    queue_texts: Annotated[int, typer.Option("--queue-texts", help="Texts allowed to wait for the model; "
                                             "beyond it requests get 503 + Retry-After.")] = _SERVE_DEFAULTS.queue_texts,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a request may take, queueing included "
                                           "(then 504).")] = _SERVE_DEFAULTS.timeout_s,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a request waits for others "
                                               "to share its model call.")] = _SERVE_DEFAULTS.max_wait_ms,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Padded tokens per forward pass.")] = (
        _SERVE_DEFAULTS.max_tokens),
    no_batching: Annotated[bool, typer.Option("--no-batching", help="One request per model call (for comparison).")] = (
        not _SERVE_DEFAULTS.batching),
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where supported), fp32 or bf16.")] = (
        _SERVE_DEFAULTS.precision),
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for the model.")] = (
        _SERVE_DEFAULTS.threads),
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=MAX_LENGTH_HELP)] = _SERVE_DEFAULTS.max_length,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve models over HTTP: POST /v1/classify, GET /v1/models, /healthz, /readyz, /metrics, a web page at /.

    Concurrent requests are micro-batched through the prediction engine. Set $SENTILORA_API_KEY to
    require `Authorization: Bearer KEY` on /v1/* and /metrics. OpenAPI docs at /docs.
    """
    from sentilora.serve import ServeSettings, parse_model_args
    from sentilora.serve import serve as run_server

    settings = ServeSettings(max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes,
                             queue_texts=queue_texts, timeout_s=timeout, batching=not no_batching,
                             max_wait_ms=max_wait_ms, max_tokens=max_tokens, precision=precision, threads=threads,
                             max_length=max_length)
    specs = parse_model_args(models)

    def checked() -> None:  # nothing says "serving" before the key, the bundles and the port are checked
        err.print(f"serving {', '.join(f'{k}={v}' for k, v in specs.items())} on http://{host}:{port} "
                  f"(web page at /, docs at /docs)")

    raise typer.Exit(run_server(specs, host=host, port=port, settings=settings, log_level=log_level,
                                on_checked=checked))


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
