//! The client: one network task per `Client` that owns the connection, picks
//! the cluster leader, reconnects with exponential back-off, re-establishes
//! monitors (`monitor_cond_since` from the last transaction id, falling back
//! to `monitor_cond` and `monitor`), and serves transactions.
//!
//! Owns connection policy and monitor state. It must not parse bytes (that is
//! [`crate::codec`]/[`crate::rpc`]) or define how rows change (that is
//! [`crate::replica`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::ops::{parse_results, Condition, OpResult, Operation, TransactError};
use crate::replica::{Database, Replica, ReplicaCommand, RowChange, UpdateError};
use crate::rpc::{Conn, Message, RpcError};
use crate::schema::{DatabaseSchema, SchemaError};
use crate::typed::TableRow;

/// Client errors.
#[derive(Debug, thiserror::Error, Clone)]
pub enum Error {
    /// Transport or protocol failure of a connection.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The server's schema could not be parsed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The server's schema lacks a table this client needs.
    #[error("server schema {database} has no table {table}")]
    MissingTable {
        /// Database.
        database: String,
        /// Table.
        table: String,
    },
    /// The server's schema lacks a column this client needs.
    #[error("server schema {database} has no column {table}.{column}")]
    MissingColumn {
        /// Database.
        database: String,
        /// Table.
        table: String,
        /// Column.
        column: String,
    },
    /// The server answered a request with a JSON-RPC error.
    #[error("{method}: server error {error}")]
    Server {
        /// The method called.
        method: String,
        /// The `error` member.
        error: Value,
    },
    /// A transaction failed; names the operation.
    #[error(transparent)]
    Transaction(#[from] TransactError),
    /// An update from the server could not be applied (the connection is
    /// dropped and the monitor resynchronised).
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The server does not hold the database, or it is not usable (not
    /// connected to its cluster, not the leader, behind what was seen).
    #[error("{remote}: {reason}")]
    Unusable {
        /// The remote.
        remote: String,
        /// Why.
        reason: String,
    },
    /// Conditions were asked of a server that supports only `monitor`.
    #[error("server does not support monitor conditions")]
    ConditionsUnsupported,
    /// The connection was lost after the request was sent; a transaction
    /// may or may not have committed.
    #[error("connection lost while the request was in flight")]
    ConnectionLost,
    /// No connection became ready in time.
    #[error("could not connect within the timeout: {last_error}")]
    ConnectTimeout {
        /// The last failure seen.
        last_error: String,
    },
    /// The server did not answer the inactivity probe.
    #[error("inactivity probe timed out")]
    ProbeTimeout,
    /// A row does not fit its typed struct.
    #[error(transparent)]
    Row(#[from] crate::typed::RowError),
    /// The network task has stopped.
    #[error("client closed")]
    Closed,
}

/// Options of [`Client::connect`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Use only the cluster leader (as `ovn-northd` and `ovn-controller` do).
    pub leader_only: bool,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Largest reconnection delay.
    pub backoff_max: Duration,
    /// Limit for one socket connect.
    pub connect_timeout: Duration,
    /// How long `Client::connect` waits for the first usable server.
    pub initial_timeout: Duration,
    /// Largest JSON-RPC message accepted.
    pub max_message: usize,
    /// Send an `echo` after this much silence; drop the connection after twice it.
    pub probe_interval: Option<Duration>,
    /// Tables and columns the server's schema must have.
    pub required: Vec<(String, Vec<String>)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            leader_only: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(5),
            initial_timeout: Duration::from_secs(30),
            max_message: crate::codec::DEFAULT_MAX_MESSAGE,
            probe_interval: Some(Duration::from_secs(30)),
            required: Vec::new(),
        }
    }
}

impl ClientOptions {
    /// Requires every table and column of a generated list (`nb::TABLES`).
    pub fn require_tables(mut self, tables: &[(&str, &[&str])]) -> Self {
        for (t, cols) in tables {
            self.required
                .push((t.to_string(), cols.iter().map(|c| c.to_string()).collect()));
        }
        self
    }

    /// Requires the table and columns of one typed row.
    pub fn require_row<T: TableRow>(self) -> Self {
        self.require_tables(&[(T::TABLE, T::COLUMNS)])
    }
}

/// Tables and conditions of one monitored table.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorTable {
    /// Table name.
    pub table: String,
    /// Columns (all when `None`).
    pub columns: Option<Vec<String>>,
    /// Conditions (all rows when `None`); needs `monitor_cond` support.
    pub conditions: Option<Vec<Condition>>,
}

