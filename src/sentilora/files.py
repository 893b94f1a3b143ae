"""Writing to disk so that a crash leaves the old state or the new one, never half of either.

Every file and folder sentilora writes goes through here:

- `atomic_path(path)` yields a temporary name in the same folder; when the block ends normally
  the temp file (or folder) is fsynced and renamed onto `path`, and on any error it is removed.
  `atomic_write_text` / `atomic_write_bytes` / `atomic_write_json` are the one-liners on top.
- `new_folder(path)` is the same for an output folder that must not exist yet (or be empty):
  it is filled under a temporary name and appears complete or not at all.
- `read_jsonl(path)` reads a JSON-lines log that a kill may have cut mid-line.

A rename within one folder is atomic on POSIX and Windows file systems (`os.replace`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentilora.errors import OutputError


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def _fsync(path: Path, *, recursive: bool = True) -> None:
    """Flush a file, or a folder's entries (and with `recursive` every file under it), to the disk."""
    if recursive and path.is_dir():
        for sub in path.rglob("*"):
            if sub.is_file():
                _fsync(sub)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return  # some file systems (and Windows) cannot open a folder
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, recursive=False)  # the rename itself
    finally:
        remove(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def check_new_folder(path: str | Path, *, hint: str = "choose a new folder or delete it") -> None:
    """Refuse an output folder that already holds something (a file there is refused too)."""
    path = Path(path)
    if path.is_file():
        raise OutputError(f"{path}: a file is there, not a folder; {hint}.")
    if path.is_dir() and any(path.iterdir()):
        raise OutputError(f"{path}: folder exists and is not empty; {hint}.")


@contextlib.contextmanager
def new_folder(path: str | Path, *, hint: str = "choose a new folder or delete it") -> Iterator[Path]:
    """Fill a new output folder under a temporary name; it appears at `path` only when complete."""
    path = Path(path)
    check_new_folder(path, hint=hint)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        yield tmp
        if path.is_dir():
            path.rmdir()  # empty (checked above); os.replace cannot put a folder over a folder


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold one object; ValueError says what is wrong with it (callers add the fix)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(first_line(e)) from None
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
    return obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a last line cut short by a kill is skipped, not an error."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines) - 1 and any(rest.strip() for rest in lines[n + 1 :]):
                raise OutputError(f"{path} line {n + 1}: not valid JSON; the file is damaged.") from None
            break  # the writer was killed mid-line
    return out
