//! The one error type every HTTP answer of the node uses: a kind, a message and a status,
//! rendered as `{"error": {"kind": "...", "message": "..."}}`.

use http::StatusCode;
use serde::Serialize;

/// What went wrong, in a form clients can branch on. Rendered in kebab-case (`not-found`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request itself is malformed (bad name, bad setting, not a component, ...): 400.
    InvalidArgument,
    /// No or wrong admin token: 401.
    Unauthorized,
    /// No such function, version or route: 404.
    NotFound,
    /// The method is not allowed on this path: 405.
    MethodNotAllowed,
    /// The request conflicts with the current state (route taken, nothing to roll back to): 409.
    Conflict,
    /// A body or upload is larger than allowed: 413.
    PayloadTooLarge,
    /// The function has spent its GPU budget for the current period: 429 with `Retry-After`.
    BudgetExhausted,
    /// The function's queue is full or the node is out of instance slots: 503 with `Retry-After`.
    Overloaded,
    /// The node (or a function) is still loading or shutting down: 503.
    Unavailable,
    /// The guest trapped (panic, unreachable, out of memory, ...): 500.
    GuestTrap,
    /// The guest ran past its timeout: 504.
    Timeout,
    /// The guest finished without sending a response, or sent a broken one: 502.
    BadGuestResponse,
    /// A bug or I/O failure in the node itself: 500.
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind of error is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BudgetExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Overloaded | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::GuestTrap | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::BadGuestResponse => StatusCode::BAD_GATEWAY,
        }
    }
}

/// An error answered over HTTP: its kind picks the status, its message is for humans.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A sentence that says what went wrong and, where possible, what to do about it.
    pub message: String,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` hint in seconds.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A 400 from any error: the full `anyhow` chain becomes the message.
    pub fn invalid(error: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorKind::InvalidArgument, error.to_string())
    }

    /// A 404 naming what was not found.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::NotFound, message)
    }

    /// A 500 for a failure of the node itself; the chain is kept in the message.
    pub fn internal(error: &anyhow::Error) -> Self {
        ApiError::new(ErrorKind::Internal, format!("{error:#}"))
    }

    /// The JSON body: `{"error": {"kind": ..., "message": ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.kind)
    }
}

impl std::error::Error for ApiError {}
