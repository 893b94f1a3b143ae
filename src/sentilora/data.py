"""Every way data gets in, one normalised shape out: `load_data` -> `LabeledData` of `Split`s.

Sources: the bundled ``imdb-sample``, one local file (CSV/TSV/JSON/JSONL/Parquet/TXT), a folder
(aclImdb-style ``<split>/<class>/*.txt`` or ``train.csv``/``test.csv``-style files), or a Hugging
Face hub dataset. Bad input raises `DataError` with one line naming file, row, column and the fix.

A little over 400 lines: each check on labels and texts is short, but there are many, and they read
best next to the one function (`load_data`) that runs them in order. Reading files is `tables.py`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sentilora.config import DataConfig
from sentilora.errors import DataError
from sentilora.labels import natural_order
from sentilora.files import first_line
from sentilora.tables import FORMATS, decode_text, input_file, is_missing, read_table, table_format, text_problem

log = logging.getLogger(__name__)

IMDB_SAMPLE = "imdb-sample"
SPLITS = ("train", "validation", "test")
DEFAULT_VALIDATION = "validation"  # a source's split of this name validates when --data.validation_split is unset
_FILE_LIKE = (*FORMATS, ".xlsx", ".xls", ".gz", ".zip", ".arrow", ".feather", ".ndjson", ".pkl")
_MISSING_WORDS = {"na", "n/a", "nan", "null", "none"}  # label cells that mean "no label"


@dataclass
class Split:
    """One split's texts and label indices, and where they came from."""

    texts: list[str]
    labels: list[int]  # indices into LabeledData.label_names
    origin: str  # where it came from, for messages: a file path, or e.g. "stanfordnlp/imdb[test]"


@dataclass
class LabeledData:
    """The requested splits, labelled against one shared list of class names."""

    splits: dict[str, Split]  # keys among "train", "validation", "test": those requested
    label_names: list[str]  # index i -> class name


CLASS_NAME_TEMPLATE = "This sentence is {}"  # SetFit's get_templated_dataset default


def with_class_name_texts(split: Split, label_names: list[str], n: int) -> Split:
    """`split` with `n` texts per class made from its name (CLASS_NAME_TEMPLATE) appended: --train.class_name_texts."""
    if n <= 0:
        return split
    extra = [(CLASS_NAME_TEMPLATE.format(name), i) for i, name in enumerate(label_names) for _ in range(n)]
    return Split(split.texts + [t for t, _ in extra], split.labels + [y for _, y in extra], split.origin)


def sample_dir() -> Path:
    """Folder of the bundled IMDB sample (train.parquet, test.parquet, README.md)."""
    return Path(__file__).parent / "resources" / "imdb_sample"


# ---- sources: which splits exist and how to read each -------------------------------------------


@dataclass
class _Table:
    df: pd.DataFrame
    origin: str
    row_files: list[str] | None = None  # one source file per row (aclImdb folders)


@dataclass
class _Source:
    name: str
    available: Callable[[], list[str]]  # split names (a hub dataset knows them only once loaded)
    load: Callable[[str], _Table]
    class_names: list[str] | None = None  # default names for int labels (imdb-sample, hub ClassLabel)
    single_file: bool = False


def _local(name: str, loaders: dict[str, Callable[[], _Table]], **kw: Any) -> _Source:
    return _Source(name, lambda: list(loaders), lambda split: loaders[split](), **kw)


def _file_table(path: Path) -> _Table:
    return _Table(read_table(path), str(path))


def _acl_table(split_dir: Path, cfg: DataConfig) -> _Table:
    texts, labels, files = [], [], []
    for cls in sorted(_class_dirs(split_dir)):
        for f in sorted(cls.glob("*.txt")):
            texts.append(decode_text(f, f.read_bytes()))
            labels.append(cls.name)
            files.append(str(f))
    df = pd.DataFrame({cfg.text_column: texts, cfg.label_column: labels}, dtype=object)
    return _Table(df, str(split_dir), files)


def _class_dirs(d: Path) -> list[Path]:
    return [c for c in d.iterdir() if c.is_dir() and c.name != "unsup" and not c.name.startswith(".")]


def _looks_local(source: str) -> bool:
    return (
        Path(source).suffix.lower() in _FILE_LIKE or source.startswith((".", "/", "~", "\\")) or source.count("/") > 1
    )


