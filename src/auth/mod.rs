//! Who is this: JWT verification and minting (jsonwebtoken), password hashing (argon2id).

mod passwords;

pub use passwords::{hash_password, validate_password, validate_username, verify_password};

use crate::config::AuthConfig;
use crate::model::{UserId, now_ms};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Why a token or a credential was refused. Messages never contain the token itself.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("wrong username or password")]
    BadCredentials,
    #[error("{0}")]
    BadInput(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("password hashing: {0}")]
    Hash(String),
}

/// The claims Confab reads and writes. `sub` is the user id.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// An authenticated user, as a verified token describes them.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: UserId,
    pub name: String,
    /// Unix seconds at which the token stops being valid.
    pub expires_at: u64,
}

struct PublicKey {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
    /// The prefix of the user ids this key vouches for.
    namespace: String,
}

/// Verifies tokens against the local HS256 secret and any configured public keys, and mints
/// tokens with the local secret.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    hs_encode: EncodingKey,
    hs_decode: DecodingKey,
    public: Vec<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    ttl_secs: u64,
}

/// Longest `sub` accepted from a token.
pub const MAX_SUB_BYTES: usize = 128;
/// Longest user id: a namespace (32), its separator and a `sub`.
pub const MAX_USER_ID_BYTES: usize = 32 + 1 + MAX_SUB_BYTES;

impl Authenticator {
    /// Builds the verifier: the HS256 secret comes from `jwt_secret_file`, `jwt_secret`, or
    /// `<data_dir>/jwt-secret` (created with 256 random bits on first use).
    pub fn new(cfg: &AuthConfig, data_dir: &Path) -> Result<Self, AuthError> {
        let public = load_public_keys(cfg)?;
        let secret = load_or_create_secret(cfg, data_dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                hs_encode: EncodingKey::from_secret(&secret),
                hs_decode: DecodingKey::from_secret(&secret),
                public,
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
                leeway: cfg.leeway_secs,
                ttl_secs: cfg.token_ttl_secs,
            }),
        })
    }

    /// Checks signature, `exp` (required), `nbf`, and `iss`/`aud` when configured.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("bad header: {e}")))?;
        // The key decides the namespace: the server's own secret vouches for built-in names,
        // a host application's key for `<namespace>:<sub>` (see `model::UserId`).
        let (key, namespace) = match header.alg {
            // The local secret has no key id: a `kid` names some other key, so it is refused
            // rather than ignored (docs/protocol.md, Connecting).
            Algorithm::HS256 if header.kid.is_some() => {
                return Err(AuthError::Invalid("no HS256 key has this kid".into()));
            }
            Algorithm::HS256 => (&self.inner.hs_decode, None),
            alg => self
                .inner
                .public
                .iter()
                .find(|k| {
                    k.alg == alg && (k.kid.is_none() || k.kid.as_deref() == header.kid.as_deref())
                })
                .map(|k| (&k.key, Some(k.namespace.as_str())))
                .ok_or_else(|| AuthError::Invalid(format!("no key for alg {alg:?}")))?,
        };
        let mut v = Validation::new(header.alg);
        v.leeway = self.inner.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.inner.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        // With no audience configured, a token that names one is meant for someone else
        // and is refused (jsonwebtoken's default).
        if let Some(aud) = &self.inner.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim {c}"))
                }
                _ => AuthError::Invalid("malformed token".into()),
            }
        })?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.len() > MAX_SUB_BYTES || c.sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "sub must be 1-128 printable bytes".into(),
            ));
        }
        let user_id = match namespace {
            Some(ns) => crate::model::namespaced_user(ns, &c.sub),
            None if crate::model::is_builtin_user(&c.sub) => UserId::from(c.sub.as_str()),
            // A `:` would let the holder of the local secret speak for a host application's
            // user; built-in names never contain one.
            None => {
                return Err(AuthError::Invalid(
                    "the sub of a token signed with the server's own key must not contain ':'"
                        .into(),
                ));
            }
        };
        let name = c
            .name
            .filter(|n| !n.trim().is_empty())
            .map(|n| n.chars().take(64).collect())
            .unwrap_or(c.sub);
        Ok(Identity {
            user_id,
            name,
            expires_at: c.exp,
        })
    }

    /// Mints an HS256 token for `user` valid for `ttl_secs` (the configured default if `None`).
    pub fn mint(
        &self,
        user: &str,
        name: Option<&str>,
        ttl_secs: Option<u64>,
    ) -> Result<String, AuthError> {
        if !crate::model::is_builtin_user(user) {
            return Err(AuthError::BadInput(
                "a user id minted with the server's own key must not contain ':'".into(),
            ));
        }
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: user.to_owned(),
            name: name.map(str::to_owned),
            exp: now + ttl_secs.unwrap_or(self.inner.ttl_secs),
            iat: Some(now),
        };
        #[derive(Serialize)]
        struct WithAud<'a> {
            #[serde(flatten)]
            claims: &'a Claims,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
        }
        let full = WithAud {
            claims: &claims,
            aud: self.inner.audience.as_deref(),
            iss: self.inner.issuer.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &full, &self.inner.hs_encode)
            .map_err(|e| AuthError::Key(e.to_string()))
    }
}

