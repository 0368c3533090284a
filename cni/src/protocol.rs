//! The plugin–daemon protocol: one JSON request line from the plugin, one
//! JSON answer line from the daemon, over a unix stream socket; then the
//! connection closes. Holds the request and answer types, the client call the
//! plugin makes, the [`Handler`] trait the node daemon implements and the
//! small blocking server that drives it.
//!
//! This module owns the wire format and the socket; it knows nothing of how
//! the daemon creates ports or allocates addresses.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::args::CniArgs;
use crate::config::{AttachmentId, PluginConfig};
use crate::spec::{CniError, CniResult, ErrorCode};

/// The longest line either side accepts; a longer one is refused.
pub const MAX_MESSAGE_BYTES: u64 = 4 << 20;

/// How long the server waits for a client's request line.
pub const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The CNI verbs the daemon serves (VERSION is answered by the plugin alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container; idempotent.
    Del,
    /// Verify an attachment.
    Check,
    /// Report readiness to serve ADD.
    Status,
    /// Remove everything not in the valid attachments.
    Gc,
}

impl Command {
    /// The name in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The per-attachment parameters of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface name inside the sandbox.
    pub ifname: String,
    /// `CNI_NETNS`; may be absent on DEL.
    pub netns: Option<String>,
    /// Parsed `CNI_ARGS`.
    pub args: CniArgs,
    /// Host directory where the vhost-user socket goes (the pod volume), when
    /// the vhost-user keys and `K8S_POD_UID` are both known.
    pub vhost_socket_dir: Option<PathBuf>,
}

impl Attachment {
    /// The key the daemon stores the attachment under.
    pub fn id(&self) -> AttachmentId {
        AttachmentId {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// What the plugin sends the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonRequest {
    /// The verb.
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// The decoded plugin configuration (the raw document is inside).
    pub config: PluginConfig,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "body", rename_all = "snake_case")]
pub enum DaemonReply {
    /// ADD succeeded with this result.
    Result(CniResult),
    /// DEL, CHECK, STATUS or GC succeeded.
    Done,
    /// The verb failed.
    Error(CniError),
}

/// Why the plugin got no usable answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing accepts connections at the socket (absent, or refused).
    #[error("node daemon is not reachable at {}: {source}", socket.display())]
    Unreachable {
        /// The daemon socket.
        socket: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The daemon did not answer within the timeout.
    #[error("node daemon at {} did not answer within {} s", socket.display(), timeout.as_secs())]
    Timeout {
        /// The daemon socket.
        socket: PathBuf,
        /// The time waited.
        timeout: Duration,
    },
    /// Reading or writing the connection failed, or it closed without an answer.
    #[error("talking to the node daemon at {} failed: {source}", socket.display())]
    Io {
        /// The daemon socket.
        socket: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The daemon's answer is not a [`DaemonReply`].
    #[error("node daemon at {} answered something that is not a reply: {reason}", socket.display())]
    BadReply {
        /// The daemon socket.
        socket: PathBuf,
        /// The decode error.
        reason: String,
    },
}

impl CallError {
    /// True when the daemon could not even be connected to.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable { .. })
    }
}

/// Reads one newline-terminated line of at most [`MAX_MESSAGE_BYTES`].
fn read_line<R: Read>(reader: R) -> io::Result<Option<String>> {
    let mut reader = BufReader::new(reader.take(MAX_MESSAGE_BYTES + 1));
    let mut line = String::new();
    let n = reader.read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message longer than {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    Ok(Some(line))
}

fn write_line<T: Serialize>(mut writer: impl Write, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes)?;
    writer.flush()
}

/// Sends `request` to the daemon at `socket` and waits up to `timeout` for its answer.
pub fn call(
    socket: &Path,
    request: &DaemonRequest,
    timeout: Duration,
) -> Result<DaemonReply, CallError> {
    let stream = UnixStream::connect(socket).map_err(|source| CallError::Unreachable {
        socket: socket.to_owned(),
        source,
    })?;
    let io_err = |source: io::Error| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            CallError::Timeout {
                socket: socket.to_owned(),
                timeout,
            }
        } else {
            CallError::Io {
                socket: socket.to_owned(),
                source,
            }
        }
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    write_line(&stream, request).map_err(io_err)?;
    let line = read_line(&stream)
        .map_err(io_err)?
        .ok_or_else(|| CallError::Io {
            socket: socket.to_owned(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            ),
        })?;
    serde_json::from_str(&line).map_err(|e| CallError::BadReply {
        socket: socket.to_owned(),
        reason: e.to_string(),
    })
}

