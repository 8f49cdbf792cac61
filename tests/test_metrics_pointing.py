"""The pointing game: hits and misses known by hand, TorchRay's rule, per-class averaging, the
difficult subset, and the VOC 2007 / COCO 2014 readers on tiny fake folders."""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import math
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import backlight.metrics
from backlight.errors import (
    DatasetError,
    DatasetNotFoundError,
    InputError,
    OptionError,
    TargetError,
)
from backlight.metrics import (
    COCO2014,
    VOC2007,
    VOC_CLASSES,
    PointingGame,
    boxes_to_mask,
    is_difficult,
    load_difficult_flags,
    max_point,
    pointing_game,
    polygons_to_mask,
)

DOCUMENTED = {
    "COCO2014",
    "VOC2007",
    "VOC_CLASSES",
    "PerturbationCurves",
    "PointingGame",
    "PointingObject",
    "PointingResult",
    "PointingSample",
    "RandomizationResult",
    "blur",
    "boxes_to_mask",
    "deletion",
    "insertion",
    "is_difficult",
    "load_difficult_flags",
    "max_point",
    "pointing_game",
    "polygons_to_mask",
    "randomization",
    "spearman",
    "ssim",
}


def test_all_is_exactly_the_documented_names() -> None:
    assert set(backlight.metrics.__all__) == DOCUMENTED
    for name in DOCUMENTED - {"VOC_CLASSES"}:
        assert getattr(backlight.metrics, name).__module__.startswith("backlight.metrics")
    assert len(backlight.metrics.VOC_CLASSES) == 20


def test_docstring_examples_run() -> None:
    modules = [backlight.metrics]
    modules += [getattr(backlight.metrics, f"_{m}") for m in ("pointing", "datasets", "causal")]
    modules += [getattr(backlight.metrics, f"_{m}") for m in ("similarity", "randomization")]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for module in modules:
        for test in doctest.DocTestFinder().find(module, module.__name__, globs={}):
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def _peak(size: tuple[int, int], x: int, y: int) -> torch.Tensor:
    saliency = torch.zeros(1, *size)
    saliency[0, y, x] = 1.0
    return saliency


def _column_mask(size: tuple[int, int], first: int, last: int) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[:, first : last + 1] = True
    return mask


def test_a_map_that_points_at_the_object_scores_one() -> None:
    masks = torch.zeros(3, 40, 50, dtype=torch.bool)
    masks[0, 5:10, 5:10] = masks[1, 30:35, 40:45] = masks[2, 0:2, 0:50] = True
    saliency = torch.rand(3, 1, 40, 50) * 0.5
    saliency[0, 0, 7, 8] = saliency[1, 0, 33, 41] = saliency[2, 0, 1, 25] = 1.0
    result = pointing_game(saliency, [0, 1, 1], masks=masks)
    assert result.accuracy == 1.0 and result.overall_accuracy == 1.0
    assert result.hits.tolist() == [1, 2] and result.misses.tolist() == [0, 0]


def test_peak_16_pixels_away_misses_within_15_and_the_boundary_is_strict() -> None:
    """The mask is columns 40..59; a peak at column 24 is 16 pixels from column 40. TorchRay's
    rule is a strict inequality, d² < tolerance², so d = 16 hits only from tolerance 17 on."""
    mask = _column_mask((20, 80), 40, 59)
    at_16, at_15 = _peak((20, 80), 24, 10), _peak((20, 80), 25, 10)
    expected: dict[tuple[torch.Tensor, float], bool]
    expected = {(at_16, 15): False, (at_16, 16): False, (at_16, 17): True}
    expected |= {(at_15, 15): False, (at_15, 16): True, (at_15, 15.5): True}
    for (saliency, tolerance), hit in expected.items():
        assert PointingGame(tolerance=tolerance).add(saliency, 0, mask=mask) is hit


def test_the_distance_is_euclidean() -> None:
    """A mask pixel 9 columns and 12 rows away is at distance 15: out with 15, in with 16."""
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[32, 29] = True
    saliency = _peak((40, 40), 20, 20)
    assert not PointingGame(tolerance=15).add(saliency, 0, mask=mask)
    assert PointingGame(tolerance=16).add(saliency, 0, mask=mask)


