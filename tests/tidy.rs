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

/// A path under the repository root, with `/` separators (`src/chat/live.rs`).
fn relative(file: &Path) -> String {
    file.strip_prefix(root())
        .unwrap_or(file)
        .to_string_lossy()
        .replace('\\', "/")
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
        let rel = relative(&file);
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
        let rel = relative(&file);
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

/// Layers, lowest first, as ARCHITECTURE.md draws them: a module may use only modules of a
/// lower rank (issue 25, point 4).
const LAYERS: &[(&str, u8)] = &[
    ("model", 0),
    ("protocol", 1),
    ("config", 1),
    ("metrics", 2),
    ("memory", 3),
    ("auth", 3),
    ("store", 3),
    ("files", 4),
    ("search", 4),
    ("chat", 5),
    ("server", 6),
    ("app", 7),
];

/// The top-level module a file under src/ belongs to (`src/chat/live.rs` → `chat`).
fn top_module(rel: &str) -> Option<&str> {
    let rest = rel.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    Some(first.strip_suffix(".rs").unwrap_or(first))
}

#[test]
fn imports_point_down_the_layers() {
    let rank = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|(_, r)| *r);
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = relative(&file);
        let Some(module) = top_module(&rel) else {
            continue;
        };
        let Some(own) = rank(module) else {
            // main.rs and lib.rs wire everything.
            assert!(
                matches!(module, "main" | "lib"),
                "{rel}: module {module} is not in LAYERS (and ARCHITECTURE.md)"
            );
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name == module || name.is_empty() {
                continue;
            }
            match rank(&name) {
                Some(r) if r < own => {}
                Some(r) => wrong.push(format!("{rel} (layer {own}) uses {name} (layer {r})")),
                None => wrong.push(format!("{rel} uses crate::{name}, which is in no layer")),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Inside a module directory, the files use each other without cycles (`super::x` from one
/// file to another, the way the code names its siblings); `mod.rs` is the module's root and
/// not counted.
#[test]
fn sibling_files_use_each_other_without_cycles() {
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root().join("src")) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    let mut cycles = Vec::new();
    for dir in dirs {
        let mut names = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                    && p.extension().is_some_and(|x| x == "rs")
                    && stem != "mod"
                {
                    names.push(stem.to_owned());
                }
            }
        }
        let uses = |from: &str| -> Vec<String> {
            let text = std::fs::read_to_string(dir.join(format!("{from}.rs"))).unwrap_or_default();
            names
                .iter()
                .filter(|to| {
                    *to != from
                        && (text.contains(&format!("super::{to}::"))
                            || text.contains(&format!("super::{to}}}"))
                            || text.contains(&format!("super::{to},"))
                            || text.contains(&format!("super::{to} "))
                            || text.contains(&format!("super::{{{to}")))
                })
                .cloned()
                .collect()
        };
        let graph: Vec<(String, Vec<String>)> =
            names.iter().map(|n| (n.clone(), uses(n))).collect();
        // Depth-first search for a back edge.
        fn visit(
            n: &str,
            graph: &[(String, Vec<String>)],
            path: &mut Vec<String>,
            done: &mut Vec<String>,
            found: &mut Vec<String>,
        ) {
            if done.iter().any(|d| d == n) {
                return;
            }
            if let Some(at) = path.iter().position(|p| p == n) {
                found.push(format!("{} -> {n}", path[at..].join(" -> ")));
                return;
            }
            path.push(n.to_owned());
            if let Some((_, next)) = graph.iter().find(|(g, _)| g == n) {
                for m in next {
                    visit(m, graph, path, done, found);
                }
            }
            path.pop();
            done.push(n.to_owned());
        }
        let mut done = Vec::new();
        let mut found = Vec::new();
        for (n, _) in &graph {
            visit(n, &graph, &mut Vec::new(), &mut done, &mut found);
        }
        let dir_name = dir
            .file_name()
            .and_then(|d| d.to_str())
            .unwrap_or("?")
            .to_owned();
        cycles.extend(found.into_iter().map(|c| format!("src/{dir_name}: {c}")));
    }
    assert!(cycles.is_empty(), "{cycles:#?}");
}
