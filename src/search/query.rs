//! Query text → tantivy query (words, phrases, a prefix for the last word, filters, the room
//! scope), execution with cursor paging, and snippets with UTF-16 highlight ranges.

use super::{Fields, SearchError, analyzer};
use crate::model::Id;
use std::collections::BTreeMap;
use std::ops::Bound;
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Order, Searcher, Term};

/// Most words (and phrases) in one query.
pub const MAX_WORDS: usize = 16;
/// About how long a snippet is, in characters.
const SNIPPET_CHARS: usize = 150;
/// Relevance paging stops after this many hits (newest-first paging has no limit).
const MAX_RELEVANCE_DEPTH: usize = 1000;
/// How many terms a prefix may expand to.
const PREFIX_EXPANSIONS: u32 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Newest,
    Relevance,
}

/// Where the next page starts: below an id (newest first), or at an offset among messages
/// older than a bound fixed by the first page (relevance), so new messages arriving between
/// pages do not shift them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Below(u64),
    Offset(usize, u64),
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, v) = s.split_once(':')?;
        match kind {
            "n" => v.parse().ok().map(Cursor::Below),
            "r" => {
                let (offset, bound) = v.split_once(':')?;
                Some(Cursor::Offset(offset.parse().ok()?, bound.parse().ok()?))
            }
            _ => None,
        }
    }

    pub fn encode(self) -> String {
        match self {
            Cursor::Below(id) => format!("n:{id}"),
            Cursor::Offset(o, bound) => format!("r:{o}:{bound}"),
        }
    }
}

/// A checked search request, already scoped to the rooms the caller may read.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub text: String,
    pub rooms: Vec<Id>,
    pub sender: Option<String>,
    /// Message ids at or above this (from a time).
    pub min_id: Option<u64>,
    /// Message ids below this (to a time).
    pub max_id: Option<u64>,
    pub has_file: Option<bool>,
    pub sort: Sort,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// The words of a query, for snippets: exact terms and the prefix of the last word.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    exact: Vec<String>,
    prefix: Option<String>,
}

/// One page of hits: (room, message id), best first.
pub struct Page {
    pub hits: Vec<(Id, Id)>,
    pub next: Option<Cursor>,
    pub terms: Terms,
}

/// A query's pieces: each is a phrase of analysed tokens; the last may end with a prefix.
struct Parsed {
    phrases: Vec<Vec<String>>,
    /// The last phrase's last token is a prefix.
    last_is_prefix: bool,
}

fn tokens(text: &str) -> Vec<String> {
    let mut a = analyzer();
    let mut stream = a.token_stream(text);
    let mut out = Vec::new();
    while let Some(t) = stream.next() {
        out.push(t.text.clone());
    }
    out
}

/// Splits on quotes and spaces: `"a b" c d` → phrase [a b], words c, d. An unclosed quote runs
/// to the end. The last bare word is a prefix unless the text ends with a space.
fn parse(text: &str) -> Result<Parsed, SearchError> {
    let mut phrases = Vec::new();
    let mut last_bare = false;
    for (i, part) in text.split('"').enumerate() {
        if i % 2 == 1 {
            let t = tokens(part);
            if !t.is_empty() {
                phrases.push(t);
                last_bare = false;
            }
        } else {
            for word in part.split_whitespace() {
                let t = tokens(word);
                if !t.is_empty() {
                    phrases.push(t);
                    last_bare = true;
                }
            }
        }
    }
    if phrases.len() > MAX_WORDS {
        return Err(SearchError::BadQuery(format!(
            "at most {MAX_WORDS} words or phrases"
        )));
    }
    let ends_open = !text.ends_with(char::is_whitespace) && !text.ends_with('"');
    Ok(Parsed {
        phrases,
        last_is_prefix: last_bare && ends_open,
    })
}

fn u64_range(field: tantivy::schema::Field, lo: Option<u64>, hi: Option<u64>) -> RangeQuery {
    let lo = lo.map_or(Bound::Unbounded, |v| {
        Bound::Included(Term::from_field_u64(field, v))
    });
    let hi = hi.map_or(Bound::Unbounded, |v| {
        Bound::Excluded(Term::from_field_u64(field, v))
    });
    RangeQuery::new(lo, hi)
}