/// Loads every configured public key; `confab check-config` uses it to report a bad PEM
/// without starting anything.
pub fn check_public_keys(cfg: &AuthConfig) -> Result<(), AuthError> {
    load_public_keys(cfg).map(|_| ())
}

fn load_public_keys(cfg: &AuthConfig) -> Result<Vec<PublicKey>, AuthError> {
    let mut public = Vec::new();
    for pk in &cfg.public_keys {
        let pem = std::fs::read(&pk.path)
            .map_err(|e| AuthError::Key(format!("{}: {e}", pk.path.display())))?;
        let (alg, key) = match pk.alg.as_str() {
            "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
            "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
            "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
            other => return Err(AuthError::Key(format!("unsupported alg {other}"))),
        };
        let key = key.map_err(|e| AuthError::Key(format!("{}: {e}", pk.path.display())))?;
        public.push(PublicKey {
            alg,
            kid: pk.kid.clone(),
            key,
            namespace: pk.namespace.clone(),
        });
    }
    Ok(public)
}

fn load_or_create_secret(cfg: &AuthConfig, data_dir: &Path) -> Result<Vec<u8>, AuthError> {
    if let Some(path) = &cfg.jwt_secret_file {
        let s = std::fs::read_to_string(path)
            .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
        return check_secret(s.trim().as_bytes().to_vec());
    }
    if let Some(s) = &cfg.jwt_secret {
        return check_secret(s.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt-secret");
    match std::fs::read(&path) {
        Ok(bytes) => check_secret(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| AuthError::Key(format!("{}: {e}", data_dir.display())))?;
            let mut raw = [0u8; 32];
            rand::fill(&mut raw);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, hex.as_bytes())
                .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
            Ok(hex.into_bytes())
        }
        Err(e) => Err(AuthError::Key(format!("{}: {e}", path.display()))),
    }
}

