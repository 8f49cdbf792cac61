"""Timing helpers shared by the benchmark scripts.

Contenders run interleaved, in a new random (seeded) order every round, so that neither drift
in the machine's speed nor what the previous contender left in the caches and the allocator
favours one of them; each is warmed up once. Tables give the ratio of medians and the ratio of
minimums to a reference contender: on a shared 2-core machine the two can differ by 10%, and
the minimum is the better estimate of the work itself.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torchvision


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def peak_memory(runs: dict[str, Callable[[], object]], model: torch.nn.Module) -> dict[str, int]:
    """Peak resident memory (bytes) of one call of each contender, above the level before it.

    Measured after the timing, in a phase of its own: glibc is told to serve every block of
    64 KiB or more with its own mapping, returned on free, so that what one contender freed is
    not reused unseen by the next; the kernel's high-water mark is reset before each call
    (``/proc/self/clear_refs``).
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: fixed, so no longer raised dynamically
    libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)
    peaks = {}
    for name, fn in runs.items():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _status("VmRSS")
        fn()
        peaks[name] = max(0, _status("VmHWM") - before)
        _reset(model)
        libc.malloc_trim(0)
    return peaks


def interleave(
    runs: dict[str, Callable[[], object]],
    rounds: int,
    model: torch.nn.Module,
    *,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Times (seconds, one per round) of each contender."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    shuffle = random.Random(seed).shuffle
    for fn in runs.values():  # warm-up
        fn()
        _reset(model)
    for r in range(rounds):
        shuffle(order)
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            _reset(model)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return times


def _reset(model: torch.nn.Module) -> None:
    for p in model.parameters():  # peers leave parameter gradients and frozen flags behind
        p.grad = None
        p.requires_grad_(True)


def ratio_table(
    times: dict[str, list[float]], reference: str, memory: dict[str, int] | None = None
) -> list[str]:
    """Markdown rows: median and minimum time of each contender over the reference's."""
    median = statistics.median(times[reference])
    low = min(times[reference])
    head = "| contender | ratio of medians | ratio of minimums |"
    rule = "| --- | ---: | ---: |"
    if memory is not None:
        head += " peak memory above start |"
        rule += " ---: |"
    rows = [head, rule]
    for name, ts in times.items():
        row = f"| {name} | {statistics.median(ts) / median:.3f} | {min(ts) / low:.3f} |"
        if memory is not None:
            row += f" {memory[name] / 2**20:.0f} MiB |"
        rows.append(row)
    return rows


def comparison_table(
    times: dict[str, list[float]],
    compared_with: dict[str, str],
    first: dict[str, float] | None = None,
) -> list[str]:
    """Markdown rows: each contender's median and minimum time and, where ``compared_with``
    names another contender, the ratios of medians and of minimums to it; with ``first``, the
    time of the first (compiling) call too."""
    head = "| contender |" + (" first call, compiling (s) |" if first is not None else "")
    rows = [
        head + " median (s) | min (s) | compared with | ratio of medians | ratio of minimums |",
        "| --- |" + (" ---: |" if first is not None else "") + " ---: | ---: | --- | ---: | ---: |",
    ]
    for name, ts in times.items():
        other = compared_with.get(name)
        cells = [f"{statistics.median(ts):.3f}", f"{min(ts):.3f}", other or "", "", ""]
        if other is not None:
            cells[3] = f"{statistics.median(ts) / statistics.median(times[other]):.3f}"
            cells[4] = f"{min(ts) / min(times[other]):.3f}"
        if first is not None:
            cells.insert(0, f"{first[name]:.2f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def median_table(
    times: dict[str, list[float]], time_column: str, columns: dict[str, Callable[[float], str]]
) -> list[str]:
    """Markdown rows: each contender's median time (``time_column``) and one more cell per entry
    of ``columns``, computed from that median."""
    rows = [
        "| contender | " + " | ".join([time_column, *columns]) + " |",
        "| --- |" + " ---: |" * (1 + len(columns)),
    ]
    for name, ts in times.items():
        t = statistics.median(ts)
        digits = 3 if t < 10 else 2
        cells = [f"{t:.{digits}f}", *(cell(t) for cell in columns.values())]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def stamp(script: str, argv: list[str] | None) -> str:
    """The command, machine, torch version, date and load: how the table was made."""
    import platform

    command = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    return (
        f"`{command.strip()}` on {platform.machine()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}, "
        f"load average before the run {os.getloadavg()[0]:.2f}. Contenders interleaved in a "
        "new random order each round."
    )


def publish(table: str, markdown: str | None) -> None:
    """Print the table, and append it to the Markdown file ``markdown`` if one is given."""
    print(table)
    if markdown:
        with open(markdown, "a", encoding="utf-8") as f:
            f.write("\n" + table)


def random_setup(
    model_name: str, batch: int, size: int, threads: int
) -> tuple[torch.nn.Module, torch.Tensor, list[int]]:
    """The torchvision ``model_name`` with seeded random weights in eval mode, a seeded random
    batch ``(batch, 3, size, size)`` and one ImageNet class per image, all different."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    target = [(37 * i + 11) % 1000 for i in range(batch)]
    return model, x, target
