"""Echo plugin in Python, a twin of the Rust `echo` plugin (plugins/echo).

* `urn:iicp:intent:llm:chat:v1`: answers in the OpenAI chat-completion shape
  with the last user message as the assistant's reply, and counts
  whitespace-separated words as tokens.
* `urn:iicp:intent:util:echo:v1`: returns the payload unchanged.
* config value `also_declare` (intents, comma-separated): declared too, and
  answered like the echo intent.

The payload is read with the rules the Rust plugin gets from serde, so both
accept and refuse the same payloads:

* a struct may be a JSON object or a JSON array of its fields in order;
* unknown keys are ignored, a known key given twice is an error;
* `null` is accepted only where the field is optional;
* the keys of the request and of each message, `role`, and everything inside
  `content` must be valid Unicode (no lone `\\udXXX` surrogate escape), and
  numbers inside `content` must fit an f64.

Build: `./build.sh` (componentize-py; see that file).
"""

import gc
import json
import math

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import config
from wit_world.imports.types import (
    Capability,
    Constraints,
    Descriptor,
    ErrorKind,
    Qos,
    Task,
    TaskError,
    TaskOutput,
    TraceContext,
    Usage,
)

NAME = "python-echo"
VERSION = "0.1.0"
CHAT_INTENT = "urn:iicp:intent:llm:chat:v1"
ECHO_INTENT = "urn:iicp:intent:util:echo:v1"
MODEL = "echo"
U32_MAX = 0xFFFF_FFFF

# Python's str.split() also splits on U+001C..U+001F, which are not Unicode
# White_Space (what Rust's split_whitespace uses): turn them into a
# non-space character first. Every other separator is the same in both.
_NOT_WHITESPACE = {c: "\x00" for c in range(0x1C, 0x20)}


def word_count(text: str) -> int:
    return min(len(text.translate(_NOT_WHITESPACE).split()), U32_MAX)


class Invalid(Exception):
    """The payload is not a chat request."""


class _Object(list):
    """A JSON object as its (key, value) pairs, repeated keys kept."""

    __slots__ = ()


def _parse(text: str):
    # Integers become floats: no value is used as an integer, and Python's
    # int parser refuses literals over 4300 digits that serde skips over.
    return json.loads(text, object_pairs_hook=_Object, parse_int=float)


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, _Object):
        return "a map"
    return "a sequence"


