"""dck_lightning: dynamic convolutional kernels and blocks for PyTorch Lightning."""

import os

os.environ.setdefault(
    "NO_ALBUMENTATIONS_UPDATE", "1"
)  # albumentations calls the network on import otherwise

__version__ = "0.1.0"
