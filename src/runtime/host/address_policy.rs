//! Which addresses a plugin's outbound calls (and the node's peer gossip)
//! may reach: the SSRF guard's table of special-purpose ranges, and the
//! resolver that drops every address the policy forbids where the
//! connection is made, shared by the plugins' client
//! ([`super::http_client`]) and the peers' reqwest client.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

use super::dns::{DEFAULT_MAX_DNS_LOOKUPS, DnsLookups};
use crate::runtime::metrics::DnsMetrics;

/// How the SSRF guard treats one special-purpose range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Never reached without the operator's explicit permission.
    NonPublic,
    /// An ordinary destination (globally reachable by IANA's registry).
    Public,
    /// Carries an IPv4 address the traffic ends up at: judged by that.
    EmbeddedIpv4,
}

/// One row of IANA's special-purpose address registries: a prefix of an
/// IPv4 (32-bit) or IPv6 (128-bit) address.
struct SpecialRange {
    network: u128,
    prefix_len: u32,
    reach: Reach,
}

impl SpecialRange {
    fn contains(&self, address: u128, address_bits: u32) -> bool {
        let host_bits = address_bits - self.prefix_len;
        address.checked_shr(host_bits).unwrap_or(0)
            == self.network.checked_shr(host_bits).unwrap_or(0)
    }
}

const fn v4(network: [u8; 4], prefix_len: u32, reach: Reach) -> SpecialRange {
    SpecialRange {
        network: u32::from_be_bytes(network) as u128,
        prefix_len,
        reach,
    }
}

const fn v6(network: [u16; 8], prefix_len: u32, reach: Reach) -> SpecialRange {
    let mut bits = 0u128;
    let mut i = 0;
    while i < 8 {
        bits = (bits << 16) | network[i] as u128;
        i += 1;
    }
    SpecialRange {
        network: bits,
        prefix_len,
        reach,
    }
}

/// IANA's IPv4 special-purpose registry (RFC 6890 and updates) plus
/// multicast, every row decided; the most specific row wins. Anything else
/// is public. Anycast services a plugin has no business calling (PCP, TURN,
/// the deprecated 6to4 relays) are refused although IANA marks some of them
/// globally reachable.
const SPECIAL_IPV4: &[SpecialRange] = &[
    v4([0, 0, 0, 0], 8, Reach::NonPublic),       // "this network"
    v4([10, 0, 0, 0], 8, Reach::NonPublic),      // private-use
    v4([100, 64, 0, 0], 10, Reach::NonPublic),   // shared address space (CGN)
    v4([127, 0, 0, 0], 8, Reach::NonPublic),     // loopback
    v4([169, 254, 0, 0], 16, Reach::NonPublic),  // link-local (cloud metadata)
    v4([172, 16, 0, 0], 12, Reach::NonPublic),   // private-use
    v4([192, 0, 0, 0], 24, Reach::NonPublic), // IETF protocol assignments, DS-Lite, PCP/TURN anycast
    v4([192, 0, 2, 0], 24, Reach::NonPublic), // documentation (TEST-NET-1)
    v4([192, 31, 196, 0], 24, Reach::Public), // AS112-v4
    v4([192, 52, 193, 0], 24, Reach::Public), // AMT
    v4([192, 88, 99, 0], 24, Reach::NonPublic), // deprecated 6to4 relay anycast
    v4([192, 168, 0, 0], 16, Reach::NonPublic), // private-use
    v4([192, 175, 48, 0], 24, Reach::Public), // AS112 direct delegation
    v4([198, 18, 0, 0], 15, Reach::NonPublic), // benchmarking
    v4([198, 51, 100, 0], 24, Reach::NonPublic), // documentation (TEST-NET-2)
    v4([203, 0, 113, 0], 24, Reach::NonPublic), // documentation (TEST-NET-3)
    v4([224, 0, 0, 0], 4, Reach::NonPublic),  // multicast
    v4([240, 0, 0, 0], 4, Reach::NonPublic),  // reserved
    v4([255, 255, 255, 255], 32, Reach::NonPublic), // limited broadcast
];

