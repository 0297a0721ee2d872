// {{name}}: an iicp-host plugin in JavaScript. Build it with ./build.sh.
import { log } from 'iicp:plugin/log@0.1.0';

const INTENT = 'urn:iicp:intent:example:{{name}}:v1';

export const handler = {
  describe() {
    const capability = { intent: INTENT, models: [], maxTokens: undefined, inputModalities: [] };
    return { name: '{{name}}', version: '0.1.0', capabilities: [capability] };
  },

  handle(task) {
    log('debug', `handling task ${task.taskId}`);
    const payload = JSON.parse(task.payload);
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      // Throwing a task-error record fails the task with a typed error (422 here).
      throw { kind: 'invalid-input', message: 'payload must be a JSON object', retryable: false };
    }
    return { resultJson: task.payload, usage: undefined, modelUsed: undefined };
  },
};