def test_the_rule_is_torchrays() -> None:
    """Random masks and points: the same hits as torchray.benchmark.pointing_game.PointingGame."""
    from torchray.benchmark.pointing_game import PointingGame as TorchRayGame

    generator = torch.Generator().manual_seed(0)
    for tolerance in (3, 7, 15):
        theirs = TorchRayGame(num_classes=1, tolerance=tolerance)
        for _ in range(30):
            mask = torch.rand(30, 45, generator=generator) > 0.995
            x, y = (int(v) for v in torch.randint(0, 30, (2,), generator=generator))
            with warnings.catch_warnings():  # torchray calls torch.meshgrid without `indexing`
                warnings.simplefilter("ignore", UserWarning)
                expected = theirs.evaluate(mask, (x, y)) == 1
            ours = PointingGame(tolerance=tolerance).add(_peak((30, 45), x, y), 0, mask=mask)
            assert ours is expected


def test_a_small_map_is_resized_bilinearly_before_the_maximum() -> None:
    """An 8x8 map peaked at row 2, column 3, upsampled to 64x64 with half-pixel centres, peaks
    where the source coordinate (u + ½)/8 − ½ is closest to the peak: rows 19 and 20 tie (2 ∓
    1/16), columns 27 and 28 tie; the first in row-major order is (x, y) = (27, 19)."""
    small = torch.zeros(8, 8)
    small[2, 3] = 1.0
    assert max_point(small, (64, 64)) == (27, 19)
    assert max_point(small) == (3, 2)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[19, 27 + 15] = True  # 15 pixels to the right of the resized peak: a miss with 15
    assert not PointingGame().add(small, 0, mask=mask)
    assert PointingGame(tolerance=16).add(small, 0, mask=mask)


def test_tied_maxima_take_the_first_in_row_major_order() -> None:
    saliency = torch.zeros(10, 10)
    saliency[6, 1] = saliency[2, 8] = saliency[2, 9] = 5.0
    assert max_point(saliency) == (8, 2)


def test_per_class_accuracy_is_averaged_over_classes_by_hand() -> None:
    """Class 0: three images, two hits; class 1: one image, one hit; class 2 never seen.
    Mean of per-class accuracies (2/3 + 1) / 2 = 5/6; overall 3/4."""
    boxes = [[(0, 0, 10, 10)]] * 4
    saliency = torch.zeros(4, 1, 50, 50)
    for i, (y, x) in enumerate([(5, 5), (40, 40), (3, 8), (9, 0)]):
        saliency[i, 0, y, x] = 1.0
    result = pointing_game(saliency, [0, 0, 0, 1], boxes=boxes, tolerance=5, num_classes=3)
    assert result.hits.tolist() == [2, 1, 0] and result.misses.tolist() == [1, 0, 0]
    assert result.accuracy == pytest.approx(5 / 6)
    assert result.overall_accuracy == pytest.approx(3 / 4)
    assert result.class_accuracies[:2].tolist() == pytest.approx([2 / 3, 1.0])
    assert math.isnan(float(result.class_accuracies[2]))


def test_the_difficult_rule_by_hand() -> None:
    size = (40, 40)  # a quarter is 400 pixels
    assert is_difficult([(0, 0, 19, 20)], size, other_classes=1)  # 380 pixels
    assert not is_difficult([(0, 0, 20, 20)], size, other_classes=1)  # exactly a quarter
    assert not is_difficult([(0, 0, 19, 20)], size, other_classes=0)  # no distractor
    # the union counts: two overlapping 15x15 boxes cover 15·15 + 15·5 = 300 pixels, not 450
    assert is_difficult([(0, 0, 15, 15), (10, 0, 25, 15)], size, other_classes=2)
    # two stacked 15x15 boxes cover 450 pixels: not difficult
    assert not is_difficult([(0, 0, 15, 15), (0, 15, 15, 30)], size, other_classes=2)


def test_difficult_pairs_count_in_both_subsets() -> None:
    game = PointingGame(num_classes=2, tolerance=3)
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[:5, :5] = True
    near, far = _peak((20, 20), 2, 2), _peak((20, 20), 15, 15)
    game.add(near, 0, mask=mask, difficult=True)
    game.add(far, 0, mask=mask, difficult=True)
    game.add(near, 0, mask=mask)
    game.add(near, 1, mask=mask, difficult=True)
    game.add(far, 1, mask=mask)
    result = game.result()
    assert result.accuracy == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert result.difficult is not None
    assert result.difficult.hits.tolist() == [1, 1] and result.difficult.misses.tolist() == [1, 0]
    assert result.difficult.accuracy == pytest.approx((1 / 2 + 1) / 2)
    assert result.difficult.overall_accuracy == pytest.approx(2 / 3)


