//! End-to-end tests of the running-job sources (deck and ProwJob API) and of
//! the job -> CI user resolver, through real HTTP against the in-process fake
//! Kubernetes API + deck (`support/fake_ci.rs`), reached with a kubeconfig.

#[path = "support/fake_ci.rs"]
mod fake_ci;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_ci::*;
use serde_json::Value;
use vsphere_ci_session_metrics::Error;
use vsphere_ci_session_metrics::ci::{CiIdentity, IdentityResolver, ResolverOptions};
use vsphere_ci_session_metrics::kube_client::kube_client;
use vsphere_ci_session_metrics::prow::{
    DeckSource, JobSelector, ProwJobApiSource, ProwSource, RunningJob,
};

const PROWJOBS: &str = include_str!("fixtures/prow/prowjobs.json");
const METADATA_JSON: &str = include_str!("fixtures/ci/metadata.json");
const METADATA_MULTI_JSON: &str = include_str!("fixtures/ci/metadata-multi.json");
const METADATA_INVALID_JSON: &str = include_str!("fixtures/ci/metadata-invalid.json");
const PLATFORM_JSON: &str = include_str!("fixtures/ci/platform.json");
const GOVC_SH: &str = include_str!("fixtures/ci/govc.sh");
const VSPHERE_CONTEXT_SH: &str = include_str!("fixtures/ci/vsphere_context.sh");

/// The vCenter of the CI fixture files.
const VC: &str = "vcenter.ci.example.com";

struct Env {
    ci: FakeCi,
    client: kube::Client,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let ci = FakeCi::start().await;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let path = ci.kubeconfig_in(dir.path());
    let client = kube_client(Some(&path), "vsphere02")
        .await
        .expect("a client builds from the fake's kubeconfig");
    Env {
        ci,
        client,
        _dir: dir,
    }
}

fn fixture_jobs() -> Vec<Value> {
    let doc: Value = serde_json::from_str(PROWJOBS).expect("the ProwJob fixture is valid JSON");
    doc["items"]
        .as_array()
        .expect("the fixture has items")
        .clone()
}

fn identity(vcenter: &str, username: &str) -> CiIdentity {
    CiIdentity {
        vcenter: vcenter.into(),
        username: username.into(),
    }
}

/// Short enough that the slow-API cases end soon, long enough that a
/// loaded machine never turns an answer into a timeout.
fn fast_options() -> ResolverOptions {
    ResolverOptions {
        call_timeout: Duration::from_secs(3),
        ..ResolverOptions::default()
    }
}

fn running_job(id: &str, build_id: &str, target: &str) -> RunningJob {
    RunningJob {
        id: id.into(),
        build_id: build_id.into(),
        start_ms: None,
        job_name: format!("job-{id}"),
        pull_request: String::new(),
        target: target.into(),
        cluster: "vsphere02".into(),
        cluster_profile: "vsphere-2".into(),
    }
}

fn deck(ci: &FakeCi, timeout: Duration) -> DeckSource {
    DeckSource::new(ci.deck_url(), timeout, JobSelector::default())
        .expect("the fake's URL is a valid deck base")
}

// ------------------------------------------------------------ running jobs

fn api_source(env: &Env, selector: JobSelector) -> ProwJobApiSource {
    ProwJobApiSource::new(
        env.client.clone(),
        "ci".into(),
        selector,
        Duration::from_secs(5),
    )
}

