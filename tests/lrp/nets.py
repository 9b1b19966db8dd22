"""Test architectures written with plain torch.nn (no torchvision): VGG-16-, ResNet-18-, ResNet-50-,
DenseNet- and MobileNetV2-shaped. ``width`` scales the channel counts so tests stay fast; the
benchmark uses the real widths. The residual blocks add with ``out += identity`` (functional), as
hand-written ResNets do, which is what per-architecture canonizers miss."""

from __future__ import annotations

import torch
from torch import nn


def _c(channels: int, width: float) -> int:
    return max(2, round(channels * width))


class VGG16(nn.Module):
    def __init__(self, width: float = 1.0, classes: int = 10, pool: int = 7, hidden: int = 4096) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for spec in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = _c(int(spec), width)
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        hidden = _c(hidden, width)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * pool * pool, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or c_in != c:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c * 4:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c * 4, 1, stride, bias=False), nn.BatchNorm2d(c * 4))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers, width: float = 1.0, classes: int = 10) -> None:
        super().__init__()
        c = _c(64, width)
        self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        c_in = c
        for index, blocks in enumerate(layers):
            c_stage = _c(64 * 2**index, width)
            stage = []
            for b in range(blocks):
                stage.append(block(c_in, c_stage, 2 if (b == 0 and index > 0) else 1))
                c_in = c_stage * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(width: float = 1.0, classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], width, classes)


def resnet50(width: float = 1.0, classes: int = 10) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], width, classes)


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, features):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseNet(nn.Module):
    """DenseNet-shaped: pre-activation BN-ReLU-Conv layers reading the concatenation of all earlier ones."""

    def __init__(self, width: float = 1.0, blocks=(6, 12, 24, 16), growth: int = 32, classes: int = 10) -> None:
        super().__init__()
        growth = _c(growth, width)
        c = 2 * growth
        self.conv0 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.norm0 = nn.BatchNorm2d(c)
        self.relu0 = nn.ReLU(inplace=True)
        self.pool0 = nn.MaxPool2d(3, 2, 1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for index, n in enumerate(blocks):
            layers = nn.ModuleList()
            for i in range(n):
                layers.append(DenseLayer(c + i * growth, growth))
            self.blocks.append(layers)
            c = c + n * growth
            if index < len(blocks) - 1:
                self.transitions.append(nn.Sequential(
                    nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2),
                ))
                c = c // 2
        self.norm5 = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = self.pool0(self.relu0(self.norm0(self.conv0(x))))
        for index, layers in enumerate(self.blocks):
            features = [x]
            for layer in layers:
                features.append(layer(features))
            x = torch.cat(features, 1)
            if index < len(self.transitions):
                x = self.transitions[index](x)
        x = torch.relu(self.norm5(x))
        x = torch.nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0, classes: int = 10) -> None:
        super().__init__()
        settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        c = _c(32, width)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True)]
        for t, channels, n, s in settings:
            c_out = _c(channels, width)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        last = _c(1280, width)
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        x = self.features(x)
        x = x.mean([2, 3])  # global average pooling as a tensor method
        return self.classifier(x)


class DemoCNN(nn.Module):
    """The size of the demo's digits CNN (1 x 32 x 32 inputs)."""

    def __init__(self, classes: int = 10, batchnorm: bool = False) -> None:
        super().__init__()
        def block(c_in, c_out):
            layers = [nn.Conv2d(c_in, c_out, 3, padding=1)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            return layers + [nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                                        nn.Linear(128, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0, zero_shift: bool = False) -> nn.Module:
    """Give every BatchNorm non-trivial statistics (as after training); ``zero_shift``: mean and beta 0."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            c = module.num_features
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
            if zero_shift:
                module.running_mean.zero_()
                module.bias.zero_()
            else:
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)
    return model.eval()


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-normal weights (as trained ReLU networks roughly keep activations at scale 1), so that logits
    are O(1) whatever the depth; the default init shrinks them to ~1e-7 in deep nets."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


@torch.no_grad()
def zero_biases(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            module.bias.zero_()
    return model
