//! Gateway authentication: HS256 JSON Web Tokens, verified exactly as the original LakeSync does.
//!
//! A request carries its token in an `Authorization: Bearer <jwt>` header (the header must match
//! `^Bearer\s+(\S+)$`), or else in a `?token=` query parameter (WebSocket upgrades, where browsers
//! cannot set headers). Verification runs in this order, and the first failure is reported as
//! [`Error::Unauthenticated`] (HTTP 401):
//!
//! 1. the token has exactly three non-empty, dot-separated segments;
//! 2. the header segment is base64url JSON with `alg == "HS256"` and `typ == "JWT"`;
//! 3. the HMAC-SHA256 signature over `header.payload` verifies against at least one configured
//!    secret (several secrets allow rotation: the current one and the previous one);
//! 4. the payload segment is base64url JSON;
//! 5. `exp` is a number and `exp > now` (seconds since the Unix epoch; no leeway);
//! 6. `sub` (the client id) is a non-empty string;
//! 7. `gw` (the gateway id) is a non-empty string.
//!
//! A verified token whose `gw` is not this gateway's id is [`Error::Forbidden`] (HTTP 403). The
//! `role` claim `"admin"` makes an [`Role::Admin`]; anything else, or none, a [`Role::Client`].
//! The payload's string and string-array claims become the sync-rule [`Claims`] (`jwt:sub`,
//! `jwt:org`, ...).
//!
//! With no secrets configured authentication is off: every caller is an [`Authenticator::anonymous`]
//! admin, and [`require_client`] lets any client id through.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Map, Value};

use crate::kernel::rules::Claims;
use crate::{Error, Result};

/// How long a token made by [`sign_token`] lives when the payload has no `exp`, in seconds.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// The only JWT header this gateway accepts (and the one [`sign_token`] writes).
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Base64url that, like the original's `atob`-based decoder, accepts the segment with or without
/// `=` padding.
const BASE64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a verified caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A sync client: push, pull and actions for its own client id.
    Client,
    /// An operator: everything a client may do plus the admin routes (flush, schema, sync rules,
    /// connectors, metrics).
    Admin,
}

impl Role {
    /// The role a `role` claim names: `"admin"` is [`Role::Admin`], anything else (or no claim)
    /// is [`Role::Client`].
    pub fn from_claim(claim: Option<&str>) -> Self {
        match claim {
            Some("admin") => Self::Admin,
            _ => Self::Client,
        }
    }

    /// The claim value for this role: `"client"` or `"admin"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Admin => "admin",
        }
    }
}

/// Who is making a request, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The client id: the token's `sub`, or the id an anonymous caller gave.
    pub client_id: String,
    /// The gateway the token was issued for (always this gateway's id once authenticated).
    pub gateway_id: String,
    /// What the caller may do.
    pub role: Role,
    /// The claims sync rules resolve `jwt:<name>` against.
    pub claims: Claims,
    /// Whether the principal came from a verified token (`false` when authentication is off).
    /// Only authenticated principals are held to their `sub` by [`require_client`].
    pub authenticated: bool,
}

impl Principal {
    /// Whether the caller may use the admin routes.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Verifies bearer tokens for one gateway.
#[derive(Clone)]
pub struct Authenticator {
    gateway_id: String,
    keys: Vec<DecodingKey>,
}

impl std::fmt::Debug for Authenticator {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("gateway_id", &self.gateway_id)
            .field("secrets", &self.keys.len())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for gateway `gateway_id` accepting tokens signed with any of `secrets`
    /// (UTF-8 bytes of each string are the HMAC key; list the current secret and, while rotating,
    /// the previous one). An empty list turns authentication off.
    ///
    /// Every string given is used as a key, even an empty one: rejecting empty or weak secrets is
    /// the configuration's job.
    pub fn new(gateway_id: impl Into<String>, secrets: Vec<String>) -> Self {
        Self {
            gateway_id: gateway_id.into(),
            keys: secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
        }
    }

