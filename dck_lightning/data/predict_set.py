"""The ``predict_dir`` prediction set, in which an image that does not decode is skipped.

``dck predict --data.init_args.predict_dir photos/`` predicts every image file under the
folder (:class:`~dck_lightning.data.image_files.ImageFilesDataset`). One damaged, truncated or
mislabelled file must not abort the rest: :class:`PredictImageFiles` gives, for a file the
decoder refuses, a black placeholder image of the batch's size with the reason in its target::

    {"file": "holiday/broken.jpg", "image_id": "broken", "orig_size": int64[H, W],
     "skipped": "holiday/broken.jpg: cannot decode image (...)"}

so the batch keeps its shape (and the task its input) in the loader's worker processes and
under DDP. The :class:`~dck_lightning.callbacks.prediction_writer.PredictionWriter` leaves
such items out of the predictions, warns once per file and lists them in ``skipped.csv``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .image_files import ImageFilesDataset

__all__ = ["DECODE_ERRORS", "PLACEHOLDER_SIZE", "PredictImageFiles"]

#: What reading one image raises when the file is unusable: the decoder's error (a
#: ``ValueError`` naming the file) and, from PIL or the file system, ``OSError``.
DECODE_ERRORS = (ValueError, OSError)
#: ``(H, W)`` of the placeholder before the test transform resizes it to the batch's size.
PLACEHOLDER_SIZE = (32, 32)


class PredictImageFiles(ImageFilesDataset):
    """:class:`ImageFilesDataset` whose unreadable files are placeholder items marked
    ``skipped`` (see the module docstring) instead of errors."""

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        try:
            return super().__getitem__(index)
        except DECODE_ERRORS as error:
            return self.placeholder(index, error)

    def placeholder(self, index: int, error: BaseException) -> tuple[Tensor, dict]:
        """A black image through the test transform (so it has the batch's size) and the
        target of file ``index`` with ``skipped``: the reason, naming the file."""
        path = self.files[index]
        channels = 3 if self.mode == "RGB" else 1
        image = self.transform(np.zeros((*PLACEHOLDER_SIZE, channels), dtype=np.uint8))
        reason = str(error) if str(path) in str(error) else f"{path}: {error}"
        target = {
            "file": path.relative_to(self.root).as_posix(),
            "image_id": path.stem,
            "orig_size": torch.tensor(tuple(image.shape[-2:]), dtype=torch.int64),
            "skipped": reason,
        }
        return image, target