def test_boxes_follow_the_pixel_centre_rule() -> None:
    mask = boxes_to_mask([(2, 1, 5, 3), (1.2, 0.4, 1.6, 0.6)], (4, 6))
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1:3, 2:5] = True
    expected[0, 1] = True  # the centre (1.5, 0.5) of pixel (0, 1) is inside the small box
    assert torch.equal(mask, expected)
    assert not boxes_to_mask(torch.zeros(0, 4), (3, 3)).any()


def test_errors_name_the_argument() -> None:
    with pytest.raises(OptionError, match="tolerance"):
        PointingGame(tolerance=0)
    with pytest.raises(TargetError, match="class_id"):
        PointingGame(num_classes=2).add(torch.rand(5, 5), 2, boxes=[(0, 0, 1, 1)])
    with pytest.raises(OptionError, match="exactly one"):
        PointingGame().add(torch.rand(5, 5), 0)
    with pytest.raises(InputError, match="channels"):
        pointing_game(torch.rand(2, 3, 5, 5), [0, 1], boxes=[[], []])
    with pytest.raises(TargetError, match="class_ids"):
        pointing_game(torch.rand(2, 1, 5, 5), [0], boxes=[[], []])
    with pytest.raises(InputError, match="NaN"):
        max_point(torch.full((3, 3), math.nan))


# --- PASCAL VOC 2007 -------------------------------------------------------------------------


