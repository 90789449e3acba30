//! Built-in account credentials: username rules and argon2id password hashes.

use super::AuthError;
use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};

/// Usernames: 3–32 of `a-z 0-9 _ . -`, lowercased.
pub fn validate_username(raw: &str) -> Result<String, AuthError> {
    let name = raw.trim().to_lowercase();
    let ok = (3..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(name)
    } else {
        Err(AuthError::BadInput(
            "username must be 3-32 characters of a-z, 0-9, _ . -".into(),
        ))
    }
}

/// Passwords: 8–1024 bytes.
pub fn validate_password(pw: &str) -> Result<(), AuthError> {
    if (8..=1024).contains(&pw.len()) {
        Ok(())
    } else {
        Err(AuthError::BadInput(
            "password must be 8-1024 bytes long".into(),
        ))
    }
}

/// Hashes with argon2id and a random salt (PHC string). Slow on purpose: call off the runtime.
pub fn hash_password(pw: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored PHC hash. Slow on purpose: call off the runtime.
pub fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_usernames_are_checked() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert_eq!(validate_username(" Alice ").expect("ok"), "alice");
        assert!(validate_username("a").is_err());
        assert!(validate_username("al ice").is_err());
        assert!(validate_password("short").is_err());
    }
}
