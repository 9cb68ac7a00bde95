//! Keys from IP addresses: the peer's, or the client's behind trusted proxies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::ConnectInfo;
use http::HeaderName;
use http::request::Parts;

use super::{Key, KeyError, KeyExtractor};

/// The default IPv6 grouping: one key per /64, the smallest network an ISP
/// hands a customer, so one client cannot rotate through its own subnet.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The key of an address: IPv4 (and IPv4-mapped IPv6) as it is, IPv6 as its
/// network of `ipv6_prefix` bits.
pub(crate) fn ip_key(ip: IpAddr, ipv6_prefix: u8) -> Key {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            // By hand into a stack buffer: this runs for every request, and
            // `format!` with its allocation was a visible share of the
            // layer's cost. `ip:255.255.255.255` is 18 bytes.
            let mut key = [0u8; 18];
            key[..3].copy_from_slice(b"ip:");
            let mut len = 3;
            let mut digits = [0; 20];
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    key[len] = b'.';
                    len += 1;
                }
                for &digit in decimal(u64::from(octet), &mut digits) {
                    key[len] = digit;
                    len += 1;
                }
            }
            Key::from(&key[..len])
        }
        IpAddr::V6(v6) if ipv6_prefix >= 128 => Key::from(format!("ip:{v6}")),
        IpAddr::V6(v6) => {
            let network = Ipv6Addr::from(u128::from(v6) & mask128(ipv6_prefix));
            Key::from(format!("ip:{network}/{ipv6_prefix}"))
        }
    }
}

/// The decimal digits of `n`, written into `buf`: without the formatting
/// machinery, as this runs for every request keyed by an IPv4 address.
fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut rest = n;
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &buf[start..]
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports
/// for an IPv4 client) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// The TCP peer's address, from axum's `ConnectInfo<SocketAddr>` extension.
fn peer_addr(request: &Parts) -> Result<SocketAddr, KeyError> {
    request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .ok_or(KeyError::NoPeerAddress)
}

/// The TCP peer's IP address: `ip:<address>`, IPv6 grouped by network.
///
/// Reads axum's `ConnectInfo<SocketAddr>`, so serve the app with
/// `into_make_service_with_connect_info::<SocketAddr>()` (with plain hyper,
/// insert `ConnectInfo(peer)` into each request's extensions). Behind a
/// proxy every request comes from the proxy: use [`ClientIp`].
#[derive(Debug, Clone, Copy)]
pub struct PeerIp {
    ipv6_prefix: u8,
}

impl PeerIp {
    /// Keys by peer address, IPv6 grouped by [`DEFAULT_IPV6_PREFIX`].
    pub fn new() -> Self {
        PeerIp {
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Groups IPv6 addresses by networks of `bits` bits (values above 128
    /// mean 128: one key per address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        Ok(ip_key(peer_addr(request)?.ip(), self.ipv6_prefix))
    }
}

/// The header a trusted proxy writes the client's address into.
///
/// Name the one your proxy sets or appends to, and only that one: a header
/// the proxy passes through untouched is written by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// RFC 7239 `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
    /// `X-Forwarded-For: 192.0.2.60, 198.51.100.7` (de facto standard).
    XForwardedFor,
    /// `X-Real-IP: 192.0.2.60` (nginx's `real_ip` module).
    XRealIp,
}

impl ProxyHeader {
    fn name(self) -> HeaderName {
        match self {
            ProxyHeader::Forwarded => http::header::FORWARDED,
            ProxyHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ProxyHeader::XRealIp => HeaderName::from_static("x-real-ip"),
        }
    }
}

/// The client's IP address behind trusted proxies: `ip:<address>`, IPv6
/// grouped by network like [`PeerIp`].
///
/// The proxy header is read only when the TCP peer is in one of the trusted
/// networks; from anyone else it is ignored and the peer is the client. The
/// addresses in the header (every field line, in order) followed by the peer
/// form a chain, each appended by the hop that received the request. Walking
/// it from the right, trusted proxies are skipped and the first address that
/// is not trusted is the client: everything to its left was written by the
/// client, which therefore can never choose its own key. If every address is
/// trusted, the leftmost is the client (an internal caller).
///
/// If the walk reaches an entry it cannot read (`unknown`, an obfuscated
/// `Forwarded` node, garbage) before finding the client, there is no client
/// address: [`KeyError::Invalid`], handled by the layer's
/// [`MissingKey`](crate::MissingKey) behaviour.
///
/// Entries are split at every comma, quoted or not: an unbalanced quote sent
/// by the client can then never swallow what the proxies appended after it
/// (a comma inside a quoted `Forwarded` value is not something proxies write
/// for `for=`).
///
/// ```
/// use tollgate_tower::key::{ClientIp, ProxyHeader};
/// // Behind a load balancer in 10.0.0.0/8 that appends to X-Forwarded-For:
/// let client = ClientIp::new(ProxyHeader::XForwardedFor, ["10.0.0.0/8".parse()?]);
/// # let _ = client;
/// # Ok::<(), tollgate_tower::key::CidrError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    header: ProxyHeader,
    header_name: HeaderName,
    trusted: Vec<Cidr>,
    ipv6_prefix: u8,
}

