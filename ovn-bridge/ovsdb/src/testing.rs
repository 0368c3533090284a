//! Test support (feature `testing`): real `ovsdb-server` processes, standalone
//! or as a raft cluster on free TCP ports, each in its own temporary
//! directory and killed on drop, plus helpers that run `ovn-nbctl` and
//! `ovsdb-client` against them.
//!
//! Owns the server processes it starts. It must not touch any system
//! database or fixed port; every path lives in the temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Failures while starting or driving a test server.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// A file or process operation failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// A tool exited with an error.
    #[error("{command} failed: {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// A server did not become ready in time.
    #[error("{0} did not become ready")]
    NotReady(String),
    /// A tool printed something that is not the expected JSON.
    #[error("unexpected output: {0}")]
    Output(String),
}

/// Directory of the OVN schemas (`OVN_SCHEMA_DIR`, or where `ovn-common` puts them).
pub fn schema_dir() -> PathBuf {
    std::env::var_os("OVN_SCHEMA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/ovn"))
}

/// Path of the Northbound schema.
pub fn nb_schema() -> PathBuf {
    schema_dir().join("ovn-nb.ovsschema")
}

/// Path of the Southbound schema.
pub fn sb_schema() -> PathBuf {
    schema_dir().join("ovn-sb.ovsschema")
}

/// Runs a tool and returns its standard output.
pub fn run(program: &str, args: &[&str]) -> Result<String, TestingError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| TestingError::Io {
            what: format!("run {program}"),
            error,
        })?;
    if !out.status.success() {
        return Err(TestingError::Tool {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> Result<u16, TestingError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| TestingError::Io {
        what: "bind a free port".into(),
        error,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|error| TestingError::Io {
            what: "read a free port".into(),
            error,
        })
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> Result<(), TestingError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(TestingError::NotReady(what.to_string()))
}

fn spawn_server(dir: &Path, tag: &str, db: &Path, remote: &str) -> Result<Child, TestingError> {
    let ctl = dir.join(format!("{tag}.ctl"));
    let log = dir.join(format!("{tag}.log"));
    Command::new("ovsdb-server")
        .arg(format!("--remote={remote}"))
        .arg(format!("--unixctl={}", ctl.display()))
        .arg(format!("--log-file={}", log.display()))
        .arg("--no-chdir")
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| TestingError::Io {
            what: "spawn ovsdb-server".into(),
            error,
        })
}

/// Runs a transaction with `ovsdb-client transact` and returns the reply.
pub fn client_transact(remote: &str, txn: &Value) -> Result<Value, TestingError> {
    let out = run("ovsdb-client", &["transact", remote, &txn.to_string()])?;
    serde_json::from_str(&out).map_err(|_| TestingError::Output(out))
}

/// The rows of `table` as the server has them: `_uuid` to row JSON
/// (`ovsdb-client` select, the same data `ovsdb-client dump` prints).
pub fn server_rows(remote: &str, database: &str, table: &str) -> Result<Vec<Value>, TestingError> {
    let reply = client_transact(
        remote,
        &serde_json::json!([database, {"op": "select", "table": table, "where": []}]),
    )?;
    reply
        .get(0)
        .and_then(|r| r.get("rows"))
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| TestingError::Output(reply.to_string()))
}

/// A standalone `ovsdb-server` on a unix socket in a temporary directory.
pub struct OvsdbServer {
    dir: tempfile::TempDir,
    schema: PathBuf,
    child: Option<Child>,
    /// `unix:PATH` of the server.
    pub remote: String,
}

impl OvsdbServer {
    /// A server holding an empty OVN Northbound database.
    pub fn start_nb() -> Result<Self, TestingError> {
        Self::start(&nb_schema())
    }

    /// A server holding an empty OVN Southbound database.
    pub fn start_sb() -> Result<Self, TestingError> {
        Self::start(&sb_schema())
    }

    /// A server holding an empty database of `schema`.
    pub fn start(schema: &Path) -> Result<Self, TestingError> {
        let dir = tempfile::tempdir().map_err(|error| TestingError::Io {
            what: "create temp dir".into(),
            error,
        })?;
        let db = dir.path().join("db.db");
        run(
            "ovsdb-tool",
            &["create", &db.to_string_lossy(), &schema.to_string_lossy()],
        )?;
        let sock = dir.path().join("db.sock");
        let mut s = Self {
            remote: format!("unix:{}", sock.display()),
            dir,
            schema: schema.to_path_buf(),
            child: None,
        };
        s.start_process()?;
        Ok(s)
    }

