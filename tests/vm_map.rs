//! The VM map (guest IP -> VM name) against a real vCenter simulator: what
//! the reporter's incremental reads hold must equal what vcsim lists through
//! an independent `RetrievePropertiesEx` (tests/support/vcsim.rs), after VMs
//! are added, renamed, re-addressed and removed, across a re-login, and at
//! 2,000 VMs, where a steady cycle must read only what changed.
//!
//! vcsim must be built first: `scripts/build-vcsim.sh` (scripts/test.sh does it).

#[path = "support/vcsim.rs"]
mod vcsim;

use std::time::{Duration, Instant};

use url::Url;
use vsphere_ci_session_metrics::secret::Secret;
use vsphere_ci_session_metrics::vcenter::{
    DEFAULT_SESSION_LIMIT, Observation, VcenterClient, VcenterConfig,
};

use vcsim::{SoapSession, Vcsim, VmRow};

const REPORTER_AGENT: &str = "vsphere-ci-session-metrics/vm-map-test";

fn client(url: &Url, vm_map: bool) -> VcenterClient {
    VcenterClient::new(VcenterConfig {
        url: url.clone(),
        host: url.host_str().unwrap_or_default().to_string(),
        username: "reporter@vsphere.local".into(),
        password: Secret::new("pw"),
        user_agent: REPORTER_AGENT.into(),
        ca_file: None,
        insecure: false,
        timeout: Duration::from_secs(30),
        password_file: None,
        login_backoff: Default::default(),
        max_response_bytes: vsphere_ci_session_metrics::vcenter::DEFAULT_MAX_RESPONSE_BYTES,
        session_limit: DEFAULT_SESSION_LIMIT,
        aliases: Vec::new(),
        vm_map,
    })
    .expect("the client builds")
}

async fn observe(client: &VcenterClient) -> Observation {
    let observation = client.observe().await.expect("the vCenter is observed");
    if let Some(Err(e)) = &observation.vm_map {
        panic!("the VM map was not read: {e}");
    }
    observation
}

/// What vcsim lists, each VM's addresses sorted as the map keeps them.
async fn vcsim_vms(admin: &SoapSession) -> Vec<VmRow> {
    let mut vms = admin.vms().await;
    for (_, ips) in &mut vms {
        ips.sort();
    }
    vms.sort();
    vms
}

