//! Files (issue 4): uploads stored once by content, shared in messages, downloaded under the
//! rooms' access rules with any of three credentials, served safely, thumbnailed within decoder
//! limits, bounded by size, quota, disk floor and rate, collected when nothing shares them.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use image::{
    DynamicImage, ExtendedColorType, GenericImageView, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::support::{
    Client, Options, RawReply, Reply, Server, TIMEOUT, assert_message_shape, id_of,
    read_http_response, unique,
};

/// An id no upload ever had (2^62): the reference answer for "does not exist".
const UNKNOWN_ID: &str = "4611686018427387904";

// ---------------------------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `n` random bytes behind a fixed text prefix (so no file-type signature matches by chance).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    let prefix = b"confab test data, no known format\n";
    let k = prefix.len().min(n);
    v[..k].copy_from_slice(&prefix[..k]);
    v
}

/// A cheap deterministic per-pixel hash.
fn noise(x: u32, y: u32) -> u32 {
    let mut v = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77).rotate_left(13);
    v ^= v >> 15;
    v = v.wrapping_mul(0x2C1B_3C6D);
    v ^= v >> 12;
    v & 0xff
}

/// A colour gradient; with `grain`, plus per-pixel noise so it does not compress to nothing.
fn picture(w: u32, h: u32, grain: bool) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let n = if grain { noise(x, y) / 8 } else { 0 };
        Rgb([
            (x * 200 / w + n).min(255) as u8,
            (y * 200 / h + n).min(255) as u8,
            ((x + y) * 200 / (w + h) + 31 - n).min(255) as u8,
        ])
    })
}

/// Encodes an RGB picture as JPEG, PNG, GIF or (lossless) WebP.
fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    if format == ImageFormat::Gif {
        let mut enc = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 30);
        enc.encode(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .expect("encode GIF");
        drop(enc);
    } else {
        DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut out, format)
            .unwrap_or_else(|e| panic!("encode {format:?}: {e}"));
    }
    out.into_inner()
}