impl MonitorTable {
    /// Every row and column of `table`.
    pub fn all(table: &str) -> Self {
        Self {
            table: table.into(),
            columns: None,
            conditions: None,
        }
    }

    /// Every row of the table of `T`, with the typed columns.
    pub fn of<T: TableRow>() -> Self {
        Self {
            table: T::TABLE.into(),
            columns: Some(T::COLUMNS.iter().map(|c| c.to_string()).collect()),
            conditions: None,
        }
    }

    /// Restricts to rows matching `conditions` (all of them).
    pub fn with_conditions(mut self, conditions: Vec<Condition>) -> Self {
        self.conditions = Some(conditions);
        self
    }
}

/// Connection status, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// The remote in use, when connected and ready.
    pub connected: Option<String>,
    /// Number of sessions that became ready so far.
    pub sessions: u64,
    /// The last error that ended a session or attempt.
    pub last_error: Option<String>,
}

pub(crate) enum Command {
    Transact {
        ops: Vec<Operation>,
        reply: oneshot::Sender<Result<Vec<OpResult>, Error>>,
    },
    Monitor {
        tables: Vec<MonitorTable>,
        reply: oneshot::Sender<Result<Replica, Error>>,
    },
    Replica(ReplicaCommand),
}

/// A handle on the network task. Cloning is cheap.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    schema: watch::Receiver<Arc<DatabaseSchema>>,
    status: watch::Receiver<Status>,
}

impl Client {
    /// Starts the network task for `database` over `remotes` (one server, or
    /// the members of a cluster) and waits until a usable server is found and
    /// its schema checked.
    pub async fn connect(
        remotes: &[String],
        database: &str,
        opts: ClientOptions,
    ) -> Result<Client, Error> {
        if remotes.is_empty() {
            return Err(RpcError::BadRemote(String::new()).into());
        }
        for r in remotes {
            crate::rpc::Remote::parse(r)?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (schema_tx, schema_rx) = watch::channel(Arc::new(DatabaseSchema {
            name: database.to_string(),
            version: String::new(),
            tables: BTreeMap::new(),
        }));
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (ready_tx, ready_rx) = oneshot::channel();
        let initial_timeout = opts.initial_timeout;
        let task = Task {
            remotes: remotes.to_vec(),
            database: database.to_string(),
            opts,
            commands: rx,
            weak_commands: tx.downgrade(),
            queued: VecDeque::new(),
            pending: HashMap::new(),
            monitors: BTreeMap::new(),
            next_monitor: 0,
            schema: None,
            schema_tx,
            status_tx,
            max_index: 0,
            ready: Some(ready_tx),
        };
        tokio::spawn(task.run());
        let client = Client {
            commands: tx,
            schema: schema_rx,
            status: status_rx,
        };
        match tokio::time::timeout(initial_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(client),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::ConnectTimeout {
                last_error: client.status().last_error.unwrap_or_default(),
            }),
        }
    }

