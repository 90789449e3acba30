//! First run through the UI: the setup link from the server's stdout creates the admin and the
//! first room; the admin switches registration to invite-only and makes an invite link that a
//! second browser registers with; sign out and back in.

use std::time::Duration;

use serde_json::json;

use crate::cdp::js_str;
use crate::run;
use crate::ui;

#[test]
fn first_run_setup_admin_invite_and_register() {
    run("first_run_setup", |cx| async move {
        let server = &cx.server;
        let info = server.call("GET", "/api/server", None, None, 200).await;
        assert_eq!(
            info["setup_needed"],
            json!(true),
            "a new server needs setup: {info}"
        );
        let setup_url = server.setup_url().await;
        assert!(
            setup_url.starts_with(&server.origin()),
            "the setup URL {setup_url} should point at this server ({})",
            server.origin()
        );

        // Without the token the UI explains where the setup link is, and offers no form.
        let admin = cx.browser.new_page("admin").await;
        admin.goto(&server.url("/")).await;
        admin
            .wait(
                "the 'set up this server' explanation",
                "/setup link/i.test(document.body.innerText)",
            )
            .await;
        admin
            .check("no setup form without the setup token", "!$t('setup-form')")
            .await;

        // The setup link opens the form.
        admin.goto(&setup_url).await;
        admin.wait_testid("setup-form").await;
        admin.screenshot("setup-form").await;
        admin.fill_testid("setup-username", "admin").await;
        admin.fill_testid("setup-display-name", "Ada Admin").await;
        admin
            .fill_testid("setup-password", "admin-password-1")
            .await;
        admin.fill_testid("setup-room", "lobby").await;
        admin.click_testid("setup-submit").await;
        ui::wait_signed_in(&admin).await;
        ui::wait_room_open(&admin, "lobby").await;
        admin
            .check(
                "the setup token leaves the address bar",
                "!location.search.includes('setup=')",
            )
            .await;
        let info = server.call("GET", "/api/server", None, None, 200).await;
        assert_eq!(info["setup_needed"], json!(false), "after setup: {info}");
        let r = server.login("admin", "admin-password-1").await;
        assert_eq!(
            r.status, 200,
            "the admin made in the UI logs in: {}",
            r.text
        );
        let admin_token = r.json["token"].as_str().unwrap_or_default().to_string();
        let me = server
            .call("GET", "/api/me", Some(&admin_token), None, 200)
            .await;
        assert_eq!(me["admin"], json!(true), "GET /api/me of the admin: {me}");
        assert_eq!(me["user"]["name"], json!("Ada Admin"), "display name: {me}");
        let rooms = server
            .call("GET", "/api/rooms", Some(&admin_token), None, 200)
            .await;
        assert!(
            rooms["rooms"].as_array().is_some_and(|r| r
                .iter()
                .any(|r| r["name"] == "lobby" && r["visibility"] == "public")),
            "the first room 'lobby' is public: {rooms}"
        );
        let token = setup_url.split("setup=").nth(1).unwrap_or_default();
        let again = server
            .request(
                "POST",
                "/api/setup",
                None,
                Some(
                    &json!({"setup_token": token, "username": "eve", "password": "eve-password-1"}),
                ),
            )
            .await;
        assert_eq!(again.status, 409, "setup once done: {}", again.text);

        // Administration: invite-only registration and an invite link.
        admin.wait_testid("admin-panel").await;
        admin
            .wait(
                "the registration mode to load as 'open'",
                "$t('registration-mode') && $t('registration-mode').value === 'open'",
            )
            .await;
        admin
            .select("registration-mode", "$t('registration-mode')", "invite")
            .await;
        let mut mode = json!(null);
        for _ in 0..50 {
            mode = server.call("GET", "/api/server", None, None, 200).await["registration"].clone();
            if mode == "invite" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            mode,
            json!("invite"),
            "the admin panel's choice reaches the server"
        );
        admin.click_testid("create-invite").await;
        let invite_url = admin
            .wait(
                "an invite URL",
                "(() => { const u = txt($t('invite-url')) || ($t('invite-url') || {}).value;
                   return u && u.includes('invite=') ? u : null; })()",
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            invite_url.starts_with(&server.origin()),
            "the invite URL {invite_url} should be absolute, on {}",
            server.origin()
        );
        let code = invite_url
            .split("invite=")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        admin.screenshot("admin-panel").await;

        // Someone without an invite is refused.
        let stranger = cx.browser.new_page("stranger").await;
        stranger.goto(&server.url("/")).await;
        stranger.wait_testid("login-form").await;
        stranger.screenshot("login").await;
        stranger.click_testid("show-register").await;
        stranger.wait_testid("register-invite").await;
        stranger.fill_testid("register-username", "mallory").await;
        stranger
            .fill_testid("register-password", "mallory-password-1")
            .await;
        stranger
            .fill_testid("register-invite", "not-a-real-invite")
            .await;
        stranger.click_testid("register-submit").await;
        stranger.wait_testid("auth-error").await;
        stranger
            .check(
                "the refusal is explained",
                "txt($t('auth-error')).length > 0",
            )
            .await;
        stranger.check("still signed out", "!$t('room-list')").await;
        assert_eq!(
            server.login("mallory", "mallory-password-1").await.status,
            401,
            "no account without an invite"
        );

        // The invite link registers a second user in another browser context.
        let bruno = cx.browser.new_page("bruno").await;
        bruno.goto(&invite_url).await;
        bruno.wait_testid("register-form").await;
        bruno
            .wait(
                "the invite code prefilled",
                &format!(
                    "$t('register-invite') && $t('register-invite').value === {}",
                    js_str(&code)
                ),
            )
            .await;
        bruno.fill_testid("register-username", "bruno").await;
        bruno
            .fill_testid("register-display-name", "Bruno Diaz")
            .await;
        bruno
            .fill_testid("register-password", "bruno-password-1")
            .await;
        bruno.click_testid("register-submit").await;
        ui::wait_signed_in(&bruno).await;
        let reuse = server
            .request(
                "POST",
                "/api/auth/register",
                None,
                Some(&json!({"username": "carol", "password": "carol-password-1", "invite": code})),
            )
            .await;
        assert_eq!(
            reuse.status, 403,
            "a single-use invite works once: {}",
            reuse.text
        );

        // Bruno joins the public first room from "Browse rooms".
        bruno.click_testid("browse-rooms").await;
        let lobby = r#"$$t('public-room').find((r) => /lobby/.test(r.textContent))"#;
        bruno.wait("'lobby' among the public rooms", lobby).await;
        bruno
            .click("join lobby", &format!("$t('join-room', {lobby})"))
            .await;
        ui::wait_room_open(&bruno, "lobby").await;
        ui::send(&bruno, "Hello from Bruno").await;
        ui::wait_message(&bruno, "Hello from Bruno").await;
        ui::wait_message(&admin, "Hello from Bruno").await;

        // Sign out and back in.
        bruno.click_testid("logout").await;
        bruno.wait_testid("login-form").await;
        bruno
            .check(
                "signing out forgets the session",
                "localStorage.getItem('confab.session') === null && !$t('room-list')",
            )
            .await;
        bruno.fill_testid("login-username", "bruno").await;
        bruno.fill_testid("login-password", "wrong-password").await;
        bruno.click_testid("login-submit").await;
        bruno.wait_testid("auth-error").await;
        bruno
            .fill_testid("login-password", "bruno-password-1")
            .await;
        bruno.click_testid("login-submit").await;
        ui::wait_signed_in(&bruno).await;
        bruno
            .check(
                "a successful sign-in hides the earlier error",
                "!vis($t('auth-error'))",
            )
            .await;
        ui::open_room(&bruno, "lobby").await;
        ui::wait_message(&bruno, "Hello from Bruno").await;

        for p in [&admin, &stranger, &bruno] {
            ui::check_page_healthy(p).await;
        }
    });
}
