//! The web view's page, snapshot and stream (the view itself is `crate::ui`).

use std::time::Instant;

use actix_web::{web, HttpResponse};
use common::time::now_ms;
use futures::StreamExt;

use super::{async_stream, manager, node_infos, ApiState, Result};
use crate::{ui, Manager};

fn ui_state(state: &ApiState, m: &Manager) -> common::api::UiState {
    let nodes = node_infos(state, m);
    ui::snapshot(&m.store.read(), nodes, now_ms())
}

pub(super) async fn ui_snapshot(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(ui_state(&state, m)))
}

/// Server-sent events: `snapshot` first, then a `patch` whenever what the
/// page shows changed (store events wake it; see `crate::ui` for the pacing).
pub(super) async fn ui_stream(state: web::Data<ApiState>) -> Result<HttpResponse> {
    let m = manager(&state)?.clone();
    // Subscribed before the first look, so no change falls between them.
    let (_, mut rx) = m.events.since(None);
    let body = async_stream(move |tx| async move {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut last = ui_state(&state, &m);
        let mut first = format!("retry: {}\n", ui::RETRY_MS).into_bytes();
        first.extend(ui::sse("snapshot", &last));
        if tx.send(first.into()).await.is_err() {
            return;
        }
        let mut sent_at = Instant::now();
        loop {
            tokio::select! {
                r = rx.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                }
                _ = tokio::time::sleep(ui::REFRESH) => {}
            }
            if let Some(wait) = ui::MIN_GAP.checked_sub(sent_at.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            // Whatever else arrived meanwhile is in the look we take now.
            while !matches!(rx.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
            let next = ui_state(&state, &m);
            let chunk = match ui::diff(&last, &next) {
                Some(patch) => ui::sse("patch", &patch),
                None if sent_at.elapsed() >= ui::KEEPALIVE => b": keepalive\n\n".to_vec(),
                None => continue,
            };
            last = next;
            if tx.send(chunk.into()).await.is_err() {
                return;
            }
            sent_at = Instant::now();
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body.map(Ok::<_, actix_web::Error>)))
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    // no-cache: a browser revalidates, so a new binary's page shows at once.
    HttpResponse::Ok().content_type(content_type).insert_header(("Cache-Control", "no-cache")).body(body)
}

pub(super) async fn ui_page() -> HttpResponse {
    asset("text/html; charset=utf-8", ui::INDEX_HTML)
}

pub(super) async fn ui_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", ui::APP_JS)
}

pub(super) async fn ui_css() -> HttpResponse {
    asset("text/css; charset=utf-8", ui::STYLE_CSS)
}

pub(super) async fn to_ui() -> HttpResponse {
    HttpResponse::Found().insert_header(("Location", "/ui")).finish()
}
