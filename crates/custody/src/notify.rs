//! A desktop notification when a request waits for approval (`custody
//! approve`'s queue), where a session bus exists.
//!
//! It is sent with `gdbus` (GLib's, on nearly every Linux desktop) or else
//! `notify-send`, each only from a root-owned system directory that no
//! one else can write: never found through `PATH`, which an agent may have
//! changed or planted a program in. The program gets no terminal (its
//! stdin, stdout and stderr are `/dev/null`), so it cannot read the PIN
//! typed next. The text is the request's id, who asks and the command,
//! with control characters escaped; never a value.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the notifying programs may be.
const SYSTEM_DIRS: &[&str] = &["/usr/bin", "/bin"];

/// Longest command shown in a notification (characters).
const MAX_COMMAND: usize = 160;

/// Whether this process has a session bus to notify on.
fn session_bus() -> bool {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty()) {
        return true;
    }
    std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(Path::new(&d).join("bus")).is_ok_and(|m| m.file_type().is_socket())
    })
}

/// `name` in a system directory, if it is a root-owned file nobody else can
/// write, in a directory nobody else can write.
fn system_program(name: &str) -> Option<PathBuf> {
    let safe = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
    SYSTEM_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| safe(p) && p.parent().is_some_and(safe))
}

/// A GVariant text string (`gdbus call` parses its arguments as GVariant).
fn gvariant(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Notifies that request `id` from `requester` to run `command` waits for
/// approval. Best effort: without a session bus or a notifier, nothing
/// happens; the notifier is not waited for.
pub fn request_waiting(id: &str, requester: &str, command: &str) {
    if !session_bus() {
        return;
    }
    let mut command = crate::output::field(command);
    if command.chars().count() > MAX_COMMAND {
        command = command.chars().take(MAX_COMMAND).collect::<String>() + "…";
    }
    let summary = "custody: a request waits for approval";
    let body = format!(
        "{} asks to run {command}\ncustody approve {}",
        crate::output::field(requester),
        crate::output::field(id)
    );
    let mut cmd = if let Some(gdbus) = system_program("gdbus") {
        let mut c = Command::new(gdbus);
        c.args([
            "call",
            "--session",
            "--dest",
            "org.freedesktop.Notifications",
            "--object-path",
            "/org/freedesktop/Notifications",
            "--method",
            "org.freedesktop.Notifications.Notify",
            "'custody'",
            "0",
            "'dialog-password'",
            &gvariant(summary),
            &gvariant(&body),
            "@as []",
            "@a{sv} {}",
            "0",
        ]);
        c
    } else if let Some(send) = system_program("notify-send") {
        // notify-send reads markup in the body: plain text only.
        let body = body
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let mut c = Command::new(send);
        c.args([
            "--app-name=custody",
            "--icon=dialog-password",
            "--",
            summary,
        ])
        .arg(body);
        c
    } else {
        return;
    };
    let spawned = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut child) = spawned {
        // Reaped in the background: the queue may run for hours.
        std::thread::spawn(move || child.wait());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvariant_strings_cannot_be_closed_early() {
        assert_eq!(gvariant("a'b\\c"), r"'a\'b\\c'");
    }
}
