//! `concordant backup` and `concordant restore`: every document of a running node into one
//! file, and merged back into a running cluster, through the node's HTTP API.
//!
//! A backup pages through the node's listing (`GET /v1/docs?limit=...`) and saves each
//! document (`GET /v1/docs/{id}/automerge`: consistent per document) into a file of the
//! [`format`], written beside the target and renamed over it only once complete. A restore
//! first reads the whole file and checks it (a cut or corrupt file is refused before
//! anything changes), then merges each document (`POST /v1/docs/{id}/automerge`): a merge
//! never removes newer changes, so restoring is always safe. Both hold at most
//! [`IN_FLIGHT`] documents at a time (that many requests in flight), whatever the number of
//! documents, and report progress on stderr.

use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::Method;

use crate::client::{doc_path, Client, ClientError};

pub mod format;

/// Documents per listing page.
const PAGE: usize = 1000;
/// Documents saved or merged at once.
const IN_FLIGHT: usize = 16;
/// Progress lines at most this often.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a backup or restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The node could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The node answered with an error.
    #[error("{what}: the node answered {status}: {message}")]
    Node {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// What it said.
        message: String,
    },
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid backup; nothing was restored.
    #[error("{}: {source}; nothing was restored", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: format::FormatError,
    },
}

/// What a backup or restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Documents written to the file, or merged into the node.
    pub docs: u64,
    /// Bytes of document data.
    pub bytes: u64,
    /// Documents listed but gone when they were saved (moved to other nodes meanwhile).
    pub skipped: u64,
}

/// Writes every document `client`'s node stores into `out`.
pub async fn backup(client: &Client, out: &Path) -> Result<Done, BackupError> {
    let file_error = |source| BackupError::File {
        path: out.to_path_buf(),
        source,
    };
    let partial = out.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(file_error)?;
    let mut writer = format::Writer::new(BufWriter::new(file)).map_err(file_error)?;
    let mut done = Done {
        docs: 0,
        bytes: 0,
        skipped: 0,
    };
    let mut progress = Progress::new("backup");
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/docs?limit={PAGE}");
        // Document ids (`[A-Za-z0-9_.~-]`) need no escaping in a query.
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = client.json(Method::GET, &path, None).await?;
        let ids: Vec<String> = page["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect();
        // A few documents in flight at once, written in listing order.
        let mut saves = futures_util::stream::iter(ids.iter())
            .map(|id| async move {
                let answer = client
                    .request(Method::GET, &doc_path(id, "/automerge"), None)
                    .await;
                (id, answer)
            })
            .buffered(IN_FLIGHT);
        while let Some((id, answer)) = saves.next().await {
            let answer = answer?;
            match answer.status {
                200 => {
                    writer.doc(id, &answer.body).map_err(file_error)?;
                    done.docs += 1;
                    done.bytes += answer.body.len() as u64;
                }
                404 => done.skipped += 1,
                status => return Err(refused(format!("saving document {id:?}"), status, &answer)),
            }
            progress.tick(&done);
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let (buffered, _) = writer.finish().map_err(file_error)?;
    let file = buffered
        .into_inner()
        .map_err(|e| file_error(e.into_error()))?;
    file.sync_all().map_err(file_error)?;
    std::fs::rename(&partial, out).map_err(file_error)?;
    progress.end(&done);
    Ok(done)
}

/// Merges every document of the backup `input` into `client`'s node (and so the cluster).
pub async fn restore(client: &Client, input: &Path) -> Result<Done, BackupError> {
    // The whole file is checked before anything changes.
    let checked = {
        let mut reader = open(input)?;
        while read_next(input, &mut reader)?.is_some() {}
        reader.count()
    };
    let mut reader = open(input)?;
    let mut done = Done {
        docs: 0,
        bytes: 0,
        skipped: 0,
    };
    let mut progress = Progress::new("restore");
    // A few merges in flight at once (their fsyncs are shared), the file read as they end.
    let mut merges = FuturesUnordered::new();
    let mut more = true;
    while more || !merges.is_empty() {
        while more && merges.len() < IN_FLIGHT {
            match read_next(input, &mut reader)? {
                Some((id, data)) => merges.push(async move {
                    let bytes = data.len() as u64;
                    let path = doc_path(&id, "/automerge");
                    (
                        id,
                        bytes,
                        client.request(Method::POST, &path, Some(data)).await,
                    )
                }),
                None => more = false,
            }
        }
        let Some((id, bytes, answer)) = merges.next().await else {
            break;
        };
        let answer = answer?;
        if answer.status != 200 {
            return Err(refused(
                format!(
                    "merging document {id:?} ({} of {checked} restored)",
                    done.docs
                ),
                answer.status,
                &answer,
            ));
        }
        done.docs += 1;
        done.bytes += bytes;
        progress.tick(&done);
    }
    progress.end(&done);
    Ok(done)
}

fn open(input: &Path) -> Result<format::Reader<BufReader<std::fs::File>>, BackupError> {
    let file = std::fs::File::open(input).map_err(|source| BackupError::File {
        path: input.to_path_buf(),
        source,
    })?;
    format::Reader::new(BufReader::new(file)).map_err(|source| BackupError::Format {
        path: input.to_path_buf(),
        source,
    })
}

fn read_next(
    input: &Path,
    reader: &mut format::Reader<BufReader<std::fs::File>>,
) -> Result<Option<(String, Vec<u8>)>, BackupError> {
    reader.next_doc().map_err(|source| BackupError::Format {
        path: input.to_path_buf(),
        source,
    })
}

fn refused(what: String, status: u16, answer: &crate::client::Answer) -> BackupError {
    let message = answer
        .json()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
    BackupError::Node {
        what,
        status,
        message,
    }
}

/// Progress lines on stderr.
struct Progress {
    what: &'static str,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        Progress {
            what,
            start: Instant::now(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: &Done) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            self.line(done);
        }
    }

    fn end(&mut self, done: &Done) {
        self.line(done);
    }

    fn line(&self, done: &Done) {
        let secs = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{}: {} documents, {:.1} MB, {secs:.1} s ({:.0} documents/s)",
            self.what,
            done.docs,
            done.bytes as f64 / 1e6,
            done.docs as f64 / secs.max(1e-3)
        );
    }
}