/// A PNG with a real alpha channel (transparent on the left, opaque on the right).
fn transparent_png(w: u32, h: u32) -> Vec<u8> {
    let img = RgbaImage::from_fn(w, h, |x, y| {
        Rgba([(y * 255 / h) as u8, 90, 200, (x * 255 / w) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgba8(img)
        .write_to(&mut out, ImageFormat::Png)
        .expect("encode RGBA PNG");
    out.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A tiny, well-formed PNG whose header claims `w` x `h` 8-bit grey pixels: signature, IHDR (with
/// a correct CRC), one IDAT holding a valid zlib stream (a stored block of a few zero bytes),
/// IEND. A decoder that trusts the header allocates w*h bytes.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit, greyscale, deflate, no filter, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    let raw = vec![0u8; 1 + 1024]; // filter byte + the start of the first row
    let len = raw.len() as u16;
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A user: a token and a live WebSocket connection.
struct Person {
    token: String,
    ws: Client,
}

async fn person(server: &Server, id: &str) -> Person {
    let token = server.token(id, None);
    let ws = Client::connect(server, &token).await;
    Person { token, ws }
}

/// `owner` creates a private room and invites `others`; returns the room id.
async fn room_of(owner: &mut Person, others: &[&str], name: &str) -> String {
    let room = owner.ws.create_room(name, "private").await;
    for u in others {
        owner.ws.invite(&room, u).await;
    }
    room
}

fn fid(file: &Value) -> String {
    file["id"]
        .as_str()
        .unwrap_or_else(|| panic!("file.id is a string: {file}"))
        .to_string()
}

/// `send_message` with a file over WebSocket.
async fn share(c: &mut Client, room: &str, kind: &str, file_id: &str, content: &str) -> Reply {
    c.request(
        "send_message",
        json!({"room_id": room, "client_msg_id": format!("f-{}", unique()), "type": kind,
               "content": content, "file_id": file_id}),
    )
    .await
}

/// Like `share`, panicking unless acked; returns the message.
async fn share_ok(c: &mut Client, room: &str, kind: &str, file_id: &str, content: &str) -> Value {
    match share(c, room, kind, file_id, content).await {
        Ok(ack) => ack["message"].clone(),
        Err((code, message)) => {
            panic!("sharing {file_id} as {kind} in {room} failed: {code}: {message}")
        }
    }
}

/// Asserts the documented Upload record for `bytes` uploaded by `uploader` as `name`.
fn assert_upload(f: &Value, uploader: &str, name: &str, bytes: &[u8]) {
    let id = fid(f);
    id_of(&f["id"]);
    assert_eq!(f["name"], name, "upload.name: {f}");
    assert_eq!(f["size"], bytes.len() as u64, "upload.size: {f}");
    assert_eq!(
        f["sha256"],
        sha256_hex(bytes),
        "upload.sha256 is the SHA-256 of the bytes (lowercase hex): {f}"
    );
    assert_eq!(f["uploader_id"], uploader, "upload.uploader_id: {f}");
    assert!(f["created_at"].is_u64(), "upload.created_at: {f}");
    assert!(f["mime"].is_string(), "upload.mime: {f}");
    assert_eq!(f["url"], format!("/files/{id}"), "upload.url: {f}");
    let thumb = f["thumbnail"].as_str().unwrap_or("<missing>");
    assert!(
        ["pending", "ready", "failed", "none"].contains(&thumb),
        "upload.thumbnail is pending/ready/failed/none: {f}"
    );
    for key in ["width", "height", "thumbnail_url"] {
        assert!(
            f.get(key).is_some(),
            "upload.{key} is present (maybe null): {f}"
        );
    }
}

/// Polls `GET /api/files/{id}` (bounded, 10 s) until its thumbnail is no longer `pending`.
async fn settled(server: &Server, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server
            .download(&format!("/api/files/{id}"), Some(token))
            .await;
        assert_eq!(r.status, 200, "GET /api/files/{id}: {}", r.text());
        let f = r.json["file"].clone();
        if f["thumbnail"] != "pending" {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "the thumbnail of {id} is still pending after 10 s: {f}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a metric (bounded, 10 s) until `ok` holds; returns the last value.
async fn wait_metric(server: &Server, name: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = server.metric(name).await;
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name} is {v} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every regular file under `dir` (recursively) with its size.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out
}

/// Every path (files and directories) under `dir`, recursively.
fn paths_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

fn files_dir(server: &Server) -> PathBuf {
    server.data_dir.join("files")
}

/// How many files under `<data_dir>/files/` hold exactly `bytes`.
fn copies_on_disk(server: &Server, bytes: &[u8]) -> usize {
    files_under(&files_dir(server))
        .into_iter()
        .filter(|(p, len)| *len == bytes.len() as u64 && std::fs::read(p).is_ok_and(|b| b == bytes))
        .count()
}

/// Asserts a 200 download of exactly `bytes` (without printing them).
fn assert_body(r: &RawReply, bytes: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert!(
        r.body == bytes,
        "{what}: the body ({} bytes, sha256 {}) is not the uploaded bytes ({} bytes, sha256 {})",
        r.body.len(),
        sha256_hex(&r.body),
        bytes.len(),
        sha256_hex(bytes)
    );
}

/// The path (with query) of a URL the server handed out, absolute or not.
fn path_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            rest.find('/')
                .map(|j| rest[j..].to_string())
                .unwrap_or_else(|| "/".to_string())
        }
        None => url.to_string(),
    }
}

/// Changes one significant character of a signed URL (a digit or letter near its end, to
/// another of the same kind), so the URL still parses but its signature no longer matches.
fn tamper(url: &str) -> String {
    let mut chars: Vec<char> = url.chars().collect();
    let start = chars.len().saturating_sub(6);
    let i = (0..=start)
        .rev()
        .find(|&i| chars[i].is_ascii_alphanumeric())
        .expect("the URL has a letter or digit");
    chars[i] = match chars[i] {
        '0'..='8' => ((chars[i] as u8) + 1) as char,
        '9' => '0',
        'a'..='y' | 'A'..='Y' => ((chars[i] as u8) + 1) as char,
        'z' => 'a',
        _ => 'A',
    };
    chars.into_iter().collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn has_no_file(m: &Value) -> bool {
    m.get("file").is_none_or(Value::is_null)
}

/// Parses a Content-Disposition value (RFC 6266): the disposition type and its parameters,
/// quoted strings unescaped. Panics on anything malformed.
fn parse_disposition(cd: &str) -> (String, Vec<(String, String)>) {
    let chars: Vec<char> = cd.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i] == ' ' {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && !matches!(chars[*i], ';' | '=' | ' ' | '"') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    skip_ws(&mut i);
    let kind = token(&mut i).to_ascii_lowercase();
    let mut params = Vec::new();
    loop {
        skip_ws(&mut i);
        if i == chars.len() {
            break;
        }
        assert_eq!(
            chars[i], ';',
            "Content-Disposition: `;` expected at {i}: {cd}"
        );
        i += 1;
        skip_ws(&mut i);
        let name = token(&mut i).to_ascii_lowercase();
        assert!(
            !name.is_empty(),
            "Content-Disposition: a parameter name at {i}: {cd}"
        );
        assert!(
            i < chars.len() && chars[i] == '=',
            "Content-Disposition: `=` after {name}: {cd}"
        );
        i += 1;
        let value = if i < chars.len() && chars[i] == '"' {
            i += 1;
            let mut v = String::new();
            loop {
                assert!(
                    i < chars.len(),
                    "Content-Disposition: unterminated quoted string: {cd}"
                );
                match chars[i] {
                    '"' => {
                        i += 1;
                        break;
                    }
                    '\\' => {
                        assert!(
                            i + 1 < chars.len(),
                            "Content-Disposition: dangling escape: {cd}"
                        );
                        v.push(chars[i + 1]);
                        i += 2;
                    }
                    c => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            v
        } else {
            token(&mut i)
        };
        params.push((name, value));
    }
    (kind, params)
}

/// Decodes an RFC 5987 `filename*` value (`UTF-8''` + attr-chars and %XX); panics if it is not
/// one.
fn decode_ext_value(v: &str) -> String {
    let rest = v
        .strip_prefix("UTF-8''")
        .or_else(|| v.strip_prefix("utf-8''"))
        .unwrap_or_else(|| panic!("filename* starts with UTF-8'': {v:?}"));
    let bytes = rest.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .unwrap_or("");
            let byte = u8::from_str_radix(hex, 16)
                .unwrap_or_else(|_| panic!("filename*: bad percent escape at {i}: {v:?}"));
            out.push(byte);
            i += 3;
        } else {
            assert!(
                b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b),
                "filename*: {:?} must be percent-encoded: {v:?}",
                b as char
            );
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| panic!("filename* is not UTF-8: {v:?}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Issue 4: random bytes (with a Content-Length, and chunked) and a generated JPEG come back
/// byte-identical; the answer is `201 {"file": Upload}` with the SHA-256 of the bytes; the type
/// comes from the bytes, never from the request's Content-Type.
#[tokio::test]
async fn upload_and_download_round_trip() {
    let server = Server::start();
    let alice = server.token("alice", Some("Alice"));

    let blob = random_bytes(300_000);
    let f = server.upload_ok(&alice, "blob.bin", &blob).await;
    assert_upload(&f, "alice", "blob.bin", &blob);
    let id = fid(&f);
    assert_eq!(f["thumbnail"], "none", "random bytes get no thumbnail: {f}");
    assert!(
        f["thumbnail_url"].is_null(),
        "no thumbnail, no thumbnail_url: {f}"
    );
    assert!(
        f["width"].is_null() && f["height"].is_null(),
        "no image, no size: {f}"
    );
    assert!(
        !f["mime"].as_str().unwrap_or("").starts_with("image/"),
        "random bytes are not an image: {f}"
    );
    let got = server.download(&format!("/files/{id}"), Some(&alice)).await;
    assert_body(&got, &blob, "GET /files/{id} of random bytes");
    if let Some(len) = got.header("content-length") {
        assert_eq!(len, "300000", "Content-Length of the download");
    }
    let meta = server
        .download(&format!("/api/files/{id}"), Some(&alice))
        .await;
    assert_eq!(meta.status, 200, "GET /api/files/{id}: {}", meta.text());
    assert_upload(&meta.json["file"], "alice", "blob.bin", &blob);
    assert_eq!(
        meta.json["file"]["id"], f["id"],
        "GET /api/files/{id} is the same upload"
    );

    // Chunked transfer encoding, streamed in 16 KiB pieces.
    let streamed = random_bytes(250_000);
    let chunks: Vec<Bytes> = streamed.chunks(16384).map(Bytes::copy_from_slice).collect();
    let (r, _) = server
        .upload_chunked(&alice, "chunked.bin", chunks.into_iter())
        .await;
    let r = r.unwrap_or_else(|e| panic!("a chunked upload gets an answer: {e}"));
    assert_eq!(r.status, 201, "chunked upload: {}", r.text());
    assert_upload(&r.json["file"], "alice", "chunked.bin", &streamed);
    let got = server
        .download(&format!("/files/{}", fid(&r.json["file"])), Some(&alice))
        .await;
    assert_body(&got, &streamed, "download of the chunked upload");

    // A real JPEG.
    let jpeg = encode(&picture(640, 480, true), ImageFormat::Jpeg);
    let f = server.upload_ok(&alice, "holiday photo.jpg", &jpeg).await;
    assert_upload(&f, "alice", "holiday photo.jpg", &jpeg);
    assert_eq!(f["mime"], "image/jpeg", "a JPEG is image/jpeg: {f}");
    assert!(
        f["thumbnail"] == "pending" || f["thumbnail"] == "ready",
        "a JPEG's thumbnail is pending or ready: {f}"
    );
    let id = fid(&f);
    let f = settled(&server, &alice, &id).await;
    assert_eq!(
        (f["width"].as_u64(), f["height"].as_u64()),
        (Some(640), Some(480)),
        "JPEG size: {f}"
    );
    let got = server.download(&format!("/files/{id}"), Some(&alice)).await;
    assert_body(&got, &jpeg, "GET /files/{id} of a JPEG");

    // A PNG sent as text/plain is a PNG; text sent as image/jpeg is not an image.
    let png = encode(&picture(64, 48, false), ImageFormat::Png);
    let r = server
        .upload_raw(
            Some(&alice),
            Some("notes.txt"),
            &[("Content-Type", "text/plain")],
            &png,
        )
        .await;
    assert_eq!(r.status, 201, "PNG upload: {}", r.text());
    assert_eq!(
        r.json["file"]["mime"],
        "image/png",
        "the mime is sniffed from the bytes: {}",
        r.text()
    );
    let text = b"just some text, honestly, nothing else\n".repeat(20);
    let r = server
        .upload_raw(
            Some(&alice),
            Some("fake.jpg"),
            &[("Content-Type", "image/jpeg")],
            &text,
        )
        .await;
    assert_eq!(r.status, 201, "text upload: {}", r.text());
    let mime = r.json["file"]["mime"].as_str().unwrap_or("");
    assert!(
        !mime.starts_with("image/"),
        "text claiming to be a JPEG is not an image: {}",
        r.text()
    );
    assert_eq!(r.json["file"]["thumbnail"], "none", "{}", r.text());
}

/// Issue 4: the same bytes uploaded three times (twice by one user, once by another) are three
/// uploads with one SHA-256, stored once: `confab_files_blobs` grows by one and
/// `confab_files_disk_bytes` by the size once, and one file under `<data_dir>/files/` holds
/// them. Sharing the bytes grants no access to the other user's upload.
#[tokio::test]
async fn identical_bytes_are_stored_once() {
    let server = Server::start();
    let alice = server.token("alice", None);
    let bob = server.token("bob", None);
    let blobs0 = server.metric("confab_files_blobs").await;
    let disk0 = server.metric("confab_files_disk_bytes").await;

    let bytes = random_bytes(200_000);
    let a1 = server.upload_ok(&alice, "a.bin", &bytes).await;
    let a2 = server.upload_ok(&alice, "again.bin", &bytes).await;
    let b1 = server.upload_ok(&bob, "b.bin", &bytes).await;
    for f in [&a1, &a2, &b1] {
        assert_eq!(f["sha256"], sha256_hex(&bytes), "sha256: {f}");
        assert_eq!(f["size"], 200_000, "size: {f}");
    }
    assert_eq!(b1["uploader_id"], "bob", "bob's upload is bob's: {b1}");
    assert_ne!(a1["id"], b1["id"], "two users' uploads are two uploads");

    wait_metric(&server, "confab_files_blobs", "one new blob", |v| {
        v == blobs0 + 1.0
    })
    .await;
    wait_metric(
        &server,
        "confab_files_disk_bytes",
        "the bytes count once",
        |v| v == disk0 + 200_000.0,
    )
    .await;
    assert_eq!(
        copies_on_disk(&server, &bytes),
        1,
        "one copy of the bytes under files/"
    );

    // Each sees their own; identical content grants nothing across users.
    let got = server
        .download(&format!("/files/{}", fid(&b1)), Some(&bob))
        .await;
    assert_body(&got, &bytes, "bob downloads his upload");
    let got = server
        .download(&format!("/files/{}", fid(&a1)), Some(&alice))
        .await;
    assert_body(&got, &bytes, "alice downloads hers");
    let r = server
        .download(&format!("/files/{}", fid(&a1)), Some(&bob))
        .await;
    r.assert_error(
        404,
        "not_found",
        "bob downloads alice's unshared upload of the same bytes",
    );

    // Different bytes are a second blob.
    let other = random_bytes(1000);
    server.upload_ok(&bob, "other.bin", &other).await;
    wait_metric(&server, "confab_files_blobs", "a second blob", |v| {
        v == blobs0 + 2.0
    })
    .await;
    wait_metric(&server, "confab_files_disk_bytes", "both contents", |v| {
        v == disk0 + 201_000.0
    })
    .await;
}

/// Issue 4: with `files.max_file_bytes` = 1,000,000, a head announcing 50 MB (no body sent) is
/// answered `413 too_large` at once; a chunked body running past the limit is cut off with
/// `413 too_large` long before its end; nothing of either is stored; exactly the limit is fine.
#[tokio::test]
async fn oversize_uploads_are_refused_early() {
    let server = Server::start_with(Options::env(&[("CONFAB_FILES__MAX_FILE_BYTES", "1000000")]));
    let alice = server.token("alice", None);

    for announced in ["50000000", "1000001"] {
        let mut s = server.tcp().await;
        let head = format!(
            "POST /api/files?name=big.bin HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {alice}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n",
            server.port
        );
        s.write_all(head.as_bytes()).await.expect("send the head");
        let r = tokio::time::timeout(Duration::from_secs(5), read_http_response(&mut s, false))
            .await
            .unwrap_or_else(|_| {
                panic!("Content-Length {announced}: no answer within 5 s while the body was still unsent")
            })
            .unwrap_or_else(|e| panic!("Content-Length {announced}: {e}"));
        r.assert_error(
            413,
            "too_large",
            &format!("Content-Length {announced} with no body"),
        );
    }

    // 48 MiB chunked: far more than socket buffers hold, so a server that reads on is caught.
    let chunk = Bytes::from(random_bytes(65536));
    let total = 768 * 65536;
    let (r, written) = server
        .upload_chunked(&alice, "stream.bin", std::iter::repeat_n(chunk, 768))
        .await;
    let r = r.unwrap_or_else(|e| {
        panic!("a chunked upload past the limit is answered (413) before the connection ends: {e}")
    });
    r.assert_error(413, "too_large", "chunked upload past max_file_bytes");
    assert!(
        written < total,
        "the server should stop reading a chunked body past the limit, yet took all {written} bytes"
    );

    wait_metric(&server, "confab_files_uploads", "nothing stored", |v| {
        v == 0.0
    })
    .await;
    wait_metric(&server, "confab_files_blobs", "nothing stored", |v| {
        v == 0.0
    })
    .await;
    wait_metric(&server, "confab_files_disk_bytes", "nothing stored", |v| {
        v == 0.0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: u64 = files_under(&files_dir(&server))
            .iter()
            .map(|(_, n)| n)
            .sum();
        if left < 64 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a refused upload left {left} bytes under files/: {:?}",
            files_under(&files_dir(&server))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Exactly the limit is accepted; the server is still fine.
    let exact = random_bytes(1_000_000);
    let f = server.upload_ok(&alice, "exact.bin", &exact).await;
    assert_upload(&f, "alice", "exact.bin", &exact);
    assert_eq!(server.get("/healthz", None).await.status, 200);
}

/// Issue 4: past `files.user_quota_bytes` an upload gets `413 quota_exceeded` with a message
/// that says so; what fits still fits; another user is not affected.
#[tokio::test]
async fn user_quota() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_FILES__USER_QUOTA_BYTES",
        "250000",
    )]));
    let alice = server.token("alice", None);
    let bob = server.token("bob", None);

    server
        .upload_ok(&alice, "one.bin", &random_bytes(100_000))
        .await;
    server
        .upload_ok(&alice, "two.bin", &random_bytes(100_000))
        .await;
    let r = server
        .upload(&alice, "three.bin", &random_bytes(100_000))
        .await;
    r.assert_error(
        413,
        "quota_exceeded",
        "a third 100 KB upload under a 250 KB quota",
    );
    let message = r.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.to_lowercase().contains("quota"),
        "the message says it is the quota: {}",
        r.text()
    );

    // 40 KB still fits (240 KB), 20 KB more does not.
    server
        .upload_ok(&alice, "small.bin", &random_bytes(40_000))
        .await;
    let r = server
        .upload(&alice, "more.bin", &random_bytes(20_000))
        .await;
    r.assert_error(413, "quota_exceeded", "20 KB more past the quota");

    server
        .upload_ok(&bob, "bobs.bin", &random_bytes(100_000))
        .await;
    wait_metric(
        &server,
        "confab_files_uploads",
        "refused uploads are not stored",
        |v| v == 4.0,
    )
    .await;
    wait_metric(
        &server,
        "confab_files_disk_bytes",
        "refused uploads take no disk",
        |v| v == 340_000.0,
    )
    .await;
}

/// Issue 4: an upload that would leave less than `files.min_free_disk_bytes` free is refused
/// with `507 insufficient_storage`, and nothing is stored.
#[tokio::test]
async fn disk_floor() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_FILES__MIN_FREE_DISK_BYTES",
        "1000000000000000000",
    )]));
    let alice = server.token("alice", None);
    let r = server
        .upload(&alice, "small.bin", &random_bytes(1000))
        .await;
    r.assert_error(
        507,
        "insufficient_storage",
        "upload with a 10^18-byte free-disk floor",
    );
    wait_metric(&server, "confab_files_uploads", "nothing stored", |v| {
        v == 0.0
    })
    .await;
    assert_eq!(server.get("/healthz", None).await.status, 200);
}

