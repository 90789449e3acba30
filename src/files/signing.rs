//! Download credentials that fit where headers cannot go: signed URLs and the file cookie.
//! Both name a user and an expiry and carry an HMAC-SHA256 over them; access itself is checked
//! again at every download.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256's block size: a key of exactly this length is used as is.
const KEY_BYTES: usize = 64;

pub struct Signer {
    key: [u8; KEY_BYTES],
}

impl Signer {
    /// Loads the key from `path`, creating it (64 random bytes, mode 0600) on first use.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Ok(bytes) = std::fs::read(path)
            && let Ok(key) = <[u8; KEY_BYTES]>::try_from(bytes.as_slice())
        {
            return Ok(Self { key });
        }
        let mut key = [0u8; KEY_BYTES];
        rand::fill(&mut key[..]);
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(Self { key })
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new((&self.key).into());
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    /// The `sig` of a signed URL for `file` (its thumbnail when `thumb`: a signature opens
    /// only the resource it names), made for `user`, valid until `exp` (unix seconds).
    pub fn url_signature(&self, file: u64, thumb: bool, user: &str, exp: u64) -> String {
        let tag = self
            .mac(&[
                b"url",
                resource(thumb),
                file.to_string().as_bytes(),
                user.as_bytes(),
                exp.to_string().as_bytes(),
            ])
            .finalize()
            .into_bytes();
        B64.encode(tag)
    }

    /// Whether `sig` is the signature of (file, thumb, user, exp) and `exp` has not passed.
    pub fn check_url(
        &self,
        file: u64,
        thumb: bool,
        user: &str,
        exp: u64,
        sig: &str,
        now_secs: u64,
    ) -> bool {
        if exp < now_secs {
            return false;
        }
        let Ok(tag) = B64.decode(sig) else {
            return false;
        };
        self.mac(&[
            b"url",
            resource(thumb),
            file.to_string().as_bytes(),
            user.as_bytes(),
            exp.to_string().as_bytes(),
        ])
        .verify_slice(&tag)
        .is_ok()
    }

    /// A cookie value naming `user` until `exp`: `user.exp.sig`, each part base64url.
    pub fn cookie(&self, user: &str, exp: u64) -> String {
        let tag = self
            .mac(&[b"cookie", user.as_bytes(), exp.to_string().as_bytes()])
            .finalize()
            .into_bytes();
        format!("{}.{exp}.{}", B64.encode(user), B64.encode(tag))
    }

    /// The user a cookie value names, if its signature holds and it has not expired.
    pub fn check_cookie(&self, value: &str, now_secs: u64) -> Option<String> {
        let mut parts = value.split('.');
        let (user, exp, sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let user = String::from_utf8(B64.decode(user).ok()?).ok()?;
        let exp: u64 = exp.parse().ok()?;
        if exp < now_secs {
            return None;
        }
        let tag = B64.decode(sig).ok()?;
        self.mac(&[b"cookie", user.as_bytes(), exp.to_string().as_bytes()])
            .verify_slice(&tag)
            .ok()?;
        Some(user)
    }
}

/// Which of a file's resources a signed URL names.
fn resource(thumb: bool) -> &'static [u8] {
    if thumb { b"thumb" } else { b"original" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_every_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Signer::open(&dir.path().join("k")).expect("key");
        let sig = s.url_signature(7, false, "ana", 100);
        assert!(s.check_url(7, false, "ana", 100, &sig, 50));
        assert!(!s.check_url(8, false, "ana", 100, &sig, 50));
        assert!(!s.check_url(7, false, "bob", 100, &sig, 50));
        assert!(!s.check_url(7, false, "ana", 101, &sig, 50));
        assert!(!s.check_url(7, false, "ana", 100, &sig, 101));
        // Issue 24, point 7: a thumbnail's signature does not open the original, nor the
        // other way round.
        let thumb = s.url_signature(7, true, "ana", 100);
        assert!(s.check_url(7, true, "ana", 100, &thumb, 50));
        assert!(!s.check_url(7, false, "ana", 100, &thumb, 50));
        assert!(!s.check_url(7, true, "ana", 100, &sig, 50));
        let c = s.cookie("ana", 100);
        assert_eq!(s.check_cookie(&c, 50).as_deref(), Some("ana"));
        assert_eq!(s.check_cookie(&c, 101), None);
        assert_eq!(s.check_cookie(&c.replace(".100.", ".200."), 50), None);
        // The key survives a reopen.
        let again = Signer::open(&dir.path().join("k")).expect("key");
        assert!(again.check_url(7, false, "ana", 100, &sig, 50));
    }
}
