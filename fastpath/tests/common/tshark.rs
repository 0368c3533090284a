//! Reading a capture with tshark, the independent decoder the Geneve tests
//! check our tunnel headers against.

use std::path::Path;
use std::process::Command;

/// The values of `fields` for every packet of `pcap` (first occurrence of
/// each), after tshark options `options`.
pub fn fields(pcap: &Path, options: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(options);
    cmd.args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("tshark prints UTF-8");
    text.lines()
        .map(|l| {
            let row: Vec<String> = l.split('|').map(str::to_string).collect();
            assert_eq!(row.len(), fields.len(), "tshark line {l:?}");
            row
        })
        .collect()
}

/// A number as tshark prints it (decimal or `0x` hex).
pub fn number(s: &str) -> u64 {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// The OVN Geneve option's data as tshark shows it (8 hex digits), decoded
/// per ovn-architecture(7): (reserved bit, 15-bit ingress key, 16-bit
/// egress key).
pub fn ovn_option(hex: &str) -> (u32, u32, u32) {
    let data: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex option data"))
        .collect();
    let data: [u8; 4] = data.try_into().expect("4 bytes of option data");
    let word = u32::from_be_bytes(data);
    (word >> 31, (word >> 16) & 0x7fff, word & 0xffff)
}