def _unicode(text: str) -> str:
    """`text`, unless it holds a lone surrogate (serde refuses those)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid("lone surrogate in a string") from None
    return text


def _struct(value, what: str, fields: tuple, required: frozenset, keys: bool) -> dict:
    """The fields of a struct given as an object or an array, as serde reads a
    derived struct; missing optional fields are left out. `keys`: check every
    key of an object (serde decodes them to match field names)."""
    if isinstance(value, _Object):
        found = {}
        for key, item in value:
            if keys:
                _unicode(key)
            if key in fields:
                if key in found:
                    raise Invalid(f"duplicate field `{key}`")
                found[key] = item
        for key in fields:
            if key in required and key not in found:
                raise Invalid(f"missing field `{key}`")
        return found
    if isinstance(value, list):
        if len(value) > len(fields):
            raise Invalid(f"trailing elements in {what}")
        found = {}
        for index, key in enumerate(fields):
            if index < len(value):
                found[key] = value[index]
            elif key in required:
                raise Invalid(f"invalid length {index}, expected {what}")
        return found
    raise Invalid(f"invalid type: {_type_name(value)}, expected {what}")


def _string(value) -> str:
    if not isinstance(value, str):
        raise Invalid(f"invalid type: {_type_name(value)}, expected a string")
    return _unicode(value)


def _buffered(value) -> None:
    """serde buffers an untagged enum's input before it tries the variants,
    decoding every string and number in it: refuse what it refuses."""
    if isinstance(value, str):
        _unicode(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid("number out of range")
    elif isinstance(value, _Object):
        for key, item in value:
            _unicode(key)
            _buffered(item)
    elif isinstance(value, list):
        for item in value:
            _buffered(item)


def _content_text(content) -> str:
    """OpenAI content: a string, or a list of typed parts of which we keep text."""
    if content is None:
        return ""
    _buffered(content)
    if isinstance(content, str):
        return content
    if isinstance(content, list) and not isinstance(content, _Object):
        try:
            texts = []
            for part in content:
                fields = _struct(part, "struct Part", ("text",), frozenset(), False)
                text = fields.get("text")
                if text is not None:
                    texts.append(_string(text))
            return "\n".join(texts)
        except Invalid:
            pass
    raise Invalid("data did not match any variant of untagged enum Content")


def _message_texts(payload: str) -> list:
    """(is_user, text) for each message of a chat payload."""
    try:
        request = _parse(payload)
    except (ValueError, RecursionError) as error:
        raise Invalid(str(error)) from None
    fields = _struct(request, "struct ChatRequest", ("messages",), frozenset(), True)
    messages = fields.get("messages", [])
    if isinstance(messages, _Object) or not isinstance(messages, list):
        raise Invalid(f"invalid type: {_type_name(messages)}, expected a sequence")
    texts = []
    for message in messages:
        m = _struct(
            message, "struct Message", ("role", "content"), frozenset({"role"}), True
        )
        role = _string(m["role"])
        texts.append((role == "user", _content_text(m.get("content"))))
    return texts


def _invalid(message: str) -> Err:
    return Err(TaskError(kind=ErrorKind.INVALID_INPUT, message=message, retryable=False))


def chat(payload: str) -> TaskOutput:
    try:
        texts = _message_texts(payload)
    except Invalid as error:
        raise _invalid(f"payload is not a chat request: {error}") from None
    last_user = next((i for i in reversed(range(len(texts))) if texts[i][0]), None)
    if last_user is None:
        raise _invalid("payload.messages has no user message")
    # Count each message once: the reply is one of them.
    counts = [word_count(text) for _, text in texts]
    reply = texts[last_user][1]
    prompt_tokens = min(sum(counts), U32_MAX)
    completion_tokens = counts[last_user]
    total_tokens = min(prompt_tokens + completion_tokens, U32_MAX)
    completion = {
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": total_tokens,
        },
    }
    return TaskOutput(
        result_json=json.dumps(completion, ensure_ascii=False, separators=(",", ":")),
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=total_tokens,
        ),
        model_used=MODEL,
    )


def _also_declared() -> list:
    """The intents config value `also_declare` names."""
    value = config.get("also_declare") or ""
    return [intent.strip() for intent in value.split(",") if intent.strip()]


def _handle(task: Task) -> TaskOutput:
    if task.intent == CHAT_INTENT:
        return chat(task.payload)
    if task.intent == ECHO_INTENT or task.intent in _also_declared():
        return TaskOutput(result_json=task.payload, usage=None, model_used=None)
    raise Err(
        TaskError(
            kind=ErrorKind.UNSUPPORTED_INTENT,
            message=f"{NAME} does not serve {task.intent}",
            retryable=False,
        )
    )


def _capability(intent: str) -> Capability:
    return Capability(
        intent=intent, models=[MODEL], max_tokens=8192, input_modalities=["text"]
    )


class Handler(exports.Handler):
    def describe(self) -> Descriptor:
        return Descriptor(
            name=NAME,
            version=VERSION,
            capabilities=[_capability(CHAT_INTENT), _capability(ECHO_INTENT)]
            + [_capability(intent) for intent in _also_declared()],
        )

    def handle(self, task: Task) -> TaskOutput:
        try:
            return _handle(task)
        except Err:
            raise
        except Exception as error:  # a bug here: report it rather than trap
            raise Err(
                TaskError(
                    kind=ErrorKind.INTERNAL,
                    message=f"{NAME} failed: {type(error).__name__}",
                    retryable=False,
                )
            ) from None


# Warm snapshot: componentize-py snapshots the interpreter after importing this
# module, so running both task paths once here puts what their first call
# builds (the JSON decoder and encoder, the regexes and caches json uses, the
# code objects' inline caches) into the snapshot instead of into every fresh
# instance. Only a made-up task: nothing a consumer sent is in the snapshot.
# It goes through the exported `handle`, as the runtime calls it: host imports
# (log, config) cannot be called at build time, and `handle` calls none for
# these two intents. That is also why `handle` does not log each task (the
# Rust and JS echoes do not either): a log call would keep `handle` and the
# import's glue out of the warm-up, cold in every fresh instance.
_WARM_UP_PAYLOAD = (
    '{"messages":[{"role":"system","content":"Be brief."},'
    '{"role":"user","content":[{"type":"text","text":"Hello, warm snapshot"}]},'
    '{"role":"user","content":"Hello again"}],"model":"echo","max_tokens":16}'
)


def _warm_up() -> None:
    handler = Handler()
    tasks = [(CHAT_INTENT, _WARM_UP_PAYLOAD), (ECHO_INTENT, _WARM_UP_PAYLOAD)]
    # And the refusal path: a chat payload without a user message.
    tasks.append((CHAT_INTENT, "[]"))
    for intent, payload in tasks:
        # Built as the runtime lifts a task (the enum from its value), and
        # answered through the exported method and the `Ok` the runtime wraps
        # an answer in, so the code objects of that path are warm as well.
        task = Task(
            task_id="warm-up",
            intent=intent,
            payload=payload,
            constraints=Constraints(
                timeout_ms=1000,
                max_tokens=None,
                model=None,
                qos=Qos(Qos.INTERACTIVE.value),
            ),
            trace=TraceContext(traceparent="", tracestate=None),
            deadline_unix_ms=0,
        )
        try:
            Ok(handler.handle(task))
        except Err:
            pass


# Eight times, not once: CPython specialises an instruction on a later run
# than its first, so after one warm-up every fresh instance would specialise
# (and write into) the handler's code objects on its own first call again.
for _ in range(8):
    _warm_up()

# The warm-up's garbage collected now, and every object the snapshot holds
# moved out of the collector's generations: a collection during a task then
# never walks (and writes to) the snapshot's objects.
gc.collect()
gc.freeze()
