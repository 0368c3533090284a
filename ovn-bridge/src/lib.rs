//! `ovn-bridge`: the control process. The controller role turns Kubernetes
//! state into OVN Northbound rows (as Kube-OVN does); the node role is the
//! OVN chassis for the fast path.
#![forbid(unsafe_code)]

pub mod compile;
pub mod controller;
pub mod node;
