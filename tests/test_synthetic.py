"""The synthetic shapes: seeded, with exact masks and tight boxes, and no class in the clutter."""

from __future__ import annotations

import doctest
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.measure import regionprops

import backlight
from backlight.data import CLASSES, IMAGE_SIZE, Sample, SyntheticShapes, make_batch, synthetic

N = 360  # 60 blocks of six: every class 60 times


@functools.cache
def samples(seed: int = 5) -> tuple[Sample, ...]:
    data = SyntheticShapes(N, seed=seed)
    return tuple(data[i] for i in range(N))


@functools.cache
def backgrounds(seed: int = 5) -> torch.Tensor:
    data = SyntheticShapes(N, seed=seed)
    return torch.stack([data.background(i) for i in range(N)])


def dilate(mask: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Grow a bool mask (..., H, W) by ``pixels`` in all eight directions."""
    flat = mask.float().reshape(-1, 1, *mask.shape[-2:])
    grown = F.max_pool2d(flat, 2 * pixels + 1, 1, padding=pixels)
    return grown.reshape(mask.shape).bool()


def labels_of(items: tuple[Sample, ...]) -> np.ndarray:
    return np.array([s.label for s in items])


def test_images_are_float_rgb_in_unit_range() -> None:
    images = torch.stack([s.image for s in samples()])
    assert images.dtype == torch.float32
    assert images.shape == (N, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.std(dim=(1, 2, 3)).min()) > 0.05  # cluttered, never flat
    assert len(CLASSES) == len(set(CLASSES)) == 6


def test_same_seed_same_samples_different_seed_different() -> None:
    first = make_batch(12, seed=11)
    again = make_batch(12, seed=11)
    other = make_batch(12, seed=12)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], other[1]) or not torch.equal(first[2], other[2])
    # every single image differs, not only the batch as a whole
    assert bool((first[0] - other[0]).abs().amax(dim=(1, 2, 3)).gt(0.1).all())


def test_item_depends_only_on_seed_and_index() -> None:
    data = SyntheticShapes(50, seed=7)
    backwards = {i: data[i] for i in reversed(range(40, 50))}
    fresh = SyntheticShapes(1000, seed=7)  # another length, another object, another order
    for i in (49, 41, 45):
        a, b = backwards[i], fresh[i]
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
        assert (a.label, a.box) == (b.label, b.box)
    images, labels, masks = make_batch(3, seed=7, start=44)
    for k, i in enumerate(range(44, 47)):
        assert torch.equal(images[k], data[i].image)
        assert int(labels[k]) == data[i].label
        assert torch.equal(masks[k, 0], data[i].mask)
    assert torch.equal(data[-1].image, data[49].image)


def test_a_dataloader_batches_the_same_items() -> None:
    data = SyntheticShapes(8, seed=2)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)
    image, label, mask, box = next(iter(loader))
    images, labels, masks = make_batch(4, seed=2)
    assert torch.equal(image, images) and torch.equal(label, labels)
    assert torch.equal(mask, masks[:, 0])
    assert [int(b) for b in box[0]] == [data[i].box[0] for i in range(4)]


def test_labels_are_balanced_in_every_block_of_six() -> None:
    labels = labels_of(samples())
    blocks = labels.reshape(-1, len(CLASSES))
    assert (np.sort(blocks, axis=1) == np.arange(len(CLASSES))).all()
    # the order within a block is random, not one fixed order
    assert len({tuple(b) for b in blocks}) > 40
    # and the first item's class is spread evenly too
    assert np.bincount(blocks[:, 0], minlength=6).max() < 25


def test_box_is_the_tight_box_of_the_mask() -> None:
    for s in samples():
        x0, y0, x1, y1 = s.box
        assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
        assert int(s.mask[y0:y1, x0:x1].sum()) == int(s.mask.sum())
        # every edge of the box touches the mask
        assert bool(s.mask[y0, x0:x1].any()) and bool(s.mask[y1 - 1, x0:x1].any())
        assert bool(s.mask[y0:y1, x0].any()) and bool(s.mask[y0:y1, x1 - 1].any())


def test_masks_are_never_empty_never_the_whole_image_and_inside_it() -> None:
    masks = torch.stack([s.mask for s in samples()])
    area = masks.sum(dim=(1, 2)).float() / IMAGE_SIZE**2
    assert float(area.min()) > 0.02  # about 80 pixels at 64x64
    assert float(area.max()) < 0.45
    border = masks[:, 0].any() | masks[:, -1].any() | masks[:, :, 0].any() | masks[:, :, -1].any()
    assert not bool(border)  # the whole object is in the picture
    # sizes vary, for every class
    for label in range(len(CLASSES)):
        of_class = area[torch.from_numpy(labels_of(samples()) == label)]
        assert float(of_class.max()) > 2.5 * float(of_class.min()), CLASSES[label]


def test_the_mask_is_the_pixels_the_object_changed() -> None:
    images = torch.stack([s.image for s in samples()])
    masks = torch.stack([s.mask for s in samples()])
    changed = (images != backgrounds()).any(dim=1)
    # every pixel of the mask is the object's ...
    assert bool((changed | ~masks).all())
    # ... and the object changed nothing beyond the antialiasing rim of the mask: one pixel wide,
    # two at the sharp tips of a star
    stars = torch.from_numpy(labels_of(samples()) == CLASSES.index("star"))
    assert not bool((changed[~stars] & ~dilate(masks[~stars], 1)).any())
    assert not bool((changed[stars] & ~dilate(masks[stars], 2)).any())
    rim = changed & ~masks
    assert int(rim.sum()) < 0.6 * int(masks.sum())  # a thin rim, not a second object


def test_the_mask_has_the_shape_of_its_class() -> None:
    """Ring: one hole; the others: none. Disc, square, triangle: convex; star and cross: not."""
    solidity: dict[str, list[float]] = {name: [] for name in CLASSES}
    for s in samples():
        name = CLASSES[s.label]
        (region,) = regionprops(s.mask.numpy().astype(np.uint8))
        assert region.euler_number == (0 if name == "ring" else 1), name
        solidity[name].append(region.solidity)
    for name in ("circle", "square", "triangle"):
        assert min(solidity[name]) > 0.85, name
    for name in ("star", "cross", "ring"):
        assert max(solidity[name]) < 0.8, name
    # a disc fills pi/4 of its box; a rotated square, triangle, star or cross does not
    circles = [s for s in samples() if CLASSES[s.label] == "circle"]
    for s in circles:
        x0, y0, x1, y1 = s.box
        assert abs(x1 - x0 - (y1 - y0)) <= 1
        assert int(s.mask.sum()) / ((x1 - x0) * (y1 - y0)) == pytest.approx(np.pi / 4, abs=0.06)


def test_the_background_never_sees_the_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every item another class: the clutter and everything off the object stay the same."""
    data = SyntheticShapes(24, seed=9)
    before = [data[i] for i in range(24)]
    backgrounds_before = [data.background(i) for i in range(24)]
    real_label = synthetic._label
    monkeypatch.setattr(synthetic, "_label", lambda seed, i: (real_label(seed, i) + 1) % 6)
    for i, old in enumerate(before):
        new = data[i]
        assert new.label == (old.label + 1) % 6
        assert not torch.equal(new.mask, old.mask)
        assert torch.equal(data.background(i), backgrounds_before[i])
        off_object = ~dilate(new.mask | old.mask, 2)
        assert torch.equal(new.image[:, off_object], old.image[:, off_object])


def nearest_centroid_accuracy(features: torch.Tensor, labels: np.ndarray) -> float:
    """Fit class means on two thirds of the samples (standardised features); score the rest."""
    y = torch.from_numpy(labels)
    x = (features - features.mean(0)) / (features.std(0) + 1e-9)
    split = 2 * len(y) // 3
    centroids = torch.stack([x[:split][y[:split] == k].mean(0) for k in range(len(CLASSES))])
    predicted = torch.cdist(x[split:], centroids).argmin(1)
    return float((predicted == y[split:]).float().mean())


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per image: channel means and stds, edge energy, and the 2x2-pooled colours."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(2, 3))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(2, 3))
    pooled = F.adaptive_avg_pool2d(images, 2).flatten(1)
    return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3)), dx, dy, pooled], dim=1)


