"""backlight.runs on Ray (engine="ray") against the local engine on one local Ray instance: the
same rows, targets, predictions, maps and errors for a folder, a Parquet table and WebDataset
shards; resume after an interrupted run; the install hint without Ray."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from backlight.data import CLASSES, make_batch
from backlight.errors import DatasetError, OptionError
from backlight.runs import read_maps, run
from backlight.runs._store import Store
from backlight.viz import save_png

if os.environ.get("BACKLIGHT_REQUIRE_RAY") == "1":
    import ray
else:
    # not importorskip: the install-hint test runs where Ray is missing too
    try:
        import ray
    except ImportError:
        ray = None

# Ray 2.60's DataContext warns about its own defaults (use_push_based_shuffle) when created
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    # Ray starts its processes by fork; JAX, when an earlier test module loaded it, warns at
    # every fork of a process it runs threads in (Ray's processes do not use JAX)
    pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning"),
]
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (backlight[ray])")

METHODS = "grad_cam,gradient"
FIXED = {"model": "demo", "methods": METHODS, "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module (starting one takes seconds)."""
    assert ray is not None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _picture(i: int) -> tuple[np.ndarray, int]:
    images, labels, _ = make_batch(1, start=i)
    pixels = (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return pixels, int(labels[0])


def _png(i: int) -> tuple[bytes, int]:
    pixels, label = _picture(i)
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format="PNG")
    return stream.getvalue(), label


