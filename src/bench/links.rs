//! Slow links in the benchmark: `--link-delay-ms D [--link-jitter-ms J] [--link-loss PCT]`
//! puts a relay of [`crate::netem`] on every directed link (every datagram from one node to
//! another delayed by D ± J ms and dropped with probability PCT %), and the run reports what
//! it measured of the links: the round-trip times QUIC estimated, the links that went down,
//! and what the cluster view (`GET /v1/cluster`) saw.
//!
//! Also here: the tree the benchmark lays an `edges` topology out as (`--topology tree
//! --fanout K`).

use std::time::{Duration, Instant};

use super::BenchError;
use crate::local::LocalCluster;
use crate::netem::LinkFaults;

/// The longest one-way delay the benchmark emulates, ms (10 s: longer is no network's).
pub const MAX_DELAY_MS: i64 = 10_000;

/// The links of a benchmark run with relays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkOptions {
    /// One-way delay of every datagram, ms.
    pub delay_ms: u64,
    /// Each datagram's delay is uniform in `delay_ms ± jitter_ms` (datagrams may overtake
    /// each other); at most `delay_ms`.
    pub jitter_ms: u64,
    /// Datagrams dropped, percent, in `[0, 100)`.
    pub loss_pct: f64,
}

impl LinkOptions {
    /// Checked options from the command line's values: whole milliseconds between 0 and
    /// [`MAX_DELAY_MS`], a jitter of at most the delay, a loss of at least 0 and below 100 %.
    pub fn new(delay_ms: i64, jitter_ms: i64, loss_pct: f64) -> Result<LinkOptions, BenchError> {
        let ms = |flag: &str, v: i64| {
            u64::try_from(v)
                .ok()
                .filter(|_| v <= MAX_DELAY_MS)
                .ok_or_else(|| {
                    BenchError::Options(format!(
                        "{flag} must be between 0 and {MAX_DELAY_MS} ms, not {v}"
                    ))
                })
        };
        let links = LinkOptions {
            delay_ms: ms("--link-delay-ms", delay_ms)?,
            jitter_ms: ms("--link-jitter-ms", jitter_ms)?,
            loss_pct,
        };
        links.check()?;
        Ok(links)
    }

    /// Refuses options no network has: see [`LinkOptions::new`].
    pub fn check(&self) -> Result<(), BenchError> {
        let max = MAX_DELAY_MS.unsigned_abs();
        if self.delay_ms > max {
            return Err(BenchError::Options(format!(
                "--link-delay-ms must be at most {max} ms, not {}",
                self.delay_ms
            )));
        }
        if self.jitter_ms > self.delay_ms {
            return Err(BenchError::Options(format!(
                "--link-jitter-ms ({}) must not exceed --link-delay-ms ({}): a datagram is \
                 delayed by the delay ± the jitter",
                self.jitter_ms, self.delay_ms
            )));
        }
        if !(self.loss_pct.is_finite() && (0.0..100.0).contains(&self.loss_pct)) {
            return Err(BenchError::Options(format!(
                "--link-loss is a percentage of datagrams dropped, at least 0 and below 100, \
                 not {}",
                self.loss_pct
            )));
        }
        Ok(())
    }

    /// What every direction of every link does.
    pub fn faults(&self) -> LinkFaults {
        LinkFaults::slow(
            Duration::from_millis(self.delay_ms),
            Duration::from_millis(self.jitter_ms),
            self.loss_pct / 100.0,
        )
    }
}

/// The links of an `edges` topology of `n` nodes (n1..nN) laid out as a tree: node `i`
/// (from 0) hangs under node `(i - 1) / fanout`, so n1 is the root, n2..n(fanout+1) its
/// children, and so on. Each link once, parent first.
pub fn tree_links(n: usize, fanout: usize) -> Vec<(String, String)> {
    let fanout = fanout.max(1);
    (1..n)
        .map(|i| (format!("n{}", (i - 1) / fanout + 1), format!("n{}", i + 1)))
        .collect()
}

/// QUIC's smoothed round-trip times of every connected link of every running node, ms:
/// (mean, max), or `None` without a connected link.
pub(crate) async fn rtt_ms(cluster: &LocalCluster) -> Result<Option<(f64, f64)>, BenchError> {
    let mut rtts = Vec::new();
    for node in cluster.live() {
        let status = node.status().await?;
        rtts.extend(
            status
                .transport
                .peers
                .values()
                .filter_map(|p| p.rtt)
                .map(|r| r.as_secs_f64() * 1000.0),
        );
    }
    if rtts.is_empty() {
        return Ok(None);
    }
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    Ok(Some((mean, rtts.iter().copied().fold(0.0, f64::max))))
}

/// Links that went down since start, summed over the running nodes (each side of a link
/// counts its own).
pub(crate) async fn links_lost(cluster: &LocalCluster) -> Result<u64, BenchError> {
    let mut lost = 0;
    for node in cluster.live() {
        let status = node.status().await?;
        lost += status
            .transport
            .peers
            .values()
            .map(|p| p.links_lost)
            .sum::<u64>();
    }
    Ok(lost)
}

/// Asks the first running node for the cluster view, as `GET /v1/cluster` does: how many
/// nodes it showed up, and how long the answer took.
pub(crate) async fn cluster_view(cluster: &LocalCluster) -> Result<(usize, f64), BenchError> {
    let Some(node) = cluster.live().next() else {
        return Ok((0, 0.0));
    };
    let start = Instant::now();
    let view = node.cluster().await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let up = view["nodes"].as_array().map_or(0, |nodes| {
        nodes.iter().filter(|n| n["state"] == "up").count()
    });
    Ok((up, ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_options_refuse_what_no_network_does() {
        let ok = LinkOptions::new(50, 5, 1.0).expect("valid");
        assert_eq!((ok.delay_ms, ok.jitter_ms, ok.loss_pct), (50, 5, 1.0));
        let f = ok.faults();
        assert_eq!(f.delay, Duration::from_millis(45));
        assert_eq!(f.jitter, Duration::from_millis(10));
        assert!((f.drop - 0.01).abs() < 1e-12);
        for (d, j, l, needle) in [
            (
                -1,
                0,
                0.0,
                "--link-delay-ms must be between 0 and 10000 ms, not -1",
            ),
            (10_001, 0, 0.0, "--link-delay-ms"),
            (50, -3, 0.0, "--link-jitter-ms must be between"),
            (50, 60, 0.0, "must not exceed --link-delay-ms"),
            (50, 0, 100.0, "--link-loss"),
            (50, 0, -0.5, "--link-loss"),
            (50, 0, f64::NAN, "--link-loss"),
        ] {
            let err = LinkOptions::new(d, j, l).expect_err("refused").to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(
            LinkOptions::new(0, 0, 0.0).is_ok(),
            "relays without a delay"
        );
    }

    #[test]
    fn trees_hang_each_node_under_one_parent() {
        let links = tree_links(7, 2);
        let pairs: Vec<(&str, &str)> = links
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("n1", "n2"),
                ("n1", "n3"),
                ("n2", "n4"),
                ("n2", "n5"),
                ("n3", "n6"),
                ("n3", "n7")
            ]
        );
        assert_eq!(tree_links(25, 24).len(), 24, "a star");
        assert!(tree_links(25, 24).iter().all(|(a, _)| a == "n1"));
        assert!(tree_links(1, 3).is_empty());
    }
}
