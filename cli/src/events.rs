//! `shoal events`: the cluster's event stream, as lines or JSON.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use common::api::Event;
use common::time::{now_ms, parse_duration, Millis};

use crate::client::Client;

/// `10m` (that long ago), RFC 3339, or Unix seconds → epoch milliseconds.
pub fn parse_since(s: &str, now: Millis) -> Result<Millis> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs * 1000);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0));
    }
    let ago = parse_duration(s)
        .map_err(|_| anyhow!("invalid --since {s:?}: expected a duration (10m), RFC 3339 time or Unix seconds"))?;
    Ok(now.saturating_sub(ago.as_millis() as u64))
}

/// `2026-11-22T02:55:00.123Z task running 4b8p… (name=web.1, node=node2)`
pub fn format_event(e: &Event) -> String {
    let when = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.time));
    let mut attrs = vec![format!("name={}", e.name)];
    if let Some(n) = &e.node {
        attrs.push(format!("node={n}"));
    }
    if !e.message.is_empty() {
        attrs.push(e.message.clone());
    }
    format!("{when} {} {} {} ({})", e.kind, e.action, e.id, attrs.join(", "))
}

pub fn run(c: &Client, since: Option<String>, filter: Vec<String>, format: Option<String>) -> Result<ExitCode> {
    let json = match format.as_deref() {
        None => false,
        Some("json") => true,
        Some(f) => bail!("unknown format {f:?}: only json is supported"),
    };
    let mut kinds = Vec::new();
    for f in &filter {
        match f.split_once('=') {
            Some(("type", v)) if matches!(v, "service" | "task" | "node") => kinds.push(v.to_string()),
            _ => bail!("invalid filter {f:?}: expected type=service, type=task or type=node"),
        }
    }
    let mut path = "/v1/events?".to_string();
    if let Some(s) = since {
        path.push_str(&format!("since={}&", parse_since(&s, now_ms())?));
    }
    if !kinds.is_empty() {
        path.push_str(&format!("type={}", kinds.join(",")));
    }
    let stdout = std::io::stdout();
    c.stream_lines::<Event>(&path, |e| {
        let mut out = stdout.lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
        } else {
            writeln!(out, "{}", format_event(&e))?;
        }
        out.flush()?;
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_since("10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("2023-11-14T22:13:20Z", now).unwrap(), 1_700_000_000_000);
        assert!(parse_since("yesterday-ish", now).is_err());
    }

    #[test]
    fn lines_read_like_docker_events() {
        let e = Event {
            seq: 3,
            time: 1_700_000_000_123,
            kind: "task".into(),
            action: "failed".into(),
            id: "abc".into(),
            name: "web.1".into(),
            node: Some("node2".into()),
            message: "task: non-zero exit (1)".into(),
        };
        assert_eq!(
            format_event(&e),
            "2023-11-14T22:13:20.123Z task failed abc (name=web.1, node=node2, task: non-zero exit (1))"
        );
    }
}
