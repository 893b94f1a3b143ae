"""The Ray engine (`predict --engine ray`) on a local Ray with 2 CPUs: the same rows, order, columns and
predictions as the local engine, a row_id, atomic output folders, and clear errors. Ray starts once
for the module (a few seconds); each scoring job starts its own actors, which load the tiny model."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sentilora import ray_engine
from sentilora.cli import app
from sentilora.tables import write_table
from sentilora.errors import DataError, SentiloraError
from sentilora.predict import Classifier
from sentilora.ray_engine import chunk_plan, parse_actors, score_file_ray
from sentilora.scoring import score_file

PREDICTIONS = ["pred_label", "prob_negative", "prob_positive", "error"]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'sentilora[ray]'")
    pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install 'sentilora[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run("distilbert")


def _input(n: int = 47) -> pd.DataFrame:
    import conftest

    df = conftest.make_rows(n, ["negative", "positive"], seed=5).rename(columns={"text": "review"})
    df.insert(0, "id", range(1000, 1000 + n))
    df.loc[4, "review"] = ""  # bad rows: marked in `error`, never fatal
    df.loc[17, "review"] = "   "
    df.loc[30, "review"] = None
    df.loc[33, "review"] = "NA"  # text, as the local engine reads it (only empty cells are missing)
    return df


def _same_as_local(ray_out: pd.DataFrame, local: pd.DataFrame) -> None:
    assert ray_out["row_id"].tolist() == list(range(len(local)))
    assert list(ray_out.columns) == ["row_id", *local.columns]
    for col in local.columns:
        if col.startswith("prob_"):
            np.testing.assert_allclose(ray_out[col], local[col], atol=1e-5)  # NaN == NaN for bad rows
        else:
            norm = lambda s: [None if pd.isna(v) else v for v in s]  # noqa: E731  (None vs NaN for missing)
            assert norm(ray_out[col]) == norm(local[col]), col


def test_chunk_plan_cuts_at_the_local_engines_boundaries():
    # blocks of 7, 0, 5 and 9 rows in chunks of 4: row ranges 0-3, 4-7, ... like the local engine's chunks
    assert chunk_plan([7, 0, 5, 9], 4) == [
        (0, [(0, 0, 4)]), (4, [(0, 4, 7), (2, 0, 1)]), (8, [(2, 1, 5)]), (12, [(3, 0, 4)]), (16, [(3, 4, 8)]), (20, [(3, 8, 9)]),
    ]
    assert chunk_plan([], 4) == [] and chunk_plan([3], 10) == [(0, [(0, 0, 3)])]


def test_parse_actors():
    assert parse_actors(None) is None and parse_actors("3") == 3 and parse_actors("2-8") == (2, 8)
    for bad in ("0", "x", "8-2", "-1"):
        with pytest.raises(SentiloraError, match="--ray-actors"):
            parse_actors(bad)


def _local_engine(run, src, out):
    score_file(Classifier.load(run, precision="fp32"), src, out, text_column="review", chunk_rows=10)
    return pd.read_parquet(out)


@pytest.mark.parametrize("fmt, actors", [("jsonl", 1), ("parquet-folder", 2)])
def test_same_rows_order_and_predictions_as_the_local_engine(local_ray, run, tmp_path, fmt, actors):
    df = _input()
    if fmt == "parquet-folder":  # several files: read in name order; markers and hidden files skipped
        src = tmp_path / "in"
        src.mkdir()
        for i, (lo, hi) in enumerate([(0, 12), (12, 13), (13, 47)]):
            df.iloc[lo:hi].to_parquet(src / f"part-{i}.parquet", index=False)
        (src / "_SUCCESS").write_text("")
        (src / ".part-9.parquet.crc").write_text("x")
        df.to_parquet(tmp_path / "whole.parquet", index=False)
        local = _local_engine(run, tmp_path / "whole.parquet", tmp_path / "local.parquet")
    else:
        src = tmp_path / f"in.{fmt}"
        write_table(df, src)
        local = _local_engine(run, src, tmp_path / "local.parquet")

    res = score_file_ray(run, src, tmp_path / "out.parquet", text_column="review", chunk_rows=10, precision="fp32", actors=actors)
    assert (res.rows, res.bad_rows, res.chunks) == (47, 3, 5)  # 5 chunks of <= 10 rows, one file each
    out = pd.read_parquet(tmp_path / "out.parquet")
    _same_as_local(out, local)
    assert out.loc[[4, 17, 30], "error"].tolist() == ["empty text"] * 3 and out.loc[33, "pred_label"] is not None
    assert (tmp_path / "out.parquet" / "_SUCCESS").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_cli_scores_csv_like_the_local_engine_and_leaves_nothing_on_failure(local_ray, run, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    write_table(_input(), src)
    out = tmp_path / "scored.parquet"
    r = CliRunner().invoke(app, ["predict", str(run), "--input", str(src), "--output", str(out), "--text-column", "review",
                                 "--engine", "ray", "--ray-actors", "1", "--threads", "1", "--chunk-rows", "10",
                                 "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert "scored 47 rows" in r.output and "3 rows could not be scored" in r.output
    _same_as_local(pd.read_parquet(out), _local_engine(run, src, tmp_path / "local.parquet"))

    def broken_check(*args, **kwargs):
        raise SentiloraError("simulated failure after the write")

    monkeypatch.setattr(ray_engine, "check_output", broken_check)
    with pytest.raises(SentiloraError, match="simulated"):
        score_file_ray(run, src, tmp_path / "again.parquet", text_column="review", actors=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "local.parquet", "scored.parquet"]  # no temp folder


def test_unreadable_or_empty_input_is_one_clear_error(local_ray, run, tmp_path):
    (tmp_path / "latin1.csv").write_bytes(b"id,review\n1,caf\xe9\n")
    (tmp_path / "header-only.csv").write_text("id,review\n")
    for name, message in [("latin1.csv", "could not read as CSV"), ("header-only.csv", "no rows to score")]:
        with pytest.raises(DataError, match=message):
            score_file_ray(run, tmp_path / name, tmp_path / "out.parquet", text_column="review")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["header-only.csv", "latin1.csv"]


def test_errors_before_any_work(run, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    write_table(_input(5), src)
    (tmp_path / "taken.parquet").mkdir()
    cases = [
        (dict(input_path=tmp_path / "missing.csv"), DataError, "file not found"),
        (dict(output_path=tmp_path / "taken.parquet"), DataError, "already exists"),
        (dict(output_path=tmp_path / "out.csv"), DataError, "folder of Parquet files"),
        (dict(input_path=tmp_path / "in.csv", chunk_rows=0), DataError, "--chunk-rows"),
    ]
    for kwargs, error, message in cases:
        args = {"input_path": src, "output_path": tmp_path / "out.parquet", **kwargs}
        with pytest.raises(error, match=message):
            score_file_ray(run, args.pop("input_path"), args.pop("output_path"), **args)
    invoke = lambda *a: CliRunner().invoke(app, ["predict", str(run), *map(str, a)])  # noqa: E731
    for argv, message in [
        (["--input", src, "--output", tmp_path / "o.parquet", "--engine", "ray", "--resume"],
         "--resume belongs to the local engine"),
        (["It was good.", "--engine", "ray"], "--engine ray scores files"),
        (["--input", src, "--output", tmp_path / "o.csv", "--ray-actors", "2"], "need --engine ray"),
        (["--input", src, "--output", tmp_path / "o.parquet", "--engine", "spark"], "--engine must be local or ray"),
    ]:
        r = invoke(*argv)
        assert r.exit_code == 2 and message in r.output, r.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = invoke("--input", src, "--output", tmp_path / "o.parquet", "--engine", "ray")
    assert r.exit_code == 2 and "pip install 'sentilora[ray]'" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "taken.parquet"]
