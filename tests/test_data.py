"""sentilora.data: every source format, label handling, splitting, sampling and every bad-input message."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from sentilora.config import DataConfig
from sentilora.data import IMDB_SAMPLE, LabeledData, load_data, sample_dir
from sentilora.tables import read_table, write_table
from sentilora.errors import DataError

TABLE_FORMATS = [".csv", ".tsv", ".json", ".jsonl", ".parquet"]


def frame(n: int = 20, classes: tuple[str, ...] = ("neg", "pos"), prefix: str = "review") -> pd.DataFrame:
    """n rows cycling through `classes`, each text unique."""
    return pd.DataFrame(
        {
            "text": [f'{prefix} {i}, a "quoted" text' for i in range(n)],
            "label": [classes[i % len(classes)] for i in range(n)],
        }
    )


def load(tmp_path: Path, files: dict[str, str | bytes], *, need: tuple[str, ...] = ("train",), **cfg) -> LabeledData:
    """Write raw files under tmp_path, then load_data with source/test_file relative to it."""
    for name, content in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    for key in ("source", "test_file"):
        if key in cfg:
            cfg[key] = str(tmp_path / cfg[key])
    return load_data(DataConfig(**cfg), need=need)


def by_text(split) -> dict[str, int]:
    return dict(zip(split.texts, split.labels))


# ---- every way in -------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", TABLE_FORMATS)
def test_single_file_and_test_file_load_in_every_format(tmp_path: Path, ext: str) -> None:
    train, test = frame(20), frame(6, prefix="test")
    write_table(train, tmp_path / f"reviews{ext}")
    write_table(test, tmp_path / f"held_out{ext}")
    cfg = DataConfig(source=str(tmp_path / f"reviews{ext}"), test_file=str(tmp_path / f"held_out{ext}"))
    data = load_data(cfg, need=("train", "test"))
    assert data.label_names == ["neg", "pos"]
    assert data.splits["train"].texts == train.text.tolist()
    assert data.splits["train"].labels == [i % 2 for i in range(20)]
    assert data.splits["test"].texts == test.text.tolist()
    assert data.splits["test"].origin.endswith(f"held_out{ext}")


def test_json_file_may_hold_json_lines(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(4))
    assert read_table(_put(tmp_path / "a.json", lines)).label.tolist() == [0, 1, 0, 1]


def test_folder_of_split_files_with_named_validation(tmp_path: Path) -> None:
    write_table(frame(10), tmp_path / "d" / "train.csv")
    write_table(frame(4, prefix="dev"), tmp_path / "d" / "dev.jsonl")
    write_table(frame(6, prefix="test"), tmp_path / "d" / "test.parquet")
    (tmp_path / "d" / "README.md").write_text("not data")
    data = load_data(DataConfig(source=str(tmp_path / "d"), validation_split="dev"))
    assert [len(s.texts) for s in data.splits.values()] == [10, 4, 6]
    assert list(data.splits) == ["train", "validation", "test"]
    assert data.splits["validation"].texts[0] == 'dev 0, a "quoted" text'


def test_a_validation_file_is_used_before_a_carve_out(tmp_path: Path) -> None:
    write_table(frame(20), tmp_path / "d" / "train.csv")
    write_table(frame(6, prefix="val"), tmp_path / "d" / "validation.csv")
    data = load_data(DataConfig(source=str(tmp_path / "d"), val_fraction=0.5, min_held_out=0), need=("train", "validation"))
    assert len(data.splits["train"].texts) == 20  # nothing carved out of train
    assert data.splits["validation"].origin.endswith("validation.csv")
    assert all(t.startswith("val ") for t in data.splits["validation"].texts)


def test_aclimdb_folder(tmp_path: Path) -> None:
    files = {
        f"acl/{split}/{cls}/{i}_7.txt": f"{split} {cls} {i}"
        for split in ("train", "test")
        for cls in ("pos", "neg", "unsup")
        for i in range(3)
    }
    files["acl/README"] = "readme"
    data = load(tmp_path, files, need=("train", "test"), source="acl")
    assert data.label_names == ["neg", "pos"]
    assert len(data.splits["train"].texts) == 6  # unsup ignored
    assert by_text(data.splits["test"])["test pos 2"] == 1


def test_only_needed_splits_are_read(tmp_path: Path) -> None:
    data = load(
        tmp_path, {"d/train.csv": b"\xff broken", "d/test.csv": "text,label\na,x\nb,y\n"}, need=("test",), source="d"
    )
    assert list(data.splits) == ["test"] and data.label_names == ["x", "y"]


def test_imdb_sample_is_bundled_and_balanced() -> None:
    assert {p.name for p in sample_dir().iterdir()} >= {"train.parquet", "test.parquet", "README.md"}
    data = load_data(DataConfig(source=IMDB_SAMPLE, val_fraction=0.1))
    assert data.label_names == ["negative", "positive"]
    assert {s: len(sp.labels) for s, sp in data.splits.items()} == {"train": 900, "validation": 100, "test": 500}
    assert Counter(data.splits["test"].labels) == {0: 250, 1: 250}
    assert data.splits["test"].origin == "imdb-sample[test]"


def test_hub_dataset_with_classlabel(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    feats = datasets.Features({"sentence": datasets.Value("string"), "y": datasets.ClassLabel(names=["bad", "good"])})
    dd = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({"sentence": ["a", "b", "c", "d"], "y": [0, 1, 0, 1]}, features=feats)
            for s in ("train", "test")
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: dd)
    cfg = DataConfig(source="someone/reviews", text_column="sentence", label_column="y")
    data = load_data(cfg, need=("train", "test"))
    assert data.label_names == ["bad", "good"]
    assert data.splits["test"].origin == "someone/reviews[test]"
    with pytest.raises(DataError, match=r"no split 'dev' \(available: train, test\).*--data.validation_split"):
        load_data(DataConfig(source="someone/reviews", validation_split="dev"), need=("validation",))


def test_hub_failure_gives_offline_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(source="stanfordnlp/imdb"), need=("test",))
    msg = str(e.value)
    assert "could not load dataset 'stanfordnlp/imdb' from the Hugging Face hub" in msg
    assert "--data.source imdb-sample" in msg and "\n" not in msg


# ---- labels -------------------------------------------------------------------------------------


def test_column_mapping_and_int_labels_with_names(tmp_path: Path) -> None:
    csv = "review,sentiment\n" + "".join(f"text {i},{i % 2}\n" for i in range(6))
    data = load(
        tmp_path,
        {"r.csv": csv},
        source="r.csv",
        text_column="review",
        label_column="sentiment",
        label_names=["bad", "good"],
    )
    assert data.label_names == ["bad", "good"] and data.splits["train"].labels == [0, 1] * 3
    assert load(tmp_path, {}, source="r.csv", text_column="review", label_column="sentiment").label_names == ["0", "1"]


def test_whole_floats_are_ints_and_string_labels_follow_cfg_order(tmp_path: Path) -> None:
    js = json.dumps([{"text": f"t{i}", "label": float(i % 3)} for i in range(6)])
    assert load(tmp_path, {"a.json": js}, source="a.json").splits["train"].labels == [0, 1, 2] * 2
    data = load(tmp_path, {"b.csv": "text,label\na,pos\nb,neg\n"}, source="b.csv", label_names=["pos", "neg"])
    assert data.label_names == ["pos", "neg"] and data.splits["train"].labels == [0, 1]
    assert load(tmp_path, {}, source="b.csv", label_names=["x", "y"]).label_names == ["neg", "pos"]


def test_label_names_argument_maps_string_and_int_labels(tmp_path: Path) -> None:
    files = {"s.csv": "text,label\na,pos\nb,neg\n", "i.csv": "text,label\na,1\nb,0\n"}
    load(tmp_path, files, source="s.csv")
    for name in files:
        cfg = DataConfig(source=str(tmp_path / name))
        data = load_data(cfg, need=("train",), label_names=["neg", "pos"])
        assert data.label_names == ["neg", "pos"] and data.splits["train"].labels == [1, 0]
    cfg = DataConfig(source=str(tmp_path / "s.csv"))
    with pytest.raises(DataError, match=r"s\.csv row 1, column 'label': unknown label 'pos'.*trained model.*a, b"):
        load_data(cfg, need=("train",), label_names=["a", "b"])


def test_integer_labels_that_are_not_indices_are_class_names(tmp_path: Path, caplog) -> None:
    stars = "text,label\n" + "".join(f"text {i},{1 + i % 5}\n" for i in range(10))  # ratings 1..5: no class 0
    with caplog.at_level(logging.INFO, logger="sentilora.data"):
        data = load(tmp_path, {"r.csv": stars, "t.csv": "text,label\na,5\nb,1\n"}, source="r.csv", test_file="t.csv",
                    need=("train", "test"))
    assert data.label_names == ["1", "2", "3", "4", "5"] and data.splits["test"].labels == [4, 0]
    assert [data.label_names[i] for i in data.splits["train"].labels] == [str(1 + i % 5) for i in range(10)]
    assert "each number is a class of its own" in caplog.text
    # the trained model's names map the numbers of new data by value too (evaluate, calibrate)
    data = load_data(DataConfig(source=str(tmp_path / "t.csv")), need=("train",), label_names=data.label_names)
    assert data.splits["train"].labels == [4, 0]
    sign = load(tmp_path, {"s.csv": "text,label\na,-1\nb,0\nc,1\nd,1\n"}, source="s.csv")
    assert sign.label_names == ["-1", "0", "1"] and sign.splits["train"].labels == [0, 1, 2, 2]
    with pytest.raises(DataError, match=r"t\.csv row 1, column 'label': unknown label 0.*1, 2, 3, 4, 5"):
        load(tmp_path, {"t.csv": "text,label\na,0\n"}, source="r.csv", test_file="t.csv", need=("train", "test"))


def test_labels_that_differ_only_in_case_are_warned_about(tmp_path: Path, caplog) -> None:
    rows = "text,label\n" + "".join(f"text {i},{['positive', 'negative', 'Positive'][i % 3]}\n" for i in range(9))
    with caplog.at_level(logging.WARNING, logger="sentilora.data"):
        data = load(tmp_path, {"r.csv": rows}, source="r.csv")
    assert len(data.label_names) == 3 and "'Positive' and 'positive' differ only in case" in caplog.text


SST5 = ["very negative", "negative", "neutral", "positive", "very positive"]


@pytest.mark.parametrize(("labels", "expect"), [
    (["positive", "very negative", "neutral", "very positive", "negative"], SST5),  # SST-5: a scale, not the alphabet
    (["Very_Positive", "NEGATIVE", "very-negative"], ["very-negative", "NEGATIVE", "Very_Positive"]),
    (["10", "2", "1", "5"], ["1", "2", "5", "10"]),  # numbers by value
    (["5 stars", "1 star", "10 stars"], ["1 star", "5 stars", "10 stars"]),
    (["neg", "pos"], ["neg", "pos"]),  # already in order: unchanged
    (["c", "very negative", "a"], ["a", "c", "very negative"]),  # not all on a scale: alphabetical
    (["negative", "3", "positive"], ["3", "negative", "positive"]),  # two scales mixed: alphabetical
    (["neg", "negative", "pos"], ["neg", "negative", "pos"]),  # two names for one point: alphabetical
])
def test_string_labels_keep_their_natural_order(tmp_path: Path, labels: list[str], expect: list[str]) -> None:
    rows = [{"text": f"text {i}", "label": labels[i % len(labels)]} for i in range(3 * len(labels))]
    data = load(tmp_path, {"r.jsonl": "".join(json.dumps(r) + "\n" for r in rows)}, source="r.jsonl")
    assert data.label_names == expect
    assert [data.label_names[i] for i in data.splits["train"].labels] == [r["label"] for r in rows]


def test_label_names_order_wins_over_the_scale(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{SST5[i % 5]}\n" for i in range(10))
    mine = ["very positive", "positive", "neutral", "negative", "very negative"]
    assert load(tmp_path, {"r.csv": "text,label\n" + rows}, source="r.csv", label_names=mine).label_names == mine
    assert load(tmp_path, {}, source="r.csv").label_names == SST5


def test_multiclass_stratified_carve_out(tmp_path: Path) -> None:
    df = frame(300, classes=("neg", "neutral", "pos"))
    df.loc[:149, "label"] = "pos"  # unbalanced: pos 200, neg 50, neutral 50
    write_table(df, tmp_path / "r.parquet")
    cfg = DataConfig(source=str(tmp_path / "r.parquet"), val_fraction=0.2, seed=7, min_held_out=0)
    data = load_data(cfg, need=("train", "validation"))
    train, val = data.splits["train"], data.splits["validation"]
    assert data.label_names == ["neg", "neutral", "pos"]
    assert Counter(val.labels) == {2: 40, 0: 10, 1: 10} and Counter(train.labels) == {2: 160, 0: 40, 1: 40}
    assert not set(train.texts) & set(val.texts) and len(set(train.texts) | set(val.texts)) == 300
    assert by_text(train) | by_text(val) == {t: ["neg", "neutral", "pos"].index(x) for t, x in zip(df.text, df.label)}
    again = load_data(cfg, need=("train", "validation"))
    assert again.splits["validation"].texts == val.texts and again.splits["train"].texts == train.texts
    other = load_data(DataConfig(source=cfg.source, val_fraction=0.2, seed=8, min_held_out=0), need=("validation",))
    assert other.splits["validation"].texts != val.texts


def test_balanced_subsampling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    df = frame(90, classes=("a", "b", "c"))
    df.loc[df.label == "c", "label"] = ["c"] * 5 + ["a"] * 25  # a: 55, b: 30, c: 5
    write_table(df, tmp_path / "train.csv")
    write_table(frame(60, classes=("a", "b", "c"), prefix="t"), tmp_path / "test.csv")
    cfg = DataConfig(source=str(tmp_path), n_train=30, n_eval=12, validation_split="test")
    with caplog.at_level(logging.WARNING, logger="sentilora.data"):
        data = load_data(cfg)
    assert Counter(data.splits["train"].labels) == {0: 10, 1: 10, 2: 5}  # all 5 of the short class
    assert "only 5 rows of class 'c'" in caplog.text
    for split in ("validation", "test"):
        labels = data.splits[split].labels
        assert Counter(labels) == {0: 4, 1: 4, 2: 4} and labels != sorted(labels)
    assert load_data(cfg).splits["train"].texts == data.splits["train"].texts


# ---- read_table / write_table -------------------------------------------------------------------


@pytest.mark.parametrize("ext", TABLE_FORMATS)
def test_table_round_trip(tmp_path: Path, ext: str) -> None:
    df = pd.DataFrame(
        {
            "text": ["NA", "null", 'ünïcode, "quoted"\tand\nnewline', "None"],
            "label": [0, 1, 2, 3],
            "score": [0.25, 0.5, 1e-9, 1 / 3],
            "ok": [True, False, True, True],
        }
    )
    write_table(df, tmp_path / f"out{ext}")
    back = read_table(tmp_path / f"out{ext}")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back.label.dtype == "int64" and back.text.tolist()[:2] == ["NA", "null"]
    assert [p.name for p in tmp_path.iterdir()] == [f"out{ext}"]


def test_txt_round_trip_keeps_empty_lines(tmp_path: Path) -> None:
    _put(tmp_path / "in.txt", "first\r\n\n  second  \nthird")
    df = read_table(tmp_path / "in.txt")
    assert df.text.tolist() == ["first", "", "  second  ", "third"]
    write_table(df, tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "first\n\n  second  \nthird\n"
    assert read_table(tmp_path / "out.txt").equals(df)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    _put(tmp_path / "out.txt", "old\n")
    with pytest.raises(DataError, match=r"out\.txt: a \.txt file holds one column"):
        write_table(pd.DataFrame({"a": [1], "b": [2]}), tmp_path / "out.txt")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and (tmp_path / "out.txt").read_text() == "old\n"
    with pytest.raises(DataError, match=r"out\.xlsx: unsupported file type '\.xlsx'.*\.csv.*\.parquet"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "out.xlsx")


# ---- bad input: one line naming file, row and column, and the fix --------------------------------

GOOD = "text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(4))
BAD_INPUTS = {
    "missing file": ({}, {"source": "nope.csv"}, ["nope.csv", "file not found", "--data.source"]),
    "missing test file": (
        {"r.csv": GOOD},
        {"source": "r.csv", "test_file": "t.csv", "need": ("test",)},
        ["t.csv", "--data.test_file"],
    ),
    "unsupported extension": ({"r.xlsx": "x"}, {"source": "r.xlsx"}, ["r.xlsx", "unsupported", ".csv, .tsv"]),
    "missing text column": (
        {"reviews.csv": "review,sentiment\nok,1\n"},
        {"source": "reviews.csv"},
        ["reviews.csv: no column 'text' (columns: review, sentiment)", "--data.text_column"],
    ),
    "missing label column": (
        {"r.csv": "text,y\na,1\n"},
        {"source": "r.csv"},
        ["r.csv", "'label'", "--data.label_column"],
    ),
    "empty label cell": ({"r.csv": GOOD + "t9,\n"}, {"source": "r.csv"}, ["r.csv row 5, column 'label'", "missing"]),
    "NaN among int labels": (
        {"r.jsonl": '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n'},
        {"source": "r.jsonl"},
        ["r.jsonl row 2, column 'label'", "missing label"],
    ),
    "non-integral label": (
        {"r.csv": "text,label\na,1\nb,0.5\nc,0\n"},
        {"source": "r.csv"},
        ["r.csv row 2, column 'label'", "0.5"],
    ),
    "mixed label kinds": (
        {"r.json": '[{"text": "a", "label": 1}, {"text": "b", "label": "pos"}]'},
        {"source": "r.json"},
        ["r.json row 2, column 'label'", "'pos'", "one kind"],
    ),
    "unknown label in test": (
        {"r.csv": GOOD, "t.csv": "text,label\na,pos\nb,meh\n"},
        {"source": "r.csv", "test_file": "t.csv", "need": ("train", "test")},
        ["t.csv row 2, column 'label'", "unknown label 'meh'", "neg, pos"],
    ),
    "test class absent from train": (
        {"r.csv": "text,label\na,0\nb,1\n", "t.csv": "text,label\na,2\nb,1\nc,2\n"},
        {"source": "r.csv", "test_file": "t.csv", "label_names": ["a", "b", "c"], "need": ("train", "test")},
        ["t.csv row 1 (and 1 more row), column 'label'", "'c'", "not in the train split"],
    ),
    "too few label names": (
        {"r.csv": "text,label\na,0\nb,2\n"},
        {"source": "r.csv", "label_names": ["x", "y"]},
        ["r.csv: labels go from 0 to 2", "--data.label_names", "0..2"],
    ),
    "empty text": ({"r.csv": GOOD + '"",pos\n'}, {"source": "r.csv"}, ["r.csv row 5, column 'text'", "empty text"]),
    "whitespace text, many rows": (
        {"r.tsv": "text\tlabel\nok\tpos\n  \tneg\n \tpos\n\tneg\n"},
        {"source": "r.tsv"},
        ["r.tsv row 2 (and 2 more rows), column 'text'", "empty text"],
    ),
    "number as text": (
        {"r.jsonl": '{"text": "fine", "label": 0}\n{"text": 5, "label": 1}\n'},
        {"source": "r.jsonl"},
        ["r.jsonl row 2, column 'text'", "int 5", "--data.text_column"],
    ),
    "not UTF-8": (
        {"r.csv": b"text,label\nok,pos\n\xff\xfe,neg\n"},
        {"source": "r.csv"},
        ["r.csv: not valid UTF-8 (byte 0xff at offset 18, line 3)", "UTF-8"],
    ),
    "not UTF-8 after a byte order mark": (
        {"r.csv": b"\xef\xbb\xbftext,label\nok,pos\n\xff\xfe,neg\n"},
        {"source": "r.csv"},
        ["r.csv: not valid UTF-8 (byte 0xff at offset 21, line 3)"],
    ),
    "one class": ({"r.csv": "text,label\na,pos\nb,pos\n"}, {"source": "r.csv"}, ["r.csv", "only one class ('pos')"]),
    "empty file": ({"r.csv": ""}, {"source": "r.csv"}, ["r.csv", "empty"]),
    "header only": ({"r.csv": "text,label\n"}, {"source": "r.csv"}, ["r.csv", "no data rows"]),
    "bad JSON": ({"r.json": '[{"text": "a",}]'}, {"source": "r.json"}, ["r.json", "not valid JSON", "line 1"]),
    "txt has no labels": ({"r.txt": "a\nb\n"}, {"source": "r.txt"}, ["r.txt", "no labels"]),
    "empty aclImdb review": (
        {"acl/train/pos/1_9.txt": "great", "acl/train/neg/2_1.txt": " \n"},
        {"source": "acl"},
        ["train/neg/2_1.txt: empty text"],
    ),
    "broken parquet": ({"r.parquet": b"PAR1 not really"}, {"source": "r.parquet"}, ["r.parquet", "Parquet"]),
    "not JSON lines": (
        {"r.jsonl": '{"text": "a", "label": 1}\n{"text": "b", \n'},
        {"source": "r.jsonl"},
        ["r.jsonl line 2", "not valid JSON"],
    ),
    "single file has no test split": (
        {"r.csv": GOOD},
        {"source": "r.csv", "need": ("test",)},
        ["r.csv", "no split 'test'", "--data.test_file"],
    ),
    "no such named split": (
        {"d/train.csv": GOOD, "d/test.csv": GOOD},
        {"source": "d", "validation_split": "dev", "need": ("validation",)},
        ["no split 'dev' (available: test, train)", "--data.validation_split"],
    ),
    "too few rows to carve": ({"r.csv": GOOD}, {"source": "r.csv", "min_held_out": 0, "need": ("validation",)},
                              ["r.csv", "val_fraction"]),
}


@pytest.mark.parametrize("files, cfg, parts", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_message(tmp_path: Path, files: dict, cfg: dict, parts: list[str]) -> None:
    cfg = dict(cfg)
    need = cfg.pop("need", ("train",))
    with pytest.raises(DataError) as e:
        load(tmp_path, files, need=need, **cfg)
    msg = str(e.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def _put(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path
