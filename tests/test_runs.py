"""backlight.runs: a whole data set explained into Parquet, streamed and resumable (issue 13).

Every source the tests read is written here: folders, CSV and Parquet tables and WebDataset
shards of shapes from :func:`backlight.data.make_batch`, with bad files among them. The stored
maps are compared with direct calls of the public methods on the same batches.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import backlight
from backlight.cli._models import load_model
from backlight.data import CLASSES, make_batch
from backlight.data.files import read_image
from backlight.errors import DatasetError, DatasetNotFoundError, OptionError
from backlight.runs import read_maps, run
from backlight.runs._explain import derived_seed
from backlight.runs._store import Store
from backlight.viz import save_png

METHODS = ("grad_cam", "gradient", "rise")
#: RISE's quick settings with fewer masks still: the tests only need it deterministic.
SETTINGS = {"rise": {"num_masks": 8}}
#: The options the run calls each method with (quick settings, then SETTINGS), spelled out.
OPTIONS: dict[str, dict[str, Any]] = {
    "grad_cam": {},
    "gradient": {},
    "rise": {"num_masks": 8, "batch_size": 32, "progress": False},
}
RISE_SEED = 0  # rise's default seed, from which each image's seed is derived
BATCH = 8
COMMON: dict[str, Any] = {
    "model": "demo",
    "methods": ",".join(METHODS),
    "settings": SETTINGS,
    "quick": True,
    "batch_size": BATCH,
    "progress": False,
}


def _only(*methods: str) -> dict[str, Any]:
    """COMMON with fewer methods (and no settings for RISE when it is not run)."""
    return {**COMMON, "methods": ",".join(methods), "settings": None}


N_FOLDER = 150
#: The bad files of the folder source, and the odd ones that are explained all the same.
BAD_FILES = ("circle/broken.png", "square/notes.jpg")
ODD_GOOD = ("star/gray.png", "star/rgba.png", "ring/deep16.png")

Item = tuple[str, "str | bytes", "str | int | None"]  # (id, path or bytes, given target)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One thread: the demo network is tiny, and two cores are shared (see conftest)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo() -> Any:
    return load_model("demo", "DEFAULT")


def _uint8(image: torch.Tensor) -> np.ndarray:
    return np.asarray((image.permute(1, 2, 0).numpy() * 255).round(), np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_folder(root: Path, n: int, *, start: int = 0, odd: bool = False) -> list[str]:
    """``n`` shapes in class folders under ``root``; with ``odd``, the bad and odd files too.
    Returns the good ids."""
    images, labels, _ = make_batch(n, start=start)
    good = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        ident = f"{CLASSES[int(label)]}/img-{start + i:03d}.png"
        save_png(root / ident, image)
        good.append(ident)
    if odd:
        whole = (root / good[0]).read_bytes()
        (root / BAD_FILES[0]).write_bytes(whole[: len(whole) // 2])
        (root / BAD_FILES[1]).write_text("not a picture\n")
        pixels = _uint8(images[1])
        Image.fromarray(pixels).convert("L").save(root / ODD_GOOD[0])
        alpha = np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)
        Image.fromarray(np.dstack([pixels, alpha])).save(root / ODD_GOOD[1])
        deep = (images[2].mean(0).numpy() * 65535).round().astype(np.uint16)
        Image.fromarray(deep).save(root / ODD_GOOD[2])
        with Image.open(root / ODD_GOOD[2]) as check:
            assert check.mode in ("I;16", "I")
        good += list(ODD_GOOD)
    return sorted(good)


def _groups(ids: Sequence[str], good: set[str]) -> list[list[str]]:
    """The run's batches: the source order cut every BATCH records, bad records left out."""
    cut = [list(ids[i : i + BATCH]) for i in range(0, len(ids), BATCH)]
    return [kept for kept in ([i for i in batch if i in good] for batch in cut) if kept]


