//! Plugin stdout/stderr: each line goes to the host log through the task's
//! [`TaskLog`] budget, never to the host's own stdio. Writes always succeed
//! (excess is dropped and counted) so a chatty guest cannot trap on a full
//! pipe. Guests may write a line in pieces (Rust's unbuffered stderr does),
//! so partial lines are held until their newline, up to a bounded length.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::log::TaskLog;
use crate::runtime::bindings::iicp::plugin::log::Level;

/// How much a guest may write per `check-write` permit.
const WRITE_PERMIT_BYTES: usize = 64 * 1024;
/// A partial line longer than this is logged without waiting for its end.
const MAX_PENDING_BYTES: usize = 4096;

/// One of a plugin's output streams. Clones share the pending partial line,
/// which is logged when the last clone is dropped with the task's store.
#[derive(Clone)]
pub struct PluginOutput {
    inner: Arc<OutputInner>,
}

struct OutputInner {
    log: Arc<TaskLog>,
    source: &'static str,
    level: Level,
    pending: Mutex<Vec<u8>>,
}

impl PluginOutput {
    /// The plugin's stdout, logged at info level.
    pub fn stdout(log: Arc<TaskLog>) -> Self {
        Self::new(log, "stdout", Level::Info)
    }

    /// The plugin's stderr, logged at warn level.
    pub fn stderr(log: Arc<TaskLog>) -> Self {
        Self::new(log, "stderr", Level::Warn)
    }

    fn new(log: Arc<TaskLog>, source: &'static str, level: Level) -> Self {
        Self {
            inner: Arc::new(OutputInner {
                log,
                source,
                level,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Splits `bytes` into lines; a partial line waits for its end, but never
    /// grows past [`MAX_PENDING_BYTES`]: beyond that it is logged as it is.
    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = MAX_PENDING_BYTES - pending.len();
            let (piece, ends_line) = match rest.iter().take(room).position(|&b| b == b'\n') {
                Some(newline) => (&rest[..newline], true),
                None => (&rest[..rest.len().min(room)], false),
            };
            pending.extend_from_slice(piece);
            rest = &rest[piece.len() + usize::from(ends_line)..];
            if ends_line || pending.len() >= MAX_PENDING_BYTES {
                self.inner.emit(&pending);
                pending.clear();
            }
        }
    }
}

impl OutputInner {
    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        if !line.trim().is_empty() {
            self.log.emit(self.level, self.source, &line);
        }
    }
}

impl Drop for OutputInner {
    fn drop(&mut self) {
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|p| p.into_inner()));
        self.emit(&pending);
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for PluginOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT_BYTES)
    }
}

impl AsyncWrite for PluginOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_a_line_become_one_line() {
        let log = Arc::new(TaskLog::new("p".into(), "t".into(), 10, 1000));
        let out = PluginOutput::stderr(log.clone());
        out.write_bytes(b"part one ");
        out.write_bytes(b"and two\nsecond");
        out.write_bytes(b" line\n");
        drop(out);
        assert_eq!(log.lines_emitted(), 2);
    }

    #[test]
    fn a_partial_line_never_holds_more_than_the_pending_limit() {
        let log = Arc::new(TaskLog::new("p".into(), "t".into(), 100, 1 << 20));
        let out = PluginOutput::stdout(log.clone());
        out.write_bytes(&vec![b'x'; 3 * MAX_PENDING_BYTES + 10]);
        assert_eq!(log.lines_emitted(), 3);
        assert_eq!(out.inner.pending.lock().unwrap().len(), 10);
        out.write_bytes(b"end\nnext");
        assert_eq!(log.lines_emitted(), 4);
        assert_eq!(out.inner.pending.lock().unwrap().as_slice(), b"next");
    }

    #[test]
    fn an_unterminated_line_is_logged_when_the_stream_goes_away() {
        let log = Arc::new(TaskLog::new("p".into(), "t".into(), 10, 1000));
        let out = PluginOutput::stdout(log.clone());
        out.clone().write_bytes(b"no newline");
        assert_eq!(log.lines_emitted(), 0);
        drop(out);
        assert_eq!(log.lines_emitted(), 1);
    }
}
