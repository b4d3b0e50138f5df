"""``aimc.sweep.run``: validate, check the backend, open the store, skip finished points, run the rest.

Order of work, so that every bad input fails before anything expensive happens: (1) the sweep spec is validated
(unknown keys, types, empty grids, names, the weights file); (2) the data set is found; (3) the backend is checked
(Ray installed, cluster reachable); (4) the store is opened (and refused if it holds another sweep); only then
(5) the network is loaded and compiled (or its cached mapping read) and (6) the pending points run, each stored
the moment it is finished.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aimc.compiler import compile as compile_network
from aimc.errors import ArgumentTypeError
from aimc.sweep.cache import load_mapping, save_mapping
from aimc.sweep.errors import SweepInterruptedError
from aimc.sweep.executors import Executor, make_executor
from aimc.sweep.points import work_units
from aimc.sweep.progress import Progress
from aimc.sweep.spec import SweepSpec, load_spec, parse_spec
from aimc.sweep.store import PointResult, ResultStore
from aimc.sweep.worker import Payload
from aimc.tasks import Task, get_task

#: Output folder of a sweep whose file names none and which is run without ``out``: results/sweeps/<name>.
DEFAULT_OUTPUT_ROOT = Path("results") / "sweeps"


@dataclass(frozen=True)
class SweepResult:
    """What a sweep run did.

    Attributes:
        out: the output folder; store: the SQLite store in it.
        total: points of the sweep; done_before: already stored when the run started; computed: stored by this run.
        elapsed_s: wall time of the run.
        executor: the executor's description.
    """

    out: Path
    store: Path
    total: int
    done_before: int
    computed: int
    elapsed_s: float
    executor: str

    @property
    def complete(self) -> bool:
        """Whether every point of the sweep is stored."""
        return self.done_before + self.computed == self.total


def _as_spec(spec: SweepSpec | str | Path | Mapping[str, Any]) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, str | Path):
        return load_spec(spec)
    if isinstance(spec, Mapping):
        return parse_spec(dict(spec))
    raise ArgumentTypeError(f"spec must be a SweepSpec, a path to a sweep file or a dict; got {type(spec).__name__}")


def check_run_options(workers: int | None, threads: int | None, progress: bool | TextIO) -> TextIO | None:
    """Check a run's ``workers``, ``threads`` and ``progress`` arguments; return the stream progress prints to."""
    from aimc._validation import check_number

    for value, name in ((workers, "workers"), (threads, "threads")):
        if value is not None:
            check_number(value, name, low=1, integer=True)
    if not isinstance(progress, bool) and not hasattr(progress, "write"):
        raise ArgumentTypeError(f"progress must be a bool or a text stream, got {type(progress).__name__}")
    return sys.stderr if progress is True else (progress or None)


@dataclass(frozen=True)
class Plan:
    """What a run found in its store: ``total`` points, the ``pending`` ones as (store key, point) pairs in order,
    and the text of a finished point in the progress line (None: :class:`Progress`'s default)."""

    total: int
    pending: list[tuple[str, Any]]
    describe: Callable[[PointResult], str] | None = None


def run_pending(
    folder: Path,
    context: dict[str, Any],
    *,
    name: str,
    kind: str,
    again: str,
    plan: Callable[[ResultStore], Plan],
    prepare: Callable[[ResultStore, list[tuple[str, Any]]], Any],
    backend: str,
    address: str | None,
    workers: int | None,
    threads: int | None,
    stream: TextIO | None,
    on_result: Callable[[PointResult], None] | None,
    result: type[SweepResult] = SweepResult,
) -> SweepResult:
    """The engine of :func:`run` and :func:`aimc.dse.run`: check the backend, open the store, ``plan`` (record the
    run's metadata, find the pending points), ``prepare`` the payload, run the pending points, each stored as soon as
    it finishes.

    Args:
        folder, context: the output folder and its store's context.
        name: the run's name; kind: what the progress lines call it (``"sweep"``, ``"dse"``); again: what the
            interrupted message says to run again (``"sweep"``, ``"space"``).
        plan: called with the open store; returns the :class:`Plan`.
        prepare: called with the store and the pending points (only if some are); returns the executor's payload.
        backend, address, workers, threads: the executor (:func:`~aimc.sweep.executors.make_executor`).
        stream: where progress prints (None: nowhere).
        on_result: called with every finished point, after it is stored.
        result: the class of the returned result (:class:`SweepResult` or a subclass).

    Raises:
        SweepInterruptedError: Ctrl-C; what finished is stored and a re-run resumes.
    """
    start = time.perf_counter()
    executor: Executor = make_executor(backend, address, workers, threads)
    store: ResultStore | None = None
    prog: Progress | None = None
    try:
        store = ResultStore(folder, context)
        found = plan(store)
        pending = found.pending
        prog = Progress(name, found.total, found.total - len(pending), stream, found.describe, kind=kind)
        if pending:
            prog.header(executor.description or "this process")
            payload = prepare(store, pending)
            executor.start(payload)
            by_point = {p: k for k, p in pending}
            units = [[(by_point[p], p) for p in unit] for unit in work_units([p for _, p in pending], executor.workers)]

            def store_result(result: PointResult) -> None:
                added = store.add(result)  # type: ignore[union-attr]
                prog.update(result, added)  # type: ignore[union-attr]
                if on_result is not None:
                    on_result(result)

            prog.begin()
            executor.run(units, store_result)
        return result(
            out=folder,
            store=store.path,
            total=found.total,
            done_before=found.total - len(pending),
            computed=prog.computed,
            elapsed_s=time.perf_counter() - start,
            executor=executor.description,
        )
    except KeyboardInterrupt:
        done = store.count() if store is not None else 0
        total = prog.total if prog is not None else 0
        raise SweepInterruptedError(
            f"interrupted: {done} of {total} points are stored in {str(folder)!r}; run the same {again} again to "
            "resume",
            done,
            total,
        ) from None
    finally:
        if prog is not None:
            prog.finish()
        executor.close()
        if store is not None:
            store.close()


