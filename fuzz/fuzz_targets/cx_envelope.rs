//! Encrypted CALLs (IICP-CX, `protocol.md` §1.6) as the task route opens
//! them: the body is parsed, then its `iicp_conf` envelope is opened with
//! the node key of the reference fixture (secret bytes 1..=32), so the
//! seeded real envelope decrypts and mutations explore every refusal.
//! Opening gives the payload's JSON text or a 400 `IICP-CX-02`, never a
//! panic; an opened payload seals a response.
#![no_main]

use iicp_host::protocol::confidentiality::CxKey;
use iicp_host::protocol::task::TaskRequest;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fn fixture_key() -> CxKey {
    let mut secret = [0u8; 32];
    for (byte, value) in secret.iter_mut().zip(1..) {
        *byte = value;
    }
    CxKey::from_secret_bytes(secret)
}

fuzz_target!(|body: &[u8]| {
    thread_local!(static KEY: CxKey = fixture_key());
    let Ok(task) = TaskRequest::parse(body) else {
        return;
    };
    let Some(envelope) = task.iicp_conf else {
        return;
    };
    KEY.with(
        |key| match key.open(envelope, &task.task_id, &task.intent) {
            Ok((payload, session)) => {
                assert!(serde_json::from_str::<IgnoredAny>(&payload).is_ok());
                assert!(session.seal(b"{}", &task.task_id).is_ok());
            }
            Err(error) => {
                assert_eq!((error.status().as_u16(), error.code()), (400, "IICP-CX-02"));
                assert!(error.message().len() <= 1024);
            }
        },
    );
});
