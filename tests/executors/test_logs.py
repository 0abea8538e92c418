"""LogStore: per-build log files, tails, and followers woken by writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from triggerd.errors import NotFound
from triggerd.logs import LogStore, snippet


async def collect(store: LogStore, namespace: str, name: str) -> list[bytes]:
    return [chunk async for chunk in store.follow(namespace, name)]


def test_write_read_and_tail(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    with store.open_writer("ns", "b-1") as writer:
        for i in range(5):
            writer.line(f"line {i}")
        writer.write(b"raw\n")
    assert (tmp_path / "ns" / "b-1.log").read_bytes().startswith(b"line 0\n")
    assert store.exists("ns", "b-1")
    assert store.read("ns", "b-1") == b"line 0\nline 1\nline 2\nline 3\nline 4\nraw\n"
    assert store.read("ns", "b-1", tail_lines=2) == b"line 4\nraw\n"
    assert store.read("ns", "b-1", tail_lines=100) == store.read("ns", "b-1")
    assert store.read("ns", "b-1", tail_lines=0) == b""


def test_tail_without_final_newline_and_across_blocks(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    with store.open_writer("ns", "b") as writer:
        writer.write(b"x" * 200_000 + b"\n" + b"y" * 70_000 + b"\nlast")
    assert store.read("ns", "b", tail_lines=1) == b"last"
    assert store.read("ns", "b", tail_lines=2) == b"y" * 70_000 + b"\nlast"


def test_missing_logs_and_bad_names(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    with pytest.raises(NotFound):
        store.read("ns", "nope")
    assert not store.exists("ns", "nope")
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            store.path("ns", bad)


def test_closing_twice_and_writing_after_close(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    writer = store.open_writer("ns", "b")
    writer.line("one")
    writer.close()
    writer.close()
    writer.line("ignored")
    assert store.read("ns", "b") == b"one\n"
    assert not store.is_live("ns", "b")


async def test_follower_gets_history_then_new_lines_until_closed(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    writer = store.open_writer("ns", "b")
    writer.line("before")
    received: list[bytes] = []
    got_chunk = asyncio.Event()

    async def follow() -> None:
        async for chunk in store.follow("ns", "b"):
            received.append(chunk)
            got_chunk.set()

    task = asyncio.create_task(follow())
    await asyncio.wait_for(got_chunk.wait(), 2)
    assert received == [b"before\n"]
    for i in range(3):
        got_chunk.clear()
        writer.line(f"live {i}")
        # Woken by the write itself: no polling interval to wait out.
        await asyncio.wait_for(got_chunk.wait(), 0.5)
    assert not task.done()
    writer.close()
    await asyncio.wait_for(task, 2)
    assert b"".join(received) == b"before\nlive 0\nlive 1\nlive 2\n"


async def test_follower_of_a_finished_log_gets_all_and_ends(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    with store.open_writer("ns", "b") as writer:
        writer.line("all")
        writer.line("done")
    assert await asyncio.wait_for(collect(store, "ns", "b"), 2) == [b"all\ndone\n"]
    # A fresh store (after a restart) knows of no writer: the file is complete.
    assert await asyncio.wait_for(collect(LogStore(tmp_path), "ns", "b"), 2) == [b"all\ndone\n"]


async def test_many_followers_and_data_written_right_before_close(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    writer = store.open_writer("ns", "b")
    tasks = [asyncio.create_task(collect(store, "ns", "b")) for _ in range(5)]
    await asyncio.sleep(0)
    writer.line("a")
    writer.line("b")
    writer.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert all(b"".join(r) == b"a\nb\n" for r in results)


async def test_delete_releases_followers(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    writer = store.open_writer("ns", "b")
    writer.line("x")
    task = asyncio.create_task(collect(store, "ns", "b"))
    await asyncio.sleep(0.05)
    store.delete("ns", "b")
    assert await asyncio.wait_for(task, 2) == [b"x\n"]
    assert not store.exists("ns", "b")
    writer.close()
    store.delete("ns", "b")  # deleting again is fine
    with pytest.raises(NotFound):
        await collect(store, "ns", "b")


def test_snippet_keeps_the_last_non_empty_lines() -> None:
    data = b"".join(f"l{i}\n\n   \n".encode() for i in range(20))
    assert snippet(data) == "\n".join(f"l{i}" for i in range(10, 20))
    assert snippet(b"") == ""