def _api_maps(
    demo: Any,
    batches: Sequence[Sequence[Item]],
    target: int | None = None,
    methods: Sequence[str] = METHODS,
) -> dict[tuple[str, str], tuple[int, np.ndarray]]:
    """(id, method) -> (target, map) from the public methods, batch by batch (RISE one image at
    a time with its id's seed). ``target``: a fixed class, else each item's given target, else
    the predicted class."""
    model = demo.model
    expected: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
    for batch in batches:
        x = torch.stack([demo.preprocess(read_image(source))[1] for _, source, _ in batch])
        with torch.no_grad():
            predicted = model(x).argmax(dim=1).tolist()
        targets = []
        for (_, _, given), p in zip(batch, predicted, strict=True):
            if target is not None:
                targets.append(target)
            elif given is not None:
                targets.append(CLASSES.index(given) if isinstance(given, str) else given)
            else:
                targets.append(p)
        for method in methods:
            function = getattr(backlight, method)
            if method == "rise":
                maps = [
                    function(
                        model,
                        x[i : i + 1],
                        targets[i : i + 1],
                        seed=derived_seed(RISE_SEED, ident),
                        **OPTIONS[method],
                    ).maps[0]
                    for i, (ident, _, _) in enumerate(batch)
                ]
            else:
                maps = list(function(model, x, targets, **OPTIONS[method]).maps)
            for (ident, _, _), t, m in zip(batch, targets, maps, strict=True):
                expected[ident, method] = (t, m.detach().numpy())
    return expected


