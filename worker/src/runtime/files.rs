//! The files a task's secrets and configs become on its node.
//!
//! The leader sends a node the values its assigned tasks use
//! (`Frame::Files`); [`TaskFiles`] keeps them in memory and, when a task's
//! container is created, writes each one the task names into
//! `DIR/<task id>/` with the reference's owner and mode, for Docker to
//! bind-mount read-only at the target. `DIR` must be on a tmpfs (default
//! `/dev/shm/shoal/<node id>`), so that no value is ever written to the
//! node's disk; a task that needs files on a node without one fails with
//! the reason. A task's directory goes when the task leaves the node's
//! assignment set ([`TaskFiles::retain`], [`TaskFiles::forget`]), and the
//! values go from memory when no assigned task uses them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::secret::{FileData, FileRef, Kind};
use common::task::Task;
use common::TaskId;
use parking_lot::Mutex;

/// statfs magic numbers of the memory file systems.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilesError {
    #[error("secrets and configs need a tmpfs on this node: {0}")]
    NoTmpfs(String),
    #[error("the value of {0} {1} has not reached this node")]
    Missing(Kind, String),
    #[error("invalid owner {0:?} for {1} {2}: expected a numeric uid/gid")]
    Owner(String, Kind, String),
    #[error("cannot write {kind} {name} for the task: {error}")]
    Io { kind: Kind, name: String, error: String },
}

/// One file to bind-mount into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    pub source: PathBuf,
    pub target: String,
}

/// One reference of either kind, as the writer needs it.
struct Entry<'a> {
    kind: Kind,
    id: String,
    name: &'a str,
    target: &'a str,
    uid: &'a str,
    gid: &'a str,
    mode: u32,
}

fn entries<Id: std::fmt::Display>(kind: Kind, refs: &[FileRef<Id>]) -> impl Iterator<Item = Entry<'_>> {
    refs.iter().map(move |r| Entry {
        kind,
        id: r.id.to_string(),
        name: &r.name,
        target: &r.target,
        uid: &r.uid,
        gid: &r.gid,
        mode: r.mode,
    })
}

pub struct TaskFiles {
    dir: PathBuf,
    /// Why `dir` cannot hold values, if it cannot.
    unusable: Option<String>,
    values: Mutex<BTreeMap<(Kind, String), Vec<u8>>>,
}

impl std::fmt::Debug for TaskFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFiles").field("dir", &self.dir).field("values", &self.values.lock().len()).finish()
    }
}

/// Is `path` on a memory file system? The answer says what it is on.
fn memory_fs(path: &Path) -> Result<(), String> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| format!("cannot statfs {}: {e}", path.display()))?;
    let magic = st.filesystem_type().0 as i64;
    if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
        Ok(())
    } else {
        Err(format!("{} is not on a tmpfs (file system type {magic:#x})", path.display()))
    }
}

impl TaskFiles {
    /// The default directory for a node.
    pub fn default_dir(node: &common::NodeId) -> PathBuf {
        PathBuf::from("/dev/shm/shoal").join(node.as_str())
    }

