//! Errors of the protocol and the domain, each with a stable machine-readable code.
//!
//! One enum for everything a request can be refused for, because every refusal ends the
//! same way: an error reply `{"status": "erro", "code": ..., "description": ...}`. The
//! `Display` text is the `description` (a sentence a person understands); `code()` is the
//! stable `code` that programs match on.

use std::fmt;

/// The stable `code` of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame could not be decoded, or a field is missing or has the wrong type.
    BadRequest,
    /// The `service` is not one this component offers.
    UnknownService,
    /// The channel does not exist.
    UnknownChannel,
    /// The user does not exist.
    UnknownUser,
    /// A body or frame is larger than the limit.
    TooLarge,
    /// A user or channel name is not acceptable.
    InvalidName,
    /// The name is reserved for an internal topic.
    ReservedName,
    /// The channel (or name) already exists.
    AlreadyExists,
    /// No server could take the request in time.
    Unavailable,
    /// The sender is over its request rate.
    RateLimited,
    /// The request timed out (client side).
    Timeout,
    /// The server failed to do what it acknowledged it could do (e.g. the disk failed).
    Internal,
    /// A code this version does not know (kept verbatim).
    Other(String),
}

impl ErrorCode {
    /// Every code this version knows (all but `Other`).
    pub const KNOWN: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownService,
        ErrorCode::UnknownChannel,
        ErrorCode::UnknownUser,
        ErrorCode::TooLarge,
        ErrorCode::InvalidName,
        ErrorCode::ReservedName,
        ErrorCode::AlreadyExists,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    /// The wire form of the code.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownService => "unknown_service",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::ReservedName => "reserved_name",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(s) => s,
        }
    }

    /// Reads a wire code; unknown codes are kept as `Other`.
    pub fn parse(s: &str) -> ErrorCode {
        ErrorCode::KNOWN
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or_else(|| ErrorCode::Other(s.to_string()))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of name a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// A user name.
    User,
    /// A channel name.
    Channel,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::User => "user",
            NameKind::Channel => "channel",
        })
    }
}

/// Why a request was refused; maps one to one onto an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The bytes are not a MessagePack or JSON map of the expected shape.
    #[error("the request is not a MessagePack or JSON map {{\"service\": ..., \"data\": {{...}}}} (decoder: {0})")]
    BadFrame(String),
    /// The envelope has no `service` string.
    #[error("the request has no `service` field")]
    MissingService,
    /// A field the service needs is absent or empty.
    #[error("service `{service}` needs the field `data.{field}`")]
    MissingField {
        /// The service asked for.
        service: String,
        /// The missing field.
        field: &'static str,
    },
    /// A field has a value of the wrong kind.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The service does not exist.
    #[error("unknown service `{0}`")]
    UnknownService(String),
    /// The service exists but this component does not offer it.
    #[error("service `{service}` is not offered here: {reason}")]
    NotOffered {
        /// The service asked for.
        service: String,
        /// Where to ask instead.
        reason: &'static str,
    },
    /// The service exists but the reference service does not offer it.
    #[error(
        "service `{0}` is not offered by the reference service (it offers rank, list, heartbeat)"
    )]
    NotOfferedByReference(String),
    /// A user or channel name breaks the naming rules.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// User or channel.
        kind: NameKind,
        /// The name as received (truncated to 80 characters).
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The name equals an internal topic.
    #[error("{kind} name `{name}` is reserved for internal use")]
    ReservedName {
        /// User or channel.
        kind: NameKind,
        /// The reserved name.
        name: String,
    },
    /// Publish to a channel that was never created.
    #[error("channel `{0}` does not exist; create it first")]
    UnknownChannel(String),
    /// Message to a user who never logged in.
    #[error("user `{0}` does not exist")]
    UnknownUser(String),
    /// A body over the limit.
    #[error("{what} is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// What was too large ("message", "frame").
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// No server could serve the request.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Too many requests from this sender.
    #[error("too many requests; slow down and retry in a moment")]
    RateLimited,
    /// A server-side failure (storage).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ChatError {
    /// `service` lacks the field `data.field`.
    pub(crate) fn missing(service: &str, field: &'static str) -> ChatError {
        ChatError::MissingField {
            service: service.to_string(),
            field,
        }
    }

    /// The stable wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::BadFrame(_)
            | ChatError::MissingService
            | ChatError::MissingField { .. }
            | ChatError::InvalidField { .. } => ErrorCode::BadRequest,
            ChatError::UnknownService(_)
            | ChatError::NotOffered { .. }
            | ChatError::NotOfferedByReference(_) => ErrorCode::UnknownService,
            ChatError::InvalidName { .. } => ErrorCode::InvalidName,
            ChatError::ReservedName { .. } => ErrorCode::ReservedName,
            ChatError::UnknownChannel(_) => ErrorCode::UnknownChannel,
            ChatError::UnknownUser(_) => ErrorCode::UnknownUser,
            ChatError::TooLarge { .. } => ErrorCode::TooLarge,
            ChatError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            ChatError::Unavailable(_) => ErrorCode::Unavailable,
            ChatError::RateLimited => ErrorCode::RateLimited,
            ChatError::Internal(_) => ErrorCode::Internal,
        }
    }
}
