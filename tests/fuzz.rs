//! Property tests of every parser of outside input: random bytes, and real
//! documents mutated (cut at any byte, parts repeated, namespaces renamed,
//! entities and huge text inserted, deep nesting). None may panic; an error
//! must say what was wrong.
//!
//! `scripts/test.sh` runs a fixed number of cases from a fixed seed, so a
//! run is repeatable. A longer run: `FUZZ_CASES=100000 cargo test --release
//! --test fuzz` (and `FUZZ_SEED=<n>` for other inputs). Whatever a run finds
//! becomes a fixture test beside the parser it broke.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use vsphere_ci_session_metrics::ci::profile;
use vsphere_ci_session_metrics::cli::Flags;
use vsphere_ci_session_metrics::config::{FileConfig, merge, parse_duration};
use vsphere_ci_session_metrics::prow::{JobSelector, parse_deck};
use vsphere_ci_session_metrics::schedule::Schedule;
use vsphere_ci_session_metrics::sink::retry::{MAX_RETRY_AFTER, parse_retry_after};
use vsphere_ci_session_metrics::vcenter::soap;
use vsphere_ci_session_metrics::vcenter::updates::parse_update_page;

/// Cases per property in the test suite.
const CASES: u32 = 256;

fn runner() -> TestRunner {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_202);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

fn fixture(path: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// One way to damage a document.
#[derive(Debug, Clone)]
enum Mutation {
    Cut(usize),
    Repeat { at: usize, len: usize, times: usize },
    Replace { at: usize, with: Vec<u8> },
    Insert { at: usize, text: String },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let inserts = prop_oneof![
        Just("&amp;&lt;&#x41;&#65;".to_string()),
        Just("&bogus;&#xFFFFFFFF;&#0;".to_string()),
        Just("<![CDATA[x]]>".to_string()),
        Just("<!DOCTYPE x [<!ENTITY a \"aaaaaaaaaa\">]>".to_string()),
        Just("xmlns=\"urn:other\" xmlns:soapenv=\"urn:x\"".to_string()),
        Just("\"\\u0000\\ud800\"".to_string()),
        Just("[[[[[[[[[[[[[[[[".repeat(64)),
        "[a-zA-Z0-9<>/=\"' {}\\[\\],:]{0,40}".prop_map(|s| s),
        (1usize..200_000).prop_map(|n| "x".repeat(n)),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), 1usize..64, 1usize..64).prop_map(|(at, len, times)| Mutation::Repeat {
            at,
            len,
            times
        }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(at, with)| Mutation::Replace { at, with }),
        (any::<usize>(), inserts).prop_map(|(at, text)| Mutation::Insert { at, text }),
    ]
}

fn apply(doc: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut doc = doc.to_vec();
    for m in mutations {
        let n = doc.len().max(1);
        match m {
            Mutation::Cut(at) => doc.truncate(at % n),
            Mutation::Repeat { at, len, times } => {
                let start = at % n;
                let end = (start + len).min(doc.len());
                let part = doc[start.min(doc.len())..end].to_vec();
                for _ in 0..*times {
                    doc.splice(end..end, part.iter().cloned());
                }
            }
            Mutation::Replace { at, with } => {
                let start = (at % n).min(doc.len());
                let end = (start + with.len()).min(doc.len());
                doc.splice(start..end, with.iter().cloned());
            }
            Mutation::Insert { at, text } => {
                let at = (at % n).min(doc.len());
                doc.splice(at..at, text.bytes());
            }
        }
    }
    doc
}

/// Random bytes, or a real document mutated one to four times.
fn input(real: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::collection::vec(mutation(), 1..4).prop_map(move |m| apply(&real, &m)),
    ]
}

