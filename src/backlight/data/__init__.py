"""Data with ground truth for testing attribution methods.

:class:`SyntheticShapes` draws one shape from :data:`CLASSES` on a cluttered background; the
class depends on the shape alone and each image comes with the shape's pixel mask and box.
:func:`make_batch` stacks a range of items into tensors.
"""

from __future__ import annotations

from .synthetic import CLASSES, IMAGE_SIZE, Sample, SyntheticShapes, make_batch

__all__ = ["CLASSES", "IMAGE_SIZE", "Sample", "SyntheticShapes", "make_batch"]
