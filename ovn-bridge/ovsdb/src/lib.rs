//! An OVSDB client (RFC 7047 plus the extensions OVN relies on:
//! `monitor_cond`, `monitor_cond_since`, `update2`/`update3`, the `_Server`
//! database of clustered servers) with a local replica and typed rows for the
//! OVN Northbound and Southbound databases, generated at build time from the
//! installed `.ovsschema` files.
//!
//! Owns everything between a socket and a typed row. It must not know about
//! Kubernetes or the fast path.
//!
//! ```no_run
//! use ovsdb::{nb, Client, ClientOptions, MonitorTable, TableRow, Operation, Datum};
//!
//! # async fn example() -> Result<(), ovsdb::Error> {
//! let remotes = vec!["unix:/run/ovn/ovnnb_db.sock".to_string()];
//! let opts = ClientOptions::default().require_row::<nb::LogicalSwitch>();
//! let client = Client::connect(&remotes, "OVN_Northbound", opts).await?;
//!
//! // A replica of Logical_Switch, kept up to date in the background.
//! let mut replica = client.monitor(vec![MonitorTable::of::<nb::LogicalSwitch>()]).await?;
//!
//! // Insert a switch unless one with that name exists.
//! let ls = nb::LogicalSwitch { name: "subnet1".into(), ..Default::default() };
//! client
//!     .transact(vec![
//!         Operation::wait_absent("Logical_Switch", "name", "subnet1"),
//!         ls.insert_op(Some("ls")),
//!     ])
//!     .await?;
//!
//! let db = replica.wait_for(|db| db.table("Logical_Switch").is_some_and(|t| !t.is_empty())).await?;
//! for ls in db.rows::<nb::LogicalSwitch>()? {
//!     println!("{} {}", ls.uuid, ls.name);
//! }
//! # let _ = Datum::atom("x");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod datum;
pub mod ops;
pub mod replica;
pub mod rpc;
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
pub mod txn;
pub mod typed;

pub use client::{Client, ClientOptions, Error, MonitorTable, Status};
pub use codec::fuzz_codec;
pub use datum::{Atom, Datum, Uuid};
pub use ops::{
    Condition, Function, Mutation, Mutator, OpResult, Operation, TransactError, WaitUntil,
};
pub use replica::{ChangeKind, Database, Replica, Row, RowCache, RowChange, Table};
pub use txn::{transact_optimistic, Txn};
pub use typed::{RowError, TableRow};

/// Typed rows of the OVN Northbound database.
pub mod nb {
    #![allow(missing_docs)]
    use std::collections::{BTreeMap, BTreeSet};

    use crate::datum::Uuid;
    use crate::ops::Columns;
    use crate::replica::Row;
    use crate::typed::{column, RowError, TableRow, ToDatum};

    include!(concat!(env!("OUT_DIR"), "/nb.rs"));
}

/// Typed rows of the OVN Southbound database.
pub mod sb {
    #![allow(missing_docs)]
    use std::collections::{BTreeMap, BTreeSet};

    use crate::datum::Uuid;
    use crate::ops::Columns;
    use crate::replica::Row;
    use crate::typed::{column, RowError, TableRow, ToDatum};

    include!(concat!(env!("OUT_DIR"), "/sb.rs"));
}
