//! Input rules for messages, rooms and user ids, checked before anything is stored.

use super::ChatError;

/// Content: valid UTF-8 (guaranteed by `String`), not blank, within the byte limit.
pub fn content(s: &str, max_bytes: usize) -> Result<(), ChatError> {
    if s.len() > max_bytes {
        return Err(ChatError::TooLarge(format!(
            "content is {} bytes; the limit is {max_bytes}",
            s.len()
        )));
    }
    if s.trim().is_empty() {
        return Err(ChatError::Invalid("content must not be empty".into()));
    }
    Ok(())
}

/// A caption on a file or image message: may be empty, within the byte limit.
pub fn caption(s: &str, max_bytes: usize) -> Result<(), ChatError> {
    if s.len() > max_bytes {
        return Err(ChatError::TooLarge(format!(
            "content is {} bytes; the limit is {max_bytes}",
            s.len()
        )));
    }
    Ok(())
}

/// The sender's idempotency key: 1–64 bytes, no control characters.
pub fn client_msg_id(s: &str) -> Result<(), ChatError> {
    if s.is_empty() || s.len() > 64 || s.chars().any(char::is_control) {
        return Err(ChatError::Invalid(
            "client_msg_id must be 1-64 bytes without control characters".into(),
        ));
    }
    Ok(())
}

/// A room name: trimmed, 1–`max` characters, no control characters.
pub fn room_name(s: &str, max: usize) -> Result<String, ChatError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(ChatError::Invalid(format!(
            "name must be 1-{max} characters without control characters"
        )));
    }
    Ok(t.to_owned())
}

/// A topic: trimmed, at most `max` characters; newlines allowed.
pub fn topic(s: &str, max: usize) -> Result<String, ChatError> {
    let t = s.trim();
    if t.chars().count() > max || t.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ChatError::Invalid(format!(
            "topic must be at most {max} characters"
        )));
    }
    Ok(t.to_owned())
}

/// A user id named by a client: 1–161 bytes (a namespace, `:` and a 128-byte `sub`), no
/// control characters.
pub fn user_id(s: &str) -> Result<(), ChatError> {
    if s.is_empty() || s.len() > crate::auth::MAX_USER_ID_BYTES || s.chars().any(char::is_control) {
        return Err(ChatError::Invalid(format!(
            "user_id must be 1-{} bytes",
            crate::auth::MAX_USER_ID_BYTES
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        assert!(content("hi", 10).is_ok());
        assert!(matches!(content("   \n", 10), Err(ChatError::Invalid(_))));
        assert!(matches!(
            content("12345678901", 10),
            Err(ChatError::TooLarge(_))
        ));
    }
}
