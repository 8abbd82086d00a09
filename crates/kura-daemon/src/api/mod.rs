//! The REST API: axum, under `/api/v1/`, JSON in and out.
//!
//! - **Versioning.** Everything is under `/api/v1/`; a change that breaks clients gets
//!   `/api/v2/` beside it. The OpenAPI document (`/api/v1/openapi.json`) is generated from
//!   the handlers' annotations ([`ApiDoc`]), so it cannot drift from the code.
//! - **Errors** are `{"error": {"code": "…", "message": "…"}}` with a fitting status; the
//!   codes are stable ([`crate::Error::code`]).
//! - **Auth.** Every route but `/api/v1/health` and the OpenAPI document needs
//!   `Authorization: Bearer TOKEN` ([`crate::auth`]); `/metrics` too (Prometheus sends
//!   bearer tokens). A bad token gets 401 and nothing else.
//! - **Blocking work** (the catalog) runs on `spawn_blocking`, never on the async workers.

mod backups;
pub mod cache;
mod extract;
mod jobs;
mod maintenance;
mod policies;
mod resources;
mod restores;
mod routes;
mod snapshots;
mod volumes;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::OpenApi;

use crate::{Daemon, Error};

pub use routes::{JobView, LogLines};

/// An error as the API answers it.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: `not_found`, `invalid`, `conflict`, `unauthorized`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Io { .. } | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!("API: {self}");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message: self.to_string(),
            },
        };
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Run blocking daemon work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a worker thread failed: {e}")))?
}

fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Every protected route: a valid token, whose caller the handlers see as an extension.
async fn require_token(
    State(d): State<Arc<Daemon>>,
    mut req: Request,
    next: Next,
) -> Result<Response, Error> {
    let token = bearer(req.headers()).ok_or(Error::Unauthorized)?;
    let d2 = Arc::clone(&d);
    let caller = blocking(move || d2.tokens.check(&d2.catalog, &token)).await?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kura",
        description = "The kura daemon's API: resources, jobs, tasks, backups with their \
            copies and sections, snapshot browsing, restores, maintenance tasks, volumes, \
            pairs and their backup policies, health and metrics."
    ),
    paths(
        routes::health,
        routes::list_tasks,
        routes::get_task,
        routes::task_log,
        routes::follow_task,
        routes::cancel_task,
        routes::list_jobs,
        routes::get_job,
        routes::run_job,
        routes::job_occurrences,
        routes::metrics,
        jobs::create,
        jobs::replace,
        jobs::delete,
        resources::list,
        resources::get,
        resources::add,
        resources::remove,
        backups::list,
        backups::get,
        snapshots::list,
        snapshots::tree,
        restores::start,
        maintenance::check,
        maintenance::prune,
        maintenance::heal,
        maintenance::rebuild,
        volumes::list,
        volumes::get,
        volumes::pairs,
        policies::list_policies,
        policies::put_policies,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        crate::TaskInfo,
        crate::TaskState,
        routes::Health,
        routes::LogLines,
        routes::Occurrence,
        routes::FollowEvent,
        JobView,
        jobs::JobSpec,
        resources::ResourceView,
        resources::NewResource,
        backups::BackupView,
        backups::CopyView,
        backups::ExtentView,
        snapshots::SnapshotView,
        snapshots::NodeView,
        restores::RestoreRequest,
        maintenance::RebuildRequest,
        crate::ops::VolumeView,
        crate::ops::PairView,
        policies::Applied,
        policies::InvalidTable,
        policies::InvalidTableDetail,
        kura_types::PolicyTable,
        kura_types::PolicyEntry,
        kura_types::PolicyView,
        kura_types::PolicyRun,
        kura_types::PolicyProblem,
        kura_types::Freeze,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The whole API as a router.
pub fn router(d: Arc<Daemon>) -> axum::Router {
    use axum::routing::{get, post};
    let protected = axum::Router::new()
        .route("/api/v1/tasks", get(routes::list_tasks))
        .route("/api/v1/tasks/{id}", get(routes::get_task))
        .route("/api/v1/tasks/{id}/log", get(routes::task_log))
        .route("/api/v1/tasks/{id}/follow", get(routes::follow_task))
        .route("/api/v1/tasks/{id}/cancel", post(routes::cancel_task))
        .route("/api/v1/jobs", get(routes::list_jobs).post(jobs::create))
        .route(
            "/api/v1/jobs/{name}",
            get(routes::get_job).put(jobs::replace).delete(jobs::delete),
        )
        .route("/api/v1/jobs/{name}/run", post(routes::run_job))
        .route(
            "/api/v1/jobs/{name}/occurrences",
            get(routes::job_occurrences),
        )
        .route(
            "/api/v1/policies",
            get(policies::list_policies).put(policies::put_policies),
        )
        .route("/metrics", get(routes::metrics))
        .route(
            "/api/v1/resources",
            get(resources::list).post(resources::add),
        )
        .route(
            "/api/v1/resources/{name}",
            get(resources::get).delete(resources::remove),
        )
        .route("/api/v1/backups", get(backups::list))
        .route("/api/v1/backups/{id}", get(backups::get))
        .route("/api/v1/backups/{id}/heal", post(maintenance::heal))
        .route("/api/v1/targets/{target}/snapshots", get(snapshots::list))
        .route(
            "/api/v1/targets/{target}/snapshots/{snapshot}/tree",
            get(snapshots::tree),
        )
        .route("/api/v1/targets/{target}/check", post(maintenance::check))
        .route("/api/v1/targets/{target}/prune", post(maintenance::prune))
        .route("/api/v1/catalog/rebuild", post(maintenance::rebuild))
        .route("/api/v1/restores", post(restores::start))
        .route("/api/v1/volumes", get(volumes::list))
        .route("/api/v1/volumes/{name}", get(volumes::get))
        .route("/api/v1/pairs", get(volumes::pairs))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&d),
            require_token,
        ));
    axum::Router::new()
        .route("/api/v1/health", get(routes::health))
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        .merge(protected)
        .fallback(|| async { Error::NotFound("no such API route".into()) })
        .with_state(d)
}
