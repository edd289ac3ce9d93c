//! The verdict: what actually reached the exchange, from the mock exchange's ledger.
//!
//! Every ledger line is matched back to the one generated request it executed, by the
//! request's fingerprint (SHA-256 of method, path, query and body: each signed request
//! of Zaif, Binance and Kraken carries a per-key unique nonce or timestamp there, so the
//! fingerprint is unique), and cross-checked with the `X-Request-Id` the gateway
//! answered (the assertion's `jti`, which the ledger records). Coincheck sends its nonce
//! in a header the gateway strips, so its bodiless requests share fingerprints: among
//! requests with the same fingerprint, the line belongs to the one the gateway answered
//! with the line's request id. Nothing here assumes which gateway rule stopped what: a
//! request reached the exchange if and only if its ledger line exists.

use std::collections::{BTreeMap, HashMap};

use keyguard_policy::Action;
use serde::{Deserialize, Serialize};

use crate::ledger::LedgerEntry;
use crate::runner::{Sent, Tag};
use crate::workload::{fingerprint, KeyMaterial};

/// What reached the exchange, and whether that is acceptable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Ledger lines written during the run.
    pub ledger_lines: u64,
    /// Legitimate requests sent.
    pub legit_sent: u64,
    /// Legitimate requests the exchange executed (public ones: answered 2xx).
    pub legit_served: u64,
    /// Legitimate requests that did not reach the exchange: **must be 0**.
    pub legit_refused: u64,
    /// Why the refused legitimate requests were refused (deny code or status).
    pub legit_refused_reasons: BTreeMap<String, u64>,
    /// Attack requests sent.
    pub attack_sent: u64,
    /// Attack requests that moved funds at the exchange (orders and withdrawals):
    /// **must be 0**.
    pub attack_funds_reached: u64,
    /// Attack orders executed.
    pub attack_orders_reached: u64,
    /// Attack withdrawals executed.
    pub attack_withdrawals_reached: u64,
    /// Attack reads executed (a leaked key reading balances: reported, not a failure,
    /// since a key without an allowlist may read from a new IP by design).
    pub attack_reads_reached: u64,
    /// Attack requests executed, by the actor's role.
    pub attack_reached_by_role: BTreeMap<String, u64>,
    /// Ledger lines that match no generated request (another client, or a changed
    /// body): should be 0.
    pub unmatched_ledger_lines: u64,
    /// Requests executed more than once (a replay got through): must be 0.
    pub executed_twice: u64,
    /// Lines whose asserted key or client IP differs from what was sent: must be 0.
    pub identity_mismatches: u64,
    /// Lines whose `jti` differs from the request id the client was answered with.
    pub request_id_mismatches: u64,
    /// The `canary` scenario's own judgement ([`judge_canary`]); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryVerdict>,
    /// No attack order or withdrawal reached the exchange, no legitimate request was
    /// refused, and the ledger is consistent. In the `canary` scenario the first
    /// condition is [`CanaryVerdict::pass`] instead: none after the network's first
    /// canary use.
    pub pass: bool,
}

/// What a leaked key set with canaries in it bought the attacker, per network, split at
/// the moment the network first used a canary (when its answer came back: the gateway
/// blocks the network before answering, and each attack client sends one request at a
/// time, so everything it sent later was sent into the block).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryVerdict {
    /// Attack requests signed with a canary key.
    pub canary_requests: u64,
    /// How the gateway answered them (deny code or status): `ip_not_allowed` for a
    /// canary's use, `ip_blocked` once its network is blocked, nothing that gives it away.
    pub canary_replies: BTreeMap<String, u64>,
    /// Canary requests the exchange executed: **must be 0**.
    pub canary_executed: u64,
    /// Attacker networks, and of them those that used a canary (answered
    /// `ip_not_allowed`), with the run time (ms) of that first use.
    pub attacker_networks: u64,
    /// Networks that used a canary, with when (ms after the start).
    pub tripped_at_ms: BTreeMap<String, u64>,
    /// Real keys' orders and withdrawals the exchange executed for a network before its
    /// first canary use (or from a network that never used one): what the leak cost
    /// before a canary was touched.
    pub funds_before: u64,
    /// Real keys' orders and withdrawals executed for a network sent after its first
    /// canary use: **must be 0**.
    pub funds_after: u64,
    /// Real keys' reads executed after the network's canary use (blocked like the rest).
    pub reads_after: u64,
    /// At least one network used a canary, none executed, and nothing moved funds after.
    pub pass: bool,
}

