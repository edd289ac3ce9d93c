//! The request target against the `Host` header: a request must name one authority, so
//! a virtual-host-routing proxy in front or behind us cannot be pointed elsewhere.
//!
//! Every failure is [`Deny::InvalidTarget`]:
//! - more than one `Host` header (a duplicate is an ambiguity, not a header syntax error);
//! - an absolute-form target (`http://host/path`) whose authority differs from `Host`,
//!   compared case-insensitively with default ports filled in from the scheme
//!   (`http://Example.com/` matches `Host: example.com:80`);
//! - an absolute-form target with user info (`http://user@host/`) or a scheme other than
//!   `http`/`https`.
//!
//! With no `Host` header (HTTP/2 carries `:authority` in the URI) the URI's authority is
//! taken as is; with neither, there is nothing to compare.

use http::header::HOST;
use http::{HeaderMap, Uri};

use crate::Deny;

/// Checks the request target and `Host` header agree.
pub fn check_target(uri: &Uri, headers: &HeaderMap) -> Result<(), Deny> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Deny::InvalidTarget);
    }
    let host = match host {
        Some(v) => Some(v.to_str().map_err(|_| Deny::InvalidTarget)?),
        None => None,
    };
    let Some(authority) = uri.authority() else {
        return Ok(());
    };
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => 80,
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => return Err(Deny::InvalidTarget),
    };
    if authority.as_str().contains('@') {
        return Err(Deny::InvalidTarget);
    }
    let Some(host) = host else {
        return Ok(());
    };
    let target = split_authority(authority.as_str(), default_port)?;
    let header = split_authority(host, default_port)?;
    if target.0.eq_ignore_ascii_case(header.0) && target.1 == header.1 {
        Ok(())
    } else {
        Err(Deny::InvalidTarget)
    }
}

/// `host[:port]` or `[v6][:port]` into the host and its port (the default if omitted).
fn split_authority(s: &str, default_port: u16) -> Result<(&str, u16), Deny> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(Deny::InvalidTarget)?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(Deny::InvalidTarget)?),
        };
        (&s[..end + 2], port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['@', '/', ' ']) {
        return Err(Deny::InvalidTarget);
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 5 => {
            p.parse().map_err(|_| Deny::InvalidTarget)?
        }
        Some(_) => return Err(Deny::InvalidTarget),
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(target: &str, hosts: &[&str]) -> Result<(), Deny> {
        let uri: Uri = target.parse().unwrap();
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(HOST, HeaderValue::from_str(v).unwrap());
        }
        check_target(&uri, &h)
    }

    #[test]
    fn origin_form_needs_one_host() {
        assert_eq!(check("/tapi", &["api.zaif.jp"]), Ok(()));
        assert_eq!(check("/tapi", &[]), Ok(()));
        assert_eq!(
            check("/tapi", &["api.zaif.jp", "evil.example"]),
            Err(Deny::InvalidTarget)
        );
        assert_eq!(
            check("/tapi", &["api.zaif.jp", "api.zaif.jp"]),
            Err(Deny::InvalidTarget)
        );
    }

    #[test]
    fn absolute_form_must_match_host() {
        assert_eq!(check("http://Example.com/x", &["example.com"]), Ok(()));
        assert_eq!(check("http://example.com/x", &["EXAMPLE.com:80"]), Ok(()));
        assert_eq!(check("http://example.com:80/x", &["example.com"]), Ok(()));
        assert_eq!(check("https://example.com/x", &["example.com:443"]), Ok(()));
        assert_eq!(
            check("http://127.0.0.1:8080/x", &["127.0.0.1:8080"]),
            Ok(())
        );
        assert_eq!(check("http://[::1]:8080/x", &["[::1]:8080"]), Ok(()));
        assert_eq!(check("http://[::1]/x", &["[::1]:80"]), Ok(()));
        assert_eq!(check("http://example.com/x", &[]), Ok(()));
        for (target, host) in [
            ("http://evil.example/x", "example.com"),
            ("http://example.com:8080/x", "example.com"),
            ("https://example.com/x", "example.com:80"),
            ("http://example.com/x", "example.com:443"),
            ("http://[::1]:8080/x", "[::2]:8080"),
            ("http://example.com/x", "example.com:x"),
            ("http://example.com/x", "example.com:99999"),
            ("http://example.com/x", "user@example.com"),
        ] {
            assert_eq!(
                check(target, &[host]),
                Err(Deny::InvalidTarget),
                "{target} {host}"
            );
        }
        assert_eq!(
            check("http://user@example.com/x", &["example.com"]),
            Err(Deny::InvalidTarget)
        );
        assert_eq!(
            check("ftp://example.com/x", &["example.com"]),
            Err(Deny::InvalidTarget)
        );
    }
}
