"""The numerical pieces of extremal perturbation: smooth masks, the perturbation pyramid, the
area penalty.

Smooth masks (Fong, Patrick & Vedaldi 2019, section 3.3): a low-resolution parameter grid
``m̄`` with one node every ``step`` pixels; the mask at pixel ``u`` is the smooth maximum, over
the ``(2r + 1)²`` nodes around ``u``, of ``m̄(v) · k(|u - v| / σ)`` with the kernel
``k(z) = exp(-2 · max(z - 1/2, 0)²)`` and the smooth maximum
``smax(a) = Σ_j a_j · softmax(20 · a)_j``. TorchRay evaluates this by upsampling ``(2r + 1)²``
copies of the grid to full resolution and multiplying them by a weight image of the same size.
The weight of a node only depends on where ``u`` falls inside its ``step × step`` cell, so here
it is a ``(2r + 1)² × step × step`` table broadcast against the grid, and the smooth maximum is
one autograd function that works in cache-sized pieces and keeps nothing of full resolution
between the forward and the backward pass (it recomputes what it needs): about six times
cheaper than TorchRay's generator, forward and backward (3 masks at 224x224, one CPU thread).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

#: Inverse temperature of the smooth maximum (TorchRay's ``coldness``).
COLDNESS = 20.0


class MaskGenerator:
    """Smooth masks of ``shape`` from parameter grids of shape :attr:`grid`.

    The geometry is TorchRay's: the mask is computed with a margin of ``sigma`` pixels on every
    side (TorchRay's area penalty counts it too), and the image-sized crop starts at
    ``round(sigma)``.
    """

    def __init__(self, shape: tuple[int, int], step: int, sigma: float) -> None:
        self.shape = shape
        self.step = step
        self.sigma = sigma
        margin = sigma
        self.padding = 1 + math.ceil((margin + sigma) / step)
        self.radius = 1 + math.ceil(sigma / step)
        self.grid = (math.ceil(shape[0] / step), math.ceil(shape[1] / step))
        self.cells = tuple(g + 2 * self.padding - 2 * self.radius for g in self.grid)
        self.full = tuple(step * c - step + 1 for c in self.cells)
        self.offset = round(margin)

    def weights(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return _weights(self.step, self.sigma, self.radius, self.padding).to(device, dtype)

    def __call__(
        self, params: torch.Tensor, weights: torch.Tensor, *, margin: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masks for ``params`` (B, 1, h, w): the image-sized crop (B, H, W) and, if ``margin``,
        the full mask with its margin (B, H', W'), both clamped to [0, 1]. Without the margin
        only the cells that the crop touches are computed (three quarters at 224x224)."""
        b = params.shape[0]
        size = 2 * self.radius + 1
        values = F.unfold(params, (size, size), padding=self.padding)
        values = values.view(b, size * size, self.cells[0], self.cells[1])
        o, (h, w) = self.offset, self.shape
        if margin:
            full = SmoothMax.apply(values, weights)
            full = full[:, : self.full[0], : self.full[1]].clamp(0, 1)
            return full[:, o : o + h, o : o + w], full
        first = o // self.step
        rows = slice(first, -(-(o + h) // self.step))
        cols = slice(first, -(-(o + w) // self.step))
        part = SmoothMax.apply(values[:, :, rows, cols], weights)
        o -= first * self.step
        return part[:, o : o + h, o : o + w].clamp(0, 1), None


@functools.lru_cache(maxsize=8)
def _weights(step: int, sigma: float, radius: int, padding: int) -> torch.Tensor:
    """``k(|u - v| / σ)`` for every node offset (K = (2r+1)²) and position in a cell: (K, s, s).

    Node ``j`` of the neighbourhood of the cell that holds pixel ``u = step · c + s`` sits at
    ``margin + step · (c + j - padding)``, so the offset from the node is
    ``s - margin - step · (j - padding)``, whatever the cell.
    """
    margin = sigma
    size = 2 * radius + 1
    sub = torch.arange(step, dtype=torch.float64)
    nodes = torch.arange(size, dtype=torch.float64)
    delta = sub[None, :] - margin - step * (nodes[:, None] - padding)  # (size, step)
    dist = torch.sqrt(delta[:, None, :, None] ** 2 + delta[None, :, None, :] ** 2)
    kernel = torch.exp(-2 * (dist / sigma - 0.5).clamp(min=0) ** 2)
    return kernel.reshape(size * size, step, step)


class SmoothMax(torch.autograd.Function):
    """``smax_j(v_j · w_j)`` at full resolution from node values and the weight table.

    ``values`` is (B, K, Cy, Cx) (the K neighbouring node values of every cell), ``weights`` is
    (K, s, s); the output is (B, Cy · s, Cx · s). With ``a_j = v_j · w_j`` and
    ``p = softmax(c · a)``, ``out = Σ_j a_j p_j`` and ``∂out/∂a_j = p_j (1 + c (a_j - out))``.

    The products form a (B · Cy, s², Cx, K) tensor: a row of cells, then the position in the
    cell, the cell and the neighbour, so that the products broadcast over long contiguous runs
    and the sums run over contiguous rows of K (forward) or over whole rows of cells (backward).
    They are formed a few rows of cells at a time into reused buffers, small enough to stay in
    cache, and recomputed in the backward pass instead of being kept. The exponentials are bounded (``a`` lies in [0, 1] because node values
    and weights do), so no maximum is subtracted.
    """

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        b, k, cy, cx = values.shape
        s = weights.shape[-1]
        # c · w for every position in a cell, repeated along a row of cells: (s², Cx, K)
        hot = (weights * COLDNESS).permute(1, 2, 0).reshape(s * s, 1, k).expand(-1, cx, -1)
        hot = hot.contiguous()
        nodes = values.permute(0, 2, 3, 1).contiguous().view(b * cy, 1, cx, k)  # rows of cells
        out = values.new_empty(b * cy, s * s, cx)
        total = values.new_empty(b * cy, s * s, cx)
        chunks = _row_chunks(cx * s * s * k, cy, b)
        a, e = (values.new_empty(chunks[0][1] - chunks[0][0], s * s, cx, k) for _ in range(2))
        for r0, r1 in chunks:
            ra, re = a[: r1 - r0], e[: r1 - r0]
            torch.mul(nodes[r0:r1], hot, out=ra)  # c · a_j
            torch.exp(ra, out=re)
            torch.sum(re, dim=-1, out=total[r0:r1])
            torch.sum(ra.mul_(re), dim=-1, out=out[r0:r1])
        out /= total * COLDNESS
        ctx.save_for_backward(nodes, hot, out, total)
        ctx.images = b
        return out.view(b, cy, s, s, cx).permute(0, 1, 2, 4, 3).reshape(b, cy * s, cx * s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        nodes, hot, out, total = ctx.saved_tensors
        rows, _, cx, k = nodes.shape
        b = ctx.images
        cy, s = rows // b, math.isqrt(hot.shape[0])
        grad = grad.reshape(b, cy, s, cx, s).permute(0, 1, 2, 4, 3).reshape(rows, s * s, cx)
        # ∂out/∂v_j = p_j (1 + c a_j - c out) w_j with p_j = e_j / total: per pixel,
        # g / total · (1 - c out) + g / total · (c a_j), times e_j w_j
        slope = (grad / total).unsqueeze(-1)
        offset = slope * (1 - COLDNESS * out).unsqueeze(-1)
        weights = hot / COLDNESS
        result = nodes.new_empty(rows, cx, k)
        chunks = _row_chunks(cx * s * s * k, cy, b)
        a, e = (nodes.new_empty(chunks[0][1] - chunks[0][0], s * s, cx, k) for _ in range(2))
        for r0, r1 in chunks:
            ra, re = a[: r1 - r0], e[: r1 - r0]
            torch.mul(nodes[r0:r1], hot, out=ra)
            torch.exp(ra, out=re)
            # two passes with one broadcast operand each: vectorised, where addcmul with two
            # is not (1.7 times slower)
            term = ra.mul_(slope[r0:r1]).add_(offset[r0:r1])
            term.mul_(re).mul_(weights)
            torch.sum(term, dim=1, out=result[r0:r1])
        return result.view(b, cy, cx, k).permute(0, 3, 1, 2), None


def _row_chunks(row_size: int, rows: int, images: int) -> list[tuple[int, int]]:
    """Ranges of cell rows with about a million products each, never straddling two images,
    and cut the same way in every image: the reductions then see the same shapes whatever the
    batch, so an image's mask does not depend on the batch it is in.

    A million is a compromise: smaller pieces stay in a faster cache level (a quarter of the
    size is 15% faster on one quiet core), but every piece costs a few parallel operators, and
    each of those waits for all threads: on a machine whose cores are busy with other work,
    five times as many pieces made the generator a hundred times slower."""
    step = max(1, (1 << 20) // max(row_size, 1))
    return [
        (i * rows + r, i * rows + min(r + step, rows))
        for i in range(images)
        for r in range(0, rows, step)
    ]


def blur_pyramid(x: torch.Tensor, levels: int, max_blur: float) -> torch.Tensor:
    """(N, L, C, H, W): level ``l`` is ``x`` blurred with a Gaussian of standard deviation
    ``max_blur · (1 - l / (L - 1))`` (zero padding, support ±4σ); the last level is ``x``."""
    out = []
    for level in range(levels):
        sigma = max_blur * (1 - level / (levels - 1))
        # one image at a time: the convolution's kernel choice depends on the batch size
        out.append(torch.cat([_gaussian_blur(im[None], sigma) for im in x]) if sigma > 0 else x)
    return torch.stack(out, dim=1)


def fade_pyramid(x: torch.Tensor, levels: int) -> torch.Tensor:
    """(N, L, C, H, W): level ``l`` is ``x · l / (L - 1)`` (fade to zero)."""
    ramp = torch.linspace(0, 1, levels, device=x.device, dtype=x.dtype)
    return x.unsqueeze(1) * ramp.view(1, levels, 1, 1, 1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    width = math.ceil(4 * sigma)
    taps = torch.arange(-width, width + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    c = x.shape[1]
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(width, 0), groups=c)
    return F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, width), groups=c)


def perturb(pyramid: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images that show each pyramid level by the mask: 1 keeps the input, 0 shows the most
    perturbed level, values in between interpolate linearly between neighbouring levels.

    ``pyramid`` is (N, L, C, H, W), ``steps`` its differences between consecutive levels with a
    zero last level, ``mask`` (N, A, H, W); returns (N, A, C, H, W).
    """
    n, levels, c, h, w = pyramid.shape
    a = mask.shape[1]
    level = mask * (levels - 1)
    low = level.detach().floor()
    index = low.long().view(n, a, 1, h * w).expand(n, a, c, h * w)
    base = pyramid.view(n, levels, c, h * w).gather(1, index).view(n, a, c, h, w)
    slope = steps.view(n, levels, c, h * w).gather(1, index).view(n, a, c, h, w)
    return base + (level - low).unsqueeze(2) * slope


def area_penalty(full: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the sorted mask values and the step vector with ``kept``
    ones at the top: ``mean_i (sort(m)_i - r_i)²`` per mask; ``full`` is (B, H', W'), ``kept``
    (B,) integer counts.

    The sum does not depend on the order of its terms, so a mask whose ``kept`` largest values
    are one set (no value at the cut is shared by pixels on both sides of it) pairs each pixel
    with its own step value in place: ``mean((m - [m ≥ t])²)`` with ``t`` the ``kept``-th
    largest value, found by selection instead of a full sort (five times cheaper at 224x224).
    The gradient is the same, bit for bit, and the value is the same up to the order of the
    summation. A mask with a tie across the cut (the first, all-ones mask; saturated regions
    later) goes through ``torch.sort``, whose order then decides which of the tied pixels count
    as kept, as in TorchRay.
    """
    flat = full.reshape(full.shape[0], -1)
    size = flat.shape[1]
    rows = []
    for row, count in zip(flat, kept.tolist(), strict=True):
        if count == 0:
            rows.append((row**2).mean())
            continue
        cut = row.detach().kthvalue(size - count + 1).values
        above = row.detach() >= cut
        if int(above.sum()) == count:
            rows.append(((row - above.to(row.dtype)) ** 2).mean())
            continue
        values = row.sort().values
        reference = (torch.arange(size, device=row.device) >= size - count).to(values.dtype)
        rows.append(((values - reference) ** 2).mean())
    return torch.stack(rows)
