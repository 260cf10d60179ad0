//! The Docker Engine API's clients, pointed at a shoal manager: the stock
//! docker CLIs on this machine, raw HTTP for what dashboards call, and the
//! Docker SDKs for Python and Go.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::docker::failed_status;
use crate::env::is_ci;
use crate::process::{describe, run_with_timeout, Output};

/// The docker CLIs on this machine, newest first: a current one in
/// `/usr/local/bin` if the machine has it, then Debian's `docker.io` client.
pub fn docker_clients() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in ["/usr/local/bin/docker", "/usr/bin/docker"] {
        let p = PathBuf::from(p);
        if p.is_file() && !out.iter().any(|o: &PathBuf| same_file(o, &p)) {
            out.push(p);
        }
    }
    if out.is_empty() && is_ci() {
        panic!("no docker CLI found: deploy/install-deps.sh installs Debian's docker.io");
    }
    out
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// One docker CLI talking to one shoal API (`DOCKER_HOST=tcp://…`).
#[derive(Clone, Debug)]
pub struct EngineCli {
    pub bin: PathBuf,
    /// `tcp://IP:PORT` or `unix:///path`.
    pub host: String,
}

impl EngineCli {
    pub fn new(bin: &Path, host: &str) -> Self {
        EngineCli { bin: bin.to_path_buf(), host: host.to_string() }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        // A config dir of its own: no credentials, contexts or plugins of the machine's.
        let config = std::env::temp_dir().join("shoal-test-docker-config");
        let _ = std::fs::create_dir_all(&config);
        cmd.env("DOCKER_HOST", &self.host).env("DOCKER_CONFIG", config).env_remove("DOCKER_CONTEXT");
        cmd
    }

    /// Runs the CLI with `args` (at most `timeout`).
    pub fn run_for(&self, timeout: Duration, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        match run_with_timeout(&mut cmd, timeout) {
            Ok(out) => out,
            Err(e) => Output { cmd: describe(&cmd), status: failed_status(), stdout: String::new(), stderr: e },
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_for(Duration::from_secs(120), args)
    }

    /// Runs `sh -c script` with this CLI first on PATH as `docker`.
    pub fn sh(&self, script: &str) -> Output {
        let dir = self.bin.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let mut cmd = self.command();
        cmd.env("PATH", format!("{dir}:{}", std::env::var("PATH").unwrap_or_default()));
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(script);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        match run_with_timeout(&mut sh, Duration::from_secs(120)) {
            Ok(out) => out,
            Err(e) => Output { cmd: describe(&sh), status: failed_status(), stdout: String::new(), stderr: e },
        }
    }

    /// Stdout of a command that must succeed.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.run(args).ok().stdout
    }

    /// The command fails and its stderr contains `needle`.
    #[track_caller]
    pub fn fails(&self, args: &[&str], needle: &str) {
        let out = self.run(args);
        assert!(!out.success() && out.stderr.contains(needle), "expected failure with {needle:?}: {out}");
    }

    /// The client's own version (`docker version --format`).
    pub fn client_version(&self) -> String {
        self.run(&["version", "--format", "{{.Client.Version}}"]).stdout.trim().to_string()
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request to `addr` (`IP:PORT`), `Connection: close`.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<HttpReply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some(b) = body {
        // The server may answer (and close) before reading a body it refuses.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw).ok_or_else(|| std::io::Error::other(format!("bad HTTP reply: {}", String::from_utf8_lossy(&raw))))
}

fn parse_reply(raw: &[u8]) -> Option<HttpReply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body)?;
    }
    Some(HttpReply { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Whether `python3` can import the Docker SDK (`docker` from PyPI,
/// installed by deploy/install-deps.sh). Missing under CI=true fails the
/// test; elsewhere it prints a skip notice and returns false.
pub fn require_python_sdk() -> bool {
    let out = Command::new("python3").args(["-c", "import docker; print(docker.__version__)"]).output();
    match out {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            if is_ci() {
                panic!(
                    "the Docker SDK for Python is required when CI=true (deploy/install-deps.sh installs it): {why}"
                );
            }
            eprintln!("!!! SKIPPED: the Docker SDK for Python is not importable ({why})");
            false
        }
    }
}

/// Builds `tests/go/NAME` with the Go toolchain and the Docker Go SDK from
/// Debian's packages (`golang-go`, `golang-github-docker-docker-dev`, in
/// GOPATH mode: no module proxy is needed) into `out`, and returns the
/// binary. Missing Go under CI=true fails the test; elsewhere it prints a
/// skip notice and returns `None`.
pub fn build_go_program(name: &str, out: &Path) -> Option<PathBuf> {
    const GOPATH: &str = "/usr/share/gocode";
    let sdk = Path::new(GOPATH).join("src/github.com/docker/docker/client");
    let have_go = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success());
    if !have_go || !sdk.is_dir() {
        let why = if have_go { format!("no Docker Go SDK at {}", sdk.display()) } else { "no `go`".into() };
        if is_ci() {
            panic!("Go and the Docker Go SDK are required when CI=true (deploy/install-deps.sh installs them): {why}");
        }
        eprintln!("!!! SKIPPED: {why}");
        return None;
    }
    let bin = out.join(name);
    let src = crate::workspace_root().join("tests/go").join(name);
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOFLAGS", "")
        .env("GOCACHE", out.join("gocache"));
    let built = run_with_timeout(&mut cmd, Duration::from_secs(600)).expect("go build runs");
    assert!(built.success(), "go build of tests/go/{name}: {built}");
    Some(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_plain_and_chunked() {
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\n\r\nOK").unwrap();
        assert_eq!((r.status, r.header("api-version"), r.text().as_str()), (200, Some("1.47"), "OK"));
        let r = parse_reply(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "abcde"));
        assert!(parse_reply(b"garbage").is_none());
    }
}
