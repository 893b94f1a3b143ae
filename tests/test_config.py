from __future__ import annotations

import pytest

from sentilora.config import Config, TrainConfig, all_options, parse_overrides
from sentilora.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: minilm\nlora:\n  r: 4\n  target_modules: [query]\ntrain:\n  epochs: 5\n")
    cfg = Config.from_yaml(path).override(parse_overrides(["--train.epochs", "2", "--lora.dropout=0.05", "--data.n_train", "100", "--train.lr", "2e-3"]))
    assert cfg.train.lr == 0.002
    assert (cfg.model.name, cfg.lora.r, cfg.lora.target_modules) == ("minilm", 4, ["query"])
    assert (cfg.train.epochs, cfg.lora.dropout, cfg.data.n_train) == (2, 0.05, 100)


def test_round_trip_through_yaml(tmp_path):
    cfg = Config().override({"lora.target_modules": "q_lin,v_lin", "data.label_names": "neg,pos", "train.group_by_length": "false"})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = Config.from_yaml(path)
    assert again == cfg
    assert again.lora.target_modules == ["q_lin", "v_lin"] and again.train.group_by_length is False


def test_none_resets_optional():
    cfg = Config().override({"data.n_train": "10"}).override({"data.n_train": "none"})
    assert cfg.data.n_train is None


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"train.epoch": "3"}, "Did you mean --train.epochs"),
        ({"nosuch.key": "1"}, "unknown option --nosuch.key"),
        ({"train.epochs": "three"}, "--train.epochs must be a whole number"),
        ({"train.lr": "fast"}, "--train.lr must be a number"),
        ({"train.lr": "1e-3x"}, "--train.lr must be a number"),
        ({"model.truncation": "middle"}, "--model.truncation must be one of head_tail, right, left"),
        ({"train.group_by_length": "maybe"}, "--train.group_by_length must be true or false"),
        ({"train.epochs": "0"}, "--train.epochs must be at least 1"),
        ({"train.soup": "0"}, "--train.soup must be at least 1"),
        ({"train.ensemble": "0"}, "--train.ensemble must be at least 1"),
        ({"train.soup": "2", "train.ensemble": "2"}, "set one of them"),
        ({"train.soup": "3", "lora.dora": "true"}, "drop --lora.dora, or combine DoRA models with --train.ensemble"),
        ({"data.val_fraction": "1.5"}, "--data.val_fraction must be between 0 and 1"),
        ({"train.contrastive_ordinal": "1"}, "--train.contrastive_ordinal must be in [0, 1)"),
        ({"train.class_name_texts": "-1"}, "--train.class_name_texts must be 0 (none) or more"),
        ({"train.precision": "fp16", "train.device": "cpu"}, "fp16 needs a CUDA GPU"),
        ({"train.epochs": "three"}, "--train.epochs must be a whole number; got 'three'"),
    ],
)
def test_bad_values_name_the_flag(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        Config().override(overrides)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_several_problems_reported_together():
    with pytest.raises(ConfigError) as e:
        Config(train=TrainConfig(epochs=0, batch_size=0))
    assert "--train.epochs" in str(e.value) and "--train.batch_size" in str(e.value)


def test_unknown_yaml_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown option --train.epochz. Did you mean --train.epochs"):
        Config.from_yaml(path)
    path.write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown section 'trainer'"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match="config file not found"):
        Config.from_yaml(tmp_path / "missing.yaml")
    path.write_text("train:\n  epochs: x\n")  # a bad value names the file it is in
    with pytest.raises(ConfigError, match=r"bad.yaml: --train.epochs must be a whole number"):
        Config.from_yaml(path)
    path.write_text("train: {epochs: 3\nlora: {r: 8}\n")  # broken YAML names the line
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+: "):
        Config.from_yaml(path)


def test_parse_overrides_rejects_stray_arguments():
    with pytest.raises(ConfigError, match="unexpected argument 'epochs'"):
        parse_overrides(["epochs", "3"])
    with pytest.raises(ConfigError, match="--train.epochs needs a value"):
        parse_overrides(["--train.epochs"])


def test_every_option_is_documented():
    opts = all_options()
    assert len(opts) > 30
    assert all(help_text.strip() for *_, help_text in opts)
