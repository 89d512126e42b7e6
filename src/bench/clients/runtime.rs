//! One automerge-repo client of `concordant bench --sync-clients` from connection to stop
//! (connect, find or make its document, answer every `sync`, edit on schedule, record the
//! latency of the changes it receives), and what the clients of a phase share with the
//! run ([`Ctx`]): counters, the window, failures, the waits on them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::bench::repo_client::{DocCopy, RepoClient};
use crate::bench::BenchError;
use crate::sync::codec::RepoMessage;

/// Bound on each step of a client's connection (TCP connect, upgrade, `peer` answer).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Clients connecting at once (TCP connect, upgrade and `join`); the rest wait their turn.
const CONNECTING: usize = 64;

/// The longest wait for the clients' tasks to end once told to stop.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// How often progress lines are printed during long waits.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Where the clients are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Connecting and syncing.
    Setup,
    /// Editing (the window is in [`Ctx::window`]).
    Edit,
    /// Close the socket and end.
    Stop,
}

/// The edit phase's times, µs since [`Ctx::epoch`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    /// Editing starts.
    pub(super) start: u64,
    /// The measured window starts.
    pub(super) from: u64,
    /// The window ends; no edits after it.
    pub(super) to: u64,
}

impl Window {
    pub(super) fn contains(&self, t: u64) -> bool {
        (self.from..self.to).contains(&t)
    }
}

/// What the clients of one phase share with the run.
pub(super) struct Ctx {
    epoch: Instant,
    connecting: Semaphore,
    edit_ms: (u64, u64),
    pub(super) window: OnceLock<Window>,
    /// Clients synced and still connected.
    pub(super) synced: AtomicUsize,
    /// Clients that failed.
    pub(super) failed: AtomicUsize,
    first_failure: Mutex<Option<String>>,
    /// Changes committed in the window.
    pub(super) writes: AtomicU64,
    /// Receptions of those changes by other clients.
    pub(super) received: AtomicU64,
    /// Tells the fan-out writer to make its change.
    pub(super) fanout: Notify,
    pub(super) fanout_received: AtomicUsize,
    pub(super) fanout_max_us: AtomicU64,
}

impl Ctx {
    pub(super) fn new(edit_ms: (u64, u64)) -> Arc<Ctx> {
        Arc::new(Ctx {
            epoch: Instant::now(),
            connecting: Semaphore::new(CONNECTING),
            edit_ms,
            window: OnceLock::new(),
            synced: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_failure: Mutex::new(None),
            writes: AtomicU64::new(0),
            received: AtomicU64::new(0),
            fanout: Notify::new(),
            fanout_received: AtomicUsize::new(0),
            fanout_max_us: AtomicU64::new(0),
        })
    }

    pub(super) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub(super) fn at(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(why);
    }

