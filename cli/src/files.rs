//! `shoal secret …` and `shoal config …`: the same commands for both kinds,
//! as docker's.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Subcommand;
use common::api::{FileCreate, FileInfo};
use common::secret::Kind;
use common::time::now_ms;

use crate::client::Client;
use crate::list::ListFlags;
use crate::output;

#[derive(Subcommand)]
pub enum FileCmd {
    /// Create one from a file, or from standard input with `-`.
    Create {
        name: String,
        /// The file holding the value, or `-` for standard input.
        file: String,
        #[arg(short, long = "label")]
        label: Vec<String>,
    },
    /// List them.
    #[command(alias = "list")]
    Ls(ListFlags),
    /// Show details of one or more (never a secret's value).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        pretty: bool,
    },
    /// Remove one or more (refused while a service uses it).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn path(kind: Kind) -> &'static str {
    match kind {
        Kind::Secret => "/v1/secrets",
        Kind::Config => "/v1/configs",
    }
}

fn read_value(file: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut data).context("cannot read standard input")?;
    } else {
        data = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    }
    Ok(data)
}

fn pretty(kind: Kind) -> fn(&FileInfo) -> String {
    fn render(kind: Kind, f: &FileInfo) -> String {
        let mut out = format!("ID:              {}\nName:            {}\n", f.id, f.name);
        if !f.labels.is_empty() {
            out.push_str("Labels:\n");
            for (k, v) in &f.labels {
                out.push_str(&format!(" - {k}={v}\n"));
            }
        }
        if kind == Kind::Secret {
            out.push_str("Driver:\n");
        }
        let at = |ms: u64| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
        };
        out.push_str(&format!("Created at:      {}\nUpdated at:      {}\n", at(f.created_at), at(f.updated_at)));
        if let Some(d) = &f.data {
            let bytes = base64::engine::general_purpose::STANDARD.decode(d).unwrap_or_default();
            out.push_str(&format!("Data:\n{}\n", String::from_utf8_lossy(&bytes)));
        }
        out
    }
    match kind {
        Kind::Secret => |f| render(Kind::Secret, f),
        Kind::Config => |f| render(Kind::Config, f),
    }
}

pub fn run(c: &Client, kind: Kind, cmd: FileCmd) -> Result<ExitCode> {
    match cmd {
        FileCmd::Create { name, file, label } => {
            let data = read_value(&file)?;
            let labels = label
                .iter()
                .map(|l| common::spec::parse_label(l).map_err(anyhow::Error::from))
                .collect::<Result<_>>()?;
            if data.is_empty() {
                bail!("{kind} data must be larger than 0 and less than {} bytes", kind.max_bytes());
            }
            let body = FileCreate { name, labels, data: base64::engine::general_purpose::STANDARD.encode(&data) };
            let info: FileInfo = c.post(path(kind), &body)?;
            println!("{}", info.id);
        }
        FileCmd::Ls(list) => {
            let items: Vec<FileInfo> = c.get(path(kind))?;
            list.print(&items, output::files_ls_quiet, |i| output::files_ls(kind, i, now_ms()))?;
        }
        FileCmd::Inspect { names, pretty: p } => {
            return c.inspect::<FileInfo>(&names, |n| format!("{}/{n}", path(kind)), p.then(|| pretty(kind)));
        }
        FileCmd::Rm { names } => return Ok(c.delete_each::<FileInfo>(&names, |n| format!("{}/{n}", path(kind)))),
    }
    Ok(ExitCode::SUCCESS)
}
