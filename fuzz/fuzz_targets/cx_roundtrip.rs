//! IICP-CX crypto inputs: a consumer seals a fuzzer-chosen payload for a
//! fuzzer-chosen task with a fuzzer-chosen ephemeral key and nonce, then the
//! envelope is optionally tampered with (a flipped ciphertext byte, another
//! ephemeral key, an AAD naming another task, another recipient, another
//! version, base64 padding). The node must open exactly the untampered
//! envelopes whose payload is UTF-8 JSON, give back exactly that payload,
//! and seal a response only that consumer opens.
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use iicp_host::protocol::confidentiality::{CxKey, consumer};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Debug, Arbitrary)]
struct Call {
    node_secret: [u8; 32],
    ephemeral_secret: [u8; 32],
    nonce: [u8; 12],
    task_id: String,
    intent: String,
    payload: Vec<u8>,
    response: Vec<u8>,
    tamper: Option<Tamper>,
    padded: bool,
}

#[derive(Debug, Arbitrary)]
enum Tamper {
    FlipCiphertext { index: u16, bits: u8 },
    OtherEphemeralKey([u8; 32]),
    AadForTask(String),
    Recipient(String),
    Version(u64),
    TruncateCiphertext(u8),
}

fn encode(bytes: &[u8], padded: bool) -> String {
    let mut text = URL_SAFE_NO_PAD.encode(bytes);
    if padded {
        while !text.len().is_multiple_of(4) {
            text.push('=');
        }
    }
    text
}

fuzz_target!(|call: Call| {
    let key = CxKey::from_secret_bytes(call.node_secret);
    let (mut envelope, shared) = consumer::seal_call(
        &key.public_key(),
        call.ephemeral_secret,
        call.nonce,
        &call.payload,
        &call.task_id,
        &call.intent,
    );
    let field = |envelope: &Value, name: &str| {
        URL_SAFE_NO_PAD
            .decode(envelope[name].as_str().expect("string field"))
            .expect("base64url")
    };
    let mut ciphertext = field(&envelope, "encrypted_body");
    let mut tampered = false;
    match &call.tamper {
        None => {}
        Some(Tamper::FlipCiphertext { index, bits }) => {
            let index = usize::from(*index) % ciphertext.len();
            ciphertext[index] ^= bits;
            tampered = *bits != 0;
        }
        Some(Tamper::OtherEphemeralKey(public)) => {
            // Another encoding of the same point (X25519 ignores the top bit
            // and reduces mod p) agrees on the same secret: not a tamper.
            let node = StaticSecret::from(call.node_secret);
            tampered =
                node.diffie_hellman(&PublicKey::from(*public)).as_bytes() != shared.as_bytes();
            envelope["kem_ciphertext"] = URL_SAFE_NO_PAD.encode(public).into();
        }
        Some(Tamper::AadForTask(other)) => {
            tampered = *other != call.task_id;
            envelope["aad"] = URL_SAFE_NO_PAD
                .encode(format!("{other}|{}", call.intent))
                .into();
        }
        Some(Tamper::Recipient(other)) => {
            tampered = other != key.key_id();
            envelope["recipient_key_id"] = other.clone().into();
        }
        Some(Tamper::Version(version)) => {
            tampered = *version != 1;
            envelope["version"] = (*version).into();
        }
        Some(Tamper::TruncateCiphertext(cut)) => {
            let keep = ciphertext.len().saturating_sub(usize::from(*cut));
            tampered = keep < ciphertext.len();
            ciphertext.truncate(keep);
        }
    }
    for name in ["kem_ciphertext", "nonce", "aad"] {
        let bytes = field(&envelope, name);
        envelope[name] = encode(&bytes, call.padded).into();
    }
    envelope["encrypted_body"] = encode(&ciphertext, call.padded).into();

    let raw = RawValue::from_string(envelope.to_string()).expect("JSON");
    let payload_is_json = std::str::from_utf8(&call.payload)
        .is_ok_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok());
    match key.open(&raw, &call.task_id, &call.intent) {
        Ok((payload, session)) => {
            assert!(!tampered, "a tampered envelope opened: {:?}", call.tamper);
            assert_eq!(payload.as_bytes(), call.payload.as_slice());
            let sealed = session.seal(&call.response, &call.task_id).expect("seals");
            assert_eq!(
                consumer::open_response(&shared, &sealed, &call.task_id).as_deref(),
                Some(call.response.as_slice())
            );
        }
        Err(error) => {
            assert_eq!((error.status().as_u16(), error.code()), (400, "IICP-CX-02"));
            assert!(
                tampered || !payload_is_json,
                "an intact envelope of a JSON payload was refused: {}",
                error.message()
            );
        }
    }
});
