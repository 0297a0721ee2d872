"""{{name}}: an iicp-host plugin in Python. Build it with ./build.sh."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import Capability, Descriptor, ErrorKind, Task, TaskError, TaskOutput

INTENT = "urn:iicp:intent:example:{{name}}:v1"


def answer(payload: str) -> TaskOutput:
    """The task's work, apart from host calls (see the warm-up below)."""
    if not isinstance(json.loads(payload), dict):
        # Raising Err(TaskError) fails the task with a typed error (422 here).
        message = "payload must be a JSON object"
        raise Err(TaskError(kind=ErrorKind.INVALID_INPUT, message=message, retryable=False))
    return TaskOutput(result_json=payload, usage=None, model_used=None)


class Handler(exports.Handler):
    def describe(self) -> Descriptor:
        capability = Capability(intent=INTENT, models=[], max_tokens=None, input_modalities=[])
        return Descriptor(name="{{name}}", version="0.1.0", capabilities=[capability])

    def handle(self, task: Task) -> TaskOutput:
        log.log(log.Level.DEBUG, f"handling task {task.task_id}")
        return answer(task.payload)


# Warm snapshot: the build imports this module and snapshots the interpreter,
# so a task run here (made up, calling no host import: those cannot be called
# at build time) leaves what a first call builds in the snapshot, and every
# fresh instance starts warm.
answer('{"warm-up": true}')
