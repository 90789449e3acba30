//! Two users in two browser contexts: register, create a private room, invite, chat both
//! ways, see the other typing, follow receipts from ✓✓ (delivered) to Read, get a desktop
//! notification for a room not on screen, open a DM and see the other's presence.

use std::time::Duration;

use crate::cdp::js_str;
use crate::run;
use crate::ui;

#[test]
fn two_users_chat_with_typing_and_receipts() {
    run("chat", |cx| async move {
        let server = &cx.server;
        server.setup_admin().await;

        let ana = cx.browser.new_page("ana").await;
        let ben = cx.browser.new_page("ben").await;
        // Ben has allowed notifications already; Ana will be asked.
        cx.browser.grant_notifications(&ben, &server.origin()).await;
        let ana_account = ui::register(&ana, server, "ana", "Ana Lima").await;
        ui::register(&ben, server, "ben", "Ben Brown").await;
        ben.check(
            "no notifications prompt once they are allowed",
            "!$t('enable-notifications')",
        )
        .await;
        ana.wait_testid("enable-notifications").await;
        cx.browser.grant_notifications(&ana, &server.origin()).await;
        ana.click_testid("enable-notifications").await;
        ana.wait(
            "the notifications prompt to go once allowed",
            "!vis($t('enable-notifications'))",
        )
        .await;

        // Ana creates a private room and invites Ben.
        ana.click_testid("new-room").await;
        ana.fill_testid("new-room-name", "project-x").await;
        ana.select(
            "new-room-visibility",
            "$t('new-room-visibility')",
            "private",
        )
        .await;
        ana.click_testid("new-room-submit").await;
        ui::wait_room_open(&ana, "project-x").await;
        ana.click_testid("invite-member").await;
        ana.fill_testid("invite-member-user", "ben").await;
        ana.click_testid("invite-member-submit").await;
        ana.wait(
            "the invite to be confirmed",
            "/Invited @?ben/.test(document.body.innerText)",
        )
        .await;
        ana.press("Escape").await;
        ana.wait(
            "the invite dialog to close",
            "!vis($t('invite-member-user'))",
        )
        .await;

        // Ben sees the room appear without reloading, and opens it.
        ben.wait_within(
            "project-x to appear in Ben's room list",
            &ui::room_item("project-x"),
            Duration::from_secs(15),
        )
        .await;
        ui::open_room(&ben, "project-x").await;

        // Ana → Ben.
        let hello = "Hi Ben, welcome to project-x";
        ui::send(&ana, hello).await;
        let hello_id = ui::wait_message(&ana, hello).await;
        ana.check(
            "the composer is empty after sending",
            "$t('composer').value === ''",
        )
        .await;
        let seen = ui::wait_message(&ben, hello).await;
        assert_eq!(seen, hello_id, "both sides show the same message id");
        ben.check(
            "Ben's view names Ana as the sender",
            &format!(
                "messages().find((m) => m.dataset.messageId === {}).dataset.senderId === 'ana'",
                js_str(&hello_id)
            ),
        )
        .await;

        // Ben types: Ana sees it.
        let reply = "Hi Ana! Thanks for the invite";
        ben.fill_testid("composer", reply).await;
        ana.wait(
            "'Ben Brown is typing…' on Ana's side",
            "txt($t('typing-indicator')) === 'Ben Brown is typing…'",
        )
        .await;
        ana.screenshot("typing").await;
        ben.press("Enter").await;
        ui::wait_message(&ana, reply).await;
        ana.wait(
            "the typing indicator to clear once Ben's message arrives",
            "!txt($t('typing-indicator'))",
        )
        .await;
        ui::wait_message(&ben, reply).await;

        // Both sides: each message exactly once, ids unique.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for p in [&ana, &ben] {
            for text in [hello, reply] {
                let n = ui::count_messages(p, text).await;
                if n != 1 {
                    p.fail(&format!("{text:?} shows {n} times, expected once"))
                        .await;
                }
            }
            ui::check_no_duplicate_ids(p).await;
        }

        // Receipts. Ben moves to another room, so a new message reaches his client
        // (delivered, ✓✓) but is not read.
        ben.click_testid("browse-rooms").await;
        let general = r#"$$t('public-room').find((r) => /general/.test(r.textContent))"#;
        ben.wait("'general' among the public rooms", general).await;
        ben.click("join general", &format!("$t('join-room', {general})"))
            .await;
        ui::wait_room_open(&ben, "general").await;

        let ping = "Are you there, Ben?";
        ui::send(&ana, ping).await;
        let ping_id = ui::wait_message(&ana, ping).await;
        let delivered = ui::wait_status(&ana, &ping_id, "✓✓ (delivered)", "s === '✓✓'").await;
        assert_eq!(delivered, "✓✓");
        ben.wait(
            "an unread badge of 1 on project-x in Ben's sidebar",
            &format!(
                "txt($t('room-unread', {})) === '1'",
                ui::room_item("project-x")
            ),
        )
        .await;
        ben.check(
            "the room preview shows the new message",
            &format!(
                "txt($t('room-preview', {})).includes({})",
                ui::room_item("project-x"),
                js_str(ping)
            ),
        )
        .await;
        // Not read while Ben looks elsewhere.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let still = ui::status_of(&ana, &ping_id).await;
        if still != "✓✓" {
            ana.fail(&format!(
                "message {ping_id} shows {still:?} while Ben has not opened the room; expected ✓✓"
            ))
            .await;
        }
        ana.screenshot("delivered").await;
        ben.wait(
            "a desktop notification for Ana's message (Ben is in another room)",
            &format!(
                "window.__notifications.some((n) => /Ana Lima/.test(n.title) && n.body === {})",
                js_str(ping)
            ),
        )
        .await;

        // Ben opens the room: Ana sees Read.
        ui::open_room(&ben, "project-x").await;
        ui::wait_message(&ben, ping).await;
        let read = ui::wait_status(&ana, &ping_id, "Read…", "s.startsWith('Read')").await;
        ana.screenshot("read").await;
        ben.wait(
            "the unread badge to go once Ben read the room",
            &format!("!$t('room-unread', {})", ui::room_item("project-x")),
        )
        .await;
        ben.screenshot("conversation").await;
        eprintln!("status after Ben read: {read:?}");

        // Ben's own message was read by Ana, who had the room open.
        let reply_id = ui::wait_message(&ben, reply).await;
        ui::wait_status(&ben, &reply_id, "Read…", "s.startsWith('Read')").await;

        // The server agrees.
        let room_id = ana
            .eval(&format!("{}.dataset.roomId", ui::room_item("project-x")))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string();
        let receipts = server
            .call(
                "GET",
                &format!("/api/rooms/{room_id}/messages/{ping_id}/receipts"),
                Some(&ana_account.token),
                None,
                200,
            )
            .await;
        assert_eq!(
            receipts["status"], "read",
            "receipts of {ping_id}: {receipts}"
        );

        ben.check(
            "no notification for messages in the room on screen",
            &format!(
                "!window.__notifications.some((n) => n.body === {})",
                js_str(hello)
            ),
        )
        .await;

        // A direct message, with the other's presence.
        ana.click_testid("new-dm").await;
        ana.fill_testid("new-dm-user", "ben").await;
        ana.click_testid("new-dm-submit").await;
        ui::wait_room_open(&ana, "Ben Brown").await;
        let dot = format!("$t('presence-dot', {})", ui::room_item("Ben Brown"));
        ana.wait(
            "Ben shown online on the DM",
            &format!("{dot} && {dot}.getAttribute('aria-label') === 'Online'"),
        )
        .await;
        ui::send(&ana, "Just between us").await;
        ben.wait(
            "the DM with Ana in Ben's sidebar",
            &ui::room_item("Ana Lima"),
        )
        .await;
        ui::open_room(&ben, "Ana Lima").await;
        ui::wait_message(&ben, "Just between us").await;
        for p in [&ana, &ben] {
            ui::check_page_healthy(p).await;
        }
        // Ben leaves: Ana sees him go offline.
        ben.goto("about:blank").await;
        ana.wait_within(
            "Ben shown offline once his page is gone",
            &format!("{dot} && {dot}.getAttribute('aria-label') === 'Offline'"),
            Duration::from_secs(15),
        )
        .await;
        ana.screenshot("dm-presence").await;
        ui::check_page_healthy(&ana).await;
    });
}
