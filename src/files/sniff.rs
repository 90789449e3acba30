//! The real type of an upload, from its first bytes (the client's claim is never used).

/// Bytes of the start of a file the sniffer looks at.
pub const SNIFF_BYTES: usize = 8192;

/// A MIME type for `head`, the first bytes of a file. The `infer` crate knows the binary
/// formats; it has no rule for SVG (text), so SVG is recognised here, and other valid UTF-8 is
/// `text/plain`.
pub fn mime_of(head: &[u8]) -> String {
    if let Some(t) = infer::get(head) {
        let m = t.mime_type();
        if (m == "text/xml" || m == "text/html") && looks_like_svg(head) {
            return "image/svg+xml".to_owned();
        }
        return m.to_owned();
    }
    if looks_like_svg(head) {
        return "image/svg+xml".to_owned();
    }
    if is_text(head) {
        return "text/plain".to_owned();
    }
    "application/octet-stream".to_owned()
}

fn looks_like_svg(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&head[..head.len().min(1024)]).to_ascii_lowercase();
    text.contains("<svg")
}

/// Valid UTF-8 (allowing a character cut at the end of `head`) without NULs.
fn is_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    }
}

/// Types served inline: images browsers render without running code, and audio and video.
/// Everything else is an attachment.
pub fn served_inline(mime: &str) -> bool {
    crate::model::THUMBNAIL_TYPES.contains(&mime)
        || matches!(
            mime,
            "video/mp4"
                | "video/webm"
                | "video/ogg"
                | "audio/mpeg"
                | "audio/ogg"
                | "audio/x-wav"
                | "audio/wav"
                | "audio/x-flac"
                | "audio/flac"
                | "audio/webm"
                | "audio/mp4"
                | "audio/m4a"
                | "audio/x-m4a"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_from_bytes() {
        assert_eq!(mime_of(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(mime_of(b"\xff\xd8\xff\xe0\0\x10JFIF\0"), "image/jpeg");
        assert_eq!(
            mime_of(b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>"),
            "image/svg+xml"
        );
        assert_eq!(
            mime_of(b"<?xml version=\"1.0\"?>\n<svg xmlns=\"x\"></svg>"),
            "image/svg+xml"
        );
        assert_eq!(mime_of(b"<!DOCTYPE html><html><body>"), "text/html");
        assert_eq!(mime_of("plain words, é".as_bytes()), "text/plain");
        assert_eq!(mime_of(&[0, 1, 2, 3, 255]), "application/octet-stream");
    }

    #[test]
    fn only_safe_types_inline() {
        assert!(served_inline("image/png"));
        assert!(!served_inline("image/svg+xml"));
        assert!(!served_inline("text/html"));
        assert!(!served_inline("application/pdf"));
    }
}
