//! Task CALL bodies as a client sends them (`POST /v1/task`): any bytes
//! give a task or an error envelope, never a panic, and an accepted task
//! keeps every bound `TaskRequest::parse` promises.
#![no_main]

use iicp_host::protocol::task::{TIMEOUT_MS_RANGE, TaskRequest};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fuzz_target!(|body: &[u8]| {
    let task = match TaskRequest::parse(body) {
        Ok(task) => task,
        Err(error) => {
            assert!(matches!(error.status().as_u16(), 400 | 422), "{error:?}");
            assert!(error.message().len() <= 1024);
            return;
        }
    };
    let ids = [
        Some(&task.task_id),
        Some(&task.intent),
        task.nonce.as_ref(),
        task.source_node_id.as_ref(),
    ];
    for id in ids.into_iter().flatten() {
        assert!(!id.is_empty() && id.len() <= 256, "{id:?}");
        assert!(!id.chars().any(char::is_control), "{id:?}");
    }
    assert!(serde_json::from_str::<IgnoredAny>(&task.payload).is_ok());
    if let Some(timeout) = task.timeout_ms {
        assert!(TIMEOUT_MS_RANGE.contains(&timeout));
    }
    if task.iicp_conf.is_some() {
        assert_eq!(
            task.payload, "null",
            "an envelope only replaces a missing payload"
        );
    }
});
