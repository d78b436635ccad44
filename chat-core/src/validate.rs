//! Naming rules and size limits for user and channel names and message bodies.

use crate::error::{ChatError, NameKind};

/// Longest accepted user or channel name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Default limit on a message body, in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Topic names used internally; no user or channel may take them.
pub const RESERVED_NAMES: &[&str] = &["servers", "replication", "sync", "presence"];

/// Prefix reserved for future internal topics.
pub const RESERVED_PREFIX: char = '$';

/// Prefix of the names the cluster check (`chat check`, chat-web's "Check the cluster") gives
/// its probe user and channel. Servers accept such names like any other; clients leave them
/// out of the lists they show people (see [`is_probe_name`]).
pub const PROBE_PREFIX: &str = "_check-";

/// Whether `name` belongs to the cluster check's probe traffic ([`PROBE_PREFIX`]).
pub fn is_probe_name(name: &str) -> bool {
    name.starts_with(PROBE_PREFIX)
}

/// Limits a server enforces on what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message body in bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Checks a user or channel name: 1 to 64 characters, no whitespace, no control
/// characters, not a reserved topic.
pub fn validate_name(kind: NameKind, name: &str) -> Result<(), ChatError> {
    let invalid = |reason| ChatError::InvalidName {
        kind,
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid("it is longer than 64 characters"));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(invalid("it contains whitespace"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    if RESERVED_NAMES.contains(&name) || name.starts_with(RESERVED_PREFIX) {
        return Err(ChatError::ReservedName {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks a message body against the size limit.
pub fn validate_message(message: &str, limits: &Limits) -> Result<(), ChatError> {
    if message.len() > limits.max_message_bytes {
        return Err(ChatError::TooLarge {
            what: "message",
            size: message.len(),
            limit: limits.max_message_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "ana",
            "geral",
            "bot_12345",
            "ação",
            "x",
            &"a".repeat(64),
            "日本語",
        ] {
            assert_eq!(validate_name(NameKind::User, n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names_with_codes() {
        let cases: &[(&str, ErrorCode)] = &[
            ("", ErrorCode::InvalidName),
            (&"a".repeat(65), ErrorCode::InvalidName),
            ("a b", ErrorCode::InvalidName),
            ("tab\there", ErrorCode::InvalidName),
            ("nl\n", ErrorCode::InvalidName),
            ("bell\u{7}", ErrorCode::InvalidName),
            ("nbsp\u{a0}x", ErrorCode::InvalidName),
            ("servers", ErrorCode::ReservedName),
            ("replication", ErrorCode::ReservedName),
            ("$sys", ErrorCode::ReservedName),
        ];
        for (name, code) in cases {
            let err = validate_name(NameKind::Channel, name).unwrap_err();
            assert_eq!(&err.code(), code, "{name:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn probe_names_are_valid_names_told_apart_by_their_prefix() {
        for n in ["_check-probe", "_check-channel"] {
            assert_eq!(validate_name(NameKind::User, n), Ok(()), "{n}");
            assert!(is_probe_name(n));
        }
        for n in ["check-probe", "_check", "x_check-", "ana"] {
            assert!(!is_probe_name(n), "{n}");
        }
    }

    #[test]
    fn message_limit_is_in_bytes() {
        let limits = Limits {
            max_message_bytes: 4,
        };
        assert!(validate_message("abcd", &limits).is_ok());
        let err = validate_message("ação", &limits).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
    }
}
