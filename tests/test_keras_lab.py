"""The Keras course lab, step by step, with backlight instead of tf-keras-vis: VGG16 from
``keras.applications``, three images, the scores of classes 1, 294 and 413, Saliency with
SmoothGrad, Gradcam, Gradcam++, ScoreCAM, and the overlays. Random weights (no download), so
the assertions are about what each step computes, not about where a trained model looks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import backlight

if os.environ.get("BACKLIGHT_REQUIRE_KERAS") == "1":
    import keras
else:
    keras = pytest.importorskip("keras")

if keras.backend.backend() != "torch":
    pytest.skip("Keras runs on another backend in this process", allow_module_level=True)

CLASSES = [1, 294, 413]  # goldfish, brown bear, assault rifle: the lab's scores


@pytest.fixture(scope="module")
def lab() -> tuple[Any, np.ndarray, np.ndarray]:
    from skimage import data

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None)  # the lab loads weights="imagenet"
    images = np.stack(
        [
            np.asarray(Image.fromarray(picture).resize((224, 224)))
            for picture in (data.chelsea(), data.astronaut(), data.coffee())
        ]
    ).astype("float32")
    x = keras.applications.vgg16.preprocess_input(images.copy())
    return model, images, x


def test_the_lab_end_to_end(lab, tmp_path: Path) -> None:
    from backlight import viz

    model, images, x = lab
    weights_before = [w.copy() for w in model.get_weights()]
    activation_before = model.get_layer("predictions").activation

    # scores: the logits of classes 1, 294, 413 (tf-keras-vis: ReplaceToLinear + CategoricalScore)
    head = model.get_layer("predictions")
    features = keras.Model(model.inputs, head.input)(torch.tensor(x.copy()))
    logits = (features @ head.kernel.value + head.bias.value).detach()

    smooth = backlight.smooth_grad(
        backlight.gradient,
        model,
        x,
        CLASSES,
        samples=2,
        noise=0.2,
        average="channels",
        progress=False,
    )
    paper = backlight.smooth_grad(
        backlight.gradient, model, x, CLASSES, samples=2, noise=0.2, progress=False
    )
    cam = backlight.grad_cam(model, x, CLASSES, resize=True)
    cam_pp = backlight.grad_cam_plus_plus(model, x, CLASSES, resize=True, variant="tf_keras_vis")
    score = backlight.score_cam(
        model, x, CLASSES, resize=True, channels=10, variant="tf_keras_vis", progress=False
    )

    torch.testing.assert_close(cam.scores, logits[[0, 1, 2], CLASSES])
    assert cam.layer == "block5_conv3" and cam_pp.layer == "block5_conv3"
    for maps in (smooth, cam, cam_pp, score):
        assert maps.shape == (3, 1, 224, 224)
        assert bool(torch.isfinite(maps).all()) and float(maps.min()) >= 0
    # the mean of the per-draw maxima is at least the maximum of the means, pixel by pixel
    assert bool((paper >= smooth - 1e-6).all()) and float((paper - smooth).max()) > 0
    # another class, another map
    other = backlight.grad_cam(model, x, [2, 2, 2], resize=True)
    assert float((other - cam).abs().max()) > 1e-3 * float(cam.abs().max())

    # overlays, as the lab draws them with matplotlib: one PNG per image and method
    for name, maps in {
        "saliency": smooth,
        "gradcam": cam,
        "gradcam++": cam_pp,
        "scorecam": score,
    }.items():
        for i in range(3):
            path = viz.save_png(tmp_path / f"{name}_{i}.png", viz.overlay(images[i] / 255, maps[i]))
            with Image.open(path) as png:
                assert png.size == (224, 224)
    assert np.asarray(viz.normalize(cam[:, 0].numpy())).max() == pytest.approx(1.0)

    assert all(
        np.array_equal(a, b) for a, b in zip(weights_before, model.get_weights(), strict=True)
    )
    assert model.get_layer("predictions").activation is activation_before