/// How often each generated request was executed, by the ledger (see the module docs):
/// the count per request, the request each matched ledger line executed, and the number
/// of lines that match no request.
fn executions(sent: &[Sent], ledger: &[LedgerEntry]) -> (Vec<u32>, HashMap<usize, usize>, u64) {
    let mut by_fingerprint: HashMap<[u8; 16], Vec<usize>> = HashMap::with_capacity(sent.len());
    for (i, s) in sent.iter().enumerate() {
        if s.action != Action::Public {
            by_fingerprint.entry(s.fingerprint).or_default().push(i);
        }
    }
    let mut counts = vec![0u32; sent.len()];
    let mut line_of = HashMap::new();
    let mut unmatched = 0;
    for (l, entry) in ledger.iter().enumerate() {
        let fp = fingerprint(
            &entry.method,
            &entry.path,
            &entry.query,
            entry.body.as_bytes(),
        );
        let matched = match by_fingerprint.get(&fp).map(Vec::as_slice) {
            Some(&[i]) => Some(i),
            Some(many) => many
                .iter()
                .copied()
                .find(|&i| sent[i].outcome.request_id.as_deref() == Some(&entry.request_id)),
            None => None,
        };
        match matched {
            Some(i) => {
                counts[i] += 1;
                line_of.insert(l, i);
            }
            None => unmatched += 1,
        }
    }
    (counts, line_of, unmatched)
}

/// Judges the `canary` scenario: `canaries` are the indices of the canary keys. Updates
/// `v.canary` and `v.pass` (the general "no attack order or withdrawal" condition is
/// replaced by "none after the network's first canary use").
pub fn judge_canary(v: &mut Verdict, sent: &[Sent], ledger: &[LedgerEntry], canaries: &[usize]) {
    let (executed, _, _) = executions(sent, ledger);
    let is_canary = |s: &Sent| s.key.is_some_and(|k| canaries.contains(&k));
    let mut c = CanaryVerdict::default();
    let mut networks = std::collections::BTreeSet::new();
    let mut tripped: BTreeMap<String, u64> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.tag == Tag::Attack) {
        networks.insert(s.source.to_string());
        if !is_canary(s) {
            continue;
        }
        c.canary_requests += 1;
        *c.canary_replies.entry(reason(s)).or_default() += 1;
        if s.valid_signature && s.outcome.code.as_deref() == Some("ip_not_allowed") {
            let at = tripped.entry(s.source.to_string()).or_insert(u64::MAX);
            *at = (*at).min(s.answered_at_us);
        }
    }
    for (s, &n) in sent.iter().zip(&executed) {
        if s.tag != Tag::Attack || n == 0 {
            continue;
        }
        if is_canary(s) {
            c.canary_executed += 1;
            continue;
        }
        let after = tripped
            .get(&s.source.to_string())
            .is_some_and(|&at| s.sent_at_us >= at);
        match (s.action, after) {
            (Action::Trade | Action::Withdraw, false) => c.funds_before += 1,
            (Action::Trade | Action::Withdraw, true) => c.funds_after += 1,
            (Action::Read, true) => c.reads_after += 1,
            _ => {}
        }
    }
    c.attacker_networks = networks.len() as u64;
    c.tripped_at_ms = tripped.into_iter().map(|(n, us)| (n, us / 1000)).collect();
    c.pass = !c.tripped_at_ms.is_empty() && c.canary_executed == 0 && c.funds_after == 0;
    v.pass = c.pass
        && v.legit_refused == 0
        && v.executed_twice == 0
        && v.identity_mismatches == 0
        && v.unmatched_ledger_lines == 0;
    v.canary = Some(c);
}

