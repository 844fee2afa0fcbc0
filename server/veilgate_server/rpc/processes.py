"""A server run as several processes: one per core, each with its own interpreter and GIL.

One gateway process is bound by its GIL at a little over one core however many threads it has, so a
host runs one process per core. A :class:`ServerProcesses` starts ``count`` copies of one server,
each in a process started with ``spawn`` (never ``fork``: gRPC's threads do not survive it):

* ``veilgate serve --processes N`` starts N gateways that share one port through ``SO_REUSEPORT``;
  the kernel spreads incoming connections over them;
* the benchmark starts N copies of the bare baseline or of the gateway, each on its own ports, and
  its load generator balances calls over them round robin (:func:`balanced_target`), as a load
  balancer in front of a gateway host would.

The processes share nothing but the store, which every gateway already shares with its replicas
(see :class:`~veilgate_server.gateway.Gateway`).

Each process is pinned to a CPU of its own (:func:`cpus_for`), when there are as many CPUs as
processes and the platform allows it (Linux). A process uses about one core of Python anyway, and
pinned, the wake-ups of its threads (gRPC's, the workers', the log writer's), dozens per call, stay
on one CPU: on a 2-vCPU virtual machine an unpinned wake-up was measured to cost far more than
the work it woke (evaluate 712-826 against 884-1,093 QPS pinned; docs/performance.md, item 34).

Each child ignores SIGINT and SIGTERM: the parent decides when they stop. It starts with SIGINT
ignored already (:func:`start_shielded`), so that a Ctrl-C that reaches the process group while
its interpreter is still starting cannot end it with a traceback either. A child answers three
requests on its pipe:

* ``ports``: sent once when it serves: its TLS and mutual-TLS ports;
* ``usage``: its CPU time (user + system, all threads) and voluntary context switches so far, which
  the benchmark sums over the children at the two edges of its measured window;
* ``stop``: stop serving, close what it opened, exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Protocol

from veilgate.errors import ConfigurationError, InternalError, VeilgateError

__all__ = [
    "ServerFactory",
    "ServerProcesses",
    "Started",
    "balanced_target",
    "cpus_for",
    "end_process",
    "pinned_to",
    "start_shielded",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Started:
    """A server running in the child: its ports, and how to stop it."""

    tls_port: int
    mtls_port: int
    stop: Callable[[], None]
    metrics_port: int = 0


class ServerFactory(Protocol):
    """What to serve. Instances are pickled into each child and started there, each with the
    child's ``index`` (0 to count - 1)."""

    def start(self, index: int) -> Started: ...


def balanced_target(ports: tuple[int, ...]) -> str:
    """A gRPC target naming every server's port; the channel balances calls over them round robin."""
    return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)


def end_process(process: BaseProcess, *, wait: float) -> None:
    """Wait up to ``wait`` seconds for ``process`` to exit, then terminate it, then kill it."""
    process.join(wait)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join()


PROCESSES_PER_CPU = 4
"""At most this many server processes per CPU: beyond one per core a process adds no capacity (a
third on two cores gained nothing, docs/performance.md), and thousands of them would exhaust the
host before the first served a call."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def max_processes() -> int:
    """The most server processes :class:`ServerProcesses` starts on this host."""
    return PROCESSES_PER_CPU * usable_cpus()


def process_count_problem(count: int, *, option: str = "--processes") -> str | None:
    """Why ``count`` server processes will not be started, in words for the operator; None when
    they will."""
    if 1 <= count <= max_processes():
        return None
    cpus = usable_cpus()
    return (
        f"{option} must be from 1 to {max_processes()}"
        f" ({PROCESSES_PER_CPU} per CPU; this host gives the gateway {cpus} CPU{'s' if cpus != 1 else ''})"
    )


def cpus_for(count: int) -> tuple[int, ...] | None:
    """The CPU each of ``count`` processes is pinned to: the first ``count`` of the CPUs this process
    may run on. None when they cannot be pinned one to a CPU: fewer CPUs than processes, or a
    platform without CPU affinity (only Linux has it)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return tuple(allowed[:count]) if count <= len(allowed) else None


def _pin_threads(cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of this process (threads started later inherit the
    affinity of the thread that starts them)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cpus)


@contextlib.contextmanager
def pinned_to(cpu: int) -> Iterator[None]:
    """Run this process's threads, and the threads started meanwhile, on ``cpu`` alone; restore the
    CPUs the process had before on the way out. For measuring in process what a pinned server
    process does (the benchmark's log writer)."""
    before = os.sched_getaffinity(0)
    try:
        _pin_threads({cpu})
    except OSError as e:
        _pin_threads(before)
        raise ConfigurationError(f"cannot pin threads to CPU {cpu} ({e.strerror}); run with --no-pin") from None
    try:
        yield
    finally:
        _pin_threads(before)


