//! Extractors whose rejections use the API's error envelope (axum's own answer in plain
//! text, which scripts cannot branch on).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use coffer_api::error::ErrorCode;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;
use coffer_api::error::CodedError;

/// `Json<T>`, with malformed bodies answered `invalid_argument` and oversized ones
/// `payload_too_large`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::with_code(
            ErrorCode::PayloadTooLarge,
            "request body is over the limit of this endpoint".into(),
        );
    }
    ApiError::invalid(format!("request body: {}", r.body_text()))
}