    /// Runs a transaction. Waits for a connection if there is none; fails
    /// with [`Error::ConnectionLost`] if the connection drops after sending.
    pub async fn transact(&self, ops: Vec<Operation>) -> Result<Vec<OpResult>, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Transact { ops, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Starts a monitor and returns its replica once the initial contents
    /// are in it. The monitor survives reconnections.
    pub async fn monitor(&self, tables: Vec<MonitorTable>) -> Result<Replica, Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Monitor { tables, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The server's schema as of the last connection.
    pub fn schema(&self) -> Arc<DatabaseSchema> {
        self.schema.borrow().clone()
    }

    /// The connection status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn status_watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MonitorMethod {
    CondSince,
    Cond,
    Plain,
}

struct MonitorState {
    id: String,
    tables: Vec<MonitorTable>,
    db: Database,
    tx: watch::Sender<Arc<Database>>,
    last_txn_id: Option<String>,
}

impl MonitorState {
    fn requests(&self, with_conditions: bool) -> Result<Value, Error> {
        let mut m = serde_json::Map::new();
        for t in &self.tables {
            let mut r = serde_json::Map::new();
            if let Some(c) = &t.columns {
                r.insert("columns".into(), json!(c));
            }
            if let Some(c) = &t.conditions {
                if !with_conditions {
                    return Err(Error::ConditionsUnsupported);
                }
                r.insert(
                    "where".into(),
                    Value::Array(c.iter().map(Condition::to_json).collect()),
                );
            }
            m.insert(t.table.clone(), json!([r]));
        }
        Ok(Value::Object(m))
    }
}

enum Pending {
    Transact {
        ops: Vec<Operation>,
        reply: oneshot::Sender<Result<Vec<OpResult>, Error>>,
    },
    CondChange(oneshot::Sender<Result<(), Error>>),
    Echo,
}

/// Why a session ended.
enum End {
    /// Try again (another remote, or later).
    Retry(Error),
    /// A configuration problem that retrying cannot fix.
    Fatal(Error),
    /// Every handle is gone.
    Shutdown,
}

impl From<RpcError> for End {
    fn from(e: RpcError) -> Self {
        End::Retry(e.into())
    }
}

const ZERO_TXN: &str = "00000000-0000-0000-0000-000000000000";

fn is_unknown_method(e: &Value) -> bool {
    let s = match e {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("error").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    s == "unknown method"
}

struct Task {
    remotes: Vec<String>,
    database: String,
    opts: ClientOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    weak_commands: mpsc::WeakUnboundedSender<Command>,
    queued: VecDeque<Command>,
    pending: HashMap<u64, Pending>,
    monitors: BTreeMap<u64, MonitorState>,
    next_monitor: u64,
    schema: Option<Arc<DatabaseSchema>>,
    schema_tx: watch::Sender<Arc<DatabaseSchema>>,
    status_tx: watch::Sender<Status>,
    max_index: u64,
    ready: Option<oneshot::Sender<Result<(), Error>>>,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = self.opts.backoff_min;
        let mut failures = 0usize;
        let mut next = 0usize;
        loop {
            let remote = self.remotes[next % self.remotes.len()].clone();
            next += 1;
            let mut became_ready = false;
            let end = self.session(&remote, &mut became_ready).await;
            self.status_tx.send_modify(|s| s.connected = None);
            for (_, p) in self.pending.drain() {
                match p {
                    Pending::Transact { reply, .. } => {
                        let _ = reply.send(Err(Error::ConnectionLost));
                    }
                    // The stored conditions are sent again on reconnection.
                    Pending::CondChange(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                    Pending::Echo => {}
                }
            }
            let err = match end {
                End::Shutdown => return,
                End::Fatal(e) => {
                    if let Some(r) = self.ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    e
                }
                End::Retry(e) => e,
            };
            log::info!("ovsdb {remote}: {err}");
            self.status_tx
                .send_modify(|s| s.last_error = Some(err.to_string()));
            if became_ready {
                backoff = self.opts.backoff_min;
                failures = 0;
                continue;
            }
            failures += 1;
            if !self.sleep_queueing(backoff).await {
                return;
            }
            if failures.is_multiple_of(self.remotes.len()) {
                backoff = (backoff * 2).min(self.opts.backoff_max);
            }
        }
    }

    /// Sleeps, queueing commands; false when every handle is gone.
    async fn sleep_queueing(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::sleep(d);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return true,
                c = self.commands.recv() => match c {
                    Some(c) => self.queued.push_back(c),
                    None => return false,
                },
            }
        }
    }

    async fn session(&mut self, remote: &str, became_ready: &mut bool) -> End {
        match self.session_inner(remote, became_ready).await {
            Ok(()) => End::Shutdown,
            Err(e) => e,
        }
    }

    async fn session_inner(&mut self, remote: &str, became_ready: &mut bool) -> Result<(), End> {
        let mut conn = Conn::open(remote, self.opts.connect_timeout, self.opts.max_message).await?;
        let mut backlog = Vec::new();
        if self.database != "_Server" {
            self.check_server(&mut conn, &mut backlog).await?;
        }
        let schema = self.fetch_schema(&mut conn, &mut backlog).await?;
        self.schema = Some(schema.clone());
        self.schema_tx.send_replace(schema.clone());
        let mut method = MonitorMethod::CondSince;
        let ids: Vec<u64> = self.monitors.keys().copied().collect();
        for id in ids {
            if let Some(mut mon) = self.monitors.remove(&id) {
                let r = establish(
                    &mut conn,
                    &mut mon,
                    &schema,
                    &self.database,
                    &mut method,
                    &mut backlog,
                )
                .await;
                self.monitors.insert(id, mon);
                r.map_err(End::Retry)?;
            }
        }
        *became_ready = true;
        if let Some(r) = self.ready.take() {
            let _ = r.send(Ok(()));
        }
        self.status_tx.send_modify(|s| {
            s.connected = Some(remote.to_string());
            s.sessions += 1;
        });
        while let Some(c) = self.queued.pop_front() {
            self.command(&mut conn, c, &schema, &mut method, &mut backlog)
                .await?;
        }
        let mut last_rx = Instant::now();
        let probe = self
            .opts
            .probe_interval
            .unwrap_or(Duration::from_secs(3600));
        let mut tick = tokio::time::interval(probe);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for m in std::mem::take(&mut backlog) {
                self.message(&conn, m, &schema)?;
            }
            tokio::select! {
                m = conn.next_message() => {
                    last_rx = Instant::now();
                    self.message(&conn, m?, &schema)?;
                }
                c = self.commands.recv() => match c {
                    None => return Ok(()),
                    Some(c) => self.command(&mut conn, c, &schema, &mut method, &mut backlog).await?,
                },
                _ = tick.tick() => {
                    if self.opts.probe_interval.is_some() {
                        let idle = last_rx.elapsed();
                        if idle >= probe * 2 {
                            return Err(End::Retry(Error::ProbeTimeout));
                        } else if idle >= probe {
                            let id = conn.request("echo", json!([]))?;
                            self.pending.insert(id, Pending::Echo);
                        }
                    }
                }
            }
        }
    }

