//! Guest stdout and stderr: captured line by line with the function name and invocation id,
//! into the node's log (`tracing`, target `flint::guest`), a bounded in-memory buffer per
//! function (for `fnctl logs`, with waiting for new lines for `-f`), and a size-rotated file
//! `DATA/logs/NAME.log`.

use dashmap::DashMap;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; longer output is split into several lines.
const MAX_LINE: usize = 16 * 1024;
/// Lines kept in memory per function.
pub const BUFFER_LINES: usize = 10_000;
/// Size at which a function's log file rotates (one older file is kept).
pub const FILE_ROTATE_BYTES: u64 = 16 << 20;

/// Which of the guest's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
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

/// One captured line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Position in the function's log, counting from 1.
    pub seq: u64,
    /// When it was written, RFC 3339 with milliseconds.
    pub time: String,
    /// The invocation that wrote it.
    pub invocation_id: String,
    /// `stdout` or `stderr`.
    pub stream: GuestStream,
    /// The text, without the newline.
    pub line: String,
}

struct Buffer {
    lines: VecDeque<LogLine>,
    next_seq: u64,
    /// The rotated log file, open once the function has printed.
    file: Option<std::fs::File>,
}

/// The captured output of one function.
pub struct FunctionLog {
    path: PathBuf,
    buffer: Mutex<Buffer>,
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for FunctionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FunctionLog {
    fn push(&self, invocation_id: &str, stream: GuestStream, line: &str) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let entry = LogLine {
            seq: buffer.next_seq,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            invocation_id: invocation_id.to_string(),
            stream,
            line: line.to_string(),
        };
        buffer.next_seq += 1;
        // Opened on the first line, not on the first invocation: a node with thousands of
        // functions keeps a file descriptor only for those that print.
        if buffer.file.is_none() {
            buffer.file = open_append(&self.path);
        }
        if let Some(file) = buffer.file.as_mut() {
            let _ = writeln!(
                file,
                "{} {} {} {}",
                entry.time,
                entry.invocation_id,
                stream.name(),
                entry.line
            );
            if file.metadata().map(|m| m.len()).unwrap_or(0) >= FILE_ROTATE_BYTES {
                let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
                buffer.file = open_append(&self.path);
            }
        }
        if buffer.lines.len() == BUFFER_LINES {
            buffer.lines.pop_front();
        }
        buffer.lines.push_back(entry);
        drop(buffer);
        self.changed.notify_waiters();
    }

    /// Lines after `after` (a `seq`), at most the last `tail` of them.
    pub fn read(&self, after: u64, tail: usize) -> (Vec<LogLine>, u64) {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<LogLine> = buffer
            .lines
            .iter()
            .filter(|l| l.seq > after)
            .cloned()
            .collect();
        let skip = lines.len().saturating_sub(tail);
        (lines.into_iter().skip(skip).collect(), buffer.next_seq - 1)
    }

    /// Waits until a line after `after` exists or `timeout` passes.
    pub async fn wait(&self, after: u64, timeout: std::time::Duration) {
        let changed = self.changed.notified();
        if self.read(after, 1).0.is_empty() {
            let _ = tokio::time::timeout(timeout, changed).await;
        }
    }
}

fn open_append(path: &Path) -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

/// The captured output of every function of a node.
pub struct GuestLogs {
    dir: PathBuf,
    functions: DashMap<String, Arc<FunctionLog>>,
}

impl GuestLogs {
    /// Logs under `data_dir/logs`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        Ok(GuestLogs {
            dir,
            functions: DashMap::new(),
        })
    }

    /// The log of `function` (created on first use).
    pub fn function(&self, function: &str) -> Arc<FunctionLog> {
        self.functions
            .entry(function.to_string())
            .or_insert_with(|| {
                let path = self.dir.join(format!("{function}.log"));
                Arc::new(FunctionLog {
                    buffer: Mutex::new(Buffer {
                        lines: VecDeque::new(),
                        next_seq: 1,
                        file: None,
                    }),
                    path,
                    changed: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }
}

/// A guest output stream of one invocation.
#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<GuestLogInner>,
}

struct GuestLogInner {
    function: Arc<str>,
    invocation_id: Arc<str>,
    stream: GuestStream,
    log: Arc<FunctionLog>,
    pending: Mutex<Vec<u8>>,
}

impl GuestLog {
    /// A stream for one invocation of `function`, captured into `log`.
    pub fn new(
        function: Arc<str>,
        invocation_id: Arc<str>,
        stream: GuestStream,
        log: Arc<FunctionLog>,
    ) -> Self {
        GuestLog {
            inner: Arc::new(GuestLogInner {
                function,
                invocation_id,
                stream,
                log,
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
                    self.inner.emit(&pending);
                    pending.clear();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    pending.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
            if pending.len() >= MAX_LINE {
                self.inner.emit(&pending);
                pending.clear();
            }
        }
    }
}

impl GuestLogInner {
    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            return;
        }
        tracing::info!(
            target: "flint::guest",
            function = %self.function,
            invocation = %self.invocation_id,
            stream = self.stream.name(),
            "{line}"
        );
        self.log.push(&self.invocation_id, self.stream, line);
    }
}

impl Drop for GuestLogInner {
    fn drop(&mut self) {
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            self.emit(&pending);
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
