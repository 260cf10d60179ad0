//! The flags every listing command takes (`node ls`, `service ls`,
//! `service ps`) and the one way they choose what is printed.

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

#[derive(Args)]
pub struct ListFlags {
    #[arg(short, long)]
    quiet: bool,
    /// `json` for machine-readable output.
    #[arg(long)]
    format: Option<String>,
}

impl ListFlags {
    /// Prints `items` as JSON with `--format json`, else as the IDs of
    /// `quiet` with `-q`, else as the `table`.
    pub fn print<T: Serialize>(
        &self,
        items: &[T],
        quiet: impl FnOnce(&[T]) -> String,
        table: impl FnOnce(&[T]) -> String,
    ) -> Result<()> {
        match (self.format.as_deref(), self.quiet) {
            (Some("json"), _) => println!("{}", serde_json::to_string_pretty(items)?),
            (Some(f), _) => bail!("unknown format {f:?}: only json is supported"),
            (None, true) => print!("{}", quiet(items)),
            (None, false) => print!("{}", table(items)),
        }
        Ok(())
    }
}