    /// Reads the database's row of `_Server.Database`, refuses servers that
    /// are not usable, and monitors that row to notice a leader change.
    async fn check_server(
        &mut self,
        conn: &mut Conn,
        backlog: &mut Vec<Message>,
    ) -> Result<(), End> {
        let remote = conn.remote.clone();
        let unusable = |reason: String| {
            End::Retry(Error::Unusable {
                remote: remote.clone(),
                reason,
            })
        };
        let select = json!(["_Server", {"op": "select", "table": "Database",
            "where": [["name", "==", self.database]],
            "columns": ["model", "connected", "leader", "index"]}]);
        let rows = match conn.call("transact", select, backlog).await? {
            // A server without `_Server` (very old) is treated as standalone.
            Err(_) => return Ok(()),
            Ok(v) => v
                .get(0)
                .and_then(|r| r.get("rows"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        };
        let Some(row) = rows.first() else {
            return Err(unusable(format!("no database {}", self.database)));
        };
        let model = row
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("standalone");
        let connected = row
            .get("connected")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let leader = row.get("leader").and_then(Value::as_bool).unwrap_or(true);
        let index = row.get("index").and_then(Value::as_u64);
        if model == "clustered" {
            if !connected {
                return Err(unusable("not connected to its cluster".into()));
            }
            if self.opts.leader_only && !leader {
                return Err(unusable("not the cluster leader".into()));
            }
            if let Some(i) = index {
                if i < self.max_index {
                    return Err(unusable(format!(
                        "stale: index {i} < {} already seen",
                        self.max_index
                    )));
                }
                self.max_index = i;
            }
            let req = json!(["_Server", "_Server", {"Database": [{
                "columns": ["name", "model", "connected", "leader", "index"],
                "where": [["name", "==", self.database]]}]}]);
            if let Err(e) = conn.call("monitor_cond", req, backlog).await? {
                return Err(End::Retry(Error::Server {
                    method: "monitor_cond".into(),
                    error: e,
                }));
            }
        }
        Ok(())
    }

    async fn fetch_schema(
        &mut self,
        conn: &mut Conn,
        backlog: &mut Vec<Message>,
    ) -> Result<Arc<DatabaseSchema>, End> {
        let v = conn
            .call("get_schema", json!([self.database]), backlog)
            .await?
            .map_err(|error| {
                End::Retry(Error::Server {
                    method: "get_schema".into(),
                    error,
                })
            })?;
        let schema = DatabaseSchema::parse(&v).map_err(|e| End::Fatal(e.into()))?;
        for (table, cols) in &self.opts.required {
            let Some(ts) = schema.tables.get(table) else {
                return Err(End::Fatal(Error::MissingTable {
                    database: self.database.clone(),
                    table: table.clone(),
                }));
            };
            if let Some(c) = cols.iter().find(|c| !ts.columns.contains_key(*c)) {
                return Err(End::Fatal(Error::MissingColumn {
                    database: self.database.clone(),
                    table: table.clone(),
                    column: c.clone(),
                }));
            }
        }
        Ok(Arc::new(schema))
    }

    async fn command(
        &mut self,
        conn: &mut Conn,
        c: Command,
        schema: &Arc<DatabaseSchema>,
        method: &mut MonitorMethod,
        backlog: &mut Vec<Message>,
    ) -> Result<(), End> {
        match c {
            Command::Transact { ops, reply } => {
                let mut params = vec![json!(self.database)];
                params.extend(ops.iter().map(Operation::to_json));
                let id = conn.request("transact", Value::Array(params))?;
                self.pending.insert(id, Pending::Transact { ops, reply });
            }
            Command::Monitor { tables, reply } => {
                if let Some(t) = tables
                    .iter()
                    .find(|t| !schema.tables.contains_key(&t.table))
                {
                    let _ = reply.send(Err(Error::MissingTable {
                        database: self.database.clone(),
                        table: t.table.clone(),
                    }));
                    return Ok(());
                }
                self.next_monitor += 1;
                let id = self.next_monitor;
                let mut db = Database::default();
                db.ensure_tables(tables.iter().map(|t| (&t.table, &t.columns)));
                let (tx, rx) = watch::channel(Arc::new(db.clone()));
                let mut mon = MonitorState {
                    id: format!("m{id}"),
                    tables,
                    db,
                    tx,
                    last_txn_id: None,
                };
                match establish(conn, &mut mon, schema, &self.database, method, backlog).await {
                    Ok(()) => {
                        self.monitors.insert(id, mon);
                        let replica = self.weak_commands.upgrade().map(|commands| Replica {
                            monitor: id,
                            rx,
                            commands,
                        });
                        let _ = reply.send(replica.ok_or(Error::Closed));
                    }
                    // A transport failure: keep the request for the next session.
                    Err(Error::Rpc(e)) => {
                        let tables = mon.tables;
                        self.next_monitor -= 1;
                        self.queued.push_front(Command::Monitor { tables, reply });
                        return Err(End::Retry(e.into()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Replica(ReplicaCommand::ChangeConditions {
                monitor,
                table,
                conditions,
                reply,
            }) => {
                let Some(mon) = self.monitors.get_mut(&monitor) else {
                    let _ = reply.send(Err(Error::Closed));
                    return Ok(());
                };
                let Some(t) = mon.tables.iter_mut().find(|t| t.table == table) else {
                    let _ = reply.send(Err(Error::MissingTable {
                        database: self.database.clone(),
                        table,
                    }));
                    return Ok(());
                };
                if *method == MonitorMethod::Plain {
                    let _ = reply.send(Err(Error::ConditionsUnsupported));
                    return Ok(());
                }
                t.conditions = Some(conditions.clone());
                let req = json!({ table: [{"where": conditions.iter().map(Condition::to_json).collect::<Vec<_>>()}] });
                let id = conn.request("monitor_cond_change", json!([mon.id, mon.id, req]))?;
                self.pending.insert(id, Pending::CondChange(reply));
            }
        }
        Ok(())
    }

    fn message(&mut self, conn: &Conn, m: Message, schema: &DatabaseSchema) -> Result<(), End> {
        match m {
            Message::Request { id, method, params } => conn.answer_request(id, &method, params)?,
            Message::Response { id, result } => {
                let p = id.as_u64().and_then(|id| self.pending.remove(&id));
                match p {
                    None => {
                        return Err(End::Retry(
                            RpcError::Protocol(format!("response to unknown request id {id}"))
                                .into(),
                        ))
                    }
                    Some(Pending::Echo) => {}
                    Some(Pending::Transact { ops, reply }) => {
                        let r = match result {
                            Ok(v) => parse_results(&ops, &v, schema).map_err(Error::from),
                            Err(error) => Err(Error::Server {
                                method: "transact".into(),
                                error,
                            }),
                        };
                        let _ = reply.send(r);
                    }
                    Some(Pending::CondChange(reply)) => {
                        let _ = reply.send(result.map(|_| ()).map_err(|error| Error::Server {
                            method: "monitor_cond_change".into(),
                            error,
                        }));
                    }
                }
            }
            Message::Notification { method, params } => {
                let p = params.as_array().cloned().unwrap_or_default();
                let (updates, txn, v2) = match (method.as_str(), p.len()) {
                    ("update3", 3) => (&p[2], p[1].as_str().map(str::to_string), true),
                    ("update2", 2) => (&p[1], None, true),
                    ("update", 2) => (&p[1], None, false),
                    _ => {
                        log::debug!("ignoring notification {method}");
                        return Ok(());
                    }
                };
                if p[0] == json!("_Server") {
                    return self.server_update(updates, conn);
                }
                let Some(mon) = self.monitors.values_mut().find(|m| p[0] == json!(m.id)) else {
                    log::debug!("update for unknown monitor {}", p[0]);
                    return Ok(());
                };
                let mut work = mon.db.clone();
                let mut changes = Vec::new();
                let r = if v2 {
                    work.apply_update2(schema, updates, &mut changes)
                } else {
                    work.apply_update(schema, updates, &mut changes)
                };
                r.map_err(|e| End::Retry(e.into()))?;
                if txn.is_some() {
                    mon.last_txn_id = txn.clone();
                    work.set_last_txn_id(txn);
                }
                mon.db = work;
                mon.tx.send_replace(mon.db.publish(changes));
            }
        }
        Ok(())
    }

    /// A change of this database's `_Server.Database` row: leave a server
    /// that lost leadership or its cluster.
    fn server_update(&mut self, updates: &Value, conn: &Conn) -> Result<(), End> {
        let Some(rows) = updates.get("Database").and_then(Value::as_object) else {
            return Ok(());
        };
        for ru in rows.values() {
            let row = ru
                .get("modify")
                .or_else(|| ru.get("insert"))
                .or_else(|| ru.get("initial"));
            let reason = if ru.get("delete").is_some() {
                Some("database removed")
            } else if row.and_then(|r| r.get("connected")) == Some(&json!(false)) {
                Some("disconnected from its cluster")
            } else if self.opts.leader_only
                && row.and_then(|r| r.get("leader")) == Some(&json!(false))
            {
                Some("no longer the cluster leader")
            } else {
                None
            };
            if let Some(i) = row.and_then(|r| r.get("index")).and_then(Value::as_u64) {
                self.max_index = self.max_index.max(i);
            }
            if let Some(reason) = reason {
                return Err(End::Retry(Error::Unusable {
                    remote: conn.remote.clone(),
                    reason: reason.into(),
                }));
            }
        }
        Ok(())
    }
}

/// Sends a monitor request (newest method the server knows) and loads its
/// reply into the replica, publishing a snapshot.
async fn establish(
    conn: &mut Conn,
    mon: &mut MonitorState,
    schema: &DatabaseSchema,
    database: &str,
    method: &mut MonitorMethod,
    backlog: &mut Vec<Message>,
) -> Result<(), Error> {
    loop {
        let (name, params) = match *method {
            MonitorMethod::CondSince => (
                "monitor_cond_since",
                json!([
                    database,
                    mon.id,
                    mon.requests(true)?,
                    mon.last_txn_id
                        .clone()
                        .unwrap_or_else(|| ZERO_TXN.to_string())
                ]),
            ),
            MonitorMethod::Cond => (
                "monitor_cond",
                json!([database, mon.id, mon.requests(true)?]),
            ),
            MonitorMethod::Plain => ("monitor", json!([database, mon.id, mon.requests(false)?])),
        };
        let reply = match conn.call(name, params, backlog).await? {
            Ok(v) => v,
            Err(e) if is_unknown_method(&e) && *method != MonitorMethod::Plain => {
                *method = match *method {
                    MonitorMethod::CondSince => MonitorMethod::Cond,
                    _ => MonitorMethod::Plain,
                };
                continue;
            }
            Err(error) => {
                return Err(Error::Server {
                    method: name.into(),
                    error,
                })
            }
        };
        let mut work = mon.db.clone();
        let mut changes: Vec<RowChange> = Vec::new();
        let resync = match *method {
            MonitorMethod::CondSince => {
                let arr = reply.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
                    Error::from(UpdateError::Malformed(format!(
                        "monitor_cond_since reply {reply}"
                    )))
                })?;
                let found = arr[0].as_bool().unwrap_or(false);
                if !found {
                    work.clear_rows();
                }
                work.apply_update2(schema, &arr[2], &mut changes)?;
                let txn = arr[1].as_str().map(str::to_string);
                mon.last_txn_id = txn.clone();
                work.set_last_txn_id(txn);
                !found
            }
            MonitorMethod::Cond => {
                work.clear_rows();
                work.apply_update2(schema, &reply, &mut changes)?;
                true
            }
            MonitorMethod::Plain => {
                work.clear_rows();
                work.apply_update(schema, &reply, &mut changes)?;
                true
            }
        };
        if resync {
            changes = work.diff_from(&mon.db);
        }
        let first = mon.db.generation() == 0;
        mon.db = work;
        if first || !changes.is_empty() {
            mon.tx.send_replace(mon.db.publish(changes));
        }
        return Ok(());
    }
}
