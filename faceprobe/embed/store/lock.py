"""The one-live-writer lock of a store, and the refusal message when another run holds it.

Decisions:
- The lock is ``fcntl.flock`` on ``.lock``: the kernel releases it when the owner dies, so a stale
  lock from a killed run is taken over without guessing from pids; the pid is written into the
  file only so the refusal message can name the owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import weakref
from pathlib import Path

from faceprobe.embed.store.layout import LOCK, _now
from faceprobe.errors import StoreLockedError


class _Lock:
    """``flock`` on STORE/.lock, the pid of the owner written inside for the refusal message.

    An flock belongs to the open file description, which a ``fork`` shares: a forked child (a
    DataLoader worker) would keep the store locked after its parent died. So every lock this
    process holds is closed in each forked child (``os.register_at_fork`` below; the fd is
    O_CLOEXEC as well, for exec'd children), and the lock lives exactly as long as its owner."""

    _held: weakref.WeakSet[_Lock] = weakref.WeakSet()

    def __init__(self, store: Path):
        self.path = store / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StoreLockedError(_locked_message(self.path, owner)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}".encode())
        self.fd = fd
        _Lock._held.add(self)

    def release(self) -> None:
        _Lock._held.discard(self)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the fd drops the flock
            self.fd = None

    @classmethod
    def _forget_in_child(cls) -> None:
        # in a forked child: drop this copy of the parent's fds without unlocking (the parent
        # still holds the lock through its own fd) or truncating the owner's record
        for lock in list(cls._held):
            if lock.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(lock.fd)
                lock.fd = None
        cls._held = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Lock._forget_in_child)

_RETRY = "then run again (it resumes)"


def _lock_holders(path: Path) -> list[int]:
    """Pids of the processes on this machine (those /proc lets us see) with an fd of ``path``
    that holds a lock ("lock:" in its fdinfo); or, where fdinfo shows no locks, with it open."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    me, locking, opened = os.getpid(), [], []
    with contextlib.suppress(OSError):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == me:
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    fst = os.stat(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                    continue
                opened.append(int(pid))
                with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    if "\nlock:" in f.read():
                        locking.append(int(pid))
                        break
    return sorted(set(locking or opened))


def _describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({cmd[:100]})" if cmd else f"pid {pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked_message(path: Path, record: str) -> str:
    """The refusal of a locked store, true to what this machine can check: the recorded owner is
    named as the writer only while it is alive (and, where /proc shows, holds the lock)."""
    store = path.parent
    m = re.match(r"pid (\d+) on (\S+)", record)
    if not m or m.group(2) != socket.gethostname():
        # another machine (a shared filesystem) or no record: nothing here can be checked
        return (f"store {store} is being written by {record or 'another process'}; wait for that "
                f"run to finish or stop it, {_RETRY}")
    owner = int(m.group(1))
    holders = _lock_holders(path)
    if _alive(owner) and (owner in holders or not holders):
        return (f"store {store} is being written by {record}; wait for that run to finish or "
                f"stop it (kill {owner}), {_RETRY}")
    dead = f"store {store} is locked, but not by a live run: its writer, pid {owner}, has exited"
    if holders:
        who = ", ".join(_describe_pid(p) for p in holders)
        one = len(holders) == 1
        return (f"{dead} and {who} {'still holds' if one else 'still hold'} the lock, left over "
                f"from it; stop {'it' if one else 'them'} (kill {' '.join(map(str, holders))}), "
                f"{_RETRY}")
    return (f"{dead} and the lock is still held, most likely by processes it started (its "
            f"decode/detect workers); stop them, {_RETRY}")