/// Issue 4: an `image` message carries the upload's `file` (id, name, size, mime, width, height,
/// the thumbnail's size, url, thumbnail_url) to every member, in the ack, the broadcast and
/// history; a `file` message may have an empty caption; REST sends take `file_id` too; and the
/// rules: file/image need a `file_id`, text must not have one, only your own upload, image
/// needs an image.
#[tokio::test]
async fn sharing_files_in_messages() {
    let server = Server::start();
    let mut alice = person(&server, "alice").await;
    let mut bob = person(&server, "bob").await;
    let room = room_of(&mut alice, &["bob"], "photos").await;

    let jpeg = encode(&picture(640, 480, true), ImageFormat::Jpeg);
    let up = server
        .upload_ok(&alice.token, "holiday photo.jpg", &jpeg)
        .await;
    let id = fid(&up);
    // Sent at once: the send waits for the thumbnail (files.thumbnail_wait_ms).
    let ack = alice
        .ws
        .request(
            "send_message",
            json!({"room_id": room, "client_msg_id": "img-1", "type": "image",
                   "content": "look!", "file_id": id}),
        )
        .await
        .unwrap_or_else(|(c, m)| panic!("sending an image message failed: {c}: {m}"));
    let sent = ack["message"].clone();
    assert_message_shape(&sent);
    assert_eq!(sent["type"], "image");
    assert_eq!(sent["content"], "look!");
    let file = &sent["file"];
    assert_eq!(file["id"], id.as_str(), "message.file.id: {sent}");
    assert_eq!(
        file["name"], "holiday photo.jpg",
        "message.file.name: {sent}"
    );
    assert_eq!(file["size"], jpeg.len() as u64, "message.file.size: {sent}");
    assert_eq!(file["mime"], "image/jpeg", "message.file.mime: {sent}");
    assert_eq!(
        (file["width"].as_u64(), file["height"].as_u64()),
        (Some(640), Some(480)),
        "{sent}"
    );
    assert_eq!(
        file["url"],
        format!("/files/{id}"),
        "message.file.url: {sent}"
    );
    assert_eq!(
        file["thumbnail_url"],
        format!("/files/{id}/thumb"),
        "message.file.thumbnail_url: {sent}"
    );
    let (tw, th) = (
        file["thumbnail"]["width"]
            .as_u64()
            .unwrap_or_else(|| panic!("file.thumbnail.width: {sent}")),
        file["thumbnail"]["height"]
            .as_u64()
            .unwrap_or_else(|| panic!("file.thumbnail.height: {sent}")),
    );
    assert!(
        tw.max(th) <= 320 && tw.min(th) > 0,
        "thumbnail within 320 px: {tw}x{th}"
    );
    assert!(
        (tw * 480).abs_diff(th * 640) <= 640,
        "the thumbnail keeps the aspect ratio: {tw}x{th}"
    );
    assert_eq!(
        bob.ws.next_message_where(|m| m["id"] == sent["id"]).await,
        sent,
        "bob's copy"
    );
    assert_eq!(
        alice.ws.next_message_where(|m| m["id"] == sent["id"]).await,
        sent,
        "alice's copy"
    );
    let (page, _) = bob.ws.history(json!({"room_id": room})).await;
    assert_eq!(
        page.iter().find(|m| m["id"] == sent["id"]),
        Some(&sent),
        "history carries the file"
    );

    // A `file` message with an empty caption.
    let doc = random_bytes(5000);
    let doc_up = server.upload_ok(&alice.token, "report.bin", &doc).await;
    let doc_id = fid(&doc_up);
    let m = share_ok(&mut alice.ws, &room, "file", &doc_id, "").await;
    assert_eq!(m["content"], "", "an empty caption is allowed: {m}");
    assert_eq!(m["file"]["id"], doc_id.as_str(), "{m}");
    assert_eq!(m["file"]["size"], 5000, "{m}");
    assert!(
        m["file"]["thumbnail"].is_null(),
        "no thumbnail for a non-image: {m}"
    );
    assert!(
        m["file"]["thumbnail_url"].is_null(),
        "no thumbnail_url for a non-image: {m}"
    );
    assert_eq!(bob.ws.next_message_where(|x| x["id"] == m["id"]).await, m);

    // Text messages have no `file` field.
    let t = alice.ws.say(&room, "plain").await;
    assert!(
        t.get("file").is_none(),
        "a text message has no file field: {t}"
    );

    // The rules.
    let bobs = server
        .upload_ok(&bob.token, "bobs.bin", &random_bytes(2000))
        .await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "file without file_id",
            json!({"type": "file", "content": "x"}),
            "invalid_payload",
        ),
        (
            "image without file_id",
            json!({"type": "image", "content": "x"}),
            "invalid_payload",
        ),
        (
            "text with a file_id",
            json!({"type": "text", "content": "x", "file_id": doc_id}),
            "invalid_payload",
        ),
        (
            "file_id not a decimal id",
            json!({"type": "file", "content": "x", "file_id": "abc"}),
            "invalid_payload",
        ),
        (
            "file_id of the wrong type",
            json!({"type": "file", "content": "x", "file_id": true}),
            "invalid_payload",
        ),
        (
            "image of a non-image",
            json!({"type": "image", "content": "x", "file_id": doc_id}),
            "invalid_payload",
        ),
        (
            "another user's upload",
            json!({"type": "file", "content": "x", "file_id": fid(&bobs)}),
            "not_found",
        ),
        (
            "an unknown upload",
            json!({"type": "file", "content": "x", "file_id": UNKNOWN_ID}),
            "not_found",
        ),
    ];
    for (what, extra, code) in cases {
        let mut data = json!({"room_id": room, "client_msg_id": format!("bad-{}", unique())});
        for (k, v) in extra.as_object().expect("object") {
            data[k] = v.clone();
        }
        match alice.ws.request("send_message", data).await {
            Ok(ack) => panic!("{what}: expected {code}, got an ack: {ack}"),
            Err((got, message)) => assert_eq!(got, code, "{what}: {message}"),
        }
    }

    // REST.
    let posted = server
        .post(
            &format!("/api/rooms/{room}/messages"),
            Some(&alice.token),
            &json!({"client_msg_id": "rest-file", "type": "file", "content": "via rest", "file_id": doc_id}),
        )
        .await;
    assert_eq!(
        posted.status, 201,
        "REST send with a file_id: {}",
        posted.text
    );
    assert_eq!(
        posted.json["message"]["file"]["id"],
        doc_id.as_str(),
        "{}",
        posted.text
    );
    assert_eq!(
        bob.ws
            .next_message_where(|m| m["client_msg_id"] == "rest-file")
            .await,
        posted.json["message"]
    );
    let bad = server
        .post(
            &format!("/api/rooms/{room}/messages"),
            Some(&alice.token),
            &json!({"client_msg_id": "rest-bad", "type": "text", "content": "x", "file_id": doc_id}),
        )
        .await;
    bad.assert_error(400, "invalid_payload", "REST text message with a file_id");
    let bad = server
        .post(
            &format!("/api/rooms/{room}/messages"),
            Some(&alice.token),
            &json!({"client_msg_id": "rest-bad2", "type": "file", "content": "x", "file_id": fid(&bobs)}),
        )
        .await;
    bad.assert_error(404, "not_found", "REST send of another user's upload");
}

