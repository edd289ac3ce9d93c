//! Per-key activity on Redis: every replica appends the rows of the requests it served to
//! the account's stream, so the activity pages of any replica show the requests of all.
//!
//! # Keys and bounds
//! `<prefix>:{a:<account>}:activity` (stream): trimmed on every append to the newest
//! [`max_rows_per_account`] rows (`MAXLEN ~`) and to the retention (`MINID ~`), and
//! expiring with the retention after its last append (`PEXPIRE`), so an account whose
//! keys fall silent leaves nothing behind. Rows exist only for keys in the catalogue
//! (the tap skips requests without a known key).

use std::collections::{BTreeMap, BTreeSet};

use keyguard_policy::UnixMillis;

use super::RedisStore;
use crate::admin::activity::{Filter, Retention, Row};

/// Rows read per round trip while a query filters its way back through a stream.
const CHUNK: usize = 500;
/// Most rows one query reads (pages, aggregates): a page view costs a bounded amount of
/// Redis work however busy the account is.
const MAX_SCANNED: usize = 20_000;

/// The most rows one account's stream keeps: the embedded table's limit, at most 100 000
/// (the table's limit is for all accounts together; this one is per account).
pub fn max_rows_per_account(retention: Retention) -> u64 {
    retention.max_rows.min(100_000)
}

/// A stream id (`ms-seq`) as the row id (pagination cursor): the milliseconds shifted
/// past a 20-bit sequence, so ids order as the stream does.
fn row_id(stream_id: &str) -> Option<i64> {
    let (ms, seq) = stream_id.split_once('-')?;
    let (ms, seq): (i64, i64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some((ms << 20) | seq.min((1 << 20) - 1))
}

/// The stream id a row id stands for (inverse of [`row_id`]).
fn stream_id(row_id: i64) -> String {
    format!("{}-{}", row_id >> 20, row_id & ((1 << 20) - 1))
}

type Entry = (String, Vec<(String, String)>);

fn to_row(account: &str, (id, fields): Entry) -> Option<Row> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    let opt = |k: &str| get(k).filter(|v| !v.is_empty());
    Some(Row {
        id: row_id(&id)?,
        ts: get("ts")?.parse().ok()?,
        key_id: get("key")?,
        account: account.to_owned(),
        client_ip: get("ip")?,
        action: opt("action"),
        decision: get("decision")?,
        code: opt("code"),
        status: get("status")?.parse().ok()?,
        request_id: get("rid").unwrap_or_default(),
    })
}

/// The commands appending `rows` to the stream `key`: one XADD each (capped by length),
/// then the age bound (XADD takes one trimming strategy) and the expiry, once.
fn append_to(
    p: &mut redis::Pipeline,
    key: &str,
    rows: &[&Row],
    cap: u64,
    min_id: UnixMillis,
    retention: Retention,
) {
    for r in rows {
        p.cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(cap)
            .arg("*")
            .arg("ts")
            .arg(r.ts)
            .arg("key")
            .arg(&r.key_id)
            .arg("ip")
            .arg(&r.client_ip)
            .arg("action")
            .arg(r.action.as_deref().unwrap_or(""))
            .arg("decision")
            .arg(&r.decision)
            .arg("code")
            .arg(r.code.as_deref().unwrap_or(""))
            .arg("status")
            .arg(r.status)
            .arg("rid")
            .arg(&r.request_id)
            .ignore();
    }
    p.cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg("~")
        .arg(min_id)
        .ignore();
    p.cmd("PEXPIRE").arg(key).arg(retention.max_age_ms).ignore();
}

impl RedisStore {
    fn activity_key(&self, account: &str) -> String {
        format!("{}:activity", self.account_base(account))
    }

    /// Appends `rows` to their accounts' streams, trimming each stream and renewing its
    /// expiry: one pipeline on one node; in a cluster one pipeline per account, sent at
    /// once (a pipeline must stay in one slot there: redis-rs routes it by its first key,
    /// and the other accounts' commands would bounce between nodes as MOVED).
    pub async fn append_activity(
        &self,
        rows: &[Row],
        retention: Retention,
        now: UnixMillis,
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let cap = max_rows_per_account(retention);
        let min_id = now.saturating_sub(retention.max_age_ms);
        let mut by_account: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
        for r in rows {
            by_account
                .entry(self.activity_key(&r.account))
                .or_default()
                .push(r);
        }
        let pipes: Vec<redis::Pipeline> = if self.is_cluster() {
            by_account
                .iter()
                .map(|(key, rows)| {
                    let mut p = redis::pipe();
                    append_to(&mut p, key, rows, cap, min_id, retention);
                    p
                })
                .collect()
        } else {
            let mut p = redis::pipe();
            for (key, rows) in &by_account {
                append_to(&mut p, key, rows, cap, min_id, retention);
            }
            vec![p]
        };
        let c = self.conn().await?;
        let sent = futures_util::future::join_all(pipes.iter().map(|p| {
            let mut c = c.clone();
            async move { self.deadline(p.query_async::<()>(&mut c)).await }
        }))
        .await;
        for r in sent {
            r?;
        }
        Ok(())
    }

