//! Search: `GET /api/search` and the WebSocket `search` request find messages within 2 s of their ack, only in the caller's rooms, with phrases, prefixes, filters, sorting and paging; the index recovers after kill -9 and `confab reindex` rebuilds it.

use std::collections::BTreeSet;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Client, Options, Server, id_of, percent_encode};

/// How soon after its ack (or edit, delete, restart) a change must show in search results.
const SEARCHABLE_WITHIN: Duration = Duration::from_secs(2);
/// How often the tests ask again while waiting.
const POLL_EVERY: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Mints a token for `user` and connects with it; returns both.
async fn user(server: &Server, user: &str) -> (String, Client) {
    let token = server.token(user, None);
    let client = Client::connect(server, &token).await;
    (token, client)
}

/// A query string from (name, value) pairs, values percent-encoded (a space is `%20`).
fn qs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `q=<text>` alone.
fn q(text: &str) -> String {
    qs(&[("q", text)])
}

/// The message ids of an answer's hits, in order.
fn ids(ans: &Value) -> Vec<String> {
    ans["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("`hits` is not an array: {ans}"))
        .iter()
        .map(|h| {
            h["message"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("hit.message.id is not a string: {h}"))
                .to_string()
        })
        .collect()
}

/// The message ids of an answer's hits, as a set.
fn id_set(ans: &Value) -> BTreeSet<String> {
    ids(ans).into_iter().collect()
}

/// The ids of messages, as a set.
fn set_of(messages: &[&Value]) -> BTreeSet<String> {
    messages.iter().map(|m| sid(m)).collect()
}

/// A message's id as a String.
fn sid(m: &Value) -> String {
    m["id"]
        .as_str()
        .unwrap_or_else(|| panic!("message.id is not a string: {m}"))
        .to_string()
}

fn has(ans: &Value, m: &Value) -> bool {
    ids(ans).contains(&sid(m))
}

/// The hit for message `m` in an answer.
fn hit_for<'a>(ans: &'a Value, m: &Value) -> &'a Value {
    ans["hits"]
        .as_array()
        .and_then(|hits| hits.iter().find(|h| h["message"]["id"] == m["id"]))
        .unwrap_or_else(|| panic!("no hit for message {} in {ans}", m["id"]))
}

/// A message record without `status` (which is computed at read time and may move on).
fn without_status(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("status");
    }
    m
}

/// Lowercases and strips the accents the tests use, to compare highlighted words.
fn fold(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            other => other,
        })
        .collect()
}

/// The texts a hit's `highlights` select in its `snippet`, read as `[start, end)` offsets in
/// UTF-16 code units. Checks every range: two integers, non-empty, inside the snippet, in
/// ascending order without overlap, and not splitting a surrogate pair.
fn highlighted(hit: &Value) -> Vec<String> {
    let snippet = hit["snippet"]
        .as_str()
        .unwrap_or_else(|| panic!("hit.snippet is not a string: {hit}"));
    let units: Vec<u16> = snippet.encode_utf16().collect();
    let ranges = hit["highlights"]
        .as_array()
        .unwrap_or_else(|| panic!("hit.highlights is not an array: {hit}"));
    let mut out = Vec::new();
    let mut prev_end = 0u64;
    for r in ranges {
        let (start, end) = match r.as_array().map(|a| a.as_slice()) {
            Some([s, e]) => (
                s.as_u64()
                    .unwrap_or_else(|| panic!("highlight start is not an integer: {hit}")),
                e.as_u64()
                    .unwrap_or_else(|| panic!("highlight end is not an integer: {hit}")),
            ),
            _ => panic!("a highlight is not [start, end]: {r} in {hit}"),
        };
        assert!(
            start < end && end as usize <= units.len() && start >= prev_end,
            "highlight {r} must be a non-empty range inside the snippet ({} UTF-16 units), \
             after the previous one (ending at {prev_end}): {hit}",
            units.len()
        );
        prev_end = end;
        let text = String::from_utf16(&units[start as usize..end as usize]).unwrap_or_else(|_| {
            panic!("highlight {r} splits a surrogate pair: offsets are not UTF-16 units? {hit}")
        });
        out.push(text);
    }
    out
}

/// Checks the documented answer shape: hits (message, room, snippet, valid highlights), no
/// deleted message, no id twice, `next_cursor` null or a string, `took_ms` an integer.
fn check_answer(ans: &Value, what: &str) {
    let hits = ans["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: `hits` is not an array: {ans}"));
    let mut seen = BTreeSet::new();
    for h in hits {
        let m = &h["message"];
        assert!(
            m.is_object() && m["id"].is_string() && m["room_id"].is_string(),
            "{what}: hit.message is a message record: {h}"
        );
        assert!(
            seen.insert(m["id"].as_str().unwrap_or_default().to_string()),
            "{what}: message {} appears twice in one page: {ans}",
            m["id"]
        );
        assert!(
            m["deleted_at"].is_null(),
            "{what}: a deleted message is never returned: {h}"
        );
        let room = &h["room"];
        assert!(
            room["id"].is_string() && room["name"].is_string() && room["kind"].is_string(),
            "{what}: hit.room has id, name and kind: {h}"
        );
        assert_eq!(
            room["id"], m["room_id"],
            "{what}: hit.room is the message's room: {h}"
        );
        assert!(h["snippet"].is_string(), "{what}: hit.snippet: {h}");
        highlighted(h);
    }
    assert!(
        ans["next_cursor"].is_null() || ans["next_cursor"].is_string(),
        "{what}: next_cursor is null or a string: {ans}"
    );
    assert!(
        ans["took_ms"].is_u64(),
        "{what}: took_ms is an integer: {ans}"
    );
}

/// `GET /api/search?<query>` as `token`; panics unless 200 with a well-formed answer.
async fn search(server: &Server, token: &str, query: &str) -> Value {
    let r = server
        .get(&format!("/api/search?{query}"), Some(token))
        .await;
    assert_eq!(r.status, 200, "GET /api/search?{query}: {}", r.text);
    check_answer(&r.json, &format!("GET /api/search?{query}"));
    r.json
}