/// Issue 4: after alice shares a file in room R, members of R download it with a Bearer token,
/// the `confab_files` cookie (HttpOnly, SameSite=Strict) or a signed URL (no header at all);
/// a non-member, a user who shares only another room with alice, and a member who left get the
/// same 404 as an unknown id, their cookies and signed URLs included; no credentials is 401; a
/// tampered signed URL or cookie is refused.
#[tokio::test]
async fn downloads_follow_room_membership() {
    let server = Server::start();
    let mut alice = person(&server, "alice").await;
    let bob = person(&server, "bob").await;
    let mut dave = person(&server, "dave").await;
    let carol = person(&server, "carol").await;
    let eve = server.token("eve", None);
    let room = room_of(&mut alice, &["bob", "dave"], "team").await;
    let _other = room_of(&mut alice, &["carol"], "elsewhere").await;

    let doc = random_bytes(20_000);
    let f = fid(&server.upload_ok(&alice.token, "report.bin", &doc).await);
    share_ok(&mut alice.ws, &room, "file", &f, "the report").await;
    let jpeg = encode(&picture(480, 360, true), ImageFormat::Jpeg);
    let g = fid(&server.upload_ok(&alice.token, "pic.jpg", &jpeg).await);
    share_ok(&mut alice.ws, &room, "image", &g, "a picture").await;
    assert_eq!(
        settled(&server, &alice.token, &g).await["thumbnail"],
        "ready"
    );

    // Bearer.
    for (who, token) in [
        ("alice", &alice.token),
        ("bob", &bob.token),
        ("dave", &dave.token),
    ] {
        let got = server.download(&format!("/files/{f}"), Some(token)).await;
        assert_body(
            &got,
            &doc,
            &format!("{who} (Bearer) downloads the shared file"),
        );
        let meta = server
            .download(&format!("/api/files/{f}"), Some(token))
            .await;
        assert_eq!(
            meta.status,
            200,
            "{who}: GET /api/files/{f}: {}",
            meta.text()
        );
        let thumb = server
            .download(&format!("/files/{g}/thumb"), Some(token))
            .await;
        assert_eq!(thumb.status, 200, "{who}: the thumbnail: {}", thumb.text());
    }

    // Outsiders get exactly what an unknown id gets.
    let unknown = server
        .download(&format!("/files/{UNKNOWN_ID}"), Some(&eve))
        .await;
    unknown.assert_error(404, "not_found", "an unknown id");
    for (who, token) in [
        ("carol (another room)", &carol.token),
        ("eve (no room)", &eve),
    ] {
        for path in [
            format!("/files/{f}"),
            format!("/files/{g}"),
            format!("/files/{g}/thumb"),
            format!("/api/files/{f}"),
            format!("/api/files/{f}/url"),
        ] {
            let r = server.download(&path, Some(token)).await;
            r.assert_error(404, "not_found", &format!("{who}: GET {path}"));
            if path.starts_with("/files/") {
                assert_eq!(
                    r.json, unknown.json,
                    "{who}: GET {path} answers exactly as an unknown id"
                );
            }
        }
    }

    // No credentials, or a bad token.
    for path in [
        format!("/files/{f}"),
        format!("/files/{g}/thumb"),
        format!("/api/files/{f}"),
    ] {
        server.download(&path, None).await.assert_error(
            401,
            "unauthorized",
            &format!("GET {path} without credentials"),
        );
        server
            .download(&path, Some("not.a.token"))
            .await
            .assert_error(
                401,
                "unauthorized",
                &format!("GET {path} with a garbage token"),
            );
    }

    // The cookie.
    let cookie_of = |token: String| {
        let server = &server;
        async move {
            let r = server
                .request_bytes(
                    Method::POST,
                    "/api/files/cookie",
                    &[("authorization", &format!("Bearer {token}"))],
                    Vec::new(),
                )
                .await;
            assert_eq!(r.status, 204, "POST /api/files/cookie: {}", r.text());
            let set = r
                .header_all("set-cookie")
                .into_iter()
                .find(|c| c.trim_start().starts_with("confab_files="))
                .unwrap_or_else(|| panic!("no confab_files cookie set: {:?}", r.headers))
                .to_string();
            let attrs: Vec<String> = set
                .split(';')
                .map(|a| a.trim().to_ascii_lowercase())
                .collect();
            assert!(
                attrs.iter().any(|a| a == "httponly"),
                "the cookie is HttpOnly: {set}"
            );
            assert!(
                attrs.iter().any(|a| a == "samesite=strict"),
                "the cookie is SameSite=Strict: {set}"
            );
            assert!(
                attrs.iter().any(|a| a == "path=/files"),
                "the cookie is for Path=/files: {set}"
            );
            set.split(';')
                .next()
                .expect("name=value")
                .trim()
                .to_string()
        }
    };
    let bob_cookie = cookie_of(bob.token.clone()).await;
    let got = server
        .fetch(
            Method::GET,
            &format!("/files/{f}"),
            None,
            &[("cookie", &bob_cookie)],
        )
        .await;
    assert_body(&got, &doc, "bob downloads with the cookie alone");
    let thumb = server
        .fetch(
            Method::GET,
            &format!("/files/{g}/thumb"),
            None,
            &[("cookie", &bob_cookie)],
        )
        .await;
    assert_eq!(
        thumb.status,
        200,
        "bob's cookie fetches the thumbnail: {}",
        thumb.text()
    );
    image::load_from_memory(&thumb.body).expect("the thumbnail is an image");
    let carol_cookie = cookie_of(carol.token.clone()).await;
    server
        .fetch(
            Method::GET,
            &format!("/files/{f}"),
            None,
            &[("cookie", &carol_cookie)],
        )
        .await
        .assert_error(404, "not_found", "carol's cookie");
    let forged = tamper(&bob_cookie);
    let r = server
        .fetch(
            Method::GET,
            &format!("/files/{f}"),
            None,
            &[("cookie", &forged)],
        )
        .await;
    assert!(
        matches!(r.status, 401 | 404),
        "a tampered cookie is refused (401/404), got {} {}",
        r.status,
        r.text()
    );

    // Signed URLs.
    let before = now_ms();
    let r = server
        .download(&format!("/api/files/{f}/url"), Some(&bob.token))
        .await;
    assert_eq!(r.status, 200, "bob asks for a signed URL: {}", r.text());
    let url = path_of(
        r.json["url"]
            .as_str()
            .unwrap_or_else(|| panic!("url: {}", r.text())),
    );
    assert!(
        r.json["thumbnail_url"].is_null(),
        "no thumbnail_url for a non-image: {}",
        r.text()
    );
    let expires = r.json["expires_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("expires_at: {}", r.text()));
    assert!(
        expires > before && expires <= now_ms() + 660_000,
        "expires_at is ms, within signed_url_ttl_secs (600 s): {expires}"
    );
    assert!(!url.contains(&bob.token), "no token in a URL: {url}");
    assert_body(
        &server.download(&url, None).await,
        &doc,
        "the signed URL, no header",
    );
    let r = server.download(&tamper(&url), None).await;
    assert!(
        matches!(r.status, 401 | 404),
        "a tampered signed URL is refused (401/404), got {} {}",
        r.status,
        r.text()
    );
    let r = server
        .download(&format!("/api/files/{g}/url"), Some(&bob.token))
        .await;
    assert_eq!(r.status, 200, "signed URL of the image: {}", r.text());
    let thumb_url = path_of(
        r.json["thumbnail_url"]
            .as_str()
            .unwrap_or_else(|| panic!("thumbnail_url: {}", r.text())),
    );
    let thumb = server.download(&thumb_url, None).await;
    assert_eq!(
        thumb.status,
        200,
        "the signed thumbnail URL: {}",
        thumb.text()
    );
    image::load_from_memory(&thumb.body).expect("the signed thumbnail is an image");
    // Issue 24, point 7: a signature opens only the resource it was made for.
    let original_with_thumb_sig = thumb_url.replacen("/thumb?", "?", 1);
    assert_ne!(original_with_thumb_sig, thumb_url, "{thumb_url}");
    let r = server.download(&original_with_thumb_sig, None).await;
    assert_eq!(
        r.status,
        401,
        "the thumbnail's signature does not open the original: {}",
        r.text()
    );

    // Dave leaves: his token, cookie and signed URL stop working at once; bob's do not.
    let dave_cookie = cookie_of(dave.token.clone()).await;
    let r = server
        .download(&format!("/api/files/{f}/url"), Some(&dave.token))
        .await;
    assert_eq!(r.status, 200, "dave's signed URL: {}", r.text());
    let dave_url = path_of(r.json["url"].as_str().expect("url"));
    assert_body(
        &server.download(&dave_url, None).await,
        &doc,
        "dave's signed URL while a member",
    );
    dave.ws.ok("leave_room", json!({"room_id": room})).await;
    for (what, r) in [
        (
            "Bearer",
            server
                .download(&format!("/files/{f}"), Some(&dave.token))
                .await,
        ),
        (
            "Bearer thumb",
            server
                .download(&format!("/files/{g}/thumb"), Some(&dave.token))
                .await,
        ),
        (
            "metadata",
            server
                .download(&format!("/api/files/{f}"), Some(&dave.token))
                .await,
        ),
        (
            "cookie",
            server
                .fetch(
                    Method::GET,
                    &format!("/files/{f}"),
                    None,
                    &[("cookie", &dave_cookie)],
                )
                .await,
        ),
        ("signed URL", server.download(&dave_url, None).await),
    ] {
        r.assert_error(404, "not_found", &format!("dave after leaving, {what}"));
    }
    assert_body(
        &server.download(&url, None).await,
        &doc,
        "bob's signed URL still works",
    );
    assert_body(
        &server
            .download(&format!("/files/{f}"), Some(&bob.token))
            .await,
        &doc,
        "bob's token still works",
    );
}

/// Issue 4: SVG, HTML and plain text are served as `application/octet-stream` attachments;
/// a JPEG (and its thumbnail) inline as image/jpeg; every answer has nosniff and a sandboxing CSP.
#[tokio::test]
async fn active_content_is_served_as_an_attachment() {
    let server = Server::start();
    let alice = server.token("alice", None);
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>"#.to_vec();
    let html = b"<!DOCTYPE html><html><head><script>alert(document.cookie)</script></head><body>hi</body></html>".to_vec();
    let text = b"plain text notes\n".to_vec();
    let check_common = |r: &RawReply, what: &str| {
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{what}: nosniff: {:?}",
            r.headers
        );
        let csp = r
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{what}: no CSP: {:?}", r.headers));
        assert!(csp.contains("sandbox"), "{what}: the CSP sandboxes: {csp}");
        assert!(
            csp.contains("default-src 'none'"),
            "{what}: the CSP is default-src 'none': {csp}"
        );
    };
    for (name, bytes, claimed) in [
        ("pic.svg", &svg, "image/svg+xml"),
        ("page.html", &html, "text/html"),
        ("notes.txt", &text, "text/plain"),
    ] {
        let r = server
            .upload_raw(
                Some(&alice),
                Some(name),
                &[("Content-Type", claimed)],
                bytes,
            )
            .await;
        assert_eq!(r.status, 201, "upload {name}: {}", r.text());
        let id = fid(&r.json["file"]);
        let got = server.download(&format!("/files/{id}"), Some(&alice)).await;
        assert_body(&got, bytes, name);
        check_common(&got, name);
        let ct = got
            .header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            ct.starts_with("application/octet-stream"),
            "{name} is served as application/octet-stream, not {ct:?}"
        );
        assert!(
            !ct.contains("html") && !ct.contains("svg") && !ct.contains("xml"),
            "{name}: {ct}"
        );
        let cd = got
            .header("content-disposition")
            .unwrap_or_else(|| panic!("{name}: no Content-Disposition: {:?}", got.headers));
        assert!(
            cd.to_ascii_lowercase().starts_with("attachment"),
            "{name} is an attachment: {cd}"
        );
        let head = server
            .fetch(Method::HEAD, &format!("/files/{id}"), Some(&alice), &[])
            .await;
        assert_eq!(head.status, 200, "HEAD {name}");
        check_common(&head, &format!("HEAD {name}"));
        assert!(
            head.header("content-disposition")
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("attachment")),
            "HEAD {name} is an attachment too: {:?}",
            head.headers
        );
    }

    let jpeg = encode(&picture(480, 360, true), ImageFormat::Jpeg);
    let id = fid(&server.upload_ok(&alice, "photo.jpg", &jpeg).await);
    let got = server.download(&format!("/files/{id}"), Some(&alice)).await;
    assert_body(&got, &jpeg, "the JPEG");
    check_common(&got, "the JPEG");
    assert_eq!(
        got.header("content-type"),
        Some("image/jpeg"),
        "the JPEG's type"
    );
    if let Some(cd) = got.header("content-disposition") {
        assert!(
            cd.to_ascii_lowercase().starts_with("inline"),
            "a JPEG is served inline: {cd}"
        );
    }
    assert_eq!(settled(&server, &alice, &id).await["thumbnail"], "ready");
    let thumb = server
        .download(&format!("/files/{id}/thumb"), Some(&alice))
        .await;
    assert_eq!(thumb.status, 200, "the thumbnail: {}", thumb.text());
    check_common(&thumb, "the thumbnail");
    assert_eq!(
        thumb.header("content-type"),
        Some("image/jpeg"),
        "a JPEG's thumbnail is a JPEG"
    );
}

