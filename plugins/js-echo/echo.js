// Echo plugin in JavaScript, a twin of the Rust `echo` plugin (plugins/echo).
//
// * `urn:iicp:intent:llm:chat:v1`: answers in the OpenAI chat-completion
//   shape with the last user message as the assistant's reply, and counts
//   whitespace-separated words as tokens.
// * `urn:iicp:intent:util:echo:v1`: returns the payload unchanged.
// * config value `also_declare` (intents, comma-separated): declared too, and
//   answered like the echo intent.
//
// The payload is read with the rules the Rust plugin gets from serde, so both
// accept and refuse the same payloads:
// * a struct may be a JSON object or a JSON array of its fields in order;
// * unknown keys are ignored, a known key given twice is an error (hence the
//   small parser below: JSON.parse keeps only the last of repeated keys);
// * `null` is accepted only where the field is optional;
// * the keys of the request and of each message, `role`, and everything
//   inside `content` must be valid Unicode (no lone `\udXXX` surrogate
//   escape), and numbers inside `content` must fit an f64.
//
// Build: `./build.sh` (componentize-js; see that file).

import { get as configValue } from 'iicp:plugin/config@0.1.0';
import { log } from 'iicp:plugin/log@0.1.0';

const NAME = 'js-echo';
const VERSION = '0.1.0';
const CHAT_INTENT = 'urn:iicp:intent:llm:chat:v1';
const ECHO_INTENT = 'urn:iicp:intent:util:echo:v1';
const MODEL = 'echo';
const U32_MAX = 0xffffffff;

// Unicode White_Space, the separators of Rust's split_whitespace. JS's `\s`
// differs: it has U+FEFF and lacks U+0085.
const SEPARATORS = '\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000';
// One word and the separators before it. Stepping a sticky regex is the
// fastest of the ways tried in the engine (no JIT): 91 ms for 180k words,
// against 145 ms for String.match and 157 ms for a charCodeAt loop.
const NEXT_WORD = new RegExp(`[${SEPARATORS}]*[^${SEPARATORS}]+`, 'y');

function wordCount(text) {
  NEXT_WORD.lastIndex = 0;
  let count = 0;
  while (NEXT_WORD.test(text)) count++;
  return Math.min(count, U32_MAX);
}

class Invalid extends Error {}

/** A JSON object as its [key, value] pairs, repeated keys kept. */
class JsonObject {
  constructor(pairs) {
    this.pairs = pairs;
  }
}

