// {{name}}: an iicp-host plugin in JavaScript. Build it with ./build.sh.
import { log } from 'iicp:plugin/log@0.1.0';

const INTENT = 'urn:iicp:intent:example:{{name}}:v1';

/** The task's work, apart from host calls (see the warm-up below). */
function answer(payloadJson) {
  const payload = JSON.parse(payloadJson);
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    // Throwing a task-error record fails the task with a typed error (422 here).
    throw { kind: 'invalid-input', message: 'payload must be a JSON object', retryable: false };
  }
  return { resultJson: payloadJson, usage: undefined, modelUsed: undefined };
}

export const handler = {
  describe() {
    const capability = { intent: INTENT, models: [], maxTokens: undefined, inputModalities: [] };
    return { name: '{{name}}', version: '0.1.0', capabilities: [capability] };
  },

  handle(task) {
    log('debug', `handling task ${task.taskId}`);
    return answer(task.payload);
  },
};

// Warm snapshot: the top level runs once at build time, before the engine is
// snapshotted, so a task run here (made up, calling no host import: those
// cannot be called at build time) leaves the functions it calls compiled in
// the snapshot, and every fresh instance starts warm.
answer('{"warm-up": true}');
