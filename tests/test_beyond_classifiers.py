"""Vision transformers without hand-written reshapes (torchvision, timm, Hugging Face), and every
method on a ViT, a Swin, a segmentation and a detection model with the library's guarantees."""

from __future__ import annotations

import functools
import logging
import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import backlight
from backlight import targets as T
from backlight.errors import LayerError, MethodNotApplicableError, OptionError

from .conftest import explain, methods_with
from .nets import tiny_detector
from .test_guarantees import _assert_unchanged, _snapshot
from .test_targets import _their_grad_cam

transformers = pytest.importorskip("transformers")

#: A two-block Hugging Face ViT (or DeiT) on 32 px images: 4 x 4 patches of 8 pixels.
HF_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_labels": 10,
}


def _random_head(model: nn.Module) -> nn.Module:
    """torchvision's ViT starts with a zero head, so every gradient would be zero."""
    torch.manual_seed(5)
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.2)
    return model.eval()


@functools.cache
def _model(name: str) -> tuple[nn.Module, int]:
    """A tiny transformer of each family (random weights) and its input size."""
    torch.manual_seed(0)
    hf = transformers
    made: dict[str, tuple[object, int]] = {
        "torchvision-vit": (
            lambda: VisionTransformer(
                image_size=32,
                patch_size=8,
                num_layers=2,
                num_heads=2,
                hidden_dim=32,
                mlp_dim=64,
                num_classes=10,
            ),
            32,
        ),
        "torchvision-swin": (
            lambda: SwinTransformer(
                patch_size=[4, 4],
                embed_dim=16,
                depths=[2, 2],
                num_heads=[2, 2],
                window_size=[2, 2],
                num_classes=10,
            ),
            32,
        ),
        "timm-vit": (
            lambda: timm.create_model(
                "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2
            ),
            32,
        ),
        "timm-deit": (
            lambda: timm.create_model(
                "deit_tiny_distilled_patch16_224",
                num_classes=10,
                img_size=32,
                patch_size=8,
                depth=2,
            ),
            32,
        ),
        "timm-registers": (
            lambda: timm.create_model(
                "vit_small_patch14_reg4_dinov2", num_classes=10, img_size=28, depth=2
            ),
            28,
        ),
        "timm-swin": (
            lambda: timm.create_model(
                "swin_tiny_patch4_window7_224",
                num_classes=10,
                img_size=56,
                depths=(2, 2),
                num_heads=(2, 4),
                embed_dim=32,
                window_size=7,
            ),
            56,
        ),
        "hf-vit": (
            lambda: hf.ViTForImageClassification(hf.ViTConfig(**HF_VIT)),
            32,
        ),
        "hf-deit": (
            lambda: hf.DeiTForImageClassificationWithTeacher(hf.DeiTConfig(**HF_VIT)),
            32,
        ),
        "hf-swin": (
            lambda: hf.SwinForImageClassification(
                hf.SwinConfig(
                    image_size=32,
                    patch_size=4,
                    embed_dim=16,
                    depths=[2, 2],
                    num_heads=[2, 2],
                    window_size=2,
                    num_labels=10,
                )
            ),
            32,
        ),
    }
    build, size = made[name]
    return _random_head(build()), size  # type: ignore[operator]


# name: (default layer, prefix tokens dropped or None for a channels-last map, grid side)
EXPECTED = {
    "torchvision-vit": ("encoder.layers.encoder_layer_1.ln_1", 1, 4),
    "torchvision-swin": ("norm", None, 4),
    "timm-vit": ("blocks.1.norm1", 1, 4),
    "timm-deit": ("blocks.1.norm1", 2, 4),
    "timm-registers": ("blocks.1.norm1", 5, 2),
    "timm-swin": ("norm", None, 7),
    "hf-vit": ("vit.layers.1.layernorm_before", 1, 4),
    "hf-deit": ("deit.layers.1.layernorm_before", 2, 4),
    "hf-swin": ("swin.layernorm", 0, 4),
}


