"""Datasets that stream: memory-mapped .npy pairs, folders of .npz shards and image folders,
read batch by batch through torch's DataLoader (workers, prefetch) and sharded across
torch.distributed ranks. Every command and API function that takes data goes through
:func:`batches`, so memory stays flat in the number of samples."""
from .images import Preprocess, ImageFolder
from .loading import (Data, ShardedBatches, Subset, as_source, batches, check, count, head,
                      head_labelled, is_empty, loader, open_data)
from .sources import ArraySource, NpySource, NpzShards, Source

__all__ = ["ArraySource", "Data", "ImageFolder", "NpySource", "NpzShards", "Preprocess",
           "ShardedBatches", "Source", "Subset", "as_source", "batches", "check", "count", "head",
           "head_labelled", "is_empty", "loader", "open_data"]
