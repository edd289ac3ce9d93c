//! Single sign-on for exchanges that already have a login: the exchange signs a short JWT
//! naming the account (`sub`) and sends the user to `GET /sso?token=…`; Keyguard verifies
//! it against the configured public key and opens a full session, without a password.
//!
//! Accepted only with the configured `aud` (and `iss`, when set), an `exp` at most five
//! minutes ahead and at most five minutes after `iat`, and a `jti` never seen before (kept
//! until the token would have expired anyway). The account must exist and be enabled.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keyguard_config::SsoConfig;
use keyguard_policy::UnixMillis;
use rusqlite::{params, Connection};

use crate::store::redis::RedisStore;

/// The longest lifetime of an SSO token.
const MAX_LIFETIME_S: u64 = 300;

/// A configured SSO verifier.
pub struct Sso {
    key: DecodingKey,
    validation: Validation,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: Option<u64>,
    jti: String,
}

impl Sso {
    /// Loads the exchange's public key.
    pub fn load(cfg: &SsoConfig) -> anyhow::Result<Sso> {
        use anyhow::Context;
        let pem = std::fs::read(&cfg.public_key_file).with_context(|| {
            format!(
                "admin.sso.public_key_file: reading {}",
                cfg.public_key_file.display()
            )
        })?;
        let (alg, key) = match cfg.algorithm.as_str() {
            "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
            "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
            "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
            other => anyhow::bail!("admin.sso.algorithm: unknown {other:?}"),
        };
        let key = key.with_context(|| {
            format!(
                "admin.sso.public_key_file: {} is not a {} public key (PEM)",
                cfg.public_key_file.display(),
                cfg.algorithm
            )
        })?;
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Sso { key, validation })
    }

    /// The account a valid, unused token names; the token's `jti` is spent by this call.
    pub fn verify(&self, conn: &Connection, token: &str, now: UnixMillis) -> Option<String> {
        let claims = self.valid_claims(token, now)?;
        let now_s = now / 1000;
        let _ = conn.execute("DELETE FROM sso_jti WHERE exp < ?1", [now_s as i64]);
        let fresh = conn
            .execute(
                "INSERT OR IGNORE INTO sso_jti (jti, exp) VALUES (?1, ?2)",
                params![claims.jti, claims.exp as i64],
            )
            .ok()?;
        (fresh == 1).then_some(claims.sub)
    }

    /// [`Sso::verify`] with the spent `jti`s in Redis (`SET NX PX` until the token would
    /// have expired), so a token used on one replica is refused on every other.
    pub async fn verify_on(
        &self,
        r: &RedisStore,
        token: &str,
        now: UnixMillis,
    ) -> anyhow::Result<Option<String>> {
        let Some(claims) = self.valid_claims(token, now) else {
            return Ok(None);
        };
        let fresh = r
            .spend_jti(&claims.jti, claims.exp.saturating_mul(1000), now)
            .await?;
        Ok(fresh.then_some(claims.sub))
    }

    /// The claims of a token that passes every check but the single-use one.
    fn valid_claims(&self, token: &str, now: UnixMillis) -> Option<Claims> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .ok()?
            .claims;
        let now_s = now / 1000;
        if claims.exp > now_s + MAX_LIFETIME_S {
            return None;
        }
        if claims
            .iat
            .is_some_and(|iat| claims.exp.saturating_sub(iat) > MAX_LIFETIME_S || iat > now_s + 5)
        {
            return None;
        }
        if claims.jti.is_empty() || claims.jti.len() > 128 {
            return None;
        }
        Some(claims)
    }
}
