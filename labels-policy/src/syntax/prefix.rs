//! Address prefixes as both policy languages write them (`10.0.0.0/8`,
//! `fd00::/64`, or a bare address). A leaf: the label parser and the Cilium
//! parser share it, and it imports nothing of the crate.

use std::str::FromStr;

use ipnet::IpNet;

/// Parses `a.b.c.d/n` or `x::/n`; a bare address is a host prefix. The
/// prefix must have no bits set past its length.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let net = if text.contains('/') {
        IpNet::from_str(text)
            .map_err(|_| "an address prefix such as 10.0.0.0/8 or fd00::/64".to_string())?
    } else {
        let addr = std::net::IpAddr::from_str(text)
            .map_err(|_| "an address prefix such as 10.0.0.0/8 or fd00::/64".to_string())?;
        IpNet::from(addr)
    };
    if net.trunc() != net {
        return Err(format!("a prefix with no host bits set ({})", net.trunc()));
    }
    Ok(net)
}
