//! Who may connect: the three token carriers, bad tokens and Origins refused before the upgrade, token expiry, and built-in accounts.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{
    Client, Options, Server, TIMEOUT, claims_of, now_secs, refused_upgrade, sign_hs256,
    unsigned_token, ws_request,
};

/// After a refusal, a healthy client still sends and receives.
async fn still_serving(server: &Server) {
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let room = alice.create_room("after-refusal", "private").await;
    alice.invite(&room, "bob").await;
    let sent = alice.say(&room, "still serving").await;
    assert_eq!(
        bob.next_message_where(|m| m["id"] == sent["id"]).await,
        sent
    );
}

/// Asserts that connecting with `?token=<token>` is refused with 401 `unauthorized`.
async fn assert_401(server: &Server, token: &str, what: &str) {
    let (status, body) =
        refused_upgrade(ws_request(server, &format!("?token={token}")), what).await;
    assert_eq!(status, 401, "{what}: expected 401 before the upgrade");
    if !body.is_null() {
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
}

/// Issue 2: the token may travel in the query, in `Authorization: Bearer`, or in
/// `Sec-WebSocket-Protocol: confab, <jwt>` (answered with `confab`).
#[tokio::test]
async fn a_token_travels_in_query_header_or_subprotocol() {
    let server = Server::start();
    let token = server.token("alice", Some("Alice"));

    let query = Client::connect(&server, &token).await;
    assert_eq!(query.user_id(), "alice");

    let mut req = ws_request(&server, "");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let (bearer, _) = Client::try_connect(req)
        .await
        .expect("Authorization: Bearer is accepted");
    assert_eq!(bearer.user_id(), "alice");

    let mut req = ws_request(&server, "");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("confab, {token}")).expect("header"),
    );
    let (mut sub, resp) = Client::try_connect(req)
        .await
        .expect("Sec-WebSocket-Protocol is accepted");
    assert_eq!(sub.user_id(), "alice");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("confab"),
        "the server answers the subprotocol `confab`"
    );
    sub.ping().await;
}

/// Issue 2: missing, malformed, expired, badly signed and `alg: none` tokens get 401 before the
/// upgrade; a token re-signed with the real secret (the control) is accepted.
#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let server = Server::start();
    let good = server.token("mallory", Some("Mallory"));
    let secret = server.jwt_secret();
    let claims = claims_of(&good);
    assert_eq!(
        claims["sub"], "mallory",
        "confab token puts the user in `sub`: {claims}"
    );
    assert!(claims["exp"].is_u64(), "confab token sets exp: {claims}");

    // Control: the same claims re-signed with the server's secret are accepted, so the refusals
    // below are caused by the one thing each token changes.
    let resigned = sign_hs256(&claims, &secret);
    let c = Client::connect(&server, &resigned).await;
    assert_eq!(c.user_id(), "mallory");

    let (status, body) = refused_upgrade(ws_request(&server, ""), "no token").await;
    assert_eq!(status, 401, "no token at all");
    if !body.is_null() {
        assert_eq!(body["error"]["code"], "unauthorized", "no token: {body}");
    }
    assert_401(&server, "not-a-jwt", "a malformed token").await;

    let mut expired = claims.clone();
    expired["iat"] = json!(now_secs() - 7200);
    expired["exp"] = json!(now_secs() - 3600);
    assert_401(&server, &sign_hs256(&expired, &secret), "an expired token").await;

    assert_401(
        &server,
        &sign_hs256(&claims, b"some other secret of a decent length!!"),
        "a token signed with another secret",
    )
    .await;
    assert_401(&server, &unsigned_token(&claims), "an alg=none token").await;

    let sig_at = good.rfind('.').expect("JWT has a signature") + 5;
    let flipped = if &good[sig_at..=sig_at] == "A" {
        "B"
    } else {
        "A"
    };
    let mut tampered = good.clone();
    tampered.replace_range(sig_at..=sig_at, flipped);
    assert_401(&server, &tampered, "a token with a tampered signature").await;

    let mut req = ws_request(&server, "");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", unsigned_token(&claims))).expect("header"),
    );
    let what = "an alg=none token in the Authorization header";
    let (status, _) = refused_upgrade(req, what).await;
    assert_eq!(status, 401, "{what}");

    // REST refuses the same way.
    let me = server.get("/api/me", None).await;
    me.assert_error(401, "unauthorized", "GET /api/me without a token");
    let me = server.get("/api/me", Some(&unsigned_token(&claims))).await;
    me.assert_error(401, "unauthorized", "GET /api/me with an alg=none token");
    let me = server.get("/api/me", Some(&good)).await;
    assert_eq!(
        (me.status, &me.json["user"]["id"]),
        (200, &json!("mallory")),
        "GET /api/me: {}",
        me.text
    );

    still_serving(&server).await;
}