fn build(f: Fields, q: &SearchQuery, parsed: &Parsed) -> Box<dyn Query> {
    let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let n = parsed.phrases.len();
    for (i, phrase) in parsed.phrases.iter().enumerate() {
        let terms: Vec<Term> = phrase
            .iter()
            .map(|t| Term::from_field_text(f.body, t))
            .collect();
        let prefix = parsed.last_is_prefix && i + 1 == n;
        let query: Box<dyn Query> = if prefix {
            let mut p = PhrasePrefixQuery::new(terms);
            p.set_max_expansions(PREFIX_EXPANSIONS);
            Box::new(p)
        } else if terms.len() == 1 {
            let Some(t) = terms.into_iter().next() else {
                continue;
            };
            Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs))
        } else {
            Box::new(PhraseQuery::new(terms))
        };
        must.push((Occur::Must, query));
    }
    must.push((
        Occur::Must,
        Box::new(TermSetQuery::new(
            q.rooms.iter().map(|r| Term::from_field_u64(f.room, r.0)),
        )),
    ));
    if let Some(s) = &q.sender {
        must.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(f.sender, s),
                IndexRecordOption::Basic,
            )),
        ));
    }
    if let Some(h) = q.has_file {
        must.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_u64(f.has_file, u64::from(h)),
                IndexRecordOption::Basic,
            )),
        ));
    }
    let cut = match q.cursor {
        Some(Cursor::Below(id) | Cursor::Offset(_, id)) => Some(id),
        None => None,
    };
    let below = match (q.max_id, cut) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (a, b) => a.or(b),
    };
    if q.min_id.is_some() || below.is_some() {
        must.push((Occur::Must, Box::new(u64_range(f.id, q.min_id, below))));
    }
    Box::new(BooleanQuery::new(must))
}

/// Runs a query against one searcher.
pub fn run(searcher: &Searcher, f: Fields, q: &SearchQuery) -> Result<Page, SearchError> {
    let mut q = q.clone();
    if q.sort == Sort::Relevance && q.cursor.is_none() {
        // The first relevance page fixes the bound its later pages keep.
        q.cursor = Some(Cursor::Offset(0, relevance_bound(searcher)?));
    }
    let q = &q;
    if let Some(Cursor::Offset(o, _)) = q.cursor
        && o > MAX_RELEVANCE_DEPTH
    {
        return Err(SearchError::BadQuery("bad cursor".into()));
    }
    let parsed = parse(&q.text)?;
    let terms = Terms {
        exact: parsed
            .phrases
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let cut = parsed.last_is_prefix && i + 1 == parsed.phrases.len();
                let keep = if cut { p.len() - 1 } else { p.len() };
                p[..keep].to_vec()
            })
            .collect(),
        prefix: parsed
            .last_is_prefix
            .then(|| parsed.phrases.last().and_then(|p| p.last().cloned()))
            .flatten(),
    };
    if parsed.phrases.is_empty() || q.rooms.is_empty() {
        return Ok(Page {
            hits: Vec::new(),
            next: None,
            terms,
        });
    }
    let query = build(f, q, &parsed);
    let want = q.limit + 1;
    let addrs: Vec<(Option<u64>, DocAddress)> = match q.sort {
        Sort::Newest => searcher.search(
            &query,
            &TopDocs::with_limit(want).order_by_fast_field::<u64>("id", Order::Desc),
        )?,
        Sort::Relevance => {
            let offset = match q.cursor {
                Some(Cursor::Offset(o, _)) => o,
                _ => 0,
            };
            // Equal scores are ordered newest first, so pages and rebuilt indexes agree. The
            // top `offset + want` are taken and sliced here: a total order makes every page a
            // slice of the same ranking.
            let by_score_then_id =
                TopDocs::with_limit(offset + want).tweak_score(|seg: &tantivy::SegmentReader| {
                    let ids = seg.fast_fields().u64("id").ok();
                    move |doc: tantivy::DocId, score: tantivy::Score| {
                        let id = ids.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
                        (score, id)
                    }
                });
            let mut scored = searcher.search(&query, &by_score_then_id)?;
            scored.sort_by(|(a, _), (b, _)| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
            scored
                .into_iter()
                .skip(offset)
                .map(|((_, id), a)| (Some(id), a))
                .collect()
        }
    };
    let more = addrs.len() > q.limit;
    let mut hits = Vec::with_capacity(q.limit);
    for (id, addr) in addrs.into_iter().take(q.limit) {
        let seg = searcher.segment_reader(addr.segment_ord);
        let ff = seg.fast_fields();
        let id = match id {
            Some(id) => id,
            None => ff.u64("id")?.first(addr.doc_id).unwrap_or(0),
        };
        let room = ff.u64("room")?.first(addr.doc_id).unwrap_or(0);
        hits.push((Id(room), Id(id)));
    }
    let next = more
        .then(|| match q.sort {
            Sort::Newest => hits.last().map(|(_, id)| Cursor::Below(id.0)),
            Sort::Relevance => {
                let (offset, bound) = match q.cursor {
                    Some(Cursor::Offset(o, b)) => (o, b),
                    _ => (0, u64::MAX),
                };
                (offset + q.limit < MAX_RELEVANCE_DEPTH)
                    .then_some(Cursor::Offset(offset + q.limit, bound))
            }
        })
        .flatten();
    Ok(Page { hits, next, terms })
}