/// Asks `GET /api/search?<query>` every 50 ms until `pred` holds; panics unless it holds within
/// 2 s of `since`. Returns the answer that satisfied it.
async fn search_until(
    server: &Server,
    token: &str,
    query: &str,
    since: Instant,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let ans = search(server, token, query).await;
        let elapsed = since.elapsed();
        if pred(&ans) {
            assert!(
                elapsed <= SEARCHABLE_WITHIN,
                "{what}: took {elapsed:?} (over {SEARCHABLE_WITHIN:?}) for GET /api/search?{query}"
            );
            return ans;
        }
        if elapsed > SEARCHABLE_WITHIN {
            panic!(
                "{what}: not within {SEARCHABLE_WITHIN:?}; last answer to GET /api/search?{query}: {ans}"
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The WebSocket `search` request; panics unless acked with a well-formed answer.
async fn ws_search(c: &mut Client, data: Value) -> Value {
    let shown = data.to_string();
    let ans = c.ok("search", data).await;
    check_answer(&ans, &format!("ws search {shown}"));
    ans
}

/// Like `search_until`, over the WebSocket `search` request.
async fn ws_search_until(
    c: &mut Client,
    data: Value,
    since: Instant,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let ans = ws_search(c, data.clone()).await;
        let elapsed = since.elapsed();
        if pred(&ans) {
            assert!(
                elapsed <= SEARCHABLE_WITHIN,
                "{what}: took {elapsed:?} (over {SEARCHABLE_WITHIN:?}) for ws search {data}"
            );
            return ans;
        }
        if elapsed > SEARCHABLE_WITHIN {
            panic!(
                "{what}: not within {SEARCHABLE_WITHIN:?}; last answer to ws search {data}: {ans}"
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Walks every page of `GET /api/search?<base>` through `next_cursor`; returns the ids in
/// order and the size of each page.
async fn walk_pages(server: &Server, token: &str, base: &str) -> (Vec<String>, Vec<usize>) {
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let query = match &cursor {
            Some(c) => format!("{base}&cursor={}", percent_encode(c)),
            None => base.to_string(),
        };
        let ans = search(server, token, &query).await;
        let page = ids(&ans);
        sizes.push(page.len());
        all.extend(page);
        match ans["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (all, sizes),
        }
    }
    panic!("paging {base} did not end within 50 pages; page sizes so far {sizes:?}");
}

/// The sum of every sample of the Prometheus metric `name` (exact name, any labels).
async fn metric(server: &Server, name: &str) -> f64 {
    let r = server.get("/metrics", None).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text);
    let mut found: Option<f64> = None;
    for line in r.text.lines().filter(|l| !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        if &line[..end] != name {
            continue;
        }
        let rest = match line.rfind('}') {
            Some(p) => &line[p + 1..],
            None => &line[end..],
        };
        let value: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric line without a value: {line}"));
        *found.get_or_insert(0.0) += value;
    }
    found.unwrap_or_else(|| panic!("/metrics has no `{name}`:\n{}", r.text))
}

/// Uploads `bytes` as `name` over `POST /api/files?name=..` with a Bearer token; returns the
/// Upload record.
async fn upload(server: &Server, token: &str, name: &str, bytes: &str) -> Value {
    let path = format!("/api/files?name={}", percent_encode(name));
    let r = server
        .http_raw(
            Method::POST,
            &path,
            Some(token),
            &[],
            Some(bytes.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "POST {path}: {}", r.text);
    assert!(r.json["file"]["id"].is_string(), "POST {path}: {}", r.text);
    r.json["file"].clone()
}

/// Asserts that a WebSocket request is refused with `code`.
async fn ws_refused(c: &mut Client, event: &str, data: Value, code: &str, what: &str) {
    let shown = data.to_string();
    match c.request(event, data).await {
        Err((got, message)) => assert_eq!(
            got, code,
            "{what}: {event} {shown} should be refused with {code}, got {got}: {message}"
        ),
        Ok(ack) => panic!("{what}: {event} {shown} should be refused with {code}, got ack {ack}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A message is searchable within 2 s of its ack over REST and over the WebSocket `search`
/// request. The hit carries the full message, the room (id, name, kind), a plain-text snippet
/// with the word, and highlights that, read as UTF-16 offsets into the snippet, select exactly
/// the matched word even after non-ASCII text (é: 2 bytes, 1 unit; ☕: 3 bytes, 1 unit; 🚀 and
/// 𝄞: 4 bytes, 1 code point, 2 units), so byte or code-point offsets would select other text.
#[tokio::test]
async fn new_messages_are_found_within_two_seconds_with_utf16_highlights() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("launch", "private").await;

    // Over REST.
    let text = "Café ☕ 🚀 naïve crew: we deploy tonight";
    let sent = alice.say(&room, text).await;
    let since = Instant::now();
    let ans = search_until(
        &server,
        &token,
        &q("deploy"),
        since,
        "a new message over REST",
        |a| has(a, &sent),
    )
    .await;
    let hit = hit_for(&ans, &sent);
    assert_eq!(
        without_status(&hit["message"]),
        without_status(&sent),
        "the hit carries the full message, as acked"
    );
    assert!(
        hit["message"]["status"].is_string(),
        "message.status: {hit}"
    );
    assert_eq!(hit["room"]["id"], room.as_str(), "hit.room.id: {hit}");
    assert_eq!(hit["room"]["name"], "launch", "hit.room.name: {hit}");
    assert_eq!(hit["room"]["kind"], "group", "hit.room.kind: {hit}");
    let snippet = hit["snippet"].as_str().expect("snippet is a string");
    assert!(
        snippet.contains("deploy"),
        "the snippet holds the word: {snippet:?}"
    );
    assert!(
        snippet.contains("Café ☕ 🚀"),
        "a message far shorter than a snippet is not cut: the non-ASCII text before the match is \
         in the snippet: {snippet:?}"
    );
    assert!(
        !snippet.contains('<') && !snippet.contains("&lt;"),
        "the snippet is plain text, never HTML: {snippet:?}"
    );
    let at = snippet.find("deploy").expect("deploy in snippet");
    let utf16_start = snippet[..at].encode_utf16().count();
    assert_eq!(
        hit["highlights"],
        json!([[utf16_start, utf16_start + 6]]),
        "one highlight over `deploy` in UTF-16 units (byte offset would be {at}, code-point \
         offset {}); snippet {snippet:?}",
        snippet[..at].chars().count()
    );
    assert_eq!(highlighted(hit), vec!["deploy"]);

    // Over WebSocket.
    let sent2 = alice.say(&room, "Ünïcode 𝄞 ☕ then rollout at noon").await;
    let since = Instant::now();
    let ws = ws_search_until(
        &mut alice,
        json!({"q": "rollout"}),
        since,
        "a new message over WebSocket",
        |a| has(a, &sent2),
    )
    .await;
    let hit = hit_for(&ws, &sent2);
    assert_eq!(
        without_status(&hit["message"]),
        without_status(&sent2),
        "ws: the hit carries the full message"
    );
    assert_eq!(hit["room"]["id"], room.as_str(), "ws hit.room.id: {hit}");
    assert_eq!(hit["room"]["name"], "launch", "ws hit.room.name: {hit}");
    let snippet = hit["snippet"].as_str().expect("snippet is a string");
    assert!(
        snippet.contains("𝄞 ☕ then rollout"),
        "ws snippet: {snippet:?}"
    );
    assert_eq!(
        highlighted(hit),
        vec!["rollout"],
        "ws: the highlight selects the word in UTF-16 units; snippet {snippet:?}, highlights {}",
        hit["highlights"]
    );

    // Both transports give the same answer.
    let rest = search(&server, &token, &q("rollout")).await;
    assert_eq!(rest["hits"], ws["hits"], "REST and WebSocket hits agree");
    assert_eq!(
        rest["next_cursor"],
        Value::Null,
        "one page: next_cursor null"
    );
}

/// `"red apple"` is a phrase (those words, in that order); `red apple` needs both words in any
/// order.
#[tokio::test]
async fn quoted_phrases_need_the_words_in_order() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("orchard", "private").await;
    let pie = alice.say(&room, "a red apple pie").await;
    let other = alice.say(&room, "an apple that is red").await;
    let green = alice.say(&room, "a green apple").await;
    let since = Instant::now();
    search_until(
        &server,
        &token,
        &q("apple "),
        since,
        "all three messages",
        |a| id_set(a) == set_of(&[&pie, &other, &green]),
    )
    .await;

    let phrase = search(&server, &token, &q("\"red apple\"")).await;
    assert_eq!(
        id_set(&phrase),
        set_of(&[&pie]),
        "\"red apple\" matches only 'a red apple pie': {phrase}"
    );
    let words: Vec<String> = highlighted(hit_for(&phrase, &pie))
        .iter()
        .flat_map(|t| t.split_whitespace().map(fold).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        words,
        vec!["red", "apple"],
        "the phrase's words are highlighted"
    );
    for (query, want, what) in [
        (
            "red apple",
            set_of(&[&pie, &other]),
            "both words, any order",
        ),
        (
            "apple red",
            set_of(&[&pie, &other]),
            "both words, any order",
        ),
        (
            "\"apple red\"",
            BTreeSet::new(),
            "the phrase in the other order",
        ),
        ("\"red apple\" pie", set_of(&[&pie]), "a phrase and a word"),
        (
            "green \"red apple\"",
            BTreeSet::new(),
            "every part must match",
        ),
    ] {
        let ans = search(&server, &token, &q(query)).await;
        assert_eq!(id_set(&ans), want, "q={query:?} ({what}): {ans}");
    }
    let ws = ws_search(&mut alice, json!({"q": "\"red apple\""})).await;
    assert_eq!(id_set(&ws), set_of(&[&pie]), "ws: the phrase: {ws}");
}

/// The last word is a prefix unless `q` ends with a space; earlier words are exact.
#[tokio::test]
async fn the_last_word_is_a_prefix_unless_followed_by_a_space() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("calendar", "private").await;
    let see = alice.say(&room, "see you friday").await;
    let deploy = alice.say(&room, "deploy on friday").await;
    let fridge = alice.say(&room, "the fridge is empty").await;
    let since = Instant::now();
    let ans = search_until(
        &server,
        &token,
        &q("frid"),
        since,
        "q=frid finds friday and fridge",
        |a| id_set(a) == set_of(&[&see, &deploy, &fridge]),
    )
    .await;
    for t in highlighted(hit_for(&ans, &see)) {
        let t = fold(&t);
        assert!(
            t.starts_with("frid") && "friday".starts_with(&t),
            "the prefix match highlights (part of) `friday`, got {t:?}: {ans}"
        );
    }
    assert!(
        !highlighted(hit_for(&ans, &see)).is_empty(),
        "a prefix match is highlighted: {ans}"
    );

    for (query, want, what) in [
        (
            "frid ",
            BTreeSet::new(),
            "a trailing space makes frid a whole word",
        ),
        ("friday ", set_of(&[&see, &deploy]), "the whole word"),
        (
            "deploy fri",
            set_of(&[&deploy]),
            "earlier word exact, last word prefix",
        ),
        (
            "depl friday",
            BTreeSet::new(),
            "only the last word is a prefix",
        ),
        (
            "fri deploy ",
            BTreeSet::new(),
            "only the last word is a prefix",
        ),
    ] {
        let ans = search(&server, &token, &q(query)).await;
        assert_eq!(id_set(&ans), want, "q={query:?} ({what}): {ans}");
    }
    let ws = ws_search(&mut alice, json!({"q": "deploy fri"})).await;
    assert_eq!(id_set(&ws), set_of(&[&deploy]), "ws q='deploy fri': {ws}");
    let ws = ws_search(&mut alice, json!({"q": "frid "})).await;
    assert!(ids(&ws).is_empty(), "ws q='frid ': {ws}");
}

/// Case and accents do not matter, in the query or in the message.
#[tokio::test]
async fn case_and_accents_do_not_matter() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("bistro", "private").await;
    let lait = alice.say(&room, "Café au lait").await;
    let royale = alice.say(&room, "CAFE ROYALE").await;
    let creme = alice.say(&room, "crème brûlée tonight").await;
    let since = Instant::now();
    let ans = search_until(
        &server,
        &token,
        &q("CAFE"),
        since,
        "q=CAFE finds Café and CAFE",
        |a| id_set(a) == set_of(&[&lait, &royale]),
    )
    .await;
    assert_eq!(
        highlighted(hit_for(&ans, &lait)),
        vec!["Café"],
        "q=CAFE highlights `Café` (UTF-16 offsets): {ans}"
    );
    for (query, want) in [
        ("café", set_of(&[&lait, &royale])),
        ("cafe ", set_of(&[&lait, &royale])),
        ("CAFÉ AU LAIT", set_of(&[&lait])),
        ("CREME BRULEE", set_of(&[&creme])),
        ("Crème ", set_of(&[&creme])),
        ("\"creme brulee\"", set_of(&[&creme])),
    ] {
        let ans = search(&server, &token, &q(query)).await;
        assert_eq!(id_set(&ans), want, "q={query:?}: {ans}");
    }
    let ans = search(&server, &token, &q("CREME BRULEE ")).await;
    let words: Vec<String> = highlighted(hit_for(&ans, &creme));
    assert_eq!(
        words,
        vec!["crème", "brûlée"],
        "accented words are highlighted whole: {ans}"
    );
    let ws = ws_search(&mut alice, json!({"q": "cafe"})).await;
    assert_eq!(id_set(&ws), set_of(&[&lait, &royale]), "ws q=cafe: {ws}");
}

/// Results come only from rooms the caller is a member of at query time: a non-member finds
/// nothing from a private room (and gets `not_found` when filtering on it), a member who leaves
/// finds nothing from it any more (their own messages included), the remaining member still
/// does; a public room's messages show only once the caller joined.
#[tokio::test]
async fn results_come_only_from_rooms_the_caller_is_in_now() {
    let server = Server::start();
    let (alice_t, mut alice) = user(&server, "alice").await;
    let (bob_t, mut bob) = user(&server, "bob").await;
    let (carol_t, mut carol) = user(&server, "carol").await;
    let hideout = alice.create_room("hideout", "private").await;
    alice.invite(&hideout, "bob").await;
    bob.next_event("room_added").await;

    let m1 = alice.say(&hideout, "the zanzibar plan").await;
    let since = Instant::now();
    search_until(
        &server,
        &alice_t,
        &q("zanzibar"),
        since,
        "alice finds her message",
        |a| ids(a) == vec![sid(&m1)],
    )
    .await;
    let ans = search(&server, &bob_t, &q("zanzibar")).await;
    assert_eq!(ids(&ans), vec![sid(&m1)], "bob, a member, finds it: {ans}");

    let ans = search(&server, &carol_t, &q("zanzibar")).await;
    assert!(
        ids(&ans).is_empty(),
        "carol, not a member, finds nothing: {ans}"
    );
    let ws = ws_search(&mut carol, json!({"q": "zanzibar"})).await;
    assert!(ids(&ws).is_empty(), "ws: carol finds nothing: {ws}");
    let r = server
        .get(
            &format!(
                "/api/search?{}",
                qs(&[("q", "zanzibar"), ("room", hideout.as_str())])
            ),
            Some(&carol_t),
        )
        .await;
    r.assert_error(404, "not_found", "carol filters on the private room");
    let r = server
        .get(
            &format!(
                "/api/search?{}",
                qs(&[("q", "zanzibar"), ("room", "123456789")])
            ),
            Some(&carol_t),
        )
        .await;
    r.assert_error(404, "not_found", "a room that does not exist");
    ws_refused(
        &mut carol,
        "search",
        json!({"q": "zanzibar", "room_id": hideout}),
        "not_found",
        "carol filters on the private room over ws",
    )
    .await;

    // Bob says something while a member, then leaves.
    let m2 = bob.say(&hideout, "zanzibar again from bob").await;
    let since = Instant::now();
    search_until(
        &server,
        &bob_t,
        &q("zanzibar"),
        since,
        "bob finds both",
        |a| ids(a) == vec![sid(&m2), sid(&m1)],
    )
    .await;
    bob.ok("leave_room", json!({"room_id": hideout})).await;
    let ans = search(&server, &bob_t, &q("zanzibar")).await;
    assert!(
        ids(&ans).is_empty(),
        "right after leaving, bob finds nothing from the room, even what was said while he was \
         a member: {ans}"
    );
    let ans = search(&server, &bob_t, &q("again")).await;
    assert!(ids(&ans).is_empty(), "not even his own message: {ans}");
    let ws = ws_search(&mut bob, json!({"q": "zanzibar"})).await;
    assert!(
        ids(&ws).is_empty(),
        "ws: bob finds nothing after leaving: {ws}"
    );
    let r = server
        .get(
            &format!(
                "/api/search?{}",
                qs(&[("q", "zanzibar"), ("room", hideout.as_str())])
            ),
            Some(&bob_t),
        )
        .await;
    r.assert_error(404, "not_found", "bob filters on the room he left");
    let ans = search(&server, &alice_t, &q("zanzibar")).await;
    assert_eq!(
        ids(&ans),
        vec![sid(&m2), sid(&m1)],
        "alice, still a member, finds both: {ans}"
    );

    // A public room: only once joined.
    let lobby = alice.create_room("lobby", "public").await;
    let m3 = alice.say(&lobby, "zanzibar for everyone").await;
    let since = Instant::now();
    search_until(
        &server,
        &alice_t,
        &q("zanzibar"),
        since,
        "alice finds the lobby message",
        |a| has(a, &m3),
    )
    .await;
    let ans = search(&server, &carol_t, &q("zanzibar")).await;
    assert!(
        ids(&ans).is_empty(),
        "carol has not joined the public room: {ans}"
    );
    carol.ok("join_room", json!({"room_id": lobby})).await;
    let ans = search(&server, &carol_t, &q("zanzibar")).await;
    assert_eq!(
        ids(&ans),
        vec![sid(&m3)],
        "after joining, carol finds the lobby's messages and still nothing private: {ans}"
    );
}

/// A deleted message leaves the results within 2 s; an edited one is found by its new words
/// and not by its old ones within 2 s, and only once.
#[tokio::test]
async fn deletes_vanish_and_edits_are_found_by_their_new_words() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("zoo", "private").await;
    let doomed = alice.say(&room, "ephemeral walrus sighting").await;
    let kept = alice.say(&room, "stable walrus colony").await;
    let since = Instant::now();
    search_until(&server, &token, &q("walrus"), since, "both messages", |a| {
        id_set(a) == set_of(&[&doomed, &kept])
    })
    .await;

    alice
        .ok(
            "delete_message",
            json!({"room_id": room, "message_id": doomed["id"]}),
        )
        .await;
    let since = Instant::now();
    search_until(
        &server,
        &token,
        &q("walrus"),
        since,
        "the deleted message leaves the results",
        |a| ids(a) == vec![sid(&kept)],
    )
    .await;
    for query in ["ephemeral", "sighting "] {
        let ans = search(&server, &token, &q(query)).await;
        assert!(ids(&ans).is_empty(), "q={query:?} after the delete: {ans}");
    }

    let edited = alice
        .ok(
            "edit_message",
            json!({"room_id": room, "message_id": kept["id"], "content": "stable narwhal colony"}),
        )
        .await["message"]
        .clone();
    let since = Instant::now();
    let ans = search_until(
        &server,
        &token,
        &q("narwhal"),
        since,
        "the edit's new word",
        |a| ids(a) == vec![sid(&kept)],
    )
    .await;
    let hit = hit_for(&ans, &kept);
    assert_eq!(
        without_status(&hit["message"]),
        without_status(&edited),
        "the hit carries the edited message"
    );
    assert!(hit["message"]["edited_at"].is_u64(), "edited_at: {hit}");
    assert_eq!(highlighted(hit), vec!["narwhal"], "{hit}");
    search_until(
        &server,
        &token,
        &q("walrus"),
        since,
        "the edit's old word stops matching",
        |a| ids(a).is_empty(),
    )
    .await;
    for query in ["stable", "colony "] {
        let ans = search(&server, &token, &q(query)).await;
        assert_eq!(
            ids(&ans),
            vec![sid(&kept)],
            "q={query:?}: the edited message once, no stale copy: {ans}"
        );
    }
    let ws = ws_search(&mut alice, json!({"q": "walrus"})).await;
    assert!(ids(&ws).is_empty(), "ws q=walrus: {ws}");
    let ws = ws_search(&mut alice, json!({"q": "narwhal"})).await;
    assert_eq!(ids(&ws), vec![sid(&kept)], "ws q=narwhal: {ws}");
}

/// Extra query parameters, the expected set of ids, and what the case checks.
type FilterCase<'a> = (Vec<(&'a str, &'a str)>, BTreeSet<String>, &'a str);

/// Filters: `room`, `sender`, `from` (inclusive) / `to` (exclusive), `has_file`, alone and
/// combined, over REST and WebSocket; a shared file's name is searchable with its message.
#[tokio::test]
async fn filters_by_room_sender_time_and_file() {
    let server = Server::start();
    let (alice_t, mut alice) = user(&server, "alice").await;
    let (bob_t, mut bob) = user(&server, "bob").await;
    let ops = alice.create_room("ops", "private").await;
    alice.invite(&ops, "bob").await;
    bob.next_event("room_added").await;
    let dev = alice.create_room("dev", "private").await;

    let gap = Duration::from_millis(20);
    let m1 = alice.say(&ops, "kiwi one").await;
    tokio::time::sleep(gap).await;
    let m2 = bob.say(&ops, "kiwi two").await;
    tokio::time::sleep(gap).await;
    let m3 = alice.say(&dev, "kiwi three").await;
    tokio::time::sleep(gap).await;
    let pdf = "%PDF-1.4\n% confab search test\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";
    let file = upload(&server, &alice_t, "report.pdf", pdf).await;
    let m4 = alice
        .ok(
            "send_message",
            json!({"room_id": dev, "client_msg_id": "kiwi-file", "type": "file",
                   "content": "kiwi four", "file_id": file["id"]}),
        )
        .await["message"]
        .clone();
    let since = Instant::now();
    let all = search_until(
        &server,
        &alice_t,
        &qs(&[("q", "kiwi")]),
        since,
        "all four messages",
        |a| id_set(a) == set_of(&[&m1, &m2, &m3, &m4]),
    )
    .await;
    assert_eq!(
        hit_for(&all, &m4)["message"]["file"]["name"],
        "report.pdf",
        "the file message's hit carries its file: {all}"
    );
    let (t2, t3) = (
        m2["created_at"].as_u64().expect("created_at").to_string(),
        m3["created_at"].as_u64().expect("created_at").to_string(),
    );
    assert!(
        m1["created_at"].as_u64() < m2["created_at"].as_u64()
            && m2["created_at"].as_u64() < m3["created_at"].as_u64()
            && m3["created_at"].as_u64() < m4["created_at"].as_u64(),
        "precondition: the messages were sent in distinct milliseconds"
    );

    let cases: Vec<FilterCase> = vec![
        (
            vec![("room", ops.as_str())],
            set_of(&[&m1, &m2]),
            "room=ops",
        ),
        (
            vec![("room", dev.as_str())],
            set_of(&[&m3, &m4]),
            "room=dev",
        ),
        (vec![("sender", "bob")], set_of(&[&m2]), "sender=bob"),
        (
            vec![("sender", "alice")],
            set_of(&[&m1, &m3, &m4]),
            "sender=alice",
        ),
        (
            vec![("sender", "nobody")],
            BTreeSet::new(),
            "an unknown sender",
        ),
        (
            vec![("from", t2.as_str())],
            set_of(&[&m2, &m3, &m4]),
            "from is inclusive",
        ),
        (
            vec![("to", t3.as_str())],
            set_of(&[&m1, &m2]),
            "to is exclusive",
        ),
        (
            vec![("from", t2.as_str()), ("to", t3.as_str())],
            set_of(&[&m2]),
            "from and to",
        ),
        (vec![("has_file", "true")], set_of(&[&m4]), "has_file=true"),
        (
            vec![("has_file", "false")],
            set_of(&[&m1, &m2, &m3]),
            "has_file=false",
        ),
        (
            vec![
                ("room", dev.as_str()),
                ("sender", "alice"),
                ("has_file", "false"),
            ],
            set_of(&[&m3]),
            "room, sender and has_file together",
        ),
        (
            vec![("room", ops.as_str()), ("from", t3.as_str())],
            BTreeSet::new(),
            "room and a time range that excludes it",
        ),
    ];
    for (filters, want, what) in &cases {
        let mut pairs = vec![("q", "kiwi")];
        pairs.extend(filters.iter().copied());
        let query = qs(&pairs);
        let ans = search(&server, &alice_t, &query).await;
        assert_eq!(&id_set(&ans), want, "{what} ({query}): {ans}");
    }

    // The file's name is part of its message.
    for query in ["report", "report.pdf", "kiwi report"] {
        let ans = search(&server, &alice_t, &q(query)).await;
        assert_eq!(
            ids(&ans),
            vec![sid(&m4)],
            "q={query:?} finds the message sharing report.pdf: {ans}"
        );
    }
    let ans = search(
        &server,
        &alice_t,
        &qs(&[("q", "report"), ("has_file", "true")]),
    )
    .await;
    assert_eq!(ids(&ans), vec![sid(&m4)], "q=report&has_file=true: {ans}");

    // Over WebSocket (from/to as integers, has_file a bool).
    let ws_cases = [
        (
            json!({"q": "kiwi", "room_id": ops, "sender_id": "bob"}),
            set_of(&[&m2]),
        ),
        (
            json!({"q": "kiwi", "from": m2["created_at"], "to": m3["created_at"]}),
            set_of(&[&m2]),
        ),
        (json!({"q": "kiwi", "has_file": true}), set_of(&[&m4])),
        (
            json!({"q": "kiwi", "has_file": false, "room_id": dev}),
            set_of(&[&m3]),
        ),
    ];
    for (data, want) in ws_cases {
        let ans = ws_search(&mut alice, data.clone()).await;
        assert_eq!(id_set(&ans), want, "ws search {data}: {ans}");
    }

    // Bob is only in ops.
    let ans = search(&server, &bob_t, &q("kiwi")).await;
    assert_eq!(
        id_set(&ans),
        set_of(&[&m1, &m2]),
        "bob sees only ops: {ans}"
    );
    let ans = search(&server, &bob_t, &q("report")).await;
    assert!(ids(&ans).is_empty(), "bob cannot find dev's file: {ans}");
    let r = server
        .get(
            &format!(
                "/api/search?{}",
                qs(&[("q", "kiwi"), ("room", dev.as_str())])
            ),
            Some(&bob_t),
        )
        .await;
    r.assert_error(404, "not_found", "bob filters on dev");
}

/// With 30 matches: `sort=newest` (the default) gives strictly decreasing ids; paging with
/// `limit=7` walks them all exactly once and ends with `next_cursor: null`; `sort=relevance`
/// ranks a message repeating the word above one saying it once, holds the same set, and pages
/// the same way; WebSocket pages match REST pages.
#[tokio::test]
async fn sorting_and_paging_walk_every_hit_once() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("fruit", "private").await;
    const N: usize = 30;
    let sent = alice
        .say_many(&room, N, 4, |i| match i {
            0 => "mango mango mango mango smoothie".to_string(),
            i if i == N - 1 => {
                "yesterday I bought one mango at the market near the old harbour with friends"
                    .to_string()
            }
            i => format!("mango number {i}"),
        })
        .await;
    let (many, once) = (&sent[0], &sent[N - 1]);
    let mut newest: Vec<String> = sent.iter().map(sid).collect();
    newest.sort_by_key(|id| std::cmp::Reverse(id_of(&json!(id))));
    let all: BTreeSet<String> = newest.iter().cloned().collect();

    // The exact word (trailing space), so that relevance is plain term scoring.
    let word = "mango ";
    let since = Instant::now();
    let ans = search_until(
        &server,
        &token,
        &qs(&[("q", word), ("limit", "100")]),
        since,
        "all 30 messages",
        |a| ids(a).len() == N,
    )
    .await;
    assert_eq!(ids(&ans), newest, "the default sort is newest first: {ans}");
    assert_eq!(ans["next_cursor"], Value::Null, "one page holds all: {ans}");
    let ans = search(
        &server,
        &token,
        &qs(&[("q", word), ("sort", "newest"), ("limit", "100")]),
    )
    .await;
    let got: Vec<u64> = ids(&ans).iter().map(|s| id_of(&json!(s))).collect();
    assert!(
        got.windows(2).all(|w| w[0] > w[1]),
        "sort=newest: strictly decreasing ids: {got:?}"
    );
    assert_eq!(ids(&ans), newest, "sort=newest holds every message");

    let ans = search(&server, &token, &q(word)).await;
    assert_eq!(ids(&ans), newest[..20], "default limit 20, newest first");
    assert!(ans["next_cursor"].is_string(), "more pages: {ans}");

    let (walked, sizes) = walk_pages(
        &server,
        &token,
        &qs(&[("q", word), ("sort", "newest"), ("limit", "7")]),
    )
    .await;
    assert_eq!(sizes, vec![7, 7, 7, 7, 2], "page sizes with limit=7");
    assert_eq!(
        walked, newest,
        "paging newest with limit=7 walks every message once, in order"
    );

    // Relevance.
    let rel = search(
        &server,
        &token,
        &qs(&[("q", word), ("sort", "relevance"), ("limit", "100")]),
    )
    .await;
    let rel_ids = ids(&rel);
    assert_eq!(
        rel_ids.iter().cloned().collect::<BTreeSet<_>>(),
        all,
        "sort=relevance holds the same hits as newest"
    );
    assert_eq!(rel_ids.len(), N, "no duplicates in relevance order");
    let pos = |m: &Value| {
        rel_ids
            .iter()
            .position(|id| *id == sid(m))
            .expect("in relevance results")
    };
    assert!(
        pos(many) < pos(once),
        "sort=relevance: 'mango mango mango mango smoothie' (#{}) ranks above the long message \
         saying mango once (#{}): {rel_ids:?}",
        pos(many),
        pos(once)
    );
    let (walked, sizes) = walk_pages(
        &server,
        &token,
        &qs(&[("q", word), ("sort", "relevance"), ("limit", "7")]),
    )
    .await;
    assert_eq!(
        sizes,
        vec![7, 7, 7, 7, 2],
        "relevance page sizes with limit=7"
    );
    assert_eq!(
        walked, rel_ids,
        "paging relevance with limit=7 walks the same order as one big page, each hit once"
    );

    // WebSocket pages, continuing with the cursor.
    let p1 = ws_search(&mut alice, json!({"q": word, "limit": 7})).await;
    assert_eq!(ids(&p1), newest[..7], "ws page 1");
    let cursor = p1["next_cursor"].clone();
    assert!(cursor.is_string(), "ws page 1 has a cursor: {p1}");
    let p2 = ws_search(&mut alice, json!({"q": word, "limit": 7, "cursor": cursor})).await;
    assert_eq!(ids(&p2), newest[7..14], "ws page 2");
}

/// A cursor keeps its place while new messages are indexed between pages (a live chat): for
/// `sort=newest` and `sort=relevance`, after the first `limit=5` page a new, best-matching
/// message becomes searchable; walking on from the first page's cursor never returns a hit
/// twice and still returns every message that matched when the first page was read.
#[tokio::test]
async fn cursors_keep_their_place_while_new_messages_arrive() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("market", "private").await;
    let sent = alice
        .say_many(&room, 12, 4, |i| format!("papaya number {i}"))
        .await;
    let word = "papaya ";
    let since = Instant::now();
    search_until(
        &server,
        &token,
        &qs(&[("q", word), ("limit", "100")]),
        since,
        "all 12 messages",
        |a| ids(a).len() == sent.len(),
    )
    .await;

    for sort in ["newest", "relevance"] {
        let before = search(&server, &token, &qs(&[("q", word), ("limit", "100")])).await;
        let first = search(
            &server,
            &token,
            &qs(&[("q", word), ("sort", sort), ("limit", "5")]),
        )
        .await;
        let mut walked = ids(&first);
        let mut cursor = first["next_cursor"].as_str().map(str::to_string);
        assert!(cursor.is_some(), "sort={sort}: more than one page: {first}");

        // A newcomer that ranks first by either sort.
        let newcomer = alice.say(&room, "papaya papaya papaya papaya").await;
        let since = Instant::now();
        search_until(
            &server,
            &token,
            &qs(&[("q", word), ("limit", "100")]),
            since,
            "the newcomer",
            |a| has(a, &newcomer),
        )
        .await;

        let mut pages = 1;
        while let Some(c) = cursor.take() {
            pages += 1;
            assert!(pages <= 20, "sort={sort}: paging does not end");
            let ans = search(
                &server,
                &token,
                &qs(&[("q", word), ("sort", sort), ("limit", "5"), ("cursor", &c)]),
            )
            .await;
            walked.extend(ids(&ans));
            cursor = ans["next_cursor"].as_str().map(str::to_string);
        }
        let unique: BTreeSet<String> = walked.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            walked.len(),
            "sort={sort}: a message indexed between pages makes no hit repeat; walked {walked:?}"
        );
        let missing: Vec<String> = id_set(&before).difference(&unique).cloned().collect();
        assert!(
            missing.is_empty(),
            "sort={sort}: every message that matched at the first page is still walked; missing \
             {missing:?}"
        );
    }
}