/// One entry of a proxy chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Ip(IpAddr),
    /// `unknown`, obfuscated, missing or unparseable.
    Unknown,
}

impl ClientIp {
    /// Reads `header`, trusting it from peers in `trusted_proxies`.
    pub fn new(header: ProxyHeader, trusted_proxies: impl IntoIterator<Item = Cidr>) -> Self {
        ClientIp {
            header,
            header_name: header.name(),
            trusted: trusted_proxies.into_iter().collect(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Groups IPv6 addresses by networks of `bits` bits (values above 128
    /// mean 128).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client's address (IPv4-mapped IPv6 as IPv4), as described above.
    ///
    /// # Errors
    /// [`KeyError::NoPeerAddress`] without `ConnectInfo`, and
    /// [`KeyError::Invalid`] when the chain is unreadable where it matters.
    pub fn client_ip(&self, request: &Parts) -> Result<IpAddr, KeyError> {
        let peer = canonical(peer_addr(request)?.ip());
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let mut hops = Vec::new();
        for line in request.headers.get_all(&self.header_name) {
            for entry in line.as_bytes().split(|&b| b == b',') {
                hops.push(match self.header {
                    ProxyHeader::Forwarded => forwarded_for(entry),
                    ProxyHeader::XForwardedFor | ProxyHeader::XRealIp => node(entry),
                });
            }
        }
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            match hop {
                Hop::Ip(ip) if self.is_trusted(ip) => client = ip,
                Hop::Ip(ip) => return Ok(ip),
                Hop::Unknown => {
                    return Err(KeyError::Invalid {
                        what: format!("header {}", self.header_name).into(),
                        reason: "a trusted proxy forwarded an unreadable or unknown address".into(),
                    });
                }
            }
        }
        Ok(client)
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, request: &Parts) -> Result<Key, KeyError> {
        Ok(ip_key(self.client_ip(request)?, self.ipv6_prefix))
    }
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.60;proto=http`).
fn forwarded_for(element: &[u8]) -> Hop {
    element
        .split(|&b| b == b';')
        .find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (name, value) = (&pair[..eq], &pair[eq + 1..]);
            name.trim_ascii()
                .eq_ignore_ascii_case(b"for")
                .then(|| node(value))
        })
        .unwrap_or(Hop::Unknown)
}

/// A node: `192.0.2.60`, `192.0.2.60:443`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, optionally quoted (with RFC 7239 backslash escapes).
fn node(raw: &[u8]) -> Hop {
    let Ok(text) = std::str::from_utf8(raw.trim_ascii()) else {
        return Hop::Unknown;
    };
    let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace('\\', ""),
        None => text.to_owned(),
    };
    parse_node(&text).map_or(Hop::Unknown, |ip| Hop::Ip(canonical(ip)))
}

fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip = v6.parse::<Ipv6Addr>().ok()?;
        return (after.is_empty() || is_port(after.strip_prefix(':')?)).then_some(IpAddr::V6(ip));
    }
    let (host, port) = text.split_once(':')?;
    let ip = host.parse::<Ipv4Addr>().ok()?;
    is_port(port).then_some(IpAddr::V4(ip))
}

/// A port: digits, or an RFC 7239 obfuscated port (`_abc`).
fn is_port(text: &str) -> bool {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = text.len() > 1
        && text.starts_with('_')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    digits || obfuscated
}

/// An IP network, e.g. `10.0.0.0/8` or `2001:db8::/32`; a bare address is a
/// network of one.
///
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`), and IPv4-mapped
/// IPv6 networks (`::ffff:10.0.0.0/104`) are the IPv4 networks they map.
///
/// ```
/// use tollgate_tower::key::Cidr;
/// let net: Cidr = "10.0.0.0/8".parse()?;
/// assert!(net.contains("10.20.30.40".parse().unwrap()));
/// assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// # Ok::<(), tollgate_tower::key::CidrError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why text is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("invalid IP address `{0}`")]
    Address(String),
    /// The prefix length is not a number.
    #[error("invalid prefix length `{0}`")]
    PrefixSyntax(String),
    /// The prefix length is longer than the address.
    #[error("prefix length {prefix} is longer than the address ({max} bits)")]
    PrefixTooLong {
        /// The prefix length given.
        prefix: u8,
        /// The address's length in bits.
        max: u8,
    },
}

impl Cidr {
    /// The network of `address` with a prefix of `prefix` bits.
    ///
    /// # Errors
    /// [`CidrError::PrefixTooLong`] when `prefix` exceeds 32 (IPv4) or 128
    /// (IPv6).
    pub fn new(address: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        match address {
            IpAddr::V4(v4) => {
                if prefix > 32 {
                    return Err(CidrError::PrefixTooLong { prefix, max: 32 });
                }
                let network = Ipv4Addr::from(u32::from(v4) & mask32(prefix));
                Ok(Cidr {
                    network: IpAddr::V4(network),
                    prefix,
                })
            }
            IpAddr::V6(v6) => {
                if prefix > 128 {
                    return Err(CidrError::PrefixTooLong { prefix, max: 128 });
                }
                if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                    return Cidr::new(IpAddr::V4(v4), prefix - 96);
                }
                let network = Ipv6Addr::from(u128::from(v6) & mask128(prefix));
                Ok(Cidr {
                    network: IpAddr::V6(network),
                    prefix,
                })
            }
        }
    }

    /// The network's first address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                u128::from(ip.to_ipv6_mapped()) & mask128(self.prefix) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(address.to_owned()))?;
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .map_err(|_| CidrError::PrefixSyntax(p.to_owned()))?,
            None if address.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(address, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (mut parts, ()) = builder.body(()).expect("valid request").into_parts();
        let peer: SocketAddr = peer.parse().expect("socket address");
        parts.extensions.insert(ConnectInfo(peer));
        parts
    }

    fn key(extractor: &impl KeyExtractor, parts: &Parts) -> String {
        extractor.extract(parts).expect("a key").to_string()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    #[test]
    fn cidr_parses_masks_and_contains() {
        let net: Cidr = "10.1.2.3/8".parse().expect("cidr");
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.255.0.1".parse().expect("ip")));
        assert!(!net.contains("11.0.0.0".parse().expect("ip")));
        let one: Cidr = "192.0.2.1".parse().expect("cidr");
        assert_eq!(one.prefix(), 32);
        assert!(one.contains("::ffff:192.0.2.1".parse().expect("ip")));
        let v6: Cidr = "2001:db8::/32".parse().expect("cidr");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().expect("cidr");
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        let everything: Cidr = "::/0".parse().expect("cidr");
        assert!(everything.contains("10.0.0.1".parse().expect("ip")));
        let all_v4: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all_v4.contains("203.0.113.9".parse().expect("ip")));
    }

    #[test]
    fn cidr_rejects_bad_text() {
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                prefix: 33,
                max: 32
            })
        );
        assert_eq!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                prefix: 129,
                max: 128
            })
        );
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::PrefixSyntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/-1".parse::<Cidr>(),
            Err(CidrError::PrefixSyntax(_))
        ));
    }

    #[test]
    fn peer_ip_groups_ipv6_by_64_and_unmaps_ipv4() {
        let peer = PeerIp::new();
        let a = key(&peer, &request("[2001:db8:1:2::1]:1000", &[]));
        let b = key(
            &peer,
            &request("[2001:db8:1:2:ffff:ffff:ffff:ffff]:1000", &[]),
        );
        let c = key(&peer, &request("[2001:db8:1:3::1]:1000", &[]));
        assert_eq!(a, "ip:2001:db8:1:2::/64");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            key(&peer, &request("[::ffff:192.0.2.1]:80", &[])),
            "ip:192.0.2.1"
        );
        assert_eq!(key(&peer, &request("192.0.2.1:80", &[])), "ip:192.0.2.1");
        let per_address = PeerIp::new().ipv6_prefix(200);
        assert_eq!(
            key(&per_address, &request("[2001:db8::1]:1", &[])),
            "ip:2001:db8::1"
        );
        let wide = PeerIp::new().ipv6_prefix(48);
        assert_eq!(
            key(&wide, &request("[2001:db8:1:2::1]:1", &[])),
            "ip:2001:db8:1::/48"
        );
    }

    #[test]
    fn peer_ip_without_connect_info_is_an_error() {
        let (parts, ()) = http::Request::new(()).into_parts();
        assert_eq!(PeerIp::new().extract(&parts), Err(KeyError::NoPeerAddress));
    }

    #[test]
    fn spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored() {
        let client = ClientIp::new(ProxyHeader::XForwardedFor, nets(&["10.0.0.0/8"]));
        let spoofed = request("203.0.113.9:5000", &[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(key(&client, &spoofed), "ip:203.0.113.9");
        let real_ip = ClientIp::new(ProxyHeader::XRealIp, nets(&["10.0.0.0/8"]));
        let spoofed = request("203.0.113.9:5000", &[("x-real-ip", "198.51.100.1")]);
        assert_eq!(key(&real_ip, &spoofed), "ip:203.0.113.9");
    }

    #[test]
    fn x_forwarded_for_from_a_trusted_proxy_names_the_rightmost_untrusted_address() {
        let client = ClientIp::new(ProxyHeader::XForwardedFor, nets(&["10.0.0.0/8"]));
        // The client claims to be 1.1.1.1; the proxy appended the real peer.
        let parts = request(
            "10.0.0.2:5000",
            &[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.7")],
        );
        assert_eq!(key(&client, &parts), "ip:203.0.113.9");
        // Several field lines form one list, in order.
        let parts = request(
            "10.0.0.2:5000",
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "203.0.113.9:4000"),
            ],
        );
        assert_eq!(key(&client, &parts), "ip:203.0.113.9");
        // Everything trusted: an internal caller, the leftmost address.
        let parts = request(
            "10.0.0.2:5000",
            &[("x-forwarded-for", "10.9.9.9, 10.0.0.7")],
        );
        assert_eq!(key(&client, &parts), "ip:10.9.9.9");
        // A trusted peer without the header is the client itself.
        assert_eq!(key(&client, &request("10.0.0.2:1", &[])), "ip:10.0.0.2");
    }

    #[test]
    fn garbage_left_of_the_client_is_never_read() {
        let client = ClientIp::new(ProxyHeader::XForwardedFor, nets(&["10.0.0.0/8"]));
        let parts = request(
            "10.0.0.2:5000",
            &[(
                "x-forwarded-for",
                "\"unterminated, zzz, unknown, 203.0.113.9",
            )],
        );
        assert_eq!(key(&client, &parts), "ip:203.0.113.9");
        // ... but an unknown address right of the client is an error, not a guess.
        let parts = request(
            "10.0.0.2:5000",
            &[("x-forwarded-for", "203.0.113.9, unknown")],
        );
        assert!(matches!(
            client.extract(&parts),
            Err(KeyError::Invalid { .. })
        ));
    }

    #[test]
    fn forwarded_header_rfc_7239() {
        let client = ClientIp::new(ProxyHeader::Forwarded, nets(&["10.0.0.0/8", "fd00::/8"]));
        let parts = request(
            "[fd00::1]:443",
            &[(
                "forwarded",
                "for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3;by=10.0.0.4",
            )],
        );
        assert_eq!(key(&client, &parts), "ip:2001:db8:cafe::/64");
        let parts = request(
            "10.0.0.2:1",
            &[("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")],
        );
        assert_eq!(key(&client, &parts), "ip:192.0.2.60");
        let parts = request("10.0.0.2:1", &[("forwarded", "for=\"192.0.2.60:8080\"")]);
        assert_eq!(key(&client, &parts), "ip:192.0.2.60");
        // An obfuscated node cannot be charged: no key, not the proxy's.
        for hidden in ["for=_hidden", "for=unknown", "proto=https", "for=\"[::1\""] {
            let parts = request("10.0.0.2:1", &[("forwarded", hidden)]);
            assert!(
                matches!(client.extract(&parts), Err(KeyError::Invalid { .. })),
                "{hidden}"
            );
        }
    }

    #[test]
    fn ipv6_clients_behind_a_proxy_share_a_key_per_64() {
        let client = ClientIp::new(ProxyHeader::XRealIp, nets(&["127.0.0.1"]));
        let a = key(
            &client,
            &request("127.0.0.1:1", &[("x-real-ip", "2001:db8:1:2::1")]),
        );
        let b = key(
            &client,
            &request("127.0.0.1:1", &[("x-real-ip", "2001:db8:1:2:ffff::9")]),
        );
        let c = key(
            &client,
            &request("127.0.0.1:1", &[("x-real-ip", "2001:db8:1:3::1")]),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = key(
            &client,
            &request(
                "[::ffff:127.0.0.1]:1",
                &[("x-real-ip", "::ffff:203.0.113.9")],
            ),
        );
        assert_eq!(mapped, "ip:203.0.113.9");
    }

    #[test]
    fn decimal_digits_are_written_by_hand() {
        let mut digits = [0; 20];
        for n in [0, 7, 10, 12_345, u64::MAX] {
            assert_eq!(decimal(n, &mut digits), n.to_string().as_bytes());
        }
    }

    #[test]
    fn nodes_parse_with_and_without_ports() {
        let ip = |s: &str| Hop::Ip(s.parse().expect("ip"));
        assert_eq!(node(b" 192.0.2.1 "), ip("192.0.2.1"));
        assert_eq!(node(b"192.0.2.1:80"), ip("192.0.2.1"));
        assert_eq!(node(b"[2001:db8::1]:80"), ip("2001:db8::1"));
        assert_eq!(node(b"[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(node(b"\"[2001:db8::1]:_port\""), ip("2001:db8::1"));
        assert_eq!(node(b"2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(node(b"192.0.2.1:"), Hop::Unknown);
        assert_eq!(node(b"192.0.2.1:123456"), Hop::Unknown);
        assert_eq!(node(b"[2001:db8::1]x"), Hop::Unknown);
        assert_eq!(node(b"\xff\xfe"), Hop::Unknown);
        assert_eq!(node(b""), Hop::Unknown);
        assert_eq!(node(b"\""), Hop::Unknown);
    }
}