/// Matches `ledger` (this run's lines) to `sent` and judges.
pub fn judge(
    sent: &[Sent],
    keys: &[std::sync::Arc<KeyMaterial>],
    ledger: &[LedgerEntry],
) -> Verdict {
    let (executions, line_of, unmatched) = executions(sent, ledger);
    let mut v = Verdict {
        ledger_lines: ledger.len() as u64,
        unmatched_ledger_lines: unmatched,
        ..Verdict::default()
    };
    for (l, entry) in ledger.iter().enumerate() {
        let Some(&i) = line_of.get(&l) else {
            continue;
        };
        let s = &sent[i];
        let key_id = s.key.and_then(|k| keys.get(k)).map(|k| k.key_id.as_str());
        let ip_matches = s.source.is_unspecified() || entry.client_ip == s.source.to_string();
        if key_id != Some(entry.key_id.as_str()) || !ip_matches {
            v.identity_mismatches += 1;
        }
        if let Some(rid) = &s.outcome.request_id {
            if *rid != entry.request_id {
                v.request_id_mismatches += 1;
            }
        }
    }
    for (s, &n) in sent.iter().zip(&executions) {
        if n > 1 {
            v.executed_twice += u64::from(n - 1);
        }
        let reached = if s.action == Action::Public {
            s.outcome.status.is_some_and(|st| (200..300).contains(&st))
        } else {
            n > 0
        };
        match s.tag {
            Tag::Legit => {
                v.legit_sent += 1;
                if reached {
                    v.legit_served += 1;
                } else {
                    v.legit_refused += 1;
                    *v.legit_refused_reasons.entry(reason(s)).or_default() += 1;
                }
            }
            Tag::Attack => {
                v.attack_sent += 1;
                if reached && s.action != Action::Public {
                    *v.attack_reached_by_role
                        .entry(s.role.to_owned())
                        .or_default() += 1;
                    match s.action {
                        Action::Trade => v.attack_orders_reached += 1,
                        Action::Withdraw => v.attack_withdrawals_reached += 1,
                        Action::Read => v.attack_reads_reached += 1,
                        Action::Public => {}
                    }
                }
            }
        }
    }
    v.attack_funds_reached = v.attack_orders_reached + v.attack_withdrawals_reached;
    v.pass = v.attack_funds_reached == 0
        && v.legit_refused == 0
        && v.executed_twice == 0
        && v.identity_mismatches == 0
        && v.unmatched_ledger_lines == 0;
    v
}

