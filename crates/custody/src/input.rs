//! Reading secrets: a hidden prompt on the terminal, or stdin for scripts.
//! Never argv, which every process on the machine can read.
//!
//! With `--passphrase-stdin` the first line of stdin is the passphrase; the
//! lines after it are handed out in order (`--pin-stdin`, `passwd`'s new
//! passphrase), and what is left is a value (`custody set`).

use std::fs::OpenOptions;
use std::io::{IsTerminal, Read};

use anyhow::{Context, bail};
use custody_core::secret::{Passphrase, Pin};
use zeroize::Zeroizing;

/// Most bytes read from stdin: the largest value plus room for two lines.
const MAX_STDIN: usize = custody_core::vault::MAX_VALUE_LEN + 64 * 1024;

/// Secret input for one command: stdin, read once, consumed line by line.
pub struct SecretInput {
    buf: Option<Zeroizing<Vec<u8>>>,
    pos: usize,
}

impl SecretInput {
    pub fn new() -> Self {
        SecretInput { buf: None, pos: 0 }
    }

    fn buffer(&mut self) -> anyhow::Result<&[u8]> {
        if self.buf.is_none() {
            refuse_if_traced("secrets on stdin")?;
            let mut data = Zeroizing::new(Vec::with_capacity(4096));
            std::io::stdin()
                .lock()
                .take(MAX_STDIN as u64 + 1)
                .read_to_end(&mut data)
                .context("reading stdin")?;
            if data.len() > MAX_STDIN {
                bail!(
                    "stdin is more than {MAX_STDIN} bytes: a value may be at most {} bytes (plus the passphrase and PIN lines before it)",
                    custody_core::vault::MAX_VALUE_LEN
                );
            }
            self.buf = Some(data);
        }
        Ok(self.buf.as_deref().map(Vec::as_slice).unwrap_or_default())
    }

    /// The next line of stdin (without its line ending). `what` names it in
    /// the error when stdin has run out.
    pub fn line(&mut self, what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let pos = self.pos;
        let buf = self.buffer()?;
        let rest = buf.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            bail!("expected the {what} on a line of stdin, but stdin ended");
        }
        let (line, used) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let out = Zeroizing::new(line.to_vec());
        self.pos += used;
        Ok(out)
    }

    /// The passphrase line of stdin (`--passphrase-stdin`).
    pub fn passphrase(&mut self) -> anyhow::Result<Passphrase> {
        self.line("passphrase").map(Passphrase::new)
    }

    /// The approval PIN line of stdin (`--pin-stdin`).
    pub fn pin(&mut self) -> anyhow::Result<Pin> {
        self.line("approval PIN").map(Pin::new)
    }

    /// Everything of stdin not yet consumed.
    pub fn rest(&mut self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let pos = self.pos;
        let buf = self.buffer()?;
        let out = Zeroizing::new(buf.get(pos..).unwrap_or_default().to_vec());
        self.pos = buf.len();
        Ok(out)
    }
}

/// Whether a person can be asked on the controlling terminal.
pub fn has_tty() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

/// Whether stdin is a terminal (then values are asked for, not read).
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// Refuses while a tracer (`strace`, a debugger) is attached: it would read
/// every byte of a passphrase, PIN or value as it is read.
pub fn refuse_if_traced(what: &str) -> anyhow::Result<()> {
    if let Some((pid, comm)) = custody_broker::procs::tracer_of_self() {
        bail!(
            "refusing to read the {what}: this process is being traced by pid {pid} ({comm}), which could read it as you type; run custody without a tracer"
        );
    }
    Ok(())
}

/// Asks on the terminal without echo. `flag` names the non-interactive
/// alternative for the error when there is no terminal.
pub fn prompt_hidden(prompt: &str, flag: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    refuse_if_traced("secret")?;
    if !has_tty() {
        bail!("no terminal to ask for input: pass {flag}");
    }
    let s =
        Zeroizing::new(rpassword::prompt_password(prompt).context("reading from the terminal")?);
    Ok(Zeroizing::new(s.as_bytes().to_vec()))
}

/// Asks for a passphrase on the terminal without echo.
pub fn prompt_passphrase(prompt: &str, flag: &str) -> anyhow::Result<Passphrase> {
    prompt_hidden(prompt, flag).map(Passphrase::new)
}

/// Asks for the approval PIN on the terminal without echo.
pub fn prompt_pin(prompt: &str, flag: &str) -> anyhow::Result<Pin> {
    prompt_hidden(prompt, flag).map(Pin::new)
}

/// Asks twice on the terminal and insists both answers match.
pub fn prompt_new(
    prompt: &str,
    again: &str,
    flag: &str,
    check: impl Fn(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    // The rules are checked on the first entry, before the repeat is asked
    // for; a broken rule or a mismatch asks again (three rounds).
    for round in 1..=3 {
        let first = prompt_hidden(prompt, flag)?;
        if let Err(e) = check(&first) {
            if round == 3 {
                return Err(e.context("nothing was changed"));
            }
            eprintln!("{e:#}; try again.");
            continue;
        }
        let second = prompt_hidden(again, flag)?;
        if custody_core::crypto::ct_eq(&first, &second) {
            return Ok(first);
        }
        if round == 3 {
            bail!("the two entries did not match; nothing was changed");
        }
        eprintln!("The two entries did not match; try again.");
    }
    bail!("nothing was changed")
}

/// Rejects a new approval PIN that is too short.
pub fn check_new_pin(p: &[u8]) -> anyhow::Result<()> {
    let min = custody_core::vault::MIN_PIN_LEN;
    if p.len() < min {
        bail!("the approval PIN must be at least {min} characters");
    }
    Ok(())
}

/// Asks a yes/no question on the terminal; `false` unless the answer is y/yes.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, BufReader, Write};
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal")?;
    write!(tty, "{question} [y/N] ")?;
    tty.flush()?;
    let mut answer = String::new();
    BufReader::new(tty).read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// The minimum passphrase length `init` and `passwd` accept.
pub const MIN_PASSPHRASE_LEN: usize = 8;

/// Rejects a new passphrase that is too short.
pub fn check_new_passphrase(p: &[u8]) -> anyhow::Result<()> {
    if p.len() < MIN_PASSPHRASE_LEN {
        bail!("the passphrase must be at least {MIN_PASSPHRASE_LEN} characters");
    }
    Ok(())
}
