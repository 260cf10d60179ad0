//! Who may do what on the API. Over TLS (`--api-tls`) each connection
//! carries the role of the client certificate it was made with
//! ([`on_connect`] records it); on loopback or the unix socket there is no
//! certificate and everything is allowed, as before. A readonly client may
//! read, except what would let it in further (the join tokens); anything
//! else gets 403, and so does a certificate that is not a client's (a
//! node's, which the CA also signed).

use actix_web::body::EitherBody;
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::HttpResponse;
use common::api::ApiError;
use futures::future::LocalBoxFuture;
use worker::node::api_tls::{client_name, client_role, ApiRole};

/// What the TLS handshake of a connection established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// `None`: a certificate of the CA that is no client certificate.
    pub role: Option<ApiRole>,
    pub name: String,
}

/// Records the client certificate's role on a TLS connection.
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    let Some(tls) = conn.downcast_ref::<Tls>() else { return };
    // The handshake required a certificate: there is one.
    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let access = match cert {
        Some(c) => Access { role: client_role(c), name: client_name(c).unwrap_or_default() },
        None => Access { role: None, name: String::new() },
    };
    ext.insert(access);
}

/// Paths a readonly client may not read.
fn admin_only_read(path: &str) -> bool {
    // The Engine API's paths may carry a version: /v1.45/swarm.
    let unversioned = match path.strip_prefix("/v1.") {
        Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
        None => path,
    };
    unversioned.starts_with("/v1/join-tokens") || unversioned == "/swarm" || unversioned == "/swarm/unlockkey"
}

/// Why a request is refused, if it is.
pub fn refusal(access: Option<&Access>, method: &str, path: &str) -> Option<String> {
    let access = access?;
    match access.role {
        None => Some("this certificate is not an API client certificate (see `shoal cert issue`)".into()),
        Some(ApiRole::Admin) => None,
        Some(role @ ApiRole::Readonly) => {
            if !role.allows(method) || admin_only_read(path) {
                Some(format!("the certificate of {:?} is readonly: {method} {path} is not allowed", access.name))
            } else {
                None
            }
        }
    }
}

/// The middleware (`App::wrap_fn`) that applies [`refusal`].
pub fn check<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: actix_web::dev::Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    match refusal(req.conn_data::<Access>(), req.method().as_str(), req.path()) {
        Some(message) => {
            tracing::info!(method = %req.method(), path = req.path(), "api request refused: {message}");
            let resp = HttpResponse::Forbidden().json(ApiError { message });
            let resp = req.into_response(resp).map_into_right_body();
            Box::pin(async move { Ok(resp) })
        }
        None => {
            let call = srv.call(req);
            Box::pin(async move { Ok(call.await?.map_into_left_body()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readonly_reads_admin_does_all_and_a_node_certificate_nothing() {
        let who = |role| Access { role, name: "alice".into() };
        let (admin, ro, node) = (who(Some(ApiRole::Admin)), who(Some(ApiRole::Readonly)), who(None));
        assert_eq!(refusal(None, "POST", "/v1/services"), None, "loopback: as before");
        assert_eq!(refusal(Some(&admin), "DELETE", "/v1/services/web"), None);
        assert_eq!(refusal(Some(&admin), "GET", "/v1/join-tokens"), None);
        assert_eq!(refusal(Some(&ro), "GET", "/v1/services"), None);
        assert_eq!(refusal(Some(&ro), "HEAD", "/_ping"), None);
        assert_eq!(refusal(Some(&ro), "GET", "/v1.45/services"), None);
        assert_eq!(
            refusal(Some(&ro), "POST", "/v1/services").as_deref(),
            Some("the certificate of \"alice\" is readonly: POST /v1/services is not allowed")
        );
        for path in ["/v1/join-tokens", "/swarm", "/v1.45/swarm", "/v1.24/swarm/unlockkey"] {
            assert!(refusal(Some(&ro), "GET", path).is_some(), "{path}");
        }
        assert_eq!(
            refusal(Some(&node), "GET", "/v1/services").as_deref(),
            Some("this certificate is not an API client certificate (see `shoal cert issue`)")
        );
    }
}
