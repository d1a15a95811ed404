"""Image classification: cross-entropy, top-1/top-5 accuracy, per-class accuracy and confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from ..models import ImageClassifier
from ..models.registry import BackboneFactory, ClassifierFactory, build_backbone, is_classifier
from .base import BaseTask

#: ``dcb_small``, with every argument at its default.
DEFAULT_BACKBONE = {"class_path": "dck_lightning.models.dcb_small"}


class ClassificationTask(BaseTask):
    """Classify images with a backbone + pooling/linear head, or a whole classifier (SeedNet).

    Args:
        backbone (BackboneFactory or ClassifierFactory): a backbone preset (``dcb_small``,
            ``dcb_resnet18``, ``resnet18``…, see :mod:`dck_lightning.models.registry`) and its
            arguments, e.g. the DCB switches ``dck``, ``deform``, ``gcm``; or ``SeedNet`` (the
            design document's MNIST model, with its own head: ``feature``, ``pool`` and
            ``dropout`` do not apply). Default: ``dcb_small``.
        feature (str or list[str]): feature map(s) the head pools: ``"c5"`` (default), a list,
            or ``"all"`` (multi-scale), see :class:`~dck_lightning.models.ImageClassifier`.
        pool (str): ``"avg"`` (default), ``"max"`` or ``"avgmax"``.
        dropout (float): dropout before the linear head. Default: 0.
        num_classes, in_channels: linked from the DataModule by the CLI.
        label_smoothing (float): label smoothing of the cross-entropy. Default: 0.
        class_names (list[str], optional): names for per-class metrics.
        **shared: :class:`BaseTask`'s (``backbone_weights``, optimiser, schedule, ``compile``).
    """

    monitor = "val/acc"
    mode = "max"

    def __init__(
        self,
        backbone: Union[BackboneFactory, ClassifierFactory] = DEFAULT_BACKBONE,
        feature: Union[str, Sequence[str]] = "c5",
        pool: Literal["avg", "max", "avgmax"] = "avg",
        dropout: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        label_smoothing: float = 0.0,
        class_names: Optional[list[str]] = None,
        **shared: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, backbone=backbone, **shared
        )

    def configure_models(self) -> None:
        hp = self.hparams
        if is_classifier(hp.backbone):
            self.model = build_backbone(hp.backbone, hp.in_channels, hp.num_classes)
            return
        self.model = ImageClassifier(
            build_backbone(hp.backbone, hp.in_channels),
            hp.num_classes,
            feature=hp.feature if isinstance(hp.feature, str) else list(hp.feature),
            dropout=hp.dropout,
            pool=hp.pool,
        )

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hparams.label_smoothing)

    def configure_metrics(self) -> None:
        n = self.hparams.num_classes
        metrics = {"acc": MulticlassAccuracy(n, top_k=1, average="micro")}
        if n >= 5:
            metrics["top5"] = MulticlassAccuracy(n, top_k=5, average="micro")
        collection = MetricCollection(metrics)
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")
        self.test_per_class = MulticlassAccuracy(n, average=None)
        self.test_confusion = MulticlassConfusionMatrix(n)

    def _shared_step(
        self, batch: tuple[Tensor, Tensor], stage: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            sync_dist=stage != "train",
            batch_size=labels.shape[0],
        )
        return loss, logits, labels

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, labels = self._shared_step(batch, "train")
        self.train_metrics.update(logits.detach(), labels)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, logits, labels = self._shared_step(batch, "val")
        self.val_metrics.update(logits, labels)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, logits, labels = self._shared_step(batch, "test")
        self.test_metrics.update(logits, labels)
        self.test_per_class.update(logits, labels)
        self.test_confusion.update(logits, labels)
        self.log_dict(self.test_metrics, on_epoch=True)

    def class_names(self) -> list[str]:
        names = self.hparams.class_names or getattr(
            getattr(self._trainer, "datamodule", None), "class_names", None
        )
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def on_test_epoch_end(self) -> None:
        per_class = self.test_per_class.compute()
        for name, value in zip(self.class_names(), per_class):
            self.log(f"test/acc_class/{name}", value)
        #: ``Tensor[num_classes, num_classes]``, rows = true class; kept for callbacks/notebooks.
        self.confusion_matrix = self.test_confusion.compute().cpu()
        self.test_per_class.reset()
        self.test_confusion.reset()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities ``Tensor[B, num_classes]``."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=-1)