/// Bad input is refused with 400 `invalid_payload` (empty or too long `q`, too many words,
/// limit out of 1–100, a bad cursor, bad sort, has_file, from/to, an unknown parameter) and no
/// token with 401; the same over WebSocket as `error` replies. The edges are accepted.
#[tokio::test]
async fn bad_input_is_refused() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("misc", "private").await;
    let m = alice.say(&room, "something findable").await;
    let since = Instant::now();
    search_until(&server, &token, &q("findable"), since, "the message", |a| {
        has(a, &m)
    })
    .await;

    let long_300 = "x".repeat(300);
    let long_257 = "x".repeat(257);
    let words_17 = (0..17)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let bad: Vec<(String, &str)> = vec![
        (String::new(), "no q at all"),
        (q(""), "empty q"),
        (q(&long_300), "a 300-character q"),
        (q(&long_257), "a 257-character q"),
        (q(&words_17), "17 words"),
        (qs(&[("q", "x"), ("limit", "0")]), "limit=0"),
        (qs(&[("q", "x"), ("limit", "101")]), "limit=101"),
        (qs(&[("q", "x"), ("limit", "1000")]), "limit=1000"),
        (qs(&[("q", "x"), ("limit", "-1")]), "limit=-1"),
        (qs(&[("q", "x"), ("limit", "ten")]), "limit=ten"),
        (qs(&[("q", "x"), ("cursor", "garbage")]), "cursor=garbage"),
        (qs(&[("q", "x"), ("cursor", "n:abc")]), "cursor=n:abc"),
        (qs(&[("q", "x"), ("cursor", "!!!")]), "cursor=!!!"),
        (qs(&[("q", "x"), ("sort", "oldest")]), "sort=oldest"),
        (qs(&[("q", "x"), ("has_file", "maybe")]), "has_file=maybe"),
        (qs(&[("q", "x"), ("from", "yesterday")]), "from=yesterday"),
        (qs(&[("q", "x"), ("to", "soon")]), "to=soon"),
        (qs(&[("q", "x"), ("foo", "1")]), "an unknown parameter"),
    ];
    for (query, what) in &bad {
        let r = server
            .get(&format!("/api/search?{query}"), Some(&token))
            .await;
        r.assert_error(400, "invalid_payload", &format!("{what} (?{query})"));
    }

    let max_q = "x".repeat(256);
    let max_q_accents = "é".repeat(256);
    let words_16 = (0..16)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let good: Vec<(String, &str)> = vec![
        (q(&max_q), "a 256-character q"),
        (q(&max_q_accents), "256 characters of é (512 bytes)"),
        (q(&words_16), "16 words"),
        (qs(&[("q", "findable"), ("limit", "1")]), "limit=1"),
        (qs(&[("q", "findable"), ("limit", "100")]), "limit=100"),
        (
            qs(&[("q", "findable"), ("sort", "relevance")]),
            "sort=relevance",
        ),
        (
            qs(&[("q", "findable"), ("has_file", "false")]),
            "has_file=false",
        ),
    ];
    for (query, what) in &good {
        let r = server
            .get(&format!("/api/search?{query}"), Some(&token))
            .await;
        assert_eq!(r.status, 200, "{what} is accepted (?{query}): {}", r.text);
    }

    let r = server
        .get(&format!("/api/search?{}", q("findable")), None)
        .await;
    r.assert_error(401, "unauthorized", "no token");
    let r = server
        .get(&format!("/api/search?{}", q("findable")), Some("not-a-jwt"))
        .await;
    r.assert_error(401, "unauthorized", "a bad token");

    let ws_bad = [
        (json!({}), "no q"),
        (json!({"q": ""}), "empty q"),
        (json!({"q": long_300}), "a 300-character q"),
        (json!({"q": words_17}), "17 words"),
        (json!({"q": 5}), "q not a string"),
        (json!({"q": "x", "limit": 0}), "limit 0"),
        (json!({"q": "x", "limit": 1000}), "limit 1000"),
        (json!({"q": "x", "cursor": "garbage"}), "a bad cursor"),
        (json!({"q": "x", "sort": "oldest"}), "a bad sort"),
        (json!({"q": "x", "has_file": "yes"}), "has_file not a bool"),
        (json!({"q": "x", "from": "yesterday"}), "from not a number"),
        (json!({"q": "x", "bogus": 1}), "an unknown field"),
    ];
    for (data, what) in ws_bad {
        ws_refused(&mut alice, "search", data, "invalid_payload", what).await;
    }
    let ans = ws_search(&mut alice, json!({"q": max_q})).await;
    assert!(
        ids(&ans).is_empty(),
        "ws: a 256-character q is accepted: {ans}"
    );
    let ans = ws_search(&mut alice, json!({"q": "findable", "limit": 100})).await;
    assert_eq!(ids(&ans), vec![sid(&m)], "ws: limit 100 is accepted");
    alice.ping().await;
}