def _resolve(cfg: DataConfig) -> _Source:
    src = cfg.source
    if src == IMDB_SAMPLE:
        files = {s: sample_dir() / f"{s}.parquet" for s in ("train", "test")}
        loaders = {s: (lambda s=s: _Table(read_table(files[s]), f"{IMDB_SAMPLE}[{s}]")) for s in files}
        return _local(src, loaders, class_names=["negative", "positive"])
    path = Path(src).expanduser()
    if path.is_file():
        table_format(path)
        return _local(src, {cfg.train_split: lambda: _file_table(path)}, single_file=True)
    if path.is_dir():
        split_dirs = [d for d in sorted(path.iterdir()) if d.is_dir() and _class_dirs(d)]
        if split_dirs:
            return _local(src, {d.name: (lambda d=d: _acl_table(d, cfg)) for d in split_dirs})
        files = [f for f in sorted(path.iterdir()) if f.is_file() and f.suffix.lower() in FORMATS]
        stems = [f.stem for f in files]
        if dup := sorted({s for s in stems if stems.count(s) > 1}):
            raise DataError(f"{path}: several files for split '{dup[0]}'. Keep one file per split.")
        if not files:
            raise DataError(
                f"{path}: no data found. Expected aclImdb-style <split>/<class>/*.txt folders "
                f"or files like train.csv and test.csv ({', '.join(FORMATS)})."
            )
        return _local(src, {f.stem: (lambda f=f: _file_table(f)) for f in files})
    if _looks_local(src):
        raise DataError(f"{src}: file not found. Check the path passed to --data.source.")
    return _hub_source(cfg)


def _hub_source(cfg: DataConfig) -> _Source:
    cache: dict[str, Any] = {}

    def dataset() -> Any:
        if "dd" not in cache:
            import datasets

            try:
                cache["dd"] = datasets.load_dataset(cfg.source)
            except Exception as e:  # offline, not found, gated: all end the same way for the user
                raise DataError(
                    f"could not load dataset '{cfg.source}' from the Hugging Face hub (no network or not "
                    "cached). Offline, use --data.source imdb-sample or a local file (CSV/JSONL/Parquet). "
                    f"Cause: {type(e).__name__}: {first_line(e)}"
                ) from e
        return cache["dd"]

    def table(name: str) -> _Table:
        ds = dataset()[name]
        feat = ds.features.get(cfg.label_column)
        if source.class_names is None and getattr(feat, "names", None):
            source.class_names = list(feat.names)  # a ClassLabel feature
        return _Table(ds.to_pandas(), f"{cfg.source}[{name}]")

    source = _Source(cfg.source, lambda: list(dataset().keys()), table)
    return source


def _get(source: _Source, name: str, flag: str, fix: str) -> _Table:
    available = source.available()
    if name not in available:
        what = f"{source.name} is a single file (the train split)" if source.single_file else source.name
        raise DataError(f"{what}: no split '{name}' (available: {', '.join(available)}). {fix.format(flag=flag)}")
    return source.load(name)


# ---- validation: texts and raw labels, one split at a time ---------------------------------------


def _text_problem(v: Any) -> str | None:
    problem = text_problem(v)
    if problem is None:
        return None
    if problem == "empty text":
        return "empty text. Remove the row or fill it in."
    return f"{problem}. Point --data.text_column at the column that holds the texts."


def _label_value(v: Any) -> int | str | None:
    """The label as int or str; None if missing. Raises ValueError with the problem."""
    if is_missing(v) or (isinstance(v, str) and v.strip().lower() in _MISSING_WORDS | {""}):
        return None
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        v = int(v)
    elif isinstance(v, (float, np.floating)):
        if not float(v).is_integer():
            raise ValueError(f"non-integral label {v!r}: numeric labels must be whole numbers (or use class names)")
        v = int(v)
    elif isinstance(v, str):
        return v.strip()
    else:
        raise TypeError(f"label {v!r} of type {type(v).__name__}: use class names or whole numbers")
    return v


def _where(t: _Table, i: int, col: str, more: int) -> str:
    noun = "file" if t.row_files else "row"
    extra = f" (and {more} more {noun}{'s' if more > 1 else ''})" if more else ""
    if t.row_files:  # aclImdb: one review per file, so the file is the row
        return f"{t.row_files[i]}{extra}"
    return f"{t.origin} row {i + 1}{extra}, column '{col}'"


