//! `shoal unlock`: gives a locked manager (autolock) its unlock key.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use manager::api::locked::{UnlockRequest, UnlockResponse, UNLOCK_PATH};

use crate::client::Client;

pub fn run(client: &Client) -> Result<ExitCode> {
    let key = read_key()?;
    if key.is_empty() {
        bail!("no unlock key given");
    }
    let _: UnlockResponse = client.post(UNLOCK_PATH, &UnlockRequest { key })?;
    Ok(ExitCode::SUCCESS)
}

/// One line from stdin; on a terminal, after a prompt and without echo.
fn read_key() -> Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("Enter the unlock key: ");
        let _ = std::io::stderr().flush();
        let _echo_off = EchoOff::new(&stdin);
        stdin.lock().read_line(&mut line).context("cannot read the unlock key")?;
        eprintln!();
    } else {
        stdin.lock().read_line(&mut line).context("cannot read the unlock key")?;
    }
    Ok(line.trim().to_string())
}

/// Turns the terminal's echo off until dropped.
struct EchoOff(Option<nix::sys::termios::Termios>);

impl EchoOff {
    fn new(stdin: &std::io::Stdin) -> EchoOff {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let Ok(before) = tcgetattr(stdin) else { return EchoOff(None) };
        let mut quiet = before.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        match tcsetattr(stdin, SetArg::TCSANOW, &quiet) {
            Ok(()) => EchoOff(Some(before)),
            Err(_) => EchoOff(None),
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, before);
        }
    }
}
