//! The read-only status page (`[node] http`): the mesh as this node sees it
//! (each node's beacon, agents, version), the root's open incidents and its
//! last pages, at `/` as a page that refreshes itself and at `/api/mesh` as
//! JSON. No external assets (it works offline); nothing can be written.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::home::Home;

/// The page: plain HTML and a script that polls `/api/mesh` every 2 s.
const PAGE: &str = include_str!("status_page.html");

/// Owner pages shown at most.
const LAST_PAGES: usize = 20;

/// How much of the end of the page trail is read for them (the trail only grows).
const PAGES_TAIL_BYTES: u64 = 64 * 1024;

/// What `/api/mesh` answers.
#[derive(Serialize)]
struct MeshNow {
    /// The mesh view (every node's last beacon, as the root sees it).
    view: crate::beacon::MeshView,
    /// The root's unresolved incidents (on a member: none, they live on the root).
    incidents: Vec<crate::owner::Incident>,
    /// The root's last page attempts, newest last.
    pages: Vec<serde_json::Value>,
}

fn mesh_now(home: &Home) -> Result<MeshNow> {
    let incidents = crate::owner::incidents(home)?
        .into_iter()
        .filter(|i| i.state != crate::owner::IncidentState::Resolved)
        .collect();
    let text = crate::home::read_tail(&home.owner_pages_path(), PAGES_TAIL_BYTES)?;
    let lines: Vec<&str> = text.lines().collect();
    let pages = lines[lines.len().saturating_sub(LAST_PAGES)..]
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(MeshNow { view: crate::beacon::load(home), incidents, pages })
}

/// Serves the page on `addr` until `stop` is cancelled; binds before it returns.
pub async fn serve(
    home: Home,
    addr: SocketAddr,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve the status page on {addr}"))?;
    let app = Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }))
        .route(
            "/api/mesh",
            get(move || {
                let home = home.clone();
                async move {
                    match tokio::task::spawn_blocking(move || mesh_now(&home)).await {
                        Ok(Ok(now)) => axum::Json(now).into_response(),
                        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                    }
                }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not here") });
    Ok(tokio::spawn(async move {
        let shutdown = async move { stop.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "the status page stopped");
        }
    }))
}