/// Above every id this searcher holds: the first relevance page's bound, so later pages rank
/// exactly what the first one could see.
fn relevance_bound(searcher: &Searcher) -> Result<u64, SearchError> {
    let mut max = 0;
    for seg in searcher.segment_readers() {
        max = max.max(seg.fast_fields().u64("id")?.max_value());
    }
    Ok(max.saturating_add(1))
}

/// A snippet of `text` around the query's words, with the highlighted ranges converted from
/// byte offsets to UTF-16 code units.
pub fn snippet(
    terms: &Terms,
    field: tantivy::schema::Field,
    text: &str,
) -> (String, Vec<[usize; 2]>) {
    let mut wanted: BTreeMap<String, f32> = terms.exact.iter().map(|t| (t.clone(), 1.0)).collect();
    if let Some(p) = &terms.prefix {
        for t in tokens(text) {
            if t.starts_with(p.as_str()) {
                wanted.insert(t, 1.0);
            }
        }
    }
    let generator = SnippetGenerator::new(wanted, analyzer(), field, SNIPPET_CHARS);
    let s = generator.snippet(text);
    if s.fragment().is_empty() {
        let head: String = text.chars().take(SNIPPET_CHARS).collect();
        return (head, Vec::new());
    }
    // The generator cuts at token edges, dropping punctuation around the words ("hello
    // world!" → "hello world"): widen the fragment to whitespace, or to the whole text when
    // it is short.
    let range = s.fragment_range();
    let (start, end) = if text.chars().count() <= SNIPPET_CHARS {
        (0, text.len())
    } else {
        let start = text[..range.start]
            .rfind(char::is_whitespace)
            .map_or(0, |i| {
                i + text[i..].chars().next().map_or(1, char::len_utf8)
            });
        let end = text[range.end..]
            .find(char::is_whitespace)
            .map_or(text.len(), |i| range.end + i);
        (start, end)
    };
    let fragment = &text[start..end];
    let shift = range.start - start;
    let ranges = s
        .highlighted()
        .iter()
        .map(|r| {
            [
                utf16_len(&fragment[..r.start + shift]),
                utf16_len(&fragment[..r.end + shift]),
            ]
        })
        .collect();
    (fragment.to_owned(), ranges)
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words_phrases_and_prefix() {
        let p = parse("deploy \"Red  Apple\" fri").expect("parse");
        assert_eq!(
            p.phrases,
            vec![vec!["deploy"], vec!["red", "apple"], vec!["fri"]]
        );
        assert!(p.last_is_prefix);
        assert!(!parse("fri ").expect("parse").last_is_prefix);
        assert!(!parse("\"red apple\"").expect("parse").last_is_prefix);
        assert_eq!(parse("Café").expect("parse").phrases, vec![vec!["cafe"]]);
        assert!(parse(&"w ".repeat(17)).is_err());
        assert!(parse("!!!").expect("parse").phrases.is_empty());
    }

    #[test]
    fn cursors_round_trip() {
        for c in [Cursor::Below(42), Cursor::Offset(7, 99)] {
            assert_eq!(Cursor::parse(&c.encode()), Some(c));
        }
        assert_eq!(Cursor::parse("x:1"), None);
        assert_eq!(Cursor::parse("n:abc"), None);
    }

    #[test]
    fn highlights_are_utf16_ranges() {
        let (schema, f) = super::super::schema();
        let _ = schema;
        let terms = Terms {
            exact: vec!["deploy".into()],
            prefix: Some("fri".into()),
        };
        let (text, ranges) = snippet(&terms, f.body, "café ☕ deploy on Friday");
        let utf16: Vec<u16> = text.encode_utf16().collect();
        let picked: Vec<String> = ranges
            .iter()
            .map(|[a, b]| String::from_utf16_lossy(&utf16[*a..*b]))
            .collect();
        assert_eq!(picked, vec!["deploy", "Friday"]);
        let (text, _) = snippet(&terms, f.body, "hello deploy world!");
        assert_eq!(text, "hello deploy world!");
        let long = format!("{} deploy (draft)! {}", "a ".repeat(100), "b ".repeat(100));
        let (text, ranges) = snippet(&terms, f.body, &long);
        assert!(text.contains("deploy (draft)!"), "{text}");
        let utf16: Vec<u16> = text.encode_utf16().collect();
        let [a, b] = ranges[0];
        assert_eq!(String::from_utf16_lossy(&utf16[a..b]), "deploy");
    }

    /// Issue 24, point 11: any query text, cursor and snippet input gets a value or a typed
    /// error from the parser and the query run against a real (in-memory) index, never a
    /// panic or a hang. Bounded: a few hundred cases, all in memory.
    mod properties {
        use super::super::*;
        use crate::search::{TOKENIZER, analyzer, schema};
        use proptest::prelude::*;
        use tantivy::{Index, TantivyDocument};

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Text a person might type, plus quotes, control characters and any code point.
        fn query_text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z0-9 \"éüß☕*?:()-]{0,80}",
                ".{0,300}",
                proptest::collection::vec("[a-z]{1,6}[ \"]{0,2}", 0..40).prop_map(|w| w.concat()),
            ]
        }

        /// One small index of a few messages, built once for every case.
        fn index() -> (Index, Fields) {
            let (schema, f) = schema();
            let index = Index::create_in_ram(schema);
            index.tokenizers().register(TOKENIZER, analyzer());
            let mut w: tantivy::IndexWriter<TantivyDocument> = index
                .writer_with_num_threads(1, 20_000_000)
                .expect("writer");
            let bodies = [
                "deploy on friday",
                "Café ☕ au lait",
                "red apple red",
                "",
                "x",
            ];
            for (i, body) in bodies.iter().enumerate() {
                let mut d = TantivyDocument::default();
                d.add_u64(f.id, 1000 + i as u64);
                d.add_u64(f.room, 7);
                d.add_text(f.sender, "ana");
                d.add_u64(f.has_file, 0);
                d.add_text(f.body, *body);
                w.add_document(d).expect("add");
            }
            w.commit().expect("commit");
            (index, f)
        }

        #[test]
        fn any_query_text_parses_or_is_refused() {
            proptest!(config(), |(text in query_text())| {
                match parse(&text) {
                    Ok(p) => {
                        prop_assert!(p.phrases.len() <= MAX_WORDS);
                        prop_assert!(p.phrases.iter().all(|ph| !ph.is_empty()));
                    }
                    Err(SearchError::BadQuery(_)) => {}
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            });
        }

        #[test]
        fn any_cursor_text_parses_or_is_none() {
            proptest!(config(), |(text in prop_oneof!["[nr:0-9]{0,30}", ".{0,40}"])| {
                if let Some(c) = Cursor::parse(&text) {
                    prop_assert_eq!(Cursor::parse(&c.encode()), Some(c));
                }
            });
        }

        #[test]
        fn any_query_runs_or_is_refused() {
            let (index, f) = index();
            let reader = index.reader().expect("reader");
            let searcher = reader.searcher();
            let strategy = (
                query_text(),
                any::<bool>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(prop_oneof![
                    any::<u64>().prop_map(Cursor::Below),
                    (0usize..2000, any::<u64>()).prop_map(|(o, b)| Cursor::Offset(o, b)),
                ]),
                1usize..=100,
            );
            proptest!(config(), |((text, relevance, min_id, max_id, cursor, limit) in strategy)| {
                let q = SearchQuery {
                    text,
                    rooms: vec![Id(7)],
                    sender: None,
                    min_id,
                    max_id,
                    has_file: None,
                    sort: if relevance { Sort::Relevance } else { Sort::Newest },
                    limit,
                    cursor,
                };
                match run(&searcher, f, &q) {
                    Ok(page) => prop_assert!(page.hits.len() <= limit),
                    Err(SearchError::BadQuery(_)) => {}
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            });
        }

        #[test]
        fn any_snippet_has_ranges_inside_its_text() {
            let (_, f) = schema();
            let strategy = (
                proptest::collection::vec("[a-zé]{1,8}", 0..4),
                proptest::option::of("[a-z]{1,4}"),
                prop_oneof![".{0,400}", "([a-zé☕!]{1,9} ){0,80}"],
            );
            proptest!(config(), |((exact, prefix, text) in strategy)| {
                let terms = Terms { exact, prefix };
                let (fragment, ranges) = snippet(&terms, f.body, &text);
                let len = fragment.encode_utf16().count();
                for [a, b] in ranges {
                    prop_assert!(a <= b && b <= len, "range {a}..{b} outside {len}");
                }
            });
        }
    }
}
