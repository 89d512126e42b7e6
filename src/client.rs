//! A small HTTP/1.1 client for a node's API (hyper, one connection per request) and the
//! client commands of the command line (`get`, `op`, `docs`, `status`, `health`, `watch`).
//!
//! Owns: addressing a node (`--config FILE --node ID` or `--url URL [--token T]`), turning
//! non-2xx answers into [`ClientError::Status`] with the server's `"error"` text, the
//! server-sent-events reader. The cluster status table is in [`mod@status`]. Must not
//! touch: the node itself, storage or the network beyond HTTP requests to the given
//! address.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::config::Config;

mod status;

pub use status::{cluster_status, ClusterStatus, NodeRow};

/// The default time a request may take, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port[/prefix]`.
    #[error("bad URL {url:?}: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The node is not in the topology file.
    #[error("{file}: no node {node:?}")]
    UnknownNode {
        /// The topology file.
        file: String,
        /// The node asked for.
        node: String,
    },
    /// The topology file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// No connection could be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {url} failed: {source}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        source: hyper::Error,
    },
    /// No answer came in time.
    #[error("no answer from {url} within {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered with a non-2xx status.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's `"error"` text (or its body).
        message: String,
    },
    /// The answer is not what the API sends.
    #[error("unexpected answer from {url}: {why}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A client for one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port` to connect to and to send as `Host`.
    authority: String,
    /// Path prefix of the URL (empty or starting with `/`, no trailing `/`).
    prefix: String,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client for `url` (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let bad = |why: &str| ClientError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') || prefix.contains(['?', '#']) {
            return Err(bad("user info, query and fragment are not supported"));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Client {
            authority,
            prefix: prefix.to_string(),
            token,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// A client for node `node` of a topology file: its `api` address and the file's token.
    /// An unspecified address (`0.0.0.0`, `::`) is reached on the loopback address.
    pub fn for_node(config: &Config, node: &str) -> Result<Client, ClientError> {
        let spec = config.node(node).ok_or_else(|| ClientError::UnknownNode {
            file: config.path.display().to_string(),
            node: node.to_string(),
        })?;
        Client::new(&url_of(spec.api), config.api_token.clone())
    }

    /// The same client with another time limit per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.prefix)
    }

    /// Sends one request; any status is an `Ok` answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.url());
        let exchange = async {
            let response = self.send(method, path, body).await?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| ClientError::Http {
                    url: url.clone(),
                    source,
                })?
                .to_bytes()
                .to_vec();
            Ok(Answer {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })?
    }

    /// Sends a request and returns the 2xx answer's JSON; any other status is
    /// [`ClientError::Status`].
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, ClientError> {
        let answer = self.checked(method, path, body).await?;
        answer.json().ok_or_else(|| ClientError::BadAnswer {
            url: format!("{}{path}", self.url()),
            why: "the body is not JSON".into(),
        })
    }

    /// Sends a request; a non-2xx answer is [`ClientError::Status`].
    pub async fn checked(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let answer = self.request(method, path, body).await?;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            let message = answer
                .json()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
            Err(ClientError::Status {
                url: format!("{}{path}", self.url()),
                status: answer.status,
                message,
            })
        }
    }

    /// Opens a server-sent-events stream at `path` (the answer headers within the time
    /// limit; events as they come).
    pub async fn events(&self, path: &str) -> Result<EventStream, ClientError> {
        let url = format!("{}{path}", self.url());
        let response = tokio::time::timeout(self.timeout, self.send(Method::GET, path, None))
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })??;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status {
                url,
                status,
                message,
            });
        }
        Ok(EventStream::from_body(url, response.into_body()))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let url = format!("{}{path}", self.url());
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.authority.clone(),
                source,
            })?;
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let (mut sender, connection) =
            http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadUrl {
                url: url.clone(),
                why: e.to_string(),
            })?;
        sender.send_request(request).await.map_err(http)
    }
}

