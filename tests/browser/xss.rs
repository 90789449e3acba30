//! Markup in user input is shown as text: messages, a room name and a display name holding
//! `<script>` and `<img onerror>` render literally, create no elements, run nothing, open no
//! dialog and load nothing.

use std::time::Duration;

use serde_json::json;

use crate::cdp::js_str;
use crate::run;
use crate::ui;

const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "<img src=x onerror=alert(1)>";
const BOTH: &str = "Look: <script>alert(1)</script> and <img src=x onerror=alert(1)> & <b>bold</b>";
const ROOM: &str = "<b>ops</b><img src=x onerror=alert(3)>";
const NAME: &str = "Mallory <img src=x onerror=alert(2)>";

#[test]
fn html_in_messages_is_shown_as_text() {
    run("xss", |cx| async move {
        let server = &cx.server;
        server.setup_admin().await;
        let ana = server.register("ana", "Ana Lima").await;
        let mallory = server.register("mallory", NAME).await;
        let room = server.create_room(&mallory, ROOM, "private").await;
        server.invite(&mallory, &room, "ana").await;
        server.send(&mallory, &room, IMG).await;

        let page = cx.browser.new_page("ana").await;
        ui::login(&page, server, &ana).await;
        ui::open_room(&page, ROOM).await;
        ui::wait_message(&page, IMG).await;
        ui::send(&page, SCRIPT).await;
        ui::wait_message(&page, SCRIPT).await;
        server.send(&mallory, &room, BOTH).await;
        ui::wait_message(&page, BOTH).await;
        // Give an injected handler the time to fire, if there were one.
        tokio::time::sleep(Duration::from_millis(1000)).await;

        for text in [IMG, SCRIPT, BOTH] {
            page.check(
                &format!("{text:?} shown literally, as one text node run"),
                &format!(
                    "(() => {{ const t = $t('message-text', msgByText({s}));
                       return t.textContent.trim() === {s} && !t.querySelector('img, script, b'); }})()",
                    s = js_str(text)
                ),
            )
            .await;
        }
        page.check(
            "no img, script or b element inside the message list",
            "!msgList().querySelector('img, script, b')",
        )
        .await;
        page.check(
            "the sender's display name is shown as text",
            &format!(
                "messages().some((m) => m.dataset.senderId === 'mallory' && m.textContent.includes({}))",
                js_str(NAME)
            ),
        )
        .await;
        page.check(
            "the room name is text, in the sidebar and the title",
            &format!(
                "txt($t('room-name', {item})) === {n} && !{item}.querySelector('img, b')
                 && txt($t('room-title')) === {n} && !$t('room-title').querySelector('img, b')",
                item = ui::room_item(ROOM),
                n = js_str(ROOM)
            ),
        )
        .await;
        page.check(
            "the room preview is text",
            &format!(
                "txt($t('room-preview', {item})).includes({b}) && !$t('room-list').querySelector('img, script')",
                item = ui::room_item(ROOM),
                b = js_str(BOTH)
            ),
        )
        .await;

        // Search snippets too.
        page.fill_testid("search-input", "alert").await;
        page.press("Enter").await;
        page.wait(
            "search results for 'alert'",
            "$$t('search-result').length >= 3",
        )
        .await;
        page.check(
            "snippets are text",
            "!$t('search-results').querySelector('img, script, b')
             && $$t('search-snippet').some((s) => s.textContent.includes('<script>'))",
        )
        .await;
        page.screenshot("markup-as-text").await;

        let dialogs = page.dialogs();
        assert!(dialogs.is_empty(), "the page opened dialogs: {dialogs:?}");
        let csp = page.eval("window.__cspViolations").await;
        assert_eq!(
            csp,
            json!([]),
            "the page tried to run or load something its policy refused (injected markup?)"
        );
        let bad = server.url("/x");
        let loads: Vec<String> = page
            .requests()
            .into_iter()
            .filter(|u| u == &bad || u.starts_with(&format!("{bad}?")))
            .collect();
        assert!(
            loads.is_empty(),
            "an injected <img src=x> was loaded: {loads:?}"
        );
        ui::check_page_healthy(&page).await;
    });
}