/// kill -9 right after an ack, with `commit_interval_ms = 60000` so that the index has not
/// committed it: after a restart (still 60000: recovery must not wait for the interval) the
/// message is found within 2 s, once. Again after a second crash (having checked that the
/// message was not searchable and `confab_search_lag` counted it), restarting with a 500 ms
/// interval: both messages, once each; new messages are then indexed as usual and the lag
/// returns to 0.
#[tokio::test]
async fn messages_acked_before_kill_9_are_found_after_restart() {
    let mut server = Server::start_with(Options::env(&[(
        "CONFAB_SEARCH__COMMIT_INTERVAL_MS",
        "60000",
    )]));
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("crashy", "private").await;

    // Round 1: kill -9 the moment the ack is in.
    let m1 = alice.say(&room, "phoenix alpha").await;
    server.kill9();
    drop(alice);
    server.restart();
    let since = Instant::now();
    search_until(
        &server,
        &token,
        &q("phoenix"),
        since,
        "after kill -9 and a restart (commit interval still 60 s), the acked message",
        |a| ids(a) == vec![sid(&m1)],
    )
    .await;

    // Round 2: first check that the index really holds the new message back (so the test
    // exercises recovery), then kill -9 and restart with a 500 ms interval.
    let mut alice = Client::connect(&server, &token).await;
    let m2 = alice.say(&room, "phoenix beta").await;
    let before = search(&server, &token, &q("phoenix")).await;
    let lag_from = Instant::now();
    let mut lag = metric(&server, "confab_search_lag").await;
    while lag < 1.0 && lag_from.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(POLL_EVERY).await;
        lag = metric(&server, "confab_search_lag").await;
    }
    let still_hidden = search(&server, &token, &q("phoenix")).await;
    server.kill9();
    drop(alice);
    assert!(
        !has(&before, &m2) && !has(&still_hidden, &m2),
        "precondition: with commit_interval_ms = 60000 the index has not committed the message \
         before the kill: {before} / {still_hidden}"
    );
    assert!(
        lag >= 1.0,
        "confab_search_lag counts the change committed but not yet searchable: {lag}"
    );
    server.set_env("CONFAB_SEARCH__COMMIT_INTERVAL_MS", "500");
    server.restart();
    let since = Instant::now();
    search_until(
        &server,
        &token,
        &q("phoenix"),
        since,
        "after a second kill -9 and a restart with a 500 ms interval, both messages, once each",
        |a| ids(a) == vec![sid(&m2), sid(&m1)],
    )
    .await;

    let mut alice = Client::connect(&server, &token).await;
    let m3 = alice.say(&room, "phoenix gamma").await;
    let since = Instant::now();
    search_until(
        &server,
        &token,
        &q("phoenix"),
        since,
        "a message sent after recovery",
        |a| ids(a) == vec![sid(&m3), sid(&m2), sid(&m1)],
    )
    .await;
    let since = Instant::now();
    loop {
        let lag = metric(&server, "confab_search_lag").await;
        if lag == 0.0 {
            break;
        }
        assert!(
            since.elapsed() <= SEARCHABLE_WITHIN,
            "confab_search_lag is still {lag} after everything is searchable"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `confab reindex` with the server running fails cleanly (non-zero exit, a message, no panic)
/// and harms nothing; with the server stopped it succeeds, and after a restart the same queries
/// (edited and deleted messages, two rooms, two users, both sorts, filters) answer the same ids
/// in the same order; new messages are indexed as before.
#[tokio::test]
async fn reindex_rebuilds_the_same_answers_and_refuses_a_running_server() {
    let mut server = Server::start();
    let (alice_t, mut alice) = user(&server, "alice").await;
    let (bob_t, mut bob) = user(&server, "bob").await;
    let first = alice.create_room("first", "private").await;
    alice.invite(&first, "bob").await;
    bob.next_event("room_added").await;
    let second = alice.create_room("second", "private").await;

    let a1 = alice.say(&first, "deploy the alpha build").await;
    let a2 = bob.say(&first, "deploy the beta build").await;
    let a3 = alice.say(&first, "release gamma candidate").await;
    let a4 = bob.say(&first, "deploy deploy deploy hotfix").await;
    let b1 = alice.say(&second, "deploy delta service").await;
    let b2 = alice.say(&second, "release notes epsilon").await;
    let b3 = alice.say(&second, "release zeta").await;
    let b4 = alice.say(&second, "deploy release together").await;
    bob.ok(
        "delete_message",
        json!({"room_id": first, "message_id": a2["id"]}),
    )
    .await;
    alice
        .ok(
            "edit_message",
            json!({"room_id": first, "message_id": a3["id"], "content": "deploy gamma candidate"}),
        )
        .await;
    alice
        .ok(
            "edit_message",
            json!({"room_id": second, "message_id": b2["id"], "content": "hotfix notes epsilon"}),
        )
        .await;
    alice
        .ok(
            "delete_message",
            json!({"room_id": second, "message_id": b3["id"]}),
        )
        .await;
    let since = Instant::now();

    // (who, token, query, the expected set once everything is indexed)
    let checks: Vec<(&str, &str, String, BTreeSet<String>)> = vec![
        (
            "alice",
            alice_t.as_str(),
            q("deploy "),
            set_of(&[&a1, &a3, &a4, &b1, &b4]),
        ),
        (
            "alice",
            alice_t.as_str(),
            qs(&[("q", "deploy "), ("sort", "relevance")]),
            set_of(&[&a1, &a3, &a4, &b1, &b4]),
        ),
        ("alice", alice_t.as_str(), q("release"), set_of(&[&b4])),
        ("alice", alice_t.as_str(), q("hotfix "), set_of(&[&a4, &b2])),
        ("alice", alice_t.as_str(), q("build"), set_of(&[&a1])),
        ("alice", alice_t.as_str(), q("zeta"), BTreeSet::new()),
        ("alice", alice_t.as_str(), q("epsilon"), set_of(&[&b2])),
        (
            "alice",
            alice_t.as_str(),
            qs(&[("q", "deploy"), ("room", second.as_str())]),
            set_of(&[&b1, &b4]),
        ),
        (
            "alice",
            alice_t.as_str(),
            qs(&[("q", "deploy"), ("sender", "bob")]),
            set_of(&[&a4]),
        ),
        (
            "bob",
            bob_t.as_str(),
            q("deploy "),
            set_of(&[&a1, &a3, &a4]),
        ),
        (
            "bob",
            bob_t.as_str(),
            qs(&[("q", "deploy "), ("sort", "relevance"), ("limit", "2")]),
            set_of(&[&a4, &a3]),
        ),
    ];
    let mut recorded: Vec<(&str, &str, String, Vec<String>)> = Vec::new();
    for (who, token, query, want) in &checks {
        let ans = search_until(
            &server,
            token,
            query,
            since,
            &format!("{who}: {query} once everything is indexed"),
            |a| id_set(a) == *want,
        )
        .await;
        recorded.push((*who, *token, query.clone(), ids(&ans)));
    }

    // While the server runs, reindex refuses.
    let data_dir = server
        .data_dir
        .to_str()
        .expect("utf-8 temp path")
        .to_string();
    let out = server.cli(&["reindex", "--data-dir", &data_dir]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "confab reindex while the server runs must fail; it exited {} with: {text}",
        out.status
    );
    assert!(
        out.status.code() != Some(101) && !text.contains("panicked"),
        "confab reindex while the server runs fails cleanly, not with a panic ({}): {text}",
        out.status
    );
    let lower = text.to_lowercase();
    assert!(
        ["running", "in use", "lock", "already open", "stop", "busy"]
            .iter()
            .any(|w| lower.contains(w)),
        "confab reindex while the server runs says why (running / in use / locked ...): {text:?}"
    );
    for (who, token, query, want) in &recorded {
        let ans = search(&server, token, query).await;
        assert_eq!(
            &ids(&ans),
            want,
            "{who}: {query} after the refused reindex: the live index is untouched"
        );
    }

    // Stop, reindex, start.
    drop(alice);
    drop(bob);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "clean exit: {status}");
    let out = server.cli(&["reindex", "--data-dir", &data_dir]);
    assert!(
        out.status.success(),
        "confab reindex with the server stopped exits 0; got {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart();
    let since = Instant::now();
    for (who, token, query, want) in &recorded {
        let ans = search_until(
            &server,
            token,
            query,
            since,
            &format!("{who}: {query} after reindex and restart gives {want:?}"),
            |a| ids(a) == *want,
        )
        .await;
        assert_eq!(&ids(&ans), want);
    }

    // The rebuilt index takes new messages.
    let mut alice = Client::connect(&server, &alice_t).await;
    let fresh = alice.say(&second, "deploy omega after reindex").await;
    let since = Instant::now();
    let mut want = recorded[0].3.clone();
    want.insert(0, sid(&fresh));
    search_until(
        &server,
        &alice_t,
        &q("deploy "),
        since,
        "a message sent after the reindex",
        |a| ids(a) == want,
    )
    .await;
}

/// `/metrics`: `confab_search_indexed_total` counts indexed messages, `confab_search_lag` is 0
/// once everything is searchable, `confab_search_index_bytes` is above 0.
#[tokio::test]
async fn search_metrics_are_exported() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("gauges", "private").await;
    let sent = alice
        .say_many(&room, 5, 5, |i| format!("metric sample {i}"))
        .await;
    let since = Instant::now();
    search_until(&server, &token, &q("sample"), since, "five messages", |a| {
        id_set(a) == sent.iter().map(sid).collect::<BTreeSet<String>>()
    })
    .await;
    loop {
        let lag = metric(&server, "confab_search_lag").await;
        if lag == 0.0 {
            break;
        }
        assert!(
            since.elapsed() <= SEARCHABLE_WITHIN,
            "confab_search_lag is still {lag} after everything is searchable"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    let indexed = metric(&server, "confab_search_indexed_total").await;
    assert!(
        indexed >= 5.0,
        "confab_search_indexed_total is {indexed} after 5 messages on a fresh server"
    );
    let bytes = metric(&server, "confab_search_index_bytes").await;
    assert!(
        bytes > 0.0,
        "confab_search_index_bytes is {bytes} with 5 messages indexed"
    );
}

/// The index writer closes when the index has been idle for `search.writer_idle_close_secs`
/// (its two threads end) and opens again for the next message, which is found as quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_writer_closes_when_idle_and_reopens_for_new_messages() {
    let server = Server::start_with(Options::env(&[(
        "CONFAB_SEARCH__WRITER_IDLE_CLOSE_SECS",
        "1",
    )]));
    let threads = || -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Threads line")
    };
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("idle", "private").await;

    let first = alice.say(&room, "the quarterly zeppelin report").await;
    search_until(
        &server,
        &token,
        &q("zeppelin"),
        Instant::now(),
        "a message while the writer is open",
        |a| has(a, &first),
    )
    .await;
    let open = threads();

    // Idle for over a second: the writer's indexing and merge threads end.
    let until = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        let n = threads();
        if n + 2 <= open {
            break n;
        }
        assert!(
            Instant::now() < until,
            "the index writer did not close within 10 s of idleness ({n} threads, {open} open)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let second = alice.say(&room, "a zeppelin follow-up").await;
    let ans = search_until(
        &server,
        &token,
        &q("zeppelin"),
        Instant::now(),
        "a message after the writer closed",
        |a| has(a, &second),
    )
    .await;
    assert!(has(&ans, &first), "the first message is still found: {ans}");
    assert!(
        threads() > closed,
        "the writer's threads are back while it indexes"
    );
}

/// Indexing is background work: the indexer and the tantivy threads it starts run at
/// `search.indexer_nice` (10 by default), the chat threads at the normal priority, so a
/// saturated CPU serves chat traffic first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_threads_run_at_a_lower_priority_than_chat() {
    let server = Server::start();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("nice", "private").await;
    let said = alice.say(&room, "a gently prioritised albatross").await;
    search_until(
        &server,
        &token,
        &q("albatross"),
        Instant::now(),
        "a message to open the index writer",
        |a| has(a, &said),
    )
    .await;
    // (thread name, nice) of every thread of the server, from /proc/<pid>/task/<tid>/stat:
    // the name is between the first '(' and the last ')'; nice is the 19th field.
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).expect("task dir") {
        let path = task.expect("a task").path().join("stat");
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue; // the thread ended meanwhile
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            panic!("unexpected stat line {stat:?}");
        };
        let name = stat[open + 1..close].to_string();
        let nice: i32 = stat[close + 1..]
            .split_whitespace()
            .nth(16)
            .and_then(|v| v.parse().ok())
            .expect("a nice field");
        threads.push((name, nice));
    }
    let nice_of = |prefix: &str| -> Vec<i32> {
        threads
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(nice_of("confab-indexer"), vec![10], "threads: {threads:?}");
    let mut tantivy = nice_of("thrd-tantivy");
    tantivy.extend(nice_of("merge_thread"));
    assert!(
        !tantivy.is_empty() && tantivy.iter().all(|&v| v == 10),
        "tantivy's indexing threads inherit the indexer's priority: {threads:?}"
    );
    let workers = nice_of("tokio-rt-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|&v| v == 0),
        "chat threads keep the normal priority: {threads:?}"
    );
    // Thread names are cut to 15 bytes.
    assert_eq!(nice_of("confab-store-wr"), vec![0], "threads: {threads:?}");
}