def test_no_class_signal_in_background_or_colours_but_in_the_shape() -> None:
    labels = labels_of(samples())
    masks = torch.stack([s.mask for s in samples()])
    images = torch.stack([s.image for s in samples()])
    chance_bound = 1 / 6 + 0.14  # 120 test samples: chance is 1/6 ± 0.034 (one sd)

    # the clutter: at chance
    background_accuracy = nearest_centroid_accuracy(image_statistics(backgrounds()), labels)
    assert background_accuracy < chance_bound

    # the object's colours and texture: at chance
    inside = masks[:, None].expand_as(images).float()
    area = inside.sum(dim=(2, 3))
    mean = (images * inside).sum(dim=(2, 3)) / area
    spread = ((images - mean[..., None, None]) ** 2 * inside).sum(dim=(2, 3)) / area
    colour_accuracy = nearest_centroid_accuracy(torch.cat([mean, spread], 1), labels)
    assert colour_accuracy < chance_bound

    # the same classifier finds the class in the mask's shape: the test has the power to fail
    pixels = masks.sum(dim=(1, 2)).float()
    edge = (masks & dilate(~masks)).sum(dim=(1, 2)).float()  # pixels on the outline
    boxes = torch.tensor([s.box for s in samples()], dtype=torch.float32)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    shape = torch.stack([edge**2 / pixels, pixels / box_area], dim=1)
    assert nearest_centroid_accuracy(shape, labels) > 0.5


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"length": -1}, "length"),
        ({"length": 10, "seed": -3}, "seed"),
        ({"length": 10, "seed": 1.5}, "seed"),
        ({"length": 10, "size": 16}, "size"),
        ({"length": 10, "size": True}, "size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(backlight.OptionError, match=f"`{argument}` must be an integer"):
        SyntheticShapes(**kwargs)  # type: ignore[arg-type]


def test_bad_batches_and_indices() -> None:
    with pytest.raises(backlight.OptionError, match="`n` must be an integer >= 1"):
        make_batch(0)
    with pytest.raises(backlight.OptionError, match="`start`"):
        make_batch(2, start=-1)
    data = SyntheticShapes(5)
    with pytest.raises(IndexError, match=r"use 0 to 4, or a larger `length`"):
        data[5]
    with pytest.raises(IndexError):
        data[-6]
    with pytest.raises(TypeError, match="`index` must be an int"):
        data[1.0]  # type: ignore[index]
    assert len(list(data)) == 5  # iteration stops at the end


def test_other_sizes() -> None:
    images, labels, masks = make_batch(6, seed=1, size=96)
    assert images.shape == (6, 3, 96, 96) and masks.shape == (6, 1, 96, 96)
    assert sorted(labels.tolist()) == list(range(6))
    area = masks.sum(dim=(1, 2, 3)).float() / 96**2
    assert float(area.min()) > 0.02 and float(area.max()) < 0.45


def test_docstring_examples_run() -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for obj in (SyntheticShapes, make_batch):
        for test in doctest.DocTestFinder().find(obj, obj.__name__, globs={}):
            runner.run(test)
    assert runner.tries >= 6 and runner.failures == 0
