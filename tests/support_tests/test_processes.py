"""Tests of tests/support/processes.py and ports.py: start, wait, stop and clean up.

They use only ``sh``, ``sleep`` and Python's own HTTP server, so they prove the process
handling independently of the registry and git helpers built on it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from tests.support.ports import LOOPBACK, free_port, is_listening
from tests.support.processes import (
    ManagedProcess,
    ProcessDied,
    WaitTimeout,
    async_wait_for,
    start_process,
    wait_for,
    wait_for_http,
    wait_for_port,
)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # Field 3, after the parenthesised command name, is the state letter.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_free_port_is_unused_and_never_repeated() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert not any(is_listening(LOOPBACK, p) for p in ports)


def test_http_server_is_waited_for_and_stopped(tmp_path: Path) -> None:
    port = free_port()
    proc = start_process(
        [sys.executable, "-m", "http.server", "--bind", LOOPBACK, str(port)],
        log_path=tmp_path / "http.log",
        cwd=tmp_path,
    )
    try:
        wait_for_port(LOOPBACK, port, timeout=10, process=proc)
        assert wait_for_http(f"http://{LOOPBACK}:{port}/", timeout=10, process=proc) == 200
        assert proc.running
    finally:
        status = proc.stop()
    assert status == -15  # ended by our SIGTERM
    assert not is_listening(LOOPBACK, port)
    assert "GET / HTTP" in proc.log_text()  # the server's stderr was captured


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = start_process(
        ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"],
        log_path=tmp_path / "sh.log",
    )

    def written_pid() -> str | None:
        return pidfile.read_text().strip() if pidfile.exists() else None

    child = int(wait_for(written_pid, timeout=5, what="child pid written", process=proc))
    assert _alive(child)
    proc.stop()
    wait_for(lambda: not _alive(child), timeout=5, what="grandchild gone")


def test_sigterm_ignored_leads_to_sigkill(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = start_process(
        ["sh", "-c", f"trap '' TERM; touch {ready}; sleep 300"], log_path=tmp_path / "x.log"
    )
    wait_for(ready.exists, timeout=5, what="trap installed", process=proc)
    started = time.monotonic()
    assert proc.stop(timeout=0.3) == -9
    assert time.monotonic() - started < 5


def test_wait_gives_up_when_the_process_dies(tmp_path: Path) -> None:
    proc = start_process(["sh", "-c", "echo boom >&2; exit 3"], log_path=tmp_path / "d.log")
    started = time.monotonic()
    with pytest.raises(ProcessDied, match="boom") as info:
        wait_for(lambda: False, timeout=30, what="never", process=proc)
    assert "exited with 3" in str(info.value)
    assert time.monotonic() - started < 5  # did not wait for the 30 s deadline
    proc.stop()


def test_wait_times_out_with_a_description() -> None:
    with pytest.raises(WaitTimeout, match="the moon turning blue"):
        wait_for(lambda: None, timeout=0.2, what="the moon turning blue")


def test_wait_returns_the_truthy_value() -> None:
    calls: list[int] = []

    def third_time() -> str:
        calls.append(1)
        return "ok" if len(calls) >= 3 else ""

    assert wait_for(third_time, timeout=5, what="third call") == "ok"


async def test_async_wait_lets_the_event_loop_run() -> None:
    seen: list[str] = []

    async def producer() -> None:
        await asyncio.sleep(0.05)
        seen.append("event")

    task = asyncio.create_task(producer())
    assert await async_wait_for(lambda: seen, timeout=5, what="event") == ["event"]
    await task

    async def coroutine_condition() -> int:
        return len(seen)

    assert await async_wait_for(coroutine_condition, timeout=5, what="count") == 1


def test_context_manager_and_restart(tmp_path: Path) -> None:
    with ManagedProcess(["sleep", "300"], log_path=tmp_path / "s.log") as proc:
        first = proc.pid
        assert proc.running
    assert not proc.running
    proc.start()
    try:
        assert proc.pid != first
    finally:
        proc.stop()
    assert proc.log_text().count("--- start: sleep 300") == 2
