"""backlight.jax on a Flax ResNet-50: jitted guided backprop against jitted ``jax.grad`` of the
same score, Grad-CAM against one forward and one backward pass, and the compile time of the
first call of each.

The bound for the gradient family is ``jax.jit(jax.grad(score))`` on the same model and inputs;
for Grad-CAM, ``jax.jit(jax.value_and_grad(score))`` to the input (a forward pass and a whole
backward pass; backlight's stops at the layer). Contenders are timed interleaved, in a new
random order each round, after their first (compiling) call, which is reported on its own;
outputs are waited for with ``block_until_ready``.

    python benchmarks/jax_models.py --markdown BENCHMARKS.md

Needs ``pip install 'backlight[jax]'``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import backlight.jax as bj
from _timing import comparison_table, publish


class Bottleneck(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: Any) -> Any:
        norm = lambda: nn.BatchNorm(use_running_average=True)  # noqa: E731
        y = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
        y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False)(y)
        y = nn.relu(norm()(y))
        y = norm()(nn.Conv(4 * self.features, (1, 1), use_bias=False)(y))
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            x = nn.Conv(4 * self.features, (1, 1), (self.strides, self.strides), use_bias=False)(x)
            x = norm()(x)
        return nn.relu(y + x)


class ResNet50(nn.Module):
    """ResNet-50 (He et al.), written with flax.linen; stages named layer1..layer4."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.Conv(64, (7, 7), (2, 2), padding=3, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for stage, (blocks, features) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
            stage_module = nn.Sequential(
                [Bottleneck(features, 2 if i == 0 and stage > 0 else 1) for i in range(blocks)],
                name=f"layer{stage + 1}",
            )
            x = stage_module(x)
        return nn.Dense(1000)(x.mean(axis=(1, 2)))


def ready(value: Any) -> Any:
    return jax.tree_util.tree_map(lambda t: t.block_until_ready(), value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args(argv)

    model = ResNet50()
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, args.size, args.size, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    classes = jnp.array([(37 * i + 11) % 1000 for i in range(args.batch)])

    def score(x: Any) -> Any:
        return jnp.take_along_axis(model.apply(variables, x), classes[:, None], axis=1).sum()

    grad = jax.jit(jax.grad(score))
    value_and_grad = jax.jit(jax.value_and_grad(score))
    target = classes.tolist()
    runs: dict[str, Callable[[], Any]] = {
        "bound: jax.grad": lambda: grad(x),
        "bound: forward + backward": lambda: value_and_grad(x),
        "backlight.jax gradient": lambda: bj.gradient(model, variables, x, target),
        "backlight.jax guided_backprop": lambda: bj.guided_backprop(model, variables, x, target),
        "backlight.jax grad_cam": lambda: bj.grad_cam(model, variables, x, target, layer="layer4"),
    }
    first = {}
    for name, fn in runs.items():
        start = time.perf_counter()
        ready(fn())
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        for name in order:
            start = time.perf_counter()
            ready(runs[name]())
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    reference = {
        "backlight.jax gradient": "bound: jax.grad",
        "backlight.jax guided_backprop": "bound: jax.grad",
        "backlight.jax grad_cam": "bound: forward + backward",
    }
    rows = [
        f"Flax ResNet-50 ({args.size}x{args.size}, batch {args.batch}, random weights), jax "
        f"{jax.__version__} on CPU ({os.cpu_count()} CPUs). `python benchmarks/jax_models.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + f"`, {time.strftime('%Y-%m-%d')}. Contenders interleaved in a new random order each round.",
        "",
        *comparison_table(times, reference, first),
    ]
    publish("\n".join(rows) + "\n", args.markdown)


if __name__ == "__main__":
    main()
