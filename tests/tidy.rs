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

/// The SDK and the server agree on event names and error codes (issue 25, point 1): every
/// request the SDK sends, and every one it retries, is one the server knows; every request the
/// server knows has an SDK call; every error code the SDK treats as transient exists (on the
/// server or among the SDK's own), and no SDK code shadows a server one.
#[test]
fn the_sdk_agrees_with_the_protocol() {
    let sdk = std::fs::read_to_string(root().join("web/sdk/client.js")).unwrap_or_default();
    assert!(sdk.len() > 1000, "web/sdk/client.js not found");
    let requests: Vec<&str> = confab::protocol::REQUEST_EVENTS.to_vec();
    let quoted_after = |marker: &str| -> Vec<String> {
        sdk.match_indices(marker)
            .filter_map(|(at, _)| {
                let rest = &sdk[at + marker.len()..];
                let end = rest.find('"')?;
                Some(rest[..end].to_owned())
            })
            .collect()
    };
    let sent = quoted_after("#request(\"");
    assert!(
        !sent.is_empty(),
        "no #request(\"...\") calls found in the SDK"
    );
    let set_body = |name: &str| -> Vec<String> {
        let start = sdk
            .find(&format!("const {name} = new Set(["))
            .unwrap_or_else(|| panic!("no {name} set in the SDK"));
        let body = &sdk[start..];
        let body = &body[..body.find("]);").expect("end of the set")];
        body.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut wrong = Vec::new();
    for ev in sent.iter().chain(set_body("RETRYABLE").iter()) {
        if !requests.contains(&ev.as_str()) {
            wrong.push(format!(
                "the SDK sends or retries {ev:?}, which the server does not know"
            ));
        }
    }
    for ev in &requests {
        if !sent.iter().any(|s| s == ev) {
            wrong.push(format!("the SDK has no call sending {ev:?}"));
        }
    }
    // The SDK's own codes (errors.js, CLIENT_ERROR_CODES) must not shadow a server code.
    let errors = std::fs::read_to_string(root().join("web/sdk/errors.js")).unwrap_or_default();
    let client_codes: Vec<String> = {
        let start = errors
            .find("CLIENT_ERROR_CODES = Object.freeze([")
            .expect("CLIENT_ERROR_CODES in web/sdk/errors.js");
        let body = &errors[start..];
        let body = &body[..body.find("]);").expect("end of CLIENT_ERROR_CODES")];
        body.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let codes: Vec<&str> = confab::protocol::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    for code in &client_codes {
        if codes.contains(&code.as_str()) {
            wrong.push(format!(
                "the SDK's own error code {code:?} is also a server code"
            ));
        }
    }
    for code in set_body("TRANSIENT") {
        if !codes.contains(&code.as_str()) && !client_codes.contains(&code) {
            wrong.push(format!(
                "the SDK retries on error code {code:?}, which does not exist"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
