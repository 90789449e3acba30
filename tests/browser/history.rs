//! Scrolling back: 200 messages in a room, a page reload, then scrolling the message list to
//! the top until the first message shows, with every message present once and in order.

use std::time::Duration;

use serde_json::json;

use crate::cdp::js_str;
use crate::run;
use crate::ui;

const COUNT: usize = 200;

fn text_of(i: usize) -> String {
    format!("History message {i:03} of {COUNT}")
}

#[test]
fn reload_and_scroll_back_through_200_messages() {
    run("history", |cx| async move {
        let server = &cx.server;
        server.setup_admin().await;
        let ana = server.register("ana", "Ana Lima").await;
        let ben = server.register("ben", "Ben Brown").await;
        let room = server.create_room(&ben, "history", "private").await;
        server.invite(&ben, &room, "ana").await;
        let texts: Vec<String> = (1..=COUNT).map(text_of).collect();
        let ids = server.seed(&ben, &room, &texts).await;
        // Ana has read them all, so the room opens at the newest page.
        server
            .call(
                "POST",
                &format!("/api/rooms/{room}/read"),
                Some(&ana.token),
                Some(json!({"message_id": ids[COUNT - 1]})),
                200,
            )
            .await;

        let page = cx.browser.new_page("ana").await;
        ui::login(&page, server, &ana).await;
        ui::open_room(&page, "history").await;
        ui::wait_message(&page, &text_of(COUNT)).await;
        let first_load = page.eval("messages().length").await;
        eprintln!("messages shown before scrolling: {first_load}");

        // A reload keeps the session and comes back to the room.
        page.reload().await;
        ui::wait_signed_in(&page).await;
        page.wait(
            "the room to be open again after the reload",
            &format!(
                "{} && norm(txt($t('room-title'))) === 'history'",
                ui::room_item("history")
            ),
        )
        .await;
        ui::wait_message(&page, &text_of(COUNT)).await;
        page.check(
            "the newest message is in view after opening",
            &format!("within(msgByText({}), msgList())", js_str(&text_of(COUNT))),
        )
        .await;

        // Scroll to the top until the first message is there.
        let first = js_str(&text_of(1));
        let mut rounds = 0;
        loop {
            let state = page
                .eval(&format!(
                    "(() => {{ const l = msgList(); l.scrollTop = 0;
                       l.dispatchEvent(new Event('scroll'));
                       return {{n: messages().length, first: !!msgByText({first})}}; }})()"
                ))
                .await;
            if state["first"] == json!(true) {
                break;
            }
            rounds += 1;
            if rounds > 30 {
                page.fail(&format!(
                    "after {rounds} scrolls to the top the first message is still not shown \
                     ({} of {COUNT} messages loaded)",
                    state["n"]
                ))
                .await;
            }
            let n = state["n"].as_u64().unwrap_or(0);
            // Wait for the next page (or give up this round after 5 s and scroll again).
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let now = page.eval("messages().length").await.as_u64().unwrap_or(0);
                    if now > n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
        }
        eprintln!("reached the first message after {rounds} scrolls to the top");
        page.eval("(() => { msgList().scrollTop = 0; return 1; })()")
            .await;
        page.wait(
            "the first message to be in view at the top of the list",
            &format!("within(msgByText({first}), msgList())"),
        )
        .await;
        page.screenshot("scrolled-to-top").await;

        // Every message once, in order, with the ids the server gave them.
        let shown = page
            .eval("messages().map((m) => [m.dataset.messageId, txt($t('message-text', m))])")
            .await;
        let shown = shown.as_array().cloned().unwrap_or_default();
        let shown_ids: Vec<&str> = shown.iter().map(|p| p[0].as_str().unwrap_or("")).collect();
        let shown_texts: Vec<&str> = shown.iter().map(|p| p[1].as_str().unwrap_or("")).collect();
        ui::check_no_duplicate_ids(&page).await;
        if shown_ids.len() != COUNT
            || shown_ids != ids.iter().map(String::as_str).collect::<Vec<_>>()
            || shown_texts != texts.iter().map(String::as_str).collect::<Vec<_>>()
        {
            let missing: Vec<&String> = texts
                .iter()
                .filter(|t| !shown_texts.contains(&t.as_str()))
                .take(10)
                .collect();
            page.fail(&format!(
                "expected the {COUNT} messages once each, oldest first; the list has {} \
                 (missing, first 10: {missing:?}; first shown: {:?})",
                shown_ids.len(),
                &shown_texts[..shown_texts.len().min(5)]
            ))
            .await;
        }
        page.check(
            "a day separator heads the messages",
            "$$t('day-separator', msgList()).length >= 1",
        )
        .await;

        // "Jump to latest" brings the newest message back.
        page.wait_testid("jump-latest").await;
        page.click_testid("jump-latest").await;
        page.wait(
            "the newest message in view after Jump to latest",
            &format!("within(msgByText({}), msgList())", js_str(&text_of(COUNT))),
        )
        .await;
        ui::check_page_healthy(&page).await;
    });
}
