//! The events stream.

use actix_web::{web, HttpResponse};
use futures::StreamExt;

use super::{async_stream, manager, ApiState, Error, Result};

#[derive(serde::Deserialize)]
pub(super) struct EventsQuery {
    /// Milliseconds since the epoch: replay kept events from then on.
    since: Option<u64>,
    /// `service`, `task`, `node`, `secret` or `config` (comma-separated for several).
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// NDJSON of `Event`: the kept ones from `since`, then live ones as they happen.
pub(super) async fn events(state: web::Data<ApiState>, q: web::Query<EventsQuery>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let kinds: Option<Vec<String>> = q.kind.as_ref().map(|k| k.split(',').map(|s| s.trim().to_string()).collect());
    if let Some(bad) =
        kinds.iter().flatten().find(|k| !matches!(k.as_str(), "service" | "task" | "node" | "secret" | "config"))
    {
        return Err(Error::InvalidEventType(bad.clone()));
    }
    let wanted = move |e: &common::api::Event| kinds.as_ref().is_none_or(|k| k.contains(&e.kind));
    let (past, mut rx) = m.events.since(q.since);
    let line = |e: &common::api::Event| {
        let mut v = serde_json::to_vec(e).unwrap_or_default();
        v.push(b'\n');
        web::Bytes::from(v)
    };
    let last_seq = past.last().map(|e| e.seq).unwrap_or(0);
    let past: Vec<web::Bytes> = past.iter().filter(|e| wanted(e)).map(line).collect();
    let live = async_stream(move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.seq > last_seq && wanted(&e) => {
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "an events reader fell behind");
                }
                Err(_) => return,
            }
        }
    });
    let stream = futures::stream::iter(past).chain(live).map(Ok::<_, actix_web::Error>);
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(stream))
}
