//! A lease's pseudo-terminal (`custody run --pty`).
//!
//! The broker holds the master; the child gets the other end as stdin,
//! stdout, stderr and controlling terminal, in a session of its own. What
//! the child writes to either stream arrives on the master as one stream,
//! in order, and is masked like a pipe's output. What the requester types
//! is written to the master. The terminal's node is made `0600` (the kernel
//! gives `0620`, group `tty`): nobody else may write to it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};

use crate::protocol::TermSize;

/// The broker's end of a lease's terminal, shared by the output pump (reads)
/// and the input writer.
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a terminal of `size`: the master (non-blocking, registered with
/// the runtime) and the child's end.
pub fn open(size: TermSize) -> io::Result<(Arc<Master>, OwnedFd)> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    // The peer by the master itself, not by a path someone could swap.
    let child = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    rustix::fs::fchmod(&child, rustix::fs::Mode::from_raw_mode(0o600))?;
    rustix::termios::tcsetwinsize(&master, winsize(size))?;
    rustix::io::ioctl_fionbio(&master, true)?;
    Ok((
        Arc::new(Master {
            fd: crate::sys::async_fd(master)?,
        }),
        child,
    ))
}

fn winsize(size: TermSize) -> Winsize {
    Winsize {
        ws_row: size.rows.max(1),
        ws_col: size.cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Master {
    /// Writes all of `bytes` (what the requester typed), waiting while the
    /// terminal's input queue is full.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), bytes)?)) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// The end of the requester's input: the terminal's end-of-file
    /// character, which a reading program sees as end of input.
    pub async fn end_input(&self) -> io::Result<()> {
        let eof = rustix::termios::tcgetattr(self.fd.get_ref())
            .map(|t| t.special_codes[rustix::termios::SpecialCodeIndex::VEOF])
            .unwrap_or(4);
        self.write_all(&[eof]).await
    }

    /// Resizes the terminal (the child's foreground group gets `SIGWINCH`).
    pub fn resize(&self, size: TermSize) -> io::Result<()> {
        Ok(rustix::termios::tcsetwinsize(
            self.fd.get_ref().as_fd(),
            winsize(size),
        )?)
    }
}

/// Reads the master as an [`AsyncRead`]. The kernel answers `EIO` once no
/// process holds the child's end any more: that is the end of output.
pub struct Reader(pub Arc<Master>);

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}
