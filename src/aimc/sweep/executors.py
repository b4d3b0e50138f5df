"""Executors: where the points of a sweep run.

- :class:`LocalExecutor` (default): one :class:`~aimc.sweep.worker.PointRunner` in this process; no dependency.
- :class:`RayExecutor`: one Ray actor per worker on a local or remote Ray cluster. ``ray`` is imported only here
  and only when asked for; :meth:`RayExecutor.connect` checks that Ray is installed and the cluster reachable before
  any work starts. The payload (task, mapping, data) is put into Ray's object store once; each actor fetches it
  on its first point and keeps it, so it reaches each worker once. Each actor is given a whole unit of work (all
  points of one programmed chip, :func:`~aimc.sweep.points.work_units`) and gets the next unit when it has finished,
  so a chip is programmed once per unit. Actors are restarted by Ray when their process dies and the points they
  held are retried, up to :data:`MAX_RESTARTS` / :data:`MAX_TASK_RETRIES` times; every result comes back to the
  driver, which alone writes the store.

Ray moves Python objects between its own processes with (cloud)pickle; that is a channel between processes of one
cluster the user runs, never a file a user receives: nothing aimc stores or reads back is pickled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from aimc.errors import AimcError, ValidationError
from aimc.sweep.errors import BackendError, WorkerFailedError
from aimc.sweep.points import Point
from aimc.sweep.store import PointResult
from aimc.sweep.worker import Payload, PointRunner

#: Backends ``aimc sweep --backend`` accepts.
BACKENDS = ("local", "ray")
#: Times Ray restarts a worker actor whose process died (our choice: enough for an occasional kill or OOM, few
#: enough that a point that crashes every worker ends the sweep with an error instead of looping).
MAX_RESTARTS = 3
#: Times Ray retries a point whose worker died while holding it (same reasoning).
MAX_TASK_RETRIES = 3
#: Seconds to wait for a TCP connection to a cluster address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0

Unit = list[tuple[str, Point]]
OnResult = Callable[[PointResult], None]
_ADDRESS_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


def make_runner(payload: Any, threads: int | None) -> Any:
    """The runner of a payload: its own ``make_runner(threads)`` where it has one (a design-space exploration's,
    :mod:`aimc.dse`), else a sweep's :class:`~aimc.sweep.worker.PointRunner`. A runner has
    ``run(key, point) -> PointResult``."""
    factory = getattr(payload, "make_runner", None)
    return factory(threads) if factory is not None else PointRunner(payload, threads)


class Executor(ABC):
    """Runs units of points and hands each result to a callback as soon as it exists."""

    #: Number of workers (units run at once).
    workers: int = 1
    #: One-line description for the progress header.
    description: str = ""

    @abstractmethod
    def start(self, payload: Payload) -> None:
        """Ship the payload to the workers."""

    @abstractmethod
    def run(self, units: list[Unit], on_result: OnResult) -> None:
        """Run every point of ``units``; call ``on_result`` in this process for each finished point."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the workers."""