fn ids(jobs: &[RunningJob]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

#[tokio::test]
async fn deck_and_the_api_with_unlabelled_jobs_list_the_same_running_vsphere_jobs() {
    let env = env().await;
    env.ci.set_prowjobs(fixture_jobs());

    let from_deck = ProwSource::Deck(deck(&env.ci, Duration::from_secs(5)))
        .list_running_jobs()
        .await
        .expect("deck lists jobs");
    let api = api_source(&env, JobSelector::default()).with_unlabelled(true);
    assert!(api.includes_unlabelled());
    let from_api = ProwSource::Api(api)
        .list_running_jobs()
        .await
        .expect("the API lists jobs");

    assert_eq!(from_deck, from_api);
    // Labelled presubmit, labelled periodic, and the unlabelled job on a
    // `vsphere01` cluster. Not: no pod_spec, no --target, success, aws,
    // build02, gcp label on a vsphere cluster, triggered.
    assert_eq!(
        ids(&from_deck),
        ["a1b2c3d4-0001", "a1b2c3d4-0002", "a1b2c3d4-0007"]
    );
    assert_eq!(
        from_deck[0],
        RunningJob {
            id: "a1b2c3d4-0001".into(),
            build_id: "1861000000000000001".into(),
            // status.startTime 2026-11-25T09:00:01Z
            start_ms: Some(1_795_597_201_000),
            job_name: "pull-ci-openshift-installer-main-e2e-vsphere-ovn".into(),
            pull_request: "https://github.com/openshift/installer/pull/9001".into(),
            target: "e2e-vsphere-ovn".into(),
            cluster: "vsphere02".into(),
            cluster_profile: "vsphere-2".into(),
        }
    );
    // The periodic has no build-id label and no job annotation.
    assert_eq!(from_deck[1].build_id, "1861000000000000902");
    assert_eq!(
        from_deck[1].job_name,
        "periodic-ci-openshift-release-master-nightly-4.21-e2e-vsphere-ovn-upi"
    );
    assert_eq!(from_deck[1].pull_request, "");
    assert_eq!(from_deck[2].cluster, "vsphere01");
    assert_eq!(from_deck[2].cluster_profile, "");
    assert_eq!(env.ci.count(Route::Deck), 1);
    // One list for the cloud label, one for jobs without it.
    assert_eq!(env.ci.count(Route::ProwJobList), 2);
}

#[tokio::test]
async fn by_default_the_api_lists_only_labelled_jobs_in_one_list() {
    let env = env().await;
    env.ci.set_prowjobs(fixture_jobs());
    let no_prefix = JobSelector {
        cluster_prefix: String::new(),
        ..JobSelector::default()
    };
    // (source, what it is)
    let cases = [
        (api_source(&env, JobSelector::default()), "default"),
        (
            api_source(&env, no_prefix).with_unlabelled(true),
            "opted in, but no cluster prefix",
        ),
    ];
    for (api, what) in cases {
        assert!(!api.includes_unlabelled(), "{what}");
        let before = env.ci.count(Route::ProwJobList);
        let jobs = api.list_running_jobs().await.expect("the API lists jobs");
        assert_eq!(ids(&jobs), ["a1b2c3d4-0001", "a1b2c3d4-0002"], "{what}");
        assert_eq!(env.ci.count(Route::ProwJobList) - before, 1, "{what}");
    }
}

#[tokio::test]
async fn deck_failures_are_clear_errors() {
    let ci = FakeCi::start().await;
    ci.set_prowjobs(fixture_jobs());
    let source = deck(&ci, Duration::from_secs(3));
    // (fault, expected error kind, text the message must contain)
    let cases = [
        (
            Fault::raw(
                200,
                "text/html",
                "<!DOCTYPE html>\n<html><body>Sign in</body></html>",
            ),
            "deck_parse",
            "line 1 column 1",
        ),
        (
            Fault::raw(200, "application/json", "not json at all"),
            "deck_parse",
            "line 1 column",
        ),
        (
            Fault::raw(
                200,
                "application/json",
                r#"{"items":[{"metadata":{"name":"x"},"spec":"#,
            ),
            "deck_parse",
            "EOF while parsing",
        ),
        (
            Fault::raw(500, "text/plain", "upstream exploded"),
            "deck_http",
            "HTTP 500: upstream exploded",
        ),
        (Fault::status(404), "deck_http", "HTTP 404"),
        (
            Fault::delay(Duration::from_secs(10)),
            "deck_http",
            "timed out",
        ),
    ];
    for (fault, kind, text) in cases {
        ci.set_fault(Route::Deck, fault.clone());
        let err = source.list_running_jobs().await.expect_err(text);
        assert_eq!(err.kind(), kind, "{fault:?}: {err}");
        assert!(err.to_string().contains(text), "{fault:?}: {err}");
        assert!(
            err.to_string().contains(&ci.url()),
            "error names the URL: {err}"
        );
    }
    ci.clear_fault(Route::Deck);
    assert_eq!(
        source
            .list_running_jobs()
            .await
            .expect("deck works again")
            .len(),
        3
    );
}

#[tokio::test]
async fn prowjob_api_refusal_and_slowness_are_errors() {
    let env = env().await;
    env.ci.set_prowjobs(fixture_jobs());
    let api = ProwJobApiSource::new(
        env.client.clone(),
        "ci".into(),
        JobSelector::default(),
        Duration::from_secs(3),
    );

    env.ci.set_fault(Route::ProwJobList, Fault::status(403));
    let err = api.list_running_jobs().await.expect_err("403 is an error");
    assert!(matches!(err, Error::Kube { .. }), "{err}");
    assert!(err.to_string().contains("list prowjobs in ci"), "{err}");

    env.ci
        .set_fault(Route::ProwJobList, Fault::delay(Duration::from_secs(10)));
    let err = api
        .list_running_jobs()
        .await
        .expect_err("slow API is an error");
    assert!(matches!(err, Error::KubeTimeout { .. }), "{err}");

    // A page that does not decode: its position, not its content.
    env.ci.set_fault(
        Route::ProwJobList,
        Fault::raw(
            200,
            "application/json",
            r#"{"items":[{"metadata":{"name":"x"},"status":{"state":"token-abc123"},"spec":7}]}"#,
        ),
    );
    let err = api
        .list_running_jobs()
        .await
        .expect_err("an undecodable page is an error");
    assert_eq!(err.kind(), "kube_decode", "{err}");
    assert!(err.to_string().contains("line 1 column"), "{err}");
    assert!(!err.to_string().contains("token-abc123"), "{err}");

    // A kubeconfig with a wrong token: the fake answers 401.
    env.ci.clear_fault(Route::ProwJobList);
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let path = dir.path().join("bad");
    env.ci
        .write_kubeconfig_with_token(&path, "wrong-token")
        .expect("the temp dir is writable");
    let client = kube_client(Some(&path), "prow")
        .await
        .expect("client builds");
    let api = ProwJobApiSource::new(
        client,
        "ci".into(),
        JobSelector::default(),
        Duration::from_secs(5),
    );
    let err = api.list_running_jobs().await.expect_err("401 is an error");
    match &err {
        Error::Kube {
            source: kube::Error::Api(status),
            ..
        } => assert_eq!(status.code, 401),
        other => panic!("expected a 401 kube error, got {other}"),
    }
}

// ------------------------------------------------------------ CI users

#[tokio::test]
async fn namespace_found_by_label_resolves_the_metadata_json_user() {
    let env = env().await;
    env.ci
        .add_namespace(ci_namespace("ci-op-aaaa1111", "job-a"));
    env.ci.add_secret(secret(
        "ci-op-aaaa1111",
        "e2e-vsphere",
        &[("metadata.json", METADATA_JSON)],
    ));
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());

    let jobs = [running_job("job-a", "1001", "e2e-vsphere")];
    let got = resolver.resolve(&jobs).await;

    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job, jobs[0]);
    assert_eq!(got[0].identities, [identity(VC, "ci-user-1")]);
    // What ties sessions to the job: its namespace and the fixture's infraID.
    assert_eq!(got[0].namespace.as_deref(), Some("ci-op-aaaa1111"));
    assert_eq!(
        got[0].infra_id.as_deref(),
        Some("ci-op-8k2x9wq1-4f2a1-r7t5k")
    );
    let stats = resolver.stats();
    assert_eq!(
        (stats.namespace_lookups, stats.log_reads, stats.secret_reads),
        (1, 0, 1)
    );
    assert_eq!(
        env.ci.count(Route::Log),
        0,
        "the log is not read when the label finds the namespace"
    );
    // Served from the API server's cache, not etcd.
    assert_eq!(
        env.ci.list_versions(Route::NamespaceList),
        [Some("0".to_string())]
    );
}