// A JSON reader that keeps repeated keys. The host has already checked that
// the payload is valid JSON, so this only needs to read it correctly; it still
// refuses what it cannot read.
const SPACE = /[ \t\n\r]*/y;
const STRING = /"[^"\\]*(?:\\.[^"\\]*)*"/y;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const MAX_DEPTH = 512;

class Reader {
  constructor(text) {
    this.text = text;
    this.at = 0;
  }

  fail() {
    throw new Invalid(`invalid JSON at offset ${this.at}`);
  }

  skipSpace() {
    SPACE.lastIndex = this.at;
    SPACE.test(this.text);
    this.at = SPACE.lastIndex;
  }

  token(re) {
    re.lastIndex = this.at;
    const m = re.exec(this.text);
    if (m === null) this.fail();
    this.at = re.lastIndex;
    return m[0];
  }

  string() {
    // JSON.parse decodes the escapes; lone surrogates are kept, as code units.
    return JSON.parse(this.token(STRING));
  }

  literal(word, value) {
    if (!this.text.startsWith(word, this.at)) this.fail();
    this.at += word.length;
    return value;
  }

  value(depth) {
    if (depth > MAX_DEPTH) throw new Invalid('recursion limit exceeded');
    this.skipSpace();
    switch (this.text[this.at]) {
      case '{': {
        this.at++;
        const pairs = [];
        this.skipSpace();
        if (this.text[this.at] === '}') {
          this.at++;
          return new JsonObject(pairs);
        }
        for (;;) {
          this.skipSpace();
          const key = this.string();
          this.skipSpace();
          if (this.text[this.at++] !== ':') this.fail();
          pairs.push([key, this.value(depth + 1)]);
          this.skipSpace();
          const c = this.text[this.at++];
          if (c === '}') return new JsonObject(pairs);
          if (c !== ',') this.fail();
        }
      }
      case '[': {
        this.at++;
        const items = [];
        this.skipSpace();
        if (this.text[this.at] === ']') {
          this.at++;
          return items;
        }
        for (;;) {
          items.push(this.value(depth + 1));
          this.skipSpace();
          const c = this.text[this.at++];
          if (c === ']') return items;
          if (c !== ',') this.fail();
        }
      }
      case '"':
        return this.string();
      case 't':
        return this.literal('true', true);
      case 'f':
        return this.literal('false', false);
      case 'n':
        return this.literal('null', null);
      default:
        return Number(this.token(NUMBER));
    }
  }

  document() {
    const value = this.value(0);
    this.skipSpace();
    if (this.at !== this.text.length) this.fail();
    return value;
  }
}

function typeName(value) {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return 'a boolean';
  if (typeof value === 'number') return 'a number';
  if (typeof value === 'string') return 'a string';
  if (value instanceof JsonObject) return 'a map';
  return 'a sequence';
}

const LONE_SURROGATE = /[\ud800-\udfff]/u;

/** `text`, unless it holds a lone surrogate (serde refuses those). */
function unicode(text) {
  if (LONE_SURROGATE.test(text)) throw new Invalid('lone surrogate in a string');
  return text;
}

/**
 * The fields of a struct given as an object or an array, as serde reads a
 * derived struct; missing optional fields are left out. `keys`: check every
 * key of an object (serde decodes them to match field names).
 */
function struct(value, what, fields, required, keys) {
  const found = new Map();
  if (value instanceof JsonObject) {
    for (const [key, item] of value.pairs) {
      if (keys) unicode(key);
      if (fields.includes(key)) {
        if (found.has(key)) throw new Invalid(`duplicate field \`${key}\``);
        found.set(key, item);
      }
    }
    for (const key of required) {
      if (!found.has(key)) throw new Invalid(`missing field \`${key}\``);
    }
    return found;
  }
  if (Array.isArray(value)) {
    if (value.length > fields.length) throw new Invalid(`trailing elements in ${what}`);
    fields.forEach((key, index) => {
      if (index < value.length) found.set(key, value[index]);
      else if (required.includes(key)) {
        throw new Invalid(`invalid length ${index}, expected ${what}`);
      }
    });
    return found;
  }
  throw new Invalid(`invalid type: ${typeName(value)}, expected ${what}`);
}

function string(value) {
  if (typeof value !== 'string') {
    throw new Invalid(`invalid type: ${typeName(value)}, expected a string`);
  }
  return unicode(value);
}

/**
 * serde buffers an untagged enum's input before it tries the variants,
 * decoding every string and number in it: refuse what it refuses.
 */
function buffered(value) {
  if (typeof value === 'string') unicode(value);
  else if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Invalid('number out of range');
  } else if (value instanceof JsonObject) {
    for (const [key, item] of value.pairs) {
      unicode(key);
      buffered(item);
    }
  } else if (Array.isArray(value)) {
    for (const item of value) buffered(item);
  }
}

/** OpenAI content: a string, or a list of typed parts of which we keep text. */
function contentText(content) {
  if (content === undefined || content === null) return '';
  buffered(content);
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    try {
      const texts = [];
      for (const part of content) {
        const text = struct(part, 'struct Part', ['text'], [], false).get('text');
        if (text !== undefined && text !== null) texts.push(string(text));
      }
      return texts.join('\n');
    } catch (error) {
      if (!(error instanceof Invalid)) throw error;
    }
  }
  throw new Invalid('data did not match any variant of untagged enum Content');
}

/** [isUser, text] for each message of a chat payload. */
function messageTexts(payload) {
  const request = new Reader(payload).document();
  const fields = struct(request, 'struct ChatRequest', ['messages'], [], true);
  const messages = fields.has('messages') ? fields.get('messages') : [];
  if (!Array.isArray(messages)) {
    throw new Invalid(`invalid type: ${typeName(messages)}, expected a sequence`);
  }
  return messages.map((message) => {
    const m = struct(message, 'struct Message', ['role', 'content'], ['role'], true);
    const role = string(m.get('role'));
    return [role === 'user', contentText(m.get('content'))];
  });
}

