//! A node's `/metrics` text, and the samples in it.
#![allow(dead_code)]

use concordant::client::Client;

/// `GET /metrics` through `client`.
pub async fn metrics(client: &Client) -> String {
    let answer = client
        .checked(hyper::Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    String::from_utf8(answer.body).expect("metrics text")
}

/// The value of one sample (`name` or `name{labels}`), 0 if absent.
pub fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// `concordant_limits_refused_total{limit="<limit>"}`.
pub fn refused(metrics: &str, limit: &str) -> u64 {
    sample(
        metrics,
        &format!("concordant_limits_refused_total{{limit=\"{limit}\"}}"),
    )
}
