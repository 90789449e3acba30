//! Tidy: checks of the codebase's own rules that a compiler does not make (see ARCHITECTURE.md).

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for d in ["src", "tests", "benches"] {
        rust_files(&root().join(d), &mut files);
    }
    assert!(files.len() > 10, "found only {} files", files.len());
    files
}

#[test]
fn every_rust_file_opens_with_a_doc_line() {
    let missing: Vec<_> = all_rust_files()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

/// Each external crate is known to one module.
#[test]
fn crates_stay_in_their_modules() {
    let rules: &[(&str, &[&str])] = &[
        ("redb", &["src/store/"]),
        ("hyper", &["src/server/"]),
        ("fastwebsockets", &["src/server/"]),
        ("figment", &["src/config.rs"]),
        ("jsonwebtoken", &["src/auth/"]),
        ("argon2", &["src/auth/"]),
        ("rust_embed", &["src/server/"]),
        ("image", &["src/files/"]),
        ("infer", &["src/files/"]),
        ("fs4", &["src/files/"]),
        ("hmac", &["src/files/"]),
        ("tantivy", &["src/search/"]),
        ("crc32fast", &["src/store/"]),
        ("libc", &["src/store/", "src/memory.rs"]),
    ];
    let mut src = Vec::new();
    rust_files(&root().join("src"), &mut src);
    let mut violations = Vec::new();
    for file in src {
        let rel = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (krate, allowed) in rules {
            let used =
                text.contains(&format!("{krate}::")) || text.contains(&format!("use {krate}"));
            if used && !allowed.iter().any(|a| rel.starts_with(a)) {
                violations.push(format!("{rel} uses {krate}"));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The chat core knows nothing about transports or storage engines.
#[test]
fn chat_knows_no_transport() {
    let mut files = Vec::new();
    rust_files(&root().join("src/chat"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for word in [
            "crate::server",
            "hyper",
            "fastwebsockets",
            "redb",
            "WebSocket",
        ] {
            assert!(!text.contains(word), "{} mentions {word}", f.display());
        }
    }
}

/// docs/protocol.md names every event and error code the code knows.
#[test]
fn protocol_doc_matches_the_code() {
    let doc = std::fs::read_to_string(root().join("docs/protocol.md")).unwrap_or_default();
    let mut missing = Vec::new();
    for code in confab::protocol::ErrorCode::ALL {
        if !doc.contains(&format!("`{}`", code.as_str())) {
            missing.push(code.as_str().to_owned());
        }
    }
    for ev in confab::protocol::REQUEST_EVENTS
        .iter()
        .chain(confab::protocol::PUSHED_EVENTS.iter())
    {
        if !doc.contains(&format!("`{ev}`")) {
            missing.push((*ev).to_owned());
        }
    }
    assert!(missing.is_empty(), "not in docs/protocol.md: {missing:?}");
}

/// `unsafe` is denied crate-wide; the one block allowed is glibc's `malloc_trim` in
/// src/memory.rs, which carries its measurement. A new one needs the same and a line here.
#[test]
fn unsafe_stays_where_it_was_measured() {
    let allowed = ["src/memory.rs"];
    let mut src = Vec::new();
    rust_files(&root().join("src"), &mut src);
    let mut found = Vec::new();
    for file in src {
        let rel = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let blocks = text.matches("unsafe {").count() + text.matches("allow(unsafe_code)").count();
        if blocks > 0 && !allowed.contains(&rel.as_str()) {
            found.push(rel);
        }
    }
    assert!(found.is_empty(), "unsafe outside src/memory.rs: {found:?}");
    let memory = std::fs::read_to_string(root().join("src/memory.rs")).unwrap_or_default();
    assert_eq!(
        memory.matches("unsafe {").count(),
        1,
        "one block in src/memory.rs"
    );
}