function taskError(kind, message) {
  return { kind, message, retryable: false };
}

function chat(payload) {
  let texts;
  try {
    texts = messageTexts(payload);
  } catch (error) {
    if (!(error instanceof Invalid)) throw error;
    throw taskError('invalid-input', `payload is not a chat request: ${error.message}`);
  }
  const user = texts.findLast(([isUser]) => isUser);
  if (user === undefined) {
    throw taskError('invalid-input', 'payload.messages has no user message');
  }
  // Count each message once: the reply is one of them.
  const counts = new Map();
  let promptTokens = 0;
  for (const message of texts) {
    const words = wordCount(message[1]);
    counts.set(message, words);
    promptTokens = Math.min(promptTokens + words, U32_MAX);
  }
  const reply = user[1];
  const completionTokens = counts.get(user);
  const totalTokens = Math.min(promptTokens + completionTokens, U32_MAX);
  const completion = {
    object: 'chat.completion',
    model: MODEL,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: reply },
        finish_reason: 'stop',
      },
    ],
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: totalTokens,
    },
  };
  return {
    resultJson: JSON.stringify(completion),
    usage: { promptTokens, completionTokens, totalTokens },
    modelUsed: MODEL,
  };
}

/** The intents config value `also_declare` names. */
function alsoDeclared() {
  return (configValue('also_declare') ?? '')
    .split(',')
    .map((intent) => intent.trim())
    .filter((intent) => intent !== '');
}

function handleTask(task) {
  switch (task.intent) {
    case CHAT_INTENT:
      return chat(task.payload);
    case ECHO_INTENT:
      return { resultJson: task.payload, usage: undefined, modelUsed: undefined };
    default:
      // Read only here: the chat and echo tasks make no config call.
      if (alsoDeclared().includes(task.intent)) {
        return { resultJson: task.payload, usage: undefined, modelUsed: undefined };
      }
      throw taskError('unsupported-intent', `${NAME} does not serve ${task.intent}`);
  }
}

function capability(intent) {
  return { intent, models: [MODEL], maxTokens: 8192, inputModalities: ['text'] };
}

export const handler = {
  describe() {
    return {
      name: NAME,
      version: VERSION,
      capabilities: [capability(CHAT_INTENT), capability(ECHO_INTENT)].concat(
        alsoDeclared().map(capability),
      ),
    };
  },

  // A thrown task-error record becomes the `err` case of the result.
  handle(task) {
    log('debug', `${NAME} handles ${task.intent}`);
    try {
      return handleTask(task);
    } catch (error) {
      if (error instanceof Error) {
        // A bug here: report it rather than trap.
        throw taskError('internal', `${NAME} failed: ${error.name}`);
      }
      throw error;
    }
  },
};

// Warm snapshot: the top level runs once at build time, before the engine is
// snapshotted, so running the task paths here puts what their first call
// builds (the functions' bytecode, which SpiderMonkey compiles lazily on first
// call, the regexes' compiled forms, the shapes of the objects built) into the
// snapshot instead of into every fresh instance. Only a made-up task: nothing
// a consumer sent is in the snapshot. Host imports (log, config) cannot be
// called at build time, so this goes through handleTask, which calls none for
// these intents; a bug (an Error) fails the build.
const WARM_UP_PAYLOAD =
  '{"messages":[{"role":"system","content":"Be brief."},' +
  '{"role":"user","content":[{"type":"text","text":"Hello, warm snapshot"}]},' +
  '{"role":"user","content":"Hello again"}],"model":"echo","max_tokens":16}';
for (const [intent, payload] of [
  [CHAT_INTENT, WARM_UP_PAYLOAD],
  [ECHO_INTENT, WARM_UP_PAYLOAD],
  // The refusal path: a chat payload without a user message.
  [CHAT_INTENT, '[]'],
]) {
  try {
    handleTask({ taskId: 'warm-up', intent, payload });
  } catch (error) {
    if (error instanceof Error) throw error;
  }
}
