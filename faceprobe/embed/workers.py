"""Worker processes of the local embed engine: chunks of records through a torch DataLoader whose
workers die with the main process.

Decisions:
- Decoding, detection and alignment run in worker processes (chunks of ~16 records, one torch
  thread per worker) while the main process runs the backbone on batches of chips. On a CPU MTCNN
  is the bottleneck and its small convolutions scale badly with intra-op threads, so processes
  beat threads. On CUDA the workers only decode and detection runs batched on the GPU in the main
  process.
- A worker is SIGKILLed when the main process dies (``prctl(PR_SET_PDEATHSIG)``): a ``kill -9``
  or the OOM killer gives the main process no chance to stop its workers.
"""

from __future__ import annotations

import contextlib
import os

import torch

from faceprobe.data.records import FaceRecord
from faceprobe.embed.prepare import PrepareConfig, base_row, one_line, prepare_records

CHUNK = 16  # records per worker task: enough same-size images for one MTCNN batch


class RecordChunks(torch.utils.data.Dataset):
    def __init__(self, chunks: list[tuple[int, list[FaceRecord]]], cfg: PrepareConfig, detect: bool):
        self.chunks, self.cfg, self.detect = chunks, cfg, detect

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i):
        shard, recs = self.chunks[i]
        try:
            return shard, len(recs), prepare_records(recs, self.cfg, self.detect)
        except Exception as exc:  # noqa: BLE001 - never lose a chunk; record why instead
            msg = one_line(exc)
            rows = []
            for rec in recs:
                row = base_row(rec)
                row["error"] = f"{rec.path}: {msg}"
                rows.append((row, None) if not self.detect else row)
            return shard, len(recs), rows


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None) -> None:
    """In a worker: be SIGKILLed when the parent dies (a ``kill -9`` or the OOM killer gives the
    parent no chance to stop its workers, which would live on re-parented to init). Linux only;
    the signal is tied to the thread that forked the worker, the one iterating the loader. A
    parent that died between the fork and the ``prctl`` is caught by its changed ppid."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def worker_init(_, parent: int | None = None):
    # the store lock's fd was already closed here by store/lock.py's at-fork hook
    die_with_parent(parent)
    torch.set_num_threads(1)


def loader(ds, workers: int):
    """A DataLoader whose worker processes end with this process (see ``die_with_parent``)."""
    import functools
    import multiprocessing as mp

    # forked workers are this process's children; under spawn/forkserver (not faceprobe's
    # default, but a user may set it) their parent differs, so their ppid cannot be checked
    method = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]
    parent = os.getpid() if method == "fork" else None
    return torch.utils.data.DataLoader(
        ds, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=4,
        worker_init_fn=functools.partial(worker_init, parent=parent),
        collate_fn=lambda x: x, persistent_workers=False,
    )


def iter_chunks(chunks, cfg, detect, workers):
    ds = RecordChunks(chunks, cfg, detect)
    if workers <= 0:
        for i in range(len(ds)):
            yield ds[i]
        return
    yield from loader(ds, workers)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return max(1, min(8, cores()))