    /// Reads `account`'s stream newest first, from before `before` (a row id) back to
    /// `since` (ms), in chunks, handing each row to `keep` until it returns false or
    /// [`MAX_SCANNED`] rows were read.
    async fn scan_activity(
        &self,
        account: &str,
        before: Option<i64>,
        since: UnixMillis,
        mut keep: impl FnMut(Row) -> bool,
    ) -> anyhow::Result<()> {
        let key = self.activity_key(account);
        let mut end = match before {
            Some(b) => format!("({}", stream_id(b)),
            None => "+".to_owned(),
        };
        let mut scanned = 0;
        while scanned < MAX_SCANNED {
            let chunk: Vec<Entry> = self
                .query(
                    redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg(&end)
                        .arg(since)
                        .arg("COUNT")
                        .arg(CHUNK),
                )
                .await?;
            let n = chunk.len();
            let Some(last) = chunk.last().map(|(id, _)| id.clone()) else {
                return Ok(());
            };
            scanned += n;
            for e in chunk {
                if let Some(row) = to_row(account, e) {
                    if !keep(row) {
                        return Ok(());
                    }
                }
            }
            if n < CHUNK {
                return Ok(());
            }
            end = format!("({last}");
        }
        Ok(())
    }

    /// Up to `limit` rows of `account`, newest first ([`crate::admin::activity::query`]
    /// on Redis; the account is required: each account has its own stream).
    pub async fn activity_query(
        &self,
        account: &str,
        f: &Filter<'_>,
        limit: usize,
    ) -> anyhow::Result<Vec<Row>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.scan_activity(account, f.before, 0, |r| {
            if f.key_id.is_none_or(|k| r.key_id == k) && f.decision.is_none_or(|d| r.decision == d)
            {
                out.push(r);
            }
            out.len() < limit
        })
        .await?;
        Ok(out)
    }

    /// Client IPs a key (or any key of `account`) was refused from for not being allowed
    /// there, since `since`: (key, ip, how many times, last time), most recent first, at
    /// most 20 ([`crate::admin::activity::foreign_attempts`] on Redis).
    pub async fn activity_foreign_attempts(
        &self,
        key_id: Option<&str>,
        account: &str,
        since: UnixMillis,
    ) -> anyhow::Result<Vec<(String, String, u64, UnixMillis)>> {
        let mut seen: BTreeMap<(String, String), (u64, UnixMillis)> = BTreeMap::new();
        self.scan_activity(account, None, since, |r| {
            let foreign = matches!(
                r.code.as_deref(),
                Some("ip_not_allowed" | "new_ip_probation")
            );
            if foreign && key_id.is_none_or(|k| r.key_id == k) && r.ts >= since {
                let e = seen.entry((r.key_id, r.client_ip)).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(r.ts);
            }
            true
        })
        .await?;
        let mut out: Vec<(String, String, u64, UnixMillis)> = seen
            .into_iter()
            .map(|((k, ip), (n, last))| (k, ip, n, last))
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.3));
        out.truncate(20);
        Ok(out)
    }

    /// The distinct client IPs whose requests with `key_id` (of `account`) were allowed
    /// since `since`, sorted, at most 64 ([`crate::admin::activity::allowed_ips`]).
    pub async fn activity_allowed_ips(
        &self,
        account: &str,
        key_id: &str,
        since: UnixMillis,
    ) -> anyhow::Result<Vec<String>> {
        let mut ips = BTreeSet::new();
        self.scan_activity(account, None, since, |r| {
            if r.key_id == key_id && r.decision == "allow" && r.ts >= since {
                ips.insert(r.client_ip);
            }
            true
        })
        .await?;
        Ok(ips.into_iter().take(64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_keep_the_stream_order_and_round_trip() {
        let a = row_id("1796000000000-0").unwrap();
        let b = row_id("1796000000000-7").unwrap();
        let c = row_id("1796000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(stream_id(b), "1796000000000-7");
        assert_eq!(row_id("garbage"), None);
    }
}