def _fail(t: _Table, col: str, problems: list[str | None]) -> None:
    """Raise for the first bad row, counting the other rows with the same problem."""
    bad = [i for i, p in enumerate(problems) if p]
    if bad:
        first = problems[bad[0]]
        more = sum(problems[i] == first for i in bad[1:])
        fix = first.replace("the row", "the file") if t.row_files else first
        raise DataError(f"{_where(t, bad[0], col, more)}: {fix}")


def _parse(t: _Table, cfg: DataConfig) -> tuple[list[str], list[int | str]]:
    """Check one split's rows; return its texts and raw labels (int or str)."""
    if len(t.df) == 0:
        raise DataError(f"{t.origin}: no data rows. Add rows, or point --data.source at the right file.")
    cols = [str(c) for c in t.df.columns]
    for col, flag in ((cfg.text_column, "--data.text_column"), (cfg.label_column, "--data.label_column")):
        if col not in t.df.columns:
            if t.origin.lower().endswith(".txt"):
                raise DataError(
                    f"{t.origin}: a .txt file holds texts only (one per line), no labels. Use a "
                    "CSV/TSV/JSONL/Parquet file with text and label columns."
                )
            also = " (and --data.label_column)" if col == cfg.text_column else ""
            raise DataError(
                f"{t.origin}: no column '{col}' (columns: {', '.join(cols)}). Set {flag}{also} to the right names."
            )
    texts = t.df[cfg.text_column].tolist()
    _fail(t, cfg.text_column, [_text_problem(v) for v in texts])
    labels: list[Any] = []
    problems: list[str | None] = []
    for v in t.df[cfg.label_column].tolist():
        try:
            labels.append(lab := _label_value(v))
            problems.append(None if lab is not None else "missing label. Fill it in or remove the row.")
        except (ValueError, TypeError) as e:
            labels.append(None)
            problems.append(f"{e}.")
    _fail(t, cfg.label_column, problems)
    kinds = [isinstance(v, str) for v in labels]
    if any(k != kinds[0] for k in kinds):
        i = kinds.index(not kinds[0])
        raise DataError(
            f"{_where(t, i, cfg.label_column, 0)}: label {labels[i]!r} mixes with labels like "
            f"{labels[0]!r} in row 1. Use one kind: all class names or all whole numbers."
        )
    return texts, labels


# ---- labels: one name list, every split mapped onto it --------------------------------------------


def _names(
    parsed: dict[str, tuple[_Table, list[str], list[Any]]], cfg: DataConfig, source: _Source
) -> tuple[list[str], str]:
    refs = ["train"] if "train" in parsed else list(parsed)
    values = {v for s in refs for v in parsed[s][2]}
    if any(isinstance(v, str) for v in values):
        found = sorted(str(v) for v in values)
        if cfg.label_names and set(found) <= set(cfg.label_names):
            return list(cfg.label_names), "--data.label_names"  # same classes, in the order the user gave
        if cfg.label_names:
            log.warning("--data.label_names ignored: the labels are class names (%s)", ", ".join(found))
        _warn_case_variants(found)
        return natural_order(found), f"the {refs[0]} split"
    ints = sorted(values)
    if cfg.label_names:
        if _by_value(cfg.label_names):
            return list(cfg.label_names), "--data.label_names"  # numbers named by themselves: read by value
        if ints[0] < 0 or len(cfg.label_names) <= ints[-1]:
            raise DataError(
                f"{parsed[refs[0]][0].origin}: labels go from {ints[0]} to {ints[-1]} but --data.label_names has "
                f"{len(cfg.label_names)} names for classes 0..{len(cfg.label_names) - 1}. Give one name per class "
                f"0..{ints[-1]}, or leave --data.label_names out to use the numbers as class names."
            )
        return list(cfg.label_names), "--data.label_names"
    if source.class_names and ints[0] >= 0 and len(source.class_names) > ints[-1]:
        return list(source.class_names), f"the {source.name} dataset"
    if len(ints) > 1 and ints != list(range(len(ints))):  # star ratings 1..5, -1/0/1: the numbers are the classes
        log.info("labels %s are not the indices 0..%d: each number is a class of its own, in order of value",
                 ", ".join(map(str, ints)), len(ints) - 1)
    return [str(v) for v in ints], f"the {refs[0]} split"