/// A server-sent-events stream, parsed by `eventsource-stream` (from bytes, so a character
/// split across two reads stays whole).
pub struct EventStream {
    url: String,
    events: SseEvents,
}

type SseEvents = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<eventsource_stream::Event, EventStreamError<hyper::Error>>,
            > + Send,
    >,
>;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field (`"message"` if absent).
    pub event: String,
    /// The `data:` lines, joined with newlines.
    pub data: String,
}

impl EventStream {
    fn new<S>(url: String, bytes: S) -> Self
    where
        S: futures_util::Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
    {
        EventStream {
            url,
            events: Box::pin(bytes.eventsource()),
        }
    }

    fn from_body(url: String, body: Incoming) -> Self {
        let bytes = http_body_util::BodyStream::new(body).filter_map(|frame| {
            std::future::ready(match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            })
        });
        EventStream::new(url, bytes)
    }

    /// The next event (comments and keep-alives are skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        match self.events.next().await {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(Event {
                event: e.event,
                data: e.data,
            })),
            Some(Err(EventStreamError::Transport(source))) => Err(ClientError::Http {
                url: self.url.clone(),
                source,
            }),
            Some(Err(e)) => Err(ClientError::BadAnswer {
                url: self.url.clone(),
                why: e.to_string(),
            }),
        }
    }
}

/// The URL of an API address; an unspecified IP is reached on loopback.
pub fn url_of(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// The path of a document endpoint: `/v1/docs/{id}{suffix}`, the id percent-encoded
/// (the server refuses ids outside `[A-Za-z0-9_.~-]` with a clear error).
pub fn doc_path(doc: &str, suffix: &str) -> String {
    let mut path = String::from("/v1/docs/");
    // `.` and `..` would be dot segments of the path: encoded, they reach the server as ids.
    let dots = doc == "." || doc == "..";
    for b in doc.bytes() {
        if (b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'~' | b'-')) && !dots {
            path.push(char::from(b));
        } else {
            let _ = write!(path, "%{b:02X}");
        }
    }
    path.push_str(suffix);
    path
}

