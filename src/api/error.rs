//! Every error the service API answers, as one JSON shape: `{"error", "message", "field"?}`,
//! classified once here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::decision::RequestError;
use crate::tenants::StateError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "bad_request", "field": "descriptors[0].hits",
    "message": "invalid type: string \"1\", expected u64"}))]
pub struct ErrorBody {
    /// What kind of error: `bad_request`, `unauthorized`, `not_found`, `method_not_allowed`,
    /// `request_timeout`, `conflict`, `payload_too_large`, `unavailable`.
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
    /// The request field at fault (`descriptors[3].hits`, `tier`, `labels.team`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.to_owned(),
                message: message.into(),
                field: None,
            },
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 about one field: `message` is prefixed with its name.
    pub fn field(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut error = Self::bad_request(format!("{field}: {message}"));
        error.body.field = Some(field);
        error
    }

    /// 401, the same for a missing and a wrong token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required (Authorization: Bearer <token>)",
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405: the path is served, not with this method.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// 408: the request was not complete (a body sent too slowly) within `timeout`.
    pub fn request_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request was not complete within {timeout:?}"),
        )
    }

    /// 409: the change contradicts what exists.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    }

    /// 503: the store or the tenant state cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body it is answered with.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Unavailable(_) => Self::unavailable(error.to_string()),
            RequestError::EmptyDomain => Self::field("domain", "must not be empty"),
            RequestError::NoDescriptors => Self::field("descriptors", "at least one is needed"),
            RequestError::TooManyDescriptors { .. } => Self::field("descriptors", &error),
            RequestError::UnenforceableOverride { index, .. }
            | RequestError::BadReservation { index, .. }
            | RequestError::UnknownOverrideUnit { index, .. } => {
                let mut answer = Self::bad_request(error.to_string());
                answer.body.field = Some(format!("descriptors[{index}]"));
                answer
            }
        }
    }
}

impl From<StateError> for ApiError {
    fn from(error: StateError) -> Self {
        match error {
            StateError::Contended => Self::conflict(error.to_string()),
            _ => Self::unavailable(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