def _stored(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(id, method) -> row, asserting that no (id, method) is stored twice."""
    rows = read_maps(out).to_pylist()
    keys = Counter((r["id"], r["method"]) for r in rows)
    assert max(keys.values()) == 1, [k for k, c in keys.items() if c > 1][:5]
    return {(r["id"], r["method"]): r for r in rows}


def _assert_maps_equal(
    stored: dict[tuple[str, str], dict[str, Any]],
    expected: dict[tuple[str, str], tuple[int, np.ndarray]],
) -> None:
    assert set(stored) == set(expected)
    for key, (target, m) in expected.items():
        row = stored[key]
        assert row["target"] == target, key
        assert tuple(row["shape"]) == m.shape, key
        got = np.asarray(row["map"], np.float32).reshape(row["shape"])
        assert np.array_equal(got, m), (key, float(np.abs(got - m).max()))


def _errors(out: Path) -> list[dict[str, Any]]:
    return list(pq.read_table(out / "errors.parquet").to_pylist())


# ---------------------------------------------------------------------------- folder source


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """150 shapes in class folders plus a truncated PNG, a text '.jpg', and grayscale, RGBA
    and 16-bit images; returns the folder and its good ids."""
    root = tmp_path_factory.mktemp("folder") / "src"
    return root, _write_folder(root, N_FOLDER, odd=True)


@pytest.fixture(scope="module")
def full_run(folder: tuple[Path, list[str]]) -> tuple[Path, Any]:
    """The folder explained without interruption (one reader process, overlays on)."""
    root, _ = folder
    out = root.parent / "full"
    summary = run(root, out=out, workers=1, part_images=16, png=True, **COMMON)
    return out, summary


def test_folder_rows_maps_and_errors(
    demo: Any, folder: tuple[Path, list[str]], full_run: tuple[Path, Any]
) -> None:
    root, good = folder
    out, summary = full_run
    every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert len(every) == N_FOLDER + len(BAD_FILES) + len(ODD_GOOD)
    assert summary.images == len(every) and summary.skipped == 0
    assert summary.rows == summary.total_rows == len(good) * len(METHODS)
    assert summary.errors == len(BAD_FILES)

    stored = _stored(out)
    assert Counter(i for i, _ in stored) == dict.fromkeys(good, len(METHODS))
    items = {i: (i, str(root / i), None) for i in good}
    batches = [[items[i] for i in batch] for batch in _groups(every, set(good))]
    _assert_maps_equal(stored, _api_maps(demo, batches))
    row = stored[good[0], "grad_cam"]
    assert row["target"] == row["predicted"] and row["predicted_name"] == CLASSES[row["target"]]

    errors = _errors(out)
    assert sorted(e["id"] for e in errors) == sorted(BAD_FILES)
    for error in errors:
        assert error["stage"] == "read" and error["method"] is None
        assert error["path"] == str(root / error["id"])
        assert error["id"] in error["reason"]
    # the odd modes are explained, not errors
    assert all((i, m) in stored for i in ODD_GOOD for m in METHODS)


def test_png_overlays(folder: tuple[Path, list[str]], full_run: tuple[Path, Any]) -> None:
    _, good = folder
    out, _ = full_run
    written = {p.relative_to(out / "png").as_posix() for p in (out / "png").rglob("*.png")}
    assert written == {f"{i.removesuffix('.png')}_{m}.png" for i in good for m in METHODS}
    with Image.open(out / "png" / f"{good[0].removesuffix('.png')}_grad_cam.png") as picture:
        assert picture.size == (64, 64) and picture.mode == "RGB"


# ---------------------------------------------------------------------------- tables, shards


def test_csv_table_with_label_column(
    demo: Any, folder: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, good = folder
    chosen = [*good[:20], "circle/broken.png", "nowhere/missing.png", *good[20:23]]
    lines = ["path,label"]
    for ident in chosen:
        lines.append(f"src/{ident},{ident.split('/')[0]}")
    table = root.parent / "list.csv"
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run(table, out=out, workers=0, target="column", **COMMON)

    ids = [f"src/{i}" for i in chosen]
    bad = {"src/circle/broken.png", "src/nowhere/missing.png"}
    good_ids = set(ids) - bad
    items = {f"src/{i}": (f"src/{i}", str(root / i), i.split("/")[0]) for i in chosen}
    batches = [[items[i] for i in batch] for batch in _groups(ids, good_ids)]
    stored = _stored(out)
    _assert_maps_equal(stored, _api_maps(demo, batches))
    assert summary.errors == 2
    errors = _errors(out)
    assert {e["id"] for e in errors} == bad
    missing = next(e for e in errors if "missing" in e["id"])
    assert "not found" in missing["reason"]


def test_parquet_table_with_bytes_and_ids(demo: Any, tmp_path: Path) -> None:
    images, labels, _ = make_batch(21, start=500)
    data = [_png(_uint8(image)) for image in images]
    data[5] = data[5][: len(data[5]) // 3]  # truncated bytes
    ids = [f"im{i:02d}" for i in range(21)]
    table = pa.table(
        {
            "id": ids,
            "image": pa.array(data, pa.binary()),
            "label": pa.array([int(v) for v in labels], pa.int64()),
        }
    )
    source = tmp_path / "images.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out"
    run(source, out=out, workers=0, target="column", **COMMON)

    items = {i: (i, d, int(label)) for i, d, label in zip(ids, data, labels, strict=True)}
    good = set(ids) - {"im05"}
    batches = [[items[i] for i in batch] for batch in _groups(ids, good)]
    _assert_maps_equal(_stored(out), _api_maps(demo, batches))
    errors = _errors(out)
    assert [e["id"] for e in errors] == ["im05"] and errors[0]["stage"] == "read"


def test_webdataset_shards(demo: Any, tmp_path: Path) -> None:
    import webdataset as wds

    images, labels, _ = make_batch(30, start=700)
    items: list[Item] = []
    for s in range(3):
        with wds.TarWriter(str(tmp_path / f"shard-{s:03d}.tar")) as sink:
            for k in range(10):
                i = s * 10 + k
                data = _png(_uint8(images[i]))
                if i == 13:
                    data = data[:40]
                key = f"sample{i:03d}"
                sink.write({"__key__": key, "png": data, "cls": int(labels[i])})
                items.append((f"shard-{s:03d}/{key}", data, int(labels[i])))
    out = tmp_path / "out"
    summary = run(
        str(tmp_path / "shard-{000..002}.tar"), out=out, workers=1, target="column", **COMMON
    )
    assert summary.images == 30 and summary.errors == 1
    bad = {"shard-001/sample013"}
    by_id = {item[0]: item for item in items}
    batches = []
    for s in range(3):  # batches are cut per shard
        ids = [item[0] for item in items if item[0].startswith(f"shard-{s:03d}/")]
        batches += [[by_id[i] for i in b] for b in _groups(ids, set(ids) - bad)]
    _assert_maps_equal(_stored(out), _api_maps(demo, batches))
    assert [e["id"] for e in _errors(out)] == sorted(bad)


# ---------------------------------------------------------------------------- targets


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """14 shapes in class folders, two in a folder named after no class, one at the top."""
    root = tmp_path_factory.mktemp("small") / "src"
    good = _write_folder(root, 14, start=300)
    images, _, _ = make_batch(3, start=400)
    save_png(root / "mystery" / "a.png", images[0])
    save_png(root / "mystery" / "b.png", images[1])
    save_png(root / "top.png", images[2])
    return root, good


def test_target_folder(demo: Any, small: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, good = small
    out = tmp_path / "out"
    summary = run(root, out=out, workers=0, target="folder", **_only("gradient"))
    assert summary.errors == 3
    errors = {e["id"]: e for e in _errors(out)}
    assert set(errors) == {"mystery/a.png", "mystery/b.png", "top.png"}
    assert all(e["stage"] == "target" for e in errors.values())
    assert "'mystery'" in errors["mystery/a.png"]["reason"]

    every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    items = {i: (i, str(root / i), i.split("/")[0]) for i in good}
    batches = [[items[i] for i in batch] for batch in _groups(every, set(good))]
    stored = _stored(out)
    _assert_maps_equal(stored, _api_maps(demo, batches, methods=["gradient"]))
    for (ident, _), row in stored.items():
        assert row["target_name"] == ident.split("/")[0] == CLASSES[row["target"]]


@pytest.mark.parametrize("target", [3, "star"])
def test_fixed_target(
    demo: Any, small: tuple[Path, list[str]], tmp_path: Path, target: int | str
) -> None:
    root, _ = small
    out = tmp_path / "out"
    summary = run(root, out=out, workers=0, target=target, **_only("grad_cam"))
    assert summary.errors == 0
    every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    items = {i: (i, str(root / i), None) for i in every}
    batches = [[items[i] for i in batch] for batch in _groups(every, set(every))]
    stored = _stored(out)
    _assert_maps_equal(stored, _api_maps(demo, batches, target=3, methods=["grad_cam"]))
    assert {row["target_name"] for row in stored.values()} == {"star"}


def test_target_modes_refused_for_the_wrong_source(
    small: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, _ = small
    with pytest.raises(OptionError, match="column"):
        run(root, out=tmp_path / "a", target="column", **COMMON)
    with pytest.raises(OptionError, match="'unicorn'"):
        run(root, out=tmp_path / "b", target="unicorn", **COMMON)
    with pytest.raises(OptionError, match="out of range"):
        run(root, out=tmp_path / "c", target=6, **COMMON)


# ---------------------------------------------------------------------------- resume


def _complete_parts(out: Path) -> None:
    """No temporary file left, and every error part has its map part."""
    assert not list(out.rglob(".*.tmp"))
    maps = {p.name for p in (out / "maps").glob("part-*.parquet")}
    errors = {p.name for p in (out / "errors").glob("part-*.parquet")}
    assert errors <= maps, errors - maps


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_to_the_same_output(
    folder: tuple[Path, list[str]],
    full_run: tuple[Path, Any],
    tmp_path: Path,
    how: signal.Signals,
) -> None:
    root, good = folder
    reference, whole = full_run
    out = tmp_path / "out"
    code = (
        # Ctrl-C's handling even when the tests run in the background, where the shell starts
        # processes with SIGINT ignored and they inherit that
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import torch; torch.set_num_threads(1)\n"
        "from backlight.runs import run\n"
        f"run({str(root)!r}, out={str(out)!r}, workers=0, part_images=16, **{COMMON!r})\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 90
        while not list((out / "maps").glob("part-*.parquet")):
            if child.poll() is not None:
                told = child.stderr.read() if child.stderr else b""
                pytest.fail(f"the run ended before it was killed: {told!r}")
            if time.monotonic() > deadline:
                pytest.fail("no part written in 90 s")
            time.sleep(0.02)
        child.send_signal(how)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stderr is not None
        child.stderr.close()
    assert child.returncode != 0
    if how == signal.SIGINT:  # a KeyboardInterrupt (Python ends by SIGINT), after a flush
        assert child.returncode in (1, -signal.SIGINT)
    before = read_maps(out).num_rows
    assert 0 < before < whole.total_rows, "the run was not interrupted part-way"

    if how == signal.SIGKILL:  # what a kill between an error part and its map part leaves
        last = max(int(p.stem.split("-")[1]) for p in (out / "maps").glob("part-*.parquet"))
        orphan = pa.table(
            {"id": [good[-1]], "path": ["x"], "stage": ["read"], "method": [None], "reason": ["x"]}
        )
        pq.write_table(orphan, out / "errors" / f"part-{last + 1:05d}.parquet")
        (out / "maps" / ".part-00000.parquet.0123456789ab.tmp").write_bytes(b"half")
        (out / ".manifest.json.0123456789ab.tmp").write_bytes(b"{")
        (out / "png" / "circle").mkdir(parents=True)
        (out / "png" / "circle" / ".img-000_rise.png.0123456789ab.tmp").write_bytes(b"")

    summary = run(root, out=out, workers=0, part_images=16, **COMMON)
    assert summary.skipped > 0
    assert summary.skipped + summary.images == whole.images
    assert summary.rows == whole.total_rows - before
    assert summary.total_rows == whole.total_rows and summary.errors == whole.errors

    resumed, uninterrupted = _stored(out), _stored(reference)
    assert set(resumed) == set(uninterrupted)
    for key, row in uninterrupted.items():
        other = resumed[key]
        assert other["map"] == row["map"], key  # bit-equal float32 values
        for column in ("shape", "target", "predicted", "settings"):
            assert other[column] == row[column], (key, column)
    assert sorted(map(str, _errors(out))) == sorted(map(str, _errors(reference)))
    _complete_parts(out)


def test_other_settings_are_refused_and_the_same_resume(tmp_path: Path) -> None:
    root = tmp_path / "src"
    good = _write_folder(root, 10, start=900)
    (root / "circle" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    options = {**_only("gradient"), "workers": 0}
    first = run(root, out=out, **options)
    assert (first.rows, first.errors, first.skipped) == (10, 1, 0)
    for key, change in (
        ("methods", {"methods": "grad_cam"}),
        ("target", {"target": 1}),
        ("settings", {"settings": {"gradient": {"reduce": "sum"}}}),
        ("dtype", {"dtype": "float16"}),
        ("weights", {"weights": "random"}),
    ):
        with pytest.raises(OptionError, match=f"other settings \\({key}: ") as caught:
            run(root, out=out, **{**options, **change})
        assert str(out) in str(caught.value)
    again = run(root, out=out, **options)
    assert again.skipped == len(good) + 1 and again.rows == 0 and again.images == 0
    assert again.total_rows == 10 and again.errors == 1
    assert len(_stored(out)) == 10

    # images added to the folder since are explained by the resumed run, and only they
    extra = _write_folder(root, 3, start=950)
    more = run(root, out=out, **options)
    assert more.skipped == 11 and more.images == 3 and more.rows == 3
    assert {i for i, _ in _stored(out)} == set(good) | set(extra)


def test_a_second_run_into_a_folder_in_use_is_refused(
    small: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, _ = small
    out = tmp_path / "out"
    with Store(out).locked(), pytest.raises(OptionError, match="in use"):
        run(root, out=out, workers=0, **COMMON)
    assert not list((out / "maps").glob("part-*.parquet"))
    summary = run(root, out=out, workers=0, **_only("gradient"))  # free again
    assert summary.rows == 17


# ---------------------------------------------------------------------------- storage


def test_parts_hold_at_most_part_images(folder: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, good = folder
    table = tmp_path / "hundred.csv"
    table.write_text("path\n" + "".join(f"{root / i}\n" for i in good[:100]))
    out = tmp_path / "out"
    methods = ("grad_cam", "gradient")
    summary = run(table, out=out, part_images=16, workers=0, **_only(*methods))
    assert summary.rows == 100 * len(methods)
    parts = sorted((out / "maps").glob("part-*.parquet"))
    assert len(parts) >= 6
    for part in parts:
        ids = pq.read_table(part, columns=["id"]).column("id").to_pylist()
        assert len(ids) <= 16 * len(methods) and len(set(ids)) <= 16
    assert read_maps(out).num_rows == 100 * len(methods)


def test_float16_maps(folder: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, good = folder
    table = tmp_path / "some.csv"
    table.write_text("path\n" + "".join(f"{root / i}\n" for i in good[:12]))
    options = {**_only("grad_cam", "gradient"), "workers": 0}
    run(table, out=tmp_path / "f32", **options)
    run(table, out=tmp_path / "f16", dtype="float16", **options)
    half = read_maps(tmp_path / "f16")
    assert half.schema.field("map").type == pa.list_(pa.float16())
    assert read_maps(tmp_path / "f32").schema.field("map").type == pa.list_(pa.float32())
    single, halves = _stored(tmp_path / "f32"), _stored(tmp_path / "f16")
    assert set(single) == set(halves) and len(single) == 24
    for key, row in single.items():
        rounded = np.asarray(row["map"], np.float32).astype(np.float16)
        got = np.asarray(halves[key]["map"], np.float16)
        assert np.array_equal(got, rounded), key
        assert halves[key]["shape"] == row["shape"]


# ---------------------------------------------------------------------------- read_image


def _saved(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def test_read_image_16_bit_png_is_scaled(tmp_path: Path) -> None:
    values = np.repeat(np.array([[65535, 32768, 0, 257]] * 8, np.uint16), 2, axis=1)  # 8 x 8
    path = _saved(Image.fromarray(values), tmp_path / "deep.png")
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (8, 8)
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 2].tolist() == [128, 128, 128]
    assert pixels[0, 4].tolist() == [0, 0, 0]
    assert pixels[0, 6].tolist() == [1, 1, 1]
    assert np.array_equal(np.asarray(read_image(path.read_bytes())), pixels)


def test_read_image_transparency_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere
    rgba[:, :5, 3] = 0  # left half transparent
    rgba[:, 5:, 3] = 255
    pixels = np.asarray(read_image(_saved(Image.fromarray(rgba), tmp_path / "a.png")))
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 9].tolist() == [200, 0, 0]

    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # 0 black (transparent), 1 blue
    palette.paste(1, (5, 0, 10, 10))
    path = _saved(palette, tmp_path / "p.png", transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    pixels = np.asarray(read_image(path))
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 9].tolist() == [0, 0, 255]


def test_read_image_cmyk_jpeg(tmp_path: Path) -> None:
    path = _saved(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg")
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    image = read_image(path)
    assert image.mode == "RGB"
    red, green, blue = np.asarray(image)[8, 8].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_read_image_exif_orientation(tmp_path: Path) -> None:
    picture = np.zeros((10, 20, 3), np.uint8)
    picture[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    path = _saved(Image.fromarray(picture), tmp_path / "e.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(path) as check:
        assert check.size == (20, 10)
    image = read_image(path)
    assert image.size == (10, 20)
    pixels = np.asarray(image).mean(axis=2)
    assert pixels[:8].mean() > 200 and pixels[-8:].mean() < 50  # white on top now


def test_read_image_refusals(tmp_path: Path) -> None:
    small = _saved(Image.new("RGB", (4, 4)), tmp_path / "small.png")
    with pytest.raises(DatasetError, match="4x4"):
        read_image(small)
    with pytest.raises(DatasetNotFoundError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(DatasetError, match="not an image"):
        read_image(tmp_path / "text.jpg")


@pytest.mark.parametrize(
    ("cores", "expected"), [(None, 0), (1, 0), (2, 0), (3, 2), (4, 3), (8, 4), (64, 4)]
)
def test_default_readers_by_cores(
    cores: int | None, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No reader process on two cores or fewer (it slows the model down more than it helps,
    BENCHMARKS.md), else one per core but one, at most 4; a number given is used as given."""
    from backlight.runs import _workers

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert _workers(None) == expected
    assert _workers(3) == 3
    assert _workers(0) == 0
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(OptionError, match="`workers` must be an int of at least 0"):
            _workers(bad)  # type: ignore[arg-type]


def test_device_option(folder: tuple[Path, list[str]], tmp_path: Path) -> None:
    """``device="cpu"`` gives the default's rows bit for bit; a bad or absent device, a device
    with Ray, or a device other than where the caller's module is, are refused, naming
    ``device``; the caller's module is not moved."""
    from backlight._checks import model_device
    from backlight.runs import _placed

    root, _ = folder
    options = {**_only("gradient"), "workers": 0}
    run(root, out=tmp_path / "plain", **options)
    run(root, out=tmp_path / "cpu", device="cpu", **options)
    plain, placed = read_maps(tmp_path / "plain"), read_maps(tmp_path / "cpu")
    assert plain.num_rows > 0
    assert plain.column("map").to_pylist() == placed.column("map").to_pylist()
    assert json.loads((tmp_path / "cpu" / "manifest.json").read_text())["device"] == "cpu"
    for bad, said in (("banana", "must be a device"), (3.5, "must be a device")):
        with pytest.raises(OptionError, match=f"`device`.*{said}"):
            run(root, out=tmp_path / "bad", device=bad, **options)
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="`device` 'cuda': this machine has no such"):
            run(root, out=tmp_path / "bad", device="cuda", **options)
    with pytest.raises(OptionError, match="`device` is for engine='local'"):
        run(root, out=tmp_path / "bad", device="cpu", engine="ray", **options)
    assert not (tmp_path / "bad").exists()
    module = torch.nn.Conv2d(3, 2, 3)
    with pytest.raises(OptionError, match="does not move your module"):
        _placed(module, torch.device("cuda"), given=True)
    assert _placed(module, torch.device("cpu"), given=True) is module
    assert model_device(module) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


def test_explainer_sends_batches_to_the_models_device() -> None:
    """The explainer moves each batch to where the model's parameters are (a CUDA module no
    longer gets CPU batches); on the CPU that is the batch itself."""
    from backlight.runs._explain import Decoded, Explainer, Plan

    seen: list[torch.device] = []
    model = load_model("demo", "DEFAULT").model
    hook = model.register_forward_pre_hook(lambda _, args: seen.append(args[0].device))
    try:
        plan = Plan(methods=("gradient",), options={"gradient": {}})
        explainer = Explainer(model, plan)
        x, _, _ = make_batch(2)
        rows, _ = explainer(
            Decoded(ids=["a", "b"], x=x, shown=None, targets=[None, None], errors=[], size=2)
        )
    finally:
        hook.remove()
    assert explainer.device == torch.device("cpu") and rows.count == 2
    assert seen and all(d == torch.device("cpu") for d in seen)
