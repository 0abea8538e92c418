"""Start long-running helper programs for tests, wait for them, and always stop them.

A ``ManagedProcess`` runs a command in its own process group (so forked children such as the
per-connection workers of ``git daemon`` are stopped with it), sends its stdout and stderr to a
log file that failures quote, and stops with SIGTERM then SIGKILL after a grace period. The
``wait_for*`` helpers poll a condition until a deadline instead of sleeping a fixed time, and
give up early, with the log's tail, when the process being waited for has died. Every process
still running when the interpreter exits is stopped by an ``atexit`` hook as a last resort
behind the fixture finalizers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, overload

from tests.support.ports import is_listening

T = TypeVar("T")

DEFAULT_STOP_TIMEOUT = 10.0

_live: set[ManagedProcess] = set()


class ProcessDied(RuntimeError):
    """The process a test waited for exited before the condition came true."""


class WaitTimeout(TimeoutError):
    """A condition did not come true before its deadline."""


class ManagedProcess:
    """One command run in its own process group with its output captured in a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> Self:
        """Start the command; a stopped process may be started again (same argv, same log)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append so a restarted server's earlier output stays available for debugging.
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                # Own session = own process group, so stop() can signal the whole tree and a
                # Ctrl-C in the terminal does not hit the server before its finalizer runs.
                start_new_session=True,
            )
        _live.add(self)
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has exited (negative: killed by that signal)."""
        return None if self._proc is None else self._peek_status()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._peek_status() is None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds; return the status."""
        proc = self._proc
        if proc is None:
            return None
        _live.discard(self)
        if proc.returncode is not None:  # already reaped by an earlier stop()
            return proc.returncode
        if self._peek_status() is None:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._peek_status() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        # The leader is now a zombie (or still alive): its pid, and so the process group id,
        # cannot be reused yet, so killing the group cannot hit an unrelated process. This
        # also takes down children that ignored SIGTERM or outlived the leader.
        self._signal_group(signal.SIGKILL)
        return proc.wait()

    def _peek_status(self) -> int | None:
        """The exit status if the leader has exited, else None, WITHOUT reaping it.

        Only stop() reaps (WNOWAIT here): until then the zombie keeps the pid, and with it
        the process group id, reserved, so stop() can still signal leftover children.
        """
        assert self._proc is not None
        if self._proc.returncode is not None:
            return self._proc.returncode
        try:
            info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back; let Popen say how it ended
            return self._proc.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def log_text(self) -> str:
        """Everything the process wrote so far (all runs of it)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def current_log(self) -> str:
        """What the current (or last) run wrote, without the output of earlier runs."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe(self) -> str:
        """A few lines for error messages: what ran, how it ended, where its log is."""
        state = "running" if self.running else f"exited with {self.returncode}"
        return (
            f"{self.name} ({state}), log {self.log_path}:\n{self.log_tail()}"
            if self._proc is not None
            else f"{self.name} (not started)"
        )

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"<ManagedProcess {self.name} pid={pid} running={self.running}>"


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    name: str | None = None,
) -> ManagedProcess:
    """Start ``argv`` in its own process group with output appended to ``log_path``."""
    return ManagedProcess(argv, log_path=log_path, env=env, cwd=cwd, name=name).start()


@atexit.register
def _stop_leftovers() -> None:
    # Fixture finalizers normally stop everything; this covers an interpreter that exits
    # without running them (internal error, a test calling sys.exit in a session fixture).
    for proc in list(_live):
        proc.stop(timeout=2.0)


def _check_alive(process: ManagedProcess | None, what: str) -> None:
    if process is not None and not process.running:
        raise ProcessDied(f"gave up waiting for {what}: {process.describe()}")


def _timeout_error(what: str, timeout: float, process: ManagedProcess | None) -> WaitTimeout:
    detail = f"\n{process.describe()}" if process is not None else ""
    return WaitTimeout(f"{what} not true after {timeout:.1f}s{detail}")


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.01,
    max_interval: float = 0.2,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    Polls quickly at first and backs off to ``max_interval``; raises ``WaitTimeout`` at the
    deadline and ``ProcessDied`` as soon as ``process`` (the thing being waited for) exits.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = condition()
        if result:
            return result
        _check_alive(process, what)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(what, timeout, process)
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_interval)


@overload
async def async_wait_for(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,  # noqa: ASYNC109 - the deadline (with its diagnostics) is the point
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.01,
    max_interval: float = 0.2,
) -> T: ...


@overload
async def async_wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,  # noqa: ASYNC109
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.01,
    max_interval: float = 0.2,
) -> T: ...


async def async_wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float,  # noqa: ASYNC109
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.01,
    max_interval: float = 0.2,
) -> Any:
    """``wait_for`` for async tests: yields to the event loop between polls.

    Use it when the condition depends on something served by the test's own event loop (an
    aiohttp server receiving registry notifications, say): the blocking ``wait_for`` would
    starve that server. ``condition`` may be a plain function or a coroutine function.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        _check_alive(process, what)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(what, timeout, process)
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, max_interval)


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = 15.0,
    process: ManagedProcess | None = None,
) -> None:
    """Wait until ``host:port`` accepts TCP connections."""
    wait_for(
        lambda: is_listening(host, port),
        timeout=timeout,
        what=f"TCP {host}:{port} accepting connections",
        process=process,
    )


def http_status(
    url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 2.0
) -> int | None:
    """The HTTP status of a GET to ``url``, or None when no HTTP answer came at all."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_for_http(
    url: str,
    *,
    status: int | Collection[int] = 200,
    headers: Mapping[str, str] | None = None,
    timeout: float = 15.0,
    process: ManagedProcess | None = None,
) -> int:
    """Wait until a GET to ``url`` answers with ``status`` (one or any of several); return it."""
    wanted = {status} if isinstance(status, int) else set(status)

    def answered() -> int:
        got = http_status(url, headers=headers)
        return got if got is not None and got in wanted else 0  # 0: not yet

    return wait_for(
        answered,
        timeout=timeout,
        what=f"GET {url} answering {sorted(wanted)}",
        process=process,
    )