class LocalExecutor(Executor):
    """Runs the points one after the other in this process.

    Args:
        threads: torch threads while the sweep runs (None: leave the process's setting); restored by :meth:`close`.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.workers = 1
        self.description = "in-process"
        self._runner: PointRunner | None = None
        self._threads_before: int | None = None

    def start(self, payload: Payload) -> None:
        self._threads_before = torch.get_num_threads()
        self._runner = make_runner(payload, self.threads)

    def close(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        self._runner = None

    def run(self, units: list[Unit], on_result: OnResult) -> None:
        if self._runner is None:
            raise ValidationError("LocalExecutor.run called before start")
        for unit in units:
            for key, point in unit:
                on_result(self._runner.run(key, point))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError(
            "the ray backend needs Ray, which is not installed: pip install 'aimc[ray]' (or pip install ray)"
        ) from None
    return ray


def check_address(address: str) -> None:
    """Check the form of a Ray cluster address and that something listens there (raises BackendError).

    Accepted: ``HOST:PORT`` (the GCS address ``ray start --head`` prints, port 6379 by default),
    ``ray://HOST:PORT`` (Ray Client, needs ``ray[client]``), or ``auto`` (the cluster this machine belongs to).
    """
    if not isinstance(address, str) or not address:
        raise BackendError(f"--address must be HOST:PORT, ray://HOST:PORT or auto; got {address!r}")
    if address == "auto":
        return
    hostport = address[len("ray://") :] if address.startswith("ray://") else address
    m = _ADDRESS_RE.match(hostport)
    if m is None or not 1 <= int(m.group("port")) <= 65535:
        raise BackendError(f"--address must be HOST:PORT, ray://HOST:PORT or auto; got {address!r}")
    host, port = m.group("host").strip("[]"), int(m.group("port"))
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise BackendError(
            f"cannot reach a Ray cluster at {address!r} ({err}); start one there with "
            f"`ray start --head --port={port}` or check the address"
        ) from None


class _RemoteRunner:
    """The Ray actor around a :class:`PointRunner`.

    Every call carries the payload's object reference inside a list (a few bytes: Ray does not resolve a nested
    reference); the actor fetches the payload on its first call and keeps it, so it crosses the network once per
    actor, and once more after a restart, while the driver holds the reference. (A constructor argument would do
    the same, but Ray warns that actors with restarts lose such arguments when they go out of scope.)
    """

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._runner: PointRunner | None = None

    def run(self, payload_box: list[Any], key: str, point: Point) -> PointResult:
        if self._runner is None:
            import ray

            self._runner = make_runner(ray.get(payload_box[0]), self._threads)
        return self._runner.run(key, point)


class RayExecutor(Executor):
    """Runs points on Ray actors, one per worker.

    Args:
        address: a cluster address (see :func:`check_address`), or None for a new local cluster (or the cluster
            this process is already connected to, if ``ray.init`` was called before).
        workers: number of actors; None: as many as the cluster has CPUs divided by ``threads``.
        threads: CPUs (and torch threads) per actor.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None) -> None:
        self.address = address
        self.requested_workers = workers
        self.threads = threads or 1
        self._ray: Any = None
        self._started_ray = False
        self._actors: list[Any] = []
        self._payload_ref: Any = None

    def connect(self) -> None:
        """Import Ray and connect to (or start) the cluster; every failure is a BackendError, before any work."""
        ray = _import_ray()
        self._ray = ray
        if self.address is not None:
            check_address(self.address)
        if ray.is_initialized():
            pass  # the caller's cluster (e.g. a test or a notebook that called ray.init)
        elif self.address is None:
            cpus = (self.requested_workers or os.cpu_count() or 1) * self.threads
            try:
                ray.init(  # "local": a new cluster, even where `ray start` left one running
                    address="local",
                    num_cpus=cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except Exception as err:  # Ray raises many kinds; the user needs the reason, not the type
                raise BackendError(f"could not start a local Ray cluster: {err}") from None
            self._started_ray = True
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as err:
                hint = ""
                if os.environ.get("RAY_AUTH_MODE") != "token":
                    hint = (
                        "; if the cluster uses token authentication (Ray >= 2.59 turns it on for `ray start`), run "
                        "with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN "
                        "(`ray get-auth-token` on the head node prints it)"
                    )
                raise BackendError(f"{self.address!r} answers but Ray could not connect to it: {err}{hint}") from None
            self._started_ray = True  # our connection: disconnect at the end (the cluster keeps running)
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < self.threads:
            self.close()
            raise BackendError(f"the Ray cluster has {cpus:g} CPUs, fewer than the {self.threads} threads per worker")
        self.workers = self.requested_workers or max(1, int(cpus // self.threads))
        where = self.address or "a local Ray cluster"
        self.description = f"Ray ({where}, {self.workers} worker(s) x {self.threads} thread(s))"

    def start(self, payload: Payload) -> None:
        ray = self._ray
        if ray is None:
            raise ValidationError("RayExecutor.start called before connect")
        self._payload_ref = ray.put(payload)  # once: every actor fetches this one object
        actor = ray.remote(_RemoteRunner).options(
            num_cpus=self.threads, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES
        )
        self._actors = [actor.remote(self.threads) for _ in range(self.workers)]

    def run(self, units: list[Unit], on_result: OnResult) -> None:
        ray = self._ray
        queue = deque(units)
        inflight: dict[Any, tuple[int, str]] = {}
        pending = [0] * len(self._actors)

        def give(i: int) -> None:
            while queue and pending[i] == 0:
                for key, point in queue.popleft():
                    inflight[self._actors[i].run.remote([self._payload_ref], key, point)] = (i, key)
                    pending[i] += 1

        for i in range(len(self._actors)):
            give(i)
        finished = 0
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                i, key = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except AimcError:
                    raise  # bad input found on the worker: Ray's error is also an instance of the original one
                except ray.exceptions.RayTaskError as err:
                    raise WorkerFailedError(
                        f"point {key[:12]} raised an error on Ray worker {i}: {err}\nthe {finished} point(s) "
                        "finished in this run are stored: fix the cause and run the sweep again to resume"
                    ) from None
                except ray.exceptions.RayError as err:
                    raise WorkerFailedError(
                        f"Ray worker {i} died more often than its {MAX_RESTARTS} restarts allow, on point {key[:12]}: "
                        f"{str(err).splitlines()[0]}; the {finished} point(s) finished in this run are stored: "
                        "run the sweep again to resume"
                    ) from None
                finished += 1
                pending[i] -= 1
                on_result(result)
                give(i)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for a in self._actors:
            with contextlib.suppress(Exception):  # an actor already gone is what we want
                ray.kill(a)
        self._actors = []
        self._payload_ref = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False


def make_executor(
    backend: str, address: str | None = None, workers: int | None = None, threads: int | None = None
) -> Executor:
    """The executor of ``backend``, connected and checked (Ray installed, cluster reachable) before any work.

    Args:
        backend: ``"local"`` or ``"ray"``.
        address: Ray cluster address (``ray`` only).
        workers: Ray workers (``ray`` only; None: all CPUs).
        threads: torch threads per worker.
    """
    if backend not in BACKENDS:
        raise ValidationError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if backend == "local":
        if address is not None:
            raise ValidationError(f"address {address!r} is only used with backend 'ray'")
        if workers not in (None, 1):
            raise ValidationError(f"the local backend runs one worker; got workers={workers} (use backend 'ray')")
        return LocalExecutor(threads)
    ex = RayExecutor(address, workers, threads)
    ex.connect()
    return ex
