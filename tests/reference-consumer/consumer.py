"""Sends one task to a node as the reference consumer (PyPI iicp-client
0.7.109) does: its own request model, constraint projection, IICP-CX
envelope and HTTP call (`IicpClient` without the discovery step).

Usage: consumer.py SPEC, SPEC a JSON object with `endpoint`, `intent`,
`payload`, and optionally `cx_public_key` (the node's advertised key: the
task goes encrypted) and `consumer_token` (sent as X-IICP-Consumer-Token).
Prints `{"task_id", "answer"}` or `{"error": {"status", "code", "message"}}`.
"""

import asyncio
import json
import sys
import uuid

from iicp_client._confidentiality import decrypt_response, encrypt_payload_with_context
from iicp_client._http import post_json
from iicp_client.errors import IicpError
from iicp_client.request_projection import project_execution_constraints
from iicp_client.types import TaskRequest


async def main(spec):
    request = TaskRequest(intent=spec["intent"], payload=spec["payload"])
    task_id = str(uuid.uuid4())
    body = {
        "task_id": task_id,
        "intent": request.intent,
        "constraints": project_execution_constraints(request),
    }
    secret = None
    key = spec.get("cx_public_key")
    if key:
        body["iicp_conf"], secret = encrypt_payload_with_context(
            request.payload, key, task_id, request.intent
        )
        if "response_encryption_v1" in key.get("features", []):
            body["cx_response_encryption"] = "required"
    else:
        body["payload"] = request.payload
    headers = None
    if spec.get("consumer_token"):
        headers = {"X-IICP-Consumer-Token": spec["consumer_token"]}
    try:
        answer, _ = await post_json(
            f"{spec['endpoint']}/v1/task",
            body,
            timeout_ms=request.constraints.timeout_ms,
            extra_headers=headers,
            pin_provider_endpoint=True,
        )
    except IicpError as error:
        refusal = {"status": error.http_status, "code": error.code, "message": error.message}
        print(json.dumps({"error": refusal}))
        return
    if secret is not None and isinstance(answer.get("iicp_conf_resp"), dict):
        answer = decrypt_response(answer["iicp_conf_resp"], secret, task_id)
    print(json.dumps({"task_id": task_id, "answer": answer}))


asyncio.run(main(json.loads(sys.argv[1])))
