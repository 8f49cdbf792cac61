"""The one result type of every method: the maps, and what the method found.

An :class:`Explanation` is a :class:`torch.Tensor` (the maps, detached), so that
``backlight.grad_cam(model, x)`` goes wherever a tensor goes (indexing, arithmetic,
``torch.testing``, NumPy), and it carries the rest as attributes: the method, the layer it used
(the default CAM layer it chose, say), the targets, the explained scores, the settings it ran
with, and the method's own extras (extremal perturbation's masks and optimisation history).

Chosen over a dataclass holding a tensor because every caller, ours and the users', already
treats a method's result as a tensor: no caller needs to test for ``.maps`` any more, and no
code changes. Operations on it give plain tensors (the metadata describes these maps, not a sum
or a slice of them), and pickling (``torch.save``) stores the plain maps, so that
``torch.load(..., weights_only=True)`` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Explanation"]


class Explanation(torch.Tensor):
    """Saliency maps (N, C, h, w) with what the method found.

    Attributes:
        method: the registered name of the method that made the maps.
        layer: the dotted name of the layer the maps belong to, or ``None`` for the input.
        targets: (N,) the class each map explains, or ``None`` (a callable target, or one map
            per class).
        scores: the explained score of each sample on the input as given (N,), or the method's
            own scores ((N, A) for extremal perturbation: the score of each perturbed image).
        settings: every option the method ran with, defaults included, and the layer it chose.
        output: the model's output on the input as given (N, classes), detached, where the
            method ran that pass (a data-set run reads the predictions from it instead of
            running the model once more); else ``None``.
        extras: anything else the method returns, also readable as attributes
            (``result.history``).

    Example:
        >>> import torch, torchvision, backlight
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> cam = backlight.grad_cam(model, torch.randn(1, 3, 64, 64), 3)
        >>> cam.shape, cam.layer, cam.targets.tolist(), cam.settings["relu"]
        (torch.Size([1, 1, 2, 2]), 'layer4', [3], True)
        >>> type(cam * 2) is torch.Tensor
        True
    """

    _plain: torch.Tensor
    method: str
    layer: str | None
    targets: torch.Tensor | None
    scores: torch.Tensor | None
    settings: dict[str, Any]
    output: torch.Tensor | None
    extras: dict[str, Any]

    @staticmethod
    def make(
        maps: torch.Tensor,
        *,
        method: str = "",
        layer: str | None = None,
        targets: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
        settings: Mapping[str, Any] | None = None,
        output: torch.Tensor | None = None,
        **extras: Any,
    ) -> Explanation:
        """Wrap ``maps`` (detached, not copied) with what the method found. An extra that is
        ``maps`` itself (extremal perturbation's ``masks``) is the same tensor as :attr:`maps`."""
        base = maps.detach()
        if isinstance(base, Explanation):
            base = base.as_subclass(torch.Tensor)
        result = torch.Tensor._make_subclass(Explanation, base, False)
        result._plain = base
        result.method = method
        result.layer = layer
        result.targets = None if targets is None else targets.detach()
        result.scores = None if scores is None else scores.detach()
        result.settings = dict(settings or {})
        result.output = None if output is None else output.detach()
        result.extras = {k: base if v is maps else v for k, v in extras.items()}
        return result

    @property
    def maps(self) -> torch.Tensor:
        """The maps as a plain tensor (the same data, and the same object every time)."""
        plain: torch.Tensor = self.__dict__["_plain"]
        return plain

    def __getattr__(self, name: str) -> Any:  # called only when normal lookup fails
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @classmethod
    def __torch_function__(
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        # Operations give plain tensors: the metadata belongs to these maps only.
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def __deepcopy__(self, memo: dict[int, Any]) -> Explanation:
        import copy

        return Explanation.make(
            self.maps.clone(),
            method=self.method,
            layer=self.layer,
            targets=None if self.targets is None else self.targets.clone(),
            scores=None if self.scores is None else self.scores.clone(),
            settings=copy.deepcopy(self.settings, memo),
            output=None if self.output is None else self.output.clone(),
            **copy.deepcopy(self.extras, memo),
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.maps.__reduce_ex__(protocol)  # type: ignore[no-untyped-call]

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        where = f", layer={self.layer!r}" if self.__dict__.get("layer") else ""
        return f"Explanation(method={self.__dict__.get('method', '')!r}{where}, maps={self.maps!r})"
