from __future__ import annotations

from tests.support.mcp import Mcp, text_of


async def test_echo_round_trip(gateway) -> None:  # type: ignore[no-untyped-def]
    mcp: Mcp = await gateway()
    await mcp.initialize()
    assert text_of(await mcp.call_tool("echo", text="hi")) == "hi"
    assert await mcp.delete() == 204
