//! The node's two HTTP listeners — public (functions) and admin (`/v1/` API) — with graceful
//! shutdown: on the signal, stop accepting, let in-flight requests finish up to a deadline.

pub mod admin;
pub mod public;

use crate::invoke::ResponseBody;
use crate::node::Node;
use anyhow::{Context, Result};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where the node listens and how long it drains.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Public listener (functions).
    pub listen: SocketAddr,
    /// Admin listener (`/v1/` API).
    pub admin: SocketAddr,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
}

/// What `DATA/node.json` says about a running node, so local clients and tests can find it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeAddresses {
    /// The public listener's address.
    pub public: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    /// The node's process id.
    pub pid: u32,
}

/// The file a running node describes itself in.
pub fn addresses_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

/// Binds both listeners, loads the deployed functions, serves until `shutdown` resolves, then
/// drains. `/healthz` answers from the moment the listeners are bound; `/readyz` once every
/// deployed function is loaded.
pub async fn serve(
    node: Arc<Node>,
    token: String,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let public = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding the public listener to {}", options.listen))?;
    let admin = TcpListener::bind(options.admin)
        .await
        .with_context(|| format!("binding the admin listener to {}", options.admin))?;
    let addresses = NodeAddresses {
        public: public.local_addr()?,
        admin: admin.local_addr()?,
        pid: std::process::id(),
    };
    node.set_public_addr(addresses.public);
    let data_dir = node.options().data_dir.clone();
    write_addresses(&data_dir, &addresses)?;
    tracing::info!("serving functions on http://{}/fn/NAME/", addresses.public);
    tracing::info!(
        "admin API on http://{}/v1/ (bearer token in {})",
        addresses.admin,
        crate::token::token_path(&data_dir).display()
    );
    tracing::info!("data in {}", data_dir.display());

    let reaper = tokio::spawn(node.clone().sweep_idle_functions());
    let sampler = tokio::spawn(node.clone().sample_gpu_utilization());
    let loader = tokio::spawn({
        let node = node.clone();
        async move {
            if let Err(error) = node.load_all().await {
                tracing::error!("loading deployed functions failed: {error:#}");
            }
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(std::sync::Mutex::new(Some(GracefulShutdown::new())));
    let token = Arc::new(token);
    let public_loop = tokio::spawn(accept_loop(public, stop_rx.clone(), graceful.clone(), {
        let node = node.clone();
        move |request| {
            let node = node.clone();
            async move { public::handle(&node, request).await }
        }
    }));
    let admin_loop = tokio::spawn(accept_loop(admin, stop_rx, graceful.clone(), {
        let node = node.clone();
        move |request| {
            let node = node.clone();
            let token = token.clone();
            async move { admin::handle(&node, &token, request).await }
        }
    }));

    shutdown.await;
    tracing::info!(
        "shutting down: no new connections; draining in-flight requests for up to {}",
        crate::units::format_duration(options.drain_timeout)
    );
    let _ = stop_tx.send(true);
    let _ = public_loop.await;
    let _ = admin_loop.await;
    loader.abort();
    reaper.abort();
    sampler.abort();
    let graceful = graceful.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(graceful) = graceful {
        match tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await {
            Ok(()) => tracing::info!("drained; bye"),
            Err(_) => tracing::warn!("drain deadline passed; closing the remaining connections"),
        }
    }
    let _ = std::fs::remove_file(addresses_path(&data_dir));
    Ok(())
}

fn write_addresses(data_dir: &Path, addresses: &NodeAddresses) -> Result<()> {
    let path = addresses_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(addresses)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<std::sync::Mutex<Option<GracefulShutdown>>>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(request).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let watched = {
            let guard = graceful.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(graceful) => graceful.watch(connection),
                None => break,
            }
        };
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!("connection ended: {error}");
            }
        });
    }
}
