"""Compute tf-keras-vis 0.8 maps on the TensorFlow backend, for the parity tests of the Keras
front end (tests/test_keras_parity.py). Not run by CI: TensorFlow is 2.4 GB.

Command (from the repository root, in an environment with tensorflow-cpu 2.21, keras 3.15,
tf-keras-vis 0.8.7 and scipy; `pip install tensorflow-cpu==2.21.0 keras==3.15.1
tf-keras-vis==0.8.7 scipy`):

    KERAS_BACKEND=tensorflow python tests/keras_reference/make_references.py

It writes, next to this file:
  small.weights.h5   the model's weights (seed 0), loaded by the tests on the torch backend
  small_tf.keras     the whole model saved under TensorFlow, which the tests load under torch
  references.npz     the input (seed 1), the logits and tf-keras-vis' maps, before any
                     normalisation (normalize_map=False, normalize_cam=False,
                     expand_cam=False)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

if os.environ.get("KERAS_BACKEND") != "tensorflow":
    sys.exit("run with KERAS_BACKEND=tensorflow")

import keras
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.model_modifiers import (
    GuidedBackpropagation,
    ModelModifier,
    ReplaceToLinear,
)
from tf_keras_vis.utils.scores import CategoricalScore

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from model import CLASSES, SHAPE, build  # noqa: E402


class Rectified(ModelModifier):
    """The lab's "rectified" backprop: every ReLU's backward pass keeps the positive part of
    the upstream gradient (the deconvnet rule), written as tf-keras-vis' GuidedBackpropagation
    is, with only the gradient changed."""

    def __call__(self, model):  # type: ignore[no-untyped-def]
        def rectified(activation):  # type: ignore[no-untyped-def]
            @tf.custom_gradient
            def apply(x):  # type: ignore[no-untyped-def]
                return activation(x), lambda dy: tf.cast(dy > 0, dy.dtype) * dy

            return apply

        for layer in model.layers:
            if getattr(layer, "activation", None) is keras.activations.relu:
                layer.activation = rectified(layer.activation)


def main() -> None:
    keras.utils.set_random_seed(0)
    model = build(keras)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path or "gamma" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        variable.assign(value.astype("float32"))
    model.save_weights(HERE / "small.weights.h5")
    model.save(HERE / "small_tf.keras")
    x = np.random.default_rng(1).normal(size=SHAPE).astype("float32")
    score = CategoricalScore(CLASSES)
    linear = [ReplaceToLinear()]
    refs: dict[str, np.ndarray] = {"x": x, "probabilities": model.predict(x, verbose=0)}
    logits_model = keras.models.clone_model(model)
    logits_model.set_weights(model.get_weights())
    ReplaceToLinear()(logits_model)
    refs["logits"] = logits_model.predict(x, verbose=0)
    refs["saliency"] = Saliency(model, linear)(score, x, normalize_map=False)
    refs["gradient"] = Saliency(model, linear)(
        score, x, keepdims=True, gradient_modifier=None, normalize_map=False
    )
    refs["guided"] = Saliency(model, [*linear, GuidedBackpropagation()])(
        score, x, normalize_map=False
    )
    refs["rectified"] = Saliency(model, [*linear, Rectified()])(score, x, normalize_map=False)
    cam = {"normalize_cam": False, "expand_cam": False}
    refs["gradcam"] = Gradcam(model, linear)(score, x, **cam)
    refs["gradcam_conv2"] = Gradcam(model, linear)(score, x, penultimate_layer="conv2", **cam)
    guided = Gradcam(model, [*linear, GuidedBackpropagation()])
    refs["gradcam_guided"] = guided(score, x, penultimate_layer="conv2", **cam)
    refs["gradcam_plus_plus"] = GradcamPlusPlus(model, linear)(score, x, **cam)
    refs["scorecam"] = Scorecam(model, linear)(score, x, **cam)
    refs["scorecam_max_n"] = Scorecam(model, linear)(score, x, max_N=4, **cam)
    np.savez_compressed(HERE / "references.npz", **{k: np.asarray(v) for k, v in refs.items()})
    for key, value in refs.items():
        print(f"{key:20s} {np.asarray(value).shape}")


if __name__ == "__main__":
    main()
