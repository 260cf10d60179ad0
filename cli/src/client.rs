//! The HTTP client the CLI uses to talk to a manager's API.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use common::api::ApiError;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Client {
    host: String,
    agent: ureq::Agent,
    /// `Some` over TLS (`--tlsverify`).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// TLS to the API, with the docker CLI's flags and variables.
#[derive(Args, Debug, Default, Clone)]
pub struct TlsFlags {
    /// Use TLS and verify the manager (with a bundle from `shoal cert issue`).
    // Any value but "", 0, false, no, off (docker takes any non-empty one).
    #[arg(long, global = true, env = "DOCKER_TLS_VERIFY", value_parser = clap::builder::FalseyValueParser::new())]
    pub tlsverify: bool,
    /// Trust certificates signed by this CA only [default: DOCKER_CERT_PATH/ca.pem].
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// This client's certificate [default: DOCKER_CERT_PATH/cert.pem].
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// This client's key [default: DOCKER_CERT_PATH/key.pem].
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// Where the three files are by default (as the docker CLI's; ~/.docker if unset).
    #[arg(long = "cert-path", global = true, env = "DOCKER_CERT_PATH", value_name = "DIR", hide = true)]
    pub cert_path: Option<PathBuf>,
}

impl TlsFlags {
    /// Whether TLS is asked for: `--tlsverify` or any of the files.
    pub fn wanted(&self) -> bool {
        self.tlsverify || self.tlscacert.is_some() || self.tlscert.is_some() || self.tlskey.is_some()
    }

    /// The CA, certificate and key files, defaults filled in.
    pub fn files(&self) -> [PathBuf; 3] {
        let dir = self
            .cert_path
            .clone()
            .unwrap_or_else(|| std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".docker"));
        let pick = |given: &Option<PathBuf>, name: &str| given.clone().unwrap_or_else(|| dir.join(name));
        [pick(&self.tlscacert, "ca.pem"), pick(&self.tlscert, "cert.pem"), pick(&self.tlskey, "key.pem")]
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let [ca, cert, key] = self.files();
        let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
        let config =
            worker::node::api_tls::client_config(&read(&ca)?, &read(&cert)?, &read(&key)?).with_context(|| {
                format!("cannot use the TLS files {}, {}, {}", ca.display(), cert.display(), key.display())
            })?;
        Ok(Arc::new(config))
    }
}

impl Client {
    /// A client of the API at `host` (`IP:PORT`, or `tcp://IP:PORT` as docker
    /// takes it), over TLS if `tls` asks for it.
    pub fn connect(host: &str, tls: &TlsFlags) -> Result<Self> {
        let config = if tls.wanted() { Some(tls.client_config()?) } else { None };
        Ok(Client::build(host, config))
    }

    fn build(host: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let host = host.strip_prefix("tcp://").unwrap_or(host).trim_end_matches('/').to_string();
        let mut agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout_read(Duration::from_secs(60));
        if let Some(config) = &tls {
            agent = agent.tls_config(config.clone());
        }
        Client { host, agent: agent.build(), tls }
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host, path)
    }

    fn handle(&self, r: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(_, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                match serde_json::from_str::<ApiError>(&body) {
                    Ok(e) => Err(anyhow!("{}", e.message)),
                    Err(_) => Err(anyhow!("{}", body.trim())),
                }
            }
            Err(ureq::Error::Transport(t)) => Err(anyhow!(
                "cannot reach the shoal API at {}: {} (is `shoal daemon` running there? choose the manager with -H or SHOAL_HOST)",
                self.host,
                t.message().map(str::to_string).unwrap_or_else(|| t.kind().to_string())
            )),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.handle(self.agent.get(&self.url(path)).call())?;
        Ok(resp.into_json()?)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.handle(self.agent.post(&self.url(path)).send_json(body))?;
        Ok(resp.into_json()?)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.handle(self.agent.delete(&self.url(path)).call())?;
        Ok(resp.into_json()?)
    }

    /// Calls `each` for every line of an NDJSON stream until it ends.
    pub fn stream_lines<T: DeserializeOwned>(&self, path: &str, mut each: impl FnMut(T) -> Result<()>) -> Result<()> {
        let mut agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5));
        if let Some(config) = &self.tls {
            agent = agent.tls_config(config.clone());
        }
        let resp = self.handle(agent.build().get(&self.url(path)).call())?;
        let reader = std::io::BufReader::new(resp.into_reader());
        for line in reader.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            each(serde_json::from_str(&line)?)?;
        }
        Ok(())
    }
}

/// What a path segment keeps unescaped: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Path segments from user input are escaped.
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

impl Client {
    /// GETs one resource per key, as `inspect` and `ps` take several: a key
    /// that fails is reported on stderr and the others still come back. The
    /// flag says whether any failed.
    pub fn get_each<T: DeserializeOwned>(&self, keys: &[String], path: impl Fn(&str) -> String) -> (Vec<T>, bool) {
        let mut found = Vec::new();
        let mut failed = false;
        for k in keys {
            match self.get::<T>(&path(&seg(k))) {
                Ok(v) => found.push(v),
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    failed = true;
                }
            }
        }
        (found, failed)
    }

    /// DELETEs one resource per key (`rm`), printing each key removed; a
    /// failure is reported and the others still go. Non-zero if any failed.
    pub fn delete_each<T: DeserializeOwned>(
        &self,
        keys: &[String],
        path: impl Fn(&str) -> String,
    ) -> std::process::ExitCode {
        let mut code = std::process::ExitCode::SUCCESS;
        for k in keys {
            match self.delete::<T>(&path(&seg(k))) {
                Ok(_) => println!("{k}"),
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    code = std::process::ExitCode::FAILURE;
                }
            }
        }
        code
    }

    /// `inspect`: JSON by default, or each through `pretty`; non-zero if any key failed.
    pub fn inspect<T: DeserializeOwned + Serialize>(
        &self,
        keys: &[String],
        path: impl Fn(&str) -> String,
        pretty: Option<fn(&T) -> String>,
    ) -> Result<std::process::ExitCode> {
        let (found, failed) = self.get_each::<T>(keys, path);
        match pretty {
            Some(f) => found.iter().for_each(|x| print!("{}", f(x))),
            None => println!("{}", serde_json::to_string_pretty(&found)?),
        }
        Ok(if failed { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
    }
}

#[cfg(test)]
mod tests {
    use super::seg;

    #[test]
    fn segments_escape_all_but_the_unreserved_characters() {
        assert_eq!(seg("web-1_a.b~C9"), "web-1_a.b~C9");
        assert_eq!(seg("a b/c?d#e%f"), "a%20b%2Fc%3Fd%23e%25f");
        assert_eq!(seg("zürich"), "z%C3%BCrich");
        assert_eq!(seg(""), "");
    }
}
