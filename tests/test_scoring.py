from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sentilora import Classifier
from sentilora import scoring
from sentilora.tables import read_table, write_table
from sentilora.errors import DataError, OutputError
from sentilora.scoring import score_file


@pytest.fixture(scope="module")
def clf(trained_run):
    return Classifier.load(trained_run("distilbert"), precision="fp32")


def _input(n: int = 53) -> pd.DataFrame:
    import conftest

    df = conftest.make_rows(n, ["negative", "positive"], seed=5).rename(columns={"text": "review"})
    df.insert(0, "id", range(1000, 1000 + n))
    return df


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_every_row_once_in_order(clf, tmp_path, ext):
    df = _input()
    df.loc[[4, 17], "review"] = ["", "   "]  # bad rows are marked, not fatal
    src = tmp_path / f"in{ext}"
    write_table(df, src)
    res = score_file(clf, src, tmp_path / f"out{ext}", text_column="review", chunk_rows=10)
    assert (res.rows, res.bad_rows, res.chunks) == (53, 2, 6)
    out = read_table(tmp_path / f"out{ext}")
    assert list(out.columns) == ["id", "review", "label", "pred_label", "prob_negative", "prob_positive", "error"]
    assert out["id"].tolist() == df["id"].tolist()
    assert out["error"].fillna("").tolist()[4] == "empty text" and out["error"].fillna("").tolist()[17] == "empty text"
    assert out["pred_label"].isna().sum() == 2
    good = out.drop(index=[4, 17])
    np.testing.assert_allclose(good["prob_negative"] + good["prob_positive"], 1, atol=1e-5)
    expected = clf.predict([t for i, t in enumerate(df["review"]) if i not in (4, 17)])
    assert good["pred_label"].tolist() == expected
    assert not (tmp_path / f"out{ext}.parts").exists()


class Killed(Exception):
    pass


def _die_on_writes(monkeypatch, dies, error) -> None:
    """Make the part writer raise `error` on the calls (1-based) for which `dies(n)` is true, leaving a half temp file."""
    real_write, calls = scoring._write_part, {"n": 0}

    def dying_write(df, path, *, first):
        calls["n"] += 1
        if dies(calls["n"]):
            path.with_name(f".{path.name}.tmp").write_text("half a chunk")  # what a kill mid-write leaves
            raise error
        real_write(df, path, first=first)

    monkeypatch.setattr(scoring, "_write_part", dying_write)


