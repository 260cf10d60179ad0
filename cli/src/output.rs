//! What the CLI prints for a person: the tables of `node ls`, `service ls`
//! and `service ps`, the context prefix of `service logs` lines, and the
//! progress display of `service create/update --detach=false`.
//!
//! Every function is pure: API bodies in (and `now` where an age is shown),
//! text out. The text is docker/cli's, byte for byte, trailing spaces
//! included; the golden tests at the bottom pin it.
//!
//! Tables are laid out the way docker's formatter does it: a tabwriter with
//! minimum cell width 10 and padding 3, so every column but the last is
//! padded, even when empty (hence the trailing spaces after an empty ERROR or
//! PORTS). Rows are sorted in natural order, so `web.2` comes before `web.10`.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeMap;
use std::time::Duration;

use common::api::{FileInfo, LogEntry, NodeInfo, ServiceInfo, TaskInfo};
use common::secret::Kind;
use common::spec::ServiceMode;
use common::task::{Task, TaskState};
use common::time::{human_duration, Millis};

// ---------------------------------------------------------------------------
// Tables

/// docker/cli: `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`.
const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// Lays rows out like Go's tabwriter with docker's settings. Each cell but
/// the last of a row is a column cell: it is padded to the column's width,
/// the widest cell plus padding, at least `MIN_WIDTH`. The last cell is
/// written as it is. (Go forms columns from runs of lines; every row here has
/// as many cells as the header, so a column spans the whole table.)
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len() - 1;
    let width = |s: &str| s.chars().count();
    let mut widths = vec![MIN_WIDTH; columns];
    for (j, w) in widths.iter_mut().enumerate() {
        let widest = rows.iter().map(|r| width(&r[j])).chain([width(header[j])]).max().unwrap_or(0);
        *w = (*w).max(widest + PADDING);
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        debug_assert_eq!(row.len(), columns + 1);
        for (j, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if j < columns {
                out.extend(std::iter::repeat_n(' ', widths[j] - width(cell)));
            }
        }
        out.push('\n');
    }
    out
}

/// One line per item, as docker's `-q` prints (`{{.ID}}`, no table).
fn lines<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    let mut out = String::new();
    for i in items {
        out.push_str(i.as_ref());
        out.push('\n');
    }
    out
}

/// `sortorder.NaturalLess` (github.com/fvbommel/sortorder), which docker uses
/// for hostnames, service names and task names: runs of ASCII digits compare
/// as numbers (fewer leading zeros first on a tie), the rest bytewise.
fn natural_less(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (da, db) = (a[i].is_ascii_digit(), b[j].is_ascii_digit());
        if da != db {
            // The non-digit run that ended first sorts first.
            return da;
        }
        if !da {
            if a[i] != b[j] {
                return a[i] < b[j];
            }
            i += 1;
            j += 1;
            continue;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let (nz_a, nz_b) = (i, j);
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (na, nb) = (&a[nz_a..i], &b[nz_b..j]);
        if na.len() != nb.len() {
            return na.len() < nb.len();
        }
        if na != nb {
            return na < nb;
        }
        if nz_a != nz_b {
            return nz_a < nz_b;
        }
    }
    a.len() < b.len()
}

