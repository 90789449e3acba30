//! Who the client is: the peer address, or, when the peer is a trusted reverse proxy
//! (`server.trusted_proxies`), the address that proxy names in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`. Used for the per-address limits and for logs.

use crate::config::Cidr;
use hyper::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// Hops read from forwarding headers at most: a longer chain is cut (the rightmost hops are
/// the ones a trusted proxy added, so those are kept).
const MAX_HOPS: usize = 32;

/// The client's address for a request from `peer`. The headers count only when `peer` is
/// trusted; then the client is the rightmost hop that is not itself a trusted proxy (hops to
/// its left could be anything the client wrote). A hop that does not parse as an address
/// (`unknown`, an obfuscated `_name`) stops the walk at the trusted proxy that reported it.
pub fn client_addr(trusted: &[Cidr], peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let mut hops: Vec<Option<SocketAddr>> = Vec::new();
    let forwarded = headers.get_all("forwarded");
    if forwarded.iter().next().is_some() {
        for v in forwarded {
            let Ok(v) = v.to_str() else {
                return peer;
            };
            hops.extend(forwarded_for(v));
        }
    } else {
        for v in headers.get_all("x-forwarded-for") {
            let Ok(v) = v.to_str() else {
                return peer;
            };
            hops.extend(v.split(',').map(|h| parse_node(h.trim())));
        }
    }
    let mut client = peer;
    for hop in hops.into_iter().rev().take(MAX_HOPS) {
        match hop {
            Some(addr) => {
                client = addr;
                if !is_trusted(addr.ip()) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// The `for=` node of each element of a `Forwarded` header value, in order (RFC 7239 §4);
/// an element without one counts as an unknown hop.
fn forwarded_for(value: &str) -> impl Iterator<Item = Option<SocketAddr>> + '_ {
    value.split(',').map(|element| {
        element.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            if !k.trim().eq_ignore_ascii_case("for") {
                return None;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            parse_node(v)
        })
    })
}

/// A node: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]`, `[2001:db8::1]:5678` or a bare IPv6
/// address (as `X-Forwarded-For` writes it). Port 0 when none is given.
fn parse_node(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn ip(a: SocketAddr) -> String {
        a.ip().to_string()
    }

    /// Guards issue 24, point 9: only a trusted peer's headers name the client, and then the
    /// rightmost untrusted hop does.
    #[test]
    fn forwarding_headers_count_only_from_trusted_peers() {
        let trusted: Vec<Cidr> = ["127.0.0.1/32", "10.0.0.0/8"]
            .iter()
            .map(|c| c.parse().expect("cidr"))
            .collect();
        let proxy: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let stranger: SocketAddr = "127.0.0.2:4000".parse().expect("addr");
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3")]);
        assert_eq!(ip(client_addr(&trusted, proxy, &xff)), "203.0.113.7");
        assert_eq!(client_addr(&trusted, stranger, &xff), stranger);
        assert_eq!(client_addr(&[], proxy, &xff), proxy);
        let fwd = headers(&[
            ("forwarded", "for=6.6.6.6;proto=https"),
            (
                "forwarded",
                "For=\"[2001:db8:cafe::17]:4711\", for=10.9.9.9;by=10.0.0.1",
            ),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(ip(client_addr(&trusted, proxy, &fwd)), "2001:db8:cafe::17");
        let hidden = headers(&[("forwarded", "for=203.0.113.9, for=_hidden, for=10.0.0.2")]);
        assert_eq!(ip(client_addr(&trusted, proxy, &hidden)), "10.0.0.2");
        let garbage = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(client_addr(&trusted, proxy, &garbage), proxy);
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]);
        assert_eq!(ip(client_addr(&trusted, proxy, &all_trusted)), "10.0.0.5");
        let v6 = headers(&[("x-forwarded-for", "2001:db8::2")]);
        assert_eq!(ip(client_addr(&trusted, proxy, &v6)), "2001:db8::2");
        assert_eq!(client_addr(&trusted, proxy, &HeaderMap::new()), proxy);
    }
}
