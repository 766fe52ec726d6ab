//! A small client for the admin API, used by every `fnctl` command but `serve`.

use super::ClientArgs;
use crate::server::{NodeAddresses, addresses_path};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

type RequestBody = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A response from the node.
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, or the server's error as an `Err` with its message.
    pub fn json(self) -> Result<serde_json::Value> {
        if !self.status.is_success() {
            return Err(server_error(&self));
        }
        serde_json::from_slice(&self.body).context("the node answered with invalid JSON")
    }
}

/// Turns an error answer into a message: the server's own words, its kind and status.
pub fn server_error(answer: &Answer) -> anyhow::Error {
    match serde_json::from_slice::<serde_json::Value>(&answer.body) {
        Ok(value) if value["error"]["message"].is_string() => anyhow!(
            "{} ({}, HTTP {})",
            value["error"]["message"].as_str().unwrap_or_default(),
            value["error"]["kind"].as_str().unwrap_or("error"),
            answer.status.as_u16()
        ),
        _ => anyhow!(
            "HTTP {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body).trim()
        ),
    }
}

/// A connection to one node's admin API.
pub struct AdminClient {
    base: String,
    token: String,
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, RequestBody>,
}

impl AdminClient {
    /// Finds the node (`--server`, `FNCTL_SERVER`, `DATA/node.json`, or the default address) and
    /// its token (`--token`, `FNCTL_TOKEN`, or `DATA/admin-token`).
    pub fn connect(args: &ClientArgs) -> Result<Self> {
        let base = match &args.server {
            Some(server) => server.clone(),
            None => match std::fs::read(addresses_path(&args.data_dir)) {
                Ok(bytes) => {
                    let addresses: NodeAddresses =
                        serde_json::from_slice(&bytes).with_context(|| {
                            format!("parsing {}", addresses_path(&args.data_dir).display())
                        })?;
                    format!("http://{}", addresses.admin)
                }
                Err(_) => "http://127.0.0.1:8081".to_string(),
            },
        };
        let base = if base.contains("://") {
            base
        } else {
            format!("http://{base}")
        };
        if !base.starts_with("http://") {
            bail!(
                "`{base}`: fnctl speaks plain http:// to the admin API (put TLS in front of it for remote use)"
            );
        }
        let base = base.trim_end_matches('/').to_string();
        let token = match &args.token {
            Some(token) => token.clone(),
            None => crate::token::read(&args.data_dir).context(
                "no admin token: set FNCTL_TOKEN, pass --token, or point --data-dir/FLINT_DATA at the node's data dir",
            )?,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(AdminClient {
            base,
            token,
            runtime,
            client,
        })
    }

    /// The admin API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and reads the whole answer.
    pub fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: RequestBody,
    ) -> Result<Answer> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(body)
            .with_context(|| format!("building a request to {url}"))?;
        self.runtime.block_on(async {
            let response = self.client.request(request).await.with_context(|| {
                format!(
                    "cannot reach the Flint node at {} (is `fnctl serve` running?)",
                    self.base
                )
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .with_context(|| format!("reading the answer from {url}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
    }

    /// Sends a request with a JSON (or empty) body and returns the JSON answer.
    pub fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let (headers, body) = match body {
            Some(value) => (
                vec![(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                bytes_body(Bytes::from(serde_json::to_vec(&value)?)),
            ),
            None => (Vec::new(), bytes_body(Bytes::new())),
        };
        self.send(method, path, &headers, body)?.json()
    }
}

/// A request body from bytes.
pub fn bytes_body(bytes: Bytes) -> RequestBody {
    http_body_util::Full::new(bytes).boxed_unsync()
}

/// A request body sent in chunks, calling `on_sent` once the last chunk has gone out.
pub fn progress_body(bytes: Bytes, on_sent: impl FnOnce() + Send + 'static) -> RequestBody {
    ProgressBody {
        bytes,
        on_sent: Some(Box::new(on_sent)),
    }
    .boxed_unsync()
}

struct ProgressBody {
    bytes: Bytes,
    on_sent: Option<Box<dyn FnOnce() + Send>>,
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        const CHUNK: usize = 256 << 10;
        if self.bytes.is_empty() {
            return Poll::Ready(None);
        }
        let take = self.bytes.len().min(CHUNK);
        let chunk = self.bytes.split_to(take);
        if self.bytes.is_empty()
            && let Some(on_sent) = self.on_sent.take()
        {
            on_sent();
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.len() as u64)
    }
}
