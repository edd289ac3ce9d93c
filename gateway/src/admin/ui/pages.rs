//! One template struct per page (askama checks `gateway/templates/*.html` against these
//! at compile time), and the time formatting the pages share. Every value is escaped by
//! the template; only the QR code's SVG, which we render ourselves, is inserted raw.

use askama::Template;
use keyguard_policy::UnixMillis;

use crate::accounts::Enrolment;

/// A key as a row of the list.
pub struct KeyView {
    pub key_id: String,
    pub label: String,
    pub scopes: String,
    pub allow_summary: String,
    pub open: bool,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub status: String,
    pub dormant: bool,
}

/// A withdrawal address with its cool-down.
pub struct AddrView {
    pub asset: String,
    pub asset_raw: String,
    pub address: String,
    pub usable: String,
}

/// A pending change.
pub struct PendingView {
    pub id: i64,
    pub description: String,
    pub effective: String,
    pub actor: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub message: String,
    pub account: Option<String>,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "sso.html")]
pub struct SsoPage {
    pub account: Option<String>,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub token: String,
    pub error: Option<String>,
    pub account: Option<String>,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "code.html")]
pub struct CodePage {
    pub csrf: String,
    pub error: Option<String>,
    pub account: Option<String>,
}

#[derive(Template)]
#[template(path = "keys.html")]
pub struct KeysPage {
    pub keys: Vec<KeyView>,
    pub account: Option<String>,
    pub csrf: String,
    pub totp: bool,
    pub notice: Option<String>,
}

#[derive(Template)]
#[template(path = "new_key.html")]
pub struct NewKeyPage {
    pub account: Option<String>,
    pub csrf: String,
    pub error: Option<String>,
    pub binance: bool,
    pub label: String,
    pub allow: String,
    pub read: bool,
    pub trade: bool,
    pub withdraw: bool,
    pub public_key: String,
}

#[derive(Template)]
#[template(path = "created.html")]
pub struct CreatedPage {
    pub account: Option<String>,
    pub csrf: String,
    pub key_id: String,
    pub api_key: String,
    pub secret: Option<String>,
}

#[derive(Template)]
#[template(path = "key.html")]
pub struct KeyPage {
    pub banners: Vec<String>,
    pub used_nets: Vec<String>,
    pub account: Option<String>,
    pub csrf: String,
    pub k: KeyView,
    pub allow: Vec<String>,
    pub addresses: Vec<AddrView>,
    pub pending: Vec<PendingView>,
    pub read: bool,
    pub trade: bool,
    pub withdraw: bool,
    pub totp: bool,
    pub notice: Option<String>,
    pub error: Option<String>,
    pub widen_wait: String,
    pub address_wait: String,
}

/// One activity row.
pub struct ActivityView {
    pub time: String,
    pub ago: String,
    pub key_id: String,
    pub client_ip: String,
    pub action: String,
    pub decision: String,
    pub denied: bool,
    pub code: String,
    pub explanation: String,
    pub request_id: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
pub struct ActivityPage {
    pub account: Option<String>,
    pub csrf: String,
    pub title: String,
    pub key_id: Option<String>,
    pub banners: Vec<String>,
    pub never_used: bool,
    pub decision: String,
    pub base: String,
    pub rows: Vec<ActivityView>,
    pub older: Option<String>,
}

#[derive(Template)]
#[template(path = "revoke.html")]
pub struct RevokePage {
    pub account: Option<String>,
    pub csrf: String,
    pub key_id: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "totp.html")]
pub struct TotpPage {
    pub account: Option<String>,
    pub csrf: String,
    pub qr_svg: String,
    pub secret: String,
    pub error: Option<String>,
}

impl TotpPage {
    pub fn new(
        account: Option<String>,
        csrf: String,
        e: &Enrolment,
        error: Option<String>,
    ) -> TotpPage {
        // Inline SVG: drop the XML prolog, which is only valid at the start of a document.
        let svg = match e.qr_svg.find("<svg") {
            Some(i) => e.qr_svg[i..].to_owned(),
            None => String::new(),
        };
        let secret = e
            .secret_base32
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        TotpPage {
            account,
            csrf,
            qr_svg: svg,
            secret,
            error,
        }
    }
}

#[derive(Template)]
#[template(path = "recovery.html")]
pub struct RecoveryPage {
    pub account: Option<String>,
    pub csrf: String,
    pub codes: Vec<String>,
}

/// `2026-12-01 21:40 UTC`.
pub fn date_text(ms: UnixMillis) -> String {
    let t = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    )
    .to_string();
    // 2026-12-01T21:40:05Z
    format!("{} {} UTC", &t[..10], &t[11..16])
}

/// `3 h 5 min`, `2 days`, `40 s`.
pub fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "no wait".into(),
        1..=119 => format!("{s} s"),
        120..=7_199 => format!("{} min", s / 60),
        7_200..=172_799 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h} h")
            } else {
                format!("{h} h {m} min")
            }
        }
        _ => format!("{} days", s / 86_400),
    }
}

/// `in 3 h 5 min` or `now`.
pub fn until_text(at: UnixMillis, now: UnixMillis) -> String {
    if at <= now {
        "now".into()
    } else {
        format!("in {}", duration_text(at - now))
    }
}

/// `5 min ago`.
pub fn ago_text(at: UnixMillis, now: UnixMillis) -> String {
    if now.saturating_sub(at) < 60_000 {
        "just now".into()
    } else {
        format!("{} ago", duration_text(now - at))
    }
}
