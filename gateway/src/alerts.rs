//! Alerts: a JSON POST to the operator's webhook on key suspensions, freezes and anomaly
//! denials. Requests never wait for it: events go into a bounded queue (full queue → the
//! event is counted and logged, not awaited), and one task delivers them with retries
//! and exponential backoff. The same alert repeated within a minute (a banned IP that
//! keeps knocking) is coalesced into a count instead of flooding the webhook.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;

/// How long identical alerts are coalesced.
const COALESCE: Duration = Duration::from_secs(60);

/// One alert.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Alert {
    /// RFC 3339 time.
    pub ts: String,
    /// `key_suspended`, `withdrawals_frozen`, `anomaly_deny`, `ip_banned`, `canary_used`, ...
    pub event: String,
    /// The deny code or admin action behind it.
    pub code: String,
    /// Key id, when one is involved.
    pub key_id: Option<String>,
    /// Account, when known.
    pub account: Option<String>,
    /// Client IP, when one is involved.
    pub client_ip: Option<String>,
    /// Free text (who and why for operator actions).
    pub detail: String,
    /// The key's label, when it helps the operator tell which planted key it was
    /// (canary alerts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
    /// The request's method (canary alerts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request's path, without the query (canary alerts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Queues alerts for delivery.
#[derive(Clone)]
pub struct Alerts {
    tx: Option<mpsc::Sender<Alert>>,
    dropped: Arc<AtomicU64>,
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// The webhook (`http://...`); `None` disables alerts (they are still logged).
    pub url: Option<http::Uri>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Attempts after the first.
    pub max_retries: u32,
    /// Queue length.
    pub queue: usize,
}

impl Alerts {
    /// Starts the delivery task (when a webhook is configured).
    pub fn start(settings: AlertSettings) -> Alerts {
        let dropped = Arc::new(AtomicU64::new(0));
        let Some(url) = settings.url.clone() else {
            return Alerts { tx: None, dropped };
        };
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(deliver(rx, url, settings));
        Alerts {
            tx: Some(tx),
            dropped,
        }
    }

    /// Queues `alert` without waiting. Every alert is also logged, so a lost webhook
    /// delivery still leaves a trace.
    pub fn send(&self, alert: Alert) {
        tracing::warn!(event = %alert.event, code = %alert.code, key_id = ?alert.key_id, client_ip = ?alert.client_ip, detail = %alert.detail, "alert");
        if let Some(tx) = &self.tx {
            if tx.try_send(alert).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    dropped_total = n,
                    "alert queue full; webhook delivery skipped"
                );
            }
        }
    }
}

async fn deliver(mut rx: mpsc::Receiver<Alert>, url: http::Uri, settings: AlertSettings) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    // Coalesced per (event, code, key, account, client IP): a suspension and the deny
    // that caused it are different alerts, and so are lockouts of two accounts (which
    // name no key).
    type AlertId = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let mut recent: HashMap<AlertId, Instant> = HashMap::new();
    while let Some(alert) = rx.recv().await {
        let now = Instant::now();
        recent.retain(|_, at| now.duration_since(*at) < COALESCE);
        let id = (
            alert.event.clone(),
            alert.code.clone(),
            alert.key_id.clone(),
            alert.account.clone(),
            alert.client_ip.clone(),
        );
        if recent.contains_key(&id) {
            continue;
        }
        recent.insert(id, now);
        let body = match serde_json::to_vec(&alert) {
            Ok(b) => Bytes::from(b),
            Err(_) => continue,
        };
        let mut backoff = Duration::from_millis(200);
        for attempt in 0..=settings.max_retries {
            let req = http::Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "keyguard-alerts")
                .body(Full::new(body.clone()));
            let Ok(req) = req else { break };
            match tokio::time::timeout(settings.timeout, client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => break,
                outcome => {
                    let why = match outcome {
                        Ok(Ok(resp)) => format!("status {}", resp.status()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timeout".to_string(),
                    };
                    if attempt == settings.max_retries {
                        tracing::error!(%why, event = %alert.event, "alert delivery failed; giving up");
                    } else {
                        tracing::warn!(%why, attempt, "alert delivery failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A webhook that fails the first request and records the bodies it accepts.
    #[tokio::test]
    async fn retries_then_delivers_and_coalesces() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got_tx, mut got_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                n += 1;
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                // Read until the JSON body has arrived (ends with '}').
                loop {
                    let k = s.read(&mut buf[len..]).await.unwrap();
                    len += k;
                    if k == 0 || buf[..len].ends_with(b"}") {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                let status = if n == 1 {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
                if n > 1 {
                    got_tx.send(text).unwrap();
                }
            }
        });
        let alerts = Alerts::start(AlertSettings {
            url: Some(format!("http://{addr}/hook").parse().unwrap()),
            timeout: Duration::from_secs(2),
            max_retries: 3,
            queue: 16,
        });
        let alert = |ip: &str| Alert {
            ts: "t".into(),
            event: "anomaly_deny".into(),
            code: "ip_banned".into(),
            key_id: None,
            account: None,
            client_ip: Some(ip.into()),
            detail: String::new(),
            ..Alert::default()
        };
        alerts.send(alert("127.0.0.9"));
        alerts.send(alert("127.0.0.9"));
        alerts.send(alert("127.0.0.10"));
        let first = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(first.contains("\"client_ip\":\"127.0.0.9\""), "{first}");
        let second = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            second.contains("127.0.0.10"),
            "the repeat was coalesced: {second}"
        );
    }
}
