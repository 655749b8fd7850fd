//! Answering in the crate's envelope: [`ErrorResponse`] for refusals of your own (a rate
//! limiter's `429`, a permission check's `403`), and [`Rejection`], what an
//! [`error_response`](crate::ApiKeyLayer::error_response) hook renders.
//!
//! Every refusal of the crate is an [`AuthError`](crate::AuthError), answered with the JSON
//! envelope `{"error":{"code":"...","message":"...","request_id":"req_..."}}`, or the gRPC way
//! for a gRPC call.
//!
//! ```
//! use std::time::Duration;
//!
//! use http::{Request, StatusCode};
//! use tower_api_key::response::ErrorResponse;
//!
//! let request = Request::get("/api").header("x-request-id", "req_42").body(()).unwrap();
//! let response = ErrorResponse::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Slow down.")
//!     .for_request(&request)
//!     .retry_after(Duration::from_secs(6))
//!     .into_response();
//! assert_eq!(response.headers()["retry-after"], "6");
//! assert_eq!(response.headers()["x-request-id"], "req_42");
//! ```

#[cfg(feature = "axum")]
pub use crate::envelope::errors_in_envelope;
pub use crate::envelope::ErrorResponse;
pub use crate::error::Rejection;
