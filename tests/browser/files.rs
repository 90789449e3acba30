//! Uploads through the attach input: a PNG shows as a loaded thumbnail for the sender and the
//! other member, opens full size in the lightbox; another file shows as a file card.

use std::time::Duration;

use crate::run;
use crate::ui;

/// The image of the message list that has loaded (naturalWidth > 0), as [src, naturalWidth].
const LOADED_IMAGE: &str = "(() => { const i = $$t('message-image', msgList()).find((i) => i.complete && i.naturalWidth > 0);
   return i ? [i.currentSrc || i.src, i.naturalWidth] : null; })()";

#[test]
fn image_upload_shows_a_thumbnail_to_both_users() {
    run("files", |cx| async move {
        let server = &cx.server;
        server.setup_admin().await;
        let ana = server.register("ana", "Ana Lima").await;
        let ben = server.register("ben", "Ben Brown").await;
        let room = server.create_room(&ana, "photos", "private").await;
        server.invite(&ana, &room, "ben").await;

        let a = cx.browser.new_page("ana").await;
        let b = cx.browser.new_page("ben").await;
        ui::login(&a, server, &ana).await;
        ui::login(&b, server, &ben).await;
        ui::open_room(&a, "photos").await;
        ui::open_room(&b, "photos").await;

        let dir = tempfile::tempdir().expect("temp dir");
        let png = dir.path().join("sunset.png");
        ui::write_png(&png, 800, 600);
        a.set_files("the attach input", "$t('attach')", &[&png])
            .await;

        let mine = a
            .wait_within(
                "the uploaded image's thumbnail to load in Ana's view",
                LOADED_IMAGE,
                Duration::from_secs(20),
            )
            .await;
        let theirs = b
            .wait_within(
                "the image's thumbnail to load in Ben's view",
                LOADED_IMAGE,
                Duration::from_secs(20),
            )
            .await;
        for (who, v) in [("ana", &mine), ("ben", &theirs)] {
            let src = v[0].as_str().unwrap_or_default();
            assert!(
                src.starts_with(&server.url("/files/")),
                "{who}'s thumbnail comes from this server's /files/: {src}"
            );
        }
        a.wait(
            "the upload tray to clear",
            "!$$t('upload-progress').some(vis)",
        )
        .await;
        a.screenshot("image-sent").await;
        b.screenshot("image-received").await;

        let history = server.history(&ana, &room).await;
        let images: Vec<_> = history.iter().filter(|m| m["type"] == "image").collect();
        assert_eq!(images.len(), 1, "one image message stored: {history:?}");
        assert_eq!(images[0]["file"]["name"], "sunset.png", "{:?}", images[0]);
        assert_eq!(images[0]["file"]["width"], 800, "{:?}", images[0]);

        // Ben opens it full size.
        b.click("the image", "$$t('message-image', msgList()).find(vis)")
            .await;
        b.wait_testid("lightbox").await;
        b.wait(
            "the full-size image (800 px wide) in the lightbox",
            "(() => { const i = $t('lightbox').querySelector('img');
               return i && i.complete && i.naturalWidth === 800; })()",
        )
        .await;
        b.check(
            "the lightbox image fits the viewport",
            "(() => { const r = $t('lightbox').querySelector('img').getBoundingClientRect();
               return r.width > 0 && r.right <= innerWidth + 1 && r.bottom <= innerHeight + 1; })()",
        )
        .await;
        b.screenshot("lightbox").await;
        b.press("Escape").await;
        b.wait("the lightbox to close on Escape", "!vis($t('lightbox'))")
            .await;

        // A non-image becomes a file card.
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, "meeting notes\n").expect("write notes.txt");
        a.set_files("the attach input", "$t('attach')", &[&txt])
            .await;
        for p in [&a, &b] {
            p.wait(
                "a file card for notes.txt",
                "$$t('file-card', msgList()).some((c) => c.textContent.includes('notes.txt'))",
            )
            .await;
        }
        ui::check_no_duplicate_ids(&a).await;
        ui::check_no_duplicate_ids(&b).await;
        for p in [&a, &b] {
            ui::check_page_healthy(p).await;
        }
    });
}