/// IANA's IPv6 special-purpose registry plus the address-space registry's
/// non-unicast blocks, every row decided; the most specific row wins.
/// Outside these rows only global unicast (`2000::/3`) is public.
///
/// Forms that embed an IPv4 address the packet is delivered to — IPv4-mapped,
/// the NAT64 well-known prefix, 6to4 — are judged by that address, so
/// `64:ff9b::10.0.0.1` is refused while a DNS64-synthesised address of a
/// public host is not. Teredo (whose client address is obfuscated), the
/// local-use NAT64 prefix, deprecated IPv4-compatible and SIIT-translated
/// forms, and identifiers that are not locators (ORCHID, DETs) are refused.
const SPECIAL_IPV6: &[SpecialRange] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, Reach::NonPublic), // IPv4-compatible (deprecated), ::, ::1
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, Reach::EmbeddedIpv4), // IPv4-mapped
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96, Reach::NonPublic), // IPv4-translated (SIIT)
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, Reach::EmbeddedIpv4), // NAT64 well-known prefix
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, Reach::NonPublic), // local-use NAT64
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Reach::NonPublic), // discard-only
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, Reach::NonPublic), // dummy prefix
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Reach::NonPublic), // IETF protocol assignments
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, Reach::NonPublic), // Teredo
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, Reach::NonPublic), // PCP anycast
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, Reach::NonPublic), // TURN anycast
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, Reach::NonPublic), // DNS-SD SRP anycast
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, Reach::NonPublic), // benchmarking
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, Reach::Public), // AMT
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, Reach::Public), // AS112-v6
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, Reach::NonPublic), // ORCHID (deprecated)
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, Reach::NonPublic), // ORCHIDv2
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, Reach::NonPublic), // drone remote ID tags (DETs)
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, Reach::NonPublic), // documentation
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, Reach::EmbeddedIpv4), // 6to4
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, Reach::Public), // AS112 direct delegation
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Reach::NonPublic), // documentation
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, Reach::NonPublic), // SRv6 SIDs
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Reach::NonPublic), // unique-local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, Reach::NonPublic), // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Reach::NonPublic), // site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Reach::NonPublic), // multicast
];

/// The most specific row of `table` containing `address`.
fn special_reach(table: &[SpecialRange], address: u128, address_bits: u32) -> Option<Reach> {
    table
        .iter()
        .filter(|row| row.contains(address, address_bits))
        .max_by_key(|row| row.prefix_len)
        .map(|row| row.reach)
}

/// Whether `ip` is an ordinary public unicast address, one a plugin may
/// reach without its operator naming it. The special-purpose tables above
/// list every range that is not, and why.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => match special_reach(SPECIAL_IPV4, v4.to_bits().into(), 32) {
            None | Some(Reach::Public) => true,
            Some(Reach::NonPublic | Reach::EmbeddedIpv4) => false,
        },
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            match special_reach(SPECIAL_IPV6, bits, 128) {
                Some(Reach::Public) => true,
                Some(Reach::NonPublic) => false,
                Some(Reach::EmbeddedIpv4) => is_public(IpAddr::V4(embedded_ipv4(bits))),
                // Only 2000::/3 is allocated for global unicast.
                None => bits >> 125 == 0b001,
            }
        }
    }
}

/// The IPv4 address inside an IPv4-mapped, NAT64 (`/96`) or 6to4 address.
fn embedded_ipv4(bits: u128) -> std::net::Ipv4Addr {
    let six_to_four = bits >> 112 == 0x2002;
    let word = if six_to_four { bits >> 80 } else { bits };
    std::net::Ipv4Addr::from_bits(word as u32)
}

/// Resolves names for the plugin's HTTP client (and the node's peer
/// gossip), dropping every address the policy forbids; a name left with
/// none fails as prohibited. The check happens where the connection is
/// made, so a name cannot resolve to a public address when checked and to
/// a private one when connected.
#[derive(Clone)]
pub(crate) struct PolicyResolver {
    allow_private: bool,
    lookups: Arc<DnsLookups>,
}

impl PolicyResolver {
    /// A resolver that keeps only public addresses unless `allow_private`,
    /// with lookup permits of its own.
    pub(crate) fn new(allow_private: bool) -> Self {
        let lookups = DnsLookups::new(DEFAULT_MAX_DNS_LOOKUPS, DnsMetrics::detached());
        Self::with_lookups(allow_private, Arc::new(lookups))
    }

    /// Like [`PolicyResolver::new`], taking permits from `lookups`.
    pub(crate) fn with_lookups(allow_private: bool, lookups: Arc<DnsLookups>) -> Self {
        Self {
            allow_private,
            lookups,
        }
    }
}

