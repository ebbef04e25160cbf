"""Drives airlock's MCP server with the official `mcp` Python client (from PyPI).

Usage:
  mcp_client.py stdio AIRLOCK_BINARY DATA_DIR
  mcp_client.py http URL [API_KEY]
  mcp_client.py http-quick URL [API_KEY]   (one run_python_code call only)

Exits 0 and prints "ok" when every check passes; any failed check raises.
"""

import asyncio
import base64
import json
import sys

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

EXPECTED_SUCCESS = "<status>success</status>\n<output>\nx=4\n</output>\n<return_value>\n4\n</return_value>"


def field(obj, snake, camel):
    """A field under its mcp 2.x (snake_case) or 1.x (camelCase) name."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel)


def is_error(result):
    return bool(field(result, "is_error", "isError"))


def text_of(result, i=0):
    item = result.content[i]
    assert isinstance(item, types.TextContent), f"content {i} is {type(item).__name__}: {result}"
    return item.text


async def quick(session: ClientSession) -> None:
    await session.initialize()
    r = await session.call_tool("run_python_code", {"python_code": "x = 4\nprint(f'{x=}')\nx"})
    assert text_of(r) == EXPECTED_SUCCESS, repr(text_of(r))


async def exercise(session: ClientSession) -> None:
    await session.initialize()

    tools = {t.name: t for t in (await session.list_tools()).tools}
    for name in ("run_python_code", "create_sandbox", "run_code", "write_file", "read_file", "list_files", "destroy_sandbox"):
        assert name in tools, f"tool {name} missing: {sorted(tools)}"
    schema = field(tools["run_python_code"], "input_schema", "inputSchema")
    assert schema["properties"]["python_code"]["type"] == "string", schema
    assert schema["required"] == ["python_code"], schema
    assert "description" in schema["properties"]["python_code"], "argument docs must reach the model"
    assert tools["run_python_code"].description

    # The mcp-run-python shape, exactly.
    r = await session.call_tool("run_python_code", {"python_code": "x = 4\nprint(f'{x=}')\nx"})
    assert not is_error(r)
    assert text_of(r) == EXPECTED_SUCCESS, repr(text_of(r))

    r = await session.call_tool("run_python_code", {"python_code": "print(unknown)"})
    t = text_of(r)
    assert t.startswith("<status>run-error</status>\n<error>\nTraceback"), t
    assert "NameError: name 'unknown' is not defined" in t, t
    assert "driver" not in t, "airlock's own frames leaked into the traceback: " + t

    r = await session.call_tool(
        "run_python_code", {"python_code": "a + b", "global_variables": {"a": 40, "b": 2}}
    )
    assert text_of(r) == "<status>success</status>\n<return_value>\n42\n</return_value>", text_of(r)

    # A figure comes back as image content after the text.
    r = await session.call_tool(
        "run_python_code",
        {"python_code": "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"},
    )
    if "ModuleNotFoundError" in text_of(r):
        print("skipped: image content: matplotlib is not installed for the sandbox's python", file=sys.stderr)
    else:
        images = [c for c in r.content if isinstance(c, types.ImageContent)]
        assert images, f"no image content: {r.content}"
        assert field(images[0], "mime_type", "mimeType") == "image/png"
        assert base64.b64decode(images[0].data).startswith(b"\x89PNG")

    # A session: state and files persist between calls.
    r = await session.call_tool("create_sandbox", {})
    assert not is_error(r), r
    sid = json.loads(text_of(r))["sandbox_id"]
    r = await session.call_tool("run_code", {"sandbox_id": sid, "code": "x = 41"})
    assert text_of(r) == "<status>success</status>", text_of(r)
    r = await session.call_tool("run_code", {"sandbox_id": sid, "code": "x + 1"})
    assert text_of(r) == "<status>success</status>\n<return_value>\n42\n</return_value>", text_of(r)

    r = await session.call_tool("write_file", {"sandbox_id": sid, "path": "in/data.txt", "content": "hello"})
    assert not is_error(r), r
    r = await session.call_tool(
        "run_code",
        {"sandbox_id": sid, "code": "t = open('in/data.txt').read()\nopen('out.txt', 'w').write(t.upper())\nt"},
    )
    assert '"hello"' in text_of(r), text_of(r)
    r = await session.call_tool("read_file", {"sandbox_id": sid, "path": "out.txt"})
    assert text_of(r) == "HELLO", text_of(r)
    r = await session.call_tool("list_files", {"sandbox_id": sid})
    assert "out.txt" in text_of(r) and "in/data.txt" in text_of(r), text_of(r)
    r = await session.call_tool("read_file", {"sandbox_id": sid, "path": "../../etc/passwd"})
    assert is_error(r) and "workspace" in text_of(r), r

    r = await session.call_tool("run_code", {"sandbox_id": sid, "code": "echo hi from bash", "language": "bash"})
    assert "hi from bash" in text_of(r), text_of(r)

    r = await session.call_tool("destroy_sandbox", {"sandbox_id": sid})
    assert not is_error(r), r
    r = await session.call_tool("run_code", {"sandbox_id": sid, "code": "x"})
    assert is_error(r) and "not_found" in text_of(r), r


async def main() -> None:
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(
            command=sys.argv[2], args=["mcp", "--data-dir", sys.argv[3], "--backend", "process"]
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await exercise(session)
    elif mode in ("http", "http-quick"):
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        headers = {"Authorization": f"Bearer {sys.argv[3]}"} if len(sys.argv) > 3 else None
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(sys.argv[2], http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await (quick(session) if mode == "http-quick" else exercise(session))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