/// Issue 4: hostile display names are accepted but cleaned (last path component, no `/`, `\`,
/// NUL or control characters, at most 255 bytes); nothing is written outside
/// `<data_dir>/files/`, no file on disk is named after them, and the download's
/// Content-Disposition is plain ASCII, parses (no injected parameters), and its
/// `filename*=UTF-8''...` decodes to the stored name.
#[tokio::test]
async fn hostile_names_are_cleaned() {
    let server = Server::start();
    let alice = server.token("alice", None);
    // Warm up: files/ exists and everything the first upload creates is there.
    server
        .upload_ok(&alice, "warmup.bin", &random_bytes(100))
        .await;
    let root = server
        .data_dir
        .parent()
        .expect("data dir has a parent")
        .to_path_buf();
    let before = paths_under(&root);

    // `z` is not a hex digit, so no hash-named file can contain "zzzz" by chance.
    let long: String = "z".repeat(4000) + &"ü".repeat(1000);
    let names: Vec<String> = vec![
        "../../etc/passwd".into(),
        "a\u{0}b.txt".into(),
        "..\\..\\win.ini".into(),
        long.clone(),
        "<script>.html".into(),
        "/absolute/evil.sh".into(),
        "line\r\nSet-Cookie: x=1.txt".into(),
        "C:\\temp\\evil.bat".into(),
        "tab\there\u{7f}\u{1b}[31m.txt".into(),
        "x\"; filename=\"evil.exe".into(),
        "100% \"quoted\"; a=b.txt".into(),
        "naïve résumé ✓.txt".into(),
    ];
    for (i, name) in names.iter().enumerate() {
        let body = format!("hostile name test {i}\n").into_bytes();
        let r = server.upload(&alice, name, &body).await;
        assert_eq!(
            r.status,
            201,
            "upload named {:?}: {}",
            name.chars().take(60).collect::<String>(),
            r.text()
        );
        let stored = r.json["file"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("file.name: {}", r.text()))
            .to_string();
        assert!(
            !stored.is_empty(),
            "the stored name of {name:?} is not empty"
        );
        assert!(
            stored.len() <= 255,
            "the stored name is at most 255 bytes, got {}",
            stored.len()
        );
        assert!(
            !stored.contains(['/', '\\', '\0']) && !stored.chars().any(char::is_control),
            "the stored name of {name:?} has no separators or control characters: {stored:?}"
        );
        match i {
            0 => assert_eq!(stored, "passwd", "the last path component"),
            1 => assert_eq!(stored, "ab.txt", "NUL dropped"),
            2 => assert!(stored.ends_with("win.ini"), "{stored:?}"),
            3 => assert!(
                stored.starts_with("zzzz"),
                "a long name is cut, not replaced: {stored:?}"
            ),
            _ => {}
        }
        let id = fid(&r.json["file"]);
        let got = server.download(&format!("/files/{id}"), Some(&alice)).await;
        assert_body(&got, &body, &format!("download of {stored:?}"));
        let cd = got
            .header("content-disposition")
            .unwrap_or_else(|| panic!("no Content-Disposition: {:?}", got.headers));
        assert!(
            cd.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "Content-Disposition is printable ASCII: {cd:?}"
        );
        assert!(cd.to_ascii_lowercase().starts_with("attachment"), "{cd}");
        assert!(
            cd.to_ascii_lowercase().contains("filename*=utf-8''"),
            "Content-Disposition has filename*=UTF-8'': {cd}"
        );
        let (kind, params) = parse_disposition(cd);
        assert_eq!(kind, "attachment", "{cd}");
        for param in ["filename", "filename*"] {
            assert_eq!(
                params.iter().filter(|(k, _)| k == param).count(),
                1,
                "exactly one {param} parameter (none injected): {cd}"
            );
        }
        let ext = &params
            .iter()
            .find(|(k, _)| k == "filename*")
            .expect("filename*")
            .1;
        assert_eq!(
            decode_ext_value(ext),
            stored,
            "filename* decodes to the stored name: {cd}"
        );
        let m = server
            .download(&format!("/api/files/{id}"), Some(&alice))
            .await;
        assert_eq!(
            m.json["file"]["name"],
            stored.as_str(),
            "GET /api/files/{id} shows the same name"
        );
    }

    let after = paths_under(&root);
    let files = files_dir(&server);
    let strays: Vec<&PathBuf> = after
        .difference(&before)
        .filter(|p| !p.starts_with(&files))
        .collect();
    assert!(
        strays.is_empty(),
        "uploads wrote outside <data_dir>/files/: {strays:?}"
    );
    let named: Vec<&PathBuf> = after
        .iter()
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            [
                "passwd", "win.ini", "evil", "script", "zzzz", "quoted", "sum",
            ]
            .iter()
            .any(|s| n.contains(s))
        })
        .collect();
    assert!(
        named.is_empty(),
        "files on disk are named by hash, never by the client: {named:?}"
    );
}