fn natural_cmp(a: &str, b: &str) -> Ordering {
    if natural_less(a, b) {
        Ordering::Less
    } else if natural_less(b, a) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// docker/cli `formatter.Ellipsis`: at most `max` characters, the last one
/// `…` when cut. Characters count as one column each (docker counts East
/// Asian wide ones as two).
fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An image as docker's tables show it: a tagged reference loses its digest
/// and the implicit `docker.io/library/` (`docker.io/library/redis:7@sha256:…`
/// → `redis:7`); anything without a tag is shown as given.
fn display_image(image: &str) -> String {
    let named = image.split_once('@').map_or(image, |(n, _)| n);
    let last_part = named.rfind('/').map_or(0, |i| i + 1);
    if !named[last_part..].contains(':') {
        return image.to_string();
    }
    for domain in ["docker.io/", "index.docker.io/"] {
        if let Some(path) = named.strip_prefix(domain) {
            return match path.strip_prefix("library/") {
                Some(short) if !short.contains('/') => short.to_string(),
                _ => path.to_string(),
            };
        }
    }
    named.to_string()
}

/// `docker node ls`, without docker's last column, ENGINE VERSION (a node
/// reports none). The node answering is marked `*` after its ID.
pub fn node_ls(nodes: &[NodeInfo]) -> String {
    let rows: Vec<Vec<String>> = sorted_nodes(nodes)
        .into_iter()
        .map(|n| {
            vec![
                // docker's template: `{{.ID}} {{if .Self}}*{{else}} {{end}}`
                format!("{} {}", n.node.id, if n.is_self { "*" } else { " " }),
                n.node.hostname.clone(),
                n.status.to_string(),
                n.node.availability.to_string(),
                match &n.disk_alarm {
                    // Where an operator looks for a manager's trouble.
                    Some(_) if n.manager_status.is_empty() => "(disk full)".to_string(),
                    Some(_) => format!("{} (disk full)", n.manager_status),
                    None => n.manager_status.clone(),
                },
            ]
        })
        .collect();
    table(&["ID  ", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"], &rows)
}

/// `docker node ls -q`: full node IDs, in the order of `node_ls`.
pub fn node_ls_quiet(nodes: &[NodeInfo]) -> String {
    lines(sorted_nodes(nodes).into_iter().map(|n| n.node.id.as_str()))
}

fn sorted_nodes(nodes: &[NodeInfo]) -> Vec<&NodeInfo> {
    let mut nodes: Vec<&NodeInfo> = nodes.iter().collect();
    nodes.sort_by(|a, b| natural_cmp(&a.node.hostname, &b.node.hostname).then_with(|| a.node.id.cmp(&b.node.id)));
    nodes
}

/// `docker service ls`: short IDs, sorted by name; PORTS as `*:8080->80/tcp`.
/// `docker secret ls` (`ID NAME DRIVER CREATED UPDATED`) and `docker
/// config ls` (no DRIVER), by name.
pub fn files_ls(kind: Kind, items: &[FileInfo], now: Millis) -> String {
    let ago = |at: Millis| format!("{} ago", human_duration(Duration::from_millis(now.saturating_sub(at))));
    let mut sorted: Vec<&FileInfo> = items.iter().collect();
    sorted.sort_by(|a, b| if natural_less(&a.name, &b.name) { Ordering::Less } else { Ordering::Greater });
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|f| match kind {
            Kind::Secret => vec![f.id.clone(), f.name.clone(), String::new(), ago(f.created_at), ago(f.updated_at)],
            Kind::Config => vec![f.id.clone(), f.name.clone(), ago(f.created_at), ago(f.updated_at)],
        })
        .collect();
    match kind {
        Kind::Secret => table(&["ID", "NAME", "DRIVER", "CREATED", "UPDATED"], &rows),
        Kind::Config => table(&["ID", "NAME", "CREATED", "UPDATED"], &rows),
    }
}

pub fn files_ls_quiet(items: &[FileInfo]) -> String {
    lines(items.iter().map(|f| f.id.as_str()))
}

pub fn service_ls(services: &[ServiceInfo]) -> String {
    let rows: Vec<Vec<String>> = sorted_services(services)
        .into_iter()
        .map(|s| {
            // docker's REPLICAS column: a job shows its completions too.
            let replicas = match s.spec.mode {
                ServiceMode::ReplicatedJob { total_completions, .. } => {
                    format!("{}/{} ({}/{} completed)", s.running, s.desired, s.completed, total_completions)
                }
                ServiceMode::GlobalJob => {
                    format!("{}/{} ({}/{} completed)", s.running, s.desired, s.completed, s.desired + s.completed)
                }
                _ => format!("{}/{}", s.running, s.desired),
            };
            vec![
                s.id.short().to_string(),
                s.spec.name.clone(),
                // docker writes `replicated job`, `global job`.
                s.spec.mode.name().replace('-', " "),
                replicas,
                display_image(&s.spec.task.image),
                s.spec.task.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows)
}

/// `docker service ls -q`: short service IDs, in the order of `service_ls`.
pub fn service_ls_quiet(services: &[ServiceInfo]) -> String {
    lines(sorted_services(services).into_iter().map(|s| s.id.short()))
}

fn sorted_services(services: &[ServiceInfo]) -> Vec<&ServiceInfo> {
    let mut services: Vec<&ServiceInfo> = services.iter().collect();
    services.sort_by(|a, b| natural_cmp(&a.spec.name, &b.spec.name).then_with(|| a.id.cmp(&b.id)));
    services
}

/// `docker service ps`. Tasks are grouped by `name.slot` (natural order),
/// newest first within a slot; the older tasks of a slot are indented as
/// ` \_ name.slot`. Unless `no_trunc`, IDs are cut to 12 characters, images
/// lose their digest and errors are cut to 30 characters.
pub fn service_ps(tasks: &[TaskInfo], now: Millis, no_trunc: bool) -> String {
    let mut rows = Vec::new();
    let mut previous = String::new();
    for t in sorted_tasks(tasks) {
        let task = &t.task;
        let name = task.name();
        let shown_name = if name == previous { format!(" \\_ {name}") } else { name.clone() };
        previous = name;
        let age = Duration::from_millis(now.saturating_sub(task.status.timestamp));
        let err = task.status.err.as_deref().unwrap_or("");
        let err = if no_trunc { err.to_string() } else { ellipsis(err, 30) };
        rows.push(vec![
            if no_trunc { task.id.to_string() } else { task.id.short().to_string() },
            shown_name,
            if no_trunc { task.spec.image.clone() } else { display_image(&task.spec.image) },
            node_name(t),
            task.shown_desired_state().title(),
            format!("{}{} {} ago", task.status.state.title(), health_note(task), human_duration(age).to_lowercase()),
            if err.is_empty() { err } else { format!("\"{err}\"") },
            String::new(),
        ]);
    }
    table(&["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"], &rows)
}

/// ` (healthy)` after the state of a running task whose health check
/// passes, as `docker ps` marks such a container.
fn health_note(task: &common::task::Task) -> String {
    match task.status.health {
        Some(h) if task.status.state == TaskState::Running => format!(" ({})", h.as_str()),
        _ => String::new(),
    }
}

/// `docker service ps -q`: full task IDs (docker never truncates them with
/// `-q`), in the order of `service_ps`.
pub fn service_ps_quiet(tasks: &[TaskInfo]) -> String {
    lines(sorted_tasks(tasks).into_iter().map(|t| t.task.id.as_str()))
}

fn sorted_tasks(tasks: &[TaskInfo]) -> Vec<&TaskInfo> {
    let mut tasks: Vec<&TaskInfo> = tasks.iter().collect();
    tasks.sort_by(|a, b| {
        natural_cmp(&a.task.name(), &b.task.name()).then_with(|| b.task.created_at.cmp(&a.task.created_at))
    });
    tasks
}

/// The node's hostname; its ID if the node is gone (as docker's resolver
/// falls back to); empty before the task is placed.
fn node_name(t: &TaskInfo) -> String {
    match (&t.node_hostname, &t.task.node_id) {
        (Some(h), _) => h.clone(),
        (None, Some(id)) => id.to_string(),
        (None, None) => String::new(),
    }
}

// ---------------------------------------------------------------------------
// Logs

/// The context docker's `service logs` puts before each line:
/// `name.slot.taskid@node    | `, the task ID cut to 12 characters unless
/// `no_trunc`. The slot number is padded to the width of `replicas` (the
/// service's replica count; pass 0 for a single task) so that the `|` lines
/// up across slots, as docker does; node names are not padded.
/// How `service logs` prints a line (its flags, as docker's).
#[derive(Clone, Debug, Default)]
pub struct LogFormat {
    /// `-t`: the entry's timestamp first.
    pub timestamps: bool,
    /// `--no-trunc`: whole task ids.
    pub no_trunc: bool,
    /// `--no-task-ids`: `name.slot@node`.
    pub no_task_ids: bool,
    /// `--no-resolve`: the service's and node's ids instead of their names.
    pub no_resolve: Option<String>,
    /// `--raw`: the line alone, no context.
    pub raw: bool,
    /// The service's replica count (slots are padded to its width).
    pub replicas: u64,
}

#[cfg(test)]
pub fn log_prefix(entry: &LogEntry, no_trunc: bool, replicas: u64) -> String {
    log_context(entry, &LogFormat { no_trunc, replicas, ..LogFormat::default() })
}

/// The context before a line: `web.1.6n4rm0uwc0kq@node-1    | `.
fn log_context(entry: &LogEntry, f: &LogFormat) -> String {
    let id = if f.no_trunc { entry.task_id.as_str() } else { entry.task_id.short() };
    let node = match (&f.no_resolve, &entry.node_id) {
        (Some(_), Some(n)) => n.to_string(),
        _ => entry.node.clone(),
    };
    let task = if f.no_task_ids { String::new() } else { format!(".{id}") };
    if entry.slot == 0 && !entry.task_name.is_empty() {
        // A global task: `name.node-id.taskid@node`.
        return format!("{}{task}@{node}    | ", entry.task_name);
    }
    let service = f.no_resolve.as_deref().unwrap_or(&entry.service_name);
    let pad = digits(f.replicas).saturating_sub(digits(entry.slot));
    format!("{service}.{}{task}@{node}{}    | ", entry.slot, " ".repeat(pad))
}

/// One line of `service logs`, without its newline. With `timestamps` (`-t`)
/// the entry's timestamp comes first, before the context, as in docker.
#[cfg(test)]
pub fn format_log_line(entry: &LogEntry, timestamps: bool, no_trunc: bool, replicas: u64) -> String {
    format_log(entry, &LogFormat { timestamps, no_trunc, replicas, ..LogFormat::default() })
}

/// One line of `service logs` as `f` asks, without its newline.
pub fn format_log(entry: &LogEntry, f: &LogFormat) -> String {
    let mut out = String::new();
    if f.timestamps {
        out.push_str(&entry.timestamp);
        out.push(' ');
    }
    if !f.raw {
        out.push_str(&log_context(entry, f));
    }
    let line = entry.line.strip_suffix('\n').unwrap_or(&entry.line);
    out.push_str(line.strip_suffix('\r').unwrap_or(line));
    out
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}

// ---------------------------------------------------------------------------
// Progress

/// docker/cli progress.go: a task's state as a step towards running.
/// Orphaned is not on the scale: such tasks are left out. (docker's
/// `allocated` is step 2; shoal has no such state.)
fn progress_step(state: TaskState) -> Option<u64> {
    use TaskState::*;
    Some(match state {
        New => 1,
        Pending => 3,
        Assigned => 4,
        Accepted => 5,
        Preparing => 6,
        Ready => 7,
        Starting => 8,
        Running => 9,
        Complete => 10,
        Shutdown => 11,
        Failed => 12,
        Rejected => 13,
        Orphaned => return None,
    })
}

const MAX_PROGRESS: u64 = 9;
/// Above this many replicas only the overall line is drawn.
const MAX_PROGRESS_BARS: u64 = 20;
/// The longest state name a bar can show (`allocated`, `preparing`).
const LONGEST_STATE: usize = 9;
/// docker cuts errors so that a line fits a narrow terminal.
const MAX_ERROR_WIDTH: usize = 75;

/// What `service create/update --detach=false` shows for a replicated
/// service, as docker draws it on a wide terminal: one line per progress
/// record, each ending in a space as docker's do (redraw them all on every
/// poll). Below 111 columns docker leaves the bars out; these keep them.
///
/// ```text
/// overall progress: 1 out of 3 tasks
/// 1/3: running   [==================================================>]
/// 2/3: preparing [=================================>                 ]
/// 3/3: no suitable node (scheduling constraints not satisfied on 3 nodes)
/// verify: Service converged
/// ```
///
/// One line per slot up to 20 replicas; a slot shows its task's error if it
/// has one, else a bar for its state. Per slot the task shown is the one
/// with the lowest desired state, then the lowest observed state (docker's
/// choice), then the newest. `converged` adds the final `verify` line; see
/// [`progress_waiting_line`] for the line shown while stability is checked.
pub fn progress_lines(replicas: u64, tasks: &[TaskInfo], converged: bool) -> Vec<String> {
    let by_slot = tasks_by_slot(tasks);
    let running =
        by_slot.values().filter(|t| !t.desired_state.is_terminal() && t.status.state == TaskState::Running).count();
    let mut out = vec![format!("overall progress: {running} out of {replicas} tasks ")];
    if replicas <= MAX_PROGRESS_BARS {
        // Slots are numbered 1..=replicas on screen in slot order, whatever
        // their numbers in the store (docker maps them to a contiguous range).
        let mut shown = by_slot.values();
        for i in 1..=replicas {
            let id = format!("{i}/{replicas}");
            out.push(match shown.next() {
                Some(task) => slot_line(&id, task),
                None => format!("{id}:   "),
            });
        }
    }
    if converged {
        out.push("verify: Service converged ".to_string());
    }
    out
}

/// docker's progress display for a job: the completions, the active tasks
/// against what may run now, and (up to 20) a line per slot or node; `done`
/// adds docker's last line, `job complete`. `tasks` are the job's tasks of
/// its current run.
///
/// ```text
/// job progress: 4 out of 6 complete
/// active tasks: 2 out of 2 tasks
/// 1/6: complete  [==================================================>]
/// ```
pub fn job_progress_lines(info: &ServiceInfo, tasks: &[TaskInfo], done: bool) -> Vec<String> {
    let by_slot = tasks_by_slot(tasks);
    let total = match info.spec.mode {
        ServiceMode::ReplicatedJob { total_completions, .. } => total_completions,
        _ => info.desired + info.completed,
    };
    let active = by_slot.values().filter(|t| !t.status.state.is_terminal()).count();
    let digits = total.to_string().len();
    let mut out = vec![
        format!("job progress: {:>digits$} out of {total} complete ", info.completed),
        format!("active tasks: {active} out of {} tasks ", info.desired),
    ];
    if total <= MAX_PROGRESS_BARS {
        for (i, task) in by_slot.values().enumerate() {
            let id = format!("{}/{total}", i + 1);
            out.push(match task.status.err.as_deref().filter(|e| !e.is_empty()) {
                Some(err) => format!("{id}: {} ", trunc_error(err)),
                None => {
                    let state = task.status.state;
                    let step = progress_step(state).unwrap_or(0);
                    format!("{id}: {:<width$} {}", state.as_str(), bar(step.min(10), 10), width = LONGEST_STATE)
                }
            });
        }
    }
    if done {
        out.push("job complete".to_string());
    }
    out
}

/// The `verify` line docker shows between convergence and the end of the
/// monitor period; `left` is the time still to wait.
pub fn progress_waiting_line(left: Duration) -> String {
    format!("verify: Waiting {} seconds to verify that tasks are stable... ", left.as_secs() + 1)
}

/// The `verify` line docker shows when a task fails after convergence.
pub fn progress_failure_line() -> String {
    "verify: Detected task failure ".to_string()
}

fn tasks_by_slot(tasks: &[TaskInfo]) -> BTreeMap<u64, &Task> {
    let mut newest_first: Vec<&Task> = tasks.iter().map(|t| &t.task).collect();
    newest_first.sort_by_key(|t| Reverse(t.created_at));
    let mut by_slot: BTreeMap<u64, &Task> = BTreeMap::new();
    for task in newest_first {
        let (Some(desired), Some(state)) = (progress_step(task.desired_state), progress_step(task.status.state)) else {
            continue;
        };
        if let Some(kept) = by_slot.get(&task.slot) {
            let kept_desired = progress_step(kept.desired_state).unwrap_or(0);
            let kept_state = progress_step(kept.status.state).unwrap_or(0);
            if kept_desired < desired || (kept_desired == desired && kept_state <= state) {
                continue;
            }
        }
        by_slot.insert(task.slot, task);
    }
    by_slot
}

fn slot_line(id: &str, task: &Task) -> String {
    if let Some(err) = task.status.err.as_deref().filter(|e| !e.is_empty()) {
        return format!("{id}: {} ", trunc_error(err));
    }
    let state = task.status.state;
    if task.desired_state.is_terminal() || state.is_terminal() {
        // docker draws nothing new for it; the slot keeps its blank line.
        return format!("{id}:   ");
    }
    let step = progress_step(state).unwrap_or(0);
    format!("{id}: {:<width$} {}", state.as_str(), bar(step, MAX_PROGRESS), width = LONGEST_STATE)
}

/// moby's `JSONProgress.String` with the counts hidden: 50 columns.
fn bar(current: u64, total: u64) -> String {
    let filled = ((current as f64 / total as f64 * 100.0) as usize / 2).min(50);
    format!("[{}>{}] ", "=".repeat(filled), " ".repeat(50 - filled))
}

/// Newlines become spaces; more than 75 bytes are cut to 74 and `…`.
fn trunc_error(err: &str) -> String {
    let err = err.replace('\n', " ");
    if err.len() <= MAX_ERROR_WIDTH {
        return err;
    }
    let mut end = MAX_ERROR_WIDTH - 1;
    while !err.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &err[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_and_config_ls_print_as_docker_does() {
        let f = |id: &str, name: &str, at| FileInfo {
            id: id.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            created_at: at,
            updated_at: at,
            version: 1,
            size: 3,
            data: None,
            services: vec![],
        };
        let now = 100_000_000;
        let items = [
            f("x1d2g3h4j5k6l7m8n9p0q1r2s", "db_pw", now - 5_000),
            f("a9b8c7d6e5f4g3h2i1j0k9l8m", "api-key", now - 3_600_000),
        ];
        assert_eq!(
            files_ls(Kind::Secret, &items, now),
            "ID                          NAME      DRIVER    CREATED             UPDATED\n\
             a9b8c7d6e5f4g3h2i1j0k9l8m   api-key             About an hour ago   About an hour ago\n\
             x1d2g3h4j5k6l7m8n9p0q1r2s   db_pw               5 seconds ago       5 seconds ago\n"
        );
        assert!(files_ls(Kind::Config, &items, now).starts_with("ID                          NAME      CREATED"));
    }

    use std::collections::BTreeMap;

    use common::api::{LogEntry, NodeInfo, ServiceInfo, TaskInfo};
    use common::node::{Availability, Node, NodeStatus, Role};
    use common::spec::{ServiceSpec, TaskTemplate};
    use common::task::{Task, TaskState, TaskStatus};
    use common::time::Millis;

    use super::*;

    const NOW: Millis = 1_700_000_000_000;
    const SEC: Millis = 1_000;

    /// The expected text: one literal per line (so no editor strips the
    /// trailing spaces), each ending in a newline.
    fn text(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn node(
        id: &str,
        hostname: &str,
        status: NodeStatus,
        availability: Availability,
        manager: &str,
        is_self: bool,
    ) -> NodeInfo {
        NodeInfo {
            node: Node {
                id: id.into(),
                raft_id: 1,
                hostname: hostname.into(),
                role: if manager.is_empty() { Role::Worker } else { Role::Manager },
                availability,
                labels: BTreeMap::new(),
                addr: "10.0.0.1:7946".parse().unwrap(),
                created_at: NOW - 3_600 * SEC,
                updated_at: NOW - 3_600 * SEC,
            },
            status,
            manager_status: manager.into(),
            is_self,
            disk_alarm: None,
            resources: None,
        }
    }

    #[test]
    fn node_ls_marks_a_node_whose_disk_is_full() {
        let mut nodes = nodes();
        nodes[2].disk_alarm = Some("no space left on device".into());
        nodes[0].disk_alarm = Some("storage quota".into());
        assert_eq!(
            node_ls(&nodes),
            text(&[
                "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS",
                "abcdefghijklmnopqrstuvwxy *   node-1     Ready     Active         Leader (disk full)",
                "cdefghijklmnopqrstuvwxyz0     node-2     Down      Active         Reachable",
                "bcdefghijklmnopqrstuvwxyz     node-10    Ready     Drain          (disk full)",
            ])
        );
    }

    fn template(image: &str) -> TaskTemplate {
        TaskTemplate::new(image)
    }

    fn service(id: &str, name: &str, image: &str, running: u64, desired: u64) -> ServiceInfo {
        ServiceInfo {
            id: id.into(),
            version: 1,
            spec: ServiceSpec::new(name, desired, template(image)),
            created_at: NOW,
            updated_at: NOW,
            running,
            desired,
            completed: 0,
            job_iteration: None,
            update_status: None,
            previous_spec: None,
            mesh_errors: vec![],
            vips: vec![],
        }
    }

    struct T {
        id: &'static str,
        service: &'static str,
        slot: u64,
        image: &'static str,
        node: Option<&'static str>,
        desired: TaskState,
        state: TaskState,
        /// Seconds before NOW.
        created: Millis,
        changed: Millis,
        err: Option<&'static str>,
    }

    impl Default for T {
        fn default() -> Self {
            T {
                id: "tttttttttttttttttttttttt0",
                service: "web",
                slot: 1,
                image: "nginx:1.25",
                node: Some("node-1"),
                desired: TaskState::Running,
                state: TaskState::Running,
                created: 60,
                changed: 8,
                err: None,
            }
        }
    }

    fn task(t: T) -> TaskInfo {
        let mut status = TaskStatus::new(t.state, NOW - t.changed * SEC, "");
        status.err = t.err.map(str::to_string);
        TaskInfo {
            task: Task {
                id: t.id.into(),
                service_id: "svcsvcsvcsvcsvcsvcsvcsvc0".into(),
                service_name: t.service.into(),
                slot: t.slot,
                node_id: t.node.map(|n| format!("id-of-{n}").into()),
                spec: template(t.image),
                desired_state: t.desired,
                status,
                created_at: NOW - t.created * SEC,
                attempt: 0,
                addresses: vec![],
                job_iteration: None,
            },
            node_hostname: t.node.map(str::to_string),
        }
    }

    fn nodes() -> Vec<NodeInfo> {
        use Availability::*;
        use NodeStatus::*;
        vec![
            node("bcdefghijklmnopqrstuvwxyz", "node-10", Ready, Drain, "", false),
            node("cdefghijklmnopqrstuvwxyz0", "node-2", Down, Active, "Reachable", false),
            node("abcdefghijklmnopqrstuvwxy", "node-1", Ready, Active, "Leader", true),
        ]
    }

    #[test]
    fn node_ls_marks_self_and_sorts_hostnames_naturally() {
        assert_eq!(
            node_ls(&nodes()),
            text(&[
                "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS",
                "abcdefghijklmnopqrstuvwxy *   node-1     Ready     Active         Leader",
                "cdefghijklmnopqrstuvwxyz0     node-2     Down      Active         Reachable",
                "bcdefghijklmnopqrstuvwxyz     node-10    Ready     Drain          ",
            ])
        );
        assert_eq!(
            node_ls_quiet(&nodes()),
            text(&["abcdefghijklmnopqrstuvwxy", "cdefghijklmnopqrstuvwxyz0", "bcdefghijklmnopqrstuvwxyz",])
        );
    }

    #[test]
    fn empty_tables_print_their_header() {
        assert_eq!(node_ls(&[]), text(&["ID        HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS"]));
        assert_eq!(service_ls(&[]), text(&["ID        NAME      MODE      REPLICAS   IMAGE     PORTS"]));
        assert_eq!(
            service_ps(&[], NOW, false),
            text(&["ID        NAME      IMAGE     NODE      DESIRED STATE   CURRENT STATE   ERROR     PORTS"])
        );
        assert_eq!(service_ps_quiet(&[]), "");
    }

    fn services() -> Vec<ServiceInfo> {
        vec![
            service("w3b7d9e8f0g1h2i3j4k5l6m7n", "web", "nginx:1.25", 2, 3),
            service(
                "kq4vmk5kvx1y6xcvg4ir7zh4n",
                "api",
                "registry.example.com:5000/team/api:2.1@sha256:0123456789abcdef",
                1,
                1,
            ),
            service("p1cz0xt0p2ja1wn5blgbhxkx0", "cache", "docker.io/library/redis:7", 0, 2),
        ]
    }

    #[test]
    fn service_ls_sorts_by_name_and_shortens_ids_and_images() {
        assert_eq!(
            service_ls(&services()),
            text(&[
                "ID             NAME      MODE         REPLICAS   IMAGE                                    PORTS",
                "kq4vmk5kvx1y   api       replicated   1/1        registry.example.com:5000/team/api:2.1   ",
                "p1cz0xt0p2ja   cache     replicated   0/2        redis:7                                  ",
                "w3b7d9e8f0g1   web       replicated   2/3        nginx:1.25                               ",
            ])
        );
        assert_eq!(service_ls_quiet(&services()), text(&["kq4vmk5kvx1y", "p1cz0xt0p2ja", "w3b7d9e8f0g1"]));
    }

    fn ps_tasks() -> Vec<TaskInfo> {
        use TaskState::*;
        vec![
            // An older task of web.1 that failed, and an older one still.
            task(T {
                id: "q8zbx3bq2uv3wnd4ptxkrh7fy",
                node: Some("node-2"),
                desired: Shutdown,
                state: Failed,
                created: 120,
                changed: 61,
                err: Some("task: non-zero exit (137)"),
                ..T::default()
            }),
            task(T { id: "6n4rm0uwc0kqt1y2h3j4k5l6m", ..T::default() }),
            task(T {
                id: "z1x2c3v4b5n6m7a8s9d0f1g2h",
                desired: Shutdown,
                state: Shutdown,
                created: 3 * 3_600,
                changed: 2 * 3_600,
                ..T::default()
            }),
            task(T {
                id: "m0o2q4s6u8w0y2a4c6e8g0i2k",
                slot: 3,
                node: None,
                state: Pending,
                created: 5,
                changed: 5,
                err: Some("no suitable node (scheduling constraints not satisfied on 3 nodes)"),
                ..T::default()
            }),
            task(T { id: "j3l5n7p9r1t3v5x7z9b1d3f5h", slot: 2, node: Some("node-10"), changed: 0, ..T::default() }),
            task(T {
                id: "h6j8l0n2p4r6t8v0x2z4b6d8f",
                service: "api",
                slot: 10,
                image: "redis:7@sha256:4f1a",
                node: Some("node-2"),
                state: Starting,
                changed: 1,
                ..T::default()
            }),
            task(T {
                id: "e5g7i9k1m3o5q7s9u1w3y5a7c",
                service: "api",
                slot: 2,
                image: "redis:7@sha256:4f1a",
                changed: 180,
                ..T::default()
            }),
        ]
    }

    #[test]
    fn service_ps_groups_slots_newest_first_and_quotes_errors() {
        assert_eq!(
            service_ps(&ps_tasks(), NOW, false),
            text(&[
                r#"ID             NAME        IMAGE        NODE      DESIRED STATE   CURRENT STATE                    ERROR                              PORTS"#,
                r#"e5g7i9k1m3o5   api.2       redis:7      node-1    Running         Running 3 minutes ago                                               "#,
                r#"h6j8l0n2p4r6   api.10      redis:7      node-2    Running         Starting 1 second ago                                               "#,
                r#"6n4rm0uwc0kq   web.1       nginx:1.25   node-1    Running         Running 8 seconds ago                                               "#,
                r#"q8zbx3bq2uv3    \_ web.1   nginx:1.25   node-2    Shutdown        Failed about a minute ago        "task: non-zero exit (137)"        "#,
                r#"z1x2c3v4b5n6    \_ web.1   nginx:1.25   node-1    Shutdown        Shutdown 2 hours ago                                                "#,
                r#"j3l5n7p9r1t3   web.2       nginx:1.25   node-10   Running         Running less than a second ago                                      "#,
                r#"m0o2q4s6u8w0   web.3       nginx:1.25             Running         Pending 5 seconds ago            "no suitable node (scheduling …"   "#,
            ])
        );
    }

    #[test]
    fn service_ps_no_trunc_shows_full_ids_images_and_errors() {
        let tasks: Vec<TaskInfo> =
            ps_tasks().into_iter().filter(|t| t.task.slot == 3 || t.task.service_name == "api").collect();
        assert_eq!(
            service_ps(&tasks, NOW, true),
            text(&[
                "ID                          NAME      IMAGE                 NODE      DESIRED STATE   CURRENT STATE           ERROR                                                                  PORTS",
                "e5g7i9k1m3o5q7s9u1w3y5a7c   api.2     redis:7@sha256:4f1a   node-1    Running         Running 3 minutes ago                                                                          ",
                "h6j8l0n2p4r6t8v0x2z4b6d8f   api.10    redis:7@sha256:4f1a   node-2    Running         Starting 1 second ago                                                                          ",
                "m0o2q4s6u8w0y2a4c6e8g0i2k   web.3     nginx:1.25                      Running         Pending 5 seconds ago   \"no suitable node (scheduling constraints not satisfied on 3 nodes)\"   ",
            ])
        );
        assert_eq!(
            service_ps_quiet(&tasks),
            text(&["e5g7i9k1m3o5q7s9u1w3y5a7c", "h6j8l0n2p4r6t8v0x2z4b6d8f", "m0o2q4s6u8w0y2a4c6e8g0i2k",])
        );
    }

    #[test]
    fn service_ps_shows_the_node_id_of_a_node_that_is_gone() {
        let mut t = task(T { id: "6n4rm0uwc0kqt1y2h3j4k5l6m", ..T::default() });
        t.node_hostname = None;
        assert_eq!(
            service_ps(&[t], NOW, false),
            text(&[
                "ID             NAME      IMAGE        NODE           DESIRED STATE   CURRENT STATE           ERROR     PORTS",
                "6n4rm0uwc0kq   web.1     nginx:1.25   id-of-node-1   Running         Running 8 seconds ago             ",
            ])
        );
    }

    #[test]
    fn service_ps_marks_a_healthy_task_and_shows_an_unhealthy_ones_error() {
        let mut ok = task(T { id: "6n4rm0uwc0kqt1y2h3j4k5l6m", ..T::default() });
        ok.task.status.health = Some(common::container::Health::Healthy);
        let mut sick = task(T {
            id: "q8zbx3bq2uv3wnd4ptxkrh7fy",
            desired: TaskState::Shutdown,
            state: TaskState::Failed,
            created: 120,
            changed: 61,
            err: Some("dockerexec: unhealthy container"),
            ..T::default()
        });
        sick.task.status.health = Some(common::container::Health::Unhealthy);
        assert_eq!(
            service_ps(&[ok, sick], NOW, false),
            text(&[
                "ID             NAME        IMAGE        NODE      DESIRED STATE   CURRENT STATE                     ERROR                              PORTS",
                "6n4rm0uwc0kq   web.1       nginx:1.25   node-1    Running         Running (healthy) 8 seconds ago                                      ",
                "q8zbx3bq2uv3    \\_ web.1   nginx:1.25   node-1    Shutdown        Failed about a minute ago         \"dockerexec: unhealthy contain…\"   ",
            ])
        );
    }

    /// docker/cli's own golden file for `node ps` (cli/command/node/testdata/
    /// node-ps.multiple-nodes-no-duplicates.golden), rebuilt from the same
    /// tasks: the tabwriter layout, trailing padding included.
    #[test]
    fn service_ps_matches_a_docker_cli_golden_file() {
        let tasks: Vec<TaskInfo> = [1, 2, 3, 4]
            .map(|i| {
                task(T {
                    id: ["taskID1", "taskID2", "taskID3", "taskID4"][i - 1],
                    service: ["service1", "service2", "service3", "service4"][i - 1],
                    image: "myimage:mytag",
                    node: Some("defaultNodeName"),
                    desired: TaskState::Ready,
                    changed: if i % 2 == 1 { 2 * 3_600 } else { 3 * 3_600 },
                    ..T::default()
                })
            })
            .into();
        assert_eq!(
            service_ps(&tasks, NOW, false),
            text(&[
                "ID        NAME         IMAGE           NODE              DESIRED STATE   CURRENT STATE         ERROR     PORTS",
                "taskID1   service1.1   myimage:mytag   defaultNodeName   Ready           Running 2 hours ago             ",
                "taskID2   service2.1   myimage:mytag   defaultNodeName   Ready           Running 3 hours ago             ",
                "taskID3   service3.1   myimage:mytag   defaultNodeName   Ready           Running 2 hours ago             ",
                "taskID4   service4.1   myimage:mytag   defaultNodeName   Ready           Running 3 hours ago             ",
            ])
        );
    }

    fn log(task_id: &str, slot: u64, node: &str, line: &str) -> LogEntry {
        LogEntry {
            task_id: task_id.into(),
            service_name: "web".into(),
            slot,
            task_name: format!("web.{slot}"),
            node: node.into(),
            node_id: None,
            timestamp: "2023-11-14T22:13:20.000000000Z".into(),
            line: line.into(),
            stream: Default::default(),
        }
    }

    #[test]
    fn log_prefixes_pad_slots_to_the_replica_count() {
        let a = log("6n4rm0uwc0kqt1y2h3j4k5l6m", 1, "node-1", "hello\n");
        let b = log("h6j8l0n2p4r6t8v0x2z4b6d8f", 10, "node-2", "world");
        assert_eq!(log_prefix(&a, false, 10), "web.1.6n4rm0uwc0kq@node-1     | ");
        assert_eq!(log_prefix(&b, false, 10), "web.10.h6j8l0n2p4r6@node-2    | ");
        assert_eq!(
            [&a, &b].map(|e| format_log_line(e, false, false, 10)),
            ["web.1.6n4rm0uwc0kq@node-1     | hello", "web.10.h6j8l0n2p4r6@node-2    | world",]
        );
        assert_eq!(
            [&a, &b].map(|e| format_log_line(e, true, true, 10)),
            [
                "2023-11-14T22:13:20.000000000Z web.1.6n4rm0uwc0kqt1y2h3j4k5l6m@node-1     | hello",
                "2023-11-14T22:13:20.000000000Z web.10.h6j8l0n2p4r6t8v0x2z4b6d8f@node-2    | world",
            ]
        );
        // A single task (or a service of fewer than 10 replicas): no padding.
        assert_eq!(format_log_line(&a, false, false, 0), "web.1.6n4rm0uwc0kq@node-1    | hello");
    }

    #[test]
    fn log_flags_shape_the_context_as_docker_does() {
        let mut a = log("6n4rm0uwc0kqt1y2h3j4k5l6m", 1, "node-1", "hello\n");
        a.node_id = Some("q36sg87inz5l5e6vhnp67o2qq".into());
        let f = |g: fn(&mut LogFormat)| {
            let mut f = LogFormat { replicas: 1, ..LogFormat::default() };
            g(&mut f);
            format_log(&a, &f)
        };
        assert_eq!(f(|_| {}), "web.1.6n4rm0uwc0kq@node-1    | hello");
        assert_eq!(f(|f| f.no_task_ids = true), "web.1@node-1    | hello");
        assert_eq!(f(|f| f.raw = true), "hello");
        assert_eq!(
            f(|f| {
                f.raw = true;
                f.timestamps = true
            }),
            "2023-11-14T22:13:20.000000000Z hello"
        );
        assert_eq!(
            f(|f| f.no_resolve = Some("svcid123".into())),
            "svcid123.1.6n4rm0uwc0kq@q36sg87inz5l5e6vhnp67o2qq    | hello"
        );
    }

    fn slot_task(slot: u64, state: TaskState) -> TaskInfo {
        task(T { slot, state, ..T::default() })
    }

    #[test]
    fn progress_before_any_task() {
        assert_eq!(
            progress_lines(3, &[], false),
            ["overall progress: 0 out of 3 tasks ", "1/3:   ", "2/3:   ", "3/3:   "]
        );
    }

    #[test]
    fn progress_part_way() {
        use TaskState::*;
        let tasks = vec![
            // Slot 1 restarted: the failed task is no longer meant to run.
            task(T {
                id: "q8zbx3bq2uv3wnd4ptxkrh7fy",
                desired: Shutdown,
                state: Failed,
                created: 120,
                err: Some("task: non-zero exit (1)"),
                ..T::default()
            }),
            slot_task(1, Running),
            slot_task(2, Preparing),
            task(T {
                slot: 3,
                node: None,
                state: Pending,
                err: Some("no suitable node (scheduling constraints not satisfied on 3 nodes)"),
                ..T::default()
            }),
            slot_task(4, New),
            slot_task(5, Starting),
        ];
        assert_eq!(
            progress_lines(5, &tasks, false),
            [
                "overall progress: 1 out of 5 tasks ",
                "1/5: running   [==================================================>] ",
                "2/5: preparing [=================================>                 ] ",
                "3/5: no suitable node (scheduling constraints not satisfied on 3 nodes) ",
                "4/5: new       [=====>                                             ] ",
                "5/5: starting  [============================================>      ] ",
            ]
        );
    }

    #[test]
    fn progress_converged() {
        let tasks: Vec<TaskInfo> = (1..=3).map(|s| slot_task(s, TaskState::Running)).collect();
        let bar = "[==================================================>] ";
        assert_eq!(
            progress_lines(3, &tasks, false),
            [
                "overall progress: 3 out of 3 tasks ".to_string(),
                format!("1/3: running   {bar}"),
                format!("2/3: running   {bar}"),
                format!("3/3: running   {bar}"),
            ]
        );
        assert_eq!(
            progress_waiting_line(Duration::from_millis(4_200)),
            "verify: Waiting 5 seconds to verify that tasks are stable... "
        );
        assert_eq!(progress_failure_line(), "verify: Detected task failure ");
        assert_eq!(progress_lines(3, &tasks, true).last().map(String::as_str), Some("verify: Service converged "));
    }

    #[test]
    fn progress_above_twenty_slots_shows_only_the_total() {
        let mut tasks: Vec<TaskInfo> = (1..=25).map(|s| slot_task(s, TaskState::Running)).collect();
        tasks[3].task.status.state = TaskState::Assigned;
        assert_eq!(progress_lines(25, &tasks, false), ["overall progress: 24 out of 25 tasks "]);
        tasks[3].task.status.state = TaskState::Running;
        assert_eq!(
            progress_lines(25, &tasks, true),
            ["overall progress: 25 out of 25 tasks ", "verify: Service converged "]
        );
    }

    #[test]
    fn progress_cuts_long_errors_to_one_line() {
        let err = "starting container failed: error while mounting volume '/var/lib/data':\nno such file or directory";
        let t = task(T { state: TaskState::Failed, err: Some(err), ..T::default() });
        assert_eq!(
            progress_lines(1, &[t], false),
            [
                "overall progress: 0 out of 1 tasks ",
                "1/1: starting container failed: error while mounting volume '/var/lib/data': no… ",
            ]
        );
    }

    #[test]
    fn natural_order() {
        let mut names = vec!["web.10", "web.2", "api.1", "web.02", "web.1", "web"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["api.1", "web", "web.1", "web.2", "web.02", "web.10"]);
    }

    #[test]
    fn images_lose_digest_and_default_registry_when_tagged() {
        assert_eq!(display_image("nginx:1.25@sha256:abc"), "nginx:1.25");
        assert_eq!(display_image("docker.io/library/redis:7"), "redis:7");
        assert_eq!(display_image("docker.io/bitnami/redis:7"), "bitnami/redis:7");
        assert_eq!(display_image("nginx@sha256:abc"), "nginx@sha256:abc");
        assert_eq!(display_image("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(display_image("localhost:5000/app:v1@sha256:abc"), "localhost:5000/app:v1");
    }
}
