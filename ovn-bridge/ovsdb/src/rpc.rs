//! JSON-RPC 1.0 as OVSDB uses it (RFC 7047 section 4): remotes, messages, and
//! one connection that sends requests, reads messages and answers `echo`.
//!
//! Owns one socket at a time. It must not know about monitors, replicas or
//! reconnection policy (that is [`crate::client`]).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::codec::{encode, CodecError, JsonStreamDecoder};

/// Failures of one connection.
#[derive(Debug, thiserror::Error, Clone)]
pub enum RpcError {
    /// The remote string is not `unix:PATH` or `tcp:HOST:PORT`.
    #[error("bad remote {0:?} (expected unix:PATH or tcp:HOST:PORT)")]
    BadRemote(String),
    /// Connecting, reading or writing failed.
    #[error("{remote}: {error}")]
    Io {
        /// The remote.
        remote: String,
        /// The I/O error text.
        error: String,
    },
    /// Connecting took longer than the connect timeout.
    #[error("{0}: connect timed out")]
    ConnectTimeout(String),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The byte stream is not a sequence of JSON values.
    #[error("stream: {0}")]
    Codec(#[from] CodecError),
    /// A JSON value that is not a JSON-RPC request, response or notification,
    /// or a response whose id matches no request.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Where a server listens, as OVS spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// `unix:PATH`.
    Unix(String),
    /// `tcp:HOST:PORT` (IPv6 hosts in brackets).
    Tcp(String, u16),
}

impl Remote {
    /// Parses `unix:PATH` or `tcp:HOST:PORT`.
    pub fn parse(s: &str) -> Result<Self, RpcError> {
        let bad = || RpcError::BadRemote(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Remote::Unix(path.to_string()));
        }
        if let Some(hp) = s.strip_prefix("tcp:") {
            let (host, port) = hp.rsplit_once(':').ok_or_else(bad)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = port.parse().map_err(|_| bad())?;
            if host.is_empty() {
                return Err(bad());
            }
            return Ok(Remote::Tcp(host.to_string(), port));
        }
        Err(bad())
    }
}

/// One JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request that expects a response.
    Request {
        /// Request id.
        id: Value,
        /// Method name.
        method: String,
        /// Parameters (an array).
        params: Value,
    },
    /// A request with a null id.
    Notification {
        /// Method name.
        method: String,
        /// Parameters (an array).
        params: Value,
    },
    /// A response; `Err` holds the non-null `error` member.
    Response {
        /// The id of the request answered.
        id: Value,
        /// `result` or `error`.
        result: Result<Value, Value>,
    },
}

impl Message {
    /// Interprets a decoded JSON value.
    pub fn from_json(v: Value) -> Result<Self, RpcError> {
        let Value::Object(mut o) = v else {
            return Err(RpcError::Protocol("message is not an object".into()));
        };
        let id = o.remove("id").unwrap_or(Value::Null);
        if let Some(method) = o.remove("method") {
            let method = method
                .as_str()
                .ok_or_else(|| RpcError::Protocol("method is not a string".into()))?
                .to_string();
            let params = o.remove("params").unwrap_or(Value::Array(Vec::new()));
            if !params.is_array() {
                return Err(RpcError::Protocol(format!(
                    "{method}: params is not an array"
                )));
            }
            return Ok(if id.is_null() {
                Message::Notification { method, params }
            } else {
                Message::Request { id, method, params }
            });
        }
        let error = o.remove("error").unwrap_or(Value::Null);
        let result = o.remove("result");
        if id.is_null() {
            return Err(RpcError::Protocol("response without id".into()));
        }
        let result = match (result, error) {
            (_, e) if !e.is_null() => Err(e),
            (Some(r), _) => Ok(r),
            (None, _) => {
                return Err(RpcError::Protocol(
                    "response without result or error".into(),
                ))
            }
        };
        Ok(Message::Response { id, result })
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One open connection. Writes go through a writer task so that a large
/// outgoing transaction never blocks reading a large incoming update.
pub struct Conn {
    reader: tokio::io::ReadHalf<Box<dyn Stream>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    decoder: JsonStreamDecoder,
    next_id: u64,
    /// The remote this connection goes to.
    pub remote: String,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl Conn {
    /// Connects to `remote` within `timeout`.
    pub async fn open(
        remote: &str,
        timeout: Duration,
        max_message: usize,
    ) -> Result<Self, RpcError> {
        let parsed = Remote::parse(remote)?;
        let io = |e: std::io::Error| RpcError::Io {
            remote: remote.to_string(),
            error: e.to_string(),
        };
        let connect = async {
            Ok::<Box<dyn Stream>, RpcError>(match &parsed {
                Remote::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(io)?),
                Remote::Tcp(h, port) => {
                    let s = tokio::net::TcpStream::connect((h.as_str(), *port))
                        .await
                        .map_err(io)?;
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
            })
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| RpcError::ConnectTimeout(remote.to_string()))??;
        let (reader, mut writer) = tokio::io::split(stream);
        let (out, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        Ok(Self {
            reader,
            out,
            decoder: JsonStreamDecoder::new(max_message),
            next_id: 0,
            remote: remote.to_string(),
            writer,
        })
    }

    fn send(&self, v: &Value) -> Result<(), RpcError> {
        self.out.send(encode(v)).map_err(|_| RpcError::Io {
            remote: self.remote.clone(),
            error: "writer stopped".into(),
        })
    }

    /// Sends a request and returns its id.
    pub fn request(&mut self, method: &str, params: Value) -> Result<u64, RpcError> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"id": id, "method": method, "params": params}))?;
        Ok(id)
    }

