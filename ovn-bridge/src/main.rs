//! `ovn-bridge` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ovn_bridge::controller::{kube_source, run, Config};

#[derive(Parser)]
#[command(name = "ovn-bridge", about = "OVN control process for the fastpath")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Kubernetes state into OVN Northbound rows (the Kube-OVN controller's job).
    Controller {
        /// Northbound remote(s): unix:PATH or tcp:HOST:PORT; several for a cluster.
        #[arg(long = "nb", required = true, num_args = 1..)]
        nb: Vec<String>,
        /// Watch a Kubernetes cluster through this kubeconfig.
        #[arg(long, conflicts_with = "manifests")]
        kubeconfig: Option<PathBuf>,
        /// Read the objects from YAML files in this directory instead.
        #[arg(long, required_unless_present = "kubeconfig")]
        manifests: Option<PathBuf>,
        /// JSON file recording address allocations (manifest source).
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// CIDR of the default subnet when no Subnet object declares it.
        #[arg(long, default_value = "10.16.0.0/16")]
        default_cidr: String,
        /// CIDR of the join (node) subnet when no Subnet object declares it.
        #[arg(long, default_value = "100.64.0.0/16")]
        join_cidr: String,
        /// Namespace of the leader-election Lease.
        #[arg(long, default_value = "kube-system")]
        lease_namespace: String,
        /// Most operations in one Northbound transaction (a larger pass is split).
        #[arg(long, default_value_t = ovn_bridge::controller::batch::DEFAULT_MAX_OPS_PER_TXN)]
        max_ops_per_txn: usize,
        /// Seconds between full passes under the incremental ones (0: only at
        /// start and when the database changes under us).
        #[arg(long, default_value_t = 300)]
        resync_period: u64,
        /// How often the manifest directory is checked for changes besides
        /// inotify, in milliseconds (with --manifests).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
        manifest_poll_ms: u64,
    },
    /// Compile the Southbound logical flows into the fastpath's table file
    /// and republish on every Southbound change.
    Compile {
        /// Southbound remote(s): unix:PATH or tcp:HOST:PORT.
        #[arg(long = "sb", required = true, num_args = 1..)]
        sb: Vec<String>,
        /// This chassis' name (ports bound to it are local).
        #[arg(long)]
        chassis: String,
        /// The shared-memory table file (created if missing).
        #[arg(long)]
        tables: PathBuf,
        /// LOGICAL=FASTPATH_PORT_ID: the fastpath port of a local logical port.
        #[arg(long = "port", value_parser = ovn_bridge::compile::run::parse_port_mapping)]
        ports: Vec<(String, u16)>,
        /// Publish once and exit.
        #[arg(long)]
        once: bool,
    },
    /// The OVN chassis of this node: Chassis/Encap rows, Port_Binding
    /// claims, conntrack zones, compiled tables and the CNI socket.
    Node {
        /// Southbound remote(s): unix:PATH or tcp:HOST:PORT.
        #[arg(long = "sb", required = true, num_args = 1..)]
        sb: Vec<String>,
        /// Chassis name (system-id).
        #[arg(long)]
        chassis: String,
        /// Tunnel endpoint address of this node.
        #[arg(long)]
        encap_ip: std::net::IpAddr,
        /// The shared-memory table file (created if missing).
        #[arg(long)]
        tables: PathBuf,
        /// Unix socket the CNI plugin talks to.
        #[arg(long)]
        cni_socket: PathBuf,
        /// Directory of the node's state file.
        #[arg(long)]
        state_dir: PathBuf,
        /// Control socket of the fastpath, which creates the pod ports.
        /// Without it ports are only recorded (no data plane).
        #[arg(long)]
        fastpath_socket: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.role {
        Role::Node {
            sb,
            chassis,
            encap_ip,
            tables,
            cni_socket,
            state_dir,
            fastpath_socket,
        } => rt.block_on(run_node(
            sb,
            chassis,
            encap_ip,
            tables,
            cni_socket,
            state_dir,
            fastpath_socket,
        )),
        Role::Compile {
            sb,
            chassis,
            tables,
            ports,
            once,
        } => rt.block_on(ovn_bridge::compile::run::follow(
            &sb,
            &chassis,
            &tables,
            ports.into_iter().collect(),
            once,
        )),
        Role::Controller {
            nb,
            kubeconfig,
            manifests,
            state_file,
            default_cidr,
            join_cidr,
            lease_namespace,
            max_ops_per_txn,
            resync_period,
            manifest_poll_ms,
        } => rt.block_on(async move {
            let config = Config {
                default_cidr,
                join_cidr,
                ..Config::default()
            };
            let mut ctl = run::Controller::connect(&nb, config, state_file)
                .await
                .context("connect to northbound")?;
            ctl.set_options(run::Options {
                max_ops_per_txn,
                full_resync: (resync_period > 0).then(|| Duration::from_secs(resync_period)),
            });
            if let Some(dir) = manifests {
                run::run_manifests(&dir, &mut ctl, Duration::from_millis(manifest_poll_ms)).await?;
                return Ok(());
            }
            let path = kubeconfig.context("--kubeconfig or --manifests is required")?;
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("read {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .context("kubeconfig")?;
            let client = kube::Client::try_from(cfg).context("kubernetes client")?;
            let identity = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| format!("ovn-bridge-{}", std::process::id()));
            let lock = kube_source::LeaseLock::new(
                client.clone(),
                &lease_namespace,
                "ovn-bridge-controller",
                &identity,
                Duration::from_secs(15),
            );
            kube_source::run_kube(client, &mut ctl, lock).await?;
            Ok(())
        }),
    }
}

async fn run_node(
    sb: Vec<String>,
    chassis: String,
    encap_ip: std::net::IpAddr,
    tables: PathBuf,
    cni_socket: PathBuf,
    state_dir: PathBuf,
    fastpath_socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    use ovn_bridge::node::{
        ChassisConfig, FastpathPlumber, Node, NodeConfig, PortPlumber, RecordingPlumber, Shutdown,
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| chassis.clone());
    let cfg = NodeConfig::new(
        sb,
        ChassisConfig {
            name: chassis,
            hostname,
            encap_ip,
            bridge_mappings: String::new(),
            cms_options: String::new(),
        },
        tables,
        state_dir,
    );
    let plumber: std::sync::Arc<dyn PortPlumber> = match fastpath_socket {
        Some(p) => std::sync::Arc::new(FastpathPlumber::new(p.display().to_string())),
        None => {
            log::warn!("no --fastpath-socket: pod ports are recorded, not created");
            std::sync::Arc::new(RecordingPlumber::default())
        }
    };
    let mut node = Node::start(cfg, plumber).await.context("start the node")?;
    let listener = fastpath_cni::bind(&cni_socket)
        .with_context(|| format!("bind {}", cni_socket.display()))?;
    let handler = std::sync::Arc::new(node.cni_handler());
    std::thread::Builder::new()
        .name("cni".into())
        .spawn(move || {
            if let Err(e) = fastpath_cni::serve(listener, handler) {
                log::error!("CNI socket: {e}");
            }
        })?;
    // SIGTERM is what systemd and the kubelet send: a clean exit removes
    // the chassis, as on SIGINT.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::select! {
        r = node.wait() => r.context("node loop")?,
        _ = tokio::signal::ctrl_c() => {
            log::info!("interrupted: removing the chassis");
            node.shutdown(Shutdown::Exit).await.context("shutdown")?;
        }
        _ = terminate.recv() => {
            log::info!("terminated: removing the chassis");
            node.shutdown(Shutdown::Exit).await.context("shutdown")?;
        }
    }
    Ok(())
}
