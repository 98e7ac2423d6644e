//! Calling the daemon's JSON API from tests.

use serde_json::Value;

use crate::daemon::{http_request, Daemon};

/// Sends a request; returns the status and the body parsed as JSON (Null when empty).
pub fn call(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let (status, out) = http_request(&d.api, method, path, text.as_deref());
    let v = if out.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{method} {path}: {e}: {out}"))
    };
    (status, v)
}

/// Sends a raw body.
pub fn call_raw(d: &Daemon, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, out) = http_request(&d.api, method, path, Some(body));
    (status, serde_json::from_str(&out).unwrap())
}

/// Asserts an error response: status, kind, and a detail containing `says`.
pub fn assert_error(got: (u16, Value), status: u16, kind: &str, says: &str) {
    let (code, body) = got;
    assert_eq!(code, status, "{body}");
    assert_eq!(body["error"], kind, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(says),
        "detail {detail:?} should mention {says:?}"
    );
}

pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect()
}
