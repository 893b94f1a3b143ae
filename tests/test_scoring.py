from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sentilora import Classifier
from sentilora import scoring
from sentilora.tables import read_table, write_table
from sentilora.errors import DataError
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


def test_killed_job_resumes_to_identical_bytes(clf, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    write_table(_input(95), src)
    score_file(clf, src, tmp_path / "straight.csv", text_column="review", chunk_rows=10)

    real_write = scoring._write_part
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dying_write(df, path, *, first):
        calls["n"] += 1
        if calls["n"] in (4, 8):
            path.with_name(f".{path.name}.tmp").write_text("half a chunk")  # what a kill mid-write leaves
            raise Killed
        real_write(df, path, first=first)

    monkeypatch.setattr(scoring, "_write_part", dying_write)
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
