"""dck_lightning: dynamic convolutional kernels and blocks for PyTorch Lightning."""

__version__ = "0.1.0"
