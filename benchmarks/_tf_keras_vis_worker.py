"""A tf-keras-vis worker for benchmarks/keras_models.py, run under a TensorFlow Python: it builds the
same model with the same weights and times one call per command it reads on stdin
(``saliency``, ``guided``, ``gradcam``), answering with the seconds it took."""

from __future__ import annotations

import os
import sys
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.utils.model_modifiers import GuidedBackpropagation, ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore


def main() -> None:
    name, weights, batch, size, threads = sys.argv[1:6]
    tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    shape = (int(size), int(size), 3)
    model = getattr(keras.applications, name)(weights=None, input_shape=shape)
    model.load_weights(weights)
    x = np.random.default_rng(0).normal(size=(int(batch), *shape)).astype("float32")
    score = CategoricalScore([(37 * i + 11) % 1000 for i in range(int(batch))])
    plain = Saliency(model, ReplaceToLinear())
    guided = Saliency(model, [ReplaceToLinear(), GuidedBackpropagation()])
    gradcam = Gradcam(model, ReplaceToLinear())
    calls = {
        "saliency": lambda: plain(score, x, normalize_map=False),
        "guided": lambda: guided(score, x, normalize_map=False),
        "gradcam": lambda: gradcam(score, x, normalize_cam=False, expand_cam=False),
    }
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        calls[line.strip()]()
        print(f"{time.perf_counter() - start:.6f}", flush=True)


if __name__ == "__main__":
    main()
