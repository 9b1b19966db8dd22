"""The small sequential CNNs of the zennit golden tests (plain torch: imported by make_golden.py in the
zennit venv and by the tests in spray's venv, so both build exactly the same network)."""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (4, 3, 16, 16)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# z^B bounds of inputs normalised from pixels in [0, 1], one per channel.
LOW = tuple((0.0 - m) / s for m, s in zip(MEAN, STD))
HIGH = tuple((1.0 - m) / s for m, s in zip(MEAN, STD))
TARGETS = (0, 3, 5, 9)
VARIANTS = ("plain", "batchnorm", "leaky")


def build(variant: str) -> nn.Sequential:
    """A VGG-like sequential CNN: conv/relu/maxpool, conv/relu/avgpool, conv, adaptive avgpool, two linears.

    ``batchnorm`` adds BatchNorm2d after every conv (folded by the canonizer); ``leaky`` uses LeakyReLU so
    that the layers after the first see negative inputs (the generalised z+/gamma/alpha-beta paths).
    """
    bn = variant == "batchnorm"
    act = (lambda: nn.LeakyReLU(0.1)) if variant == "leaky" else (lambda: nn.ReLU())

    def block(c_in, c_out):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(act())
        return layers

    return nn.Sequential(
        *block(3, 8), nn.MaxPool2d(2),
        *block(8, 12), nn.AvgPool2d(2),
        *block(12, 16),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Dropout(0.3),
        nn.Linear(64, 32), act(), nn.Linear(32, 10),
    )


def make(variant: str, seed: int = 0) -> tuple[nn.Sequential, torch.Tensor]:
    """The model (eval mode, BatchNorm statistics randomised so folding matters) and a normalised input."""
    torch.manual_seed(seed)
    model = build(variant).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            # Smaller biases than the default init, as in trained networks, so relevance is mostly
            # carried by the weights (conservation near 1 with the epsilon rule).
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.mul_(0.1)
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    pixels = torch.rand(INPUT_SHAPE, generator=generator)
    x = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return model, x
