"""SIGKILL of the main `faceprobe embed` process alone (what the OOM killer does), not of its
process group: its decode/detect workers must not outlive it, must not hold the store's lock
meanwhile, and the re-run must start at once and end with every image exactly once. Also: a lock
left held by a dead owner's child is refused with a message that names the live holder."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from hostile import real_faces
from procs import REPO, cli, run, start, wait_for

from faceprobe.embed.store import LOCK, Store
from faceprobe.embed.store.lock import _Lock
from faceprobe.errors import StoreLockedError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

SURVIVAL_LIMIT_S = 5.0


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``, from /proc."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] not in "ZX":
            pids.append(int(d))
    return pids


def holds_file(pid: int, path) -> bool:
    target = os.stat(path)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def _dataset(root, n: int) -> list[str]:
    root.mkdir()
    for p in real_faces(n):
        shutil.copyfile(p, root / f"{p.parent.name}__{p.name}")
    return sorted(str(p) for p in root.iterdir())


def test_sigkill_main_only_leaves_no_workers_and_no_lock(tmp_path):
    rng = random.Random(int(os.environ.get("FACEPROBE_KILL_SEED", "17")))
    root, out = tmp_path / "faces", tmp_path / "store"
    inputs = _dataset(root, 20)
    cmd = cli("embed", "folder", "--root", root, "--out", out, "--backbone", "facenet.vggface2",
              "--weights", "random", "--shard-size", "2", "--batch-size", "2", "--workers", "2",
              "--no-progress")
    survived: list[float] = []
    kills = 0
    for _ in range(3):
        proc = start(cmd)
        sid = proc.pid  # start_new_session: the main process leads its own session
        try:
            # mid-run: once the DataLoader workers exist, then a random moment later
            assert wait_for(lambda sid=sid: len(session_pids(sid)) >= 3, proc, timeout=120), \
                proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no workers"
            time.sleep(rng.uniform(0.0, 1.5))
            workers = [p for p in session_pids(sid) if p != proc.pid]
            # the workers do not share the main process's lock (a fork shares the flock)
            leaked = [p for p in workers if holds_file(p, out / LOCK)]
            os.kill(proc.pid, signal.SIGKILL)  # the main process only, not the group
            proc.wait()
            t0 = time.monotonic()
            gone = wait_for(lambda sid=sid: not session_pids(sid), timeout=15, step=0.02)
            survived.append(round(time.monotonic() - t0, 3))
            left = session_pids(sid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sid, signal.SIGKILL)  # clean up whatever a failure left behind
            proc.wait()
        assert gone and not left, f"workers {left} outlived the killed main process by 15 s"
        assert survived[-1] < SURVIVAL_LIMIT_S, f"workers outlived the main process: {survived}"
        assert not leaked, f"DataLoader workers {leaked} held the store lock's fd"
        kills += 1
        if len(list(out.glob("shard-*.stats.json"))) == len(inputs) // 2:
            break
    print(f"\nkilled main {kills} times; workers gone after {survived} s")
    assert kills >= 1
    # the re-run starts at once (no "is being written by pid N") and finishes the store
    res = run(cmd, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    store = Store(out)
    d = store.load(usable_only=False)
    paths = d.path.tolist()
    assert sorted(paths) == inputs  # every image exactly once
    info = store.info()
    assert info["complete"] and info["rows"] == len(inputs) == sum(info["status"].values())
    assert store.verify()["ok"]


_ORPHAN_HOLDER = r"""
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since 2026-01-01".encode())
child = os.fork()  # shares the locked open file description, as a forked worker would
if child == 0:
    null = os.open(os.devnull, os.O_RDWR)  # let the parent's pipes close
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
os._exit(0)  # the owner dies; its child keeps the lock
"""


def test_refusal_names_the_live_holder_when_the_owner_died(tmp_path):
    store = tmp_path / "s"
    store.mkdir()
    proc = subprocess.run([sys.executable, "-c", _ORPHAN_HOLDER, str(store / LOCK)],
                          capture_output=True, text=True, timeout=60)
    owner = int((store / LOCK).read_text().split()[1])
    child = int(proc.stdout.strip())
    try:
        with pytest.raises(StoreLockedError) as err:
            _Lock(store).acquire()
        msg = str(err.value)
        assert "not by a live run" in msg and f"writer, pid {owner}, has exited" in msg, msg
        assert f"and pid {child} (" in msg and "still holds the lock" in msg, msg
        assert f"kill {child})" in msg and "being written by" not in msg, msg
    finally:
        os.kill(child, signal.SIGKILL)
    assert wait_for(lambda: not holds_file(child, store / LOCK), timeout=10)
    lock = _Lock(store)
    lock.acquire()  # taken over once the holder is gone
    lock.release()


def test_refusal_names_a_live_owner(tmp_path):
    store = tmp_path / "s"
    store.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from faceprobe.embed.store.lock import _Lock; _Lock(Path(sys.argv[1])).acquire(); "
         "print('ready', flush=True); sys.stdin.read()", str(store)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=rf"by pid {holder.pid} on .*kill {holder.pid}"):
            _Lock(store).acquire()
    finally:
        holder.kill()
        holder.wait()
