use super::*;
use crate::mock::testkit::{claims_for, TestSigner};

const NOW: u64 = 1_700_000_000;
const BODY: &[u8] = b"method=get_info&nonce=1700000000.12345678";

fn request() -> BoundRequest<'static> {
    BoundRequest {
        method: "POST",
        path: "/tapi",
        body: BODY,
    }
}

fn verifier(signer: &TestSigner) -> AssertionVerifier {
    AssertionVerifier::from_pem(signer.public_pem.as_bytes()).expect("public key parses")
}

#[test]
fn accepts_a_fresh_assertion_bound_to_the_request() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let token = signer.sign(&claims_for("POST", "/tapi", BODY, "read", "r-1", NOW));
    let claims = v.verify(&token, request(), NOW + 1).expect("valid");
    assert_eq!(claims.sub, "acct-1");
    assert_eq!(claims.kid, "k1");
    assert_eq!(claims.act, "read");
}

#[test]
fn refuses_a_token_signed_by_another_key() {
    let signer = TestSigner::generate();
    let other = TestSigner::generate();
    let v = verifier(&signer);
    let token = other.sign(&claims_for("POST", "/tapi", BODY, "read", "r-1", NOW));
    assert_eq!(
        v.verify(&token, request(), NOW),
        Err(AssertionError::BadSignature)
    );
}

#[test]
fn refuses_a_body_hash_for_another_body() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let token = signer.sign(&claims_for(
        "POST",
        "/tapi",
        b"method=withdraw&nonce=1",
        "read",
        "r-1",
        NOW,
    ));
    assert_eq!(
        v.verify(&token, request(), NOW),
        Err(AssertionError::BodyMismatch)
    );
}

#[test]
fn refuses_another_method_or_path() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let token = signer.sign(&claims_for("GET", "/tapi", BODY, "read", "r-1", NOW));
    assert_eq!(
        v.verify(&token, request(), NOW),
        Err(AssertionError::MethodMismatch("GET".into()))
    );
    let token = signer.sign(&claims_for("POST", "/ecapi", BODY, "read", "r-2", NOW));
    assert_eq!(
        v.verify(&token, request(), NOW),
        Err(AssertionError::PathMismatch("/ecapi".into()))
    );
}

#[test]
fn refuses_an_expired_assertion() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let token = signer.sign(&claims_for("POST", "/tapi", BODY, "read", "r-1", NOW));
    // exp = NOW + 30; still fine within the leeway, refused after it.
    assert!(v.verify(&token, request(), NOW + 30 + LEEWAY_SECS).is_ok());
    let token = signer.sign(&claims_for("POST", "/tapi", BODY, "read", "r-2", NOW));
    assert_eq!(
        v.verify(&token, request(), NOW + 31 + LEEWAY_SECS),
        Err(AssertionError::Expired)
    );
}

#[test]
fn refuses_long_lived_and_future_assertions() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let mut claims = claims_for("POST", "/tapi", BODY, "read", "r-1", NOW);
    claims.exp = NOW + 3600;
    assert_eq!(
        v.verify(&signer.sign(&claims), request(), NOW),
        Err(AssertionError::LifetimeTooLong)
    );
    let claims = claims_for("POST", "/tapi", BODY, "read", "r-2", NOW + 60);
    assert_eq!(
        v.verify(&signer.sign(&claims), request(), NOW),
        Err(AssertionError::IssuedInFuture)
    );
}

#[test]
fn refuses_a_replayed_jti() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let token = signer.sign(&claims_for("POST", "/tapi", BODY, "read", "r-1", NOW));
    assert!(v.verify(&token, request(), NOW).is_ok());
    assert_eq!(
        v.verify(&token, request(), NOW + 1),
        Err(AssertionError::Replayed)
    );
    // A new token reusing the id is a replay too, even though it is freshly signed.
    let token = signer.sign(&claims_for("POST", "/tapi", BODY, "read", "r-1", NOW + 2));
    assert_eq!(
        v.verify(&token, request(), NOW + 2),
        Err(AssertionError::Replayed)
    );
}

#[test]
fn a_refused_token_does_not_burn_its_jti() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let forged =
        TestSigner::generate().sign(&claims_for("POST", "/tapi", BODY, "read", "r-1", NOW));
    assert!(v.verify(&forged, request(), NOW).is_err());
    let genuine = signer.sign(&claims_for("POST", "/tapi", BODY, "read", "r-1", NOW));
    assert!(v.verify(&genuine, request(), NOW).is_ok());
}

