"""The one I/O layer: a crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import json

import pytest

from sentilora.errors import OutputError
from sentilora.files import atomic_path, atomic_write_json, atomic_write_text, new_folder, read_jsonl


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_new_folder_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), new_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
        raise RuntimeError("failed half way")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()  # an empty folder may be filled
    with new_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(OutputError, match="out: folder exists and is not empty"), new_folder(out):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="a file is there, not a folder"), new_folder(tmp_path / "file"):
        pass


def test_read_jsonl_tolerates_a_last_line_cut_by_a_kill(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]
    log.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')  # damage in the middle is not a kill: say so
    with pytest.raises(OutputError, match="line 2: not valid JSON"):
        read_jsonl(log)
    assert read_jsonl(tmp_path / "absent.jsonl") == []
