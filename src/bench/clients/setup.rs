//! The set-up of `concordant bench --sync-clients`: every node's HTTP API served in this
//! process, on 127.0.0.1, with room for the run's clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::SyncBenchOptions;
use crate::bench::BenchError;
use crate::local::LocalCluster;

/// Every node's HTTP API, served in this process.
pub(super) struct Apis {
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) tasks: JoinSet<Result<(), crate::api::ApiError>>,
}

impl Apis {
    pub(super) async fn start(
        cluster: &LocalCluster,
        opts: &SyncBenchOptions,
    ) -> Result<Apis, BenchError> {
        let mut listeners = Vec::new();
        for _ in cluster.live() {
            let listener = crate::api::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(|e| BenchError::SyncClients(format!("HTTP API: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| BenchError::SyncClients(format!("HTTP API address: {e}")))?;
            listeners.push((listener, addr));
        }
        let (stop, stopped) = watch::channel(false);
        let mut apis = Apis {
            addrs: Vec::new(),
            stop,
            tasks: JoinSet::new(),
        };
        for (node, (listener, addr)) in cluster.live().zip(listeners) {
            let mut options = crate::api::ApiOptions::new(None);
            let wanted = opts.hold + opts.clients_per_node + 16;
            options.sync.max_clients = options.sync.max_clients.max(wanted);
            let mut stopped = stopped.clone();
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            apis.tasks.spawn(crate::api::serve_with(
                node.clone(),
                listener,
                options,
                shutdown,
            ));
            apis.addrs.push(addr);
        }
        Ok(apis)
    }

    /// Stops every API (their sockets close) and waits for them, at most 10 s.
    pub(super) async fn stop(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
    }
}
