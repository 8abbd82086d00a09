//! The policy table over the API: `GET /api/v1/policies` (each entry with its last run and
//! next run) and `PUT /api/v1/policies` (replace the whole table, validated whole first:
//! a `400` with code `invalid` lists every bad entry and nothing is applied).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kura_types::{PolicyProblem, PolicyTable, PolicyView};
use serde::Serialize;
use utoipa::ToSchema;

use super::blocking;
use crate::policies::{self, ApplyError};
use crate::{Daemon, Error};

/// A table that was applied: how many entries, and the table as it now reports.
#[derive(Debug, Serialize, ToSchema)]
pub struct Applied {
    pub applied: usize,
    pub policies: Vec<PolicyView>,
}

/// A refused table: the usual error, with every bad entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidTable {
    pub error: InvalidTableDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidTableDetail {
    /// Always `invalid`.
    pub code: String,
    pub message: String,
    /// Every bad entry, with its field and reason (empty when the body itself is malformed).
    pub problems: Vec<PolicyProblem>,
}

#[utoipa::path(
    get,
    path = "/api/v1/policies",
    responses(
        (status = 200, description = "The policy table, each entry with its last and next run", body = [PolicyView]),
        (status = 401, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn list_policies(State(d): State<Arc<Daemon>>) -> crate::Result<Json<Vec<PolicyView>>> {
    let zone = d.options.zone;
    let out = blocking(move || policies::views(&d.catalog, zone).map_err(Error::catalog)).await?;
    Ok(Json(out))
}

#[utoipa::path(
    put,
    path = "/api/v1/policies",
    request_body = PolicyTable,
    responses(
        (status = 200, description = "The table was applied whole", body = Applied),
        (status = 400, description = "Bad entries (every one listed) or a malformed body; nothing was applied", body = InvalidTable),
        (status = 401, body = super::ErrorBody),
        (status = 409, description = "This daemon hosts no volumes", body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    )
)]
pub async fn put_policies(
    State(d): State<Arc<Daemon>>,
    body: Result<Json<PolicyTable>, JsonRejection>,
) -> Response {
    let table = match body {
        Ok(Json(t)) => t,
        // The documented 400 shape for this route, with no entry to blame.
        Err(e) => {
            let body = InvalidTable {
                error: InvalidTableDetail {
                    code: "invalid".into(),
                    message: format!("body: {}", e.body_text()),
                    problems: Vec::new(),
                },
            };
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    let applied = blocking(move || {
        let v = d.volumes().ok_or_else(|| {
            Error::Conflict(
                "this daemon hosts no volumes: apply the table through a daemon that serves \
                 them (kura serve --nbd-listen), or with kura policy apply"
                    .into(),
            )
        })?;
        let zone = d.options.zone;
        let r = policies::apply(&table, &d.catalog, v.store(), v.env.as_ref(), zone);
        match r {
            Ok(n) => {
                let views = policies::views(&d.catalog, zone).map_err(Error::catalog)?;
                tracing::info!("policy table applied through the API: {n} entr(ies)");
                Ok(Ok(Applied {
                    applied: n,
                    policies: views,
                }))
            }
            Err(ApplyError::Invalid(problems)) => Ok(Err(problems)),
            Err(ApplyError::Catalog(e)) => Err(Error::catalog(e)),
        }
    })
    .await;
    match applied {
        Ok(Ok(a)) => Json(a).into_response(),
        Ok(Err(problems)) => {
            let message = ApplyError::Invalid(problems.clone()).to_string()
                + ": "
                + &problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
            let body = InvalidTable {
                error: InvalidTableDetail {
                    code: "invalid".into(),
                    message,
                    problems,
                },
            };
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
        Err(e) => e.into_response(),
    }
}