/// Issue 4: a PNG whose header claims 100000 x 100000 pixels and (with max_image_pixels =
/// 1,000,000) a real 2000 x 2000 PNG get `thumbnail: "failed"`, no thumbnail, but the original
/// still downloads, can still be shared, and the server keeps serving.
#[tokio::test]
async fn decompression_bombs_fail_cleanly() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_FILES__MAX_IMAGE_PIXELS",
        "1000000",
    )]));
    let mut alice = person(&server, "alice").await;
    let mut bob = person(&server, "bob").await;
    let room = room_of(&mut alice, &["bob"], "bombs").await;

    let bomb = bomb_png(100_000, 100_000);
    let big = encode(&picture(2000, 2000, false), ImageFormat::Png);
    for (name, bytes) in [("bomb.png", &bomb), ("big.png", &big)] {
        let up = server.upload_ok(&alice.token, name, bytes).await;
        assert_eq!(up["mime"], "image/png", "{name} is sniffed as a PNG: {up}");
        let id = fid(&up);
        let f = settled(&server, &alice.token, &id).await;
        assert_eq!(f["thumbnail"], "failed", "{name}: {f}");
        assert!(
            f["thumbnail_url"].is_null(),
            "{name}: no thumbnail_url once failed: {f}"
        );
        server
            .download(&format!("/files/{id}/thumb"), Some(&alice.token))
            .await
            .assert_error(404, "not_found", &format!("{name}: GET /thumb"));
        assert_body(
            &server
                .download(&format!("/files/{id}"), Some(&alice.token))
                .await,
            bytes,
            name,
        );
        let m = share_ok(&mut alice.ws, &room, "image", &id, name).await;
        assert!(
            m["file"]["thumbnail"].is_null(),
            "{name}: the message has no thumbnail: {m}"
        );
        assert!(
            m["file"]["thumbnail_url"].is_null(),
            "{name}: the message has no thumbnail_url: {m}"
        );
        bob.ws.next_message_where(|x| x["id"] == m["id"]).await;
    }
    let after = alice.ws.say(&room, "still here").await;
    bob.ws.next_message_where(|m| m["id"] == after["id"]).await;
    assert_eq!(
        server.get("/healthz", None).await.status,
        200,
        "the server survived"
    );
    let png = encode(&picture(400, 300, false), ImageFormat::Png);
    let id = fid(&server.upload_ok(&alice.token, "fine.png", &png).await);
    assert_eq!(
        settled(&server, &alice.token, &id).await["thumbnail"],
        "ready",
        "a normal PNG still gets one"
    );
}

/// Issue 4: a 1600x1200 JPEG gets a JPEG thumbnail within 320 px, far smaller than the original,
/// whose size the message carries; PNG, GIF and WebP get one too; a PNG with transparency
/// gets a PNG thumbnail that keeps it.
#[tokio::test]
async fn thumbnails_of_real_images() {
    let server = Server::start();
    let mut alice = person(&server, "alice").await;
    let room = alice.ws.create_room("gallery", "private").await;

    let jpeg = encode(&picture(1600, 1200, true), ImageFormat::Jpeg);
    let id = fid(&server.upload_ok(&alice.token, "big.jpg", &jpeg).await);
    let f = settled(&server, &alice.token, &id).await;
    assert_eq!(f["thumbnail"], "ready", "{f}");
    assert_eq!(
        (f["width"].as_u64(), f["height"].as_u64()),
        (Some(1600), Some(1200)),
        "{f}"
    );
    assert_eq!(f["thumbnail_url"], format!("/files/{id}/thumb"), "{f}");
    let thumb = server
        .download(&format!("/files/{id}/thumb"), Some(&alice.token))
        .await;
    assert_eq!(thumb.status, 200, "GET /thumb: {}", thumb.text());
    assert_eq!(
        thumb.header("content-type"),
        Some("image/jpeg"),
        "a JPEG's thumbnail is a JPEG"
    );
    let img = image::load_from_memory(&thumb.body).expect("the thumbnail decodes");
    let (tw, th) = img.dimensions();
    assert!(
        tw.max(th) <= 320,
        "the thumbnail's longest side is at most 320: {tw}x{th}"
    );
    assert!(
        (tw * 1200).abs_diff(th * 1600) <= 1600,
        "aspect ratio kept: {tw}x{th}"
    );
    assert!(
        thumb.body.len() * 4 < jpeg.len() && thumb.body.len() < 64 * 1024,
        "the thumbnail ({} bytes) is far smaller than the original ({} bytes)",
        thumb.body.len(),
        jpeg.len()
    );
    let m = share_ok(&mut alice.ws, &room, "image", &id, "").await;
    assert_eq!(
        m["file"]["thumbnail"],
        json!({"width": tw, "height": th}),
        "the message carries the thumbnail's size: {m}"
    );

    for (name, bytes, w, h) in [
        (
            "pic.png",
            encode(&picture(800, 600, true), ImageFormat::Png),
            800,
            600,
        ),
        (
            "pic.gif",
            encode(&picture(480, 360, false), ImageFormat::Gif),
            480,
            360,
        ),
        (
            "pic.webp",
            encode(&picture(800, 600, true), ImageFormat::WebP),
            800,
            600,
        ),
        ("alpha.png", transparent_png(640, 480), 640, 480),
    ] {
        let id = fid(&server.upload_ok(&alice.token, name, &bytes).await);
        let f = settled(&server, &alice.token, &id).await;
        assert_eq!(f["thumbnail"], "ready", "{name}: {f}");
        assert_eq!(
            (f["width"].as_u64(), f["height"].as_u64()),
            (Some(w), Some(h)),
            "{name}: {f}"
        );
        let thumb = server
            .download(&format!("/files/{id}/thumb"), Some(&alice.token))
            .await;
        assert_eq!(thumb.status, 200, "{name}: GET /thumb: {}", thumb.text());
        let img = image::load_from_memory(&thumb.body)
            .unwrap_or_else(|e| panic!("{name}: the thumbnail decodes: {e}"));
        let (tw, th) = img.dimensions();
        assert!(
            tw.max(th) <= 320 && tw.min(th) > 0,
            "{name}: thumbnail {tw}x{th}"
        );
        let ct = thumb.header("content-type").unwrap_or("");
        assert!(
            ct == "image/jpeg" || ct == "image/png",
            "{name}: thumbnail type {ct}"
        );
        if name == "alpha.png" {
            assert_eq!(ct, "image/png", "a transparent image's thumbnail is a PNG");
            assert!(
                img.color().has_alpha(),
                "the thumbnail keeps the transparency: {:?}",
                img.color()
            );
        }
        let m = share_ok(&mut alice.ws, &room, "image", &id, name).await;
        assert_eq!(
            m["file"]["thumbnail"],
            json!({"width": tw, "height": th}),
            "{name}: {m}"
        );
    }
}

