from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sentilora.cli import app

runner = CliRunner()
FAST = ["--model.max_length", "32", "--train.epochs", "1", "--train.batch_size", "8", "--train.precision", "fp32",
        "--train.device", "cpu", "--data.val_fraction", "0.25", "--data.min_held_out", "0", "--train.min_steps", "0",
        "--train.contrastive_steps", "0"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_teaches_every_option():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for flag in ("--train.epochs", "--lora.r", "--model.truncation", "--data.source", "--resume"):
        assert flag in result.output


def test_cli_end_to_end(tiny_models, dataset, tmp_path):
    train_csv, test_csv = dataset()
    run = tmp_path / "run"
    r = invoke("train", "--model", tiny_models["bert"], "--data", train_csv, "--data.test_file", test_csv, "--out", run, "--quiet", *FAST)
    assert r.exit_code == 0, r.output
    assert "best epoch 1" in r.output and (run / "sentilora.json").is_file()

    r = invoke("evaluate", run, "--compare-base")
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == 24 and "base_metrics" in metrics
    assert "accuracy" in r.output and "base (untuned)" in r.output

    r = invoke("predict", run, "It was good.", "Not a fan, don't recommend.", "--json")
    assert r.exit_code == 0, r.output
    assert r.output.count('"label"') == 2
    from sentilora import Classifier

    clf = Classifier.load(run)
    printed = _json_lines(r.stdout)
    assert [p["label"] for p in printed] == clf.predict(["It was good.", "Not a fan, don't recommend."])
    np.testing.assert_allclose([list(p["probs"].values()) for p in printed],
                               clf.predict_proba(["It was good.", "Not a fan, don't recommend."]), atol=1e-6)

    # File scoring keeps every row and column, in order, and adds the prediction.
    src = pd.DataFrame({"id": [3, 1, 2], "review": ["great film", "awful plot and boring", "fine"], "extra": ["a", "b", "c"]})
    src.to_csv(tmp_path / "in.csv", index=False)
    r = invoke("predict", run, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.jsonl", "--text-column", "review")
    assert r.exit_code == 0, r.output
    scored = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert list(scored.columns) == ["id", "review", "extra", "pred_label", "prob_negative", "prob_positive", "error"]
    assert scored["id"].tolist() == [3, 1, 2] and set(scored["pred_label"]) <= {"negative", "positive"}
    assert (scored["prob_negative"] + scored["prob_positive"]).round(5).eq(1).all()

    r = invoke("merge", run, tmp_path / "merged")
    assert r.exit_code == 0, r.output
    assert {"model.safetensors", "config.json", "sentilora.json"} <= {p.name for p in (tmp_path / "merged").iterdir()}
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    r = invoke("predict", tmp_path / "merged", "great film", "--json")
    assert r.exit_code == 0 and '"label"' in r.output
    [merged] = _json_lines(r.stdout)
    np.testing.assert_allclose(list(merged["probs"].values()), clf.predict_proba(["great film"])[0], atol=1e-4)


def _json_lines(stdout: str) -> list[dict]:
    """What `predict --json` printed, read as JSON Lines: every line one complete object, nothing else."""
    lines = stdout.splitlines()
    assert lines and all(line.startswith("{") and line.endswith("}") for line in lines), stdout
    return [json.loads(line) for line in lines]


def _write(path, content: bytes | str):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


BAD_INPUTS = [
    # (file content, extra flags, fragments the one-line error must contain)
    ("text,label\ngood film,1\nbad film,0\n", ["--data.text_column", "review"], ["train.csv", "no column 'review'", "--data.text_column"]),
    ("text,label\ngood film,1\nbad film,\nok,0\n", [], ["train.csv", "row 2", "'label'"]),
    ("text,label\ngood film,1\n   ,0\nok,0\n", [], ["train.csv", "row 2", "'text'"]),
    ("text,label\ngood film,1\nbad film,1\n", [], ["train.csv", "only one class"]),
    (b"text,label\ngood film,1\nbad \xff film,0\n", [], ["train.csv", "UTF-8"]),
    ("text,label\ngood film,1\nbad film,0.5\n", [], ["train.csv", "row 2", "'label'"]),
]


@pytest.mark.parametrize("content, flags, fragments", BAD_INPUTS, ids=["column", "nan-label", "blank-text", "one-class", "bytes", "half-label"])
def test_bad_training_data_is_one_clear_line(tiny_models, tmp_path, content, flags, fragments):
    train_csv = _write(tmp_path / "train.csv", content)
    run = tmp_path / "run"
    r = invoke("train", "--model", tiny_models["bert"], "--data", train_csv, "--out", run, *FAST, *flags)
    assert r.exit_code == 2
    message = r.output.strip()
    assert message.startswith("error:") and "\n" not in message, message
    for f in fragments:
        assert f in message, message
    assert not run.exists()  # nothing half-written


def test_missing_file_and_unknown_flag(tiny_models, tmp_path):
    r = invoke("train", "--model", tiny_models["bert"], "--data", tmp_path / "nope.csv", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "nope.csv" in r.output and "not found" in r.output
    r = invoke("train", "--out", tmp_path / "run", "--train.epoks", "2")
    assert r.exit_code == 2 and "Did you mean --train.epochs" in r.output
    assert not (tmp_path / "run").exists()


def test_predict_and_evaluate_errors(tmp_path):
    r = invoke("predict", tmp_path / "missing", "hello")
    assert r.exit_code == 2 and "no such run folder" in r.output
    (tmp_path / "half").mkdir()
    r = invoke("evaluate", tmp_path / "half")
    assert r.exit_code == 2 and "not a sentilora bundle" in r.output and "--resume" not in r.output
    (tmp_path / "half" / "config.yaml").write_text("{}\n")  # what an interrupted training run leaves
    r = invoke("evaluate", tmp_path / "half")
    assert r.exit_code == 2 and "interrupted run" in r.output and "--resume" in r.output
    (tmp_path / "f.csv").write_text("text\nhi\n")
    r = invoke("evaluate", tmp_path / "f.csv")
    assert r.exit_code == 2 and "is a file, not a run folder" in r.output
    r = invoke("predict", tmp_path / "half")
    assert r.exit_code == 2 and "give either texts" in r.output


def test_preset_then_yaml_then_flags(tiny_models, dataset, tmp_path):
    import yaml

    train_csv, test_csv = dataset()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  epochs: 1\n")  # overrides the preset's 3 epochs
    run = tmp_path / "run"
    flags = [f for f in FAST if f not in ("--train.epochs", "1")]
    r = invoke("train", "--preset", "fast", "--config", cfg_file, "--model", tiny_models["bert"], "--data", train_csv,
               "--data.test_file", test_csv, "--out", run, "--quiet", *flags, "--lora.layers", "1")
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["cache_prefix"] is True  # from the preset
    assert saved["train"]["epochs"] == 1  # YAML over preset
    assert saved["lora"]["layers"] == 1 and saved["model"]["max_length"] == 32  # flags over both
    bad = runner.invoke(app, ["train", "--preset", "turbo", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown preset; choose one of auto, fast, accurate" in bad.output


def test_predict_max_length(trained_run):
    run = trained_run("bert")  # trained on 32 tokens; the tiny encoder takes 128
    long = " ".join(["a good film with a weak ending"] * 40)
    r = invoke("predict", run, long, "--json", "--max-length", "16")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["label"] in ("negative", "positive")
    r = invoke("predict", run, long, "--max-length", "500")
    assert r.exit_code == 2 and "--max-length 500: this model reads 8 to 128 tokens per text" in r.output


def test_file_system_errors_are_one_line(trained_run, tmp_path, monkeypatch):
    import errno

    from sentilora import scoring

    run = trained_run("bert")
    r = invoke("predict", run, "--input", tmp_path / "missing.csv", "--output", tmp_path / "out.csv")
    assert r.exit_code == 2 and r.output.startswith("error:") and "missing.csv: file not found" in r.output
    r = invoke("predict", run, "--input", tmp_path, "--output", tmp_path / "out.csv")
    assert r.exit_code == 2 and "is a folder, not a file" in r.output
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["good", "bad"]}).to_csv(src, index=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    r = invoke("predict", run, "--input", src, "--output", blocker / "out.csv")
    assert r.exit_code == 2 and r.output.startswith("error:") and "blocker" in r.output and "Traceback" not in r.output

    def disk_full(df, path, *, first):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(scoring, "_write_part", disk_full)
    r = invoke("predict", run, "--input", src, "--output", tmp_path / "full.csv")
    message = r.output.strip()
    assert r.exit_code == 2 and "\n" not in message
    assert "part-000000.csv: no space left on the device; free some space or write elsewhere." in message
    assert not (tmp_path / "full.csv.parts").exists()  # nothing finished, nothing to resume: the next run starts clean


def test_predict_file_mistakes_do_not_block_the_next_run(trained_run, tmp_path):
    run = trained_run("bert")
    good = tmp_path / "test.csv"
    pd.DataFrame({"text": ["a good film", "dull and boring"]}).to_csv(good, index=False)
    (tmp_path / "header_only.csv").write_text("text,label\n")
    r = invoke("predict", run, "--input", tmp_path / "header_only.csv", "--output", tmp_path / "o8.csv")
    assert r.exit_code == 2 and r.output.startswith("error:") and "no rows to score" in r.output
    r = invoke("predict", run, "--input", good, "--output", tmp_path / "o8.csv", "--text-column", "review")
    assert r.exit_code == 2 and "no column 'review'" in r.output
    r = invoke("predict", run, "--input", good, "--output", tmp_path / "o8.csv")
    assert r.exit_code == 0, r.output  # before: "o8.csv.parts: an unfinished job is there"
    assert len(pd.read_csv(tmp_path / "o8.csv")) == 2 and not (tmp_path / "o8.csv.parts").exists()


def test_predict_refuses_to_overwrite_its_input(trained_run, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a good film", "dull"]}).to_csv(src, index=False)
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    r = invoke("predict", trained_run("bert"), "--input", src, "--output", "./in.csv")
    assert r.exit_code == 2 and r.output.startswith("error:") and "that is the --input file" in r.output
    assert len(r.output.strip().splitlines()) == 1 and src.read_bytes() == before


@pytest.mark.parametrize("flag", ["--batch-size", "--max-length", "--threads", "--chunk-rows"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_predict_refuses_non_positive_counts(trained_run, flag, value):
    r = invoke("predict", trained_run("bert"), "good", flag, value)
    assert r.exit_code == 2 and r.output.startswith(f"error: {flag} {value}: must be at least 1")


def test_predict_says_a_file_is_not_a_run_folder(tmp_path):
    f = tmp_path / "reviews.csv"
    f.write_text("text\ngood\n")
    r = invoke("predict", f, "good")
    assert r.exit_code == 2 and "reviews.csv: is a file, not a run folder" in r.output and "--input" in r.output


def test_predict_json_is_json_lines(trained_run):
    texts = ["a good film " * 30, 'she said "dull" [twice]', "café ünïcode"]
    r = invoke("predict", trained_run("bert"), *texts, "--json")
    assert r.exit_code == 0, r.output
    rows = _json_lines(r.stdout)  # before: rich's pretty-printed objects, several lines each
    assert [row["text"] for row in rows] == texts and all(set(row) == {"text", "label", "probs"} for row in rows)


def test_predict_counts_rows_in_good_english(trained_run, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2], "text": ["a good film", ""]}).to_csv(src, index=False)
    r = invoke("predict", trained_run("bert"), "--input", src, "--output", tmp_path / "out.csv")
    assert r.exit_code == 0, r.output
    said = " ".join(r.stdout.split())  # rich wraps long lines
    assert said.startswith("scored 2 rows ->") and said.endswith("; 1 row could not be scored (see the error column)")


def test_version_prints_the_installed_version():
    from sentilora.bundle import sentilora_version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"sentilora {sentilora_version()}"


def test_help_joins_the_lines_wrapped_in_the_source_and_keeps_examples():
    r = runner.invoke(app, ["predict", "--help"], terminal_width=300, env={"COLUMNS": "300"})
    assert r.exit_code == 0
    assert "into a Parquet folder with the same rows and columns" in r.output  # a line break in the docstring
    example = next(line for line in r.output.splitlines() if "Examples: sentilora predict runs/demo" in line)
    assert "--input" not in example  # the second example stays on a line of its own