fn check_secret(bytes: Vec<u8>) -> Result<Vec<u8>, AuthError> {
    if bytes.len() < 32 {
        return Err(AuthError::Key(
            "the HS256 secret must be at least 32 bytes".into(),
        ));
    }
    Ok(bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &Path, audience: Option<&str>) -> Authenticator {
        let cfg = AuthConfig {
            audience: audience.map(str::to_owned),
            ..AuthConfig::default()
        };
        Authenticator::new(&cfg, dir).expect("authenticator")
    }

    #[test]
    fn minted_tokens_verify_and_secret_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = auth(dir.path(), None);
        let t = a.mint("alice", Some("Alice"), Some(60)).expect("mint");
        let id = a.verify(&t).expect("verify");
        assert_eq!(&*id.user_id, "alice");
        assert_eq!(id.name, "Alice");
        // A second authenticator over the same dir reads the same secret.
        let b = auth(dir.path(), None);
        assert!(b.verify(&t).is_ok());
    }

    /// Issue 24, point 1: the server's own key never vouches for a namespaced user.
    #[test]
    fn local_tokens_never_name_a_namespaced_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = auth(dir.path(), None);
        assert!(a.mint("app:42", None, Some(60)).is_err());
        let claims = serde_json::json!({"sub":"app:42","exp": now_ms()/1000 + 3600});
        let forged =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.inner.hs_encode)
                .expect("encode");
        assert!(matches!(a.verify(&forged), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn refuses_none_expired_and_wrong_audience() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = auth(dir.path(), Some("confab"));
        let expired = {
            let inner = auth(dir.path(), Some("confab"));
            let claims = serde_json::json!({"sub":"a","exp": now_ms()/1000 - 3600, "aud":"confab"});
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &inner.inner.hs_encode,
            )
            .expect("encode")
        };
        assert!(matches!(a.verify(&expired), Err(AuthError::Expired)));
        let wrong_aud = {
            let claims = serde_json::json!({"sub":"a","exp": now_ms()/1000 + 3600, "aud":"other"});
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.inner.hs_encode)
                .expect("encode")
        };
        assert!(a.verify(&wrong_aud).is_err());
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(a.verify(none).is_err());
    }

    /// Generates a key pair with the openssl CLI; returns (private PEM, public PEM path).
    fn keypair(dir: &Path, name: &str, genpkey_args: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let ok = std::process::Command::new("openssl")
            .arg("genpkey")
            .args(genpkey_args)
            .arg("-out")
            .arg(&private)
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl genpkey {name}");
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl pkey {name}");
        (std::fs::read(&private).expect("private key"), public)
    }

    #[test]
    fn host_application_public_keys_verify_their_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (rsa, rsa_pub) = keypair(
            dir.path(),
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let (ec, ec_pub) = keypair(
            dir.path(),
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let (ed, ed_pub) = keypair(dir.path(), "ed", &["-algorithm", "ED25519"]);
        let key =
            |alg: &str, path: &Path, kid: Option<&str>, ns: &str| crate::config::PublicKeyConfig {
                alg: alg.into(),
                path: path.to_owned(),
                kid: kid.map(str::to_owned),
                namespace: ns.into(),
            };
        let cfg = AuthConfig {
            public_keys: vec![
                key("RS256", &rsa_pub, Some("k1"), "app"),
                key("ES256", &ec_pub, None, "app"),
                key("EdDSA", &ed_pub, None, "shop"),
            ],
            issuer: Some("https://app.example".into()),
            ..AuthConfig::default()
        };
        let a = Authenticator::new(&cfg, dir.path()).expect("authenticator");
        let claims = serde_json::json!({
            "sub": "host-user-7", "name": "Host User", "exp": now_ms() / 1000 + 600,
            "iss": "https://app.example"
        });
        let sign = |alg: Algorithm, key: EncodingKey, kid: Option<&str>| {
            let mut h = Header::new(alg);
            h.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&h, &claims, &key).expect("sign")
        };
        let rs = sign(
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&rsa).expect("rsa"),
            Some("k1"),
        );
        let es = sign(
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&ec).expect("ec"),
            None,
        );
        let eddsa = sign(
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&ed).expect("ed"),
            None,
        );
        // Issue 24, point 1: each key vouches for its own namespace, never a built-in name.
        for (t, want) in [
            (&rs, "app:host-user-7"),
            (&es, "app:host-user-7"),
            (&eddsa, "shop:host-user-7"),
        ] {
            let id = a.verify(t).expect("a host token verifies");
            assert_eq!(&*id.user_id, want);
            assert_eq!(id.name, "Host User");
        }
        // Wrong kid, and a token signed with another key of the right kind, are refused.
        let wrong_kid = sign(
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&rsa).expect("rsa"),
            Some("k2"),
        );
        assert!(a.verify(&wrong_kid).is_err());
        let (other, _) = keypair(dir.path(), "other", &["-algorithm", "ED25519"]);
        let forged = sign(
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&other).expect("ed"),
            None,
        );
        assert!(a.verify(&forged).is_err());
        // Algorithm confusion: HS256 keyed with the public key's bytes is not the local secret.
        let pem = std::fs::read(&rsa_pub).expect("pub");
        let confused = sign(Algorithm::HS256, EncodingKey::from_secret(&pem), None);
        assert!(a.verify(&confused).is_err());
        // The issuer is required once configured.
        let no_iss = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &serde_json::json!({"sub": "x", "exp": now_ms() / 1000 + 600}),
            &EncodingKey::from_ec_pem(&ec).expect("ec"),
        )
        .expect("sign");
        assert!(a.verify(&no_iss).is_err());
    }
}
