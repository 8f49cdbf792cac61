"""Outputs that appear whole or not at all, under names that cannot collide.

A command writes everything into a staging folder beside ``--out`` (same file system, hidden,
named after the process), and only when every file is complete moves it into place: one
``rename`` of the folder when ``--out`` does not exist yet (or is empty), else one ``rename`` per
file with the report last. A failure, Ctrl-C or a full disk removes the staging folder; a
``kill -9`` leaves it behind, hidden, and the next command that writes beside it removes it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._errors import Failure

#: The longest file name most file systems take, in bytes.
MAX_NAME_BYTES = 255
#: Files every ``explain`` run writes beside the per-image maps.
FIXED_NAMES = ("grid.png", "report.html")

_PARTIAL = ".partial-"


def file_stems(stems: Sequence[str], methods: Sequence[str]) -> list[str]:
    """One stem per image such that no two outputs ``{stem}_{method}.png`` share a name, even
    on a file system that ignores case, none is a fixed name, and every name fits in
    :data:`MAX_NAME_BYTES`. A stem that would collide gets ``-2``, ``-3``... appended."""
    suffix = max((len(f"_{m}.png".encode()) for m in methods), default=0)
    room = MAX_NAME_BYTES - suffix - len("-99999")
    taken = {name.casefold() for name in FIXED_NAMES}
    used: set[str] = set()
    result = []
    for stem in stems:
        base = _truncate(stem, room) or "image"
        candidate, n = base, 2
        while True:
            files = {f"{candidate}_{m}.png".casefold() for m in methods}
            if candidate.casefold() not in used and not files & taken:
                break
            candidate, n = f"{base}-{n}", n + 1
        used.add(candidate.casefold())
        taken |= files
        result.append(candidate)
    return result


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    return text.encode()[: max(limit, 1)].decode(errors="ignore")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder to write the outputs of ``out`` into; on a normal exit its files are
    moved into ``out``, and in every case it is removed."""
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise Failure(f"--out {out} is a file; give a folder (it is created if missing)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        prefix = f".{_truncate(out.name, 150)}{_PARTIAL}{os.getpid()}-"
        stage = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as e:
        raise Failure(f"cannot write to {out}: {e.strerror or e}") from e
    try:
        yield stage
        _publish(stage, out)
    except OSError as e:
        raise Failure(f"cannot write to {out}: {e.strerror or e}; nothing was written") from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out: Path) -> None:
    try:
        os.rename(stage, out)  # atomic, when out is missing or an empty folder
        return
    except OSError:
        pass
    out.mkdir(parents=True, exist_ok=True)
    # file by file: renames within one file system, no data written; the report, which names
    # every other file, last
    files = sorted(stage.iterdir(), key=lambda p: (p.name == "report.html", p.name))
    for path in files:
        os.replace(path, out / path.name)


def _remove_stale(out: Path) -> None:
    """Staging folders of ``out`` left by processes that no longer run (a ``kill -9``)."""
    head = f".{_truncate(out.name, 150)}{_PARTIAL}"
    for path in out.parent.glob(f"{glob.escape(head)}*"):
        pid_text = path.name[len(head) :].split("-", 1)[0]
        if pid_text.isdigit() and path.is_dir() and not _alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
