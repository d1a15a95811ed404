"""A tensor dataset that is fetched a whole batch at a time.

``torch.utils.data.DataLoader`` calls ``dataset.__getitems__(indices)`` when the
dataset defines it, so one indexing operation per tensor builds the batch
instead of ``batch_size`` ``__getitem__`` calls plus a ``torch.stack``. The
loader keeps an ordinary ``BatchSampler``, so Lightning can still swap in a
``DistributedSampler`` under DDP.
"""

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["BatchedTensorDataset", "passthrough_collate"]


class BatchedTensorDataset(TensorDataset):
    """:class:`~torch.utils.data.TensorDataset` with a vectorised ``__getitems__``.

    Use it with ``collate_fn=passthrough_collate``.

    Example:
        >>> ds = BatchedTensorDataset(torch.arange(10), torch.arange(10) * 2)
        >>> ds.__getitems__([3, 1])
        (tensor([3, 1]), tensor([6, 2]))
    """

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        # index_select is much faster than advanced indexing (tensor[index]) on CPU.
        return tuple(tensor.index_select(0, index) for tensor in self.tensors)


def passthrough_collate(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Collate for :class:`BatchedTensorDataset`: the batch is already assembled."""
    return batch
