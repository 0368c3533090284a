//! Drop reasons of the packet layer: every way a frame can fail to parse.
//!
//! The list is declared once, in `parse_errors!`; the enum, its snake_case
//! counter names, [`ParseError::COUNT`], [`ParseError::index`] and
//! [`ParseError::ALL`] all come from it, so the fastpath can keep one drop
//! counter per reason. This module owns the list only; counting is the caller's.

macro_rules! parse_errors {
    ($( $(#[doc = $doc:literal])+ $variant:ident => $name:literal, )+) => {
        /// Why a frame was refused by the packet layer (one drop counter each).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum ParseError {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl ParseError {
            /// Number of drop reasons.
            pub const COUNT: usize = [$(stringify!($variant)),+].len();

            /// Every reason, in index order.
            pub const ALL: [ParseError; Self::COUNT] = [$(ParseError::$variant),+];

            /// Dense index in `0..COUNT`, for a counter array.
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The snake_case counter name, e.g. `"truncated_ipv4"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( ParseError::$variant => $name, )+
                }
            }

            /// A one-line description of the reason.
            pub const fn description(self) -> &'static str {
                match self {
                    $( ParseError::$variant => concat!($($doc),+), )+
                }
            }
        }
    };
}

parse_errors! {
    /// The frame is longer than 65535 bytes, beyond what a [`crate::Layout`] can address.
    FrameTooLong => "frame_too_long",
    /// Shorter than the 14-byte Ethernet header.
    TruncatedEthernet => "truncated_ethernet",
    /// An 802.1Q/802.1ad tag is cut short.
    TruncatedVlan => "truncated_vlan",
    /// Shorter than the 28-byte Ethernet/IPv4 ARP packet.
    TruncatedArp => "truncated_arp",
    /// ARP hardware/protocol type or address lengths are not Ethernet/IPv4.
    BadArpFormat => "bad_arp_format",
    /// Shorter than the 20-byte fixed IPv4 header.
    TruncatedIpv4 => "truncated_ipv4",
    /// IPv4 version field is not 4.
    BadIpv4Version => "bad_ipv4_version",
    /// IPv4 IHL is below 5.
    BadIpv4Ihl => "bad_ipv4_ihl",
    /// IPv4 options (IHL) run past the end of the frame.
    TruncatedIpv4Options => "truncated_ipv4_options",
    /// IPv4 total length is smaller than the header length.
    BadIpv4TotalLength => "bad_ipv4_total_length",
    /// IPv4 total length runs past the end of the frame.
    TruncatedIpv4Payload => "truncated_ipv4_payload",
    /// IPv4 header checksum does not verify.
    BadIpv4Checksum => "bad_ipv4_checksum",
    /// Shorter than the 40-byte IPv6 header.
    TruncatedIpv6 => "truncated_ipv6",
    /// IPv6 version field is not 6.
    BadIpv6Version => "bad_ipv6_version",
    /// IPv6 payload length runs past the end of the frame.
    TruncatedIpv6Payload => "truncated_ipv6_payload",
    /// An IPv6 extension header runs past the end of the payload.
    TruncatedIpv6ExtHeader => "truncated_ipv6_ext_header",
    /// A hop-by-hop options header that does not follow the IPv6 header directly.
    BadIpv6HopByHopPosition => "bad_ipv6_hop_by_hop_position",
    /// More IPv6 extension headers than the parser walks.
    TooManyIpv6ExtHeaders => "too_many_ipv6_ext_headers",
    /// Shorter than the 20-byte TCP header.
    TruncatedTcp => "truncated_tcp",
    /// TCP data offset is below 5.
    BadTcpDataOffset => "bad_tcp_data_offset",
    /// TCP options (data offset) run past the end of the segment.
    TruncatedTcpOptions => "truncated_tcp_options",
    /// Shorter than the 8-byte UDP header.
    TruncatedUdp => "truncated_udp",
    /// UDP length field is below 8.
    BadUdpLength => "bad_udp_length",
    /// UDP length field runs past the end of the IP payload.
    TruncatedUdpPayload => "truncated_udp_payload",
    /// Shorter than the 12-byte SCTP common header.
    TruncatedSctp => "truncated_sctp",
    /// Shorter than the 8-byte ICMPv4 header.
    TruncatedIcmpv4 => "truncated_icmpv4",
    /// Shorter than the 8-byte ICMPv6 header.
    TruncatedIcmpv6 => "truncated_icmpv6",
    /// A neighbor solicitation/advertisement shorter than 24 bytes.
    TruncatedNd => "truncated_nd",
    /// A neighbor discovery option with a zero length.
    BadNdOptionLength => "bad_nd_option_length",
    /// A neighbor discovery option runs past the end of the message.
    TruncatedNdOption => "truncated_nd_option",
    /// Shorter than the 8-byte Geneve header.
    TruncatedGeneve => "truncated_geneve",
    /// Geneve version is not 0.
    BadGeneveVersion => "bad_geneve_version",
    /// Geneve options length runs past the end of the packet.
    TruncatedGeneveOptions => "truncated_geneve_options",
    /// A Geneve option runs past the end of the options area.
    TruncatedGeneveOption => "truncated_geneve_option",
    /// The OVN Geneve option (class 0x0102, type 0x80) has a length other than 4 bytes.
    BadGeneveOvnOption => "bad_geneve_ovn_option",
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.name(), self.description())
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_dense_and_in_index_order() {
        assert_eq!(ParseError::ALL.len(), ParseError::COUNT);
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for e in ParseError::ALL {
            let n = e.name();
            assert!(seen.insert(n), "duplicate name {n}");
            assert!(!n.is_empty());
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n} is not snake_case"
            );
            assert!(!e.description().trim().is_empty());
        }
        assert_eq!(ParseError::TruncatedIpv4.name(), "truncated_ipv4");
        assert_eq!(ParseError::BadTcpDataOffset.name(), "bad_tcp_data_offset");
        assert!(ParseError::BadIpv4Ihl
            .to_string()
            .starts_with("bad_ipv4_ihl:"));
    }
}
