"""Real networks exported to ONNX as users export them, for the ONNX engine's tests and
the bench: ResNet-18, MobileNetV2 and EfficientNet-style networks written in torch here
(torchvision is not available), exported with ``torch.onnx.export`` (the TorchScript
exporter, ``dynamo=False``: the torch.export-based one needs onnxscript, which is not
installed), and a Keras CNN converted with tf2onnx the way the Keras engine does it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

OPSET = 17


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18's layout (7x7 stem, max pool, 4 stages of 2 basic blocks, average pool,
    linear) at ``width`` channels in the first stage (64 in the paper)."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's layout (inverted residuals: expand, depthwise, project; ReLU6) with
    its (expansion, channels, repeats, stride) table scaled by ``width``."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 1, 1))

    def __init__(self, width: float = 0.5, classes: int = 10):
        super().__init__()

        def scaled(c: int) -> int:
            return max(8, int(c * width + 4) // 8 * 8)

        cin = scaled(32)
        layers: list[nn.Module] = [nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin),
                                   nn.ReLU6()]
        for expand, channels, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, scaled(channels), stride if i == 0 else 1,
                                               expand))
                cin = scaled(channels)
        last = scaled(320)
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean([2, 3]))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = None
        if expand != 1:
            self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                        nn.BatchNorm2d(hidden), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.SiLU())
        self.se = SqueezeExcite(hidden, max(1, cin // 4))
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.se(self.depthwise(y)))
        return x + y if self.use_res else y


class EfficientNet(nn.Module):
    """EfficientNet-B0's building blocks (MBConv with squeeze-and-excitation, SiLU, 3x3
    and 5x5 depthwise kernels, residuals) in a shortened stage table scaled by ``width``."""

    STAGES = ((1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 2, 3, 2),
              (6, 112, 1, 5, 1))

    def __init__(self, width: float = 0.5, classes: int = 10):
        super().__init__()

        def scaled(c: int) -> int:
            return max(8, int(c * width + 4) // 8 * 8)

        cin = scaled(32)
        self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin),
                                  nn.SiLU())
        blocks = []
        for expand, channels, repeats, kernel, stride in self.STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, scaled(channels), kernel, stride if i == 0 else 1,
                                     expand))
                cin = scaled(channels)
        self.blocks = nn.Sequential(*blocks)
        last = scaled(1280 // 2)
        self.head = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last),
                                  nn.SiLU())
        self.classifier = nn.Linear(last, classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


FAMILIES = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2, "efficientnet": EfficientNet}


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Statistics as a trained network has them (the defaults fold to an identity), so
    that the exported convolutions carry real biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model.eval()


def export_torch(model: nn.Module, input_size: tuple[int, ...], path: Path,
                 opset: int = OPSET, dynamic_batch: bool = True) -> Path:
    """``torch.onnx.export`` as a user calls it: eval mode, a named input, a free batch."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, *input_size),), str(path),
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}} if dynamic_batch else None,
                          opset_version=opset, dynamo=False)
    return path


def family(name: str, path: Path, input_size: tuple[int, ...] = (3, 32, 32), seed: int = 0,
           **kwargs) -> Path:
    """Build family ``name`` (seeded, trained-like BatchNorm) and export it to ``path``."""
    torch.manual_seed(seed)
    return export_torch(randomise_batchnorm(FAMILIES[name](**kwargs), seed), input_size, path)


def keras_cnn(path: Path, seed: int = 0):
    """A Keras CNN (Conv-BN-ReLU, a residual block, a depthwise convolution, pooling,
    Flatten into Dense layers), converted with tf2onnx through a frozen tf.function as the
    Keras engine does (tf2onnx's from_keras fails on Keras 3). Returns (path, model)."""
    import keras
    import numpy as np

    from edgeai.pruning.keras_engine.deploy import to_onnx

    keras.utils.set_random_seed(seed)
    L = keras.layers
    inputs = keras.Input((24, 24, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", name="stem")(inputs)))
    y = L.Conv2D(16, 3, padding="same", activation="relu", name="block_a")(x)
    y = L.Conv2D(16, 3, padding="same", name="block_b")(y)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(24, 3, activation="relu", name="conv3")(x)
    x = L.Dense(32, activation="relu", name="fc1")(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(10, name="fc2")(x))
    for layer in model.layers:  # trained-like statistics
        if isinstance(layer, L.BatchNormalization):
            rng = np.random.default_rng(seed)
            n = layer.gamma.shape[0]
            layer.set_weights([rng.random(n) + 0.5, rng.normal(size=n) * 0.1,
                               rng.normal(size=n) * 0.1, rng.random(n) + 0.5])
    path.write_bytes(to_onnx(model))
    return path, model