    /// Sends a response.
    pub fn respond(&self, id: Value, result: Value) -> Result<(), RpcError> {
        self.send(&json!({"id": id, "result": result, "error": null}))
    }

    /// Reads the next message. Cancel safe: nothing is lost if the future is
    /// dropped before it completes.
    pub async fn next_message(&mut self) -> Result<Message, RpcError> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(v) = self.decoder.next_message()? {
                return Message::from_json(v);
            }
            let n = self
                .reader
                .read(&mut chunk)
                .await
                .map_err(|e| RpcError::Io {
                    remote: self.remote.clone(),
                    error: e.to_string(),
                })?;
            if n == 0 {
                return Err(RpcError::Closed);
            }
            self.decoder.push(&chunk[..n]);
        }
    }

    /// Answers an `echo` request; returns false for other requests (which
    /// get an error response).
    pub fn answer_request(&self, id: Value, method: &str, params: Value) -> Result<(), RpcError> {
        if method == "echo" {
            self.respond(id, params)
        } else {
            self.send(&json!({"id": id, "result": null, "error": "unknown method"}))
        }
    }

    /// Sends a request and waits for its response, answering `echo` and
    /// keeping every other message in `backlog` in arrival order.
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        backlog: &mut Vec<Message>,
    ) -> Result<Result<Value, Value>, RpcError> {
        let id = self.request(method, params)?;
        loop {
            match self.next_message().await? {
                Message::Response { id: rid, result } if rid == json!(id) => return Ok(result),
                Message::Request { id, method, params } => {
                    self.answer_request(id, &method, params)?
                }
                other => backlog.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_remotes() {
        assert_eq!(
            Remote::parse("unix:/a/b").unwrap(),
            Remote::Unix("/a/b".into())
        );
        assert_eq!(
            Remote::parse("tcp:127.0.0.1:6641").unwrap(),
            Remote::Tcp("127.0.0.1".into(), 6641)
        );
        assert_eq!(
            Remote::parse("tcp:[::1]:6641").unwrap(),
            Remote::Tcp("::1".into(), 6641)
        );
        for bad in [
            "ssl:1.2.3.4:5",
            "tcp:1.2.3.4",
            "tcp::5",
            "unix:",
            "tcp:h:99999",
        ] {
            assert!(Remote::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classifies_messages() {
        let m = Message::from_json(json!({"id": "echo", "method": "echo", "params": []})).unwrap();
        assert!(matches!(m, Message::Request { .. }));
        let m =
            Message::from_json(json!({"id": null, "method": "update3", "params": [1]})).unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = Message::from_json(json!({"id": 3, "result": null, "error": "unknown method"}))
            .unwrap();
        assert_eq!(
            m,
            Message::Response {
                id: json!(3),
                result: Err(json!("unknown method"))
            }
        );
        assert!(Message::from_json(json!([1])).is_err());
        assert!(Message::from_json(json!({"result": 1})).is_err());
        assert!(Message::from_json(json!({"id": 1, "method": 5})).is_err());
        assert!(Message::from_json(json!({"id": 1, "method": "x", "params": {}})).is_err());
    }
}
