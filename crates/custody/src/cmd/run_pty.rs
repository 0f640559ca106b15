//! `custody run` on a pseudo-terminal: the user's side.
//!
//! The broker holds the lease's terminal; this process puts its own terminal
//! in raw mode (so Ctrl-C, Ctrl-D and every key reach the command, as over
//! ssh), sends what is typed and the terminal's size as it changes, and puts
//! its terminal back however it ends (return, SIGTERM, SIGHUP).

use std::io::{IsTerminal, Read};
use std::sync::{Arc, Mutex};

use custody_broker::client::Typist;
use custody_broker::protocol::TermSize;
use rustix::termios::{OptionalActions, Termios};
use zeroize::Zeroizing;

/// Whether a run is on a terminal: `--pty`, `--no-pty`, or by default when
/// both stdin and stdout are terminals.
pub fn wanted(pty: bool, no_pty: bool) -> bool {
    pty || (!no_pty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal())
}

/// The size of this process's terminal (stdout's, else stdin's), 24×80
/// without one.
pub fn size() -> TermSize {
    let from = |w: rustix::termios::Winsize| TermSize {
        rows: w.ws_row,
        cols: w.ws_col,
    };
    rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()
        .filter(|w| w.ws_row > 0 && w.ws_col > 0)
        .map_or(TermSize { rows: 24, cols: 80 }, from)
}

/// This process's terminal in raw mode until dropped.
pub struct RawMode {
    saved: Option<Termios>,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), OptionalActions::Now, t);
        }
    }
}

/// Starts sending stdin into the run (raw when it is a terminal), and the
/// terminal's size whenever it changes. Returns the raw mode to drop when
/// the run ends.
pub fn start(typist: Typist) -> RawMode {
    let typist = Arc::new(Mutex::new(typist));
    let stdin = std::io::stdin();
    let saved = if stdin.is_terminal() {
        rustix::termios::tcgetattr(&stdin).ok()
    } else {
        None
    };
    if let Some(t) = &saved {
        let mut raw = t.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, OptionalActions::Now, &raw);
        follow_signals(Arc::clone(&typist), t.clone());
    }
    std::thread::spawn(move || forward_stdin(&typist));
    RawMode { saved }
}

/// Sends what is read from stdin until it ends, then the end of input.
fn forward_stdin(typist: &Mutex<Typist>) {
    let mut buf = Zeroizing::new(vec![0u8; 4096]);
    let mut stdin = std::io::stdin().lock();
    loop {
        let (n, end) = match stdin.read(&mut buf) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => (0, true),
        };
        let sent = typist
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .typed(&buf[..n], end);
        if end || sent.is_err() {
            return;
        }
    }
}

/// On SIGWINCH: sends the new size. On SIGTERM, SIGHUP or SIGINT (which a
/// raw terminal no longer sends, but `kill` can): puts the terminal back
/// and exits as the signal would have (the broker ends the lease when the
/// connection closes).
fn follow_signals(typist: Arc<Mutex<Typist>>, saved: Termios) {
    super::on_signal_thread(move || async move {
        let code: Option<i32> = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut winch), Ok(mut term), Ok(mut hup), Ok(mut int)) = (
                signal(SignalKind::window_change()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
                signal(SignalKind::interrupt()),
            ) else {
                return None;
            };
            loop {
                tokio::select! {
                    _ = winch.recv() => {
                        // After the run, nobody listens: nothing to do.
                        let _ = typist
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .resized(size());
                    }
                    _ = term.recv() => return Some(128 + 15),
                    _ = hup.recv() => return Some(128 + 1),
                    _ = int.recv() => return Some(128 + 2),
                }
            }
        }
        .await;
        if let Some(code) = code {
            let _ = rustix::termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
            std::process::exit(code);
        }
    });
}