#[tokio::test]
async fn older_ci_operator_namespace_is_read_from_the_log_head_only() {
    let env = env().await;
    // A 4 MB log: the namespace line is in its first lines.
    let log = ci_operator_log("ci-op-bbbb2222", 4 * 1024 * 1024);
    env.ci.add_pod(ci_operator_pod("job-b", "2002"), log);
    env.ci.add_secret(secret(
        "ci-op-bbbb2222",
        "e2e-vsphere",
        &[("govc.sh", GOVC_SH)],
    ));
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());

    let got = resolver
        .resolve(&[running_job("job-b", "2002", "e2e-vsphere")])
        .await;

    assert_eq!(got[0].identities, [identity(VC, "ci-user-2")]);
    assert_eq!(env.ci.log_limits_seen(), [Some(65536)]);
    assert!(
        env.ci.log_bytes_sent() <= 65536,
        "sent {}",
        env.ci.log_bytes_sent()
    );
    assert_eq!(resolver.stats().log_reads, 1);
    assert_eq!(
        env.ci.list_versions(Route::PodList),
        [Some("0".to_string())]
    );
}

#[tokio::test]
async fn every_secret_format_gives_its_users() {
    let env = env().await;
    // (secret files, expected identities)
    type Files<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Files, Vec<CiIdentity>)> = vec![
        (
            vec![("metadata.json", METADATA_JSON)],
            vec![identity(VC, "ci-user-1")],
        ),
        (
            vec![("metadata.json", METADATA_MULTI_JSON)],
            vec![
                identity("vcenter-1.ci.example.com", "ci-user-3"),
                identity("vcenter-2.ci.example.com", "ci-user-4"),
            ],
        ),
        (
            vec![("platform.json", PLATFORM_JSON)],
            vec![identity(VC, "ci-user-2")],
        ),
        (vec![("govc.sh", GOVC_SH)], vec![identity(VC, "ci-user-2")]),
        (
            vec![("vsphere_context.sh", VSPHERE_CONTEXT_SH)],
            vec![identity(VC, "ci-user-4")],
        ),
        (
            // metadata.json wins over the lease files once the install ended.
            vec![("govc.sh", GOVC_SH), ("metadata.json", METADATA_JSON)],
            vec![identity(VC, "ci-user-1")],
        ),
    ];
    let mut jobs = Vec::new();
    for (i, (files, _)) in cases.iter().enumerate() {
        let ns = format!("ci-op-case{i:04}");
        let id = format!("job-{i}");
        env.ci.add_namespace(ci_namespace(&ns, &id));
        env.ci.add_secret(secret(&ns, "e2e-vsphere", files));
        jobs.push(running_job(&id, &format!("{i}"), "e2e-vsphere"));
    }
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());

    let got = resolver.resolve(&jobs).await;

    for ((files, want), users) in cases.iter().zip(&got) {
        assert_eq!(
            &users.identities,
            want,
            "{:?}",
            files.iter().map(|f| f.0).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn jobs_sharing_a_user_and_a_job_on_another_vcenter() {
    let env = env().await;
    for (id, ns, vcenter, user) in [
        ("job-1", "ci-op-share001", VC, "ci-user-1@vsphere.local"),
        ("job-2", "ci-op-share002", VC, "VSPHERE.LOCAL\\ci-user-1"),
        (
            "job-3",
            "ci-op-other003",
            "https://VC-OTHER.example.com/sdk",
            "ci-user-1@vsphere.local",
        ),
    ] {
        env.ci.add_namespace(ci_namespace(ns, id));
        env.ci.add_secret(secret(
            ns,
            "e2e-vsphere",
            &[("govc.sh", &govc_sh(vcenter, user))],
        ));
    }
    let jobs: Vec<RunningJob> = ["job-1", "job-2", "job-3"]
        .iter()
        .map(|id| running_job(id, id, "e2e-vsphere"))
        .collect();
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());

    let got = resolver.resolve(&jobs).await;

    assert_eq!(got[0].identities, [identity(VC, "ci-user-1")]);
    assert_eq!(got[1].identities, [identity(VC, "ci-user-1")]);
    assert_eq!(
        got[2].identities,
        [identity("vc-other.example.com", "ci-user-1")]
    );
}

#[tokio::test]
async fn invalid_metadata_json_falls_back_to_govc_sh_and_alone_leaves_the_job_unresolved() {
    let env = env().await;
    env.ci
        .add_namespace(ci_namespace("ci-op-inva0001", "job-fallback"));
    env.ci.add_secret(secret(
        "ci-op-inva0001",
        "e2e-vsphere",
        &[
            ("metadata.json", METADATA_INVALID_JSON),
            ("govc.sh", GOVC_SH),
        ],
    ));
    env.ci
        .add_namespace(ci_namespace("ci-op-inva0002", "job-broken"));
    env.ci.add_secret(secret(
        "ci-op-inva0002",
        "e2e-vsphere",
        &[("metadata.json", METADATA_INVALID_JSON)],
    ));
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());

    let got = resolver
        .resolve(&[
            running_job("job-fallback", "1", "e2e-vsphere"),
            running_job("job-broken", "2", "e2e-vsphere"),
        ])
        .await;

    assert_eq!(got[0].identities, [identity(VC, "ci-user-2")]);
    assert!(got[1].identities.is_empty());
    assert_eq!(resolver.stats().failures, 1);
}

