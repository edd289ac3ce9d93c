//! A browser-like client for the admin listener (a cookie jar, same-origin headers on
//! POSTs, the login form's token), TOTP codes, SSO tokens signed as an exchange would,
//! and `keyguard accounts …` with the password on stdin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Env, BIN};

/// One response.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The cookies it sets, by name.
    pub fn cookies(&self) -> HashMap<String, String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| {
                v.split(';')
                    .next()?
                    .split_once('=')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
            })
            .collect()
    }

    /// The value of the form field `name`.
    #[track_caller]
    pub fn field(&self, name: &str) -> String {
        let needle = format!("name=\"{name}\" value=\"");
        let i = self
            .body
            .find(&needle)
            .unwrap_or_else(|| panic!("no {name} field in {}", self.body))
            + needle.len();
        self.body[i..].split('"').next().unwrap().to_owned()
    }

    pub fn location(&self) -> &str {
        self.header("location").unwrap_or("")
    }
}

/// A browser-like client of one admin listener; its jar can be moved to another.
pub struct Client {
    pub addr: SocketAddr,
    pub jar: HashMap<String, String>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            jar: HashMap::new(),
        }
    }

    /// The same cookies, sent to another listener (another replica).
    pub fn at(&self, addr: SocketAddr) -> Client {
        Client {
            addr,
            jar: self.jar.clone(),
        }
    }

    pub async fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Page {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        let c: Vec<String> = self
            .jar
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !c.is_empty() {
            req.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| {
                l.split_once(": ")
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
            })
            .collect();
        let page = Page {
            status,
            headers,
            body: body.to_owned(),
        };
        for (k, v) in page.cookies() {
            self.jar.insert(k, v);
        }
        page
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.raw("GET", path, "", &[]).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = format!("http://{}", self.addr);
        self.raw(
            "POST",
            path,
            &super::form(form),
            &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        )
        .await
    }

    /// The password step of a login.
    pub async fn login(&mut self, name: &str, password: &str) -> Page {
        let form = self.get("/login").await;
        let token = form.field("token");
        self.post(
            "/login",
            &[("name", name), ("password", password), ("token", &token)],
        )
        .await
    }

    /// The code step of a login (after [`Client::login`] asked for one).
    pub async fn code(&mut self, code: &str) -> Page {
        let form = self.get("/login/code").await;
        let csrf = form.field("csrf");
        self.post("/login/code", &[("csrf", &csrf), ("code", code)])
            .await
    }

    /// A JSON admin API call with a bearer token: status and body.
    pub async fn api(&mut self, method: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {token}");
        let p = self
            .raw(method, path, "", &[("Authorization", &auth)])
            .await;
        let v = serde_json::from_str(&p.body).unwrap_or(serde_json::Value::Null);
        (p.status, v)
    }
}

/// The TOTP code of `secret` (base32) at `at_secs`.
pub fn totp_code(secret: &str, at_secs: u64) -> String {
    let secret = totp_rs::Secret::Encoded(secret.replace(' ', ""))
        .to_bytes()
        .unwrap();
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        None,
        "test".into(),
    )
    .unwrap()
    .generate(at_secs)
}

/// The `sid` claim of a session token (payload only; the server checks the signature).
pub fn sid(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["sid"].as_str().unwrap().to_owned()
}

/// `keyguard accounts SUB… NAME` with `password` on stdin; panics unless it succeeds.
#[track_caller]
pub fn account(env: &Env, sub: &[&str], name: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("accounts")
        .args(sub)
        .arg("--config")
        .arg(&env.config)
        .arg("--data-dir")
        .arg(&env.data)
        .arg(name)
        .env_remove("KEYGUARD_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "accounts {sub:?} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An Ed25519 key pair: (PKCS#8 DER for signing, SPKI PEM for the config).
pub fn ed25519() -> (Vec<u8>, String) {
    use base64::Engine;
    use ring::signature::KeyPair;
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut spki = hex::decode("302a300506032b6570032100").unwrap();
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(spki)
    );
    (pkcs8.as_ref().to_vec(), pem)
}

/// An SSO token signed by the exchange's key.
pub fn sso_token(pkcs8: &[u8], claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_ed_der(pkcs8);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &key,
    )
    .unwrap()
}

/// Enrols TOTP for the logged-in client; returns the secret, the step used and the
/// recovery codes.
pub async fn enrol(c: &mut Client) -> (String, u64, Vec<String>) {
    let page = c.get("/account/totp").await;
    assert_eq!(page.status, 200, "{page:?}");
    let secret = page
        .body
        .split("<code class=\"secret\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let csrf = page.field("csrf");
    let step = super::now_ms() / 1000 / 30;
    let p = c
        .post(
            "/account/totp",
            &[("csrf", &csrf), ("code", &totp_code(&secret, step * 30))],
        )
        .await;
    assert!(p.body.contains("recovery codes"), "{}", p.body);
    let codes = recovery_codes(&p);
    assert_eq!(codes.len(), 10, "{}", p.body);
    (secret, step, codes)
}

/// The `abcde-12345` codes on the recovery page.
pub fn recovery_codes(p: &Page) -> Vec<String> {
    p.body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| {
            w.len() == 11
                && w.as_bytes()[5] == b'-'
                && w.bytes()
                    .enumerate()
                    .all(|(i, b)| i == 5 || b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}
