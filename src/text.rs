//! Addresses written into strings and read from them on the request path.
//!
//! Written without `core::fmt`: `Ipv4Addr`'s `Display` goes through a
//! padding buffer and the formatting machinery, several times the work of
//! writing four numbers with itoa. The output is exactly what `Display` gives.
//!
//! Read with a dotted-quad fast path: the standard parser's generic
//! machinery costs several times as much for the IPv4 address nearly every
//! `X-Forwarded-For` hop and `x-envoy-external-address` carries. What it
//! accepts is exactly what `IpAddr::from_str` accepts.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// Appends `ip` as `Display` would write it.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        // Rarer, and its zero compression is best left to the standard library.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip` as `Display` would write it.
pub fn ip_string(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push_ip(&mut out, ip);
    out
}

/// `text` as `IpAddr::from_str` reads it (no surrounding spaces allowed).
pub fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4(text) {
        return Some(IpAddr::V4(v4));
    }
    // Anything else (IPv6, or not an address): the standard parser decides.
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Four decimal octets of at most three digits each, no leading zeros (as
/// the standard parser, which refuses them as ambiguous octal).
fn parse_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut filled = 0;
    let mut value: u16 = 0;
    let mut digits = 0;
    for &byte in text {
        match byte {
            b'0'..=b'9' => {
                if digits == 3 || (digits == 1 && value == 0) {
                    return None;
                }
                digits += 1;
                value = value * 10 + u16::from(byte - b'0');
            }
            b'.' if digits > 0 && filled < 3 => {
                octets[filled] = u8::try_from(value).ok()?;
                filled += 1;
                value = 0;
                digits = 0;
            }
            _ => return None,
        }
    }
    if filled != 3 || digits == 0 {
        return None;
    }
    octets[3] = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn ipv4_is_written_as_display_writes_it(bits: u32) {
            let ip = IpAddr::V4(Ipv4Addr::from(bits));
            prop_assert_eq!(ip_string(ip), ip.to_string());
        }

        #[test]
        fn ipv6_is_written_as_display_writes_it(bits: u128) {
            let ip = IpAddr::V6(Ipv6Addr::from(bits));
            prop_assert_eq!(ip_string(ip), ip.to_string());
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_as_the_standard_parser_parses_it(text in "[0-9.:a-fA-F ]{0,20}") {
            prop_assert_eq!(parse_ip(text.as_bytes()), text.parse::<IpAddr>().ok());
        }

        #[test]
        fn every_ipv4_address_reads_back(bits: u32) {
            let ip = IpAddr::V4(Ipv4Addr::from(bits));
            prop_assert_eq!(parse_ip(ip_string(ip).as_bytes()), Some(ip));
        }
    }

    #[test]
    fn malformed_ipv4_is_refused_as_the_standard_parser_refuses_it() {
        for text in [
            "",
            ".",
            "1.2.3",
            "1.2.3.4.",
            "1.2.3.4.5",
            "256.1.1.1",
            "01.2.3.4",
            "1..2.3",
            "1.2.3.-4",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.4x",
            "1000.2.3.4",
            "0.0.0.0",
            "00.0.0.0",
        ] {
            assert_eq!(
                parse_ip(text.as_bytes()),
                text.parse::<IpAddr>().ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn edge_addresses() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "::",
            "::ffff:1.2.3.4",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }
}