#[tokio::test]
async fn a_steady_cycle_reads_nothing_ended_jobs_leave_the_cache_and_unresolved_jobs_are_retried() {
    let env = env().await;
    for (id, ns) in [("job-a", "ci-op-cache00a"), ("job-b", "ci-op-cache00b")] {
        env.ci.add_namespace(ci_namespace(ns, id));
        env.ci.add_secret(secret(
            ns,
            "e2e-vsphere",
            &[("metadata.json", METADATA_JSON)],
        ));
    }
    // job-c's namespace exists but its secret does not yet.
    env.ci
        .add_namespace(ci_namespace("ci-op-cache00c", "job-c"));
    let a = running_job("job-a", "1", "e2e-vsphere");
    let b = running_job("job-b", "2", "e2e-vsphere");
    let c = running_job("job-c", "3", "e2e-vsphere");
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());

    let first = resolver.resolve(&[a.clone(), b.clone(), c.clone()]).await;
    assert!(first[2].identities.is_empty(), "job-c has no secret yet");
    let reads_after_first = env.ci.lookup_count();

    // job-c's namespace is known already, and reported.
    assert_eq!(first[2].namespace.as_deref(), Some("ci-op-cache00c"));

    // Second cycle: a and b from the cache; only c's secret is read again
    // (its namespace was remembered).
    env.ci.add_secret(secret(
        "ci-op-cache00c",
        "e2e-vsphere",
        &[("govc.sh", GOVC_SH), ("metadata.json", METADATA_JSON)],
    ));
    let second = resolver.resolve(&[a.clone(), b.clone(), c.clone()]).await;
    assert_eq!(second[2].identities, [identity(VC, "ci-user-1")]);
    assert_eq!(
        env.ci.lookup_count() - reads_after_first,
        1,
        "one secret read for job-c"
    );
    assert_eq!(resolver.stats().cache_hits, 2);

    // Steady state: nothing is read.
    let before = env.ci.lookup_count();
    let third = resolver.resolve(&[a.clone(), b.clone(), c.clone()]).await;
    assert_eq!(env.ci.lookup_count(), before);
    assert_eq!(
        third.iter().map(|j| j.identities.len()).collect::<Vec<_>>(),
        [1, 1, 1]
    );

    // b ends: it leaves the cache, so if its id came back it would be read again.
    resolver.resolve(&[a.clone(), c.clone()]).await;
    let before = env.ci.lookup_count();
    resolver.resolve(&[a.clone(), b.clone(), c.clone()]).await;
    assert_eq!(
        env.ci.lookup_count() - before,
        2,
        "job-b is looked up again"
    );
}

