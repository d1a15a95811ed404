"""SeedNet: the design document's Keras MNIST example, layer by layer.

::

    conv1 = DynamicConv2D(filters=32, kernel_size=(7, 7), center_constraint=[(2, 2), (2, 2)])(inputs)
    pool1 = MaxPooling2D()(conv1)
    conv2 = DynamicConv2D(filters=64, kernel_size=(3, 3), padding='same')(pool1)
    pool2 = MaxPooling2D()(conv2)
    dense1 = Dense(256, activation='relu')(Flatten()(pool2))
    outputs = Dense(10, activation='softmax')(Dropout(0.5)(dense1))

Keras' defaults are kept: the first DCK has ``padding="valid"`` (28 → 22), both DCKs have no
activation (Keras' ``Conv2D`` default is linear; the max-pools are the non-linearity), the
softmax is folded into the cross-entropy loss. Shapes for a 28×28 input: 22×22×32 → 11×11×32
→ 11×11×64 → 5×5×64 → 1600 → 256 → 10.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..layers import DynamicConv2d


class SeedNet(nn.Module):
    """The design document's MNIST model (see the module docstring).

    Args:
        in_channels (int): image channels. Default: 1.
        num_classes (int): classes. Default: 10.
        image_size (int): input height = width. Default: 28.
        adaptive (bool): position-adaptive DCKs (the design document's). Default: ``True``.
        backend (str, optional): sampling backend of the DCKs.
        plain (bool): ``nn.Conv2d`` of the same kernel and padding in place of each DCK: the
            plain twin of an ablation (``adaptive``, ``backend`` and ``init_extent`` do not
            apply). Default: ``False``.
        init_extent (float, optional): initial extent ``σ`` (taps) of both DCKs, see
            :class:`~dck_lightning.layers.DynamicConv2d`. Default: each DCK's kernel size
            (mask 0.91 at the edge of the 7×7 window, 0.95 at the edge of the 3×3). A large
            value starts from the flat full window: 30 gives ≥ 0.99 at every tap of both.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        adaptive: bool = True,
        backend=None,
        plain: bool = False,
        init_extent: Optional[float] = None,
    ) -> None:
        super().__init__()
        if plain:
            conv1 = nn.Conv2d(in_channels, 32, 7, padding="valid")
            conv2 = nn.Conv2d(32, 64, 3, padding="same")
        else:
            dck = {"adaptive": adaptive, "backend": backend, "init_extent": init_extent}
            conv1 = DynamicConv2d(
                in_channels, 32, 7, padding="valid", center_constraint=(2, 2), **dck
            )
            conv2 = DynamicConv2d(32, 64, 3, padding="same", **dck)
        self.features = nn.Sequential(conv1, nn.MaxPool2d(2), conv2, nn.MaxPool2d(2))
        side = ((image_size - 6) // 2) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
