//! Screenshots of the main screens at desktop (1280x800) and phone (360x740) sizes: sign-in,
//! room list and conversation, search results, image lightbox. Each screen is also checked
//! (horizontal overflow, key controls on screen, the lightbox image inside the viewport); those
//! checks are collected, so every screenshot is taken before the test fails with all of them.

use std::path::PathBuf;

use crate::cdp::Page;
use crate::run;
use crate::server::{Account, Server};
use crate::ui;

struct Screen {
    label: &'static str,
    width: u32,
    height: u32,
    phone: bool,
}

const SCREENS: [Screen; 2] = [
    Screen {
        label: "desktop",
        width: 1280,
        height: 800,
        phone: false,
    },
    Screen {
        label: "phone",
        width: 360,
        height: 740,
        phone: true,
    },
];

#[test]
fn screenshots_of_the_main_screens_at_desktop_and_phone_sizes() {
    run("screens", |cx| async move {
        let server = &cx.server;
        server.setup_admin().await;
        let ana = server.register("ana", "Ana Lima").await;
        let ben = server.register("ben", "Ben Brown").await;
        let design = server.create_room(&ana, "design", "public").await;
        server.invite(&ana, &design, "ben").await;
        let lunch = server.create_room(&ben, "lunch", "public").await;
        server.invite(&ben, &lunch, "ana").await;
        for (who, text) in [
            (
                &ana,
                "Morning! The new onboarding mockups are in the shared folder.",
            ),
            (&ben, "Nice, I'll have a look after standup."),
            (
                &ben,
                "The empty states look great. Can we make the buttons a bit larger on phones?",
            ),
            (&ana, "Good point — I'll bump them to 44 px."),
        ] {
            server.send(who, &design, text).await;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let png = dir.path().join("mockup.png");
        ui::write_png(&png, 1200, 800);
        let bytes = std::fs::read(&png).expect("read png");
        server.send_image(&ben, &design, "mockup.png", &bytes).await;
        server
            .send(
                &ana,
                &design,
                "Lunch at noon? Pizza place or the new ramen bar?",
            )
            .await;
        for (who, text) in [
            (&ben, "Ramen for lunch, definitely"),
            (&ana, "Lunch is on me today"),
        ] {
            server.send(who, &lunch, text).await;
        }
        let dm = server
            .call(
                "POST",
                "/api/dm",
                Some(&ben.token),
                Some(serde_json::json!({"user_id": "ana"})),
                200,
            )
            .await;
        let dm_id = dm["room"]["id"].as_str().unwrap_or_default().to_string();
        server
            .send(&ben, &dm_id, "Are you joining the lunch?")
            .await;

        let mut shots = Shots::default();
        for s in &SCREENS {
            let page = cx.browser.new_page(&format!("ana-{}", s.label)).await;
            page.set_viewport(s.width, s.height, s.phone).await;
            shoot(&page, server, &ana, s, &mut shots).await;
            ui::check_page_healthy(&page).await;
        }
        println!("browser screenshots:");
        for p in &shots.saved {
            println!("  {}", p.display());
        }
        assert!(
            shots.problems.is_empty(),
            "layout problems:\n  {}",
            shots.problems.join("\n  ")
        );
    });
}

/// Screenshots taken and problems found so far.
#[derive(Default)]
struct Shots {
    saved: Vec<PathBuf>,
    problems: Vec<String>,
}

impl Shots {
    async fn save(&mut self, page: &Page, name: &str) {
        self.saved.push(page.screenshot(name).await);
    }

    /// Notes a problem unless `expr` gives `true` on `page` (it may give a string saying
    /// what is wrong), naming the screenshot `shot`.
    async fn expect(&mut self, page: &Page, shot: &str, what: &str, expr: &str) {
        let v = page.eval(expr).await;
        if v != true {
            self.problems
                .push(format!("{}: {what} (see {shot}.png; got {v})", page.name));
        }
    }

    /// Notes a problem if the document is wider than the viewport.
    async fn no_overflow(&mut self, page: &Page, shot: &str) {
        self.expect(
            page,
            shot,
            "no horizontal overflow",
            "document.documentElement.scrollWidth <= innerWidth + 1
               || `the document is ${document.documentElement.scrollWidth}px wide in a ${innerWidth}px viewport`",
        )
        .await;
    }
}

async fn shoot(page: &Page, server: &Server, ana: &Account, s: &Screen, shots: &mut Shots) {
    let l = s.label;
    page.goto(&server.url("/")).await;
    page.wait_testid("login-form").await;
    shots.save(page, &format!("login-{l}")).await;
    shots.no_overflow(page, &format!("login-{l}")).await;

    page.fill_testid("login-username", &ana.id).await;
    page.fill_testid("login-password", &ana.password).await;
    page.click_testid("login-submit").await;
    ui::wait_signed_in(page).await;
    page.wait(
        "the rooms and the DM in the sidebar",
        "$$t('room-item').length >= 3 && $$t('room-preview').every((p) => txt(p) !== '')",
    )
    .await;
    if s.phone {
        // The room list is the first screen on a phone.
        shots.save(page, &format!("rooms-{l}")).await;
        shots.no_overflow(page, &format!("rooms-{l}")).await;
    }
    ui::open_room(page, "design").await;
    ui::wait_message(page, "Good point — I'll bump them to 44 px.").await;
    page.wait(
        "the image thumbnail to load",
        "$$t('message-image', msgList()).some((i) => i.complete && i.naturalWidth > 0)",
    )
    .await;
    let shot = format!("conversation-{l}");
    shots.save(page, &shot).await;
    shots
        .expect(
            page,
            &shot,
            "the composer is on screen",
            "vis($t('composer')) && inViewport($t('composer'))",
        )
        .await;
    if s.phone {
        shots
            .expect(
                page,
                &shot,
                "on a phone the conversation takes the screen (no room list beside it)",
                "!$$t('room-item').some((r) => vis(r) && inViewport(r))",
            )
            .await;
    }
    shots.no_overflow(page, &shot).await;

    // The lightbox.
    page.click("the image", "$$t('message-image', msgList()).find(vis)")
        .await;
    page.wait(
        "the full-size image in the lightbox",
        "vis($t('lightbox')) && (() => { const i = $t('lightbox').querySelector('img');
           return i && i.complete && i.naturalWidth > 0; })()",
    )
    .await;
    let shot = format!("lightbox-{l}");
    shots.save(page, &shot).await;
    shots
        .expect(
            page,
            &shot,
            "the lightbox shows the whole image inside the viewport",
            "(() => { const r = $t('lightbox').querySelector('img').getBoundingClientRect();
               return (r.left >= -1 && r.top >= -1 && r.right <= innerWidth + 1 && r.bottom <= innerHeight + 1)
                 || `image box ${Math.round(r.left)},${Math.round(r.top)} to ${Math.round(r.right)},${Math.round(r.bottom)} in a ${innerWidth}x${innerHeight} viewport`; })()",
        )
        .await;
    page.press("Escape").await;
    page.wait("the lightbox to close", "!vis($t('lightbox'))")
        .await;

    // Search results.
    if s.phone {
        page.click("the back button", "byLabel('Back to rooms')")
            .await;
    }
    page.fill_testid("search-input", "lunch").await;
    page.press("Enter").await;
    page.wait(
        "search results for 'lunch'",
        "vis($t('search-results')) && $$t('search-result').length >= 3",
    )
    .await;
    shots.save(page, &format!("search-{l}")).await;
    shots.no_overflow(page, &format!("search-{l}")).await;
}
