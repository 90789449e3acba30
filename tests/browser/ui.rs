//! User flows through the web UI (sign in, register, open a room, send), written against the
//! stable `data-testid` hooks only, plus checks shared by several tests.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::cdp::{Page, js_str};
use crate::server::{Account, Server};

/// Signs `who` in through the login form and waits for the room list.
pub async fn login(page: &Page, server: &Server, who: &Account) {
    page.goto(&server.url("/")).await;
    page.wait_testid("login-form").await;
    page.fill_testid("login-username", &who.id).await;
    page.fill_testid("login-password", &who.password).await;
    page.click_testid("login-submit").await;
    wait_signed_in(page).await;
}

/// Waits for the signed-in app: the room list is shown.
pub async fn wait_signed_in(page: &Page) {
    page.wait_within(
        "the signed-in app (a visible room-list)",
        "vis($t('room-list'))",
        Duration::from_secs(15),
    )
    .await;
}

/// Registers through "Create an account" on the sign-in screen.
pub async fn register(page: &Page, server: &Server, username: &str, display: &str) -> Account {
    let password = format!("{username}-password-1");
    page.goto(&server.url("/")).await;
    page.click_testid("show-register").await;
    page.wait_testid("register-form").await;
    page.fill_testid("register-username", username).await;
    page.fill_testid("register-display-name", display).await;
    page.fill_testid("register-password", &password).await;
    page.click_testid("register-submit").await;
    wait_signed_in(page).await;
    let r = server.login(username, &password).await;
    assert_eq!(
        r.status, 200,
        "{username} registered through the UI cannot log in over REST: {}",
        r.text
    );
    Account {
        id: username.to_string(),
        name: display.to_string(),
        password,
        token: r.json["token"].as_str().unwrap_or_default().to_string(),
    }
}

/// The JS expression of the sidebar item of room `name`.
pub fn room_item(name: &str) -> String {
    format!("roomItem({})", js_str(name))
}

/// Opens room `name` from the sidebar and waits until it is the current room with its
/// messages loaded.
pub async fn open_room(page: &Page, name: &str) {
    page.wait(&format!("room {name:?} in the room list"), &room_item(name))
        .await;
    page.click(&format!("room item {name:?}"), &room_item(name))
        .await;
    wait_room_open(page, name).await;
}

/// Waits until `name` is the open room: its title shows, its item is marked current, and
/// the message list is on screen.
pub async fn wait_room_open(page: &Page, name: &str) {
    page.wait(
        &format!("room {name:?} to be open (title, aria-current, message list)"),
        &format!(
            "norm(txt($t('room-title'))) === {n} && vis($t('room-title'))
             && {item} && {item}.getAttribute('aria-current') === 'true'
             && vis(msgList())",
            n = js_str(name),
            item = room_item(name)
        ),
    )
    .await;
}

/// Types `text` into the composer and presses Enter.
pub async fn send(page: &Page, text: &str) {
    page.fill_testid("composer", text).await;
    page.press("Enter").await;
}

/// Waits until the open conversation shows a stored message with exactly this text; returns
/// its `data-message-id`.
pub async fn wait_message(page: &Page, text: &str) -> String {
    let v = page
        .wait_within(
            &format!("message {text:?} in the message list"),
            &format!(
                "(() => {{ const m = msgByText({t}); return m && m.dataset.messageId || null; }})()",
                t = js_str(text)
            ),
            Duration::from_secs(15),
        )
        .await;
    v.as_str().unwrap_or_default().to_string()
}

/// How many `message` elements of the list have exactly this text.
pub async fn count_messages(page: &Page, text: &str) -> u64 {
    page.eval(&format!("msgsByText({}).length", js_str(text)))
        .await
        .as_u64()
        .unwrap_or(0)
}

/// Fails unless every `message` element of the list has a distinct `data-message-id`.
pub async fn check_no_duplicate_ids(page: &Page) {
    let v = page
        .eval(
            "(() => { const ids = messages().map((m) => m.dataset.messageId);
               const seen = new Set(), dups = [];
               for (const id of ids) { if (!id) dups.push('(missing id)'); else if (seen.has(id)) dups.push(id); seen.add(id); }
               return {count: ids.length, dups}; })()",
        )
        .await;
    if v["dups"].as_array().is_some_and(|d| !d.is_empty()) {
        page.fail(&format!(
            "the message list shows duplicates (or messages without an id): {v}"
        ))
        .await;
    }
}

/// The text of the `message-status` of the message with this id ("" if it has none).
pub async fn status_of(page: &Page, id: &str) -> String {
    page.eval(&format!(
        "(() => {{ const m = messages().find((m) => m.dataset.messageId === {id});
           return m ? txt($t('message-status', m)) || '' : '(no such message)'; }})()",
        id = js_str(id)
    ))
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Waits until the status of message `id` satisfies the JS predicate `pred` over `s`.
pub async fn wait_status(page: &Page, id: &str, what: &str, pred: &str) -> String {
    page.wait_within(
        &format!("message {id} to show status {what}"),
        &format!(
            "(() => {{ const m = messages().find((m) => m.dataset.messageId === {id});
               const s = m ? txt($t('message-status', m)) : null;
               return s != null && ({pred}) ? s : null; }})()",
            id = js_str(id)
        ),
        Duration::from_secs(15),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Fails if the page threw an uncaught exception or opened a JavaScript dialog.
pub async fn check_page_healthy(page: &Page) {
    let uncaught: Vec<String> = page
        .console()
        .into_iter()
        .filter(|l| l.starts_with("uncaught") || l.contains("crashed"))
        .collect();
    if !uncaught.is_empty() {
        page.fail(&format!("the page threw: {uncaught:?}")).await;
    }
    let dialogs = page.dialogs();
    if !dialogs.is_empty() {
        page.fail(&format!("the page opened dialogs: {dialogs:?}"))
            .await;
    }
}

/// Writes a colourful PNG of `w`x`h` to `path`.
pub fn write_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f32 / w as f32;
        let fy = y as f32 / h as f32;
        let sun = ((fx - 0.7).powi(2) + (fy - 0.35).powi(2)).sqrt() < 0.12;
        if sun {
            image::Rgb([255, 214, 90])
        } else if fy > 0.7 {
            image::Rgb([(30.0 + 40.0 * fx) as u8, (90.0 + 60.0 * fy) as u8, 60])
        } else {
            image::Rgb([
                (250.0 - 120.0 * fy) as u8,
                (120.0 + 60.0 * fx) as u8,
                (160.0 + 90.0 * fy) as u8,
            ])
        }
    });
    img.save(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The contents of messages in REST history with exactly `text`.
pub fn with_content<'a>(history: &'a [Value], text: &str) -> Vec<&'a Value> {
    history.iter().filter(|m| m["content"] == text).collect()
}