/// Issue 2: with `auth.audience` configured, a token for another audience (or none) gets 401.
#[tokio::test]
async fn wrong_audience_is_refused_when_an_audience_is_configured() {
    let server = Server::start_with(Options::env(&[("CONFAB_AUTH__AUDIENCE", "confab")]));
    let good = server.token("alice", Some("Alice"));
    let claims = claims_of(&good);
    assert_eq!(
        claims["aud"], "confab",
        "confab token carries the configured audience: {claims}"
    );
    let c = Client::connect(&server, &good).await;
    assert_eq!(c.user_id(), "alice");

    let secret = server.jwt_secret();
    let mut other = claims.clone();
    other["aud"] = json!("someone-else");
    assert_401(
        &server,
        &sign_hs256(&other, &secret),
        "a token for another audience",
    )
    .await;
    let mut none: Value = claims.clone();
    none.as_object_mut().expect("claims object").remove("aud");
    assert_401(
        &server,
        &sign_hs256(&none, &secret),
        "a token without an audience",
    )
    .await;

    still_serving(&server).await;
}

/// Issue 2: without `auth.audience`, a token that carries an `aud` is refused (config.toml: "a
/// token with an `aud` is refused while this is unset").
#[tokio::test]
async fn a_token_with_an_audience_is_refused_while_none_is_configured() {
    let server = Server::start();
    let mut with_aud = claims_of(&server.token("alice", None));
    with_aud["aud"] = json!("confab");
    assert_401(
        &server,
        &sign_hs256(&with_aud, &server.jwt_secret()),
        "an `aud` while none is configured",
    )
    .await;
    still_serving(&server).await;
}

/// Issue 2: an Origin other than the server's own gets 403 before the upgrade; the same origin,
/// and origins listed in `server.allowed_origins`, are accepted.
#[tokio::test]
async fn a_disallowed_origin_is_refused() {
    let server = Server::start();
    let token = server.token("alice", Some("Alice"));

    let mut req = ws_request(&server, &format!("?token={token}"));
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("http://evil.example"));
    let (status, body) = refused_upgrade(req, "a foreign Origin").await;
    assert_eq!(status, 403, "a foreign Origin");
    if !body.is_null() {
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }

    let mut req = ws_request(&server, &format!("?token={token}"));
    req.headers_mut().insert(
        "origin",
        HeaderValue::from_str(&server.origin()).expect("header"),
    );
    let (c, _) = Client::try_connect(req)
        .await
        .expect("the server's own origin is accepted");
    assert_eq!(c.user_id(), "alice");
    still_serving(&server).await;

    let listed = Server::start_with(Options::config(
        "[server]\nallowed_origins = [\"https://app.example.com\"]\n",
    ));
    let token = listed.token("alice", None);
    let mut req = ws_request(&listed, &format!("?token={token}"));
    req.headers_mut().insert(
        "origin",
        HeaderValue::from_static("https://app.example.com"),
    );
    Client::try_connect(req)
        .await
        .expect("an origin in allowed_origins is accepted");
    let mut req = ws_request(&listed, &format!("?token={token}"));
    req.headers_mut().insert(
        "origin",
        HeaderValue::from_static("https://evil.example.com"),
    );
    assert_eq!(
        refused_upgrade(req, "an origin not in allowed_origins")
            .await
            .0,
        403,
        "an origin not in allowed_origins"
    );
}

