//! Ethernet device ports, created from DPDK devargs: a PCI NIC
//! (`0000:03:00.0`) or a virtual device (`net_vhost0,iface=...`,
//! `net_af_packet0,iface=eth0`, `net_af_xdp0,iface=...`, `net_tap0`,
//! `net_memif0,...`, `net_ring0`, `net_null0`).

use super::Mempool;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};

/// How to create and set up a port.
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// Name used in logs, counters and the control socket.
    pub name: String,
    /// DPDK devargs.
    pub devargs: String,
    /// Rx queues.
    pub rx_queues: u16,
    /// Tx queues.
    pub tx_queues: u16,
    /// Rx descriptors per queue.
    pub rx_desc: u16,
    /// Tx descriptors per queue.
    pub tx_desc: u16,
    /// MTU to set (None keeps the device default).
    pub mtu: Option<u16>,
    /// Enable promiscuous mode (ignored where unsupported).
    pub promiscuous: bool,
}

/// Errors of port set-up and queries.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The devargs could not be probed.
    #[error("port {name}: cannot probe device {devargs:?}: {reason}")]
    Probe {
        /// Port name.
        name: String,
        /// Devargs.
        devargs: String,
        /// DPDK's reason.
        reason: String,
    },
    /// A configuration step failed.
    #[error("port {name}: {step} failed: {reason}")]
    Setup {
        /// Port name.
        name: String,
        /// The step.
        step: &'static str,
        /// DPDK's reason.
        reason: String,
    },
    /// The devargs contain a NUL byte.
    #[error("port {0}: devargs contain a NUL byte")]
    BadDevargs(String),
}

/// Link state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s.
    pub speed_mbps: u32,
}

