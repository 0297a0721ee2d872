"""The PyPI package's relay worker (iicp_client.relay_worker_client) with an
echo handler: binds to RELAY_HOST:ACCEPT_PORT as WORKER_ID over the native
IICP framing and serves until killed (tests/relay_framed.rs).

Usage: worker.py WORKER_ID RELAY_HOST ACCEPT_PORT
"""

import asyncio
import sys

from iicp_client.relay_worker_client import RelayWorkerClient

CHAT = "urn:iicp:intent:llm:chat:v1"


async def echo(task: dict) -> dict:
    messages = (task.get("payload") or {}).get("messages", [])
    text = next(
        (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return {
        "object": "chat.completion",
        "model": "echo",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


async def main() -> None:
    worker_id, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    await RelayWorkerClient(worker_id, CHAT, host, port, echo, models=["echo"]).run()


asyncio.run(main())