#[tokio::test]
async fn a_lease_file_answer_is_rechecked_until_metadata_json_names_every_vcenter() {
    let env = env().await;
    env.ci
        .add_namespace(ci_namespace("ci-op-inst0001", "job-i"));
    env.ci.add_secret(secret(
        "ci-op-inst0001",
        "e2e-vsphere",
        &[("govc.sh", GOVC_SH)],
    ));
    let jobs = [running_job("job-i", "9", "e2e-vsphere")];
    let every_call = ResolverOptions {
        recheck_interval: Duration::ZERO,
        ..fast_options()
    };
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), every_call);

    // Install running: govc.sh answers, and is read again each call (the
    // secret only: the namespace is remembered).
    let first = resolver.resolve(&jobs).await;
    assert_eq!(first[0].identities, [identity(VC, "ci-user-2")]);
    let before = env.ci.lookup_count();
    let second = resolver.resolve(&jobs).await;
    assert_eq!(second[0].identities, [identity(VC, "ci-user-2")]);
    assert_eq!(env.ci.lookup_count() - before, 1);
    assert_eq!(env.ci.count(Route::NamespaceList), 1);

    // A failed re-read keeps the answer already known.
    env.ci.set_fault(Route::Secret, Fault::status(500));
    let failed = resolver.resolve(&jobs).await;
    assert_eq!(failed[0].identities, [identity(VC, "ci-user-2")]);
    env.ci.clear_fault(Route::Secret);

    // Install done: metadata.json names two vCenters.
    let two = [
        ("vcenter-1.ci.example.com", "ci-user-3@vsphere.local"),
        ("vcenter-2.ci.example.com", "ci-user-4@vsphere.local"),
    ];
    env.ci.add_secret(secret(
        "ci-op-inst0001",
        "e2e-vsphere",
        &[
            ("govc.sh", GOVC_SH),
            ("metadata.json", &metadata_json_multi(&two)),
        ],
    ));
    let done = resolver.resolve(&jobs).await;
    assert_eq!(
        done[0].identities,
        [
            identity("vcenter-1.ci.example.com", "ci-user-3"),
            identity("vcenter-2.ci.example.com", "ci-user-4"),
        ]
    );

    // Final: nothing is read any more.
    let before = env.ci.lookup_count();
    let steady = resolver.resolve(&jobs).await;
    assert_eq!(steady[0].identities, done[0].identities);
    assert_eq!(env.ci.lookup_count(), before);
    let stats = resolver.stats();
    assert_eq!((stats.rechecks, stats.cache_hits), (3, 1));
}