def _hand_reshape(prefix: int | None, side: int):
    """What a user writes today for each layout (pytorch-grad-cam's recipes)."""
    if prefix is None:
        return lambda t: t.permute(0, 3, 1, 2)
    return lambda t: t[:, prefix:].reshape(t.shape[0], side, side, t.shape[-1]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_transformers_get_a_last_block_layer_and_their_layout_from_the_model(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    model, size = _model(name)
    layer, prefix, side = EXPECTED[name]
    x = torch.randn(2, 3, size, size)
    with caplog.at_level(logging.INFO, logger="backlight"):
        ours = backlight.grad_cam(model, x, [1, 2], relu=False)
    assert ours.layer == layer
    assert ours.shape == (2, 1, side, side)
    assert f"using {layer!r}" in caplog.text and "reading the output" in caplog.text
    by_hand = backlight.grad_cam(
        model, x, [1, 2], layer=layer, reshape=_hand_reshape(prefix, side), relu=False
    )
    torch.testing.assert_close(ours.maps, by_hand.maps, rtol=0, atol=0)
    assert ours.maps.abs().sum() > 0  # the patches reach the class score at this layer


def test_the_class_token_layer_is_the_last_one_with_a_gradient_on_the_patches() -> None:
    """After the last attention only the class token reaches the head: a CAM at the last block's
    second norm is zero, the reason the default is the first."""
    model, size = _model("timm-vit")
    x = torch.randn(1, 3, size, size)
    late = backlight.grad_cam(model, x, 1, layer="blocks.1.norm2", relu=False)
    assert not late.maps.any()
    assert backlight.grad_cam(model, x, 1, relu=False).maps.any()


def test_named_layouts_and_a_clear_error_when_the_layout_cannot_be_read() -> None:
    model, size = _model("torchvision-vit")
    x = torch.randn(1, 3, size, size)
    layer = "encoder.layers.encoder_layer_1.ln_1"
    auto = backlight.grad_cam(model, x, 1, layer=layer)
    assert torch.equal(backlight.grad_cam(model, x, 1, layer=layer, reshape="vit").maps, auto.maps)
    assert torch.equal(backlight.grad_cam(model, x, 1, layer=layer, reshape="auto").maps, auto.maps)
    swin, size = _model("torchvision-swin")
    y = torch.randn(1, 3, size, size)
    assert torch.equal(
        backlight.grad_cam(swin, y, 1, layer="norm", reshape="channels_last").maps,
        backlight.grad_cam(swin, y, 1).maps,
    )
    with pytest.raises(OptionError, match=r"'auto'.*'vit' or 'channels_last', not 'vit_reshape'"):
        backlight.grad_cam(model, x, 1, layer=layer, reshape="vit_reshape")

    class Tokens(nn.Module):  # a token model with no patch embedding to read the grid from
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.norm, self.head = nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.norm(self.embed(x.flatten(2).transpose(1, 2)))
            return self.head(tokens.mean(1))

    with pytest.raises(
        LayerError, match=r"gives a token sequence \(1, 16, 8\).*no patch embedding"
    ):
        backlight.grad_cam(Tokens().eval(), torch.randn(1, 3, 4, 4), 1, layer="norm")


def _their_cam(
    model: nn.Module, layer: str, x: torch.Tensor, classes: list[int], reshape
) -> torch.Tensor:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    return _their_grad_cam(model, module, x, [ClassifierOutputTarget(c) for c in classes], reshape)


class _Logits(nn.Module):
    """pytorch-grad-cam needs a tensor output: its Hugging Face tutorial's wrapper."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def test_vit_matches_pytorch_grad_cams_vit_recipe() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    model, size = _model("timm-vit")
    x = torch.randn(2, 3, size, size)
    theirs = _their_cam(
        model,
        "blocks.1.norm1",
        x,
        [1, 2],
        functools.partial(vit_reshape_transform, height=4, width=4),
    )
    ours = backlight.grad_cam(model, x, [1, 2])  # no layer, no reshape
    assert theirs.max() > 0
    torch.testing.assert_close(
        ours.maps, theirs.float(), rtol=1e-4, atol=1e-6 * float(theirs.max())
    )


def test_swin_matches_pytorch_grad_cams_swin_recipe() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

    model, size = _model("hf-swin")
    x = torch.randn(2, 3, size, size)
    recipe = functools.partial(swinT_reshape_transform, height=4, width=4)
    theirs = _their_cam(_Logits(model), "model.swin.layernorm", x, [1, 2], recipe)
    ours = backlight.grad_cam(model, x, [1, 2])  # the ModelOutput read as it is
    assert theirs.max() > 0
    torch.testing.assert_close(
        ours.maps, theirs.float(), rtol=1e-4, atol=1e-6 * float(theirs.max())
    )


# --- every method on every kind of model ----------------------------------------------------


@functools.cache
def _kind(kind: str) -> tuple[nn.Module, torch.Tensor, object]:
    """A model of each kind with random weights, an input, and a target it can explain."""
    torch.manual_seed(0)
    if kind == "vit":
        model, size = _model("torchvision-vit")
        return model, torch.randn(1, 3, size, size), T.Probability(3)
    if kind == "swin":
        model, size = _model("torchvision-swin")
        return model, torch.randn(1, 3, size, size), T.Sigmoid(3)
    if kind == "segmentation":
        model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=4
        ).eval()
        return model, torch.randn(1, 3, 64, 64), T.Segmentation(int(_top_class(model)))
    model = tiny_detector()
    x = torch.rand(1, 3, 64, 64)
    return model, x, T.detections(model, x, min_score=0.0)[0]


def _top_class(model: nn.Module) -> int:
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))["out"]
    return int(out.argmax(1).flatten().mode().values)


#: What cannot apply, and says so: guided rules need ReLUs (the transformers use GELU), and
#: excitation backprop has no rule for layer norm, hardswish or a detector's box decoding.
NOT_APPLICABLE = {
    ("vit", "guided_backprop"),
    ("vit", "deconvnet"),
    ("vit", "guided_grad_cam"),
    ("swin", "guided_backprop"),
    ("swin", "deconvnet"),
    ("swin", "guided_grad_cam"),
    ("vit", "excitation_backprop"),
    ("vit", "contrastive_excitation_backprop"),
    ("swin", "excitation_backprop"),
    ("swin", "contrastive_excitation_backprop"),
    ("segmentation", "excitation_backprop"),
    ("segmentation", "contrastive_excitation_backprop"),
    ("detection", "excitation_backprop"),
    ("detection", "contrastive_excitation_backprop"),
}


@pytest.mark.parametrize("kind", ["vit", "swin", "segmentation", "detection"])
@pytest.mark.parametrize("method", methods_with(), ids=lambda m: m.name)
def test_every_method_runs_on_every_kind_of_model_and_leaves_it_untouched(
    kind: str, method: backlight.MethodInfo
) -> None:
    model, x, target = _kind(kind)
    before, given = _snapshot(model), x.clone()
    options: dict[str, object] = {}  # the one-pass-per-channel CAMs, kept to seconds
    if method.name == "score_cam":
        options = {"channels": 16, "batch_size": 16}
    if method.name == "ablation_cam" and kind == "detection":
        options = {"layer": "backbone.body.15", "batch_size": 32}  # 160 channels, not 960

    def call() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's own, on tiny inputs
            if method.name == "smooth_grad":
                return backlight.smooth_grad(
                    backlight.gradient, model, x, target, samples=2, progress=False
                )
            return explain(method, model, x, target, **options)

    if (kind, method.name) in NOT_APPLICABLE:
        with pytest.raises(MethodNotApplicableError, match=r"rule|ReLU"):
            call()
    else:
        maps = call()
        assert maps.shape[0] == 1 and maps.dim() == 4 and torch.isfinite(maps).all()
    _assert_unchanged(model, before)
    assert torch.equal(x, given)


def test_each_detection_of_a_real_detector_explains_its_own_score() -> None:
    model, x, _ = _kind("detection")
    with torch.no_grad():
        scores = model(x)[0]["scores"]
    found = T.detections(model, x, min_score=0.0)[:3]
    for rank, target in enumerate(found):
        result = backlight.gradient(model, x, target)
        assert result.scores.item() == pytest.approx(
            float(scores.sort(descending=True).values[rank]), rel=1e-5
        )
        assert result.maps.shape == (1, 1, 64, 64) and result.maps.any()