#[test]
fn refuses_wrong_issuer_and_garbage() {
    let signer = TestSigner::generate();
    let v = verifier(&signer);
    let mut claims = claims_for("POST", "/tapi", BODY, "read", "r-1", NOW);
    claims.iss = "someone-else".into();
    assert_eq!(
        v.verify(&signer.sign(&claims), request(), NOW),
        Err(AssertionError::WrongIssuer)
    );
    assert!(matches!(
        v.verify("not.a.jwt", request(), NOW),
        Err(AssertionError::Malformed(_))
    ));
}

#[test]
fn forgets_ids_only_after_they_could_no_longer_verify() {
    let mut seen = SeenIds::default();
    assert!(seen.insert("a", NOW + 30, NOW));
    assert!(!seen.insert("a", NOW + 30, NOW + 30 + LEEWAY_SECS));
    // Past exp + leeway the token is refused as expired, so the id may go.
    assert!(seen.insert("b", NOW + 100, NOW + 31 + LEEWAY_SECS));
    assert!(!seen.by_id.contains_key("a"));
}

/// An HS256 key as `keyguard assertion-key` publishes it.
fn hs256_jwks(kid: &str, secret: &[u8]) -> String {
    serde_json::json!({"keys": [{
        "kty": "oct", "alg": "HS256", "use": "sig", "kid": kid,
        "k": URL_SAFE_NO_PAD.encode(secret),
    }]})
    .to_string()
}

fn hs256_token(kid: Option<&str>, secret: &[u8], claims: &AssertionClaims) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[test]
fn a_jwks_verifies_hs256_by_kid_and_refuses_unknown_or_missing_kids() {
    let secret = [7u8; 32];
    let v = AssertionVerifier::from_jwks(hs256_jwks("hs-a", &secret).as_bytes()).unwrap();
    let claims = claims_for("POST", "/tapi", BODY, "read", "r-1", NOW);
    let token = hs256_token(Some("hs-a"), &secret, &claims);
    assert_eq!(v.verify(&token, request(), NOW).unwrap().sub, "acct-1");
    let wrong = hs256_token(Some("hs-a"), &[8u8; 32], &claims);
    assert_eq!(
        v.verify(&wrong, request(), NOW),
        Err(AssertionError::BadSignature)
    );
    let unknown = hs256_token(Some("hs-b"), &secret, &claims);
    assert_eq!(
        v.verify(&unknown, request(), NOW),
        Err(AssertionError::UnknownKey)
    );
    let none = hs256_token(None, &secret, &claims);
    assert!(matches!(
        v.verify(&none, request(), NOW),
        Err(AssertionError::Malformed(_))
    ));
}

#[test]
fn a_token_is_checked_only_under_the_algorithm_its_key_declares() {
    // The algorithm-confusion forgery: an HS256 token "signed" with the Ed25519 public
    // key's bytes as HMAC secret, naming the EdDSA key's kid.
    let signer = TestSigner::generate();
    let x = &signer.public_pem;
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            x.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let public = &der[12..];
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "ed-a",
        "x": URL_SAFE_NO_PAD.encode(public),
    }]})
    .to_string();
    let v = AssertionVerifier::from_jwks(jwks.as_bytes()).unwrap();
    let claims = claims_for("POST", "/tapi", BODY, "read", "r-1", NOW);
    let forged = hs256_token(Some("ed-a"), public, &claims);
    assert_eq!(
        v.verify(&forged, request(), NOW),
        Err(AssertionError::BadSignature)
    );
    // The genuine EdDSA token with the kid verifies.
    let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
    header.kid = Some("ed-a".into());
    let token = signer.sign_with_header(header, &claims);
    assert!(v.verify(&token, request(), NOW).is_ok());
}

#[test]
fn a_jwks_file_is_re_read_for_a_key_it_does_not_know_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.jwks");
    std::fs::write(&path, hs256_jwks("hs-a", &[1u8; 32])).unwrap();
    let v = AssertionVerifier::from_file(&path).unwrap();
    // Rotated: the file now names a new key.
    std::fs::write(&path, hs256_jwks("hs-b", &[2u8; 32])).unwrap();
    let claims = claims_for("POST", "/tapi", BODY, "read", "r-2", NOW);
    let token = hs256_token(Some("hs-b"), &[2u8; 32], &claims);
    assert!(v.verify(&token, request(), NOW).is_ok());
}