/// Every SOAP parser on one input: no panic, and errors say something.
fn all_soap_parsers(xml: &[u8]) {
    let check = |r: Result<(), String>| {
        if let Err(message) = r {
            assert!(!message.is_empty());
        }
    };
    check(
        soap::parse_session_page(xml, false)
            .map(drop)
            .map_err(|e| e.0),
    );
    check(
        soap::parse_session_page(xml, true)
            .map(drop)
            .map_err(|e| e.0),
    );
    check(soap::parse_service_content(xml).map(drop).map_err(|e| e.0));
    check(soap::parse_login(xml).map(drop).map_err(|e| e.0));
    check(soap::parse_current_time(xml).map(drop).map_err(|e| e.0));
    check(parse_update_page(xml).map(drop).map_err(|e| e.0));
    let _ = soap::parse_fault(xml);
}

#[test]
fn soap_parsers_never_panic_on_random_or_damaged_answers() {
    for name in [
        "retrieve_sessions_token.xml",
        "service_content.xml",
        "login.xml",
        "fault_unusual_prefix.xml",
        "wait_for_updates_enter.xml",
    ] {
        let real = fixture(&format!("soap/{name}"));
        runner()
            .run(&input(real), |xml| {
                all_soap_parsers(&xml);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_deck_parser_never_panics_even_on_deep_nesting() {
    let real = fixture("prow/prowjobs.json");
    let selector = JobSelector::default();
    runner()
        .run(&input(real), |json| {
            if let Err(e) = parse_deck(json.as_slice(), &selector) {
                assert!(!e.to_string().is_empty());
            }
            Ok(())
        })
        .unwrap();
    // Nesting far past serde_json's recursion limit is an error, not a
    // stack overflow.
    let deep = format!(
        "{{\"items\": [{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse_deck(deep.as_bytes(), &selector).is_err());
}

#[test]
fn ci_profile_parsers_never_panic_and_never_quote_content() {
    for name in [
        "metadata.json",
        "metadata-multi.json",
        "platform.json",
        "govc.sh",
    ] {
        let real = fixture(&format!("ci/{name}"));
        runner()
            .run(&input(real), |bytes| {
                for message in [
                    profile::parse_metadata_json(&bytes).err(),
                    profile::parse_platform_json(&bytes).err(),
                ]
                .into_iter()
                .flatten()
                {
                    // A position, never a value: the files hold passwords.
                    assert!(message.contains("line"), "{message}");
                    assert!(!message.contains("password"), "{message}");
                }
                let _ = profile::parse_govc_sh(&bytes);
                let _ = profile::parse_infra_id(&bytes);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn retry_after_durations_and_cron_never_panic_and_stay_bounded() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let text = prop_oneof![
        "\\PC{0,40}",
        "[0-9]{1,40}",
        "[0-9]{1,6}(ns|us|ms|s|m|h|d|w|y)",
        "(\\*|[0-9]{1,3})( (\\*|[0-9]{1,3}(/[0-9]{1,2})?)){4,5}",
        "(Mon|Tue|Sun), [0-9]{1,2} (Jan|Feb|Oct) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
    ];
    runner()
        .run(&text, |s| {
            if let Some(wait) = parse_retry_after(&s, now) {
                assert!(wait <= MAX_RETRY_AFTER, "{s:?}: {wait:?}");
            }
            match parse_duration(&s) {
                Ok(d) => assert!(d <= Duration::from_secs(86_400), "{s:?}: {d:?}"),
                Err(message) => assert!(!message.is_empty()),
            }
            let _ = Schedule::parse(&s);
            Ok(())
        })
        .unwrap();
}

#[test]
fn yaml_configs_never_panic_and_errors_name_the_problem() {
    let real = std::fs::read("config/example.yaml").expect("the example config");
    runner()
        .run(&input(real), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            match serde_yaml::from_str::<FileConfig>(&text) {
                Ok(file) => {
                    if let Err(e) = merge(&Flags::default(), file, "c.yaml") {
                        assert!(!e.to_string().is_empty());
                    }
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
            Ok(())
        })
        .unwrap();
}