    pub(super) fn first_failure(&self) -> String {
        self.first_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

/// One client of a phase.
pub(super) struct ClientSpec {
    /// The node's API.
    pub(super) addr: SocketAddr,
    /// Peer id.
    pub(super) peer: String,
    /// The node's index.
    pub(super) node: usize,
    /// Its document.
    pub(super) doc: String,
    /// Makes the document (else finds it).
    pub(super) create: bool,
    /// Edits during [`Phase::Edit`].
    pub(super) edits: bool,
    /// Makes the fan-out change when told.
    pub(super) fanout_writer: bool,
}

/// One latency sample: a change made on node `from`, applied by a client on node `to`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) from: u8,
    pub(super) to: u8,
    pub(super) us: u64,
}

/// What one client's task leaves.
#[derive(Default)]
struct Outcome {
    samples: Vec<Sample>,
    synced: bool,
}

/// Runs one client until told to stop; a failure is recorded in `ctx`.
pub(super) async fn client_task(
    spec: ClientSpec,
    ctx: Arc<Ctx>,
    mut phase: watch::Receiver<Phase>,
) -> Vec<Sample> {
    let mut out = Outcome::default();
    if let Err(why) = run_client(&spec, &ctx, &mut phase, &mut out).await {
        // Errors while the run stops are no failures.
        if *phase.borrow() != Phase::Stop {
            if out.synced {
                ctx.synced.fetch_sub(1, Ordering::AcqRel);
            }
            ctx.fail(why);
        }
    }
    out.samples
}

async fn run_client(
    spec: &ClientSpec,
    ctx: &Ctx,
    phase: &mut watch::Receiver<Phase>,
    out: &mut Outcome,
) -> Result<(), String> {
    let mut client = {
        let _turn = ctx
            .connecting
            .acquire()
            .await
            .map_err(|_| "the run ended".to_string())?;
        RepoClient::connect(spec.addr, spec.peer.clone(), CONNECT_LIMIT).await?
    };
    let key = spec.peer.as_str();
    let mut copy = if spec.create {
        DocCopy::created(spec.doc.clone(), key)
    } else {
        DocCopy::wanted(spec.doc.clone())
    };
    client.send(&copy.opening(&client)?).await?;
    let mut editing = false;
    let mut next_edit: Option<Instant> = None;
    let mut value = 0_i64;
    loop {
        let now = *phase.borrow_and_update();
        match now {
            Phase::Stop => break,
            Phase::Edit if spec.edits && !editing => {
                editing = true;
                if let Some(w) = ctx.window.get() {
                    let first = rand::random_range(0..=ctx.edit_ms.1 * 1000);
                    next_edit = Some(ctx.at(w.start + first)).filter(|&t| t < ctx.at(w.to));
                }
            }
            _ => {}
        }
        let edit_at = next_edit.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            msg = client.recv() => {
                let msg = msg?;
                on_message(spec, ctx, &mut client, &mut copy, msg, out).await?;
            }
            _ = tokio::time::sleep_until(edit_at.into()), if next_edit.is_some() => {
                let Some(w) = ctx.window.get().copied() else {
                    next_edit = None;
                    continue;
                };
                value += 1;
                let t = ctx.now_us();
                copy.edit(key, value, format!("{}:{t}", spec.node + 1));
                if w.contains(t) {
                    ctx.writes.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(msg) = copy.outgoing(&client) {
                    client.send(&msg).await?;
                }
                let gap = rand::random_range(ctx.edit_ms.0..=ctx.edit_ms.1);
                next_edit = Some(Instant::now() + Duration::from_millis(gap))
                    .filter(|&t| t < ctx.at(w.to));
            }
            _ = ctx.fanout.notified(), if spec.fanout_writer => {
                value += 1;
                let t = ctx.now_us();
                copy.edit(key, value, format!("f:{t}"));
                if let Some(msg) = copy.outgoing(&client) {
                    client.send(&msg).await?;
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

/// Handles one message from the node as automerge-repo does: a `sync` is applied and
/// answered at once.
async fn on_message(
    spec: &ClientSpec,
    ctx: &Ctx,
    client: &mut RepoClient,
    copy: &mut DocCopy,
    msg: RepoMessage,
    out: &mut Outcome,
) -> Result<(), String> {
    match msg {
        RepoMessage::Sync {
            document_id, data, ..
        } if document_id == copy.id => {
            let changes = copy.receive(&data)?;
            let applied = ctx.now_us();
            for change in &changes {
                record(spec, ctx, change.message(), applied, out);
            }
            if !out.synced && copy.synced() {
                out.synced = true;
                ctx.synced.fetch_add(1, Ordering::AcqRel);
            }
            if let Some(answer) = copy.outgoing(client) {
                client.send(&answer).await?;
            }
            Ok(())
        }
        RepoMessage::Sync { document_id, .. } => Err(format!(
            "{}: a sync message for {document_id}, which it never asked for",
            client.me()
        )),
        // The node follows the document for the client even so: it arrives when the node
        // gets it.
        RepoMessage::DocUnavailable { .. } => Ok(()),
        _ => Ok(()),
    }
}

/// Records the arrival of a change whose message is `"<node>:<µs>"` (an edit) or
/// `"f:<µs>"` (the fan-out change).
fn record(spec: &ClientSpec, ctx: &Ctx, message: Option<&str>, applied: u64, out: &mut Outcome) {
    let Some((tag, t)) = message.and_then(|m| m.split_once(':')) else {
        return;
    };
    let Ok(t) = t.parse::<u64>() else {
        return;
    };
    let us = applied.saturating_sub(t);
    if tag == "f" {
        ctx.fanout_received.fetch_add(1, Ordering::AcqRel);
        ctx.fanout_max_us.fetch_max(us, Ordering::AcqRel);
        return;
    }
    let (Ok(from), Some(w)) = (tag.parse::<u8>(), ctx.window.get()) else {
        return;
    };
    if w.contains(t) {
        ctx.received.fetch_add(1, Ordering::AcqRel);
        out.samples.push(Sample {
            from,
            to: spec.node as u8 + 1,
            us,
        });
    }
}

/// Waits until `want` clients are synced; an error if one fails or `limit` passes.
pub(super) async fn wait_synced(
    ctx: &Ctx,
    want: usize,
    started: Instant,
    limit: Duration,
    what: &str,
    progress: &dyn Fn(String),
) -> Result<(), BenchError> {
    let mut report = Instant::now() + PROGRESS_EVERY;
    loop {
        let synced = ctx.synced.load(Ordering::Acquire);
        if ctx.failed.load(Ordering::Acquire) > 0 {
            return Err(BenchError::SyncClients(format!(
                "{what}: a client failed ({} so far): {}",
                ctx.failed.load(Ordering::Acquire),
                ctx.first_failure()
            )));
        }
        if synced >= want {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "{what}: {synced} of {want} clients synced after {limit:?}"
            )));
        }
        if Instant::now() >= report {
            progress(format!("sync: {what}: {synced}/{want} clients synced"));
            report += PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bound on connecting and syncing `clients` clients.
pub(super) fn setup_limit(clients: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(50) * clients as u32
}

/// Tells the clients to stop and collects their samples (tasks not done within
/// [`STOP_LIMIT`] are aborted).
pub(super) async fn stop_clients(
    phase: &watch::Sender<Phase>,
    mut tasks: JoinSet<Vec<Sample>>,
) -> Vec<Sample> {
    let _ = phase.send(Phase::Stop);
    let mut samples = Vec::new();
    let all = async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(mut s) = done {
                samples.append(&mut s);
            }
        }
    };
    let finished = tokio::time::timeout(STOP_LIMIT, all).await.is_ok();
    if !finished {
        tasks.abort_all();
    }
    samples
}
