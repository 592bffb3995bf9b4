"""Per-child resource limits, set at spawn and observed by the real child process."""

from __future__ import annotations

import json
import resource

from tests.support.mcp import text_of
from tests.support.types import Gateway


async def test_configured_limits_reach_the_child(gateway: Gateway) -> None:
    mcp = await gateway(
        child_rlimit_as_mb=2048, child_rlimit_cpu_seconds=600, child_rlimit_nofile=64, child_rlimit_nproc=4096
    )
    await mcp.initialize()
    limits = json.loads(text_of(await mcp.call_tool("rlimits")))
    assert limits == {
        "RLIMIT_AS": 2048 * 1024 * 1024,
        "RLIMIT_CPU": 600,
        "RLIMIT_NOFILE": 64,
        "RLIMIT_NPROC": 4096,
    }


async def test_without_configuration_the_child_inherits_the_gateways_limits(gateway: Gateway) -> None:
    mcp = await gateway()
    await mcp.initialize()
    limits = json.loads(text_of(await mcp.call_tool("rlimits")))
    assert limits["RLIMIT_NOFILE"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert limits["RLIMIT_CPU"] == resource.getrlimit(resource.RLIMIT_CPU)[0]


async def test_a_child_over_its_cpu_limit_is_stopped_and_the_call_fails(gateway: Gateway) -> None:
    mcp = await gateway(child_rlimit_cpu_seconds=1)
    await mcp.initialize()
    answer = await mcp.call_tool("burn")
    message = answer["error"]["message"]
    assert answer["error"]["code"] == -32000
    assert "killed by SIGXCPU" in message or "killed by SIGKILL" in message
    status, _ = await mcp.post({"jsonrpc": "2.0", "id": 99, "method": "ping"})
    assert status == 404  # the session ended with its child
