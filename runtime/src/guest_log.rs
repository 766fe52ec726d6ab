//! Guest stdout and stderr, captured line by line into the node's log (`tracing`, target
//! `flint::guest`) with the function name and invocation id.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; longer output is split into several log records.
const MAX_LINE: usize = 16 * 1024;

/// Which of the guest's output streams a [`GuestLog`] captures.
#[derive(Debug, Clone, Copy)]
pub enum GuestStream {
    /// `stdout`.
    Stdout,
    /// `stderr`.
    Stderr,
}

impl GuestStream {
    fn name(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// A guest output stream that turns every line into a log record.
#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<GuestLogInner>,
}

struct GuestLogInner {
    function: Arc<str>,
    invocation_id: Arc<str>,
    stream: GuestStream,
    pending: Mutex<Vec<u8>>,
}

impl GuestLog {
    /// A stream for one invocation of `function`.
    pub fn new(function: Arc<str>, invocation_id: Arc<str>, stream: GuestStream) -> Self {
        GuestLog {
            inner: Arc::new(GuestLogInner {
                function,
                invocation_id,
                stream,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    fn write_bytes(&self, mut bytes: &[u8]) {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    pending.extend_from_slice(&bytes[..end]);
                    self.emit(&pending);
                    pending.clear();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    pending.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
            if pending.len() >= MAX_LINE {
                self.emit(&pending);
                pending.clear();
            }
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            return;
        }
        tracing::info!(
            target: "flint::guest",
            function = %self.inner.function,
            invocation = %self.inner.invocation_id,
            stream = self.inner.stream.name(),
            "{line}"
        );
    }
}

impl Drop for GuestLogInner {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            let line = String::from_utf8_lossy(pending);
            tracing::info!(
                target: "flint::guest",
                function = %self.function,
                invocation = %self.invocation_id,
                stream = self.stream.name(),
                "{line}"
            );
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
