"""Models: a small CNN for the bundled data, the CIFAR ResNet18 and ResNet-9, and Vision Transformers."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "cifar_resnet18", "cifar_resnet9", "small_vit", "vit_b_16", "build_model", "count_parameters"]


class SmallCNN(nn.Module):
    """Three conv-BatchNorm-ReLU blocks (a 2x2 max-pool after the second), global
    average pooling and a linear head.

    Sized for the bundled 8x8 digits (14,458 parameters at ``width=16`` with 10
    classes); any input size works thanks to the global pooling.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cifar_resnet18(num_classes: int = 10, *, width: int = 64, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet18 in its CIFAR form: 3x3 stride-1 stem, no max-pool.

    ``width=64`` is the standard network (11.2M parameters, ``512 -> num_classes`` head);
    smaller widths scale every stage (``width, 2w, 4w, 8w``) for CPU-sized experiments.
    Built from torchvision's own ``ResNet``/``BasicBlock`` with its initialisation.
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.inplanes = width
    model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.Identity()
    if width != 64:
        model.layer1 = model._make_layer(BasicBlock, width, 2)
        model.layer2 = model._make_layer(BasicBlock, 2 * width, 2, stride=2)
        model.layer3 = model._make_layer(BasicBlock, 4 * width, 2, stride=2)
        model.layer4 = model._make_layer(BasicBlock, 8 * width, 2, stride=2)
        model.fc = nn.Linear(8 * width, num_classes)
    for m in model.modules():  # torchvision's initialisation, re-applied to replaced modules
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return model


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _Residual(nn.Module):
    """``x + f(x)`` with ``f`` two conv-BatchNorm-ReLU layers of ``channels`` channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(channels, channels), *_conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def cifar_resnet9(num_classes: int = 10, *, width: int = 64, in_channels: int = 3) -> nn.Sequential:
    """The ResNet-9 of the fast CIFAR-10 training recipes (Page, "How to train your ResNet", 2018).

    Stages of ``width, 2w, 4w, 8w`` channels: a conv stem, then conv + max-pool +
    residual block, conv + max-pool, conv + max-pool + residual block, global max-pool
    and a linear head. ``width=64`` is the published network (6.6M parameters); the CPU
    experiments use ``width=16`` (0.41M parameters, about 25M multiply-adds per 32x32
    image). Convolutions have no bias (each is followed by BatchNorm).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    w = width
    return nn.Sequential(
        *_conv_bn_relu(in_channels, w),
        *_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w),
        *_conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),
        *_conv_bn_relu(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes),
    )


def small_vit(
    num_classes: int = 10,
    *,
    image_size: int = 32,
    patch_size: int = 4,
    num_layers: int = 6,
    num_heads: int = 4,
    hidden_dim: int = 192,
    mlp_dim: int = 384,
) -> nn.Module:
    """A small Vision Transformer for 32x32 inputs (torchvision's ``VisionTransformer``)."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
    )


def vit_b_16(num_classes: int = 10, *, pretrained: bool = True) -> nn.Module:
    """ViT-B/16 (224 px) with a fresh ``768 -> num_classes`` linear head.

    ``pretrained=True`` loads torchvision's ImageNet-1k weights (downloaded and cached by
    torchvision on first use), the torch counterpart of the papers' ``google/vit-base-patch16-224``.
    """
    from torchvision.models import ViT_B_16_Weights
    from torchvision.models import vit_b_16 as _vit_b_16

    model = _vit_b_16(weights=ViT_B_16_Weights.IMAGENET1K_V1 if pretrained else None)
    model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
    return model


def build_model(name: str, num_classes: int, *, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a model by name: ``"small_cnn"``, ``"resnet18"``, ``"resnet9"``, ``"small_vit"``, ``"vit_b_16"``."""
    if name == "small_cnn":
        return SmallCNN(in_channels=in_channels, num_classes=num_classes, **kwargs)
    if name == "resnet18":
        return cifar_resnet18(num_classes, in_channels=in_channels, **kwargs)
    if name == "resnet9":
        return cifar_resnet9(num_classes, in_channels=in_channels, **kwargs)
    if name == "small_vit":
        return small_vit(num_classes, **kwargs)
    if name == "vit_b_16":
        return vit_b_16(num_classes, **kwargs)
    raise ValueError(f"unknown model {name!r}; choose one of 'small_cnn', 'resnet18', 'resnet9', 'small_vit', 'vit_b_16'")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