/// Issue 2: a connection ends with 4001 when its token expires.
#[tokio::test]
async fn a_connection_closes_with_4001_when_its_token_expires() {
    let server = Server::start_with(Options::env(&[("CONFAB_AUTH__LEEWAY_SECS", "0")]));
    let mut claims = claims_of(&server.token("alice", Some("Alice")));
    claims["exp"] = json!(now_secs() + 2);
    let mut c = Client::connect(&server, &sign_hs256(&claims, &server.jwt_secret())).await;
    assert_eq!(
        c.expect_close(TIMEOUT).await,
        Some(4001),
        "the token expired"
    );
}

/// Issue 2: register, a taken username is 409, a wrong password is 401, login gives a token that
/// works over WebSocket.
#[tokio::test]
async fn register_and_login() {
    let server = Server::start();
    let reg = server
        .post(
            "/api/auth/register",
            None,
            &json!({"username": "dave", "password": "correct horse", "display_name": "Dave D."}),
        )
        .await;
    assert_eq!(reg.status, 201, "register: {}", reg.text);
    assert_eq!(reg.json["user"], json!({"id": "dave", "name": "Dave D."}));
    let token = reg.json["token"].as_str().expect("token").to_string();
    let c = Client::connect(&server, &token).await;
    assert_eq!(c.user_id(), "dave");

    for username in ["dave", "DAVE"] {
        server
            .post(
                "/api/auth/register",
                None,
                &json!({"username": username, "password": "another one"}),
            )
            .await
            .assert_error(409, "conflict", &format!("registering {username:?} again"));
    }
    let upper = server
        .post(
            "/api/auth/register",
            None,
            &json!({"username": "Erin", "password": "erin secret 1"}),
        )
        .await;
    assert_eq!(upper.status, 201, "register Erin: {}", upper.text);
    assert_eq!(
        upper.json["user"]["id"], "erin",
        "usernames are stored lowercase"
    );

    for (what, body) in [
        (
            "a username of 2 characters",
            json!({"username": "ab", "password": "long enough"}),
        ),
        (
            "a username with a space",
            json!({"username": "bad name", "password": "long enough"}),
        ),
        (
            "a username of 33 characters",
            json!({"username": "a".repeat(33), "password": "long enough"}),
        ),
        (
            "a password of 7 bytes",
            json!({"username": "frank", "password": "1234567"}),
        ),
        ("no password", json!({"username": "frank"})),
    ] {
        server
            .post("/api/auth/register", None, &body)
            .await
            .assert_error(400, "invalid_payload", what);
    }
    let raw = server
        .http_raw(
            hyper::Method::POST,
            "/api/auth/register",
            None,
            &[],
            Some("{\"username\":".into()),
        )
        .await;
    raw.assert_error(400, "invalid_json", "a register body that is not JSON");

    server
        .post(
            "/api/auth/login",
            None,
            &json!({"username": "dave", "password": "wrong horse"}),
        )
        .await
        .assert_error(401, "unauthorized", "login with a wrong password");
    server
        .post(
            "/api/auth/login",
            None,
            &json!({"username": "nobody", "password": "correct horse"}),
        )
        .await
        .assert_error(401, "unauthorized", "login as an unknown user");

    let login = server
        .post(
            "/api/auth/login",
            None,
            &json!({"username": "dave", "password": "correct horse"}),
        )
        .await;
    assert_eq!(login.status, 200, "login: {}", login.text);
    assert_eq!(login.json["user"]["id"], "dave");
    let token = login.json["token"].as_str().expect("token").to_string();
    let mut c = Client::connect(&server, &token).await;
    assert_eq!(c.hello["user"], json!({"id": "dave", "name": "Dave D."}));
    c.ping().await;
    let me = server.get("/api/me", Some(&token)).await;
    assert_eq!(me.status, 200, "GET /api/me: {}", me.text);
    assert_eq!(me.json["user"], json!({"id": "dave", "name": "Dave D."}));
}

/// Issue 2: with `auth.registration = "closed"`, registering is 403 `forbidden`.
#[tokio::test]
async fn registration_can_be_closed() {
    let server = Server::start_with(Options::env(&[("CONFAB_AUTH__REGISTRATION", "closed")]));
    server
        .post(
            "/api/auth/register",
            None,
            &json!({"username": "dave", "password": "correct horse"}),
        )
        .await
        .assert_error(403, "forbidden", "register while registration is closed");
}
