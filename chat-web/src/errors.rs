//! Errors as the page shows them: a sentence for people, a stable code, an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat_core::{ChatError, ErrorCode};
use chat_net::client::ClientError;
use serde::Serialize;

/// The sentence the page shows for an error code.
pub fn sentence(code: &ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "The chat server could not understand that request.",
        ErrorCode::UnknownService => "The chat server does not offer that service.",
        ErrorCode::UnknownChannel => "That channel does not exist yet; create it first.",
        ErrorCode::UnknownUser => {
            "There is no user with that name; they must sign in once before they can receive messages."
        }
        ErrorCode::TooLarge => "That message is too long for the chat server.",
        ErrorCode::InvalidName => {
            "Names must be 1 to 64 characters long, without spaces or control characters."
        }
        ErrorCode::ReservedName => "That name is reserved for the system; please pick another.",
        ErrorCode::AlreadyExists => "A channel with that name already exists.",
        ErrorCode::Unavailable => {
            "No chat server is available right now; please try again in a moment."
        }
        ErrorCode::RateLimited => "You are sending too fast; wait a moment and try again.",
        ErrorCode::Timeout => "The chat cluster did not answer in time. Is it running?",
        ErrorCode::Internal => "The chat server failed to store that; please try again.",
        ErrorCode::Other(_) => "The chat server refused the request.",
    }
}

/// The HTTP status that goes with an error code.
pub fn status_for(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest
        | ErrorCode::InvalidName
        | ErrorCode::ReservedName
        | ErrorCode::UnknownService => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnknownChannel | ErrorCode::UnknownUser => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Other(_) => StatusCode::BAD_GATEWAY,
    }
}

/// An error answer of the HTTP API: `{"error": code, "message": sentence, "detail": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// HTTP status.
    #[serde(skip)]
    pub status: StatusCode,
    /// Stable code (the chat error codes, plus `not_signed_in`, `busy`, `too_many_sessions`, ...).
    pub error: String,
    /// A sentence for people.
    pub message: String,
    /// The underlying explanation, when there is one (e.g. the server's own description).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ApiError {
    /// An error with its own code and sentence.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.to_string(),
            message: message.into(),
            detail: None,
        }
    }

    /// The answer to a request without a valid session.
    pub fn not_signed_in() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not_signed_in",
            "You are not signed in, or your session expired; please sign in again.",
        )
    }

    /// The answer when every SDK slot stays busy.
    pub fn busy() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "The web server is busy talking to the cluster; please try again in a moment.",
        )
    }

    /// An unexpected failure inside chat-web.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError {
            detail: Some(detail.into()),
            ..ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Something went wrong inside chat-web; please try again.",
            )
        }
    }

    fn from_code(code: ErrorCode, detail: String) -> ApiError {
        ApiError {
            status: status_for(&code),
            error: code.as_str().to_string(),
            message: sentence(&code).to_string(),
            detail: Some(detail),
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let detail = match &e {
            ClientError::Server { description, .. } => description.clone(),
            other => other.to_string(),
        };
        ApiError::from_code(e.code(), detail)
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        ApiError::from_code(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_sentence_and_a_status() {
        let codes: Vec<ErrorCode> = ErrorCode::KNOWN
            .into_iter()
            .chain([ErrorCode::Other("weird".into())])
            .collect();
        for code in codes {
            let s = sentence(&code);
            assert!(s.ends_with('.') || s.ends_with('?'), "{code}: {s}");
            assert!(status_for(&code).is_client_error() || status_for(&code).is_server_error());
        }
    }

    #[test]
    fn server_errors_keep_their_code_and_description() {
        let e = ApiError::from(ClientError::Server {
            code: ErrorCode::UnknownChannel,
            description: "channel `x` does not exist; create it first".into(),
        });
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.error, "unknown_channel");
        assert_eq!(e.message, sentence(&ErrorCode::UnknownChannel));
        assert_eq!(
            e.detail.as_deref(),
            Some("channel `x` does not exist; create it first")
        );
    }
}
