//! The local terminal for `exec -t` and `run -t`: raw mode while the
//! remote terminal is attached (restored when dropped), and its size, sent
//! again on every SIGWINCH. And messages made printable before they reach
//! it.

use std::os::fd::AsFd;

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};
use tokio::sync::mpsc;

/// `message` with its control characters but newlines escaped (`\u{1b}`):
/// an error may quote what a sandbox chose (a file name, a link target),
/// and an escape sequence in it must not reach the user's terminal as one.
pub fn printable(message: &str) -> String {
    message
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Raw mode on stdin until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is no terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

/// The terminal's size now (columns, rows).
pub fn size() -> Option<(u16, u16)> {
    let w = tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (w.ws_col > 0 && w.ws_row > 0).then_some((w.ws_col, w.ws_row))
}

/// The terminal's size, then again whenever it changes.
pub fn sizes() -> mpsc::Receiver<(u16, u16)> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Some(s) = size()
            && tx.send(s).await.is_err()
        {
            return;
        }
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(s) = size()
                && tx.send(s).await.is_err()
            {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            printable("a\u{1b}]52;c;x\u{7}b\nc\té ✓"),
            "a\\u{1b}]52;c;x\\u{7}b\nc\\té ✓"
        );
    }
}