    /// Uses `dir` (created 0700 if missing). A directory not on a tmpfs is
    /// kept but refuses every task that needs files, saying why.
    pub fn new(dir: PathBuf) -> TaskFiles {
        let ready = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
            .and_then(|()| memory_fs(&dir));
        if let Err(why) = &ready {
            tracing::warn!(%why, "tasks with secrets or configs cannot run on this node");
        }
        TaskFiles { dir, unusable: ready.err(), values: Mutex::new(BTreeMap::new()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The values the leader sent: the whole set this node needs now.
    pub fn set_values(&self, files: Vec<FileData>) {
        *self.values.lock() = files.into_iter().map(|f| ((f.kind, f.id), f.data)).collect();
    }

    fn task_dir(&self, task: &TaskId) -> PathBuf {
        self.dir.join(task.as_str())
    }

    /// Writes the task's files and says where to mount them. Nothing to
    /// write: no mounts and no directory.
    pub fn materialise(&self, task: &Task) -> Result<Vec<FileMount>, FilesError> {
        let (secrets, configs) = (&task.spec.secrets, &task.spec.configs);
        if secrets.is_empty() && configs.is_empty() {
            return Ok(vec![]);
        }
        if let Some(why) = &self.unusable {
            return Err(FilesError::NoTmpfs(why.clone()));
        }
        let dir = self.task_dir(&task.id);
        let io = |kind, name: &str| {
            let name = name.to_string();
            move |e: std::io::Error| FilesError::Io { kind, name, error: e.to_string() }
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io(Kind::Secret, "-"))?;
        // The task directory stays root-only; each file is readable by its owner and mode.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(io(Kind::Secret, "-"))?;
        let values = self.values.lock();
        let wanted = entries(Kind::Secret, secrets).chain(entries(Kind::Config, configs));
        let mut out = Vec::new();
        for (i, e) in wanted.enumerate() {
            let (kind, name) = (e.kind, e.name);
            let data = values.get(&(kind, e.id)).ok_or_else(|| FilesError::Missing(kind, name.to_string()))?;
            let owner =
                |s: &str| s.parse::<u32>().map_err(|_| FilesError::Owner(s.to_string(), kind, name.to_string()));
            let (uid, gid) = (owner(e.uid)?, owner(e.gid)?);
            let path = dir.join(format!("{kind}-{i}"));
            let tmp = dir.join(format!(".{kind}-{i}.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(kind, name))?;
            f.write_all(data).map_err(io(kind, name))?;
            drop(f);
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(io(kind, name))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(e.mode & 0o7777)).map_err(io(kind, name))?;
            std::fs::rename(&tmp, &path).map_err(io(kind, name))?;
            out.push(FileMount { source: path, target: kind.target_path(e.target) });
        }
        Ok(out)
    }

    /// Removes one task's files.
    pub fn forget(&self, task: &TaskId) {
        let dir = self.task_dir(task);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(task = %task, error = %e, "cannot remove the task's secret files");
            }
        }
    }

    /// Removes the files of every task not in `assigned`.
    pub fn retain(&self, assigned: &BTreeSet<TaskId>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = TaskId::from(name.as_str());
            if !assigned.contains(&id) && e.path().is_dir() {
                self.forget(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::secret::SecretRef;
    use common::spec::TaskTemplate;
    use common::SecretId;
    use std::os::unix::fs::MetadataExt;

    fn task_with(secret: &str, target: &str, mode: u32) -> Task {
        let mut spec = TaskTemplate::new("busybox");
        spec.secrets = vec![SecretRef {
            id: SecretId::from(secret),
            name: "pw".into(),
            target: target.into(),
            uid: "0".into(),
            gid: "0".into(),
            mode,
        }];
        Task {
            id: TaskId::random(),
            service_id: common::ServiceId::from("svc"),
            service_name: "web".into(),
            slot: 1,
            node_id: None,
            spec,
            desired_state: common::task::TaskState::Running,
            status: common::task::TaskStatus::new(common::task::TaskState::New, 0, "new"),
            created_at: 0,
            attempt: 0,
            addresses: vec![],
            job_iteration: None,
        }
    }

    fn shm_dir() -> Option<PathBuf> {
        let d = PathBuf::from("/dev/shm").join(format!("shoal-test-{}", TaskId::random()));
        memory_fs(Path::new("/dev/shm")).ok().map(|_| d)
    }

    #[test]
    fn files_land_on_tmpfs_with_their_mode_and_go_with_the_task() {
        let Some(dir) = shm_dir() else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI needs /dev/shm as a tmpfs");
            return;
        };
        let files = TaskFiles::new(dir.clone());
        files.set_values(vec![FileData { kind: Kind::Secret, id: "s1".into(), data: b"hunter2".to_vec() }]);
        let t = task_with("s1", "db_pw", 0o400);
        let mounts = files.materialise(&t).unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].target, "/run/secrets/db_pw");
        assert_eq!(std::fs::read(&mounts[0].source).unwrap(), b"hunter2");
        assert_eq!(std::fs::metadata(&mounts[0].source).unwrap().mode() & 0o7777, 0o400);
        files.retain(&BTreeSet::from([t.id.clone()]));
        assert!(mounts[0].source.exists(), "an assigned task keeps its files");
        files.retain(&BTreeSet::new());
        assert!(!mounts[0].source.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_value_not_sent_or_a_disk_directory_is_refused_with_the_reason() {
        let Some(dir) = shm_dir() else { return };
        let files = TaskFiles::new(dir.clone());
        let t = task_with("s9", "x", 0o444);
        assert_eq!(files.materialise(&t).unwrap_err().to_string(), "the value of secret pw has not reached this node");
        let mut plain = task_with("s9", "x", 0o444);
        plain.spec.secrets.clear();
        assert_eq!(files.materialise(&plain).unwrap(), vec![]);
        std::fs::remove_dir_all(dir).unwrap();
        let disk = std::env::temp_dir().join(format!("shoal-test-{}", TaskId::random()));
        let on_disk = TaskFiles::new(disk.clone());
        if memory_fs(&disk).is_err() {
            let e = on_disk.materialise(&t).unwrap_err().to_string();
            assert!(e.starts_with("secrets and configs need a tmpfs on this node"), "{e}");
        }
        let _ = std::fs::remove_dir_all(disk);
    }
}
