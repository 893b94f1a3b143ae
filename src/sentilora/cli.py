"""Command line: thin wrappers that parse flags, call a library function and print the result.

Only this module prints, and only here does an exception become a one-line message and exit code 2.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from sentilora.config import Config, all_options, parse_overrides
from sentilora.errors import SentiloraError

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


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn project errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _quiet_libraries()
            return fn(*args, **kwargs)
        except SentiloraError as e:
            err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper


def _sample_progress(total: int, what: str) -> tuple[Any, Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]{what}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err, transient=True)
    task = bar.add_task(what, total=total)
    return bar, lambda n: bar.update(task, advance=n)


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
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out from its last checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fine-tune a base encoder with LoRA and write a run bundle to --out.

    Settings come from defaults, then --config YAML, then flags like --lora.r 8 --train.epochs 3.
    The resolved config is saved in the run folder.
    """
    from sentilora.train import train as run_train

    overrides = parse_overrides(list(ctx.args))
    if model:
        overrides["model.name"] = model
    if data:
        overrides["data.source"] = data
    if resume and (overrides or config):
        raise SentiloraError("--resume continues with the run's saved config.yaml; drop the other settings.")
    cfg = Config.from_yaml(config) if config else Config()
    cfg = cfg.override(overrides)
    result = run_train(cfg, out_dir, resume=resume, progress=not quiet)
    best = result.best_metrics
    out.print(
        f"[green]done[/]: best epoch {result.best_epoch} — validation accuracy {best['accuracy']:.4f}, "
        f"F1 {best['f1']:.4f}; {result.steps} steps in {result.train_seconds:.0f}s. Bundle: {result.run_dir}"
    )


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
) -> None:
    """Score a trained run: accuracy, precision, recall, F1, ROC-AUC, log-loss, confusion matrix."""
    from sentilora.evaluate import confusion_table, evaluate_run, metrics_table

    result = evaluate_run(run_dir, data=data, split=split, text_column=text_column, label_column=label_column,
                          compare_base=compare_base, batch_size=batch_size, output=output)
    out.print(metrics_table(result))
    out.print(confusion_table(result))
    out.print(f"metrics written to {result['written_to']}")


@app.command()
@friendly
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder from `sentilora train` or `sentilora merge`.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to classify (or use --input).")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="File to score: .csv .tsv .json .jsonl .parquet .txt (one text per line).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the scored file (format from its extension).")] = None,
    text_column: Annotated[str, typer.Option("--text-column", help="Column of --input holding the text.")] = "text",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per text instead of a table.")] = False,
) -> None:
    """Classify texts given on the command line, or every row of a file.

    Examples: sentilora predict runs/demo "It was good." "Not a fan, don't recommend."
              sentilora predict runs/demo --input reviews.csv --output scored.csv
    A scored file keeps every input row and column, in order, and adds pred_label and prob_<label>.
    """
    from sentilora.predict import Classifier, predict_file

    if bool(texts) == bool(input):
        raise SentiloraError("give either texts to classify or --input FILE (with --output FILE), not both or neither.")
    if input and not output:
        raise SentiloraError("--input needs --output FILE to write the scored rows to.")
    clf = Classifier.load(run_dir)
    if input:
        from sentilora.data import read_table

        n_rows = len(read_table(input))
        bar, tick = _sample_progress(n_rows, "scoring")
        with bar:
            n = predict_file(clf, input, output, text_column=text_column, batch_size=batch_size, progress=tick)
        out.print(f"scored {n} rows -> {output}")
        return
    probs = clf.predict_proba(texts, batch_size=batch_size)
    names = clf.label_names
    if as_json:
        for text, p in zip(texts, probs):
            out.print_json(json.dumps({"text": text, "label": names[int(p.argmax())], "probs": dict(zip(names, map(float, p)))}))
        return
    from rich.table import Table

    table = Table()
    table.add_column("text", overflow="fold")
    table.add_column("label")
    for n in names:
        table.add_column(f"p({n})", justify="right")
    for text, p in zip(texts, probs):
        table.add_row(text, names[int(p.argmax())], *(f"{v:.3f}" for v in p))
    out.print(table)


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
    from sentilora.model import merge_bundle

    path = merge_bundle(run_dir, out_dir)
    out.print(f"merged model written to {path}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
