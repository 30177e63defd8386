"""The embedding store: a directory of HDF5 shards plus a manifest.

Layout::

    STORE/manifest.json            what every shard was made with (backbone, weights, alignment...)
    STORE/shard-00000.h5           rows [0, shard_size) of the run's record list
    STORE/shard-00000.stats.json   written last: its presence is what marks the shard complete
    STORE/.lock                    flock'ed by the one live writer

Where things are (each module imports only those listed before it)::

    layout.py     file names, statuses, row fields, which shards are complete
    manifest.py   manifest read + validation, resume keys, records fingerprint, vocabularies
    lock.py       the one-live-writer flock and its refusal message
    row_codec.py  row dicts <-> shard columns (label encoding)
    data.py       StoreData / ShardColumns, what reads return
    reader.py     Store: info, shard reads, batches, chips, verify
    writer.py     StoreWriter: create/resume, atomic shard + stats writes, repair

Decisions:
- Nothing is pickled: strings, numbers and JSON only, so a store is data, not code.
- Callers import from ``faceprobe.embed.store``; the submodules are its layout, not its API.
"""

from __future__ import annotations

from faceprobe.embed.store.data import ShardColumns, StoreData
from faceprobe.embed.store.layout import (
    FAILED_STATUSES,
    FORMAT,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    ROW_FIELDS,
    STATUSES,
    USABLE_STATUSES,
    shard_name,
    stats_name,
)
from faceprobe.embed.store.manifest import build_vocabularies, records_fingerprint
from faceprobe.embed.store.reader import Store
from faceprobe.embed.store.row_codec import encode_rows, read_shard_rows
from faceprobe.embed.store.writer import StoreWriter
from faceprobe.files import file_sha256  # re-exported for stages and tests

__all__ = [
    "FAILED_STATUSES",
    "FORMAT",
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "ROW_FIELDS",
    "STATUSES",
    "USABLE_STATUSES",
    "ShardColumns",
    "Store",
    "StoreData",
    "StoreWriter",
    "build_vocabularies",
    "encode_rows",
    "file_sha256",
    "read_shard_rows",
    "records_fingerprint",
    "shard_name",
    "stats_name",
]
