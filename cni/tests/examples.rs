//! The shipped configuration examples decode into the plugin configuration
//! the way a runtime hands them to the plugin.

use std::path::Path;

use fastpath_cni::{InterfaceType, PluginConfig, DEFAULT_DAEMON_SOCKET};
use serde_json::Value;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn conflist_first_plugin_decodes_as_the_runtime_passes_it() {
    let list: Value = serde_json::from_str(&example("10-fastpath.conflist")).unwrap();
    let mut plugin = list["plugins"][0].clone();
    // What the runtime inserts (spec section 3): cniVersion and name.
    let object = plugin.as_object_mut().unwrap();
    object.insert("cniVersion".into(), list["cniVersion"].clone());
    object.insert("name".into(), list["name"].clone());
    let config = PluginConfig::parse(plugin.to_string().as_bytes()).unwrap();
    assert_eq!(config.plugin_type, "fastpath-cni");
    assert_eq!(config.interface_type, InterfaceType::Auto);
    assert_eq!(config.socket_path, Path::new(DEFAULT_DAEMON_SOCKET));
}

#[test]
fn network_attachment_definition_selects_vhost_user() {
    let yaml = example("ovn-dpdk-nad.yaml");
    // The config is a folded block scalar: its lines joined by spaces.
    let json: Vec<&str> = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config: >-"))
        .skip(1)
        .map(str::trim)
        .collect();
    let config = PluginConfig::parse(json.join(" ").as_bytes()).unwrap();
    assert_eq!(config.interface_type, InterfaceType::VhostUser);
    let vhost = config.vhost_user.unwrap();
    assert_eq!(vhost.volume_name, "vhostuser-sockets");
    assert_eq!(vhost.socket_name.as_deref(), Some("sock"));
}
