"""Event-camera data: event records, the N-MNIST format, binning into frames, a saccade emulator
for static images, a synthetic spike-timing task, and writers of time-varying ``.npz`` datasets (``x`` [N, T, 2, H, W]).

A low layer: it depends on numpy, numba, tqdm and :mod:`snnconvert.errors` only.
"""
from __future__ import annotations

from .dataset import event_files_to_dataset, images_to_dataset, write_frames
from .frames import accumulate_frames, fit_events, to_frames
from .nmnist import NMNIST_SENSOR, read_nmnist, write_nmnist
from .records import EVENT_DTYPE, check_events, make_events
from .saccade import NMNIST_PATH, SaccadeConfig, emulate_saccades, iter_saccades, saccade_offsets
from .timing import TimingTask, timing_task

__all__ = [
    "EVENT_DTYPE", "NMNIST_PATH", "accumulate_frames", "NMNIST_SENSOR", "SaccadeConfig", "check_events", "emulate_saccades",
    "event_files_to_dataset", "fit_events", "images_to_dataset", "iter_saccades", "make_events", "read_nmnist",
    "saccade_offsets", "TimingTask", "timing_task", "to_frames", "write_frames", "write_nmnist",
]
