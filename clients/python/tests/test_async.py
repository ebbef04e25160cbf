"""The asyncio twin: AsyncSandbox, AsyncClient, arun."""

from __future__ import annotations

import asyncio

import pytest

import airlock
from airlock import AsyncSandbox


async def test_arun(server):
    ex = await airlock.arun("print('a')\n6 * 7", url=server.url)
    assert ex.text == "42" and ex.stdout == "a\n"


async def test_async_session_with_async_and_plain_callbacks(server):
    events = []

    async def on_stdout(text):
        await asyncio.sleep(0)
        events.append(("stdout", text))

    async with await AsyncSandbox.create(url=server.url) as sbx:
        await sbx.run_code("x = 20")
        ex = await sbx.run_code(
            "import sys\nprint('out')\nprint('err', file=sys.stderr)\nx + 22",
            on_stdout=on_stdout,
            on_stderr=lambda t: events.append(("stderr", t)),
            on_result=lambda r: events.append(("result", r.text)),
        )
        assert ex.text == "42" and ex.execution_count == 2
        assert events == [("stdout", "out\n"), ("stderr", "err\n"), ("result", "42")]
        await sbx.files.write("d/f.txt", "async file")
        assert await sbx.files.read("d/f.txt") == "async file"
        assert [f.path for f in await sbx.files.list("d")] == ["d/f.txt"]
        assert await sbx.files.exists("d/f.txt")
        await sbx.files.remove("d/f.txt")
        assert not await sbx.files.exists("d/f.txt")
        with pytest.raises(airlock.FileNotFound):
            await sbx.files.read("d/f.txt")
        sid = sbx.id
        assert sid in [s.id for s in await AsyncSandbox.list(url=server.url)]
    assert sid not in [s.id for s in await AsyncSandbox.list(url=server.url)]
    with pytest.raises(airlock.SandboxNotFound):
        await AsyncSandbox.connect(sid, url=server.url)


async def test_concurrent_cells_in_one_sandbox_get_busy(server):
    async with airlock.AsyncClient(server.url) as c:
        sbx = await c.create_sandbox()
        try:
            results = await asyncio.gather(
                sbx.run_code("import time\ntime.sleep(1)\n'first'"),
                _after(0.4, sbx.run_code("'second'")),
                return_exceptions=True,
            )
            assert results[0].text == "'first'"
            assert isinstance(results[1], airlock.SandboxBusy), results[1]
        finally:
            await sbx.kill()


async def test_many_sandboxes_in_parallel(server):
    async with airlock.AsyncClient(server.url) as c:
        boxes = await asyncio.gather(*(c.create_sandbox() for _ in range(3)))
        try:
            outs = await asyncio.gather(*(b.run_code(f"{i} * 10") for i, b in enumerate(boxes)))
            assert [o.text for o in outs] == ["0", "10", "20"]
            same = await c.connect(boxes[0].id)
            assert (await same.run_code("'still here'")).text == "'still here'"
        finally:
            await asyncio.gather(*(b.kill() for b in boxes))


async def test_async_errors(server):
    async with airlock.AsyncClient(server.url) as c:
        with pytest.raises(airlock.InvalidRequest, match="memory_bytes"):
            await c.create_sandbox(limits={"memory_bytes": 1})
        ex = await c.run("raise ValueError('bad')")
        assert ex.status == "error" and ex.error.name == "ValueError" and ex.error.value == "bad"
        rec = await c.get_execution(ex.id)
        assert rec["status"] == "error"


async def _after(delay, coro):
    await asyncio.sleep(delay)
    return await coro