def _by_value(names: Sequence[str]) -> bool:
    """Whether integer labels map onto `names` by value ("1".."5" for star ratings) rather than as
    indices: when every name is a whole number (names "0".."K-1" come to the same)."""
    return all(re.fullmatch(r"[+-]?\d+", n.strip()) for n in names)


def _warn_case_variants(names: list[str]) -> None:
    """A warning for class names that differ only in case or spaces ('Positive' and 'positive'): they
    train as separate classes, which is rarely what was meant."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(" ".join(n.lower().split()), []).append(n)
    for same in (g for g in groups.values() if len(g) > 1):
        log.warning("labels %s differ only in case or spaces and train as %d separate classes; "
                    "relabel them to one name if they are one class", " and ".join(map(repr, same)), len(same))


def _encode(t: _Table, col: str, labels: list[Any], names: list[str], known_from: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    by_value = {int(n): i for i, n in enumerate(names)} if _by_value(names) else None
    out = [index.get(v, -1) if isinstance(v, str) else
           by_value.get(v, -1) if by_value is not None else (v if 0 <= v < len(names) else -1) for v in labels]
    if bad := [i for i, o in enumerate(out) if o < 0]:
        more = sum(labels[i] == labels[bad[0]] for i in bad[1:])
        raise DataError(
            f"{_where(t, bad[0], col, more)}: unknown label {labels[bad[0]]!r}; known labels (from "
            f"{known_from}): {', '.join(names)}. Remove those rows or relabel them."
        )
    return out


def _check_train_classes(parsed: dict[str, Any], encoded: dict[str, list[int]], names: list[str], col: str) -> None:
    seen = set(encoded["train"])
    if len(seen) < 2:
        raise DataError(
            f"{parsed['train'][0].origin}: only one class ({names[next(iter(seen))]!r}) in the train "
            f"split: a classifier needs at least two. Check --data.label_column, or add rows of "
            "another class."
        )
    for split, labs in encoded.items():
        extra = [i for i, v in enumerate(labs) if v not in seen]
        if extra:
            t = parsed[split][0]
            name = names[labs[extra[0]]]
            raise DataError(
                f"{_where(t, extra[0], col, len(extra) - 1)}: label {name!r} is in the {split} split "
                "but not in the train split, so no model can learn it. Remove those rows or add "
                "training rows of that class."
            )
    if missing := [n for i, n in enumerate(names) if i not in seen]:
        log.warning("classes %s have no rows in the train split; the model cannot learn them", missing)


# ---- sampling -------------------------------------------------------------------------------------


def _balanced(split: Split, n: int | None, seed: int, names: list[str], flag: str) -> Split:
    """Equal rows per class (all of a short class), in a deterministic shuffled order."""
    if n is None or n >= len(split.labels):
        return split
    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels)
    classes = np.unique(labels)
    quotas = [n // len(classes) + (j < n % len(classes)) for j in range(len(classes))]
    picked = []
    for c, q in zip(classes, quotas):
        idx = np.flatnonzero(labels == c)
        if len(idx) < q:
            msg = "%s: only %d rows of class %r for a balanced %s %d; using all of them."
            log.warning(msg, split.origin, len(idx), names[c], flag, n)
        picked.append(rng.permutation(idx)[:q])
    order = rng.permutation(np.concatenate(picked))
    return Split([split.texts[i] for i in order], [int(labels[i]) for i in order], split.origin)


# ---- the one entry point --------------------------------------------------------------------------


def load_data(cfg: DataConfig, *, need: Sequence[str] = SPLITS, label_names: list[str] | None = None,
              called: dict[str, str] | None = None) -> LabeledData:
    """Load the splits in ``need`` from ``cfg.source``, validated, with labels as indices into one name list.
    ``called`` renames splits in the log line (calibrate reads a file as "test" to fit on it: validation)."""
    if unknown := [s for s in need if s not in SPLITS]:
        raise ValueError(f"need: unknown split(s) {unknown}; choose among {', '.join(SPLITS)}.")
    source = _resolve(cfg)
    val_split = cfg.validation_split
    if val_split is None and "validation" in need and DEFAULT_VALIDATION in source.available():
        val_split = DEFAULT_VALIDATION  # the data's own validation split, rather than a carve-out of train
        log.info("validating on %s's '%s' split (name another with --data.validation_split)", source.name, val_split)
    carve = "validation" in need and val_split is None
    tables: dict[str, _Table] = {}
    if "train" in need or carve:
        tables["train"] = _get(source, cfg.train_split, "--data.train_split", "Set {flag} to one of these.")
    if "validation" in need and not carve:
        tables["validation"] = _get(
            source,
            val_split,
            "--data.validation_split",
            "Set {flag} to one of these, or unset it to carve --data.val_fraction from train.",
        )
    if "test" in need:
        if cfg.test_file:
            tables["test"] = _file_table(_test_path(cfg.test_file))
        else:
            fix = "Set --data.test_file to a labelled file" + (
                "." if source.single_file else ", or {flag} to one of these."
            )
            tables["test"] = _get(source, cfg.test_split, "--data.test_split", fix)
    parsed = {s: (t, *_parse(t, cfg)) for s, t in tables.items()}
    if label_names is not None:
        names, known_from = list(label_names), "the trained model"
    else:
        names, known_from = _names(parsed, cfg, source)
    encoded = {s: _encode(t, cfg.label_column, labs, names, known_from) for s, (t, _, labs) in parsed.items()}
    if "train" in encoded:
        _check_train_classes(parsed, encoded, names, cfg.label_column)
    splits = {s: Split(list(parsed[s][1]), encoded[s], parsed[s][0].origin) for s in parsed}
    if carve:
        splits["train"], splits["validation"] = _carve(splits["train"], cfg, names)
    for s, seed_offset in (("train", 0), ("validation", 1), ("test", 2)):
        if s in splits:
            n = cfg.n_train if s == "train" else cfg.n_eval
            flag = "--data.n_train" if s == "train" else "--data.n_eval"
            splits[s] = _balanced(splits[s], n, cfg.seed + seed_offset, names, flag)
    out = {s: splits[s] for s in SPLITS if s in need}
    counts = " / ".join(f"{len(sp.labels)} {(called or {}).get(s, s)}" for s, sp in out.items())
    origins: list[str] = []  # each file once, in split order; a carve-out named as the file it came from
    for origin in dict.fromkeys(sp.origin for sp in out.values()):
        if origins and origin.startswith(origins[-1] + " ("):
            origins[-1] = origin
        else:
            origins.append(origin)
    log.info("loaded %s rows from %s (%d classes: %s)", counts, " + ".join(origins), len(names), ", ".join(names))
    return LabeledData(out, names)


def _test_path(test_file: str) -> Path:
    return input_file(test_file, flag="--data.test_file")


def _carve(train: Split, cfg: DataConfig, names: list[str]) -> tuple[Split, Split]:
    """Stratified hold-out of ``cfg.val_fraction`` of train; both parts come back shuffled. Nothing is
    held out (an empty validation split) when that would be fewer than ``cfg.min_held_out`` texts."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(train.labels))
    if len(idx) * cfg.val_fraction < cfg.min_held_out:
        log.info("%d training rows: no validation texts held out (%g of them would be under --data.min_held_out %d, "
                 "too few to choose an epoch by); all of them train and the final weights are kept",
                 len(idx), cfg.val_fraction, cfg.min_held_out)
        return train, Split([], [], f"{train.origin} (none held out)")
    try:
        tr, va = train_test_split(idx, test_size=cfg.val_fraction, stratify=train.labels, random_state=cfg.seed)
    except ValueError as e:
        counts = {names[c]: train.labels.count(c) for c in sorted(set(train.labels))}
        raise DataError(
            f"{train.origin}: cannot carve a stratified --data.val_fraction {cfg.val_fraction} from "
            f"{len(idx)} train rows (rows per class: {counts}; {first_line(e)}). Add rows, raise "
            "--data.val_fraction, or name a split with --data.validation_split."
        ) from None

    def pick(ix: np.ndarray, origin: str) -> Split:
        return Split([train.texts[i] for i in ix], [train.labels[i] for i in ix], origin)

    return pick(tr, train.origin), pick(va, f"{train.origin} ({cfg.val_fraction:.0%} held out)")
