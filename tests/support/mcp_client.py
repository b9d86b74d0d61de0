#!/usr/bin/env python3
"""A real MCP client for netsky's end-to-end tests: the official `mcp` SDK's
stdio client (2.x), started the way Claude Code starts a channel server
(`initialize` first: mode="legacy").

    mcp_client.py NETSKY HOME AGENT [extra serve args...]

It launches `NETSKY --home HOME mcp serve AGENT ...` and speaks JSON lines:
commands on its stdin, events on its stdout.

commands: {"op": "list_tools"} | {"op": "call", "name": ..., "arguments": {...}} | {"op": "close"}
events:   {"event": "ready", "capabilities": {...}}
          {"event": "tools", "tools": [{"name", "input_schema"}]}
          {"event": "result", "is_error": bool, "text": str}
          {"event": "channel", "content": str, "meta": {...}}      (a pushed notification)
          {"event": "error", "error": str}

Custom notifications reach an SDK client only through a NotificationBinding
for their method, which a ClientExtension contributes.
"""

import json
import sys

import anyio
from pydantic import BaseModel, ConfigDict

from mcp import StdioServerParameters
from mcp.client import Client, ClientExtension, NotificationBinding


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class ChannelParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    content: str
    meta: dict[str, str] = {}


async def on_channel(p: ChannelParams) -> None:
    emit({"event": "channel", "content": p.content, "meta": p.meta})


class ClaudeChannel(ClientExtension):
    """What Claude Code listens for: the channel notifications."""

    identifier = "dev.netsky/claude-channel-test"

    def notifications(self):
        return [NotificationBinding(method="notifications/claude/channel", params_type=ChannelParams, handler=on_channel)]


async def main() -> None:
    netsky, home, agent, *extra = sys.argv[1:]
    params = StdioServerParameters(
        command=netsky,
        args=["--home", home, "mcp", "serve", agent, *extra],
        env={"PATH": "/usr/bin:/bin", "NETSKY_HOME": home},
    )
    async with Client(params, mode="legacy", extensions=[ClaudeChannel()], read_timeout_seconds=30) as c:
        caps = c.server_capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
        emit({"event": "ready", "capabilities": caps})
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            op = cmd.get("op")
            try:
                if op == "list_tools":
                    r = await c.list_tools()
                    emit({"event": "tools", "tools": [{"name": t.name, "input_schema": t.input_schema} for t in r.tools]})
                elif op == "call":
                    r = await c.call_tool(cmd["name"], cmd.get("arguments") or {})
                    text = "".join(getattr(b, "text", "") for b in r.content)
                    emit({"event": "result", "is_error": bool(r.is_error), "text": text})
                elif op == "close":
                    return
                else:
                    emit({"event": "error", "error": f"unknown op {op!r}"})
            except Exception as e:  # the test reads what went wrong
                emit({"event": "error", "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    anyio.run(main)
