//! One identity per person (issue 24, point 1): a host application's users and built-in accounts never share an id, and no registration takes a known name.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};

use crate::support::{Client, Options, Server, now_secs, sign_hs256};

const PASSWORD: &str = "violet-harbor-42";

/// A host application's ES256 key pair made with the openssl CLI: (private PEM, public path).
fn host_key(dir: &Path) -> (Vec<u8>, PathBuf) {
    let private = dir.join("host.key");
    let public = dir.join("host.pub");
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    let (private_s, public_s) = (
        private.to_str().expect("utf-8 path"),
        public.to_str().expect("utf-8 path"),
    );
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        private_s,
    ]);
    run(&["pkey", "-pubout", "-in", private_s, "-out", public_s]);
    (std::fs::read(&private).expect("private key"), public)
}

/// A token the host application mints for `sub`.
fn host_token(private_pem: &[u8], sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"sub": sub, "name": sub, "exp": now_secs() + 3600}),
        &jsonwebtoken::EncodingKey::from_ec_pem(private_pem).expect("ec key"),
    )
    .expect("sign")
}

fn host_config(public: &Path, registration: Option<&str>) -> Options {
    let mut toml = format!(
        "[auth]\npublic_keys = [{{ alg = \"ES256\", path = \"{}\" }}]\n",
        public.display()
    );
    if let Some(r) = registration {
        toml.push_str(&format!("registration = \"{r}\"\n"));
    }
    Options::config(&toml)
}

async fn register(server: &Server, username: &str) -> (u16, Value) {
    let r = server
        .post(
            "/api/auth/register",
            None,
            &json!({"username": username, "password": PASSWORD}),
        )
        .await;
    (r.status, r.json)
}

/// Creates a private room over REST; returns its id.
async fn private_room(server: &Server, token: &str, name: &str) -> String {
    let room = server
        .post(
            "/api/rooms",
            Some(token),
            &json!({"name": name, "visibility": "private"}),
        )
        .await;
    assert_eq!(room.status, 201, "{}", room.text);
    room.json["room"]["id"]
        .as_str()
        .expect("room id")
        .to_owned()
}

/// Invites `user` into `room` over REST.
async fn invite(server: &Server, token: &str, room: &str, user: &str) {
    let r = server
        .post(
            &format!("/api/rooms/{room}/invite"),
            Some(token),
            &json!({"user_id": user}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn room_ids(server: &Server, token: &str) -> Vec<String> {
    let r = server.get("/api/rooms", Some(token)).await;
    assert_eq!(r.status, 200, "GET /api/rooms: {}", r.text);
    r.json["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|room| room["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The attacks of issue 24 with a host application's key configured: registering the `sub` of a
/// host user who used only REST, or who was only invited, gives a different user with none of
/// their rooms; and an account registered first never becomes the host user of that name.
#[tokio::test]
async fn a_host_application_user_and_an_account_of_the_same_name_are_two_users() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (private, public) = host_key(keys.path());
    let server = Server::start_with(host_config(&public, Some("open")));

    // A host user who only ever used REST: a private room and a message in it.
    let carol = host_token(&private, "carol");
    let me = server.get("/api/me", Some(&carol)).await;
    assert_eq!(me.json["user"]["id"], "app:carol", "{}", me.text);
    let room_id = private_room(&server, &carol, "plans").await;
    let path = format!("/api/rooms/{room_id}/messages");
    let sent = server
        .post(
            &path,
            Some(&carol),
            &json!({"client_msg_id": "c1", "type": "text", "content": "the secret plan"}),
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text);
    // A host user who was only invited.
    invite(&server, &carol, &room_id, "app:dave").await;

    for name in ["carol", "dave"] {
        let (status, body) = register(&server, name).await;
        assert_eq!(status, 201, "registering {name}: {body}");
        assert_eq!(body["user"]["id"], name, "an account is its bare username");
        let token = body["token"].as_str().expect("token");
        assert!(
            room_ids(&server, token).await.is_empty(),
            "the account {name} sees none of app:{name}'s rooms"
        );
        server.get(&path, Some(token)).await.assert_error(
            404,
            "not_found",
            "the account reads the host user's room",
        );
    }
    // The invited host user, arriving later, is in the room.
    let dave = host_token(&private, "dave");
    assert_eq!(room_ids(&server, &dave).await, vec![room_id.clone()]);

    // The reverse race: an account registered first, then the host user of that name arrives.
    let (status, body) = register(&server, "erin").await;
    assert_eq!(status, 201, "{body}");
    let account = body["token"].as_str().expect("token").to_owned();
    private_room(&server, &account, "erin's").await;
    let mut host_erin = Client::connect(&server, &host_token(&private, "erin")).await;
    assert_eq!(host_erin.user_id(), "app:erin");
    let rooms = host_erin.ok("list_rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"],
        json!([]),
        "the host user gets no account's rooms"
    );
}

/// Issue 24, point 1: with a host application's key configured, self-registration is closed
/// unless the configuration opens it.
#[tokio::test]
async fn registration_is_closed_by_default_once_a_host_key_is_configured() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, public) = host_key(keys.path());
    let server = Server::start_with(host_config(&public, None));
    let (status, body) = register(&server, "mallory").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let info = server.get("/api/server", None).await;
    assert_eq!(info.json["registration"], "closed", "{}", info.text);
}

/// Issue 24, point 1, without host keys: a name the server's own key vouched for, used only
/// over REST, and a name only invited into a room, can no longer be registered; and the server's
/// key never names a namespaced user.
#[tokio::test]
async fn a_known_name_cannot_be_registered() {
    let server = Server::start();
    let frank = server.token("frank", Some("Frank"));
    let room_id = private_room(&server, &frank, "private").await;
    invite(&server, &frank, &room_id, "gina").await;
    for name in ["frank", "gina"] {
        let (status, body) = register(&server, name).await;
        assert_eq!(status, 409, "registering the known name {name}: {body}");
        assert_eq!(body["error"]["code"], "conflict");
    }
    // A name nobody used is still free.
    let (status, body) = register(&server, "hank").await;
    assert_eq!(status, 201, "{body}");

    let forged = sign_hs256(
        &json!({"sub": "app:frank", "exp": now_secs() + 600}),
        &server.jwt_secret(),
    );
    server.get("/api/me", Some(&forged)).await.assert_error(
        401,
        "unauthorized",
        "a local token naming a namespaced user",
    );
    let out = server.cli(&["token", "--user", "app:frank"]);
    assert!(
        !out.status.success(),
        "confab token refuses a namespaced id"
    );
}