def test_killed_job_resumes_to_identical_bytes(clf, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    write_table(_input(95), src)
    score_file(clf, src, tmp_path / "straight.csv", text_column="review", chunk_rows=10)

    _die_on_writes(monkeypatch, lambda n: n in (4, 8), Killed)
    out = tmp_path / "resumed.csv"
    with pytest.raises(Killed):
        score_file(clf, src, out, text_column="review", chunk_rows=10)
    assert not out.exists()
    with pytest.raises(DataError, match="Add --resume"):
        score_file(clf, src, out, text_column="review", chunk_rows=10)
    with pytest.raises(Killed):
        score_file(clf, src, out, text_column="review", chunk_rows=10, resume=True)
    manifest = json.loads((tmp_path / "resumed.csv.parts" / "manifest.json").read_text())
    assert len(manifest["parts"]) == 6
    res = score_file(clf, src, out, text_column="review", chunk_rows=10, resume=True)
    assert res.resumed_chunks == 6 and res.rows == 95
    assert out.read_bytes() == (tmp_path / "straight.csv").read_bytes()


def test_resume_refuses_a_changed_job(clf, tmp_path, monkeypatch):
    src = tmp_path / "in.jsonl"
    write_table(_input(30), src)
    monkeypatch.setattr(scoring, "_join", lambda parts, output: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        score_file(clf, src, tmp_path / "out.jsonl", text_column="review", chunk_rows=10)
    with pytest.raises(DataError, match="another input, model or settings"):
        score_file(clf, src, tmp_path / "out.jsonl", text_column="review", chunk_rows=7, resume=True)


def test_scoring_errors(clf, tmp_path):
    src = tmp_path / "in.csv"
    write_table(_input(5), src)
    with pytest.raises(DataError, match="no column 'text'.*--text-column"):
        score_file(clf, src, tmp_path / "out.csv")
    with pytest.raises(DataError, match="several columns"):
        score_file(clf, src, tmp_path / "out.txt", text_column="review")
    with pytest.raises(DataError, match="file not found"):
        score_file(clf, tmp_path / "missing.csv", tmp_path / "out.csv")


def _interrupted(clf, tmp_path, monkeypatch, *, n: int = 45, parts: int = 3):
    """A job killed after `parts` finished chunks of 10 rows; returns (input, output, parts folder)."""
    src = tmp_path / "in.csv"
    write_table(_input(n), src)
    real_write = scoring._write_part
    _die_on_writes(monkeypatch, lambda n: n > parts, KeyboardInterrupt)
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        score_file(clf, src, out, text_column="review", chunk_rows=10)
    monkeypatch.setattr(scoring, "_write_part", real_write)
    return src, out, tmp_path / "out.csv.parts"


def test_resume_refuses_a_missing_part(clf, tmp_path, monkeypatch):
    src, out, parts = _interrupted(clf, tmp_path, monkeypatch)
    (parts / "part-000001.csv").unlink()  # before: the later parts shifted down a place, 10 rows lost
    with pytest.raises(DataError, match=r"part-000001.csv \(rows 11-20\) is missing"):
        score_file(clf, src, out, text_column="review", chunk_rows=10, resume=True)
    assert not out.exists()


def test_resume_refuses_a_foreign_part(clf, tmp_path, monkeypatch):
    src, out, parts = _interrupted(clf, tmp_path, monkeypatch)
    # a part from another job over the same columns (other rows): before, its rows were joined in
    other = tmp_path / "other"
    other.mkdir()
    _, _, other_parts = _interrupted(clf, other, monkeypatch, n=60)
    (parts / "part-000002.csv").write_bytes((other_parts / "part-000002.csv").read_bytes().replace(b"10", b"11"))
    with pytest.raises(DataError, match=r"part-000002.csv: not the part this job wrote"):
        score_file(clf, src, out, text_column="review", chunk_rows=10, resume=True)


def test_resume_checks_each_part_against_the_input_rows(clf, tmp_path, monkeypatch):
    src, out, parts = _interrupted(clf, tmp_path, monkeypatch)
    state = json.loads((parts / "manifest.json").read_text())
    assert [(p["first_row"], p["rows"]) for p in state["parts"]] == [(0, 10), (10, 10), (20, 10)]
    state["parts"][1]["input_hash"] = "0" * 16  # as if part 1 had been scored from other rows
    (parts / "manifest.json").write_text(json.dumps(state))
    with pytest.raises(DataError, match=r"part-000001.csv: scored rows 11-20 of another input"):
        score_file(clf, src, out, text_column="review", chunk_rows=10, resume=True)


def test_a_later_jsonl_chunk_without_the_text_field(clf, tmp_path):
    rows = [{"id": i, "review": "a good film" if i % 3 else "dull"} for i in range(25)]
    for r in rows[10:20]:
        del r["review"]  # the whole second chunk lacks the field (before: KeyError)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = score_file(clf, src, tmp_path / "out.csv", text_column="review", chunk_rows=10)
    out = read_table(tmp_path / "out.csv")
    assert (res.rows, res.bad_rows) == (25, 10)
    assert out["id"].tolist() == list(range(25)) and list(out.columns)[:2] == ["id", "review"]
    assert out.loc[10:19, "error"].tolist() == ["empty text"] * 10 and out.loc[10:19, "pred_label"].isna().all()
    assert out.loc[20:, "pred_label"].notna().all()


def _unscorable(tmp_path, case: str):
    """Input files a job cannot score, as users hand them over."""
    src = tmp_path / ("bad.jsonl" if case == "bad byte in a later chunk" else "bad.csv")
    if case == "wrong column":
        write_table(_input(5), src)  # the text is in 'review', the job asks for 'text'
    elif case == "empty":
        src.write_bytes(b"")
    elif case == "header only":
        src.write_text("text,label\n")
    elif case == "latin-1":
        src.write_bytes("text\ncaf\xe9 was good\n".encode("latin-1"))
    elif case == "tsv as csv":
        src.write_text("text\tlabel\ngood film\tpositive\n")  # one column named 'text\tlabel'
    elif case == "bad byte in a later chunk":
        src.write_bytes(b'{"text": "a good film"}\n' * 25 + b'{"text": "caf\xe9"}\n')  # read line by line: chunk 3 fails
    return src


@pytest.mark.parametrize("case, message", [
    ("wrong column", "no column 'text'"), ("empty", "the file is empty"), ("header only", "no rows to score"),
    ("latin-1", "not valid UTF-8"), ("tsv as csv", "no column 'text'"), ("bad byte in a later chunk", "line 26"),
])
def test_an_unscorable_input_leaves_nothing_that_blocks_the_next_run(clf, tmp_path, case, message):
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match=message):
        score_file(clf, _unscorable(tmp_path, case), out, chunk_rows=10)
    assert not (tmp_path / "out.csv.parts").exists() and not out.exists()
    good = tmp_path / "in.csv"
    write_table(pd.DataFrame({"text": ["a good film", "dull"]}), good)
    assert score_file(clf, good, out).rows == 2  # before: "an unfinished job is there", and --resume refused it too


def test_an_empty_parts_folder_does_not_block(clf, tmp_path):
    src = tmp_path / "in.csv"
    write_table(_input(5), src)
    (tmp_path / "out.csv.parts").mkdir()  # what a failed run of an older version left
    assert score_file(clf, src, tmp_path / "out.csv", text_column="review").rows == 5


def test_output_over_the_input_is_refused(clf, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    write_table(_input(5), src)
    before = src.read_bytes()
    (tmp_path / "link.csv").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    for output in (src, "in.csv", tmp_path / "link.csv"):
        with pytest.raises(OutputError, match="that is the --input file"):
            score_file(clf, src, output, text_column="review")
    assert src.read_bytes() == before and not (tmp_path / "in.csv.parts").exists()
