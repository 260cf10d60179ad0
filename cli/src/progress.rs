//! Following a service until it converges (`--detach=false`), drawing
//! docker's progress display. Ctrl-C only stops the watching; the cluster
//! goes on with the work.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::api::{ServiceInfo, TaskInfo};
use common::spec::{ServiceMode, UpdateState};
use common::task::TaskState;
use common::time::Millis;

use crate::client::Client;
use crate::output;

const POLL: Duration = Duration::from_millis(200);
/// How long every task must stay running before the service counts as
/// converged (docker waits its update monitor period, 5 s by default; we
/// report failures as they come, so a shorter check is enough).
const VERIFY: Duration = Duration::from_secs(1);
/// A slot whose tasks failed this many times since the command began makes
/// the command give up (the cluster keeps trying).
const FAILURES_PER_SLOT: usize = 3;

/// The reason the API gives a rollback the user asked for.
pub const MANUAL_ROLLBACK: &str = "manually requested rollback";

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Converging,
    Converged,
    Failing(Vec<String>),
    /// The rollout paused (its reason).
    Paused(String),
    /// The rollout was rolled back and the rollback is done (its reason).
    RolledBack(String),
}

/// Pure: where the service stands, given its tasks.
pub fn assess(info: &ServiceInfo, tasks: &[TaskInfo], since: Millis) -> Verdict {
    let current = |t: &TaskInfo| t.task.spec == info.spec.task;
    let active: Vec<&TaskInfo> = tasks.iter().filter(|t| t.task.is_active()).collect();
    let running = active.iter().filter(|t| t.task.status.state == TaskState::Running && current(t)).count() as u64;
    let rollout = info.update_status.as_ref().filter(|u| u.started_at >= since.saturating_sub(1_000));
    if let Some(u) = rollout {
        if u.state.is_paused() {
            return Verdict::Paused(u.message.clone());
        }
    }
    let rolling = rollout.is_some_and(|u| u.state.is_active());
    if running == info.desired && active.len() as u64 == info.desired && !rolling {
        if let Some(u) =
            rollout.filter(|u| u.state == UpdateState::RollbackCompleted && !u.message.contains(MANUAL_ROLLBACK))
        {
            let reason = u.message.strip_prefix("rollback completed: ").unwrap_or(&u.message);
            return Verdict::RolledBack(reason.to_string());
        }
        return Verdict::Converged;
    }
    match failures(tasks, since) {
        Some(errors) => Verdict::Failing(errors),
        None => Verdict::Converging,
    }
}

struct Screen {
    tty: bool,
    drawn: usize,
    /// `--quiet`: wait, print no progress (errors still go to stderr).
    quiet: bool,
}

impl Screen {
    fn draw(&mut self, lines: &[String]) {
        if !self.tty || self.quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for l in lines {
            let _ = writeln!(out, "\x1b[2K{l}");
        }
        let _ = out.flush();
        self.drawn = lines.len();
    }

    fn finish(&mut self, lines: &[String]) {
        if self.quiet {
            return;
        }
        if self.tty {
            self.draw(lines);
        } else {
            let mut out = std::io::stdout().lock();
            for l in lines {
                let _ = writeln!(out, "{}", l.trim_end());
            }
        }
    }
}

/// Pure: whether a job's current run is done, or keeps failing.
pub fn assess_job(info: &ServiceInfo, tasks: &[TaskInfo], since: Millis) -> Verdict {
    let done = match info.spec.mode {
        ServiceMode::ReplicatedJob { total_completions, .. } => info.completed >= total_completions,
        // Every node's task complete (and at least one node had one).
        _ => info.desired == 0 && info.completed > 0,
    };
    if done {
        return Verdict::Converged;
    }
    match failures(tasks, since) {
        Some(errors) => Verdict::Failing(errors),
        None => Verdict::Converging,
    }
}