/// The resolver's refusal, recognised when mapping errors for the guest.
#[derive(Debug)]
struct ProhibitedAddress(String);

impl std::fmt::Display for ProhibitedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves only to non-public addresses", self.0)
    }
}

impl std::error::Error for ProhibitedAddress {}

impl PolicyResolver {
    /// The addresses `host` resolves to that the policy allows; none is an
    /// error ([`ProhibitedAddress`]) that [`refused_by_resolver`] finds.
    pub(crate) fn allowed_addresses(
        &self,
        host: String,
    ) -> impl Future<Output = Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static {
        let allow_private = self.allow_private;
        let lookups = self.lookups.clone();
        async move {
            let resolved = lookups.lookup(host.clone()).await?;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(ProhibitedAddress(host)) as Box<_>);
            }
            Ok(allowed)
        }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed_addresses(name.as_str().to_string());
        Box::pin(async move {
            let addresses = allowed.await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a [`PolicyResolver`] refused the name behind `error`.
pub(crate) fn refused_by_resolver(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.is::<ProhibitedAddress>() {
            return true;
        }
        source = cause.source();
    }
    false
}

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allowed = self.allowed_addresses(name.as_str().to_string());
        Box::pin(async move { allowed.await.map(Vec::into_iter) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each special-purpose range at its edges and just outside them,
    /// written out rather than derived from the tables.
    #[test]
    fn ipv4_special_ranges_at_their_edges() {
        for (address, public) in [
            ("0.0.0.0", false),
            ("0.255.255.255", false),
            ("1.0.0.0", true),
            ("9.255.255.255", true),
            ("10.0.0.0", false),
            ("10.255.255.255", false),
            ("11.0.0.0", true),
            ("100.63.255.255", true),
            ("100.64.0.0", false),
            ("100.127.255.255", false),
            ("100.128.0.0", true),
            ("126.255.255.255", true),
            ("127.0.0.0", false),
            ("127.255.255.255", false),
            ("128.0.0.0", true),
            ("169.253.255.255", true),
            ("169.254.0.0", false),
            ("169.254.169.254", false),
            ("169.254.255.255", false),
            ("169.255.0.0", true),
            ("172.15.255.255", true),
            ("172.16.0.0", false),
            ("172.31.255.255", false),
            ("172.32.0.0", true),
            ("191.255.255.255", true),
            ("192.0.0.0", false),
            ("192.0.0.9", false),
            ("192.0.0.170", false),
            ("192.0.0.255", false),
            ("192.0.1.0", true),
            ("192.0.1.255", true),
            ("192.0.2.0", false),
            ("192.0.2.255", false),
            ("192.0.3.0", true),
            ("192.31.195.255", true),
            ("192.31.196.0", true),
            ("192.31.196.255", true),
            ("192.52.193.0", true),
            ("192.52.193.255", true),
            ("192.88.98.255", true),
            ("192.88.99.0", false),
            ("192.88.99.255", false),
            ("192.88.100.0", true),
            ("192.167.255.255", true),
            ("192.168.0.0", false),
            ("192.168.255.255", false),
            ("192.169.0.0", true),
            ("192.175.48.0", true),
            ("192.175.48.255", true),
            ("198.17.255.255", true),
            ("198.18.0.0", false),
            ("198.19.255.255", false),
            ("198.20.0.0", true),
            ("198.51.99.255", true),
            ("198.51.100.0", false),
            ("198.51.100.255", false),
            ("198.51.101.0", true),
            ("203.0.112.255", true),
            ("203.0.113.0", false),
            ("203.0.113.255", false),
            ("203.0.114.0", true),
            ("223.255.255.255", true),
            ("224.0.0.0", false),
            ("239.255.255.255", false),
            ("240.0.0.0", false),
            ("255.255.255.254", false),
            ("255.255.255.255", false),
            ("8.8.8.8", true),
            ("1.1.1.1", true),
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(is_public(ip), public, "{address}");
        }
    }

    #[test]
    fn ipv6_special_ranges_at_their_edges() {
        for (address, public) in [
            // ::/96 (IPv4-compatible, with :: and ::1), then IPv4-mapped.
            ("::", false),
            ("::1", false),
            ("::8.8.8.8", false),
            ("::ffff:ffff", false),
            ("::1:0:0", false),
            ("::fffe:ffff:ffff", false),
            ("::ffff:0.0.0.0", false),
            ("::ffff:8.8.8.8", true),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:255.255.255.255", false),
            ("::1:0:0:0", false),
            // IPv4-translated (SIIT).
            ("::ffff:0:0:0", false),
            ("::ffff:0:808:808", false),
            ("::ffff:0:ffff:ffff", false),
            // NAT64 well-known prefix: the embedded address decides.
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("64:ff9b::", false),
            ("64:ff9b::8.8.8.8", true),
            ("64:ff9b::10.0.0.1", false),
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b::169.254.169.254", false),
            ("64:ff9b::192.168.1.1", false),
            ("64:ff9b::255.255.255.255", false),
            ("64:ff9b::1:0:0", false),
            // Local-use NAT64.
            ("64:ff9b:1::", false),
            ("64:ff9b:1::808:808", false),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", false),
            ("64:ff9b:2::", false),
            // Discard-only and the dummy prefix.
            ("100::", false),
            ("100::ffff:ffff:ffff:ffff", false),
            ("100:0:0:1::", false),
            ("100:0:0:1:ffff:ffff:ffff:ffff", false),
            ("100:0:0:2::", false),
            // Below 2000::/3: reserved, never public.
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            // 2001::/23 and its rows.
            ("2001::", false),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:1::", false),
            ("2001:1::1", false),
            ("2001:1::2", false),
            ("2001:1::3", false),
            ("2001:1::4", false),
            ("2001:2::", false),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:2:1::", false),
            ("2001:2:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:3::", true),
            ("2001:3:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("2001:4::", false),
            ("2001:4:111:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:4:112::", true),
            ("2001:4:112:ffff:ffff:ffff:ffff:ffff", true),
            ("2001:4:113::", false),
            ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:10::", false),
            ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:20::", false),
            ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:30::", false),
            ("2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:200::", true),
            // Documentation.
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("2001:db8::", false),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2001:db9::", true),
            // 6to4: the embedded address decides.
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("2002::", false),
            ("2002:808:808::1", true),
            ("2002:a00:1::", false),
            ("2002:7f00:1::1", false),
            ("2002:c0a8:101:1::1", false),
            ("2002:a9fe:a9fe::", false),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("2003::", true),
            // AS112 direct delegation.
            ("2620:4f:7fff:ffff:ffff:ffff:ffff:ffff", true),
            ("2620:4f:8000::", true),
            ("2620:4f:8000:ffff:ffff:ffff:ffff:ffff", true),
            ("2606:4700::1111", true),
            // 3fff::/20 documentation, at the top of 2000::/3.
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("3fff::", false),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("3fff:1000::", true),
            ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("4000::", false),
            // SRv6 SIDs.
            ("5f00::", false),
            ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            // Unique-local, link-local, site-local, multicast.
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("fc00::", false),
            ("fd00::1", false),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("fe80::", false),
            ("fe80::1", false),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("fec0::", false),
            ("fec0::1", false),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
            ("ff00::", false),
            ("ff02::1", false),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
        ] {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(is_public(ip), public, "{address}");
        }
    }

    /// Every table row holds at its first and last address, and each row's
    /// network has no bits below its prefix (a typo in the table fails here).
    #[test]
    fn every_special_row_classifies_its_own_range() {
        for (table, address_bits) in [(SPECIAL_IPV4, 32), (SPECIAL_IPV6, 128)] {
            for row in table {
                let host_bits = address_bits - row.prefix_len;
                let host_mask = 1u128.checked_shl(host_bits).map_or(u128::MAX, |m| m - 1);
                assert_eq!(
                    row.network & host_mask,
                    0,
                    "{:x}/{}",
                    row.network,
                    row.prefix_len
                );
                for address in [row.network, row.network | host_mask] {
                    let ip = if address_bits == 32 {
                        IpAddr::V4(std::net::Ipv4Addr::from_bits(address as u32))
                    } else {
                        IpAddr::V6(std::net::Ipv6Addr::from_bits(address))
                    };
                    match special_reach(table, address, address_bits) {
                        Some(Reach::EmbeddedIpv4) => {}
                        Some(reach) => assert_eq!(is_public(ip), reach == Reach::Public, "{ip}"),
                        None => panic!("{ip} matches no row"),
                    }
                }
            }
        }
    }
}
