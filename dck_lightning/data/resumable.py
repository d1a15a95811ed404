"""A training loader Lightning resumes mid-epoch: same sample order, no repeated or lost batch.

Lightning saves a loader's ``state_dict()`` in every checkpoint and hands it back through
``load_state_dict()`` before the resumed run iterates, when the loader has both (its
"stateful dataloader" interface). Without them a run resumed from a mid-epoch checkpoint (the
one SIGTERM writes) reshuffles the interrupted epoch and restarts it from its first batch while
Lightning counts on from the checkpoint's batch: some samples are seen twice, others never,
and the random streams drift.

:class:`ResumableSampler` shuffles each epoch from ``seed + epoch`` alone (a
:class:`~torch.utils.data.DistributedSampler`, so each DDP rank takes its share and Lightning
injects no sampler of its own) and can start an epoch at a given sample.
:class:`ResumableDataLoader` saves the epoch and the number of batches the trainer has trained
in it, and on load makes its next iteration the rest of that epoch (or the next epoch, for a
checkpoint written at an epoch's end). The loader never draws from the global random
generators (the sampler has its seed, the workers' base seed comes from the loader's own
generator), so dropout and everything else drawing from them after a resume continues as in
the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableDataLoader", "ResumableSampler"]


class ResumableSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that can begin an epoch part-way.

    The order of epoch ``e`` is a permutation drawn from ``seed + e`` (as torch's sampler, the
    same on every rank; each rank then takes every ``num_replicas``-th index). :attr:`start`
    (set by :meth:`ResumableDataLoader.load_state_dict`) skips that many of this rank's indices
    in the next iteration only. ``len`` stays the whole epoch's share: Lightning's batch count
    of the epoch, which the resumed loop continues.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas, rank: the DDP world size and this process's global rank. Default: 1, 0.
        shuffle: shuffle each epoch. Default: True.
        seed: the seed of the permutations. Default: 0.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        #: this rank's indices to skip at the start of the next iteration.
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """:class:`~torch.utils.data.DataLoader` over a :class:`ResumableSampler` with Lightning's
    stateful-loader interface (see the module docstring).

    Attributes:
        progress: a callable returning ``(batches, epoch_done)``: the batches the trainer has
            trained in the current epoch, and whether the epoch's training is over (set by the
            DataModule; without it nothing is skipped on resume).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(
                f"ResumableDataLoader needs a ResumableSampler, got {type(self.sampler).__name__}"
            )
        self.progress: Optional[Callable[[], tuple[int, bool]]] = None
        self._loaded: Optional[dict[str, Any]] = None  # the state applied (applied once)
        self._own_generator = self.generator is None
        if self._own_generator:
            self.generator = torch.Generator()

    def __iter__(self) -> Any:
        if self._own_generator:  # the workers' base seed, the same for an epoch after a resume
            sampler = self.sampler
            self.generator.manual_seed(sampler.seed * 1_000_003 + sampler.epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the batches trained in it and whether its training is over."""
        batches, done = self.progress() if self.progress is not None else (0, True)
        sampler = self.sampler
        return {
            "epoch": int(sampler.epoch),
            "batches": int(batches),
            "epoch_done": bool(done),
            "num_replicas": int(sampler.num_replicas),
            "batch_size": int(self.batch_size or 1),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration the rest of the saved epoch (its next epoch, when it was
        over). A checkpoint of another world size or batch size restarts the saved epoch from
        its first batch (its sample split differs), with a warning."""
        if state == self._loaded:  # handed over twice (the DataModule, then Lightning)
            return
        self._loaded = dict(state)
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        epoch = int(state.get("epoch", 0))
        if state.get("epoch_done", True):
            sampler.set_epoch(epoch + 1)
            sampler.start = 0
            return
        sampler.set_epoch(epoch)
        same = state.get("num_replicas") == sampler.num_replicas and state.get("batch_size") == (
            self.batch_size or 1
        )
        if not same:
            from pytorch_lightning.utilities import rank_zero_warn

            rank_zero_warn(
                "the checkpoint was written with another world size or batch size: epoch "
                f"{epoch} restarts from its first batch"
            )
            sampler.start = 0
            return
        sampler.start = int(state.get("batches", 0)) * int(self.batch_size or 1)
