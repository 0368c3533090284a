//! The control socket: a Unix socket served by a thread of its own (never a
//! worker lcore), speaking newline-delimited JSON (`fastpath_api`). It reads
//! counters and port state; it never touches a worker's queues or packets.

use fastpath_api::{Request, Response};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Answers requests.
pub trait Handler: Send + Sync {
    /// Answers one request.
    fn handle(&self, req: Request) -> Response;
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

/// A bound control socket.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds the socket at `path` (creating its directory, replacing a stale
    /// socket file; refusing when another process is listening there).
    pub fn bind(path: &Path) -> std::io::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    ErrorKind::AddrInUse,
                    format!("{} is in use by a running fastpath", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves until `stop` is set; removes the socket file on return.
    pub fn serve(
        mut self,
        handler: Arc<dyn Handler>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
        const LISTENER: Token = Token(0);
        let mut poll = Poll::new()?;
        poll.registry()
            .register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let mut conns: HashMap<Token, Conn> = HashMap::new();
        let mut next = 1usize;
        let mut events = Events::with_capacity(64);
        while !stop.load(Ordering::Relaxed) {
            match poll.poll(&mut events, Some(Duration::from_millis(100))) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    loop {
                        match self.listener.accept() {
                            Ok((mut stream, _)) => {
                                let t = Token(next);
                                next += 1;
                                poll.registry()
                                    .register(&mut stream, t, Interest::READABLE)?;
                                conns.insert(
                                    t,
                                    Conn {
                                        stream,
                                        inbuf: Vec::new(),
                                        outbuf: Vec::new(),
                                    },
                                );
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => {
                                log::warn!("control socket: accept failed: {e}");
                                break;
                            }
                        }
                    }
                    continue;
                }
                let token = ev.token();
                let Some(conn) = conns.get_mut(&token) else {
                    continue;
                };
                let keep = service(conn, handler.as_ref());
                if keep {
                    let interest = if conn.outbuf.is_empty() {
                        Interest::READABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    let _ = poll
                        .registry()
                        .reregister(&mut conn.stream, token, interest);
                } else if let Some(mut c) = conns.remove(&token) {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
        Ok(())
    }
}

/// Reads what is there, answers complete lines, writes what it can. False
/// when the connection is finished.
fn service(conn: &mut Conn, handler: &dyn Handler) -> bool {
    let mut buf = [0u8; 4096];
    let mut open = true;
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => conn.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    while let Some(pos) = conn.inbuf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = conn.inbuf.drain(..=pos).collect();
        let resp = answer(&line[..line.len() - 1], handler);
        if let Ok(mut s) = serde_json::to_vec(&resp) {
            s.push(b'\n');
            conn.outbuf.extend_from_slice(&s);
        }
    }
    if conn.inbuf.len() > MAX_LINE {
        let resp = Response::error(format!("request line longer than {MAX_LINE} bytes"));
        if let Ok(mut s) = serde_json::to_vec(&resp) {
            s.push(b'\n');
            conn.outbuf.extend_from_slice(&s);
        }
        conn.inbuf.clear();
        open = false;
    }
    while !conn.outbuf.is_empty() {
        match conn.stream.write(&conn.outbuf) {
            Ok(n) => {
                conn.outbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    open || !conn.outbuf.is_empty()
}

/// Decodes one request line and runs it.
pub fn answer(line: &[u8], handler: &dyn Handler) -> Response {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim(),
        Err(_) => return Response::error("request is not UTF-8"),
    };
    if text.is_empty() {
        return Response::error("empty request");
    }
    match serde_json::from_str::<Request>(text) {
        Ok(req) => handler.handle(req),
        Err(e) => Response::error(format!("bad request: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastpath_api::{Client, Pong};

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: Request) -> Response {
            match req {
                Request::Ping => Response::ok(&Pong {
                    pid: 1,
                    uptime_secs: 0.0,
                    pipeline: "test".into(),
                }),
                _ => Response::error("not here"),
            }
        }
    }

    #[test]
    fn serves_requests_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let server = ControlServer::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || server.serve(Arc::new(Echo), s2));
        let mut c = Client::connect(path.to_str().unwrap()).unwrap();
        let p: Pong = c.call_as(&Request::Ping).unwrap();
        assert_eq!(p.pipeline, "test");
        let e = c.call(&Request::Ports).unwrap_err();
        assert!(e.to_string().contains("not here"));
        // Garbage on a raw connection gets an error line, and the server lives on.
        let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
        raw.write_all(b"{not json\n").unwrap();
        let mut r = std::io::BufReader::new(raw);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        assert!(
            line.contains("\"ok\":false") && line.contains("bad request"),
            "{line}"
        );
        let p: Pong = c.call_as(&Request::Ping).unwrap();
        assert_eq!(p.pid, 1);
        // A second server on the same live path is refused.
        assert!(ControlServer::bind(&path).is_err());
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap().unwrap();
        assert!(!path.exists());
    }
}
