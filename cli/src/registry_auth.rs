//! `--with-registry-auth`: the CLI's login for an image's registry, read
//! from the docker CLI's config (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`), as `docker service create/update` sends it.
//!
//! Only logins kept in the file itself (`auths.<registry>.auth`, base64
//! `user:password`, or `username`/`password`) are read; a registry whose
//! login is in a credential helper (`credsStore`, `credHelpers`) is refused
//! with the reason, as is an identity token.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use common::container::RegistryAuth;
use serde::Deserialize;

/// The key docker's config uses for Docker Hub.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The registry an image reference names, as docker's reference parser
/// splits it: the first path part when it looks like a host (has `.` or
/// `:`, is `localhost`, or has capitals), else Docker Hub.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first => {
            first.to_string()
        }
        _ => DOCKER_HUB.to_string(),
    }
}

/// docker's `ConvertToHostname`: a config key without scheme or path.
fn hostname(key: &str) -> &str {
    let k = key.strip_prefix("http://").or_else(|| key.strip_prefix("https://")).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir).join("config.json")),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json")),
    }
}

/// The login for `image`'s registry from the docker config, `None` when it
/// holds none (docker then sends an empty one: the pull goes without).
pub fn for_image(image: &str) -> Result<Option<RegistryAuth>> {
    let Some(path) = config_path() else { return Ok(None) };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("open {}: {e}", path.display())),
    };
    let config: ConfigFile = serde_json::from_slice(&text)
        .with_context(|| format!("loading config file {}: invalid JSON", path.display()))?;
    lookup(&config, &registry_of(image))
}

fn lookup(config: &ConfigFile, registry: &str) -> Result<Option<RegistryAuth>> {
    let host = hostname(registry);
    let entry =
        config.auths.get(registry).or_else(|| config.auths.iter().find(|(k, _)| hostname(k) == host).map(|e| e.1));
    let helper = config.cred_helpers.get(host).or(config.creds_store.as_ref()).filter(|h| !h.is_empty());
    let Some(entry) = entry else {
        if let Some(h) = helper {
            bail!(helper_refused(h, host));
        }
        return Ok(None);
    };
    let (username, password) = match (&entry.auth, &entry.username, &entry.password) {
        (Some(a), _, _) if !a.is_empty() => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| anyhow!("invalid auth configuration file: the auth of {host} is not base64"))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow!("invalid auth configuration file: the auth of {host} is not text"))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| anyhow!("invalid auth configuration file: the auth of {host} is not user:password"))?;
            (u.to_string(), p.to_string())
        }
        (_, Some(u), Some(p)) if !u.is_empty() => (u.clone(), p.clone()),
        _ => {
            if let Some(h) = helper {
                bail!(helper_refused(h, host));
            }
            if entry.identitytoken.as_deref().is_some_and(|t| !t.is_empty()) {
                bail!("--with-registry-auth: the login for {host} is an identity token, which shoal does not send; log in with a password");
            }
            return Ok(None);
        }
    };
    Ok(Some(RegistryAuth { username, password, server_address: registry.to_string() }))
}

fn helper_refused(helper: &str, host: &str) -> String {
    format!(
        "--with-registry-auth: the login for {host} is kept by the credential helper docker-credential-{helper}, \
         which shoal does not run; keep it in config.json (\"auths\") instead"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ConfigFile {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_image_names_its_registry_as_docker_splits_it() {
        assert_eq!(registry_of("busybox"), DOCKER_HUB);
        assert_eq!(registry_of("library/busybox:1"), DOCKER_HUB);
        assert_eq!(registry_of("127.0.0.1:5000/shoal/busybox"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("ghcr.io/a/b@sha256:00"), "ghcr.io");
    }

    #[test]
    fn the_login_is_found_by_key_or_by_hostname() {
        // "alice:s3cret"
        let c = config(r#"{"auths":{"https://127.0.0.1:5000/v2/":{"auth":"YWxpY2U6czNjcmV0"}}}"#);
        let a = lookup(&c, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("alice", "s3cret"));
        assert_eq!(a.server_address, "127.0.0.1:5000");
        assert!(lookup(&c, "127.0.0.1:5001").unwrap().is_none());
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn a_helper_or_a_bad_entry_is_refused_with_the_reason() {
        let c = config(r#"{"auths":{"r.io":{}},"credsStore":"pass"}"#);
        assert_eq!(
            lookup(&c, "r.io").unwrap_err().to_string(),
            "--with-registry-auth: the login for r.io is kept by the credential helper docker-credential-pass, \
             which shoal does not run; keep it in config.json (\"auths\") instead"
        );
        let c = config(r#"{"auths":{"r.io":{"auth":"bm9jb2xvbg=="}}}"#);
        assert_eq!(
            lookup(&c, "r.io").unwrap_err().to_string(),
            "invalid auth configuration file: the auth of r.io is not user:password"
        );
    }
}