/// Guards issue 24, point 10(c): a failed index write never skips a message. The index
/// directory sits on a small filesystem that the test fills: messages sent meanwhile are
/// acknowledged (storage is elsewhere) but cannot be indexed. Once space is back every one of
/// them becomes searchable without a restart, and stays so after one, each found once.
#[tokio::test]
async fn messages_the_index_could_not_write_are_found_once_space_is_back() {
    let mut server = Server::start_with(Options::env(&[(
        "CONFAB_SEARCH__COMMIT_INTERVAL_MS",
        "100",
    )]));
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let disk = crate::support::SmallDisk::mount_over(&server.data_dir.join("search"), 4 << 20);
    server.restart();
    let (token, mut alice) = user(&server, "alice").await;
    let room = alice.create_room("indexless", "public").await;
    let first = alice.say(&room, "quokka first").await;
    search_until(
        &server,
        &token,
        &q("quokka"),
        Instant::now(),
        "a message before the index's disk fills",
        |a| ids(a) == vec![sid(&first)],
    )
    .await;

    let filler = disk.fill_leaving(0);
    let mut sent = vec![sid(&first)];
    for i in 0..12 {
        sent.push(sid(&alice.say(&room, &format!("quokka number {i}")).await));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // Long enough for several commits to be tried, and to fail, on the full disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::remove_file(&filler).expect("free the space");
    sent.push(sid(&alice.say(&room, "quokka last").await));
    let want: BTreeSet<String> = sent.iter().cloned().collect();
    let query = qs(&[("q", "quokka"), ("limit", "50")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ans = search(&server, &token, &query).await;
        if id_set(&ans) == want {
            assert_eq!(ids(&ans).len(), want.len(), "each message once: {ans}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every message sent while the index's disk was full becomes searchable once space \
             is back; want {want:?}, last answer {ans}\n{}",
            server.output()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    drop(alice);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    server.restart();
    let ans = search(&server, &token, &query).await;
    assert_eq!(
        ids(&ans).len(),
        want.len(),
        "after a restart, each once: {ans}"
    );
    assert_eq!(id_set(&ans), want, "after a restart");
    server.sigterm();
    let _ = server.wait_exit(Duration::from_secs(10));
    drop(disk);
}

/// Guards issue 25, point 5: on SIGTERM the indexer is stopped and joined after committing what
/// it held, so a restart replays nothing (`confab_search_indexed_total` stays 0) and the
/// messages are searchable at once. Before, the thread was never stopped: the exit cut off
/// whatever it had not committed, and every start replayed it from storage.
#[tokio::test]
async fn a_clean_shutdown_commits_the_index_so_the_next_start_replays_nothing() {
    // No commit of its own before the shutdown: only the one at the stop can make it.
    let mut server = Server::start_with(Options::env(&[(
        "CONFAB_SEARCH__COMMIT_INTERVAL_MS",
        "600000",
    )]));
    let (token, mut ana) = user(&server, "ana").await;
    let room = ana.create_room("shutdown", "public").await;
    for i in 0..20 {
        ana.ok(
            "send_message",
            json!({"room_id": room, "client_msg_id": format!("s{i}"), "type": "text",
                   "content": format!("quarterdeck lantern {i}")}),
        )
        .await;
    }
    drop(ana);
    server.sigterm();
    assert!(
        server.wait_exit(Duration::from_secs(20)).success(),
        "clean exit"
    );
    server.restart();
    let ans = search(&server, &token, &q("quarterdeck")).await;
    assert_eq!(
        ids(&ans).len(),
        20,
        "all 20 found right after the start: {ans}"
    );
    let metrics = server.get("/metrics", None).await.text;
    let replayed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("confab_search_indexed_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("confab_search_indexed_total in /metrics");
    assert_eq!(
        replayed, 0,
        "the start replayed changes the shutdown should have committed"
    );
}