def _usage() -> tuple[float, int]:
    """This process's CPU seconds (all threads) and voluntary context switches."""
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def start_shielded(process: BaseProcess) -> None:
    """Start a spawned ``process`` with SIGINT ignored, as it inherits an ignored signal.

    A Ctrl-C reaches the whole foreground process group, and a spawned interpreter takes a while
    to import its way to its main function, which is where a child sets what it does with it: one
    arriving before would end it with a KeyboardInterrupt traceback. An interpreter that starts
    with SIGINT ignored leaves it ignored. The parent blocks SIGINT meanwhile, so that one arriving
    during the start is delivered to it afterwards rather than lost. From a thread other than the
    main one (which alone may set handlers) the process is started as it is."""
    if threading.current_thread() is not threading.main_thread():
        process.start()
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _child_main(factory: ServerFactory, index: int, pipe: Connection, log_level: int, cpu: int | None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # A spawned process starts with no logging set up: log as the parent does, naming the process.
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    if cpu is not None:
        try:
            _pin_threads({cpu})  # before the server starts its threads, which inherit it
            _log.info("pinned to CPU %d", cpu)
        except OSError as e:  # a container that forbids it: serve unpinned rather than not at all
            _log.warning("could not pin to CPU %d (%s); serving unpinned", cpu, e.strerror)
    try:
        started = factory.start(index)
    except Exception as e:  # reported as one line; the parent raises it
        message = e.message if isinstance(e, VeilgateError) else f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError):  # unless the parent is gone
            pipe.send(("failed", message))
        pipe.close()
        return
    try:
        pipe.send(("ports", (started.tls_port, started.mtls_port, started.metrics_port)))
        while True:
            request = pipe.recv()
            if request == "usage":
                pipe.send(("usage", _usage()))
            elif request == "stop":
                break
    except (EOFError, OSError):  # the parent is gone (a broken pipe): stop, with nobody to tell
        pass
    finally:
        started.stop()
        pipe.close()


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class ServerProcesses:
    """``count`` copies of a server, each in its own process (see the module docstring)."""

    def __init__(
        self,
        factory: ServerFactory,
        *,
        count: int = 1,
        name: str = "veilgate-server",
        start_timeout: float = 60.0,
        pin: bool = True,
    ) -> None:
        """``pin``: pin each process to a CPU of its own when :func:`cpus_for` finds them
        (:attr:`pinned` says which); False leaves the processes to the scheduler."""
        problem = process_count_problem(count, option="count")
        if problem is not None:
            raise ValueError(problem)
        cpus = cpus_for(count) if pin else None
        self.pinned: tuple[int, ...] | None = cpus
        context = multiprocessing.get_context("spawn")
        self._children: list[tuple[BaseProcess, Connection]] = []
        tls: list[int] = []
        mtls: list[int] = []
        metrics: list[int] = []
        try:
            for n in range(count):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_child_main,
                    args=(
                        factory,
                        n,
                        child_end,
                        logging.getLogger().getEffectiveLevel(),
                        cpus[n] if cpus is not None else None,
                    ),
                    name=f"{name}-{n}",
                    daemon=True,
                )
                start_shielded(process)
                child_end.close()
                self._children.append((process, parent_end))
            for child, pipe in self._children:
                kind, value = self._receive(child, pipe, start_timeout)
                if kind != "ports" or not isinstance(value, tuple):
                    raise InternalError(f"a server process could not start: {value}")
                tls.append(value[0])
                mtls.append(value[1])
                metrics.append(value[2])
        except BaseException:
            self.stop()
            raise
        self.tls_ports = tuple(tls)
        self.mtls_ports = tuple(mtls)
        self.metrics_ports = tuple(metrics)

    @staticmethod
    def _receive(child: BaseProcess, pipe: Connection, timeout: float) -> tuple[str, object]:
        if not pipe.poll(timeout):
            raise InternalError(f"server process {child.name} did not answer in {timeout:.0f} s")
        try:
            kind, value = pipe.recv()
        except EOFError:
            raise InternalError(f"server process {child.name} exited (exit code {child.exitcode})") from None
        return kind, value

    @property
    def count(self) -> int:
        return len(self._children)

    @property
    def pids(self) -> tuple[int, ...]:
        """The server processes' ids, in order (process ``n`` pinned to ``pinned[n]``)."""
        return tuple(child.pid or 0 for child, _ in self._children)

    def exited(self) -> list[str]:
        """The server processes that are no longer running, each as "name (exit code N)" or "name
        (killed by SIGKILL)"."""
        ended = [child for child, _ in self._children if not child.is_alive()]
        return [f"{child.name} ({_how_it_ended(child.exitcode)})" for child in ended]

    @property
    def target(self) -> str:
        return balanced_target(self.tls_ports)

    @property
    def mtls_target(self) -> str:
        return balanced_target(self.mtls_ports)

    def usage_each(self) -> list[tuple[float, int]]:
        """Each server process's CPU seconds and voluntary context switches so far."""
        for _, pipe in self._children:
            pipe.send("usage")
        each: list[tuple[float, int]] = []
        for child, pipe in self._children:
            kind, value = self._receive(child, pipe, 10.0)
            if kind != "usage" or not isinstance(value, tuple):
                raise InternalError(f"server process {child.name} answered {kind!r} to a usage request")
            each.append((float(value[0]), int(value[1])))
        return each

    def usage(self) -> tuple[float, int]:
        """CPU seconds and voluntary context switches, summed over every server process so far."""
        each = self.usage_each()
        return sum(cpu for cpu, _ in each), sum(switches for _, switches in each)

    def stop(self) -> None:
        for _, pipe in self._children:
            with contextlib.suppress(OSError):  # already gone
                pipe.send("stop")
        for child, pipe in self._children:
            end_process(child, wait=30)
            pipe.close()
        self._children = []

    def __enter__(self) -> ServerProcesses:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
