//! Search: a message far back in another room is found from the search box, and clicking the
//! result opens that room with the message on screen.

use serde_json::json;

use crate::cdp::js_str;
use crate::run;
use crate::ui;

#[test]
fn search_result_opens_the_room_at_the_message() {
    run("search", |cx| async move {
        let server = &cx.server;
        server.setup_admin().await;
        let ana = server.register("ana", "Ana Lima").await;
        let archive = server.create_room(&ana, "archive", "private").await;
        let chatter = server.create_room(&ana, "chatter", "private").await;
        let needle = "The quarterly xylophonist report is ready for review";
        let mut texts: Vec<String> = (1..=30)
            .map(|i| format!("Archive filler {i}: nothing to see here"))
            .collect();
        texts.push(needle.to_string());
        texts.extend((31..=150).map(|i| format!("Archive filler {i}: more routine chatter")));
        let ids = server.seed(&ana, &archive, &texts).await;
        let needle_id = ids[30].clone();
        let chatter_texts: Vec<String> = (1..=5).map(|i| format!("Chatter line {i}")).collect();
        server.seed(&ana, &chatter, &chatter_texts).await;
        server
            .wait_searchable(&ana, "xylophonist", &needle_id)
            .await;

        let page = cx.browser.new_page("ana").await;
        ui::login(&page, server, &ana).await;
        ui::open_room(&page, "chatter").await;
        ui::wait_message(&page, "Chatter line 5").await;
        // Switching to the archive first would load its newest page: the needle is 120
        // messages back, far outside it.
        ui::open_room(&page, "archive").await;
        ui::wait_message(&page, &texts[texts.len() - 1]).await;
        page.check(
            "the needle is not on the first page of the archive",
            &format!(
                "!messages().some((m) => m.dataset.messageId === {})",
                js_str(&needle_id)
            ),
        )
        .await;
        ui::open_room(&page, "chatter").await;

        page.fill_testid("search-input", "xylophonist").await;
        page.press("Enter").await;
        page.wait_testid("search-results").await;
        let result = format!(
            "$$t('search-result').find((r) => r.dataset.messageId === {})",
            js_str(&needle_id)
        );
        page.wait("the needle among the search results", &result)
            .await;
        page.check(
            "the result names its room",
            &format!("{result}.dataset.roomId === {}", js_str(&archive)),
        )
        .await;
        page.check(
            "the snippet shows the matched word",
            &format!("/xylophonist/i.test(txt($t('search-snippet', {result})))"),
        )
        .await;
        let hits = page.eval("$$t('search-result').length").await;
        assert_eq!(hits, json!(1), "only the needle matches 'xylophonist'");
        page.screenshot("search-results").await;

        page.click("the search result", &result).await;
        ui::wait_room_open(&page, "archive").await;
        let target = format!(
            "messages().find((m) => m.dataset.messageId === {})",
            js_str(&needle_id)
        );
        page.wait(
            "the found message on screen (inside the message list and the viewport)",
            &format!("{target} && within({target}, msgList()) && inViewport({target})"),
        )
        .await;
        page.check(
            "it is the needle's text",
            &format!("txt($t('message-text', {target})) === {}", js_str(needle)),
        )
        .await;
        page.screenshot("search-opened").await;
        ui::check_no_duplicate_ids(&page).await;
        ui::check_page_healthy(&page).await;
    });
}