/// The daemon side: one method per verb. Implementations must be idempotent
/// where the spec says so: `del` succeeds when the attachment is already
/// gone, and a repeated `add` for the same [`Attachment::id`] answers the
/// existing attachment rather than creating a second port.
pub trait Handler: Send + Sync {
    /// ADD: create the pod interface and answer the result.
    fn add(&self, attachment: &Attachment, config: &PluginConfig) -> Result<CniResult, CniError>;
    /// DEL: release everything held for the attachment; success when nothing is held.
    fn del(&self, attachment: &Attachment, config: &PluginConfig) -> Result<(), CniError>;
    /// CHECK: verify the attachment against `config.prev_result`; code 3 when unknown.
    fn check(&self, attachment: &Attachment, config: &PluginConfig) -> Result<(), CniError>;
    /// STATUS: `Ok` when ADD can be served; code 50 or 51 when not.
    fn status(&self, config: &PluginConfig) -> Result<(), CniError>;
    /// GC: release every attachment of network `config.name` not in `config.valid_attachments`.
    fn gc(&self, config: &PluginConfig) -> Result<(), CniError>;
}

/// Runs one request through `handler` and labels the answer with the
/// request's spec version.
pub fn dispatch<H: Handler + ?Sized>(handler: &H, request: &DaemonRequest) -> DaemonReply {
    let version = request.config.cni_version.as_str();
    let config = &request.config;
    let attachment = || {
        request.attachment.as_ref().ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                format!(
                    "{} request without attachment parameters",
                    request.command.as_str()
                ),
            )
        })
    };
    let outcome = match request.command {
        Command::Add => attachment()
            .and_then(|a| handler.add(a, config))
            .map(|r| DaemonReply::Result(r.for_version(version))),
        Command::Del => attachment()
            .and_then(|a| handler.del(a, config))
            .map(|()| DaemonReply::Done),
        Command::Check => attachment()
            .and_then(|a| handler.check(a, config))
            .map(|()| DaemonReply::Done),
        Command::Status => handler.status(config).map(|()| DaemonReply::Done),
        Command::Gc => handler.gc(config).map(|()| DaemonReply::Done),
    };
    outcome.unwrap_or_else(|e| DaemonReply::Error(e.for_version(version)))
}

/// Decodes one request line; a bad one becomes the error to answer (code 6).
pub fn decode_request(line: &str) -> Result<DaemonRequest, CniError> {
    serde_json::from_str(line).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            "malformed request to the node daemon",
        )
        .with_details(e.to_string())
    })
}

/// Serves one connection: reads a request line, answers one line, returns.
/// A malformed request is answered with a code-6 error.
pub fn serve_connection<H: Handler + ?Sized>(stream: UnixStream, handler: &H) -> io::Result<()> {
    stream.set_read_timeout(Some(SERVER_READ_TIMEOUT))?;
    let reply = match read_line(&stream) {
        Ok(Some(line)) => match decode_request(&line) {
            Ok(request) => dispatch(handler, &request),
            Err(e) => DaemonReply::Error(e),
        },
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => DaemonReply::Error(
            CniError::new(
                ErrorCode::DecodingFailure,
                "malformed request to the node daemon",
            )
            .with_details(e.to_string()),
        ),
        Err(e) => return Err(e),
    };
    write_line(&stream, &reply)
}

/// Accepts connections forever, one thread per connection. Returns only when
/// `accept` itself fails; a failing connection is dropped and the rest go on.
pub fn serve<H: Handler + 'static>(listener: UnixListener, handler: Arc<H>) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let handler = Arc::clone(&handler);
        std::thread::Builder::new()
            .name("cni-conn".into())
            .spawn(move || {
                // A broken connection concerns that one client only.
                let _ = serve_connection(stream, handler.as_ref());
            })?;
    }
}

/// Binds the daemon's socket at `path`: creates the parent directory,
/// replaces a stale socket left by an earlier run (never another kind of
/// file), and makes the socket reachable by root only.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reply_wire_shape_is_tagged() {
        let done = serde_json::to_value(DaemonReply::Done).unwrap();
        assert_eq!(done, json!({"outcome": "done"}));
        let err = DaemonReply::Error(CniError::new(ErrorCode::UnknownContainer, "gone"));
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(v["outcome"], "error");
        assert_eq!(v["body"]["code"], 3);
        let back: DaemonReply = serde_json::from_value(v).unwrap();
        assert_eq!(back, err);
    }

    #[test]
    fn bad_request_line_is_a_decoding_failure() {
        let err = decode_request("{\"command\":\"FLY\"}").unwrap_err();
        assert_eq!(err.code, ErrorCode::DecodingFailure);
    }

    #[test]
    fn bind_refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        std::fs::write(&path, b"x").unwrap();
        let err = bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_file(&path).unwrap();
        let first = bind(&path).unwrap();
        drop(first);
        // The stale socket of the first bind is replaced.
        let second = bind(&path);
        assert!(second.is_ok());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn call_to_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let config = PluginConfig::parse(
            json!({"cniVersion": "1.1.0", "name": "n", "type": "t"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let request = DaemonRequest {
            command: Command::Status,
            attachment: None,
            config,
        };
        let err = call(
            &dir.path().join("none.sock"),
            &request,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.is_unreachable());
        assert!(err.to_string().contains("none.sock"));
    }
}
