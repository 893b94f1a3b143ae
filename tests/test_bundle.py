"""Damaged bundles end in one line that names the file and the fix, from the API and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from sentilora import Classifier
from sentilora.bundle import Manifest
from sentilora.cli import app
from sentilora.errors import BundleError


def _copy(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run("bert"), run)
    return run


DAMAGE = {
    "no adapter_config.json": (lambda run: (run / "adapter" / "adapter_config.json").unlink(),
                               ["adapter/adapter_config.json is missing", "Copy the whole bundle folder again"]),
    "adapter_config.json not JSON": (lambda run: (run / "adapter" / "adapter_config.json").write_text("{half"),
                                     ["adapter_config.json: damaged", "re-train"]),
    "no tokenizer": (lambda run: shutil.rmtree(run / "tokenizer"),
                     ["the tokenizer files are missing", "tokenizer"]),
    "manifest is a list": (lambda run: (run / "sentilora.json").write_text("[1, 2]"),
                           ["sentilora.json: the manifest is damaged", "not an object", "Re-create the bundle"]),
    "manifest not JSON": (lambda run: (run / "sentilora.json").write_text('{"kind": "adap'),
                          ["sentilora.json: the manifest is damaged", "Re-create the bundle"]),
    "manifest with an unknown key": (
        lambda run: (run / "sentilora.json").write_text(json.dumps({**json.loads((run / "sentilora.json").read_text()), "x": 1})),
        ["sentilora.json: the manifest is damaged", "unexpected keyword"]),
}


@pytest.mark.parametrize("damage, fragments", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_bundle_is_one_clear_line(trained_run, tmp_path, damage, fragments):
    run = _copy(trained_run, tmp_path)
    damage(run)
    with pytest.raises(BundleError) as e:
        Classifier.load(run)
    message = str(e.value)
    assert "\n" not in message and str(run) in message
    for f in fragments:
        assert f in message, message
    r = CliRunner().invoke(app, ["predict", str(run), "good film"])
    assert r.exit_code == 2 and r.output.startswith("error:") and fragments[0] in r.output.replace("\n", "")


def test_an_error_without_a_message_still_says_what_failed(trained_run, tmp_path, monkeypatch):
    import peft

    run = _copy(trained_run, tmp_path)

    def fail(*args, **kwargs):
        raise RuntimeError()  # some libraries raise with no message at all

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", fail)
    with pytest.raises(BundleError, match=r"adapter does not fit the base model \(RuntimeError\)"):
        Classifier.load(run)


def test_damaged_merged_folder(trained_run, tmp_path):
    from sentilora.bundle import merge_bundle

    merged = merge_bundle(trained_run("bert"), tmp_path / "merged")
    (merged / "model.safetensors").unlink()
    with pytest.raises(BundleError, match=r"merged model files are missing or damaged .*sentilora merge"):
        Classifier.load(merged)


def test_manifest_round_trip_records_the_installed_version(trained_run, tmp_path):
    from importlib.metadata import version

    run = _copy(trained_run, tmp_path)
    man = Manifest.read(run)
    man.save(run)
    assert json.loads((run / "sentilora.json").read_text())["sentilora_version"] == version("sentilora")
