//! Addresses written into strings on the request path without
//! `core::fmt`: `Ipv4Addr`'s `Display` goes through a padding buffer and the
//! formatting machinery, several times the work of writing four numbers
//! with itoa. The output is exactly what `Display` gives.

use std::fmt::Write as _;
use std::net::IpAddr;

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