/// The body of `concordant op`: `ops` is a JSON list of ops, a single op object, or a
/// whole request (`{"ops":[...], ...}`); `ack` and `timeout_ms` are added when given.
pub fn op_request(
    ops: &str,
    ack: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<Value, ClientError> {
    let value: Value = serde_json::from_str(ops)
        .map_err(|e| ClientError::Usage(format!("--ops is not valid JSON: {e}")))?;
    let mut request = match value {
        Value::Array(_) => serde_json::json!({ "ops": value }),
        Value::Object(ref o) if o.contains_key("ops") => value,
        Value::Object(_) => serde_json::json!({ "ops": [value] }),
        other => {
            return Err(ClientError::Usage(format!(
                "--ops must be a JSON list of ops, an op object or a request object, not {other}"
            )))
        }
    };
    if let Some(ack) = ack {
        let ack = match ack {
            "local" | "all" => Value::from(ack),
            k => Value::from(k.parse::<u64>().map_err(|_| {
                ClientError::Usage(format!(
                    "--ack must be local, all or a number of peers, not {k:?}"
                ))
            })?),
        };
        request["ack"] = ack;
    }
    if let Some(t) = timeout_ms {
        request["timeout_ms"] = Value::from(t);
    }
    Ok(request)
}

/// `concordant op`: applies the request to `doc`; answers `{"heads","acked_by"}`. The
/// client waits as long as the request's `timeout_ms` allows, plus a margin.
pub async fn op(client: &Client, doc: &str, request: &Value) -> Result<Value, ClientError> {
    let wait = request
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .unwrap_or(crate::ops::DEFAULT_TIMEOUT_MS);
    let client = client
        .clone()
        .with_timeout(Duration::from_millis(wait.saturating_add(10_000)));
    let body = serde_json::to_vec(request).map_err(|e| ClientError::Usage(e.to_string()))?;
    client
        .json(Method::POST, &doc_path(doc, "/ops"), Some(body))
        .await
}

/// `concordant get`: the document as JSON.
pub async fn get(client: &Client, doc: &str) -> Result<Value, ClientError> {
    client.json(Method::GET, &doc_path(doc, ""), None).await
}

/// `concordant docs`: every document with its heads.
pub async fn docs(client: &Client) -> Result<Value, ClientError> {
    client.json(Method::GET, "/v1/docs", None).await
}

/// `concordant status --node`: one node's status.
pub async fn status(client: &Client) -> Result<Value, ClientError> {
    client.json(Method::GET, "/v1/status", None).await
}

/// `GET /v1/cluster`: every node's view as this node gathers it (see [`crate::cluster`]).
pub async fn cluster(client: &Client) -> Result<Value, ClientError> {
    client.json(Method::GET, "/v1/cluster", None).await
}

/// `concordant health`.
pub async fn health(client: &Client) -> Result<Value, ClientError> {
    client.json(Method::GET, "/v1/health", None).await
}

/// `concordant watch`: the change events of `doc`.
pub async fn watch(client: &Client, doc: &str) -> Result<EventStream, ClientError> {
    client.events(&doc_path(doc, "/watch")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = Client::new("http://127.0.0.1:8101", None).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:8101");
        let c = Client::new("http://example:9/api/", None).unwrap();
        assert_eq!(c.url(), "http://example:9/api");
        let c = Client::new("http://[::1]", None).unwrap();
        assert_eq!(c.url(), "http://[::1]:80");
        assert!(Client::new("https://x:1", None).is_err());
        assert!(Client::new("http://", None).is_err());
        assert!(Client::new("ftp://x", None).is_err());
    }

    #[test]
    fn encodes_doc_paths() {
        assert_eq!(doc_path("a.b~c_d-e", "/ops"), "/v1/docs/a.b~c_d-e/ops");
        assert_eq!(doc_path("a b/é", ""), "/v1/docs/a%20b%2F%C3%A9");
    }

    #[test]
    fn builds_op_requests() {
        let one = op_request(r#"{"op":"set","path":["a"],"value":1}"#, Some("2"), None).unwrap();
        assert_eq!(one["ops"][0]["op"], "set");
        assert_eq!(one["ack"], 2);
        let list = op_request(r#"[{"op":"del","path":["a"]}]"#, Some("all"), Some(10)).unwrap();
        assert_eq!(list["ack"], "all");
        assert_eq!(list["timeout_ms"], 10);
        let whole = op_request(r#"{"ops":[],"ack":"local"}"#, None, None).unwrap();
        assert_eq!(whole["ack"], "local");
        assert!(op_request("[", None, None).is_err());
        assert!(op_request("3", None, None).is_err());
        assert!(op_request("[]", Some("many"), None).is_err());
    }

    #[tokio::test]
    async fn parses_events_split_anywhere() {
        let text = ": keep-alive\n\nevent: change\ndata: {\"a\":\"é€\"}\n\ndata: x\r\n\r\n";
        let bytes = text.as_bytes();
        // Every split point, also inside a multi-byte character.
        for cut in 0..bytes.len() {
            let chunks = vec![
                Ok(Bytes::copy_from_slice(&bytes[..cut])),
                Ok(Bytes::copy_from_slice(&bytes[cut..])),
            ];
            let mut events = EventStream::new("test".into(), futures_util::stream::iter(chunks));
            let e = events.next().await.unwrap().unwrap();
            assert_eq!(e.event, "change", "cut at {cut}");
            assert_eq!(e.data, "{\"a\":\"é€\"}", "cut at {cut}");
            let e = events.next().await.unwrap().unwrap();
            assert_eq!((e.event.as_str(), e.data.as_str()), ("message", "x"));
            assert!(events.next().await.unwrap().is_none());
        }
    }
}