    /// Whether tokens are required (at least one secret is configured).
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// This gateway's id.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Authenticates a request from its `Authorization` header value and `?token=` query value,
    /// at `now_secs` seconds since the Unix epoch. See the module docs for the checks and their
    /// order.
    ///
    /// When authentication is off this is not the right call: use [`Authenticator::anonymous`]
    /// (this returns [`Error::Unauthenticated`], as no token can verify).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        query_token: Option<&str>,
        now_secs: u64,
    ) -> Result<Principal> {
        let token = authorization
            .and_then(bearer_token)
            .or(query_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| unauthenticated("Missing or invalid Authorization header"))?;
        let payload = self.verify(token, now_secs)?;
        let (client_id, gateway_id) = match (payload.get("sub"), payload.get("gw")) {
            (Some(Value::String(sub)), Some(Value::String(gw))) => (sub.clone(), gw.clone()),
            // `verify` has checked both; kept total rather than panicking.
            _ => {
                return Err(unauthenticated(
                    "Missing or invalid \"sub\" claim (clientId)",
                ));
            }
        };
        if gateway_id != self.gateway_id {
            return Err(Error::Forbidden(format!(
                "Gateway ID mismatch: token is for gateway {gateway_id:?}, not {:?}",
                self.gateway_id
            )));
        }
        let role = Role::from_claim(payload.get("role").and_then(Value::as_str));
        Ok(Principal {
            client_id,
            gateway_id,
            role,
            claims: Claims::from_jwt_payload(&Value::Object(payload)),
            authenticated: true,
        })
    }

    /// The principal of a caller when authentication is off: an admin acting as `client_id`,
    /// whose only claim is `sub`.
    pub fn anonymous(&self, client_id: &str) -> Principal {
        Principal {
            client_id: client_id.to_string(),
            gateway_id: self.gateway_id.clone(),
            role: Role::Admin,
            claims: Claims::new().with("sub", [client_id]),
            authenticated: false,
        }
    }

    /// Checks steps 1–7 of the module docs and returns the payload object.
    fn verify(&self, token: &str, now_secs: u64) -> Result<Map<String, Value>> {
        let segments: Vec<&str> = token.split('.').collect();
        let [header_b64, payload_b64, signature_b64] = segments.as_slice() else {
            return Err(unauthenticated(
                "Malformed JWT: expected three dot-separated segments",
            ));
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(unauthenticated("Malformed JWT: empty segment"));
        }

        let header_bytes = BASE64URL_LENIENT
            .decode(header_b64)
            .map_err(|_| unauthenticated("Malformed JWT: invalid base64url in header"))?;
        let header: Option<Value> = serde_json::from_slice(&header_bytes).ok();
        let header_ok = header.as_ref().is_some_and(|h| {
            h.get("alg").and_then(Value::as_str) == Some("HS256")
                && h.get("typ").and_then(Value::as_str) == Some("JWT")
        });
        if !header_ok {
            return Err(unauthenticated(
                "Unsupported JWT: header must be {\"alg\":\"HS256\",\"typ\":\"JWT\"}",
            ));
        }

        let signature = BASE64URL_LENIENT
            .decode(signature_b64)
            .map_err(|_| unauthenticated("Malformed JWT: invalid base64url in signature"))?;
        // jsonwebtoken's verifier takes canonical unpadded base64url; it compares in constant time.
        let signature = URL_SAFE_NO_PAD.encode(signature);
        let signing_input = format!("{header_b64}.{payload_b64}");
        let verified = self.keys.iter().any(|key| {
            jsonwebtoken::crypto::verify(
                &signature,
                signing_input.as_bytes(),
                key,
                Algorithm::HS256,
            )
            .unwrap_or(false)
        });
        if !verified {
            return Err(unauthenticated("Invalid JWT signature"));
        }

        let payload_bytes = BASE64URL_LENIENT
            .decode(payload_b64)
            .map_err(|_| unauthenticated("Malformed JWT: invalid base64url in payload"))?;
        let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(&payload_bytes) else {
            return Err(unauthenticated(
                "Malformed JWT: payload is not a valid JSON object",
            ));
        };

        let Some(exp) = payload.get("exp").and_then(Value::as_f64) else {
            return Err(unauthenticated("Missing or invalid \"exp\" claim (expiry)"));
        };
        // `exp` may be fractional; the comparison is the original's `exp <= floor(now / 1000)`.
        if exp <= now_secs as f64 {
            return Err(unauthenticated("JWT has expired"));
        }
        if !is_non_empty_string(payload.get("sub")) {
            return Err(unauthenticated(
                "Missing or invalid \"sub\" claim (clientId)",
            ));
        }
        if !is_non_empty_string(payload.get("gw")) {
            return Err(unauthenticated(
                "Missing or invalid \"gw\" claim (gatewayId)",
            ));
        }
        Ok(payload)
    }
}

