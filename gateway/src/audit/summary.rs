//! Refusals before authentication (pre-auth limits, bans, unparsable or unsigned
//! requests, requests hyper refused) cost an attacker nothing to send; one line each
//! would let a flood fill the disk. Each client network gets
//! `audit.preauth_lines_per_sec` lines of its own per second; beyond that, refusals are
//! counted, and one `"kind":"summary"` line per network, code and second carries the
//! count. Authenticated requests never pass through here: each keeps its own line.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use parking_lot::Mutex;

use crate::json::Object;

/// Networks tracked at once; refusals from networks beyond this share one entry
/// (`0.0.0.0/0` or `::/0`), so a flood from many networks cannot grow the table.
const MAX_NETWORKS: usize = 100_000;

/// The network a client's lines are counted in: its /24 (IPv4) or /64 (IPv6), the unit
/// one operator (or one attacker's machine) usually holds.
pub fn network_of(ip: IpAddr) -> IpNet {
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix).map_or(IpNet::from(ip), |n| n.trunc())
}

#[derive(Default)]
struct Net {
    second: u64,
    lines: u32,
    suppressed: Vec<(&'static str, u64)>,
}

/// Per-network line budgets and the counts of what went over them.
pub struct Summaries {
    per_sec: u32,
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    /// This second's budget and counts per network.
    nets: HashMap<IpNet, Net>,
    /// Counts of seconds that are over, not yet written.
    done: Vec<Summary>,
}

/// One summary line: `count` refusals with `code` from `net` in the second `second`
/// (Unix seconds) had no line of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The second, in Unix seconds.
    pub second: u64,
    /// The client network.
    pub net: IpNet,
    /// The deny code.
    pub code: &'static str,
    /// Refusals not written individually.
    pub count: u64,
}

impl Summary {
    /// Appends the line as one JSON object (no newline).
    pub fn write_json(&self, dialect: &str, buf: &mut Vec<u8>) {
        let mut o = Object::new(buf);
        o.raw_with("ts", |b| {
            super::push_timestamp(b, UNIX_EPOCH + Duration::from_secs(self.second))
        })
        .str("kind", "summary")
        .str("client_net", &self.net.to_string())
        .str("dialect", dialect)
        .str("decision", "deny")
        .str("code", self.code)
        .u64("count", self.count);
        o.end();
    }
}

impl Summaries {
    /// Budgets of `per_sec` lines per network and second.
    pub fn new(per_sec: u32) -> Summaries {
        Summaries {
            per_sec,
            tables: Mutex::new(Tables::default()),
        }
    }

    /// Whether a refusal from `ip` with `code` gets its own line now; `false` means it was
    /// counted for a summary instead.
    pub fn admit(&self, ip: IpAddr, code: &'static str, now: SystemTime) -> bool {
        let second = unix_second(now);
        let mut tables = self.tables.lock();
        let tables = &mut *tables;
        let mut key = network_of(ip);
        if !tables.nets.contains_key(&key) && tables.nets.len() >= MAX_NETWORKS {
            key = IpNet::new(ip, 0).map_or(key, |n| n.trunc());
        }
        let net = tables.nets.entry(key).or_default();
        if net.second != second {
            if net.second > second {
                // The clock stepped back: count into the newer second rather than reopen
                // one whose summary may already be out.
                return self.suppress(net, code);
            }
            // A new second for this network: the last one's counts are final.
            for (code, count) in net.suppressed.drain(..) {
                tables.done.push(Summary {
                    second: net.second,
                    net: key,
                    code,
                    count,
                });
            }
            net.second = second;
            net.lines = 0;
        }
        if net.lines < self.per_sec {
            net.lines += 1;
            true
        } else {
            self.suppress(net, code)
        }
    }

    fn suppress(&self, net: &mut Net, code: &'static str) -> bool {
        match net.suppressed.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => net.suppressed.push((code, 1)),
        }
        crate::metrics::metrics().audit_summarized.inc();
        false
    }

    /// Moves out the summaries of every second before `now`'s and forgets networks that
    /// were quiet since, so the table only holds the current second's senders.
    pub fn take_due(&self, now: SystemTime, out: &mut Vec<Summary>) {
        let second = unix_second(now);
        let mut tables = self.tables.lock();
        out.append(&mut tables.done);
        tables.nets.retain(|net, state| {
            if state.second >= second {
                return true;
            }
            for (code, count) in state.suppressed.drain(..) {
                out.push(Summary {
                    second: state.second,
                    net: *net,
                    code,
                    count,
                });
            }
            false
        });
    }

    /// Moves out every pending summary (at shutdown).
    pub fn take_all(&self, out: &mut Vec<Summary>) {
        self.take_due(SystemTime::now() + Duration::from_secs(3600), out);
    }
}

fn unix_second(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_budget_refusals_become_one_count_per_network_code_and_second() {
        let s = Summaries::new(2);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let a2: IpAddr = "198.51.100.200".parse().unwrap();
        let b: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(s.admit(a, "rate_limited", t0));
        assert!(s.admit(a2, "rate_limited", t0), "same /24, second line");
        for _ in 0..5 {
            assert!(!s.admit(a, "rate_limited", t0));
        }
        assert!(!s.admit(a2, "ip_banned", t0));
        assert!(
            s.admit(b, "rate_limited", t0),
            "another network has its own budget"
        );

        let mut out = Vec::new();
        s.take_due(t0, &mut out);
        assert!(out.is_empty(), "the second is not over yet");
        s.take_due(t0 + Duration::from_secs(1), &mut out);
        out.sort_by_key(|x| x.code);
        let net: IpNet = "198.51.100.0/24".parse().unwrap();
        assert_eq!(
            out,
            [
                Summary {
                    second: 1_000,
                    net,
                    code: "ip_banned",
                    count: 1
                },
                Summary {
                    second: 1_000,
                    net,
                    code: "rate_limited",
                    count: 5
                },
            ]
        );
        // A new second, a new budget; the table was emptied.
        assert!(s.tables.lock().nets.is_empty());
        assert!(s.admit(a, "rate_limited", t0 + Duration::from_secs(1)));

        let mut buf = Vec::new();
        out[1].write_json("zaif", &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["kind"], "summary");
        assert_eq!(v["client_net"], "198.51.100.0/24");
        assert_eq!(v["count"], 5);
        assert_eq!(v["ts"], "1970-01-01T00:16:40.000Z");
    }

    #[test]
    fn a_new_second_closes_the_last_ones_counts_before_any_flush() {
        let s = Summaries::new(1);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(2_000);
        let t1 = t0 + Duration::from_secs(1);
        assert!(s.admit(ip, "ip_banned", t0));
        assert!(!s.admit(ip, "ip_banned", t0));
        assert!(!s.admit(ip, "ip_banned", t0));
        // The next second starts before the writer flushed: a fresh budget, and the two
        // counted in t0 stay t0's.
        assert!(s.admit(ip, "ip_banned", t1));
        assert!(!s.admit(ip, "ip_banned", t1));
        let mut out = Vec::new();
        s.take_due(t1 + Duration::from_secs(1), &mut out);
        let got: Vec<(u64, u64)> = out.iter().map(|x| (x.second, x.count)).collect();
        assert_eq!(got, [(2_000, 2), (2_001, 1)]);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(network_of(ip).to_string(), "2001:db8:1:2::/64");
    }
}