    fn start_process(&mut self) -> Result<(), TestingError> {
        let sock = self.dir.path().join("db.sock");
        let _ = std::fs::remove_file(&sock);
        let db = self.dir.path().join("db.db");
        self.child = Some(spawn_server(
            self.dir.path(),
            "server",
            &db,
            &format!("punix:{}", sock.display()),
        )?);
        wait_until(&self.remote, Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The schema file the database was created from.
    pub fn schema(&self) -> &Path {
        &self.schema
    }

    /// Kills the server (the database file stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and starts the server again on the same socket and database.
    pub fn restart(&mut self) -> Result<(), TestingError> {
        self.stop();
        self.start_process()
    }

    /// Runs `ovn-nbctl --db=<remote> args...`.
    pub fn nbctl(&self, args: &[&str]) -> Result<String, TestingError> {
        let db = format!("--db={}", self.remote);
        let mut all = vec![db.as_str()];
        all.extend_from_slice(args);
        run("ovn-nbctl", &all)
    }

    /// Runs `ovn-sbctl --db=<remote> args...`.
    pub fn sbctl(&self, args: &[&str]) -> Result<String, TestingError> {
        let db = format!("--db={}", self.remote);
        let mut all = vec![db.as_str()];
        all.extend_from_slice(args);
        run("ovn-sbctl", &all)
    }
}

impl Drop for OvsdbServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A whole OVN central: Northbound and Southbound `ovsdb-server`s with a
/// real `ovn-northd` between them, in temporary directories; everything is
/// killed on drop.
pub struct OvnCentral {
    /// The Northbound server.
    pub nb: OvsdbServer,
    /// The Southbound server.
    pub sb: OvsdbServer,
    northd: Option<Child>,
}

impl OvnCentral {
    /// Starts NB, SB and ovn-northd.
    pub fn start() -> Result<Self, TestingError> {
        let nb = OvsdbServer::start_nb()?;
        let sb = OvsdbServer::start_sb()?;
        let dir = nb.dir().to_path_buf();
        let northd = Command::new("ovn-northd")
            .arg(format!("--ovnnb-db={}", nb.remote))
            .arg(format!("--ovnsb-db={}", sb.remote))
            .arg("--no-chdir")
            .arg(format!("--log-file={}", dir.join("northd.log").display()))
            .arg(format!("--pidfile={}", dir.join("northd.pid").display()))
            .arg(format!("--unixctl={}", dir.join("northd.ctl").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| TestingError::Io {
                what: "spawn ovn-northd (Debian package ovn-central)".into(),
                error,
            })?;
        Ok(OvnCentral {
            nb,
            sb,
            northd: Some(northd),
        })
    }

    /// Runs `ovn-nbctl` against the Northbound server.
    pub fn nbctl(&self, args: &[&str]) -> Result<String, TestingError> {
        self.nb.nbctl(args)
    }

    /// Runs `ovn-sbctl` against the Southbound server.
    pub fn sbctl(&self, args: &[&str]) -> Result<String, TestingError> {
        self.sb.sbctl(args)
    }

    /// Waits (up to `timeout`) until ovn-northd has compiled everything
    /// written to the Northbound DB so far into the Southbound DB.
    pub fn sync(&self, timeout: Duration) -> Result<(), TestingError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.nb.nbctl(&["--timeout=10", "--wait=sb", "sync"]) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether ovn-northd is still running.
    pub fn northd_running(&mut self) -> bool {
        self.northd
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for OvnCentral {
    fn drop(&mut self) {
        if let Some(mut c) = self.northd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Member {
    child: Option<Child>,
    client_port: u16,
}

/// A raft cluster of `ovsdb-server`s on free local TCP ports.
pub struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Database name.
    pub database: String,
}

impl Cluster {
    /// A cluster of `n` members holding an empty OVN Northbound database.
    pub fn start_nb(n: usize) -> Result<Self, TestingError> {
        Self::start(&nb_schema(), "OVN_Northbound", n)
    }

    /// A cluster of `n` members of `schema` (whose name is `database`).
    pub fn start(schema: &Path, database: &str, n: usize) -> Result<Self, TestingError> {
        let dir = tempfile::tempdir().map_err(|error| TestingError::Io {
            what: "create temp dir".into(),
            error,
        })?;
        let mut c = Self {
            dir,
            members: Vec::new(),
            database: database.to_string(),
        };
        let mut first_raft = String::new();
        for i in 0..n.max(1) {
            let raft = format!("tcp:127.0.0.1:{}", free_port()?);
            let db = c.dir.path().join(format!("db{i}.db"));
            let dbs = db.to_string_lossy().into_owned();
            if i == 0 {
                run(
                    "ovsdb-tool",
                    &["create-cluster", &dbs, &schema.to_string_lossy(), &raft],
                )?;
                first_raft = raft;
            } else {
                run(
                    "ovsdb-tool",
                    &["join-cluster", &dbs, database, &raft, &first_raft],
                )?;
            }
            let client_port = free_port()?;
            let child = spawn_server(
                c.dir.path(),
                &format!("s{i}"),
                &db,
                &format!("ptcp:{client_port}:127.0.0.1"),
            )?;
            c.members.push(Member {
                child: Some(child),
                client_port,
            });
        }
        // Ready once every member has joined and one is the leader.
        wait_until("cluster", Duration::from_secs(30), || {
            let states: Vec<_> = (0..c.members.len()).map(|i| c.member_state(i)).collect();
            states.iter().all(|s| matches!(s, Some((true, _))))
                && states.iter().any(|s| matches!(s, Some((_, true))))
        })?;
        Ok(c)
    }

    /// `tcp:127.0.0.1:PORT` of every member (the clients' remotes).
    pub fn remotes(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("tcp:127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `(connected, leader)` of member `i` from its `_Server` database.
    pub fn member_state(&self, i: usize) -> Option<(bool, bool)> {
        let m = self.members.get(i)?;
        m.child.as_ref()?;
        let remote = format!("tcp:127.0.0.1:{}", m.client_port);
        let rows = server_rows(&remote, "_Server", "Database").ok()?;
        let row = rows
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(self.database.as_str()))?;
        Some((
            row.get("connected")?.as_bool()?,
            row.get("leader")?.as_bool()?,
        ))
    }

    /// Index of the current leader among running members.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| matches!(self.member_state(i), Some((true, true))))
    }

    /// Kills member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Waits until a running member is leader; returns its index.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize, TestingError> {
        let mut found = None;
        wait_until("a new leader", timeout, || {
            found = self.leader();
            found.is_some()
        })?;
        found.ok_or_else(|| TestingError::NotReady("leader".into()))
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