/// Fails with [`Error::Forbidden`] unless the caller is an admin.
pub fn require_admin(principal: &Principal) -> Result<()> {
    if principal.is_admin() {
        Ok(())
    } else {
        Err(Error::Forbidden("Admin role required".to_string()))
    }
}

/// Fails with [`Error::Forbidden`] when an authenticated caller claims, in a request body, to be
/// a client other than its token's `sub`. Anonymous principals (authentication off) may name any
/// client.
pub fn require_client(principal: &Principal, claimed_client_id: &str) -> Result<()> {
    if !principal.authenticated || principal.client_id == claimed_client_id {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "Client ID does not match token subject".to_string(),
        ))
    }
}

/// Signs an HS256 token as the original's `signToken` does: header `{"alg":"HS256","typ":"JWT"}`,
/// the payload's own claims, then `role` set to `"client"` and `exp` to `now_secs` +
/// [`DEFAULT_TOKEN_TTL_SECS`] when absent (or null); segments base64url without padding.
///
/// The payload must be a JSON object. Nothing else is checked: a token without `sub` or `gw` can
/// be signed, and is then rejected by [`Authenticator::authenticate`].
pub fn sign_token(payload: &Value, secret: &str, now_secs: u64) -> Result<String> {
    let Value::Object(claims) = payload else {
        return Err(Error::invalid(
            "token payload",
            "must be a JSON object of claims",
        ));
    };
    let mut claims = claims.clone();
    if claims.get("role").is_none_or(Value::is_null) {
        claims.insert("role".to_string(), Value::from("client"));
    }
    if claims.get("exp").is_none_or(Value::is_null) {
        claims.insert(
            "exp".to_string(),
            Value::from(now_secs.saturating_add(DEFAULT_TOKEN_TTL_SECS)),
        );
    }
    let payload_json = serde_json::to_vec(&Value::Object(claims))
        .map_err(|e| Error::internal(format!("serialising token payload: {e}")))?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER_JSON),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .map_err(|e| Error::internal(format!("signing token: {e}")))?;
    Ok(format!("{signing_input}.{signature}"))
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970), for
/// [`Authenticator::authenticate`] and [`sign_token`].
pub fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The token of an `Authorization` value matching `^Bearer\s+(\S+)$`.
fn bearer_token(authorization: &str) -> Option<&str> {
    let rest = authorization.strip_prefix("Bearer")?;
    let token = rest.trim_start();
    let had_space = token.len() < rest.len();
    (had_space && !token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

fn is_non_empty_string(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::String(s)) if !s.is_empty())
}