/// Issue 4: ranges (`bytes=0-99`, `bytes=-10`, `bytes=4990-`, `bytes=100-199`) answer 206 with
/// Content-Range and exactly those bytes; past the end is 416 `bytes */N`; `Accept-Ranges: bytes` and a strong
/// ETag (the SHA-256); `If-None-Match` answers 304; HEAD has the headers and no body.
#[tokio::test]
async fn ranges_etags_and_head() {
    let server = Server::start();
    let alice = server.token("alice", None);
    let bytes = random_bytes(5000);
    let up = server.upload_ok(&alice, "ranged.bin", &bytes).await;
    let path = format!("/files/{}", fid(&up));
    let sha = sha256_hex(&bytes);

    let full = server.download(&path, Some(&alice)).await;
    assert_body(&full, &bytes, "the whole file");
    assert_eq!(
        full.header("accept-ranges"),
        Some("bytes"),
        "Accept-Ranges: {:?}",
        full.headers
    );
    let etag = full
        .header("etag")
        .unwrap_or_else(|| panic!("no ETag: {:?}", full.headers))
        .to_string();
    assert!(!etag.starts_with("W/"), "the ETag is strong: {etag}");
    assert!(etag.contains(&sha), "the ETag is the SHA-256: {etag}");

    for (range, start, end) in [
        ("bytes=0-99", 0usize, 99usize),
        ("bytes=-10", 4990, 4999),
        ("bytes=4990-", 4990, 4999),
        ("bytes=100-199", 100, 199),
    ] {
        let r = server
            .fetch(Method::GET, &path, Some(&alice), &[("range", range)])
            .await;
        assert_eq!(r.status, 206, "{range}: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/5000").as_str()),
            "{range}: {:?}",
            r.headers
        );
        assert!(
            r.body == bytes[start..=end],
            "{range}: exactly bytes {start}..={end}, got {} bytes",
            r.body.len()
        );
        if let Some(len) = r.header("content-length") {
            assert_eq!(
                len,
                (end - start + 1).to_string(),
                "{range}: Content-Length"
            );
        }
        assert_eq!(
            r.header("etag"),
            Some(etag.as_str()),
            "{range}: the ETag is on every answer"
        );
    }
    let r = server
        .fetch(
            Method::GET,
            &path,
            Some(&alice),
            &[("range", "bytes=5000-")],
        )
        .await;
    assert_eq!(r.status, 416, "a range past the end: {}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some("bytes */5000"),
        "{:?}",
        r.headers
    );

    let r = server
        .fetch(
            Method::GET,
            &path,
            Some(&alice),
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(r.status, 304, "If-None-Match with the ETag: {}", r.text());
    assert!(r.body.is_empty(), "a 304 has no body");
    let r = server
        .fetch(
            Method::GET,
            &path,
            Some(&alice),
            &[("if-none-match", "\"something-else\"")],
        )
        .await;
    assert_body(&r, &bytes, "If-None-Match with another ETag");

    let head = server.fetch(Method::HEAD, &path, Some(&alice), &[]).await;
    assert_eq!(head.status, 200, "HEAD: {:?}", head.headers);
    assert_eq!(
        head.header("content-length"),
        Some("5000"),
        "HEAD has the Content-Length: {:?}",
        head.headers
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert!(head.body.is_empty(), "HEAD has no body");
    // HEAD over a raw socket: the server itself sends no body bytes after the head.
    let mut s = server.tcp().await;
    let req = format!(
        "HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {alice}\r\nConnection: close\r\n\r\n",
        server.port
    );
    s.write_all(req.as_bytes()).await.expect("send HEAD");
    let mut raw = Vec::new();
    tokio::time::timeout(
        TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut raw),
    )
    .await
    .expect("HEAD answered and closed")
    .expect("read HEAD answer");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    assert_eq!(raw.len(), end, "HEAD sent {} body bytes", raw.len() - end);
}

/// Issue 4: deleting the only message sharing an upload hides it from everyone, the uploader
/// included (original, thumbnail, metadata, signed URL), and the `message_deleted` event carries
/// no file; an upload shared in two rooms stays reachable through the other one.
#[tokio::test]
async fn deleting_the_message_hides_the_file() {
    let server = Server::start();
    let mut alice = person(&server, "alice").await;
    let mut bob = person(&server, "bob").await;
    let carol = person(&server, "carol").await;
    let room = room_of(&mut alice, &["bob"], "r").await;
    let other = room_of(&mut alice, &["carol"], "s").await;

    let jpeg = encode(&picture(480, 360, true), ImageFormat::Jpeg);
    let f = fid(&server.upload_ok(&alice.token, "gone.jpg", &jpeg).await);
    let m = share_ok(&mut alice.ws, &room, "image", &f, "soon gone").await;
    assert_eq!(
        settled(&server, &alice.token, &f).await["thumbnail"],
        "ready"
    );
    assert_eq!(
        server
            .download(&format!("/files/{f}/thumb"), Some(&bob.token))
            .await
            .status,
        200,
        "bob sees the thumbnail"
    );
    assert_body(
        &server
            .download(&format!("/files/{f}"), Some(&bob.token))
            .await,
        &jpeg,
        "bob before the delete",
    );

    let ack = alice
        .ws
        .ok(
            "delete_message",
            json!({"room_id": room, "message_id": m["id"]}),
        )
        .await;
    assert!(
        has_no_file(&ack["message"]),
        "the delete ack's message has no file: {ack}"
    );
    let ev = bob
        .ws
        .next_event_where("message_deleted", |d| d["message"]["id"] == m["id"])
        .await;
    assert!(
        has_no_file(&ev["message"]),
        "message_deleted carries no file: {ev}"
    );
    for (who, token) in [("bob", &bob.token), ("alice (the uploader)", &alice.token)] {
        for path in [
            format!("/files/{f}"),
            format!("/files/{f}/thumb"),
            format!("/api/files/{f}"),
            format!("/api/files/{f}/url"),
        ] {
            server.download(&path, Some(token)).await.assert_error(
                404,
                "not_found",
                &format!("{who}: GET {path} after the delete"),
            );
        }
    }
    let (page, _) = bob.ws.history(json!({"room_id": room})).await;
    let deleted = page
        .iter()
        .find(|x| x["id"] == m["id"])
        .expect("the deleted message is in history");
    assert!(
        has_no_file(deleted),
        "history shows the deleted message without its file: {deleted}"
    );
    match share(&mut alice.ws, &room, "image", &f, "again").await {
        Err((code, _)) => assert_eq!(code, "not_found", "sharing a hidden upload again"),
        Ok(ack) => panic!("a hidden upload was shared again: {ack}"),
    }

    // Shared twice: deleting one keeps the other.
    let doc = random_bytes(3000);
    let g = fid(&server.upload_ok(&alice.token, "twice.bin", &doc).await);
    let in_r = share_ok(&mut alice.ws, &room, "file", &g, "in r").await;
    share_ok(&mut alice.ws, &other, "file", &g, "in s").await;
    assert_body(
        &server
            .download(&format!("/files/{g}"), Some(&bob.token))
            .await,
        &doc,
        "bob via r",
    );
    alice
        .ws
        .ok(
            "delete_message",
            json!({"room_id": room, "message_id": in_r["id"]}),
        )
        .await;
    assert_body(
        &server
            .download(&format!("/files/{g}"), Some(&carol.token))
            .await,
        &doc,
        "carol via s",
    );
    assert_body(
        &server
            .download(&format!("/files/{g}"), Some(&alice.token))
            .await,
        &doc,
        "alice, still shared in s",
    );
    server
        .download(&format!("/files/{g}"), Some(&bob.token))
        .await
        .assert_error(404, "not_found", "bob, whose room's message is gone");
}

