"""Parity with tf-keras-vis 0.8.7 on the TensorFlow backend, from maps it computed once
(``tests/keras_reference/make_references.py``: the small model, weights seed 0, input seed 1,
before any normalisation, at the layer's resolution), against backlight on the torch backend
with the same weights.

Where the definitions agree, the maps agree to float32 rounding (relative error < 1e-4). Where
tf-keras-vis computes something else, its form is an option of ours (``variant="tf_keras_vis"``,
``average="channels"``, ``gradient="guided"``) and the tests show both: that the option gives
its numbers and that the default gives the paper's, which are not its.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import backlight

from .keras_reference.model import CLASSES, build

if os.environ.get("BACKLIGHT_REQUIRE_KERAS") == "1":
    import keras
else:
    keras = pytest.importorskip("keras")

if keras.backend.backend() != "torch":
    pytest.skip("Keras runs on another backend in this process", allow_module_level=True)

HERE = Path(__file__).parent / "keras_reference"


@pytest.fixture(scope="module")
def refs() -> dict[str, np.ndarray]:
    with np.load(HERE / "references.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def model() -> Any:
    m = build(keras)
    m.load_weights(HERE / "small.weights.h5")
    return m


def relative_error(ours: Any, theirs: np.ndarray) -> float:
    ours = np.asarray(torch.as_tensor(ours), dtype=np.float64)
    theirs = theirs.astype(np.float64)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def test_the_same_network_on_both_backends(model, refs) -> None:
    """The weights file carries the network across: the probabilities agree, and the score
    backlight explains is tf-keras-vis' logit after ReplaceToLinear."""
    probabilities = model(torch.tensor(refs["x"])).detach().numpy()
    assert relative_error(probabilities, refs["probabilities"]) < 1e-5
    scores = backlight.gradient(model, refs["x"], CLASSES).scores
    assert relative_error(scores, refs["logits"][[0, 1], CLASSES]) < 1e-5


@pytest.mark.parametrize(
    ("key", "method", "options"),
    [
        ("saliency", backlight.gradient, {}),
        ("gradient", backlight.gradient, {"reduce": None}),
        ("guided", backlight.guided_backprop, {}),
        ("rectified", backlight.rectified, {}),
        ("gradcam", backlight.grad_cam, {}),
        ("gradcam_conv2", backlight.grad_cam, {"layer": "conv2"}),
        ("gradcam_guided", backlight.grad_cam, {"layer": "conv2", "gradient": "guided"}),
        ("gradcam_plus_plus", backlight.grad_cam_plus_plus, {"variant": "tf_keras_vis"}),
        ("scorecam", backlight.score_cam, {"variant": "tf_keras_vis", "progress": False}),
        (
            "scorecam_max_n",
            backlight.score_cam,
            {"variant": "tf_keras_vis", "channels": 4, "progress": False},
        ),
    ],
)
def test_tf_keras_vis_numbers(model, refs, key, method, options) -> None:
    ours = method(model, refs["x"], CLASSES, **options)
    # tf-keras-vis returns (N, H, W) maps, or (N, H, W, C) with keepdims
    ours = ours.permute(0, 2, 3, 1) if ours.shape[1] > 1 else ours[:, 0]
    assert relative_error(ours, refs[key]) < 1e-4


def test_a_keras_file_saved_under_tensorflow_loads_under_torch(refs) -> None:
    model = backlight.load_keras(HERE / "small_tf.keras")
    ours = backlight.grad_cam(model, refs["x"], CLASSES)[:, 0]
    assert relative_error(ours, refs["gradcam"]) < 1e-4


def test_saliency_is_the_gradient_of_the_logit_not_the_probability(model, refs) -> None:
    """Without ReplaceToLinear tf-keras-vis would explain the probability; backlight takes the
    logit with the model untouched, and the probability only when asked."""
    adapter = backlight.KerasModel(model, probability=True)
    of_probability = backlight.gradient(adapter, adapter.input(refs["x"]), CLASSES)[:, 0]
    assert relative_error(of_probability, refs["saliency"]) > 0.1


def test_gradcam_plus_plus_paper_form_differs(model, refs) -> None:
    """tf-keras-vis normalises each channel's α over the positions (and carries exp(score)):
    another map, not a rescaling of the paper's."""
    paper = backlight.grad_cam_plus_plus(model, refs["x"], CLASSES)[:, 0].numpy()
    theirs = refs["gradcam_plus_plus"]
    # after scaling each map to its maximum, the shapes still differ
    unit = paper / paper.max(axis=(1, 2), keepdims=True)
    their_unit = theirs / theirs.max(axis=(1, 2), keepdims=True)
    assert np.abs(unit - their_unit).max() > 0.05


def test_scorecam_batching_makes_a_map_depend_on_its_batch(model, refs) -> None:
    """tf-keras-vis keeps the top channels of every sample for the whole batch: the first
    image's map changes when the second image is in the batch. backlight's default chooses per
    image."""
    # (the two images' 7 strongest channels are the same ones; their 8th differ)
    x, options = refs["x"], {"channels": 8, "progress": False}
    alone = backlight.score_cam(model, x[:1], CLASSES[0], variant="tf_keras_vis", **options)
    batched = backlight.score_cam(model, x, CLASSES, variant="tf_keras_vis", **options)
    assert relative_error(batched[:1], alone.numpy()) > 1e-3
    ours_alone = backlight.score_cam(model, x[:1], CLASSES[0], **options)
    ours_batched = backlight.score_cam(model, x, CLASSES, **options)
    torch.testing.assert_close(ours_batched[:1], ours_alone)
    assert relative_error(ours_batched[:, 0], refs["scorecam_max_n"]) > 1e-3
