"""Base classes shared by the DataModules.

:class:`BaseDataModule` holds what every DataModule of the project exposes
(``num_classes``, ``in_channels``, ``class_names``, ``mean``, ``std``,
``task``, ``image_size``), builds the loaders, and turns each ``uint8`` batch
into a normalised ``float32`` batch on the device in
:meth:`~BaseDataModule.on_after_batch_transfer` — augmenting it first when the
trainer is training.

:class:`InMemoryClassificationDataModule` decodes a classification dataset
once into ``uint8`` tensors and serves them through a
:class:`~dck_lightning.data.tensor_dataset.BatchedTensorDataset`. A subclass
only says how to read each split (:meth:`~InMemoryClassificationDataModule.load_split`),
how to download it, and what to report when it is missing.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..locking import file_lock
from .batch_augment import normalize, to_float
from .collate import detection_collate
from .errors import DataNotFoundError
from .image_files import find_images
from .predict_set import PredictImageFiles
from .resumable import ResumableDataLoader, ResumableSampler
from .tensor_dataset import BatchedTensorDataset, passthrough_collate

__all__ = [
    "BaseDataModule",
    "InMemoryClassificationDataModule",
    "held_out_split",
    "split_train_val",
]

#: ``(images, labels)``: ``uint8`` ``Tensor[N, C, H, W]`` and ``int64`` ``Tensor[N]``.
ClassificationArrays = tuple[Tensor, Tensor]

SPLITS = ("train", "val", "test")


def held_out_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split the indices ``0..n-1`` into a training part and a held-out part, reproducibly.

    Args:
        n: number of samples.
        fraction: share of the samples held out, in ``[0, 1)``; a positive fraction holds out
            at least one sample (and keeps at least one for training).
        seed: seed of the permutation (``torch.Generator().manual_seed(seed)``).

    Returns:
        ``(train_indices, held_out_indices)``, disjoint, each sorted ascending.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    n_held = int(round(n * fraction))
    if fraction > 0 and n > 1:
        n_held = min(max(n_held, 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def split_train_val(
    images: Tensor, labels: Tensor, val_split: float, seed: int
) -> tuple[ClassificationArrays, ClassificationArrays]:
    """Split a training set into disjoint train and validation parts, reproducibly.

    Args:
        images: ``Tensor[N, ...]``.
        labels: ``Tensor[N]``.
        val_split: fraction of the ``N`` samples that go to validation, in ``[0, 1)``.
        seed: seed of the permutation, see :func:`held_out_split`.

    Returns:
        ``((train_images, train_labels), (val_images, val_labels))``; each part keeps the
        original sample order.
    """
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    train_idx, val_idx = held_out_split(images.shape[0], val_split, seed)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


class ResizeTo:
    """``uint8 [H, W, C]`` array -> ``uint8 Tensor[C, H, W]`` at ``size`` ``(H, W)``, resized
    with PIL's bilinear filter as :func:`~dck_lightning.data.image_folder.decode_images`
    decodes the in-memory splits (``None`` keeps the size). A class, so loader workers can
    pickle it."""

    def __init__(self, size: Optional[Sequence[int]]) -> None:
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def __call__(self, pixels: np.ndarray) -> Tensor:
        if self.size is not None and tuple(pixels.shape[:2]) != self.size:
            image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image).reshape(*self.size, pixels.shape[2])
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()


class BaseDataModule(pl.LightningDataModule):
    """Loaders and the on-device batch transform shared by all DataModules.

    Batches leave the loader with ``uint8`` images and are converted on the device
    (:meth:`on_after_batch_transfer`): to ``float32`` in ``[0, 1]``, augmented by
    :meth:`augment_batch` when ``augment`` and the trainer is training, then normalised
    with ``mean``/``std`` when ``normalize``. Outside a trainer (notebooks, scripts) call
    ``dm.on_after_batch_transfer(batch, 0)`` to get the same tensors the model sees.

    Args:
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes.
        seed: seed of the data split and of the augmentation generator.
        augment: augment training batches.
        normalize: normalise images with the dataset's ``mean``/``std``; when ``False``
            images stay in ``[0, 1]`` and ``mean``/``std`` read as zeros/ones.
        predict_dir: a folder of image files to predict on (``dck predict``) instead of the
            test set, read with the test transform (:meth:`predict_transform`,
            :mod:`~dck_lightning.data.image_files`).

    Attributes:
        task: ``"classification"``, ``"detection"`` or ``"segmentation"``.
        num_classes: number of classes (for segmentation including background).
        in_channels: image channels.
        class_names: name of each class index.
        mean, std: per-channel statistics used to normalise (to un-normalise for display:
            ``image * std + mean``).
        image_size: ``(H, W)`` of every image, or ``None`` while unknown.
    """

    task: str = "classification"
    num_classes: int
    in_channels: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: Optional[tuple[int, int]]

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 42,
        augment: bool = True,
        normalize: bool = True,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.augment = augment
        self.normalize = normalize
        self.predict_dir = None if predict_dir is None else Path(predict_dir).expanduser()
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None
        self.predict_dataset: Optional[Dataset] = None
        self.collate_fn: Optional[Callable[..., Any]] = None
        self._generators: dict[str, torch.Generator] = {}
        # Scale-out: generator states restored from a checkpoint, applied when each is created.
        self._pending_generator_states: dict[str, Tensor] = {}
        self._augment_seed_offset = 0
        self._pending_loader_state: Optional[dict[str, Any]] = None

    def _set_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set ``mean``/``std`` (identity statistics when ``normalize`` is off)."""
        if self.normalize:
            self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        else:
            self.mean, self.std = (0.0,) * len(mean), (1.0,) * len(std)

    # -- loaders -------------------------------------------------------------------------

    def loader_options(self, train: bool) -> dict[str, Any]:
        """Extra :class:`~torch.utils.data.DataLoader` arguments of a subclass (none here)."""
        return {}

    def _dataloader(
        self,
        dataset: Optional[Dataset],
        train: bool = False,
        collate_fn: Optional[Callable[..., Any]] = None,
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}: the dataset for this stage is not set up; call "
                "setup() with the matching stage first (the Trainer does this)."
            )
        size = len(dataset)  # type: ignore[arg-type]
        options: dict[str, Any] = dict(
            batch_size=self.batch_size,
            sampler=self._train_sampler(dataset) if train else self._unpadded_sampler(dataset),
            # Drop a ragged last training batch (BatchNorm dislikes a batch of one), unless
            # the whole set fits in one batch.
            drop_last=train and size > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_fn or self.collate_fn,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )
        options.update(self.loader_options(train))
        if not train:
            return DataLoader(dataset, **options)
        loader = ResumableDataLoader(dataset, **options)
        loader.progress = self._trained_batches
        if self._pending_loader_state is not None:
            loader.load_state_dict(self._pending_loader_state)
            self._pending_loader_state = None
        return loader

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._dataloader(self.train_dataset, train=True)

    def val_dataloader(self) -> Any:
        """Validation batches (an empty list when there is no validation set)."""
        if self.val_dataset is None and self.train_dataset is not None:
            return []
        return self._dataloader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._dataloader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        """The image files of ``predict_dir`` (``(images, targets)`` with ``file``,
        ``image_id`` and ``orig_size``), else the test batches, for ``trainer.predict``."""
        if self.predict_dir is None:
            return self._dataloader(self.test_dataset)
        if self.predict_dataset is None:
            self.predict_dataset = PredictImageFiles(  # a file that does not decode: skipped
                self.predict_dir,
                find_images(self.predict_dir),
                self.predict_transform(),
                self.in_channels,
            )
        return self._dataloader(self.predict_dataset, collate_fn=detection_collate)

    def predict_transform(self) -> Callable[[np.ndarray], Tensor]:
        """The test transform for a ``predict_dir`` image: ``uint8 [H, W, C]`` ->
        ``uint8 Tensor[C, H, W]`` at ``image_size`` (PIL bilinear, as the test images are
        decoded); normalised on the device like every batch."""
        return ResizeTo(self.image_size)

    def _needs_test_set(self, stage: Optional[str]) -> bool:
        """Whether ``setup(stage)`` reads the test split (``predict`` reads ``predict_dir`` instead)."""
        return stage in (None, "test") or (stage == "predict" and self.predict_dir is None)

    # -- scale-out: a training order that resumes mid-epoch -------------------------------------

    def _train_sampler(self, dataset: Dataset) -> ResumableSampler:
        """The training sampler: this rank's share of a per-epoch permutation of
        ``PL_GLOBAL_SEED`` (``seed_everything``'s seed; else ``seed``) + the epoch, resumable
        mid-epoch (:mod:`~dck_lightning.data.resumable`)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed = int(os.environ.get("PL_GLOBAL_SEED", self.seed))
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=seed)
        if trainer is not None:  # a checkpoint without loader state: at least its epoch's order
            sampler.set_epoch(trainer.current_epoch)
        return sampler

    def resume_train_loader(self, state: dict[str, Any]) -> None:
        """Give the next training loader a checkpoint's loader state (its
        :meth:`~dck_lightning.data.resumable.ResumableDataLoader.load_state_dict`) as it is
        built. Lightning hands the state to the loader itself only when it builds the loader
        after restoring the loops; a schedule that asks for ``estimated_stepping_batches``
        makes it build the loader earlier, and the state would be lost
        (:class:`~dck_lightning.callbacks.ResumeState` calls this when a checkpoint loads)."""
        self._pending_loader_state = dict(state)

    def _trained_batches(self) -> tuple[int, bool]:
        """``(batches trained in this epoch, whether its training is over)``, for the training
        loader's state in a checkpoint."""
        trainer = self.trainer
        if trainer is None:
            return 0, True
        processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return processed, processed >= trainer.num_training_batches

    # -- scale-out: unpadded evaluation under DDP ---------------------------------------------

    def _unpadded_sampler(self, dataset: Dataset) -> Optional[Any]:
        """Under DDP, an evaluation sampler that gives every sample to exactly one rank.

        Lightning's ``DistributedSampler`` pads the last ranks with repeated samples so all get
        the same number, which skews validation and test metrics. Here each rank takes a
        disjoint, unpadded share (``UnrepeatedDistributedSampler``); torchmetrics states and
        ``sync_dist`` epoch values are reduced over the ranks, so the metrics equal a
        single-process evaluation (with :func:`~dck_lightning.distributed.exact_mean_reduce`,
        as the ranks now count different numbers of samples). Kept Lightning's way (``None``)
        outside DDP, without
        ``use_distributed_sampler``, or when a rank would get no sample at all.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1 or len(dataset) < trainer.world_size:  # type: ignore[arg-type]
            return None
        if not trainer._accelerator_connector.use_distributed_sampler:
            return None
        from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

        from ..distributed import exact_mean_reduce

        exact_mean_reduce(trainer.strategy)  # uneven shards: epoch means need a float count
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    # -- scale-out: the augmentation generator in checkpoints (exact resume) --------------------

    def state_dict(self) -> dict[str, Any]:
        """The augmentation generators' states (of this rank), saved with every checkpoint."""
        trainer = self.trainer
        return {
            "augment_generators": {key: g.get_state() for key, g in self._generators.items()},
            "rank": trainer.global_rank if trainer is not None else 0,
            "global_step": trainer.global_step if trainer is not None else 0,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the generator states, so a resumed run draws the augmentations it would have.

        A checkpoint holds the states of the rank that wrote it (global rank 0); the other
        ranks start a fresh stream, seeded from the checkpoint's step so it differs from the
        one they drew before.
        """
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if int(state_dict.get("rank", 0)) != rank:
            self._augment_seed_offset = 7919 * (int(state_dict.get("global_step", 0)) + 1)
            for key in list(self._generators):
                del self._generators[key]
            return
        for key, state in (state_dict.get("augment_generators") or {}).items():
            if key in self._generators:
                self._generators[key].set_state(state)
            else:
                self._pending_generator_states[key] = state

    # -- on-device batch transform ---------------------------------------------------------

    def _is_training(self) -> bool:
        trainer = self.trainer
        return trainer is not None and bool(trainer.training)

    def augment_generator(self, device: torch.device) -> torch.Generator:
        """The augmentation generator on ``device``, seeded from ``seed`` and the process rank."""
        key = str(device)
        if key not in self._generators:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed + 1_000_003 * rank + self._augment_seed_offset)
            if key in self._pending_generator_states:  # restored from a checkpoint
                generator.set_state(self._pending_generator_states.pop(key))
            self._generators[key] = generator
        return self._generators[key]

    def augment_batch(
        self, images: Tensor, targets: Any, generator: torch.Generator
    ) -> tuple[Tensor, Any]:
        """Augment a training batch; ``images`` are float in ``[0, 1]``. Identity here."""
        return images, targets

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Convert, augment (training only) and normalise the images of ``(images, targets)``."""
        images, targets = batch
        images = to_float(images)
        if self.augment and self._is_training():
            images, targets = self.augment_batch(
                images, targets, self.augment_generator(images.device)
            )
        if self.normalize:
            images = normalize(images, self.mean, self.std)
        return images, targets


class InMemoryClassificationDataModule(BaseDataModule):
    """A classification dataset decoded once into ``uint8`` tensors held in memory.

    Subclasses implement :meth:`load_split` and :meth:`data_not_found`, may implement
    :meth:`download_data`, set the class attributes in ``__init__`` and the
    ``batch_augment`` applied to training batches.

    Batches are ``(images, labels)``: ``uint8`` ``Tensor[B, C, H, W]`` and ``int64``
    ``Tensor[B]`` out of the loader; ``float32`` normalised images once on the device.

    Args:
        data_dir: root directory of the dataset files.
        download: download missing files in :meth:`prepare_data`; :meth:`setup` never
            touches the network.
        val_split: fraction of the training set held out for validation (seeded), used when
            the dataset has no validation split of its own.
        batch_size, num_workers, seed, augment, normalize, predict_dir: see
            :class:`BaseDataModule`.
    """

    #: dataset name used in messages.
    dataset_name: str = "dataset"

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_split: float = 0.1,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 42,
        augment: bool = True,
        normalize: bool = True,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, augment, normalize, predict_dir)
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.val_split = val_split
        self.batch_augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None
        self.collate_fn = passthrough_collate

    # -- to implement ----------------------------------------------------------------------

    def load_split(self, split: str) -> Optional[ClassificationArrays]:
        """Decode one split (``"train"``, ``"val"`` or ``"test"``).

        Returns:
            ``(images, labels)``: ``uint8`` ``Tensor[N, C, H, W]`` and ``int64`` ``Tensor[N]``;
            ``None`` for ``"val"`` when the dataset has no validation split (it is then
            carved out of ``"train"`` with ``val_split``) or for ``"test"`` when there is none.

        Raises:
            DataNotFoundError: the files of the split are missing.
        """
        raise NotImplementedError

    def data_not_found(
        self,
        missing: Optional[Sequence[str]] = None,
        download_error: Optional[BaseException] = None,
    ) -> DataNotFoundError:
        """The error describing where the files belong and how to fetch them."""
        raise NotImplementedError

    def download_data(self) -> None:
        """Download the dataset into ``data_dir`` (skipping files already there)."""
        raise self.data_not_found()

    # -- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download the data when ``download=True`` (rank 0 only, called by the Trainer).

        Runs under a file lock in ``data_dir`` (:func:`~dck_lightning.locking.file_lock`), so
        nodes or jobs sharing a filesystem never download into the same folder at once.
        """
        if not self.download:
            return
        with file_lock(Path(self.data_dir) / ".prepare_data.lock"):
            try:
                self.download_data()
            except DataNotFoundError:
                raise
            except Exception as err:  # network errors come as URLError, RuntimeError, OSError...
                raise self.data_not_found(download_error=err) from err

    def setup(self, stage: Optional[str] = None) -> None:
        """Decode the splits the stage needs (once; later calls reuse them)."""
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            train = self._checked(self.load_split("train"), "train")
            val = self.load_split("val")
            if val is None:
                train, val = split_train_val(*train, val_split=self.val_split, seed=self.seed)
            else:
                val = self._checked(val, "val")
            self.train_dataset = BatchedTensorDataset(*train)
            self.val_dataset = BatchedTensorDataset(*val) if len(val[1]) > 0 else None
        if self._needs_test_set(stage) and self.test_dataset is None:
            test = self.load_split("test")
            if test is not None:
                self.test_dataset = BatchedTensorDataset(*self._checked(test, "test"))

    def _checked(self, arrays: Optional[ClassificationArrays], split: str) -> ClassificationArrays:
        if arrays is None:
            raise self.data_not_found()
        images, labels = arrays
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.dataset_name} {split}: expected uint8 images [N, {self.in_channels}, H, W], "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{self.dataset_name} {split}: {images.shape[0]} images but labels of shape "
                f"{tuple(labels.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError(f"{self.dataset_name} {split}: the split is empty")
        labels = labels.long()
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"{self.dataset_name} {split}: labels outside [0, {self.num_classes}): "
                f"{labels.min().item()}..{labels.max().item()}"
            )
        return images.contiguous(), labels

    def augment_batch(
        self, images: Tensor, targets: Any, generator: torch.Generator
    ) -> tuple[Tensor, Any]:
        """Apply ``batch_augment`` to the images; labels are unchanged."""
        if self.batch_augment is not None:
            images = self.batch_augment(images, generator)
        return images, targets