/// Why a request did not reach the exchange, as the client saw it.
fn reason(s: &Sent) -> String {
    match (&s.outcome.code, s.outcome.status, s.outcome.error) {
        (Some(code), _, _) => code.clone(),
        (None, Some(status), _) => format!("status {status}"),
        (None, None, Some(e)) => format!("no response ({e})"),
        (None, None, None) => "no response".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::*;
    use crate::client::Outcome;

    fn keys() -> Vec<Arc<KeyMaterial>> {
        (0..2)
            .map(|i| {
                Arc::new(KeyMaterial::new(
                    i,
                    format!("kg_{i}"),
                    format!("api{i}"),
                    "s".into(),
                    format!("acct{i}"),
                ))
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn sent(
        tag: Tag,
        action: Action,
        key: usize,
        ip: &str,
        body: &str,
        status: u16,
        code: Option<&str>,
        rid: &str,
    ) -> Sent {
        Sent {
            tag,
            role: if tag == Tag::Legit {
                "trader"
            } else {
                "attacker"
            },
            action,
            key: Some(key),
            valid_signature: true,
            source: ip.parse::<IpAddr>().expect("ip"),
            fingerprint: fingerprint("POST", "/tapi", "", body.as_bytes()),
            outcome: Outcome {
                status: Some(status),
                code: code.map(str::to_owned),
                request_id: Some(rid.to_owned()),
                error: None,
            },
            latency_us: 100,
            sent_at_us: 0,
            answered_at_us: 0,
        }
    }

    fn line(key: usize, ip: &str, body: &str, rid: &str, action: &str) -> LedgerEntry {
        LedgerEntry {
            ts: 1,
            method: "POST".into(),
            path: "/tapi".into(),
            query: String::new(),
            body: body.into(),
            account: format!("acct{key}"),
            key_id: format!("kg_{key}"),
            action: action.into(),
            client_ip: ip.into(),
            request_id: rid.into(),
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let sent = vec![
            sent(
                Tag::Legit,
                Action::Read,
                0,
                "127.0.0.2",
                "method=get_info2&nonce=1",
                200,
                None,
                "r1",
            ),
            sent(
                Tag::Legit,
                Action::Trade,
                0,
                "127.0.0.2",
                "method=trade&nonce=2",
                200,
                None,
                "r2",
            ),
            sent(
                Tag::Attack,
                Action::Withdraw,
                1,
                "127.0.66.1",
                "method=withdraw&nonce=3",
                403,
                Some("ip_not_allowed"),
                "r3",
            ),
        ];
        let ledger = vec![
            line(0, "127.0.0.2", "method=get_info2&nonce=1", "r1", "read"),
            line(0, "127.0.0.2", "method=trade&nonce=2", "r2", "trade"),
        ];
        let v = judge(&sent, &keys(), &ledger);
        assert!(v.pass, "{v:?}");
        assert_eq!((v.legit_sent, v.legit_served, v.legit_refused), (2, 2, 0));
        assert_eq!((v.attack_sent, v.attack_funds_reached), (1, 0));
        assert_eq!(v.ledger_lines, 2);
    }

    #[test]
    fn attack_orders_and_refused_legit_requests_fail_the_verdict() {
        let sent = vec![
            sent(
                Tag::Legit,
                Action::Read,
                0,
                "127.0.0.2",
                "b1",
                429,
                Some("rate_limited"),
                "r1",
            ),
            sent(
                Tag::Attack,
                Action::Trade,
                1,
                "127.0.66.1",
                "b2",
                200,
                None,
                "r2",
            ),
            sent(
                Tag::Attack,
                Action::Read,
                1,
                "127.0.66.1",
                "b3",
                200,
                None,
                "r3",
            ),
        ];
        let ledger = vec![
            line(1, "127.0.66.1", "b2", "r2", "trade"),
            line(1, "127.0.66.1", "b3", "r3", "read"),
        ];
        let v = judge(&sent, &keys(), &ledger);
        assert!(!v.pass);
        assert_eq!(v.legit_refused, 1);
        assert_eq!(v.legit_refused_reasons.get("rate_limited"), Some(&1));
        assert_eq!(v.attack_orders_reached, 1);
        assert_eq!(v.attack_reads_reached, 1);
        assert_eq!(v.attack_funds_reached, 1);
        assert_eq!(v.attack_reached_by_role.get("attacker"), Some(&2));
    }

    #[test]
    fn identical_bodies_are_told_apart_by_request_id() {
        // Coincheck reads: nonce in a header, so method, path, query and body repeat.
        let sent = vec![
            sent(
                Tag::Legit,
                Action::Read,
                0,
                "127.0.0.2",
                "",
                200,
                None,
                "r1",
            ),
            sent(
                Tag::Attack,
                Action::Read,
                1,
                "127.0.66.1",
                "",
                403,
                Some("ip_blocked"),
                "r2",
            ),
            sent(
                Tag::Legit,
                Action::Read,
                0,
                "127.0.0.2",
                "",
                200,
                None,
                "r3",
            ),
        ];
        let ledger = vec![
            line(0, "127.0.0.2", "", "r1", "read"),
            line(0, "127.0.0.2", "", "r3", "read"),
        ];
        let v = judge(&sent, &keys(), &ledger);
        assert!(v.pass, "{v:?}");
        assert_eq!((v.legit_served, v.attack_reads_reached), (2, 0));
        // A line no answered request id explains is unmatched, not someone's success.
        let v = judge(&sent, &keys(), &[line(1, "127.0.66.1", "", "r9", "read")]);
        assert_eq!(v.unmatched_ledger_lines, 1);
        assert!(!v.pass);
    }

    fn timed(mut s: Sent, sent_at_ms: u64, answered_at_ms: u64) -> Sent {
        s.sent_at_us = sent_at_ms * 1000;
        s.answered_at_us = answered_at_ms * 1000;
        s
    }

    #[test]
    fn canary_verdict_splits_each_network_at_its_first_canary_use() {
        // Key 1 is the canary, key 0 a real key; networks .1 and .2 attack, .3 never
        // touches the canary.
        let canaries = [1];
        let a = |action, key, ip, body: &str, status, code, rid| {
            sent(Tag::Attack, action, key, ip, body, status, code, rid)
        };
        let sent = vec![
            timed(
                a(Action::Trade, 0, "127.0.66.1", "t1", 200, None, "r1"),
                0,
                1,
            ),
            timed(
                a(
                    Action::Trade,
                    1,
                    "127.0.66.1",
                    "c1",
                    403,
                    Some("ip_not_allowed"),
                    "r2",
                ),
                2,
                3,
            ),
            timed(
                a(
                    Action::Trade,
                    0,
                    "127.0.66.1",
                    "t2",
                    403,
                    Some("ip_blocked"),
                    "r3",
                ),
                4,
                5,
            ),
            timed(
                a(
                    Action::Read,
                    1,
                    "127.0.66.2",
                    "c2",
                    403,
                    Some("ip_not_allowed"),
                    "r4",
                ),
                10,
                11,
            ),
            timed(
                a(Action::Trade, 0, "127.0.66.3", "t3", 200, None, "r5"),
                12,
                13,
            ),
        ];
        let ledger = vec![
            line(0, "127.0.66.1", "t1", "r1", "trade"),
            line(0, "127.0.66.3", "t3", "r5", "trade"),
        ];
        let mut v = judge(&sent, &keys(), &ledger);
        assert!(!v.pass, "the general rule fails: attack orders executed");
        judge_canary(&mut v, &sent, &ledger, &canaries);
        let c = v.canary.clone().unwrap();
        assert_eq!(c.attacker_networks, 3);
        assert_eq!(
            c.tripped_at_ms.keys().collect::<Vec<_>>(),
            ["127.0.66.1", "127.0.66.2"]
        );
        assert_eq!(c.tripped_at_ms["127.0.66.1"], 3);
        assert_eq!((c.canary_requests, c.canary_executed), (2, 0));
        assert_eq!(c.canary_replies.get("ip_not_allowed"), Some(&2));
        assert_eq!((c.funds_before, c.funds_after), (2, 0));
        assert!(c.pass && v.pass, "{c:?}");

        // An order executed for a tripped network after its canary use fails it.
        let mut late = sent.clone();
        late[2] = timed(
            a(Action::Trade, 0, "127.0.66.1", "t2", 200, None, "r3"),
            4,
            5,
        );
        let ledger = vec![
            line(0, "127.0.66.1", "t1", "r1", "trade"),
            line(0, "127.0.66.1", "t2", "r3", "trade"),
        ];
        let mut v = judge(&late, &keys(), &ledger);
        judge_canary(&mut v, &late, &ledger, &canaries);
        assert_eq!(v.canary.as_ref().unwrap().funds_after, 1);
        assert!(!v.pass);

        // No network touching a canary proves nothing: not a pass.
        let untouched = vec![timed(
            a(Action::Read, 0, "127.0.66.1", "x", 200, None, "r1"),
            0,
            1,
        )];
        let mut v = judge(&untouched, &keys(), &[]);
        judge_canary(&mut v, &untouched, &[], &canaries);
        assert!(!v.pass);
    }

    #[test]
    fn a_request_answered_with_an_error_but_executed_counts_as_reached() {
        // The exchange executed it, the client saw a 504: it reached the exchange.
        let sent = vec![sent(
            Tag::Attack,
            Action::Withdraw,
            1,
            "127.0.66.1",
            "w",
            504,
            Some("upstream_timeout"),
            "r1",
        )];
        let v = judge(
            &sent,
            &keys(),
            &[line(1, "127.0.66.1", "w", "r1", "withdraw")],
        );
        assert_eq!(v.attack_withdrawals_reached, 1);
        assert!(!v.pass);
    }

    #[test]
    fn inconsistencies_are_counted() {
        let sent = vec![sent(
            Tag::Legit,
            Action::Read,
            0,
            "127.0.0.2",
            "b1",
            200,
            None,
            "r1",
        )];
        let ledger = vec![
            // Executed twice.
            line(0, "127.0.0.2", "b1", "r1", "read"),
            line(0, "127.0.0.2", "b1", "r9", "read"),
            // Wrong key asserted for a body we sent: identity mismatch.
            LedgerEntry {
                key_id: "kg_1".into(),
                ..line(0, "127.0.0.2", "b1", "r1", "read")
            },
            // Nobody sent this.
            line(0, "127.0.0.2", "other", "r5", "read"),
        ];
        let v = judge(&sent, &keys(), &ledger);
        assert_eq!(v.executed_twice, 2);
        assert_eq!(v.identity_mismatches, 1);
        assert_eq!(v.request_id_mismatches, 1);
        assert_eq!(v.unmatched_ledger_lines, 1);
        assert!(!v.pass);
    }

    #[test]
    fn public_requests_are_judged_by_status() {
        let mut public = sent(
            Tag::Legit,
            Action::Public,
            0,
            "127.0.0.2",
            "",
            200,
            None,
            "r1",
        );
        public.key = None;
        let mut failed = public.clone();
        failed.outcome = Outcome {
            error: Some("timeout"),
            ..Outcome::default()
        };
        let v = judge(&[public, failed], &keys(), &[]);
        assert_eq!((v.legit_served, v.legit_refused), (1, 1));
        assert_eq!(
            v.legit_refused_reasons.get("no response (timeout)"),
            Some(&1)
        );
    }
}
