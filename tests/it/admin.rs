//! First-run setup, the administrator, registration modes and invites.

use crate::support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The setup token from the `?setup=TOKEN` line the server prints while it has no admin.
fn setup_token(server: &Server) -> Option<String> {
    server.output().lines().find_map(|l| {
        l.split("?setup=")
            .nth(1)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    })
}

pub(crate) async fn wait_for_setup_line(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(t) = setup_token(server) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "no setup URL printed:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup_admin(server: &Server) -> String {
    let token = wait_for_setup_line(server).await;
    let r = server
        .post(
            "/api/setup",
            None,
            &json!({"setup_token": token, "username": "root", "password": "plum tree 47",
                    "display_name": "Root", "room_name": "lobby"}),
        )
        .await;
    assert_eq!(r.status, 201, "setup: {}", r.text);
    r.json["token"].as_str().expect("token").to_owned()
}

async fn register(server: &Server, user: &str, invite: Option<&str>) -> crate::support::HttpReply {
    let mut body = json!({"username": user, "password": "plum tree 47"});
    if let Some(code) = invite {
        body["invite"] = Value::from(code);
    }
    server.post("/api/auth/register", None, &body).await
}

#[tokio::test]
async fn first_run_setup_makes_the_admin_and_a_room_once() {
    let mut server = Server::start();
    let info = server.get("/api/server", None).await;
    assert_eq!(info.status, 200, "{}", info.text);
    assert_eq!(info.json["setup_needed"], true, "{}", info.text);
    assert_eq!(info.json["registration"], "open", "{}", info.text);

    let token = wait_for_setup_line(&server).await;
    let wrong = server
        .post(
            "/api/setup",
            None,
            &json!({"setup_token": "0".repeat(32), "username": "root", "password": "plum tree 47"}),
        )
        .await;
    wrong.assert_error(403, "forbidden", "a wrong setup token");
    let weak = server
        .post(
            "/api/setup",
            None,
            &json!({"setup_token": token, "username": "root", "password": "short"}),
        )
        .await;
    weak.assert_error(400, "invalid_payload", "a too-short admin password");

    let ok = server
        .post(
            "/api/setup",
            None,
            &json!({"setup_token": token, "username": "Root", "password": "plum tree 47",
                    "display_name": "The Admin", "room_name": "lobby"}),
        )
        .await;
    assert_eq!(ok.status, 201, "setup: {}", ok.text);
    assert_eq!(ok.json["user"]["id"], "root");
    assert_eq!(ok.json["room"]["name"], "lobby");
    assert_eq!(ok.json["room"]["visibility"], "public");
    let admin = ok.json["token"].as_str().expect("token").to_owned();

    let me = server.get("/api/me", Some(&admin)).await;
    assert_eq!(me.json["admin"], true, "{}", me.text);
    let rooms = server.get("/api/rooms", Some(&admin)).await;
    let names: Vec<&str> = rooms.json["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, vec!["lobby"], "{}", rooms.text);

    let again = server
        .post(
            "/api/setup",
            None,
            &json!({"setup_token": token, "username": "other", "password": "plum tree 47"}),
        )
        .await;
    again.assert_error(409, "conflict", "a second setup");
    assert_eq!(
        server.get("/api/server", None).await.json["setup_needed"],
        false
    );
    // The admin can log in with the password chosen at setup.
    let login = server
        .post(
            "/api/auth/login",
            None,
            &json!({"username": "root", "password": "plum tree 47"}),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);

    // After a restart nothing asks for setup any more, and the admin is still the admin.
    server.sigterm();
    server.wait_exit(Duration::from_secs(10));
    server.restart();
    let setup_lines = server
        .output()
        .lines()
        .filter(|l| l.contains("?setup="))
        .count();
    assert_eq!(
        setup_lines,
        1,
        "only the first start prints a setup URL:\n{}",
        server.output()
    );
    assert_eq!(
        server.get("/api/server", None).await.json["setup_needed"],
        false
    );
    let me = server.get("/api/me", Some(&admin)).await;
    assert_eq!(me.json["admin"], true, "{}", me.text);
}

#[tokio::test]
async fn a_server_that_is_not_set_up_prints_a_fresh_token_each_start() {
    let mut server = Server::start();
    let first = wait_for_setup_line(&server).await;
    server.sigterm();
    server.wait_exit(Duration::from_secs(10));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        let tokens: Vec<String> = server
            .output()
            .lines()
            .filter_map(|l| l.split("?setup=").nth(1).map(|t| t.trim().to_owned()))
            .collect();
        if tokens.len() >= 2 {
            break tokens[tokens.len() - 1].clone();
        }
        assert!(Instant::now() < deadline, "no second setup URL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(first, second, "the setup token is made anew at every start");
    let old = server
        .post(
            "/api/setup",
            None,
            &json!({"setup_token": first, "username": "root", "password": "plum tree 47"}),
        )
        .await;
    old.assert_error(403, "forbidden", "the previous start's token");
}

#[tokio::test]
async fn invite_only_registration_takes_valid_invites_once() {
    let server = Server::start();
    let admin = setup_admin(&server).await;
    assert_eq!(register(&server, "early", None).await.status, 201);

    // Only the admin changes the mode.
    let user = server.token("mallory", None);
    server
        .patch(
            "/api/admin/settings",
            Some(&user),
            &json!({"registration": "invite"}),
        )
        .await
        .assert_error(403, "forbidden", "a non-admin changing the mode");
    server
        .post("/api/admin/invites", Some(&user), &json!({}))
        .await
        .assert_error(403, "forbidden", "a non-admin making an invite");
    server
        .patch(
            "/api/admin/settings",
            Some(&admin),
            &json!({"registration": "closed"}),
        )
        .await
        .assert_error(400, "invalid_payload", "closing from the API");

    let r = server
        .patch(
            "/api/admin/settings",
            Some(&admin),
            &json!({"registration": "invite"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["registration"], "invite");
    assert_eq!(
        server.get("/api/server", None).await.json["registration"],
        "invite"
    );
    register(&server, "nocode", None).await.assert_error(
        403,
        "forbidden",
        "registering without an invite",
    );
    register(&server, "badcode", Some("nope"))
        .await
        .assert_error(403, "forbidden", "registering with an unknown invite");

    let inv = server
        .post("/api/admin/invites", Some(&admin), &json!({"max_uses": 2}))
        .await;
    assert_eq!(inv.status, 201, "{}", inv.text);
    let code = inv.json["invite"]["code"]
        .as_str()
        .expect("code")
        .to_owned();
    assert_eq!(
        inv.json["invite"]["url"].as_str(),
        Some(format!("/?invite={code}").as_str())
    );
    assert_eq!(register(&server, "first", Some(&code)).await.status, 201);
    // A refused registration (name taken) does not use the invite up.
    register(&server, "first", Some(&code)).await.assert_error(
        409,
        "conflict",
        "a taken name with an invite",
    );
    assert_eq!(register(&server, "second", Some(&code)).await.status, 201);
    register(&server, "third", Some(&code)).await.assert_error(
        403,
        "forbidden",
        "a used-up invite",
    );

    let list = server.get("/api/admin/invites", Some(&admin)).await;
    assert_eq!(list.json["invites"][0]["uses"], 2, "{}", list.text);
    let one = server
        .post("/api/admin/invites", Some(&admin), &json!({}))
        .await;
    let code = one.json["invite"]["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let del = server
        .delete(&format!("/api/admin/invites/{code}"), Some(&admin))
        .await;
    assert_eq!(del.status, 200, "{}", del.text);
    register(&server, "late", Some(&code))
        .await
        .assert_error(403, "forbidden", "a deleted invite");
    server
        .post("/api/admin/invites", Some(&admin), &json!({"max_uses": 0}))
        .await
        .assert_error(400, "invalid_payload", "max_uses 0");
    server
        .post("/api/admin/invites", Some(&admin), &json!({"ttl_secs": 1}))
        .await
        .assert_error(400, "invalid_payload", "ttl_secs 1");

    // Back to open: no invite needed.
    server
        .patch(
            "/api/admin/settings",
            Some(&admin),
            &json!({"registration": "open"}),
        )
        .await;
    assert_eq!(register(&server, "free", None).await.status, 201);
}

#[tokio::test]
async fn closed_by_configuration_stays_closed() {
    let server = Server::start_with(Options::env(&[("CONFAB_AUTH__REGISTRATION", "closed")]));
    let admin = setup_admin(&server).await;
    assert_eq!(
        server.get("/api/server", None).await.json["registration"],
        "closed"
    );
    register(&server, "someone", None).await.assert_error(
        403,
        "forbidden",
        "registering while closed",
    );
    server
        .patch(
            "/api/admin/settings",
            Some(&admin),
            &json!({"registration": "open"}),
        )
        .await
        .assert_error(403, "forbidden", "opening what the configuration closed");
}