#[tokio::test]
async fn a_lease_file_answer_is_not_read_again_within_the_recheck_interval() {
    let env = env().await;
    env.ci
        .add_namespace(ci_namespace("ci-op-inst0002", "job-j"));
    env.ci.add_secret(secret(
        "ci-op-inst0002",
        "e2e-vsphere",
        &[("platform.json", PLATFORM_JSON)],
    ));
    let jobs = [running_job("job-j", "10", "e2e-vsphere")];
    let hourly = ResolverOptions {
        recheck_interval: Duration::from_secs(3600),
        ..fast_options()
    };
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), hourly);

    let first = resolver.resolve(&jobs).await;
    let before = env.ci.lookup_count();
    let second = resolver.resolve(&jobs).await;

    assert_eq!(first[0].identities, [identity(VC, "ci-user-2")]);
    assert_eq!(second[0].identities, first[0].identities);
    assert_eq!(env.ci.lookup_count(), before);
    assert_eq!(resolver.stats().cache_hits, 1);
}

/// Everything logged, at every level, while the guard lives (this thread).
struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
    _companion: tracing::Dispatch,
}

impl LogCapture {
    fn start() -> LogCapture {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = Arc::clone(&buffer);
            move || SharedWriter(Arc::clone(&buffer))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // With a single registered dispatcher, tracing-core computes a new
        // callsite's interest from the default of the thread that hits it
        // first; another test's thread (no subscriber) would then mark it
        // "never" for every thread, and this capture would miss events. A
        // second registered dispatcher makes interest the union of all.
        let companion = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        tracing::callsite::rebuild_interest_cache();
        LogCapture {
            buffer,
            _guard: guard,
            _companion: companion,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .buffer
                .lock()
                .expect("log buffer lock is never poisoned"),
        )
        .into_owned()
    }
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log buffer lock is never poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_secret_that_does_not_decode_leaves_the_job_unresolved_and_is_never_logged() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let env = env().await;
    env.ci
        .add_namespace(ci_namespace("ci-op-leak0001", "job-leak"));
    // A valid file holding a password, then a value that is not base64 and
    // holds one in clear.
    let metadata = metadata_json(VC, "ci-user-1@vsphere.local");
    let clear_password = "hunter2-not-base64";
    let body = secret_body_raw(
        "ci-op-leak0001",
        "e2e-vsphere",
        &[
            ("metadata.json", &b64(&metadata)),
            (
                "govc.sh",
                &format!("export GOVC_PASSWORD={clear_password} %%%"),
            ),
        ],
    );
    env.ci
        .set_fault(Route::Secret, Fault::raw(200, "application/json", body));
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());
    let jobs = [running_job("job-leak", "1", "e2e-vsphere")];

    let logs = LogCapture::start();
    let got = resolver.resolve(&jobs).await;
    let text = logs.text();
    drop(logs);

    assert!(got[0].identities.is_empty());
    assert_eq!(resolver.stats().failures, 1);
    for secret in [
        "s3cret-metadata-password",
        clear_password,
        &b64(&metadata),
        &b64("s3cret-metadata-password"),
    ] {
        assert!(!text.contains(secret), "{secret:?} logged: {text}");
    }
    assert!(
        text.contains("Resolving CI users failed") && text.contains("malformed response"),
        "the failure is logged: {text}"
    );
}

