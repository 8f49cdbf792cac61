"""Keras 3 on the torch backend: backlight's guided backprop and Grad-CAM against the plain
autograd bound on the same Keras model, and against tf-keras-vis on TensorFlow, side by side.

The bound is what the map needs at the least: one forward pass of the Keras model to the head's
input, the logit written out (``h @ kernel + bias``, no softmax) and one ``torch.autograd.grad``
to the input (for the gradient family) or to the layer's output (Grad-CAM, the layer's output
taken from the same functional sub-model). tf-keras-vis runs in a worker process under a
TensorFlow Python (``--tf-python``), on the same architecture with the same weights (saved once
with ``save_weights``), with as many threads; each round asks every contender once, in a new
random order, and the worker reports the time of its own call.

    python benchmarks/keras_models.py --tf-python /path/to/tf-venv/bin/python --markdown BENCHMARKS.md

Needs ``pip install 'backlight[keras]'``; the TensorFlow side ``pip install tensorflow-cpu
tf-keras-vis``.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np
import torch

import backlight
from _timing import comparison_table, publish, stamp


def bounds(model, x: np.ndarray, target: list[int], layer: str) -> dict[str, Callable[[], object]]:
    head = model.layers[-1]
    to_head = keras.Model(model.inputs, head.input)
    with_layer = keras.Model(model.inputs, [head.input, model.get_layer(layer).output])
    rows = torch.arange(len(target))
    classes = torch.tensor(target)

    def input_gradient() -> object:
        inp = torch.tensor(x, requires_grad=True)
        logits = to_head(inp) @ head.kernel.value + head.bias.value
        return torch.autograd.grad(logits[rows, classes].sum(), inp)

    def layer_gradient() -> object:
        h, a = with_layer(torch.tensor(x))
        logits = h @ head.kernel.value + head.bias.value
        return torch.autograd.grad(logits[rows, classes].sum(), a)

    return {"bound: input gradient": input_gradient, "bound: layer gradient": layer_gradient}


class Worker:
    def __init__(self, python: str, name: str, weights: Path, batch: int, size: int, threads: int):
        script = Path(__file__).with_name("_tf_keras_vis_worker.py")
        self.process = subprocess.Popen(
            [python, str(script), name, str(weights), str(batch), str(size), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        while self.process.stdout.readline().strip() != "ready":
            pass

    def time(self, command: str) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="VGG16")
    parser.add_argument("--layer", default="block5_conv3")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tf-python", help="a Python with tensorflow and tf-keras-vis")
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    keras.utils.set_random_seed(0)
    shape = (args.size, args.size, 3)
    model = getattr(keras.applications, args.model)(weights=None, input_shape=shape)
    x = np.random.default_rng(0).normal(size=(args.batch, *shape)).astype("float32")
    target = [(37 * i + 11) % 1000 for i in range(args.batch)]
    runs: dict[str, Callable[[], object]] = {
        **bounds(model, x, target, args.layer),
        "backlight gradient": lambda: backlight.gradient(model, x, target),
        "backlight guided_backprop": lambda: backlight.guided_backprop(model, x, target),
        "backlight grad_cam": lambda: backlight.grad_cam(model, x, target, layer=args.layer),
    }
    worker = None
    tf_runs = {
        "tf-keras-vis Saliency": "saliency",
        "tf-keras-vis Saliency + GuidedBackpropagation": "guided",
        "tf-keras-vis Gradcam": "gradcam",
    }
    with tempfile.TemporaryDirectory() as folder:
        if args.tf_python:
            weights = Path(folder) / "model.weights.h5"
            model.save_weights(weights)
            worker = Worker(
                args.tf_python, args.model, weights, args.batch, args.size, args.threads
            )
        times: dict[str, list[float]] = {name: [] for name in runs}
        if worker is not None:
            times.update({name: [] for name in tf_runs})
        order = list(times)
        shuffle = random.Random(0).shuffle
        for name in order:  # warm-up
            runs[name]() if name in runs else worker.time(tf_runs[name])  # type: ignore[union-attr]
        for r in range(args.rounds):
            shuffle(order)
            for name in order:
                if name in runs:
                    start = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - start)
                else:
                    times[name].append(worker.time(tf_runs[name]))  # type: ignore[union-attr]
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        if worker is not None:
            worker.close()

    reference = {
        "backlight gradient": "bound: input gradient",
        "backlight guided_backprop": "bound: input gradient",
        "backlight grad_cam": "bound: layer gradient",
        "tf-keras-vis Saliency": "backlight gradient",
        "tf-keras-vis Saliency + GuidedBackpropagation": "backlight guided_backprop",
        "tf-keras-vis Gradcam": "backlight grad_cam",
    }
    rows = [
        f"Keras {keras.__version__} {args.model} ({args.size}x{args.size}, batch {args.batch}, "
        f"random weights, {args.threads} threads). " + stamp("keras_models.py", argv),
        "",
        *comparison_table(times, reference),
    ]
    publish("\n".join(rows) + "\n", args.markdown)


if __name__ == "__main__":
    main()
