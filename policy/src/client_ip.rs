//! The client's IP address. The socket peer is the truth unless the peer is a proxy the
//! operator trusts; then `X-Forwarded-For` / `Forwarded` are read from the right, and the
//! first hop that is not itself a trusted proxy is the client. Taking the leftmost entry
//! instead would let any client claim any IP by sending the header itself.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::key::canonical_ip;
use crate::Deny;

/// Resolves the client IP of a request that arrived from `peer`.
///
/// Headers are only read when `peer` is trusted. A malformed hop in a header we do read
/// is an error rather than a guess: falling back to the proxy's address would make
/// every client look like the proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Result<IpAddr, Deny> {
    let peer = canonical_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    let forwarded: Vec<_> = headers.get_all(http::header::FORWARDED).iter().collect();
    let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    if !forwarded.is_empty() && !xff.is_empty() {
        // Two chains that can disagree: refuse rather than pick one.
        return Err(Deny::InvalidHeader);
    }
    if !forwarded.is_empty() {
        for value in forwarded {
            let value = value.to_str().map_err(|_| Deny::InvalidHeader)?;
            for element in value.split(',') {
                let mut found = None;
                for pair in element.split(';') {
                    let (k, v) = pair.trim().split_once('=').ok_or(Deny::InvalidHeader)?;
                    if k.eq_ignore_ascii_case("for") {
                        found = Some(parse_forwarded_node(v)?);
                    }
                }
                hops.push(found.ok_or(Deny::InvalidHeader)?);
            }
        }
    } else {
        for value in xff {
            let value = value.to_str().map_err(|_| Deny::InvalidHeader)?;
            for hop in value.split(',') {
                let ip: IpAddr = hop.trim().parse().map_err(|_| Deny::InvalidHeader)?;
                hops.push(canonical_ip(ip));
            }
        }
    }
    // Rightmost untrusted hop; if every hop is a trusted proxy, the leftmost one is the
    // best we know.
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = *hop;
        if !is_trusted(hop) {
            break;
        }
    }
    Ok(client)
}

fn parse_forwarded_node(v: &str) -> Result<IpAddr, Deny> {
    let v = v.trim().trim_matches('"');
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split_once(']').ok_or(Deny::InvalidHeader)?.0
    } else {
        v.split(':').next().unwrap_or(v)
    };
    host.parse::<IpAddr>()
        .map(canonical_ip)
        .map_err(|_| Deny::InvalidHeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn untrusted_peer_headers_ignored() {
        let h = hdrs(&[("x-forwarded-for", "1.2.3.4")]);
        let ip = client_ip("127.0.0.3".parse().unwrap(), &h, &nets(&["10.0.0.0/8"])).unwrap();
        assert_eq!(ip.to_string(), "127.0.0.3");
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        // The client forged "6.6.6.6"; the proxy chain appended the real address.
        let h = hdrs(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"])).unwrap();
        assert_eq!(ip.to_string(), "203.0.113.7");
    }

    #[test]
    fn forwarded_header_and_mapped_v6() {
        let h = hdrs(&[("forwarded", "for=\"[::ffff:203.0.113.9]:443\";proto=https")]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"])).unwrap();
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn garbage_from_trusted_proxy_is_refused() {
        let h = hdrs(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &nets(&["10.0.0.0/8"])),
            Err(Deny::InvalidHeader)
        );
        let both = hdrs(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &both, &nets(&["10.0.0.0/8"])),
            Err(Deny::InvalidHeader)
        );
    }
}
