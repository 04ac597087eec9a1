"""Networks by name (``--model``, the ``model:`` key of a training config)."""

from __future__ import annotations

import torch
from torch import nn

from rpuhw.registry import Registry

NETWORKS: Registry[type[nn.Module]] = Registry("model", key="model",
                                               entry_points="rpuhw.networks")
"""Network name -> ``nn.Module`` class built without arguments."""

@NETWORKS.register("lenet")
class LeNet(nn.Module):
    """The paper's CNN for 28x28 MNIST: conv 16@5x5 - tanh - maxpool 2 - conv 32@5x5 -
    tanh - maxpool 2 - fc 512->128 - tanh - fc 128->10 (logits; softmax cross-entropy).

    Array shapes with the bias column: conv1 16x26, conv2 32x401, fc1 128x513, fc2 10x129.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(512, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.tanh(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc2(x)


def build_model(name: str) -> nn.Module:
    """A fresh floating-point model by name; the error lists the known names."""
    return NETWORKS.get(name)()


def layer_names(model: nn.Module) -> list[str]:
    """Names of the layers that can live on arrays (Linear and Conv2d), in order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