/// The failures of a slot that failed [`FAILURES_PER_SLOT`] times since
/// `since`, if one did.
fn failures(tasks: &[TaskInfo], since: Millis) -> Option<Vec<String>> {
    let mut failures: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for t in tasks {
        let s = &t.task.status;
        if matches!(s.state, TaskState::Failed | TaskState::Rejected) && t.task.created_at >= since {
            let why = s.err.clone().unwrap_or_else(|| s.state.as_str().to_string());
            failures.entry(t.task.slot).or_default().push(format!("{}: {}", t.task.name(), why));
        }
    }
    failures.into_values().find(|v| v.len() >= FAILURES_PER_SLOT)
}

/// Follows a job's current run until it completes (docker's `job complete`).
fn watch_job(c: &Client, service: &str, since: Millis, screen: &mut Screen) -> Result<ExitCode> {
    loop {
        let info: ServiceInfo = c.get(&format!("/v1/services/{service}"))?;
        let tasks: Vec<TaskInfo> = c.get(&format!("/v1/services/{service}/tasks"))?;
        let current: Vec<TaskInfo> =
            tasks.iter().filter(|t| t.task.job_iteration == info.job_iteration).cloned().collect();
        match assess_job(&info, &current, since) {
            Verdict::Converged => {
                screen.finish(&output::job_progress_lines(&info, &current, true));
                return Ok(ExitCode::SUCCESS);
            }
            Verdict::Failing(errors) => {
                screen.finish(&output::job_progress_lines(&info, &current, false));
                eprintln!("Error: tasks of job {} keep failing:", info.spec.name);
                for e in errors {
                    eprintln!("  {e}");
                }
                eprintln!(
                    "(the cluster retries as the restart policy allows; see `shoal service ps {}`)",
                    info.spec.name
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => screen.draw(&output::job_progress_lines(&info, &current, false)),
        }
        std::thread::sleep(POLL);
    }
}

pub fn watch(c: &Client, service: &str, since: Millis, quiet: bool) -> Result<ExitCode> {
    let mut screen = Screen { tty: std::io::stdout().is_terminal(), drawn: 0, quiet };
    let mut converged_at: Option<Instant> = None;
    loop {
        let info: ServiceInfo = c.get(&format!("/v1/services/{service}"))?;
        if info.job_iteration.is_some() {
            return watch_job(c, service, since, &mut screen);
        }
        let tasks: Vec<TaskInfo> = c.get(&format!("/v1/services/{service}/tasks"))?;
        let current: Vec<TaskInfo> = tasks.iter().filter(|t| t.task.spec == info.spec.task).cloned().collect();
        match assess(&info, &tasks, since) {
            Verdict::Converged => {
                let at = *converged_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= VERIFY {
                    screen.finish(&output::progress_lines(info.desired, &current, true));
                    return Ok(ExitCode::SUCCESS);
                }
                let mut lines = output::progress_lines(info.desired, &current, false);
                lines.push(output::progress_waiting_line(VERIFY.saturating_sub(at.elapsed())));
                screen.draw(&lines);
            }
            Verdict::Paused(why) => {
                screen.finish(&output::progress_lines(info.desired, &current, false));
                eprintln!("Error: service update paused: {why}");
                return Ok(ExitCode::FAILURE);
            }
            Verdict::RolledBack(why) => {
                screen.finish(&output::progress_lines(info.desired, &current, true));
                eprintln!("Error: service rolled back: {why}");
                return Ok(ExitCode::FAILURE);
            }
            Verdict::Failing(errors) => {
                screen.finish(&output::progress_lines(info.desired, &current, false));
                eprintln!("Error: tasks of service {} keep failing:", info.spec.name);
                for e in errors {
                    eprintln!("  {e}");
                }
                eprintln!("(the cluster keeps retrying; see `shoal service ps {}`)", info.spec.name);
                return Ok(ExitCode::FAILURE);
            }
            Verdict::Converging => {
                let mut lines = output::progress_lines(info.desired, &current, false);
                if let Some(u) = info.update_status.as_ref().filter(|u| u.state == UpdateState::RollbackStarted) {
                    lines.insert(0, format!("rolling back update: {}", u.message));
                }
                if converged_at.take().is_some() {
                    lines.push(output::progress_failure_line());
                }
                screen.draw(&lines);
            }
        }
        std::thread::sleep(POLL);
    }
}
