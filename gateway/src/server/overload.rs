//! Overload and resources: the in-flight request limit that sheds load before queues
//! grow, the per-network connection cap, and the open-files limit.
//!
//! Both limits are plain atomics and a small sharded map, checked before any parsing,
//! body reading or HMAC work, so refusing costs less than the request that is refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use keyguard_config::OverloadConfig;
use parking_lot::Mutex;

/// Shared by every worker: how much the gateway takes on at once.
pub struct Overload {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    retry_after_secs: AtomicU64,
    per_network: Mutex<HashMap<IpNet, usize>>,
    max_per_network: AtomicUsize,
    prefixes: Mutex<(u8, u8)>,
}

/// One request being processed; dropping it frees its slot.
pub struct InFlight(Arc<Overload>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open connection counted against its network; dropping it frees the slot.
pub struct NetworkSlot {
    overload: Arc<Overload>,
    net: IpNet,
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        let mut map = self.overload.per_network.lock();
        if let Some(n) = map.get_mut(&self.net) {
            *n -= 1;
            if *n == 0 {
                // Entries live only while connections do, so a scan of many addresses
                // cannot grow the map beyond the connection cap.
                map.remove(&self.net);
            }
        }
    }
}

impl Overload {
    /// Limits from `[overload]`.
    pub fn new(cfg: &OverloadConfig) -> Arc<Overload> {
        let o = Arc::new(Overload {
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            retry_after_secs: AtomicU64::new(1),
            per_network: Mutex::new(HashMap::new()),
            max_per_network: AtomicUsize::new(0),
            prefixes: Mutex::new((32, 64)),
        });
        o.configure(cfg);
        o
    }

    /// Applies new limits (a reload); connections and requests already admitted stay.
    pub fn configure(&self, cfg: &OverloadConfig) {
        self.max_in_flight
            .store(cfg.max_in_flight, Ordering::Release);
        self.retry_after_secs
            .store(cfg.retry_after_secs, Ordering::Release);
        self.max_per_network
            .store(cfg.max_connections_per_network, Ordering::Release);
        *self.prefixes.lock() = (cfg.ipv4_prefix, cfg.ipv6_prefix);
    }

    /// A slot for one more request, or `None` when the gateway is at its limit: the
    /// request is then shed at once.
    pub fn try_request(self: &Arc<Self>) -> Option<InFlight> {
        let max = self.max_in_flight.load(Ordering::Acquire);
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(self.clone());
        (prev < max).then_some(slot)
    }

    /// Requests being processed now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The `Retry-After` for shed requests.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs.load(Ordering::Acquire)
    }

    /// A slot for one more connection from `ip`'s network, or `None` when that network
    /// holds its cap.
    pub fn try_connection(self: &Arc<Self>, ip: IpAddr) -> Option<NetworkSlot> {
        let net = self.network(ip);
        let max = self.max_per_network.load(Ordering::Acquire);
        let mut map = self.per_network.lock();
        let n = map.entry(net).or_insert(0);
        if *n >= max {
            // `max` is at least 1, so the entry is someone else's and stays.
            return None;
        }
        *n += 1;
        drop(map);
        Some(NetworkSlot {
            overload: self.clone(),
            net,
        })
    }

    fn network(&self, ip: IpAddr) -> IpNet {
        let ip = keyguard_policy::key::canonical_ip(ip);
        let (v4, v6) = *self.prefixes.lock();
        let prefix = if ip.is_ipv4() { v4 } else { v6 };
        // Prefixes were bounded when the config was read, so this cannot fail.
        IpNet::new(ip, prefix)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(ip))
    }
}

/// Raises the open-files soft limit to the hard limit, so the connection cap, not the
/// default 1024 descriptors, decides how many clients the gateway serves; says so in
/// the log either way.
pub fn raise_open_files() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-files limit")
            }
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-files limit already at its maximum"),
        Err(e) => tracing::warn!(error = %e, "could not read the open-files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_in_flight: usize, per_net: usize, v4: u8) -> OverloadConfig {
        OverloadConfig {
            max_in_flight,
            retry_after_secs: 2,
            max_connections_per_network: per_net,
            ipv4_prefix: v4,
            ipv6_prefix: 64,
            raise_open_files: false,
        }
    }

    #[test]
    fn in_flight_slots_are_freed_on_drop() {
        let o = Overload::new(&cfg(2, 1, 32));
        let a = o.try_request().unwrap();
        let _b = o.try_request().unwrap();
        assert!(o.try_request().is_none());
        assert_eq!(o.in_flight(), 2, "a refused attempt holds nothing");
        drop(a);
        assert!(o.try_request().is_some());
        assert_eq!(o.retry_after_secs(), 2);
    }

    #[test]
    fn connections_are_counted_per_network() {
        let o = Overload::new(&cfg(10, 2, 24));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = o.try_connection(ip("10.0.0.1")).unwrap();
        let _b = o.try_connection(ip("10.0.0.2")).unwrap();
        assert!(o.try_connection(ip("10.0.0.3")).is_none(), "same /24");
        assert!(
            o.try_connection(ip("::ffff:10.0.0.4")).is_none(),
            "mapped v4"
        );
        let _c = o.try_connection(ip("10.0.1.1")).unwrap();
        drop(a);
        assert!(o.try_connection(ip("10.0.0.3")).is_some());
        let v6 = o.try_connection(ip("2001:db8::1")).unwrap();
        drop(v6);
        assert_eq!(
            o.per_network.lock().len(),
            2,
            "empty networks are forgotten"
        );
    }
}
