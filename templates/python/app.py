"""{{name}}: an iicp-host plugin in Python. Build it with ./build.sh."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import Capability, Descriptor, ErrorKind, Task, TaskError, TaskOutput

INTENT = "urn:iicp:intent:example:{{name}}:v1"


class Handler(exports.Handler):
    def describe(self) -> Descriptor:
        capability = Capability(intent=INTENT, models=[], max_tokens=None, input_modalities=[])
        return Descriptor(name="{{name}}", version="0.1.0", capabilities=[capability])

    def handle(self, task: Task) -> TaskOutput:
        log.log(log.Level.DEBUG, f"handling task {task.task_id}")
        if not isinstance(json.loads(task.payload), dict):
            # Raising Err(TaskError) fails the task with a typed error (422 here).
            message = "payload must be a JSON object"
            raise Err(TaskError(kind=ErrorKind.INVALID_INPUT, message=message, retryable=False))
        return TaskOutput(result_json=task.payload, usage=None, model_used=None)