/// Issue 4: with a 2 s grace (room for a loaded machine between an upload and its use) and 1 s
/// passes, an upload never shared and one whose message was deleted are collected (404, blobs
/// and disk bytes down, quota freed: a refused upload now fits), while an upload shared by a
/// live message stays.
#[tokio::test]
async fn unshared_uploads_are_collected() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_FILES__UNREFERENCED_GRACE_SECS", "2"),
        ("CONFAB_FILES__GC_INTERVAL_SECS", "1"),
        ("CONFAB_FILES__USER_QUOTA_BYTES", "250000"),
    ]));
    let mut alice = person(&server, "alice").await;
    let room = alice.ws.create_room("keep", "private").await;

    let kept = random_bytes(50_000);
    let s = fid(&server.upload_ok(&alice.token, "kept.bin", &kept).await);
    share_ok(&mut alice.ws, &room, "file", &s, "kept").await;
    let a = fid(&server
        .upload_ok(&alice.token, "never-shared.bin", &random_bytes(150_000))
        .await);
    // Refused at once, while `a` is surely within its grace.
    let b = random_bytes(100_000);
    server.upload(&alice.token, "b.bin", &b).await.assert_error(
        413,
        "quota_exceeded",
        "300 KB stored under a 250 KB quota",
    );

    let d = fid(&server
        .upload_ok(&alice.token, "deleted.bin", &random_bytes(30_000))
        .await);
    let dm = share_ok(&mut alice.ws, &room, "file", &d, "to delete").await;
    alice
        .ws
        .ok(
            "delete_message",
            json!({"room_id": room, "message_id": dm["id"]}),
        )
        .await;

    // Only the shared upload stays.
    wait_metric(&server, "confab_files_disk_bytes", "collected", |v| {
        v == 50_000.0
    })
    .await;
    wait_metric(&server, "confab_files_blobs", "collected", |v| v == 1.0).await;
    wait_metric(&server, "confab_files_uploads", "collected", |v| v == 1.0).await;
    server
        .download(&format!("/api/files/{a}"), Some(&alice.token))
        .await
        .assert_error(404, "not_found", "the never-shared upload");
    server
        .download(&format!("/api/files/{d}"), Some(&alice.token))
        .await
        .assert_error(404, "not_found", "the upload of a deleted message");
    assert_eq!(
        copies_on_disk(&server, &kept),
        1,
        "the kept upload's bytes are on disk"
    );

    // `a` is younger than `s`, so the pass that took `a` had `s` past its grace too.
    let meta = server
        .download(&format!("/api/files/{s}"), Some(&alice.token))
        .await;
    assert_eq!(
        meta.status,
        200,
        "the shared upload is not collected: {}",
        meta.text()
    );
    assert_body(
        &server
            .download(&format!("/files/{s}"), Some(&alice.token))
            .await,
        &kept,
        "the shared upload",
    );

    let f = server.upload_ok(&alice.token, "b.bin", &b).await;
    assert_upload(&f, "alice", "b.bin", &b);
}

/// Issue 4: uploads, shared or not, and their thumbnails survive a restart, access rules still
/// hold, signed URLs made before still work.
#[tokio::test]
async fn files_survive_a_restart() {
    let mut server = Server::start();
    let mut alice = person(&server, "alice").await;
    let bob = person(&server, "bob").await;
    let carol = server.token("carol", None);
    let room = room_of(&mut alice, &["bob"], "kept").await;

    let jpeg = encode(&picture(480, 360, true), ImageFormat::Jpeg);
    let x = fid(&server.upload_ok(&alice.token, "x.jpg", &jpeg).await);
    let m = share_ok(&mut alice.ws, &room, "image", &x, "before").await;
    assert_eq!(
        settled(&server, &alice.token, &x).await["thumbnail"],
        "ready"
    );
    let thumb_before = server
        .download(&format!("/files/{x}/thumb"), Some(&bob.token))
        .await;
    assert_eq!(thumb_before.status, 200);
    let unshared = random_bytes(10_000);
    let y = fid(&server.upload_ok(&alice.token, "y.bin", &unshared).await);
    let r = server
        .download(&format!("/api/files/{x}/url"), Some(&bob.token))
        .await;
    assert_eq!(r.status, 200, "signed URL: {}", r.text());
    let signed = path_of(r.json["url"].as_str().expect("url"));
    let meta_before = server
        .download(&format!("/api/files/{x}"), Some(&alice.token))
        .await
        .json;

    drop(alice);
    drop(bob.ws);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "clean exit: {status}");
    server.restart();

    let bob_token = bob.token;
    let alice_token = server.token("alice", None);
    assert_body(
        &server
            .download(&format!("/files/{x}"), Some(&bob_token))
            .await,
        &jpeg,
        "bob, after the restart",
    );
    let thumb = server
        .download(&format!("/files/{x}/thumb"), Some(&bob_token))
        .await;
    assert_body(
        &thumb,
        &thumb_before.body,
        "the thumbnail after the restart",
    );
    assert_eq!(
        server
            .download(&format!("/api/files/{x}"), Some(&alice_token))
            .await
            .json,
        meta_before,
        "the upload record"
    );
    assert_body(
        &server
            .download(&format!("/files/{y}"), Some(&alice_token))
            .await,
        &unshared,
        "alice's unshared upload",
    );
    assert_body(
        &server.download(&signed, None).await,
        &jpeg,
        "a signed URL from before the restart",
    );
    server
        .download(&format!("/files/{x}"), Some(&carol))
        .await
        .assert_error(404, "not_found", "carol after the restart");
    server
        .download(&format!("/files/{y}"), Some(&bob_token))
        .await
        .assert_error(404, "not_found", "bob, alice's unshared upload");
    let page = server
        .get(&format!("/api/rooms/{room}/messages"), Some(&bob_token))
        .await;
    let msg = page.json["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|v| v["id"] == m["id"])
        .cloned();
    assert_eq!(
        msg.as_ref().map(|v| &v["file"]),
        Some(&m["file"]),
        "the message keeps its file"
    );
}

/// Issue 4: `rate_limits.uploads_*` (burst 2, 1/s): a quick third upload is `429 rate_limited`;
/// another user is not affected; a second later uploads pass again.
#[tokio::test]
async fn uploads_are_rate_limited() {
    let server = Server::start_with(Options::env(&[
        ("CONFAB_RATE_LIMITS__UPLOADS_BURST", "2"),
        ("CONFAB_RATE_LIMITS__UPLOADS_PER_SEC", "1"),
    ]));
    let alice = server.token("alice", None);
    let bob = server.token("bob", None);
    server.upload_ok(&alice, "1.bin", &random_bytes(500)).await;
    server.upload_ok(&alice, "2.bin", &random_bytes(500)).await;
    server
        .upload(&alice, "3.bin", &random_bytes(500))
        .await
        .assert_error(429, "rate_limited", "a third upload at once");
    server.upload_ok(&bob, "bobs.bin", &random_bytes(500)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.upload_ok(&alice, "4.bin", &random_bytes(500)).await;
}

/// Issue 4: an empty body is `400 invalid_payload`; no token is 401; unknown, non-numeric and
/// malformed file paths are 404; a signed URL for someone else's unshared upload is 404.
#[tokio::test]
async fn bad_file_requests() {
    let server = Server::start();
    let alice = server.token("alice", None);
    let bob = server.token("bob", None);
    server.upload(&alice, "empty.bin", b"").await.assert_error(
        400,
        "invalid_payload",
        "an empty body",
    );
    server
        .upload_raw(None, Some("x.bin"), &[], b"data")
        .await
        .assert_error(401, "unauthorized", "an upload without a token");
    let up = server
        .upload_ok(&alice, "mine.bin", &random_bytes(100))
        .await;
    let id = fid(&up);
    for path in [
        "/files/123".to_string(),
        "/files/123/thumb".to_string(),
        "/files/abc".to_string(),
        "/files/-1".to_string(),
        format!("/files/{id}/thumb"),
        "/api/files/123".to_string(),
        "/api/files/123/url".to_string(),
    ] {
        let r = server.download(&path, Some(&alice)).await;
        r.assert_error(404, "not_found", &format!("GET {path}"));
    }
    // Not a file route at all: whatever the fallback says, it is a 404.
    let r = server
        .download(&format!("/files/{id}/nonsense"), Some(&alice))
        .await;
    assert_eq!(r.status, 404, "GET /files/{{id}}/nonsense: {}", r.text());
    server
        .download(&format!("/api/files/{id}/url"), Some(&bob))
        .await
        .assert_error(
            404,
            "not_found",
            "bob asks for a signed URL to alice's unshared upload",
        );
    server
        .download(&format!("/files/{id}"), Some(&bob))
        .await
        .assert_error(404, "not_found", "bob downloads alice's unshared upload");
    let r = server
        .download(&format!("/api/files/{id}/url"), Some(&alice))
        .await;
    assert_eq!(
        r.status,
        200,
        "the uploader may sign her unshared upload: {}",
        r.text()
    );
}
