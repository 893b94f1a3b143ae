"""--train.soup: several models trained with different seeds, averaged weight by weight into one bundle."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from sentilora.bundle import MANIFEST, adapter_config, average_adapters
from sentilora.config import Config
from sentilora.errors import BundleError
from sentilora.predict import Classifier
from sentilora.train import train

def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The merged model's weights (LoRA folded in), as prediction uses them."""
    return Classifier.load(folder, precision="fp32").model.state_dict()


def _copy_manifest_and_tokenizer(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    shutil.copy2(src / MANIFEST, dst / MANIFEST)


def test_the_soup_is_the_mean_of_its_models_weights(two_runs, tmp_path):
    runs = [Path(two_runs["a"]), Path(two_runs["b"])]
    soup = tmp_path / "soup"
    average_adapters(runs, soup / "adapter")
    _copy_manifest_and_tokenizer(runs[0], soup)
    assert adapter_config(soup)["r"] == 2 * adapter_config(runs[0])["r"]  # the members' ranks side by side
    a, b, got = _weights(runs[0]), _weights(runs[1]), _weights(soup)
    changed = 0
    for name, w in got.items():
        if w.is_floating_point():
            torch.testing.assert_close(w, (a[name] + b[name]) / 2, rtol=1e-5, atol=1e-6, msg=name)
            changed += not torch.equal(a[name], b[name])
    assert changed > 2  # the two runs differ (LoRA layers and the head), so the mean is a new model


def test_only_runs_of_one_shape_are_averaged(two_runs, tmp_path):
    other = tmp_path / "other"
    import shutil

    shutil.copytree(two_runs["b"], other)
    config = json.loads((other / "adapter" / "adapter_config.json").read_text())
    (other / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "r": config["r"] * 2}))
    with pytest.raises(BundleError, match="not shaped like"):
        average_adapters([Path(two_runs["a"]), other], tmp_path / "soup" / "adapter")
    assert not (tmp_path / "soup" / "adapter").exists()  # nothing half-written


def test_a_soup_run_keeps_every_model_and_predicts_with_their_average(tiny_models, dataset, tmp_path, caplog):
    train_csv, test_csv = dataset()
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.soup": 2, "train.max_minutes": 10})
    with caplog.at_level(logging.INFO, logger="sentilora.train"):
        result = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    members = [run / "members" / "seed-42", run / "members" / "seed-43"]
    assert all((m / MANIFEST).is_file() and (m / "history.json").is_file() for m in members)  # each a loadable bundle
    assert yaml.safe_load((members[1] / "config.yaml").read_text())["train"]["max_minutes"] == 5  # the budget is shared
    history = json.loads((run / "history.json").read_text())
    assert [m["seed"] for m in history["soup"]["members"]] == [42, 43]
    assert result.models == 2 and result.best_metrics == history["soup"]["validation"]
    assert set(history["soup"]["validation"]) == {"accuracy", "f1", "loss"}
    assert "soup of 2 models: validation accuracy" in caplog.text
    # the bundle in the run folder is exactly the members' average
    a, b, got = _weights(members[0]), _weights(members[1]), _weights(run)
    name = next(n for n in got if "query" in n and n.endswith("weight"))
    torch.testing.assert_close(got[name], (a[name] + b[name]) / 2, rtol=1e-5, atol=1e-6)
    assert Classifier.load(run).predict(["great wonderful film"])[0] in ("negative", "positive")


def test_an_interrupted_soup_resumes_with_the_models_left(tiny_models, dataset, tmp_path):
    train_csv, test_csv = dataset()
    cfg = tiny_config(tiny_models["bert"], train_csv, test_csv, **{"train.soup": 2})
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    before = _weights(run)
    # as if stopped after the first model: the second model and the average are not there yet
    import shutil

    shutil.rmtree(run / "members" / "seed-43")
    (run / "members" / "seed-43").mkdir()  # stopped before its first checkpoint
    (run / "members" / "seed-43" / "config.yaml").write_text("")
    history = json.loads((run / "history.json").read_text())
    del history["soup"]
    (run / "history.json").write_text(json.dumps(history))
    first = (run / "members" / "seed-42" / "adapter" / "adapter_model.safetensors").read_bytes()
    result = train(Config(), run, resume=True, progress=False)
    assert result.models == 2 and (run / "members" / "seed-43" / MANIFEST).is_file()
    assert (run / "members" / "seed-42" / "adapter" / "adapter_model.safetensors").read_bytes() == first  # not retrained
    after = _weights(run)
    for name, w in after.items():  # training is deterministic on a CPU: the same soup again
        if w.is_floating_point():
            torch.testing.assert_close(w, before[name], msg=name)