def _voc_xml(
    name: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]
) -> str:
    parts = [
        f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for label, (xmin, ymin, xmax, ymax), difficult in objects:
        parts.append(
            f"<object><name>{label}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _fake_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / folder).mkdir(parents=True)
    images = {
        # a small dog (20x20 = 400 < 8000 / 4) next to a person who fills the image
        "000001": (100, 80, [("dog", (11, 21, 30, 40), 0), ("person", (1, 1, 100, 80), 0)]),
        # two car boxes, one PASCAL-difficult; a bottle whose only box is difficult
        "000002": (
            100,
            80,
            [("car", (1, 1, 10, 10), 0), ("car", (50, 50, 60, 60), 1), ("bottle", (5, 5, 8, 8), 1)],
        ),
        # a single large train: never difficult
        "000003": (60, 40, [("train", (1, 1, 60, 40), 0)]),
        # not in the test split
        "000004": (60, 40, [("cat", (1, 1, 5, 5), 0)]),
    }
    for name, (width, height, objects) in images.items():
        Image.new("RGB", (width, height), (120, 30, 200)).save(base / "JPEGImages" / f"{name}.jpg")
        (base / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, width, height, objects))
    (base / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000003\n")
    return base


def test_voc_reader_boxes_classes_and_difficult_flags(tmp_path: Path) -> None:
    _fake_voc(tmp_path)
    data = VOC2007(tmp_path)
    assert len(data) == 3 and [s.name for s in data] == ["000001", "000002", "000003"]
    first, second, third = data
    assert first.size == (80, 100) and first.image.size == (100, 80)
    assert first.class_ids == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    dog, person = first.objects
    assert dog.boxes.tolist() == [[10.0, 20.0, 30.0, 40.0]]
    assert int(dog.mask.sum()) == 400 and bool(dog.mask[20:40, 10:30].all())
    assert dog.difficult and not person.difficult
    # the bottle's boxes are all PASCAL-difficult: skipped as TorchRay does, but it still
    # counts as another class in the image, so the small cars are difficult
    assert second.class_ids == [VOC_CLASSES.index("car")]
    (car,) = second.objects
    assert car.boxes.shape == (2, 4) and int(car.mask.sum()) == 100 + 121
    assert car.difficult
    assert third.class_ids == [VOC_CLASSES.index("train")] and not third.objects[0].difficult


def test_voc_masks_are_torchrays(tmp_path: Path) -> None:
    from torchray.benchmark.datasets import voc_as_mask
    from torchvision.datasets import VOCDetection

    base = _fake_voc(tmp_path)
    for sample in VOC2007(tmp_path / "VOCdevkit"):
        xml = (base / "Annotations" / f"{sample.name}.xml").read_text()
        label = VOCDetection.parse_voc_xml(ET.fromstring(xml))
        for obj in sample.objects:
            assert torch.equal(obj.mask, voc_as_mask(label, obj.class_id))


def test_voc_difficult_flags_from_a_table(tmp_path: Path) -> None:
    """TorchRay's semantics: a listed image uses its flags; an unlisted image keeps all pairs."""
    _fake_voc(tmp_path)
    row = ["0"] * 20
    table = tmp_path / "flags.txt"
    table.write_text("000001\t" + "\t".join(row) + "\n000003\t" + "\t".join(["1"] * 20) + "\n")
    assert load_difficult_flags(table)["000001"] == (False,) * 20
    first, second, third = VOC2007(tmp_path, difficult_flags=table)
    assert [o.difficult for o in first.objects] == [False, False]
    assert [o.difficult for o in second.objects] == [True]  # not in the table
    assert [o.difficult for o in third.objects] == [True]


def test_voc_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit"):
        VOC2007(tmp_path)
    base = _fake_voc(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="split"):
        VOC2007(tmp_path, split="val")
    (base / "Annotations" / "000001.xml").write_text(
        _voc_xml("000001", 10, 10, [("unicorn", (1, 1, 2, 2), 0)])
    )
    with pytest.raises(DatasetError, match="unknown class 'unicorn'"):
        VOC2007(tmp_path)[0]
    with pytest.raises(DatasetError, match="one per class"):
        VOC2007(tmp_path, difficult_flags={"000001": [True]})


# --- COCO 2014 -------------------------------------------------------------------------------


def _fake_coco(root: Path) -> Path:
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    from pycocotools import mask as coco_mask

    blob = np.zeros((30, 40), dtype=np.uint8, order="F")
    blob[3:9, 30:37] = 1
    compressed = coco_mask.encode(blob)
    compressed["counts"] = compressed["counts"].decode()
    crowd = np.zeros((30, 40), dtype=np.uint8)
    crowd[10:20, 5:15] = 1
    runs: list[int] = []  # uncompressed RLE, column-major, starting with a run of zeros
    value, length = 0, 0
    for v in crowd.flatten(order="F").tolist():
        if v == value:
            length += 1
        else:
            runs.append(length)
            value, length = v, 1
    runs.append(length)
    data = {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 30, "width": 40},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": 30, "width": 40},
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": 30, "width": 40},
        ],
        "categories": [
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
        "annotations": [
            # image 7: a person polygon (a 10x20 rectangle) and a car polygon (a triangle)
            {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 200.0,
             "bbox": [10, 10, 10, 20], "segmentation": [[10, 10, 20, 10, 20, 30, 10, 30]]},
            {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 0, "area": 60.0,
             "bbox": [25.5, 2.0, 12.0, 10.0],
             "segmentation": [[25.5, 2.0, 37.5, 2.0, 31.0, 12.0]]},
            # image 42: a crowd of dogs as uncompressed RLE, and a dog as compressed RLE
            {"id": 3, "image_id": 42, "category_id": 18, "iscrowd": 1, "area": 100.0,
             "bbox": [5, 10, 10, 10], "segmentation": {"counts": runs, "size": [30, 40]}},
            {"id": 4, "image_id": 42, "category_id": 18, "iscrowd": 0, "area": 42.0,
             "bbox": [30, 3, 7, 6], "segmentation": compressed},
        ],
    }  # fmt: skip
    for image in data["images"]:
        Image.new("RGB", (40, 30), (0, 0, 0)).save(root / "val2014" / str(image["file_name"]))
    path = root / "annotations" / "instances_val2014.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_reader_classes_boxes_and_polygon_masks(tmp_path: Path) -> None:
    _fake_coco(tmp_path)
    data = COCO2014(tmp_path, mask_backend="numpy")
    assert data.classes == ("person", "car", "dog")  # categories 1, 3, 18 -> ids 0, 1, 2
    assert len(data) == 3
    first = data[0]  # image ids in increasing order: 7 first
    assert first.name == "COCO_val2014_000000000007" and first.size == (30, 40)
    assert first.class_ids == [0, 1]
    person, car = first.objects
    assert person.boxes.tolist() == [[10.0, 10.0, 20.0, 30.0]]
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[10:30, 10:20] = True
    assert torch.equal(person.mask, expected)
    # 200 of 1200 pixels is under a quarter and there is a car: difficult
    assert person.difficult and car.difficult
    assert car.boxes.tolist() == [[25.5, 2.0, 37.5, 12.0]]
    assert data[1].objects == () and data[1].name == "COCO_val2014_000000000009"


def test_coco_masks_match_pycocotools_and_torchray(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from torchray.benchmark.datasets import _COCO_CLASS_TO_INDEX, coco_as_mask

    path = _fake_coco(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    dataset = SimpleNamespace(coco=coco)
    exact, fallback = (
        COCO2014(tmp_path, mask_backend="pycocotools"),
        COCO2014(tmp_path, mask_backend="numpy"),
    )
    # TorchRay numbers the 80 real categories; ours number those of the file (the same on the
    # real file): translate through the category ids
    torchray_id = [_COCO_CLASS_TO_INDEX[c] for c in exact.category_ids]
    for index in (0, 2):
        sample = exact[index]
        image_id = int(sample.name.rsplit("_", 1)[1])
        label = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        for obj in sample.objects:
            with warnings.catch_warnings():  # pycocotools under NumPy 2
                warnings.simplefilter("ignore", DeprecationWarning)
                theirs = coco_as_mask(dataset, label, torchray_id[obj.class_id])
            assert torch.equal(obj.mask, theirs)
    # the crowd's uncompressed RLE decodes exactly without pycocotools
    crowd = exact[2].objects[0].mask
    # polygons: the rectangle is exact, the triangle differs on boundary pixels only
    person_exact, car_exact = exact[0].objects
    person_fallback, car_fallback = fallback[0].objects
    assert torch.equal(person_exact.mask, person_fallback.mask)
    overlap = (car_exact.mask & car_fallback.mask).sum() / (
        car_exact.mask | car_fallback.mask
    ).sum()
    assert float(overlap) > 0.85
    assert int(crowd.sum()) == 100 + 42
    with pytest.raises(DatasetError, match="compressed RLE"):
        fallback[2]


def test_coco_uncompressed_rle_without_pycocotools(tmp_path: Path) -> None:
    path = _fake_coco(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["id"] != 4]
    path.write_text(json.dumps(data))
    (crowd,) = COCO2014(tmp_path, mask_backend="numpy")[2].objects
    expected = torch.zeros(30, 40, dtype=torch.bool)
    expected[10:20, 5:15] = True
    assert torch.equal(crowd.mask, expected)
    assert not crowd.difficult  # the only class of its image


def test_polygons_follow_the_pixel_centre_rule() -> None:
    square = polygons_to_mask([[1, 1, 4, 1, 4, 3, 1, 3]], (5, 5))
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:3, 1:4] = True
    assert torch.equal(square, expected)
    with pytest.raises(DatasetError, match="3"):
        polygons_to_mask([[1, 1, 2, 2]], (5, 5))


def test_coco_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"instances_val2014\.json"):
        COCO2014(tmp_path)
    _fake_coco(tmp_path)
    with pytest.raises(OptionError, match="mask_backend"):
        COCO2014(tmp_path, mask_backend="opencv")  # type: ignore[arg-type]
    (tmp_path / "annotations" / "instances_val2014.json").write_text("{}")
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        COCO2014(tmp_path)


def test_pointing_game_over_a_reader(tmp_path: Path) -> None:
    """The readers feed the accumulator: a map peaked in each object's box hits everywhere."""
    _fake_voc(tmp_path)
    game = PointingGame(len(VOC_CLASSES))
    for sample in VOC2007(tmp_path):
        for obj in sample.objects:
            x0, y0, x1, y1 = obj.boxes[0].tolist()
            saliency = _peak(sample.size, int(x0 + x1) // 2, int(y0 + y1) // 2)
            assert game.add(saliency, obj.class_id, mask=obj.mask, difficult=obj.difficult)
    result = game.result()
    assert result.accuracy == 1.0 and result.count == 4
    assert result.difficult is not None and result.difficult.count == 2