/// Observe and compare the reporter's map with vcsim's own list.
async fn assert_map_matches(client: &VcenterClient, admin: &SoapSession, step: &str) {
    observe(client).await;
    assert_eq!(
        client.vm_map_entries().await,
        vcsim_vms(admin).await,
        "after {step}: the VM map differs from what vcsim lists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_map_follows_vms_added_renamed_readdressed_and_removed() {
    let vcsim = Vcsim::start(&["-vm", "ci-op-aaaaaaaa-af877-master-0,127.0.0.21,10.0.9.21"]);
    let admin = vcsim.admin().await;
    let client = client(vcsim.url(), true);

    assert_map_matches(&client, &admin, "the first read").await;
    let first = client.vm_map_stats().await;
    assert_eq!(first.vms, vcsim_vms(&admin).await.len(), "{first:?}");
    assert_eq!(first.addresses, 2, "the seeded VM's two guest IPs");

    vcsim
        .vm_add("ci-op-bbbbbbbb-x1y2z-worker-0", &["127.0.0.22"])
        .await;
    assert_map_matches(&client, &admin, "adding a VM").await;
    vcsim
        .vm_rename(
            "ci-op-aaaaaaaa-af877-master-0",
            "ci-op-cccccccc-q1w2e-master-0",
        )
        .await;
    assert_map_matches(&client, &admin, "renaming a VM").await;
    vcsim
        .vm_set_ips(
            "ci-op-bbbbbbbb-x1y2z-worker-0",
            &["127.0.0.23", "127.0.0.24"],
        )
        .await;
    assert_map_matches(&client, &admin, "changing a VM's guest IPs").await;
    vcsim.vm_remove("ci-op-bbbbbbbb-x1y2z-worker-0").await;
    assert_map_matches(&client, &admin, "removing a VM").await;

    let stats = client.vm_map_stats().await;
    assert_eq!(stats.full_reads, 1, "every change was read incrementally");
    assert_eq!(stats.vms, first.vms, "one VM added, one removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_from_a_vms_guest_ip_are_given_that_vms_name() {
    let vcsim = Vcsim::start(&["-vm", "ci-op-aaaaaaaa-af877-worker-0-abcde,127.0.0.31"]);
    let client = client(vcsim.url(), true);
    let _csi = vcsim
        .login_from(
            "127.0.0.31",
            "ci_user_01@vsphere.local",
            "k8s-cloud-provider-vsphere",
        )
        .await;
    let _installer = vcsim
        .login_from(
            "127.0.0.41",
            "ci_user_01@vsphere.local",
            "openshift-install",
        )
        .await;

    let observation = observe(&client).await;
    let from_vm: Vec<_> = observation
        .sessions
        .iter()
        .filter(|s| s.ip_address == "127.0.0.31")
        .collect();
    assert_eq!(from_vm.len(), 1, "{:?}", observation.sessions);
    assert_eq!(
        observation.vm_names_by_ip.get("127.0.0.31"),
        Some(&vec!["ci-op-aaaaaaaa-af877-worker-0-abcde".to_string()])
    );
    assert!(
        !observation.vm_names_by_ip.contains_key("127.0.0.41"),
        "no VM has the installer's address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_login_reads_the_vm_map_again_from_scratch() {
    let vcsim = Vcsim::start(&["-vm", "ci-op-aaaaaaaa-af877-master-0,127.0.0.21"]);
    let admin = vcsim.admin().await;
    let client = client(vcsim.url(), true);
    assert_map_matches(&client, &admin, "the first read").await;

    // An operator ends the reporter's session: its collector and filter go
    // with it, and a change made meanwhile must not be missed.
    for row in admin.sessions_with_agent(REPORTER_AGENT).await {
        admin.terminate(&row.key).await;
    }
    vcsim
        .vm_rename(
            "ci-op-aaaaaaaa-af877-master-0",
            "ci-op-dddddddd-a1b2c-master-0",
        )
        .await;
    assert_map_matches(&client, &admin, "a re-login").await;
    assert_eq!(client.logins(), 2);
    assert_eq!(client.vm_map_stats().await.full_reads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_vm_attribution_off_no_vm_is_read() {
    let vcsim = Vcsim::start(&["-vm", "ci-op-aaaaaaaa-af877-master-0,127.0.0.21"]);
    let _s = vcsim
        .login_from("127.0.0.21", "ci_user_01", "machineAPIvSphereProvider")
        .await;
    let client = client(vcsim.url(), false);
    let observation = observe(&client).await;
    assert!(observation.vm_map.is_none());
    assert!(observation.vm_names_by_ip.is_empty());
    assert_eq!(client.vm_map_stats().await.received_bytes, 0);
}

/// 2,000 VMs: the first read costs every VM, a steady cycle only the
/// (empty) change set, one rename only that VM. The byte counts are printed
/// for the benchmark figures in the README; the test asserts only their
/// order, since the encoding is vcsim's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_2000_vms_a_steady_cycle_reads_only_what_changed() {
    let vcsim = Vcsim::start(&["-vm-count", "2000"]);
    let admin = vcsim.admin().await;
    let client = client(vcsim.url(), true);

    let t0 = Instant::now();
    observe(&client).await;
    let first_elapsed = t0.elapsed();
    let full = client.vm_map_stats().await;
    assert!(full.vms >= 2000, "{full:?}");
    let (name, ip) = vcsim::bulk_vm(1234);
    assert_eq!(
        client
            .vm_map_entries()
            .await
            .into_iter()
            .find(|(n, _)| *n == name),
        Some((name.clone(), vec![ip])),
        "a bulk VM is in the map with its guest IP"
    );

    let t1 = Instant::now();
    observe(&client).await;
    let steady_elapsed = t1.elapsed();
    let steady = client.vm_map_stats().await;
    let steady_bytes = steady.received_bytes - full.received_bytes;

    vcsim
        .vm_rename(&name, "ci-op-eeeeeeee-renamed-worker-0")
        .await;
    observe(&client).await;
    let one = client.vm_map_stats().await.received_bytes - steady.received_bytes;

    eprintln!(
        "VM map, {} VMs: first read {} bytes in {:?}; steady cycle {} bytes in {:?} (whole observe); one rename {} bytes",
        full.vms, full.received_bytes, first_elapsed, steady_bytes, steady_elapsed, one
    );
    assert!(
        steady_bytes * 100 < full.received_bytes,
        "a steady cycle read {steady_bytes} bytes, the first {}",
        full.received_bytes
    );
    assert!(
        one < steady_bytes + 2_000,
        "one rename read {one} bytes, the empty change set {steady_bytes}"
    );
    assert_eq!(client.vm_map_stats().await.full_reads, 1);
    assert_eq!(
        client.vm_map_entries().await,
        vcsim_vms(&admin).await,
        "the map still equals vcsim's list"
    );
}