def _folder(root: Path, n: int) -> Path:
    """``n`` shapes under their class names, a truncated PNG, a text file named .jpg, and
    files both engines must leave out (hidden, not an image)."""
    images, labels, _ = make_batch(n)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        save_png(root / CLASSES[int(label)] / f"{i:03d}.png", image)
    good = (root / CLASSES[int(labels[0])] / "000.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 3])
    (root / CLASSES[1]).mkdir(parents=True, exist_ok=True)
    (root / CLASSES[1] / "text.jpg").write_text("not a picture", encoding="utf-8")
    save_png(root / ".hidden.png", images[0])
    save_png(root / ".cache" / "hidden.png", images[0])
    (root / "notes.txt").write_text("not an image name", encoding="utf-8")
    return root


def _rows(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    table = read_maps(out).to_pylist()
    keyed = {(row["id"], row["method"]): row for row in table}
    assert len(keyed) == len(table), "a (id, method) row is written twice"
    return keyed


def _errors(out: Path) -> list[tuple[str, str, str | None]]:
    table = pq.read_table(out / "errors.parquet").to_pylist()
    return sorted((row["id"], row["stage"], row["method"]) for row in table)


def _reasons(out: Path) -> dict[str, tuple[str, str]]:
    table = pq.read_table(out / "errors.parquet").to_pylist()
    return {row["id"]: (row["path"], row["reason"]) for row in table}


def _assert_same_run(ray_out: Path, local_out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    mine, theirs = _rows(ray_out), _rows(local_out)
    assert sorted(mine) == sorted(theirs)
    for key, row in theirs.items():
        other = mine[key]
        for column in ("target", "target_name", "predicted", "predicted_name", "shape"):
            assert other[column] == row[column], (key, column)
        assert other["settings"] == row["settings"], key
        np.testing.assert_allclose(other["score"], row["score"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(other["map"]), np.asarray(row["map"]), rtol=1e-5, atol=1e-6, err_msg=key
        )
    assert _errors(ray_out) == _errors(local_out)
    assert _reasons(ray_out) == _reasons(local_out)
    return mine


@needs_ray
def test_folder_on_ray_gives_the_local_rows(tmp_path: Path, local_ray: None) -> None:
    source = _folder(tmp_path / "images", 40)
    options: dict[str, Any] = {**FIXED, "batch_size": 8, "part_images": 16}
    on_ray = run(source, out=tmp_path / "ray", engine="ray", concurrency=2, **options)
    local = run(source, out=tmp_path / "local", engine="local", **options)

    rows = _assert_same_run(tmp_path / "ray", tmp_path / "local")
    ids = {ident for ident, _ in rows}
    assert len(ids) == 40 and len(rows) == 80
    assert not any(ident.startswith(".") or "/." in ident for ident in ids)
    # the folder names are the targets' source only with target="folder": here, predictions
    assert all(row["target"] == row["predicted"] for row in rows.values())
    assert _errors(tmp_path / "ray") == [
        (f"{CLASSES[1]}/text.jpg", "read", None),
        ("truncated.png", "read", None),
    ]
    assert (on_ray.images, on_ray.rows, on_ray.errors) == (42, 80, 2)
    assert (on_ray.rows, on_ray.errors, on_ray.total_rows) == (
        local.rows,
        local.errors,
        local.total_rows,
    )
    # written as parts of about part_images images, each a committed pair
    parts = sorted(p.name for p in (tmp_path / "ray" / "maps").glob("part-*.parquet"))
    assert len(parts) >= 42 // 16
    errors = {p.name for p in (tmp_path / "ray" / "errors").glob("part-*.parquet")}
    assert errors and errors <= set(parts)
    assert not list((tmp_path / "ray").rglob(".*.tmp"))


def _table(root: Path, n: int) -> Path:
    """A Parquet table of relative paths with class names, one missing file, one unknown
    class name."""
    paths, labels = [], []
    for i in range(n):
        data, label = _png(100 + i)
        (root / "files").mkdir(parents=True, exist_ok=True)
        (root / "files" / f"{i:03d}.png").write_bytes(data)
        paths.append(f"files/{i:03d}.png")
        labels.append(CLASSES[label])
    paths.append("files/missing.png")
    labels.append(CLASSES[0])
    labels[3] = "hexagon"
    table = root / "index.parquet"
    pq.write_table(pa.table({"path": paths, "label": labels}), table)
    return table


def _shards(root: Path, n: int) -> str:
    """Two WebDataset tars of PNG + .cls samples; one image member upper-cased, one sample
    without an image."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    for shard in range(2):
        with wds.TarWriter(str(root / f"shard-{shard:03d}.tar")) as writer:
            for i in range(n):
                data, label = _png(200 + shard * n + i)
                sample = {"__key__": f"s{i:04d}", "png": data, "cls": str(label).encode()}
                if shard == 1 and i == 2:
                    sample = {"__key__": f"s{i:04d}", "PNG": data, "cls": sample["cls"]}
                if shard == 1 and i == 5:
                    sample = {"__key__": f"s{i:04d}", "txt": b"no image", "cls": b"0"}
                writer.write(sample)
    return str(root / "shard-{000..001}.tar")


@needs_ray
@pytest.mark.parametrize("kind", ["table", "shards"])
def test_table_and_shards_on_ray_give_the_local_rows(
    tmp_path: Path, local_ray: None, kind: str
) -> None:
    source = _table(tmp_path, 16) if kind == "table" else _shards(tmp_path / "tars", 9)
    options: dict[str, Any] = {**FIXED, "batch_size": 4, "target": "column"}
    summary = run(source, out=tmp_path / "ray", engine="ray", concurrency=1, **options)
    run(source, out=tmp_path / "local", engine="local", **options)

    rows = _assert_same_run(tmp_path / "ray", tmp_path / "local")
    if kind == "table":
        assert summary.images == 17
        assert _errors(tmp_path / "ray") == [
            ("files/003.png", "target", None),
            ("files/missing.png", "read", None),
        ]
        expected = {f"files/{i:03d}.png": CLASSES[_png(100 + i)[1]] for i in range(16)}
        assert {ident: row["target_name"] for (ident, _), row in rows.items()} == {
            ident: name for ident, name in expected.items() if ident != "files/003.png"
        }
    else:
        assert summary.images == 18
        assert _errors(tmp_path / "ray") == [("shard-001/s0005", "read", None)]
        assert ("shard-001/s0002", "gradient") in rows  # the upper-cased .PNG
        labels = {
            f"shard-{s:03d}/s{i:04d}": _png(200 + s * 9 + i)[1] for s in (0, 1) for i in range(9)
        }
        assert all(row["target"] == labels[ident] for (ident, _), row in rows.items())


@needs_ray
def test_an_interrupted_ray_run_resumes_to_the_uninterrupted_rows(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backlight.cli._models import Preprocess
    from backlight.demo import load_demo_model

    source = _folder(tmp_path / "images", 24)
    options: dict[str, Any] = {
        "model": load_demo_model(),  # a module: pickled to the actors
        "preprocess": Preprocess(resize=64, crop=64, mean=(0.0,) * 3, std=(1.0,) * 3),
        "methods": METHODS,
        "workers": 0,
        "progress": False,
        "batch_size": 4,
        "part_images": 8,
    }
    write_part = Store.write_part
    calls: list[int] = []

    def first_part_then_ctrl_c(self: Store, rows: Any, dtype: str) -> int:
        number = write_part(self, rows, dtype)
        calls.append(number)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return number

    monkeypatch.setattr(Store, "write_part", first_part_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(source, out=tmp_path / "ray", engine="ray", concurrency=1, **options)
    monkeypatch.setattr(Store, "write_part", write_part)
    assert sorted(p.name for p in (tmp_path / "ray" / "maps").iterdir()) == ["part-00000.parquet"]
    first = Store(tmp_path / "ray").done_ids()
    assert 8 <= len(first) < 26

    resumed = run(source, out=tmp_path / "ray", engine="ray", concurrency=1, **options)
    run(source, out=tmp_path / "local", engine="local", **options)

    assert resumed.skipped == len(first)
    assert resumed.images == 26 - len(first)
    rows = _assert_same_run(tmp_path / "ray", tmp_path / "local")
    assert len(rows) == 2 * 24


@needs_ray
def test_a_broken_shard_on_ray_is_a_dataset_error(tmp_path: Path, local_ray: None) -> None:
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar archive " * 64)
    with pytest.raises(DatasetError, match="cannot read a WebDataset shard: ReadError"):
        run(str(broken), out=tmp_path / "out", engine="ray", concurrency=1, **FIXED)
    assert not list((tmp_path / "out" / "maps").glob("part-*.parquet"))


def test_without_ray_engine_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "images"
    save_png(source / "one.png", make_batch(1)[0][0])
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(OptionError, match=r"pip install backlight\[ray\]"):
        run(source, out=tmp_path / "out", engine="ray", **FIXED)
    # nothing was explained: the folder resumes cleanly with the local engine
    summary = run(source, out=tmp_path / "out", engine="local", **FIXED)
    assert (summary.skipped, summary.rows) == (0, 2)