/// Hardware (driver) counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Received packets.
    pub ipackets: u64,
    /// Transmitted packets.
    pub opackets: u64,
    /// Received bytes.
    pub ibytes: u64,
    /// Transmitted bytes.
    pub obytes: u64,
    /// Packets dropped by the device on receive.
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Receive mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A configured and started ethdev port. Stopped, closed and (for virtual
/// devices) removed on drop, which also removes vhost-user socket files.
pub struct EthPort {
    id: u16,
    cfg: PortConfig,
    dev_name: String,
    driver: String,
    rx_queues: u16,
    tx_queues: u16,
    started: bool,
}

fn setup_err(name: &str, step: &'static str, rc: i32) -> PortError {
    PortError::Setup {
        name: name.to_string(),
        step,
        reason: super::strerror(rc),
    }
}

/// The device name DPDK gives the port created from `devargs`: the part
/// before the first comma (for PCI, the address).
fn device_name(devargs: &str) -> &str {
    devargs.split(',').next().unwrap_or(devargs).trim()
}

impl EthPort {
    /// Probes the device, configures its queues on `pool`, and starts it.
    pub fn create(cfg: &PortConfig, pool: &Mempool) -> Result<EthPort, PortError> {
        let dev_name = device_name(&cfg.devargs).to_string();
        let c_dev =
            CString::new(dev_name.clone()).map_err(|_| PortError::BadDevargs(cfg.name.clone()))?;
        let mut id: u16 = 0;
        // SAFETY: c_dev is a valid C string; id is a valid out pointer.
        let known = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c_dev.as_ptr(), &mut id) } == 0;
        if !known {
            let c_args = CString::new(cfg.devargs.clone())
                .map_err(|_| PortError::BadDevargs(cfg.name.clone()))?;
            // SAFETY: c_args is a valid C string; probing runs on this control thread.
            let rc = unsafe { dpdk_sys::rte_dev_probe(c_args.as_ptr()) };
            if rc != 0 {
                return Err(PortError::Probe {
                    name: cfg.name.clone(),
                    devargs: cfg.devargs.clone(),
                    reason: super::strerror(rc),
                });
            }
            // SAFETY: as above.
            if unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c_dev.as_ptr(), &mut id) } != 0 {
                return Err(PortError::Probe {
                    name: cfg.name.clone(),
                    devargs: cfg.devargs.clone(),
                    reason: format!("device probed but no ethdev named {dev_name:?} appeared"),
                });
            }
        }
        let mut port = EthPort {
            id,
            cfg: cfg.clone(),
            dev_name,
            driver: String::new(),
            rx_queues: 0,
            tx_queues: 0,
            started: false,
        };
        port.configure(pool)?;
        Ok(port)
    }

    fn configure(&mut self, pool: &Mempool) -> Result<(), PortError> {
        let name = self.cfg.name.clone();
        let mut info: dpdk_sys::rte_eth_dev_info = Default::default();
        // SAFETY: id is a valid port; info is a valid out struct.
        let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(self.id, &mut info) };
        if rc != 0 {
            return Err(setup_err(&name, "rte_eth_dev_info_get", rc));
        }
        if !info.driver_name.is_null() {
            // SAFETY: driver_name is a static NUL-terminated string of the driver.
            self.driver = unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned();
        }
        let nrx = self.cfg.rx_queues.max(1).min(info.max_rx_queues.max(1));
        let ntx = self.cfg.tx_queues.max(1).min(info.max_tx_queues.max(1));
        let mut conf: dpdk_sys::rte_eth_conf = Default::default();
        if info.tx_offload_capa & dpdk_sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS != 0 {
            conf.txmode.offloads |= dpdk_sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
        }
        if let Some(mtu) = self.cfg.mtu {
            conf.rxmode.mtu = u32::from(mtu);
        }
        // SAFETY: id is valid; conf is a fully initialised config struct.
        let rc = unsafe { dpdk_sys::rte_eth_dev_configure(self.id, nrx, ntx, &conf) };
        if rc != 0 {
            return Err(setup_err(&name, "rte_eth_dev_configure", rc));
        }
        let mut nrxd = self.cfg.rx_desc;
        let mut ntxd = self.cfg.tx_desc;
        // SAFETY: id is valid; the descriptor counts are valid in/out pointers.
        let rc =
            unsafe { dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.id, &mut nrxd, &mut ntxd) };
        if rc != 0 {
            return Err(setup_err(&name, "rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        // SAFETY: id is valid.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(self.id) };
        let socket = if socket < 0 {
            dpdk_sys::SOCKET_ID_ANY
        } else {
            socket
        } as u32;
        for q in 0..nrx {
            // SAFETY: id and q are valid; a NULL rxconf means the driver
            // default; pool is a live packet mempool that outlives the port.
            let rc = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    self.id,
                    q,
                    nrxd,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(setup_err(&name, "rte_eth_rx_queue_setup", rc));
            }
        }
        let mut txconf = info.default_txconf;
        txconf.offloads = conf.txmode.offloads;
        for q in 0..ntx {
            // SAFETY: id and q are valid; txconf is initialised.
            let rc = unsafe { dpdk_sys::rte_eth_tx_queue_setup(self.id, q, ntxd, socket, &txconf) };
            if rc != 0 {
                return Err(setup_err(&name, "rte_eth_tx_queue_setup", rc));
            }
        }
        if self.cfg.promiscuous {
            // SAFETY: id is valid. Drivers without the feature return
            // -ENOTSUP, which we accept.
            let _ = unsafe { dpdk_sys::rte_eth_promiscuous_enable(self.id) };
        }
        // SAFETY: id is valid and configured.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(self.id) };
        if rc != 0 {
            return Err(setup_err(&name, "rte_eth_dev_start", rc));
        }
        self.started = true;
        self.rx_queues = nrx;
        self.tx_queues = ntx;
        Ok(())
    }

    /// DPDK port id.
    #[inline(always)]
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Configured name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Devargs the port was created from.
    pub fn devargs(&self) -> &str {
        &self.cfg.devargs
    }

    /// Driver name (for instance `net_vhost`).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Rx queues configured.
    pub fn rx_queues(&self) -> u16 {
        self.rx_queues
    }

    /// Tx queues configured.
    pub fn tx_queues(&self) -> u16 {
        self.tx_queues
    }

    /// Link state, without waiting.
    pub fn link(&self) -> LinkStatus {
        let mut link: dpdk_sys::rte_eth_link = Default::default();
        // SAFETY: id is valid; link is a valid out struct.
        let rc = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.id, &mut link) };
        if rc != 0 {
            return LinkStatus::default();
        }
        LinkStatus {
            up: link.link_status() != 0,
            speed_mbps: link.link_speed,
        }
    }

    /// MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut addr: dpdk_sys::rte_ether_addr = Default::default();
        // SAFETY: id is valid; addr is a valid out struct.
        let _ = unsafe { dpdk_sys::rte_eth_macaddr_get(self.id, &mut addr) };
        addr.addr_bytes
    }

    /// MTU.
    pub fn mtu(&self) -> u16 {
        let mut mtu = 0u16;
        // SAFETY: id is valid; mtu is a valid out pointer.
        let _ = unsafe { dpdk_sys::rte_eth_dev_get_mtu(self.id, &mut mtu) };
        mtu
    }

    /// Driver counters.
    pub fn stats(&self) -> PortStats {
        let mut s: dpdk_sys::rte_eth_stats = Default::default();
        // SAFETY: id is valid; s is a valid out struct.
        let _ = unsafe { dpdk_sys::rte_eth_stats_get(self.id, &mut s) };
        PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }

    /// Extended driver counters by name.
    pub fn xstats(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        // SAFETY: a NULL array with size 0 asks for the count.
        let n = unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id, std::ptr::null_mut(), 0) };
        if n <= 0 {
            return out;
        }
        let n = n as usize;
        let mut names: Vec<dpdk_sys::rte_eth_xstat_name> = vec![Default::default(); n];
        let mut vals: Vec<dpdk_sys::rte_eth_xstat> = vec![Default::default(); n];
        // SAFETY: both arrays have n elements, as DPDK was told.
        let got_names =
            unsafe { dpdk_sys::rte_eth_xstats_get_names(self.id, names.as_mut_ptr(), n as u32) };
        // SAFETY: as above.
        let got_vals =
            unsafe { dpdk_sys::rte_eth_xstats_get(self.id, vals.as_mut_ptr(), n as u32) };
        if got_names <= 0 || got_vals <= 0 {
            return out;
        }
        let m = (got_vals as usize).min(n);
        for v in &vals[..m] {
            let Some(name) = names.get(v.id as usize) else {
                continue;
            };
            // SAFETY: name is a fixed-size array that DPDK NUL-terminates.
            let s = unsafe { CStr::from_ptr(name.name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            out.insert(s, v.value);
        }
        out
    }

    /// Stops the port (queues stop; counters remain).
    pub fn stop(&mut self) {
        if self.started {
            // SAFETY: id is valid and started; no lcore polls it any more (the
            // owner stops ports only after the workers returned).
            let _ = unsafe { dpdk_sys::rte_eth_dev_stop(self.id) };
            self.started = false;
        }
    }
}

impl Drop for EthPort {
    fn drop(&mut self) {
        self.stop();
        // SAFETY: id is valid; the port is stopped and no lcore uses it.
        let _ = unsafe { dpdk_sys::rte_eth_dev_close(self.id) };
        if !self.dev_name.is_empty() && !self.dev_name.contains(':') {
            if let Ok(c) = CString::new(self.dev_name.clone()) {
                // SAFETY: c is a valid C string naming a vdev we created;
                // uninit removes it (and a vhost-user server socket file).
                let _ = unsafe { dpdk_sys::rte_vdev_uninit(c.as_ptr()) };
            }
        }
    }
}
