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

/// Passwords: 8–1024 bytes, not equal to any of `names` (the username and the display name)
/// and not one of the most common passwords, case ignored in both. A guesser tries exactly
/// these first, so the login backoff alone would not protect them.
pub fn validate_password(pw: &str, names: &[&str]) -> Result<(), AuthError> {
    if !(8..=1024).contains(&pw.len()) {
        return Err(AuthError::BadInput(
            "password must be 8-1024 bytes long".into(),
        ));
    }
    let lower = pw.to_lowercase();
    if names.iter().any(|n| n.trim().to_lowercase() == lower) {
        return Err(AuthError::BadInput(
            "password must not be the username or the display name".into(),
        ));
    }
    if COMMON_PASSWORDS.binary_search(&lower.as_str()).is_ok() {
        return Err(AuthError::BadInput(
            "password is one of the most common passwords; choose another".into(),
        ));
    }
    Ok(())
}

/// The most common passwords of 8 bytes or more (shorter ones are refused anyway), from the
/// published lists of leaked passwords; lowercase and sorted, for `binary_search`.
#[rustfmt::skip]
static COMMON_PASSWORDS: &[&str] = &[
    "00000000", "000000000", "0000000000", "0123456789", "0987654321", "11111111", "111111111",
    "1111111111", "11223344", "112233445566", "12121212", "123123123", "123321123", "12341234",
    "12344321", "1234512345", "123456123", "12345678", "123456789", "1234567890", "12345678910",
    "123456789a", "123456abc", "12345qwert", "1234abcd", "1234qwer", "123654789", "123abc123",
    "123qweasd", "147258369", "147852369", "159357456", "159753852", "1password", "1q2w3e4r",
    "1q2w3e4r5t", "1q2w3e4r5t6y", "1qaz!qaz", "1qaz2wsx", "1qaz2wsx3edc", "1qazxsw2", "22222222",
    "55555555", "66666666", "741852963", "77777777", "789456123", "87654321", "88888888",
    "963852741", "987654321", "9876543210", "99999999", "a12345678", "a123456789", "a1b2c3d4",
    "aa123456", "aaaaaaaa", "abc12345", "abcd1234", "abcdefg1", "abcdefgh", "admin123",
    "admin1234", "adminadmin", "administrator", "alexander", "arsenal1", "asdasdasd", "asdf1234",
    "asdfasdf", "asdfghjk", "asdfghjkl", "baseball", "baseball1", "basketball", "benjamin",
    "blink182", "butterfly", "changeme", "changeme1", "changeme123", "charlie1", "chelsea1",
    "chocolate", "christian", "computer", "computer1", "contrasena", "corvette", "danielle",
    "december", "default1", "dragon12", "elephant", "ferrari1", "football", "football1",
    "fortnite", "freedom1", "guest123", "hello123", "hello1234", "helloworld", "iloveyou",
    "iloveyou!", "iloveyou1", "iloveyou2", "internet", "jennifer", "jessica1", "jonathan",
    "jordan23", "letmein1", "letmein123", "letmeinnow", "liverpool", "lovelove", "loveyou1",
    "manchester", "master12", "mercedes", "michael1", "midnight", "minecraft", "monkey12",
    "motdepasse", "mustang1", "mypassword", "nicholas", "november", "p@ssw0rd", "p@ssword",
    "pa55word", "pass1234", "passpass", "passw0rd", "password", "password!", "password01",
    "password1", "password12", "password123", "password1234", "password2024", "password2025",
    "password2026", "passwort", "passwort1", "patricia", "pokemon1", "princess", "princess1",
    "q1w2e3r4", "q1w2e3r4t5", "qazwsxedc", "qweasdzxc", "qweqweqwe", "qwer1234", "qwerty!@#",
    "qwerty12", "qwerty123", "qwerty1234", "qwertyqwerty", "qwertyui", "qwertyuiop", "root1234",
    "rootroot", "samantha", "secret123", "shadow12", "starwars", "sunflower", "sunshine",
    "sunshine1", "superman", "superman1", "test1234", "test12345", "testtest", "trustno1",
    "victoria", "welcome!", "welcome1", "welcome123", "welcome2024", "whatever", "whatever1",
    "zaq12wsx", "zaq1xsw2", "zaq1zaq1", "zxcvbnm1", "zxcvbnm123", "zxcvbnmasdf",
];

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
        assert!(validate_password("short", &[]).is_err());
    }

    #[test]
    fn common_passwords_and_names_are_refused() {
        assert!(
            COMMON_PASSWORDS.windows(2).all(|w| w[0] < w[1]),
            "sorted and unique, or binary_search misses"
        );
        assert!(
            COMMON_PASSWORDS
                .iter()
                .all(|p| p.len() >= 8 && *p == p.to_lowercase()),
            "lowercase and at least 8 bytes"
        );
        for pw in [
            "password1",
            "PASSWORD1",
            "Password123",
            "12345678",
            "iloveyou",
        ] {
            assert!(validate_password(pw, &[]).is_err(), "{pw} is common");
        }
        assert!(validate_password("AliceAlice", &["alicealice"]).is_err());
        assert!(validate_password("Dave Davies", &["dave", "dave davies "]).is_err());
        assert!(validate_password("correct horse", &["dave", "Dave D."]).is_ok());
    }
}
