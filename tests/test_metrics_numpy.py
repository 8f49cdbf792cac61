"""The metrics that serve PyTorch and JAX alike (the pointing game, spearman, ssim) on NumPy and
JAX arrays: hand-computed values without torch installed, the same numbers as for torch tensors,
torch's bilinear resizing as the reference, and the lazy import of the metrics that need torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import backlight.metrics
from backlight.errors import InputError
from backlight.metrics import (
    PointingGame,
    boxes_to_mask,
    is_difficult,
    max_point,
    pointing_game,
    spearman,
    ssim,
)

#: Run before the code of a subprocess: torch and torchvision cannot be imported (as in
#: tests/test_jax.py's torch-free import test).
NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTorch())
"""

#: Sizes (h, w) -> (H, W): non-square, up, down, mixed and unchanged.
SIZES = [
    ((7, 7), (224, 224)),
    ((8, 5), (37, 61)),
    ((30, 40), (12, 9)),
    ((6, 9), (6, 20)),
    ((16, 12), (9, 30)),
    ((10, 13), (10, 13)),
]


def _without_torch(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter where torch cannot be imported; it prints one JSON
    object, returned here."""
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _resized(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch's bilinear resize (half-pixel centres) of one map (h, w), float16 in float32."""
    if saliency.dtype == torch.float16:
        saliency = saliency.float()
    return F.interpolate(saliency[None, None], size=size, mode="bilinear", align_corners=False)[
        0, 0
    ]


def _torch_max_point(
    saliency: torch.Tensor, size: tuple[int, int]
) -> tuple[tuple[int, int], float]:
    """The reference: the first maximum, in row-major order, of torch's resized map; with the gap
    between its largest and second-largest values."""
    flat = _resized(saliency, size).reshape(-1)
    index = int(torch.nonzero(flat == flat.max())[0, 0])
    top = torch.topk(flat, 2).values
    return (index % size[1], index // size[1]), float(top[0] - top[1])


# --- (a) without torch: values computed by hand ------------------------------------------------


def test_pointing_game_without_torch_by_hand() -> None:
    result = _without_torch(
        """
        import json, math
        import numpy as np
        import backlight.metrics as M

        # 4 x 4 maps: the maximum at row 1, column 2, inside the box, and at row 3, column 0,
        # outside it: √8 pixels from its only pixel (row 1, column 2)
        inside = np.zeros((4, 4)); inside[1, 2] = 1.0
        outside = np.zeros((4, 4)); outside[3, 0] = 1.0
        box = [(2, 1, 3, 2)]  # covers the single pixel (row 1, column 2)
        game = M.PointingGame(num_classes=2, tolerance=1)
        hits = [game.add(inside, 0, boxes=box), game.add(outside, 1, boxes=box, difficult=True)]
        hits.append(M.PointingGame(tolerance=2.9).add(outside, 0, boxes=box))  # distance √8
        result = game.result()

        batch = np.stack([inside, outside])[:, None]  # (2, 1, 4, 4)
        masks = np.zeros((2, 4, 4), dtype=bool); masks[:, 1, 2] = True
        batch_result = M.pointing_game(batch, np.array([0, 1]), masks=masks, tolerance=1)

        # a 2 x 2 map resized to 4 x 4: only row 0, column 3 keeps the corner's 1 (column 2 is
        # 0.25 · 0 + 0.75 · 1, row 1 is 0.75 · 1 + 0.25 · 0)
        corner = np.array([[0.0, 1.0], [0.0, 0.0]])
        # a 3 x 3 peak resized to 6 x 6: rows 2 and 3 tie (0.75), as do columns 2 and 3
        peak = np.zeros((3, 3)); peak[1, 1] = 1.0
        print(json.dumps({
            "hits": hits,
            "accuracy": result.accuracy,
            "table_hits": result.hits.tolist(),
            "difficult_misses": result.difficult.misses.tolist(),
            "kind": type(result.hits).__name__,
            "batch": batch_result.class_accuracies.tolist(),
            "batch_kind": type(batch_result.class_accuracies).__name__,
            "max_points": [M.max_point(inside), M.max_point(corner, (4, 4)),
                           M.max_point(peak, (6, 6)), M.max_point(peak[None, None], [3, 3])],
            "mask": M.boxes_to_mask(box, (4, 4)).astype(int).tolist(),
            "mask_kind": type(M.boxes_to_mask(box, (4, 4))).__name__,
            "difficult": [M.is_difficult(box, (4, 4), other_classes=1),
                          M.is_difficult([(0, 0, 2, 2)], (4, 4), other_classes=1)],
            "torch": "torch" in sys.modules,
        }))
        """
    )
    assert result["hits"] == [True, False, True]
    assert result["accuracy"] == 0.5  # class 0: 1/1, class 1: 0/1
    assert result["table_hits"] == [1, 0] and result["difficult_misses"] == [0, 1]
    assert result["kind"] == result["batch_kind"] == result["mask_kind"] == "ndarray"
    assert result["batch"] == [1.0, 0.0]
    assert result["max_points"] == [[2, 1], [3, 0], [2, 2], [1, 1]]
    assert result["mask"] == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert result["difficult"] == [True, False]  # 1 < 16 / 4 pixels; 4 is not less than 4
    assert result["torch"] is False


def test_spearman_and_ssim_without_torch_by_hand() -> None:
    result = _without_torch(
        """
        import json, math
        import numpy as np
        from backlight.metrics import spearman, ssim

        a = np.array([[1, 2, 2, 3], [3, 1, 1, 1], [5, 5, 5, 5]])
        b = np.array([[1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4]])
        rho = spearman(a, b)
        maps = np.random.default_rng(0).random((2, 9, 9))
        half = np.full((1, 3, 3), 0.5)
        print(json.dumps({
            "rho": [None if math.isnan(r) else r for r in rho.tolist()],
            "kind": type(rho).__name__,
            "same": ssim(maps, maps).tolist(),
            "half_vs_zero": ssim(half, np.zeros((1, 3, 3)), win_size=3).tolist(),
            "torch": "torch" in sys.modules,
        }))
        """
    )
    # average ranks: [1, 2.5, 2.5, 4] against [1, 2, 3, 4]: centred, 4.5 / √(4.5 · 5) = √0.9;
    # [4, 2, 2, 2] against [4, 3, 2, 1]: 3 / √(3 · 5); a constant sample has no correlation
    assert result["rho"][0] == pytest.approx(math.sqrt(0.9), abs=1e-15)
    assert result["rho"][1] == pytest.approx(3 / math.sqrt(15), abs=1e-15)
    assert result["rho"][2] is None
    assert result["kind"] == "ndarray"
    assert result["same"] == [1.0, 1.0]
    # one 3 x 3 window: μa = 0.5, μb = 0, no variance: C1 C2 / ((0.25 + C1) C2) = C1 / (0.25 + C1)
    c1 = 0.01**2
    assert result["half_vs_zero"] == [pytest.approx(c1 / (0.25 + c1), rel=1e-12)]
    assert result["torch"] is False


# --- (d) the lazy import of what needs torch -----------------------------------------------


def test_torch_only_names_fail_clearly_without_torch() -> None:
    result = _without_torch(
        """
        import json
        import backlight.metrics as M

        errors = []
        try:
            M.deletion
        except ImportError as e:
            errors.append(str(e))
        try:
            from backlight.metrics import VOC2007
        except ImportError as e:
            errors.append(str(e))
        try:
            M.no_such_name
        except AttributeError as e:
            errors.append(type(e).__name__)
        print(json.dumps({"errors": errors, "dir": dir(M), "all": M.__all__}))
        """
    )
    deletion, voc, missing = result["errors"]
    assert (
        "backlight.metrics.deletion needs PyTorch" in deletion and "pip install torch" in deletion
    )
    assert "backlight.metrics.VOC2007 needs PyTorch" in voc
    assert missing == "AttributeError"
    assert set(result["all"]) <= set(result["dir"])
    assert {"deletion", "randomization", "VOC2007", "pointing_game", "ssim"} <= set(result["dir"])


def test_torch_only_names_import_lazily_with_torch() -> None:
    from backlight.metrics import PerturbationCurves, deletion, randomization

    assert deletion.__module__ == "backlight.metrics._causal"
    assert randomization.__module__ == "backlight.metrics._randomization"
    assert PerturbationCurves.__name__ == "PerturbationCurves"
    assert backlight.metrics._datasets.VOC2007 is backlight.metrics.VOC2007
    assert set(backlight.metrics.__all__) <= set(dir(backlight.metrics))
    with pytest.raises(AttributeError, match="no_such_name"):
        backlight.metrics.no_such_name  # noqa: B018


# --- (b) NumPy and torch give the same numbers -------------------------------------------------


@pytest.mark.parametrize(("shape", "size"), SIZES)
def test_max_point_matches_torchs_bilinear_resize(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    """A tensor map is resized by torch, so its point is the reference's exactly, float16 to
    float64. An array is resized by NumPy to within 1e-13 of torch: the same point whenever the
    maximum is unique; where pixels tie (beyond the last pixel centre upsampling is flat) the
    first tied pixel may differ by rounding, so the point is then one of the reference's maxima."""
    generator = torch.Generator().manual_seed(sum(shape) + sum(size))
    unique = 0
    for trial in range(60):
        saliency = torch.rand(*shape, generator=generator, dtype=torch.float64)
        if trial % 3 == 0:
            saliency = torch.relu(saliency - 0.6)  # zeros around the peaks, as after a ReLU
        expected, gap = _torch_max_point(saliency, size)
        for dtype in (torch.float64, torch.float32, torch.float16):
            cast = saliency.to(dtype)
            assert max_point(cast, size) == _torch_max_point(cast, size)[0]
        point = max_point(saliency.numpy(), size)
        if gap > 1e-12:
            unique += 1
            assert point == expected
        else:
            resized = _resized(saliency, size)
            assert float(resized.max() - resized[point[1], point[0]]) <= 1e-12
    assert unique >= 15  # the equality is tested on a good share of the maps


def test_pointing_game_numpy_equals_torch_on_random_maps() -> None:
    """Random maps, masks, classes and difficult flags, at several map and image sizes: every
    number of the result is the same for arrays as for tensors; the tables' kinds follow."""
    generator = torch.Generator().manual_seed(3)
    for (h, w), size in SIZES:
        saliency = torch.rand(24, 1, h, w, generator=generator, dtype=torch.float64)
        saliency[..., -1, :] = saliency[..., :, -1] = 0  # no tie beyond the last pixel centre
        masks = torch.rand(24, *size, generator=generator) > 0.97
        classes = torch.randint(0, 4, (24,), generator=generator)
        difficult = (torch.rand(24, generator=generator) > 0.5).tolist()
        for tolerance in (1, 4.5, 15):
            ours = pointing_game(
                saliency.numpy(), classes.numpy(), masks=masks.numpy(),
                difficult=difficult, tolerance=tolerance, num_classes=5,
            )  # fmt: skip
            theirs = pointing_game(
                saliency, classes, masks=masks, difficult=difficult, tolerance=tolerance,
                num_classes=5,
            )  # fmt: skip
            assert isinstance(ours.hits, np.ndarray) and isinstance(theirs.hits, torch.Tensor)
            for a, b in ((ours, theirs), (ours.difficult, theirs.difficult)):
                assert a is not None and b is not None
                assert a.accuracy == b.accuracy and a.overall_accuracy == b.overall_accuracy
                np.testing.assert_array_equal(a.hits, b.hits.numpy())
                np.testing.assert_array_equal(a.misses, b.misses.numpy())
                np.testing.assert_array_equal(a.class_accuracies, b.class_accuracies.numpy())
                assert a.class_accuracies.dtype == np.float64 and a.hits.dtype == np.int64
            assert ours.count == 24
    # one game fed arrays, its twin tensors, with boxes and points: the same counts
    game, twin = PointingGame(num_classes=3, tolerance=6), PointingGame(num_classes=3, tolerance=6)
    for i in range(12):
        box = torch.randint(0, 30, (2, 4), generator=generator).double().sort(dim=1).values
        box = box[:, [0, 2, 1, 3]]  # x0 <= x1, y0 <= y1
        saliency = torch.rand(1, 9, 11, generator=generator, dtype=torch.float64)
        saliency[..., -1, :] = saliency[..., :, -1] = 0
        hit = game.add(saliency.numpy(), i % 3, boxes=box.numpy(), size=(40, 44))
        assert hit == twin.add(saliency, i % 3, boxes=box, size=(40, 44))
        point = (float(i * 3), float(i * 2))
        assert game.add_point(point, i % 3, boxes=box.numpy(), size=(40, 44)) == twin.add_point(
            point, i % 3, boxes=box, size=(40, 44)
        )
    np.testing.assert_array_equal(game.result().hits, twin.result().hits.numpy())
    assert game.result().accuracy == twin.result().accuracy


def test_boxes_to_mask_follows_the_input_kind() -> None:
    boxes = [(2, 1, 5, 3), (1.2, 0.4, 1.6, 0.6)]
    expected = np.zeros((4, 6), dtype=bool)
    expected[1:3, 2:5] = True
    expected[0, 1] = True
    from_array = boxes_to_mask(np.array(boxes), (4, 6))
    from_tensor = boxes_to_mask(torch.tensor(boxes), (4, 6))
    assert isinstance(from_array, np.ndarray) and from_array.dtype == np.bool_
    assert isinstance(from_tensor, torch.Tensor) and from_tensor.dtype == torch.bool
    np.testing.assert_array_equal(from_array, expected)
    np.testing.assert_array_equal(from_tensor.numpy(), expected)
    # Python rows keep giving a tensor where torch is installed, as before arrays were taken
    assert isinstance(boxes_to_mask(boxes, (4, 6)), torch.Tensor)
    assert not is_difficult(np.array(boxes), (4, 6), other_classes=1)  # 7 pixels, not < 24 / 4
    assert is_difficult(np.array(boxes[:1]) - [0, 0, 2, 1], (4, 6), other_classes=1)  # 1 pixel


def test_a_game_returns_tensors_once_a_tensor_was_added() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[1, 1] = True  # √2 pixels from the maximum of the identity, at (0, 0)
    game = PointingGame(tolerance=2)
    game.add(np.eye(8), 0, mask=mask)
    assert isinstance(game.result().hits, np.ndarray)
    game.add(torch.eye(8), 0, mask=mask)
    assert isinstance(game.result().hits, torch.Tensor)
    assert game.result().hits.tolist() == [2]
    game.reset()
    game.add(np.eye(8), 0, mask=torch.from_numpy(mask))  # a tensor mask counts too
    assert isinstance(game.result().hits, torch.Tensor)


def test_spearman_and_ssim_numpy_match_scipy_scikit_image_and_torch() -> None:
    """Arrays against the references (scipy's average ranks, scikit-image's SSIM); tensors give
    the same float64 numbers, as tensors."""
    scipy_stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    a = rng.integers(0, 6, (5, 3, 7, 5)).astype(np.float64)  # many ties
    b = a + rng.random((5, 3, 7, 5)) * 3
    rho = spearman(a, b)
    assert isinstance(rho, np.ndarray) and rho.dtype == np.float64 and rho.shape == (5,)
    for i in range(5):
        theirs = scipy_stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic
        assert rho[i] == pytest.approx(theirs, abs=1e-12)
    as_tensor = spearman(torch.from_numpy(a).float(), torch.from_numpy(b))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float64
    np.testing.assert_allclose(as_tensor.numpy(), spearman(a.astype(np.float32), b), atol=1e-15)

    for shape in ((3, 16, 16), (2, 3, 12, 9), (1, 5, 6), (2, 40, 31)):
        x = rng.random(shape)
        y = np.clip(x + 0.4 * rng.random(shape), 0, 1)
        ours = ssim(x, y)
        assert isinstance(ours, np.ndarray) and ours.shape == (shape[0],)
        for i in range(shape[0]):
            side = min(7, *shape[-2:])
            theirs = metrics.structural_similarity(
                x[i], y[i], data_range=1.0, win_size=side - 1 + side % 2,
                channel_axis=0 if len(shape) == 4 else None,
            )  # fmt: skip
            assert ours[i] == pytest.approx(theirs, abs=1e-10)
        as_tensor = ssim(torch.from_numpy(x), torch.from_numpy(y))
        assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float64
        np.testing.assert_allclose(as_tensor.numpy(), ours, rtol=0, atol=1e-15)


def test_array_inputs_are_checked_like_tensors() -> None:
    with pytest.raises(InputError, match="one of each"):
        spearman(np.ones((1, 4)), torch.ones(1, 4))
    with pytest.raises(InputError, match="NaN"):
        ssim(np.full((1, 8, 8), np.nan), np.zeros((1, 8, 8)))
    with pytest.raises(InputError, match="real numbers"):
        spearman(np.array([["a", "b"]]), np.array([["c", "d"]]))
    with pytest.raises(InputError, match="NaN"):
        max_point(np.full((3, 3), np.inf))
    with pytest.raises(InputError, match="channels"):
        pointing_game(np.zeros((2, 3, 5, 5)), [0, 1], boxes=[[], []])
    with pytest.raises(InputError, match="boolean"):
        PointingGame().add(np.eye(4), 0, mask=np.eye(4) * 0.5)
    with pytest.raises(InputError, match="one mask per map"):
        pointing_game(np.zeros((2, 5, 5)), [0, 1], masks=np.zeros((5, 5), dtype=bool))


# --- (c) JAX arrays ----------------------------------------------------------------------------


def test_jax_arrays_are_scored_as_numpy_arrays() -> None:
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(5)
    maps = rng.random((6, 1, 7, 9)).astype(np.float32)
    maps[..., -1, :] = maps[..., :, -1] = 0
    masks = rng.random((6, 28, 36)) > 0.95
    classes = np.array([0, 1, 2, 0, 1, 2])
    tensors = torch.from_numpy(maps).double()  # the values JAX holds, resized by torch
    ours = pointing_game(jnp.asarray(maps), jnp.asarray(classes), masks=jnp.asarray(masks))
    reference = pointing_game(tensors, classes.tolist(), masks=torch.from_numpy(masks))
    assert isinstance(ours.hits, np.ndarray)
    np.testing.assert_array_equal(ours.hits, reference.hits.numpy())
    assert ours.accuracy == reference.accuracy and ours.count == 6
    for i in range(6):
        game = PointingGame(num_classes=3)
        hit = game.add(jnp.asarray(maps[i]), jnp.asarray(classes[i]), mask=jnp.asarray(masks[i]))
        assert hit == PointingGame().add(tensors[i], int(classes[i]), mask=masks[i])
        assert isinstance(game.result().hits, np.ndarray)
        assert max_point(jnp.asarray(maps[i, 0]), (28, 36)) == max_point(tensors[i], (28, 36))
    rho = spearman(jnp.asarray([[1, 2, 2, 3]]), jnp.asarray([[1, 2, 3, 4]]))
    assert isinstance(rho, np.ndarray) and rho[0] == pytest.approx(math.sqrt(0.9), abs=1e-15)
    x = jnp.asarray(rng.random((2, 12, 12)))
    assert isinstance(ssim(x, x), np.ndarray) and ssim(x, x).tolist() == [1.0, 1.0]
