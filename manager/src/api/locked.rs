//! The API of a locked manager (autolock): its raft files are encrypted
//! with a key only the operator holds, so nothing runs yet but this. Every
//! route answers 503 with what to do; `POST /v1/unlock` (what `shoal
//! unlock` calls) takes the unlock key and, when it opens the data key,
//! hands that key back so the node can start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use common::api::ApiError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use worker::node::seal::SealKey;

use crate::raft::storage::keys::{open_data_key, DataKey, KeyError};

pub const UNLOCK_PATH: &str = "/v1/unlock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlockRequest {
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnlockResponse {
    pub message: String,
}

struct Locked {
    raft_dir: PathBuf,
    unlocked: Mutex<Option<oneshot::Sender<DataKey>>>,
}

fn answer(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(ApiError { message: message.into() })
}

async fn unlock(state: web::Data<Arc<Locked>>, body: web::Json<UnlockRequest>) -> HttpResponse {
    let key: SealKey = match body.key.parse() {
        Ok(k) => k,
        Err(e) => return answer(StatusCode::BAD_REQUEST, format!("invalid unlock key: {e}")),
    };
    match open_data_key(&state.raft_dir, Some(&key), false) {
        Ok(opened) => {
            if let Some(tx) = state.unlocked.lock().take() {
                let _ = tx.send(opened.key);
            }
            tracing::info!("manager unlocked");
            HttpResponse::Ok().json(UnlockResponse { message: "unlocked: the manager is starting".into() })
        }
        Err(e @ KeyError::WrongKey(_)) => {
            tracing::warn!(error = %e, "refused an unlock attempt");
            answer(StatusCode::UNAUTHORIZED, format!("{e}; the manager stays locked"))
        }
        Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn refuse() -> HttpResponse {
    answer(StatusCode::SERVICE_UNAVAILABLE, KeyError::Locked.to_string())
}

/// Serves the locked API on `addr` until an unlock key opens the data key
/// of `raft_dir`; returns that data key (the server is stopped by then).
pub async fn serve_until_unlocked(addr: SocketAddr, raft_dir: PathBuf) -> std::io::Result<DataKey> {
    let (tx, rx) = oneshot::channel();
    let state = web::Data::new(Arc::new(Locked { raft_dir, unlocked: Mutex::new(Some(tx)) }));
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .route(UNLOCK_PATH, web::post().to(unlock))
            .default_service(web::to(refuse))
    })
    .workers(1)
    .shutdown_timeout(1)
    // One request per connection, as the unlocked API (see `limits`).
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .bind(addr)?
    .run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    tracing::warn!(api = %addr, "{}", KeyError::Locked);
    let key = rx.await.map_err(|_| std::io::Error::other("the locked API stopped"))?;
    handle.stop(true).await;
    let _ = running.await;
    Ok(key)
}
