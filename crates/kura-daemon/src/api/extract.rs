//! Request parts read with their rejections turned into `invalid` errors (so a malformed
//! path, query or body is a 400 with the stable error shape, naming what was wrong), and the
//! one time format the API answers in.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};

use crate::Error;

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> crate::Result<T> {
    q.map(|Query(t)| t)
        .map_err(|e| Error::Invalid(format!("query: {}", e.body_text())))
}

pub(crate) fn path<T>(p: Result<Path<T>, PathRejection>) -> crate::Result<T> {
    p.map(|Path(t)| t)
        .map_err(|e| Error::Invalid(format!("path: {}", e.body_text())))
}

/// A JSON body; serde's message names the field that did not fit.
pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>) -> crate::Result<T> {
    b.map(|Json(t)| t)
        .map_err(|e| Error::Invalid(format!("body: {}", e.body_text())))
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