def output_folder(spec: SweepSpec, out: str | Path | None = None) -> Path:
    """Where a sweep writes: ``out``, else the file's ``output``, else ``results/sweeps/<name>``."""
    if out is not None:
        return Path(out)
    return spec.output if spec.output is not None else DEFAULT_OUTPUT_ROOT / spec.name


def task_info(task: Task) -> dict[str, Any]:
    """What the report needs to know about a task's metric (recorded in the store)."""
    return {
        "network": task.name,
        "metric": task.metric,
        "metric_label": task.metric_label,
        "display_scale": task.display_scale,
        "higher_is_better": task.higher_is_better,
    }


def prepare(spec: SweepSpec, task: Task, store: ResultStore) -> Payload:
    """Load the network and data (``spec.data.samples`` test samples, ``spec.data.calibration_samples`` calibration
    inputs), record the software reference, and compile the mapping (or read it from the store's folder, where it
    is cached for resumed runs)."""
    model = task.load_model(spec.weights_path)
    data = task.load_data(spec.data.samples, spec.data.dir, calibration=spec.data.calibration_samples)
    if store.get_meta("reference") is None:
        store.set_meta("reference", task.software_scores(model, data, spec.data.batch_size))
    context = spec.context()
    mapping = load_mapping(store.folder, context)
    if mapping is None:
        mapping = compile_network(model, calibration=data.x_cal, name=spec.network)
        save_mapping(mapping, store.folder, context)
    return Payload(task=task, mapping=mapping, data=data, batch_size=spec.data.batch_size)


def run(
    spec: SweepSpec | str | Path | Mapping[str, Any],
    *,
    out: str | Path | None = None,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    progress: bool | TextIO = True,
    on_result: Callable[[PointResult], None] | None = None,
) -> SweepResult:
    """Run a sweep: every grid point not yet in the output folder's store, each stored as soon as it finishes.

    Args:
        spec: a :class:`SweepSpec`, a path to a YAML sweep file, or the same structure as a dict.
        out: output folder (default: the file's ``output``, else ``results/sweeps/<name>``).
        backend: ``"local"`` (in this process) or ``"ray"``.
        address: Ray cluster address (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None starts a local cluster.
        workers: Ray workers (default: the cluster's CPUs / ``threads``).
        threads: torch threads per worker (local default: the process's setting; Ray default: 1).
        progress: print a live count to stderr (True), to a given stream, or not (False).
        on_result: called in this process with every finished point, after it is stored.

    Returns:
        A :class:`SweepResult`.

    Raises:
        SweepSpecError, BackendError, StoreError: bad input, found before any work.
        SweepInterruptedError: Ctrl-C; what finished is stored and a re-run resumes.
        WorkerFailedError: a Ray worker died more often than its retries allow.
    """
    spec = _as_spec(spec)
    stream = check_run_options(workers, threads, progress)
    task = get_task(spec.network)
    task.check_data(spec.data.dir)

    def plan(store: ResultStore) -> Plan:
        store.set_meta("spec", spec.to_dict())
        store.set_meta("task", task_info(task))
        points = spec.points()
        store.set_meta("total", len(points))
        keyed = [(spec.key(p), p) for p in points]
        finished = store.finished_keys()
        return Plan(len(points), [(k, p) for k, p in keyed if k not in finished])

    return run_pending(
        output_folder(spec, out),
        spec.context(),
        name=spec.name,
        kind="sweep",
        again="sweep",
        plan=plan,
        prepare=lambda store, pending: prepare(spec, task, store),
        backend=backend,
        address=address,
        workers=workers,
        threads=threads,
        stream=stream,
        on_result=on_result,
    )
