"""Distributed search: KerasTuner's chief/worker mode, with the bookkeeping that lets workers end
cleanly when the chief has finished.

Decisions:
- Distributed search (``role='chief'|'worker'``, ``oracle='HOST:PORT'``) is KerasTuner's own
  chief/worker mode: the chief holds the oracle and serves it over gRPC, workers ask it for
  trials and report scores, every process shares ``directory``. Its switches are environment
  variables (KERASTUNER_TUNER_ID / _ORACLE_IP / _ORACLE_PORT); they are set only while the tuner
  lives and restored afterwards, so one process can run several searches. Every process loads the
  store and checks the directory's fingerprint (created atomically, first writer wins), so a
  worker started with other settings is refused instead of reporting incomparable scores. The
  chief serves with its own loop rather than KerasTuner's ``start_server``, which polls for the
  end every 20 s; after the last trial it writes ``DIR/faceprobe-search-done.json`` (the trial
  count), refits the best and writes ``out`` (workers write no bundle). A worker that starts or
  calls after the chief has finished (still importing while the other workers ran every trial)
  would wait an hour in KerasTuner's client for a chief that is gone; instead it checks that
  file while waiting for the chief and whenever a call to the chief times out, and ends cleanly
  with no trials run when the search it was started for is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from faceprobe.errors import ConfigError
from faceprobe.heads.tune_trial import _scored

DONE = "faceprobe-search-done.json"  # written by the chief when every trial is scored
ROLES = ("chief", "worker")
CHIEF_WAIT_S = 600  # how long a worker waits for the chief to start serving
CALL_TIMEOUT_S = 10.0  # a worker's call to the chief: retried after this, unless the search is done


def check_role(role: str | None, oracle: str | None, tuner_id: str | None
               ) -> tuple[str, int, str | None]:
    """The chief's address and this process's tuner id for ``role``; refuses options that do
    not make a distributed search."""
    if role not in (None, *ROLES):
        raise ConfigError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if role is not None and not oracle:
        raise ConfigError(f"--role {role} needs --oracle HOST:PORT (where the chief listens)")
    if oracle and role is None:
        raise ConfigError("--oracle is for a distributed search; add --role chief or worker")
    host, port = parse_oracle(oracle) if role else ("", 0)
    if role == "worker":
        tuner_id = tuner_id or _worker_id()
        if "chief" in tuner_id:
            raise ConfigError(f"worker id {tuner_id!r} must not contain 'chief'")
    elif role == "chief":
        tuner_id = "chief"
    return host, port, tuner_id


def parse_oracle(value: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--oracle must be HOST:PORT (e.g. 10.0.0.5:8000), got {value!r}")
    return host.strip("[]"), int(port)


def _worker_id() -> str:
    # KerasTuner treats any id containing "chief" as the chief, so keep that word out of it
    host = socket.gethostname().replace("chief", "chf")
    return f"worker-{host}-{os.getpid()}"


@contextlib.contextmanager
def _kerastuner_env(role: str | None, host: str, port: int, tuner_id: str) -> Iterator[None]:
    keys = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    if role is None:
        for k in keys:
            os.environ.pop(k, None)
    else:
        os.environ.update(zip(keys, (tuner_id, host, str(port)), strict=True))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _SearchOver(Exception):
    """A worker found the chief gone and the search it was started for complete."""


def _search_done(directory: Path, trials: int) -> bool:
    """The chief has finished a search of at least ``trials`` trials in ``directory``."""
    try:
        done = json.loads((directory / DONE).read_text())
    except (OSError, ValueError):
        return False
    return int(done.get("trials", 0)) >= trials


def _mark_done(directory: Path, trials: int, scored: int) -> None:
    tmp = directory / f".{DONE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"trials": trials, "scored": scored}))
    os.replace(tmp, directory / DONE)


def _wait_for_chief(host: str, port: int, timeout: float | None = None,
                    done: Callable[[], bool] = lambda: False) -> bool:
    """Wait for the chief to serve (``timeout`` s, default ``CHIEF_WAIT_S`` as it is at the call);
    False (without waiting further) once ``done()`` says the search is already over."""
    import grpc

    timeout = CHIEF_WAIT_S if timeout is None else timeout

    # A fresh channel per second: one channel to a port nobody listens on yet backs off its
    # reconnects for up to minutes, so a worker started before the chief could miss the search.
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return False
        channel = grpc.insecure_channel(f"{host}:{port}")
        try:
            grpc.channel_ready_future(channel).result(timeout=1.0)
            return True
        except grpc.FutureTimeoutError:
            pass
        finally:
            channel.close()
        if time.monotonic() >= deadline:
            raise ConfigError(f"no tuning chief answered at {host}:{port} within {timeout:.0f}s; "
                              "start `faceprobe tune ... --role chief` first (or check the "
                              "address and firewall)")


class _PatientStub:
    """Stands in for KerasTuner's ``OracleClient.stub``: each call to the chief waits at most
    ``timeout`` s, then is retried, unless ``done()`` says the search is over (the chief is gone),
    which raises _SearchOver. KerasTuner's own calls wait an hour for a chief that has exited.
    Retrying is safe: CreateTrial returns the tuner's ongoing trial again, and a call only times
    out when the chief did not answer."""

    def __init__(self, stub, done: Callable[[], bool], timeout: float = CALL_TIMEOUT_S):
        self._stub, self._done, self._timeout = stub, done, timeout

    def __getattr__(self, name):
        import grpc

        method = getattr(self._stub, name)
        retry = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)

        def call(request, **kw):
            kw["timeout"] = self._timeout
            while True:
                try:
                    return method(request, **kw)
                except grpc.RpcError as exc:
                    if exc.code() not in retry:
                        raise
                    if self._done():
                        raise _SearchOver() from None
        return call


def _serve_oracle(oracle, host: str, port: int, log: Callable[[str], None],
                  on_done: Callable[[], None] = lambda: None) -> None:
    """KerasTuner's chief server, ending as soon as the search is over (see the docstring)."""
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"the tuning chief cannot listen on {host}:{port} (port in use or not "
                          "an address of this machine); choose another --oracle")
    server.start()
    log(f"tuning chief serving the oracle on {host}:{port}; start workers with --role worker "
        f"--oracle HOST:{port}")
    last = -1
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(0.2)
            n = _scored(oracle)
            if n != last:
                last = n
                log(f"chief: {n}/{oracle.max_trials} trials scored; workers active: "
                    + (", ".join(sorted(oracle.ongoing_trials)) or "none"))
        on_done()  # before the server stops: a worker that then finds no chief reads it
    finally:
        server.stop(grace=2).wait()


def run_chief(tuner, directory: Path, trials: int, host: str, port: int,
              log: Callable[[str], None]) -> int:
    """Serve ``tuner``'s oracle until workers have scored every trial, then mark the search done;
    the number of trials scored meanwhile."""
    tuner.oracle.verbose = 0
    tuner.save()
    scored_before = _scored(tuner.oracle)
    _serve_oracle(tuner.oracle, host, port, log,
                  lambda: _mark_done(directory, trials, _scored(tuner.oracle)))
    return _scored(tuner.oracle) - scored_before