#[tokio::test]
async fn refused_missing_and_slow_lookups_leave_jobs_unresolved() {
    let env = env().await;
    env.ci
        .add_namespace(ci_namespace("ci-op-fault001", "job-f"));
    env.ci.add_secret(secret(
        "ci-op-fault001",
        "e2e-vsphere",
        &[("metadata.json", METADATA_JSON)],
    ));
    let jobs = [running_job("job-f", "77", "e2e-vsphere")];
    // (route, fault, counted as a failure)
    let cases = [
        (Route::NamespaceList, Fault::status(401), true),
        (Route::NamespaceList, Fault::status(500), true),
        (
            Route::NamespaceList,
            Fault::delay(Duration::from_secs(10)),
            true,
        ),
        (Route::Secret, Fault::status(404), false),
        (Route::Secret, Fault::status(403), true),
        (Route::Secret, Fault::delay(Duration::from_secs(10)), true),
    ];
    for (route, fault, is_failure) in cases {
        let resolver =
            IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());
        env.ci.set_fault(route, fault.clone());
        let started = std::time::Instant::now();
        let got = resolver.resolve(&jobs).await;
        assert!(got[0].identities.is_empty(), "{route:?} {fault:?}");
        assert_eq!(
            resolver.stats().failures,
            u64::from(is_failure),
            "{route:?} {fault:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the call timeout bounds the lookup"
        );
        env.ci.clear_fault(route);
        // Retried next call, and now resolved.
        let got = resolver.resolve(&jobs).await;
        assert_eq!(
            got[0].identities,
            [identity(VC, "ci-user-1")],
            "{route:?} {fault:?}"
        );
    }
}

#[tokio::test]
async fn a_job_without_a_namespace_or_pod_yet_is_unresolved_without_failure() {
    let env = env().await;
    let resolver = IdentityResolver::new(env.client.clone(), "vsphere02".into(), fast_options());
    let got = resolver
        .resolve(&[running_job("job-new", "5", "e2e-vsphere")])
        .await;
    assert!(got[0].identities.is_empty());
    let stats = resolver.stats();
    assert_eq!(stats.failures, 0);
    // The label lookup and the pod fallback were both tried.
    assert_eq!(env.ci.count(Route::NamespaceList), 1);
    assert_eq!(env.ci.count(Route::PodList), 1);
    assert_eq!(env.ci.count(Route::Log), 0);
}

#[tokio::test]
async fn kube_client_picks_the_context_named_like_the_cluster() {
    let ci = FakeCi::start().await;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let path = dir.path().join("kubeconfig");
    // current-context points at a dead server; the `vsphere02` context at the fake.
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster:\n    server: http://127.0.0.1:9\n\
         - name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: dead\n  context:\n    cluster: dead\n    user: u\n\
         - name: vsphere02\n  context:\n    cluster: fake\n    user: u\ncurrent-context: dead\nusers:\n- name: u\n  user:\n    token: {}\n",
        ci.url(),
        ci.token()
    );
    std::fs::write(&path, yaml).expect("the temp dir is writable");
    ci.add_namespace(ci_namespace("ci-op-ctx00001", "job-ctx"));
    ci.add_secret(secret(
        "ci-op-ctx00001",
        "e2e-vsphere",
        &[("govc.sh", GOVC_SH)],
    ));

    let client = kube_client(Some(&path), "vsphere02")
        .await
        .expect("client builds");
    let resolver = IdentityResolver::new(client, "vsphere02".into(), fast_options());
    let got = resolver
        .resolve(&[running_job("job-ctx", "1", "e2e-vsphere")])
        .await;
    assert_eq!(got[0].identities, [identity(VC, "ci-user-2")]);

    match kube_client(Some(&dir.path().join("missing")), "vsphere02").await {
        Ok(_) => panic!("a missing kubeconfig must be an error"),
        Err(err) => assert_eq!(err.kind(), "kube_config"),
    }
}