fn unauthenticated(message: &str) -> Error {
    Error::Unauthenticated(message.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const GW: &str = "gw-1";
    const SECRET: &str = "test-secret-that-is-long-enough";
    const NOW: u64 = 1_700_000_000;

    fn auth() -> Authenticator {
        Authenticator::new(GW, vec![SECRET.to_string()])
    }

    fn token(payload: Value) -> String {
        sign_token(&payload, SECRET, NOW).unwrap()
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    /// A token with an arbitrary header and payload, signed with `secret`.
    fn raw_token(header: &str, payload: &str, secret: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{input}.{sig}")
    }

    fn unauthenticated_message(result: Result<Principal>) -> String {
        match result {
            Err(Error::Unauthenticated(m)) => m,
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
    }

    #[test]
    fn valid_client_token() {
        let t = token(json!({"sub": "client-a", "gw": GW}));
        let p = auth().authenticate(Some(&bearer(&t)), None, NOW).unwrap();
        assert_eq!(p.client_id, "client-a");
        assert_eq!(p.gateway_id, GW);
        assert_eq!(p.role, Role::Client);
        assert!(!p.is_admin());
        assert!(p.authenticated);
        assert_eq!(p.claims.get("sub"), ["client-a"]);
    }

    #[test]
    fn admin_role() {
        let t = token(json!({"sub": "ops", "gw": GW, "role": "admin"}));
        let p = auth().authenticate(Some(&bearer(&t)), None, NOW).unwrap();
        assert_eq!(p.role, Role::Admin);
        assert!(require_admin(&p).is_ok());
        let t = token(json!({"sub": "c", "gw": GW, "role": "writer"}));
        let p = auth().authenticate(Some(&bearer(&t)), None, NOW).unwrap();
        assert_eq!(p.role, Role::Client);
        assert!(
            matches!(require_admin(&p), Err(Error::Forbidden(m)) if m == "Admin role required")
        );
    }

    #[test]
    fn custom_claims_reach_sync_rule_claims() {
        let t = token(json!({
            "sub": "client-a", "gw": GW, "org": "acme", "teams": ["red", "blue"],
            "level": 3, "iss": "me"
        }));
        let p = auth().authenticate(Some(&bearer(&t)), None, NOW).unwrap();
        assert_eq!(p.claims.get("org"), ["acme"]);
        assert_eq!(p.claims.get("teams"), ["red", "blue"]);
        assert!(p.claims.get("level").is_empty());
        assert!(p.claims.get("iss").is_empty());
        assert!(p.claims.get("gw").is_empty());
        assert_eq!(p.claims.resolve("jwt:sub"), ["client-a"]);
    }

    #[test]
    fn no_token() {
        let m = unauthenticated_message(auth().authenticate(None, None, NOW));
        assert_eq!(m, "Missing or invalid Authorization header");
        let m = unauthenticated_message(auth().authenticate(None, Some(""), NOW));
        assert_eq!(m, "Missing or invalid Authorization header");
    }

    #[test]
    fn missing_bearer_prefix() {
        let t = token(json!({"sub": "c", "gw": GW}));
        for header in [
            t.clone(),
            format!("bearer {t}"),
            format!("Bearer{t}"),
            format!("Bearer {t} extra"),
            "Bearer ".to_string(),
            format!("Basic {t}"),
        ] {
            let m = unauthenticated_message(auth().authenticate(Some(&header), None, NOW));
            assert_eq!(m, "Missing or invalid Authorization header", "{header}");
        }
    }

    #[test]
    fn bearer_accepts_any_whitespace_run() {
        let t = token(json!({"sub": "c", "gw": GW}));
        let p = auth()
            .authenticate(Some(&format!("Bearer \t  {t}")), None, NOW)
            .unwrap();
        assert_eq!(p.client_id, "c");
    }

    #[test]
    fn query_token_used_when_no_header() {
        let t = token(json!({"sub": "ws-client", "gw": GW}));
        let p = auth().authenticate(None, Some(&t), NOW).unwrap();
        assert_eq!(p.client_id, "ws-client");
        // A malformed header falls back to the query token.
        let p = auth()
            .authenticate(Some("Basic xyz"), Some(&t), NOW)
            .unwrap();
        assert_eq!(p.client_id, "ws-client");
    }

    #[test]
    fn expired() {
        let t = token(json!({"sub": "c", "gw": GW, "exp": NOW - 1}));
        let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
        assert_eq!(m, "JWT has expired");
        // `exp == now` is expired too; one second later is not.
        let t = token(json!({"sub": "c", "gw": GW, "exp": NOW}));
        assert!(auth().authenticate(Some(&bearer(&t)), None, NOW).is_err());
        let t = token(json!({"sub": "c", "gw": GW, "exp": NOW + 1}));
        assert!(auth().authenticate(Some(&bearer(&t)), None, NOW).is_ok());
        // Default expiry is an hour.
        let t = token(json!({"sub": "c", "gw": GW}));
        assert!(
            auth()
                .authenticate(Some(&bearer(&t)), None, NOW + 3599)
                .is_ok()
        );
        assert!(
            auth()
                .authenticate(Some(&bearer(&t)), None, NOW + 3600)
                .is_err()
        );
    }

    #[test]
    fn wrong_secret() {
        let t = sign_token(&json!({"sub": "c", "gw": GW}), "another-secret", NOW).unwrap();
        let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
        assert_eq!(m, "Invalid JWT signature");
    }

    #[test]
    fn tampered_payload_fails_signature() {
        let t = token(json!({"sub": "c", "gw": GW}));
        let parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&json!({"sub": "c", "gw": GW, "role": "admin", "exp": NOW + 60}))
                .unwrap(),
        );
        let t = format!("{}.{forged}.{}", parts[0], parts[2]);
        let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
        assert_eq!(m, "Invalid JWT signature");
    }

    #[test]
    fn rotation_accepts_previous_secret() {
        let rotated = Authenticator::new(GW, vec!["new-secret".to_string(), SECRET.to_string()]);
        let old = token(json!({"sub": "c", "gw": GW}));
        let new = sign_token(&json!({"sub": "c", "gw": GW}), "new-secret", NOW).unwrap();
        assert!(rotated.authenticate(Some(&bearer(&old)), None, NOW).is_ok());
        assert!(rotated.authenticate(Some(&bearer(&new)), None, NOW).is_ok());
        // Once the previous secret is dropped, old tokens fail.
        let retired = Authenticator::new(GW, vec!["new-secret".to_string()]);
        assert!(
            retired
                .authenticate(Some(&bearer(&old)), None, NOW)
                .is_err()
        );
    }

    #[test]
    fn malformed() {
        let cases = [
            (
                "not-a-jwt",
                "Malformed JWT: expected three dot-separated segments",
            ),
            (
                "a.b",
                "Malformed JWT: expected three dot-separated segments",
            ),
            (
                "a.b.c.d",
                "Malformed JWT: expected three dot-separated segments",
            ),
            ("a..c", "Malformed JWT: empty segment"),
            (".b.c", "Malformed JWT: empty segment"),
            ("a.b.", "Malformed JWT: empty segment"),
            ("!!!.b.c", "Malformed JWT: invalid base64url in header"),
        ];
        for (t, expected) in cases {
            let m = unauthenticated_message(auth().authenticate(Some(&bearer(t)), None, NOW));
            assert_eq!(m, expected, "{t}");
        }
        // A valid header and payload with a signature that is not base64url.
        let t = token(json!({"sub": "c", "gw": GW}));
        let (signed, _) = t.rsplit_once('.').unwrap();
        let m = unauthenticated_message(auth().authenticate(
            Some(&bearer(&format!("{signed}.***"))),
            None,
            NOW,
        ));
        assert_eq!(m, "Malformed JWT: invalid base64url in signature");
    }

    #[test]
    fn header_must_be_hs256_jwt() {
        let payload = json!({"sub": "c", "gw": GW, "exp": NOW + 60}).to_string();
        for header in [
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"jwt"}"#,
            r#"{"typ":"JWT"}"#,
            "not json",
        ] {
            let t = raw_token(header, &payload, SECRET);
            let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
            assert!(m.starts_with("Unsupported JWT"), "{header}: {m}");
        }
        // Extra header fields are fine.
        let t = raw_token(
            r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#,
            &payload,
            SECRET,
        );
        assert!(auth().authenticate(Some(&bearer(&t)), None, NOW).is_ok());
    }

    #[test]
    fn payload_must_be_json_object() {
        for payload in ["not json", "[1,2]", "\"s\""] {
            let t = raw_token(HEADER_JSON, payload, SECRET);
            let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
            assert_eq!(m, "Malformed JWT: payload is not a valid JSON object");
        }
    }

    #[test]
    fn missing_or_invalid_exp() {
        for payload in [
            json!({"sub": "c", "gw": GW}),
            json!({"sub": "c", "gw": GW, "exp": "9999999999"}),
            json!({"sub": "c", "gw": GW, "exp": null}),
        ] {
            let t = raw_token(HEADER_JSON, &payload.to_string(), SECRET);
            let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
            assert_eq!(m, "Missing or invalid \"exp\" claim (expiry)", "{payload}");
        }
        // A fractional exp is a number and compared as such.
        let t = raw_token(
            HEADER_JSON,
            &json!({"sub": "c", "gw": GW, "exp": NOW as f64 + 0.5}).to_string(),
            SECRET,
        );
        assert!(auth().authenticate(Some(&bearer(&t)), None, NOW).is_ok());
    }

    #[test]
    fn missing_sub_or_gw() {
        for (payload, expected) in [
            (
                json!({"gw": GW}),
                "Missing or invalid \"sub\" claim (clientId)",
            ),
            (
                json!({"sub": "", "gw": GW}),
                "Missing or invalid \"sub\" claim (clientId)",
            ),
            (
                json!({"sub": 7, "gw": GW}),
                "Missing or invalid \"sub\" claim (clientId)",
            ),
            (
                json!({"sub": "c"}),
                "Missing or invalid \"gw\" claim (gatewayId)",
            ),
            (
                json!({"sub": "c", "gw": ""}),
                "Missing or invalid \"gw\" claim (gatewayId)",
            ),
        ] {
            let t = token(payload.clone());
            let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
            assert_eq!(m, expected, "{payload}");
        }
    }

    #[test]
    fn check_order_expiry_before_sub() {
        // An expired token without sub reports the expiry (the original's order).
        let t = token(json!({"gw": GW, "exp": NOW - 10}));
        let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
        assert_eq!(m, "JWT has expired");
        // A bad signature is reported before a bad payload.
        let t = raw_token(HEADER_JSON, "not json", "wrong");
        let m = unauthenticated_message(auth().authenticate(Some(&bearer(&t)), None, NOW));
        assert_eq!(m, "Invalid JWT signature");
    }

    #[test]
    fn wrong_gateway_is_forbidden() {
        let t = token(json!({"sub": "c", "gw": "other-gw"}));
        match auth().authenticate(Some(&bearer(&t)), None, NOW) {
            Err(e @ Error::Forbidden(_)) => {
                assert!(e.to_string().starts_with("Gateway ID mismatch"), "{e}");
                assert_eq!(e.code(), "FORBIDDEN");
            }
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }

    #[test]
    fn errors_map_to_auth_error_code() {
        let e = auth().authenticate(None, None, NOW).unwrap_err();
        assert_eq!(e.code(), "AUTH_ERROR");
    }

    #[test]
    fn require_client_binds_body_client_id_to_sub() {
        let t = token(json!({"sub": "client-a", "gw": GW}));
        let p = auth().authenticate(Some(&bearer(&t)), None, NOW).unwrap();
        assert!(require_client(&p, "client-a").is_ok());
        assert!(matches!(
            require_client(&p, "client-b"),
            Err(Error::Forbidden(m)) if m == "Client ID does not match token subject"
        ));
    }

    #[test]
    fn auth_disabled_means_anonymous_admin() {
        let off = Authenticator::new(GW, vec![]);
        assert!(!off.is_enabled());
        assert!(auth().is_enabled());
        let p = off.anonymous("anyone");
        assert!(p.is_admin());
        assert!(!p.authenticated);
        assert_eq!(p.gateway_id, GW);
        assert_eq!(p.claims.get("sub"), ["anyone"]);
        assert_eq!(p.claims.iter().count(), 1);
        assert!(require_admin(&p).is_ok());
        assert!(require_client(&p, "someone-else").is_ok());
        // No secret can verify a token.
        let t = token(json!({"sub": "c", "gw": GW}));
        assert!(off.authenticate(Some(&bearer(&t)), None, NOW).is_err());
    }

    #[test]
    fn sign_token_shape() {
        let t = sign_token(&json!({"sub": "c", "gw": GW}), SECRET, NOW).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!t.contains('='));
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(parts[0], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            payload,
            json!({"sub": "c", "gw": GW, "role": "client", "exp": NOW + 3600})
        );
        // Given role and exp are kept.
        let t = sign_token(
            &json!({"sub": "c", "gw": GW, "role": "admin", "exp": 5}),
            SECRET,
            NOW,
        )
        .unwrap();
        let payload: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["role"], "admin");
        assert_eq!(payload["exp"], 5);
        assert!(sign_token(&json!(["not", "an", "object"]), SECRET, NOW).is_err());
    }

    #[test]
    fn known_hs256_vector_verifies() {
        // Computed independently with Python's `hmac` and `base64` modules.
        const VECTOR: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
            eyJzdWIiOiJjIiwiZ3ciOiJndy0xIiwiZXhwIjoxNzAwMDAzNjAwfQ.\
            NroGNyFh4Rn7HH-GAXEHS2BGFR972f5YR_STdJP2LGk";
        let ours = raw_token(
            HEADER_JSON,
            r#"{"sub":"c","gw":"gw-1","exp":1700003600}"#,
            SECRET,
        );
        assert_eq!(ours, VECTOR);
        let p = auth()
            .authenticate(Some(&bearer(VECTOR)), None, NOW)
            .unwrap();
        assert_eq!(p.client_id, "c");
    }

    #[test]
    fn padded_signature_is_accepted() {
        // The original decodes with `atob`, which accepts `=` padding. (Padding the header or
        // payload would change the signed input, so only the signature can carry it.)
        let t = token(json!({"sub": "c", "gw": GW}));
        let padded = format!("{t}=");
        assert_eq!(t.rsplit('.').next().unwrap().len() % 4, 3);
        assert!(
            auth()
                .authenticate(Some(&bearer(&padded)), None, NOW)
                .is_ok()
        );
    }
}
