"""Data-parallel training: 2 processes on CPU (gloo) started the way users start them.

Each launch costs about 10 s of imports on 2 cores, so the file makes four: the collectives on their
own, the CLI under torchrun (compared with a one-process run), a run interrupted under torchrun, and
its resume under accelerate launch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_rows
from test_train import BUNDLE_FILES, TEXTS, _files

from sentilora import Classifier
from sentilora.checkpoint import latest
from sentilora.config import Config, parse_overrides
from sentilora.distributed import Dist
from sentilora.errors import SentiloraError
from sentilora.train import epoch_batches, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

# 49 training rows (66 less a quarter for validation): the last global batch of 2 x 8 holds one
# text, so one process has an empty share; 17 validation rows split 9 / 8. LoRA in the top layer
# only, so the frozen-prefix cache is on.
FLAGS = ["--model.max_length", "32", "--train.epochs", "3", "--train.precision", "fp32", "--train.device", "cpu",
         "--data.val_fraction", "0.25", "--data.min_held_out", "0", "--train.min_steps", "0", "--train.contrastive_steps", "0", "--train.lr", "5e-2",
         "--lora.layers", "1"]
TIMEOUT = 180


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _launch(cmd: list[str], *, expect_ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT)
    if expect_ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def _history(run: Path) -> dict:
    return json.loads((run / "history.json").read_text())


@pytest.fixture(scope="module")
def work(tiny_models, tmp_path_factory) -> Path:
    """A tiny BERT without dropout in its layers (so 1 and 2 processes can agree to float precision) and data."""
    root = tmp_path_factory.mktemp("ddp")
    model = shutil.copytree(tiny_models["bert"], root / "bert")
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    make_rows(66, ["negative", "positive"], seed=1).to_csv(root / "train.csv", index=False)
    make_rows(24, ["negative", "positive"], seed=2).to_csv(root / "test.csv", index=False)
    return root


def _data_flags(work: Path) -> list[str]:
    return ["--model.name", work / "bert", "--data.source", work / "train.csv", "--data.test_file", work / "test.csv", *FLAGS]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("group", [True, False])
def test_every_row_goes_to_one_process_and_steps_are_equal(world, group):
    lengths = list(np.random.default_rng(0).integers(5, 500, size=203))
    batches = epoch_batches(lengths, 5 * world, seed=3, epoch=1, group_by_length=group)  # global batches
    shares = [[Dist(rank=r, world_size=world).mine(b) for b in batches] for r in range(world)]
    assert {len(s) for s in shares} == {len(batches)}  # the same number of steps on every process
    rows = sorted(i for s in shares for b in s for i in b)
    assert rows == list(range(203))  # each row once per epoch, on exactly one process
    for step in zip(*shares):
        assert max(map(len, step)) - min(map(len, step)) <= 1
    if group and world > 1:
        # shares of one length-grouped batch have similar lengths: no process waits long for another
        gaps = [np.ptp([max(lengths[i] for i in b) for b in step if b]) for step in zip(*shares)]
        assert np.mean(gaps) < 0.1 * np.ptp(lengths)


COLLECTIVES = '''
import json, sys, weakref
from pathlib import Path
import torch
from sentilora.distributed import process_group
from sentilora.errors import DataError

with process_group() as dd:
    res = {"rank": dd.rank, "world": dd.world_size}
    p = torch.nn.Parameter(torch.zeros(3))
    if dd.rank == 0:  # rank 1 had no texts in this step: its missing gradient counts as zeros
        p.grad = torch.tensor([1.0, 2.0, 3.0])
    res["loss"] = dd.sum_grads([p], 0.5 + dd.rank)
    res["grad"] = p.grad.tolist()
    res["any"] = [dd.any(dd.rank == 1), dd.any(False)]
    res["gather"] = dd.all_gather(dd.rank * 10)

    def load():
        if dd.rank == 1:
            raise DataError("train.csv row 7, column 'label': missing label.")
        return "loaded"

    for name, fn in (("everywhere", lambda: dd.everywhere(load)), ("on_main", lambda: dd.on_main(load))):
        try:
            res[name] = fn()
        except DataError as e:
            res[name] = "DataError: " + str(e)
    res["after"] = dd.broadcast("nobody hung" if dd.is_main else None)
    import torch.distributed.nn.functional  # as transformers does while loading a model
    group = weakref.ref(torch.distributed.group.WORLD)

torch.distributed.destroy_process_group()  # what happens at exit
res["freed"] = group() is None  # else gloo's threads outlive the interpreter and can abort the exit
Path(sys.argv[1], f"rank{res['rank']}.json").write_text(json.dumps(res))
'''


def test_collectives_agree_and_errors_reach_every_process(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    _launch([*_torchrun(), "--nproc_per_node", "2", "--standalone", script, tmp_path])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(ranks):
        assert res["rank"] == r and res["world"] == 2
        assert res["grad"] == [1.0, 2.0, 3.0] and res["loss"] == 2.0  # summed over processes
        assert res["any"] == [True, False] and res["gather"] == [0, 10]
        # A failure on rank 1 only stops both, with its one-line error (naming the process elsewhere).
        where = "process 1: " if r == 0 else ""
        assert res["everywhere"] == f"DataError: {where}train.csv row 7, column 'label': missing label."
        assert res["on_main"] == "loaded"  # ran on rank 0 only, where it succeeds
        assert res["after"] == "nobody hung"
        assert res["freed"]  # the group goes when destroyed, nothing keeps it past the run


def test_two_processes_train_like_one(work):
    """2 processes x batch 8 take the same steps as 1 process x batch 16: the same global batches,
    the gradient summed over both shares. Without dropout the only difference left is the order
    of float additions, so per-step losses and validation metrics agree to 1e-5; a run whose
    processes did not share gradients is off by 2e-3 at step 2 and by 0.09 in validation loss."""
    one, two = work / "one", work / "two"
    cfg = Config().override(parse_overrides([str(a) for a in [*_data_flags(work), "--lora.dropout", "0"]]))
    train(cfg.override({"train.batch_size": 16}), one, progress=False)
    r = _launch([*_torchrun(), "--nproc_per_node", "2", "--standalone", "-m", "sentilora", "train", "--out", two,
                 *_data_flags(work), "--lora.dropout", "0", "--train.batch_size", "8", "--quiet"])
    assert r.stdout.count("done:") == 1  # rank 0 speaks for the run

    assert _files(two) == BUNDLE_FILES  # the same bundle as a one-process run, written once
    h1, h2 = _history(one), _history(two)
    assert (h1["world_size"], h2["world_size"]) == (1, 2)
    assert h2["steps"] == h1["steps"] == 12 and h2["best_epoch"] == h1["best_epoch"]
    np.testing.assert_allclose(_losses(two), _losses(one), atol=1e-5, rtol=0)
    for e1, e2 in zip(h1["epochs"], h2["epochs"], strict=True):
        assert e2["accuracy"] == e1["accuracy"]
        assert e2["loss"] == pytest.approx(e1["loss"], abs=1e-5)
    clf = Classifier.load(two, precision="fp32")
    assert set(clf.predict(TEXTS)) <= {"negative", "positive"}
    np.testing.assert_allclose(clf.predict_proba(TEXTS), Classifier.load(one, precision="fp32").predict_proba(TEXTS), atol=1e-5)


STOP_AT_STEP_5 = '''
import sys
from sentilora.config import Config, parse_overrides
from sentilora.train import train

full, cut, *flags = sys.argv[1:]
cfg = Config().override(parse_overrides(flags))
train(cfg, full, progress=False)


def stop(step, loss):
    if step == 5:  # every process stops here, like a job killed after the step-4 checkpoint
        raise SystemExit(3)


train(cfg, cut, progress=False, on_step=stop)
'''


def test_resume_with_the_same_number_of_processes(work):
    """An interrupted 2-process run resumes under another launcher (accelerate) with the same losses,
    LoRA dropout included (each process's random state is in the checkpoint), and refuses 1 process."""
    full, cut, script = work / "full", work / "cut", work / "stop.py"
    script.write_text(STOP_AT_STEP_5)
    flags = [*_data_flags(work), "--train.batch_size", "8", "--train.checkpoint_every", "1"]
    r = _launch([*_torchrun(), "--nproc_per_node", "2", "--standalone", script, full, cut, *flags], expect_ok=False)
    assert r.returncode != 0 and latest(cut) is not None, r.stderr
    assert not (cut / "sentilora.json").exists()

    before = {p: p.read_bytes() for p in cut.rglob("*") if p.is_file()}
    with pytest.raises(SentiloraError, match=r"trained by 2 processes and this run has 1; resume it with 2 \(e\.g\. torchrun --nproc_per_node 2"):
        train(Config(), cut, resume=True, progress=False)
    assert {p: p.read_bytes() for p in cut.rglob("*") if p.is_file()} == before  # nothing touched

    _launch([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
             "-m", "sentilora", "train", "--out", cut, "--resume", "--quiet"])
    assert _files(cut) == BUNDLE_FILES
    assert len(_losses(cut)) == _history(full)["steps"]
    np.testing.assert_allclose(_losses(cut), _losses(full), atol=1e-6, rtol=0)
    assert [e["loss"] for e in _history(cut)["epochs"]] == pytest.approx([e["loss"] for e in _history(full)["epochs"]], abs=1e-6)
    np.testing.assert_allclose(Classifier.load(cut, precision="fp32").predict_proba(TEXTS),
                               Classifier.load(full, precision="fp32").predict_proba(TEXTS), atol=1e-6)