#[tokio::test]
async fn the_demo_scenario_gives_three_running_jobs_and_their_users() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/demo/scenario.json"
    ))
    .expect("the demo scenario is readable");
    let compact = CompactScenario::parse(&text).expect("the demo scenario is valid");
    let token = compact
        .token
        .clone()
        .expect("the demo scenario sets a token");
    let ci = FakeCi::start_with(
        "127.0.0.1:0".parse().expect("literal"),
        &token,
        compact.into_scenario(),
    )
    .await
    .expect("the fake starts");
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let client = kube_client(Some(&ci.kubeconfig_in(dir.path())), "vsphere02")
        .await
        .expect("client builds");

    let jobs = deck(&ci, Duration::from_secs(5))
        .list_running_jobs()
        .await
        .expect("deck lists the demo jobs");
    let resolver = IdentityResolver::new(client, "vsphere02".into(), fast_options());
    let users = resolver.resolve(&jobs).await;

    let got: Vec<(&str, Vec<CiIdentity>)> = users
        .iter()
        .map(|u| (u.job.id.as_str(), u.identities.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "5d3c1a7e-demo-0001",
                vec![identity("127.0.0.1", "ci-user-1")]
            ),
            (
                "5d3c1a7e-demo-0002",
                vec![identity("127.0.0.1", "ci-user-1")]
            ),
            (
                "5d3c1a7e-demo-0003",
                vec![identity("127.0.0.1", "ci-user-2")]
            ),
        ]
    );
    assert_eq!(
        ci.log_limits_seen().len(),
        1,
        "job 0002 is found through the ci-operator log"
    );
}

#[tokio::test]
async fn deck_answers_gzipped_and_the_list_is_decompressed_as_it_streams() {
    let env = env().await;
    let jobs: Vec<serde_json::Value> = (0..300)
        .map(|i| fake_ci::vsphere_job(&format!("job-{i:03}"), &format!("{i}"), "e2e-vsphere"))
        .collect();
    let plain = serde_json::to_vec(&serde_json::json!({ "items": jobs })).unwrap();
    env.ci.set_prowjobs(jobs);
    let running = deck(&env.ci, Duration::from_secs(10))
        .list_running_jobs()
        .await
        .expect("the gzipped list is read");
    assert_eq!(running.len(), 300);
    let (wire, gzipped) = env.ci.deck_wire();
    assert_eq!(gzipped, 1, "the reporter asked for gzip");
    assert!(
        wire * 5 < plain.len() as u64,
        "{wire} bytes on the wire for {} of JSON",
        plain.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deck_that_never_ends_costs_its_timeout_and_nothing_more() {
    // `{"items": [` then finished jobs without end.
    let app = axum::Router::new().route(
        "/prowjobs.js",
        axum::routing::get(|| async {
            let job = serde_json::to_vec(&fake_ci::with_state(
                fake_ci::vsphere_job("job", "1", "e2e-vsphere"),
                "success",
            ))
            .unwrap();
            let mut item = job;
            item.push(b',');
            let item = bytes::Bytes::from(item);
            let head = futures::stream::once(async {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"{\"items\": ["))
            });
            use futures::StreamExt as _;
            let endless = futures::stream::repeat(item).map(Ok);
            axum::body::Body::from_stream(head.chain(endless))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let deck = DeckSource::new(
        url::Url::parse(&format!("http://{addr}/")).unwrap(),
        Duration::from_secs(2),
        JobSelector::default(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = deck.list_running_jobs().await.expect_err("it never ends");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("deck"), "{err}");
}
