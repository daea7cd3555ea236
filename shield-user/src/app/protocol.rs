//! The app socket's protocol (docs/operations.md, "The application layer"): newline-
//! delimited JSON, one request line → one reply line. Only `hello`, `decide` and `report`;
//! unknown fields are ignored (both ends may add optional ones), wrong types are errors.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The longest request line, in bytes (without its newline).
pub const MAX_APP_LINE: usize = 64 * 1024;
/// Every operation the app socket serves.
pub const APP_OPS: [&str; 4] = ["hello", "decide", "report", "release"];
/// The error for any other operation (control verbs included).
pub const ONLY_APP_OPS: &str = "the app socket accepts only hello, decide, report and release";

/// One request, as sent by the client (fields of every op; absent ones are `None`).
#[derive(Debug, Default, Deserialize)]
pub struct AppRequest {
    pub op: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub xff: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub headers: Option<HashMap<String, String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cost: Option<u64>,
    /// `decide` for more tokens of a request already admitted (`shield.charge(n)`).
    #[serde(default)]
    pub charge: Option<bool>,
    /// `release`: the slot a `decide` reply gave.
    #[serde(default)]
    pub slot: Option<u64>,
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

/// Parses one request line (without its newline).
pub fn parse(line: &[u8]) -> Result<AppRequest, String> {
    let req: AppRequest = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            format!("bad request: {e}")
        } else {
            format!("bad request: not a JSON object ({e})")
        }
    })?;
    if !APP_OPS.contains(&req.op.as_str()) {
        return Err(ONLY_APP_OPS.to_string());
    }
    Ok(req)
}

/// `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub ok: bool,
    pub version: String,
    pub generation: u32,
    pub on_error: String,
    pub key_headers: Vec<String>,
}

/// `decide`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub ok: bool,
    pub allow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub generation: u32,
    /// Null when no endpoint matched (the request is not counted).
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// An in-flight slot (a `concurrency = N` endpoint): held by this connection until a
    /// `release` of it or the connection's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
}

/// `report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    pub ok: bool,
    pub generation: u32,
    pub signal: String,
    pub client: String,
    pub counted: bool,
    pub limited: bool,
    pub banned: bool,
}

/// An error reply line (with its newline).
pub fn error_line(why: &str) -> String {
    format!("{}\n", serde_json::json!({"ok": false, "error": why}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_verbs_and_garbage_are_refused_in_plain_words() {
        for verb in ["ban", "unban", "reload", "bans", "ping", "policy"] {
            let line = format!(r#"{{"op":"{verb}","source":"192.0.2.1","duration":"1h"}}"#);
            assert_eq!(parse(line.as_bytes()).unwrap_err(), ONLY_APP_OPS);
        }
        // A control-socket-shaped request (no `op`) is refused too.
        assert!(parse(br#"{"cmd":"reload"}"#).is_err());
        for bad in [
            &b"garbage"[..],
            b"[1,2]",
            b"\xff",
            br#"{"op":"decide","port":"x"}"#,
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A lone surrogate is not Unicode text: refused, in words (shield_flask sends a key
        // holding one as its SHA-256, so that such a request is still decided).
        for lone in [
            &br#"{"op":"decide","user":"\ud800x"}"#[..],
            br#"{"op":"decide","user":"\udc00"}"#,
        ] {
            let e = parse(lone).unwrap_err();
            assert!(
                e.starts_with("bad request: ") && e.contains("escape"),
                "{e}"
            );
        }
        let r =
            parse(br#"{"op":"decide","user":"\ud83d\ude00"}"#).expect("a pair is one character");
        assert_eq!(r.user.as_deref(), Some("\u{1f600}"));
        let r = parse(br#"{"op":"decide","method":"GET","future_field":[1]}"#)
            .expect("unknown fields are ignored");
        assert_eq!(r.method.as_deref(), Some("GET"));
    }
}
