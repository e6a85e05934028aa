//! The vcsim test peer seeds what the reporter's tests need: sessions from
//! chosen client addresses, and VMs with chosen names and guest IPs that can
//! change while vcsim runs. These tests check the seeding against the real
//! simulator and double as examples of the helpers in support/vcsim.rs.
//!
//! vcsim must be built first: `scripts/build-vcsim.sh` (scripts/test.sh does it).

#[path = "support/vcsim.rs"]
mod vcsim;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, FixedOffset};
use vcsim::{ADMIN_AGENT, Vcsim, VmRow, bulk_vm, parse_vms};

const CSI_AGENT: &str = "k8s-csi-useragent-ci-op-abcd1234-x1y2z";
const CI_USER: &str = "ci-user-1@vsphere.local";

/// The model's four VMs, untouched unless a test renames them.
const MODEL_VMS: [&str; 4] = [
    "DC0_C0_RP0_VM0",
    "DC0_C0_RP0_VM1",
    "DC0_H0_VM0",
    "DC0_H0_VM1",
];

fn rfc3339(text: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not an xsd:dateTime vcsim sends: {e}"))
}

fn by_name(rows: Vec<VmRow>) -> BTreeMap<String, Vec<String>> {
    rows.into_iter().collect()
}

fn ips(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_seeded_from_an_address_carry_it_as_their_ip_address() {
    let sim = Vcsim::start(&[
        "-session-from",
        &format!("127.0.0.42,{CI_USER},{CSI_AGENT},2"),
        "-session",
        "ci-user-2@vsphere.local,openshift-install/4.16,1",
    ]);
    let admin = sim.admin().await;
    let from_helper = sim.login_from("127.0.0.77", CI_USER, "govc/0.30").await;

    let details = admin.session_details().await;
    let address_of = |agent: &str| -> Vec<&str> {
        details
            .iter()
            .filter(|d| d.user_agent == agent)
            .map(|d| d.ip_address.as_str())
            .collect()
    };
    assert_eq!(address_of(CSI_AGENT), ["127.0.0.42", "127.0.0.42"]);
    assert_eq!(address_of("openshift-install/4.16"), ["127.0.0.1"]);
    assert_eq!(address_of(ADMIN_AGENT), ["127.0.0.1"]);
    let helper = details
        .iter()
        .find(|d| d.key == from_helper.key())
        .expect("the login_from session is listed");
    assert_eq!(
        (helper.user.as_str(), helper.ip_address.as_str()),
        (CI_USER, "127.0.0.77")
    );

    // Times come on the vCenter's clock: every login precedes CurrentTime.
    let now = rfc3339(&admin.current_time().await);
    for d in &details {
        assert!(!d.extension_session, "{d:?}");
        assert!(rfc3339(&d.login_time) <= now, "{d:?} after {now}");
        assert!(
            rfc3339(&d.last_active_time) >= rfc3339(&d.login_time),
            "{d:?}"
        );
    }
    // The list without details still matches.
    assert_eq!(admin.sessions().await.len(), details.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_flags_seed_vms_with_their_names_and_guest_ips() {
    let sim = Vcsim::start(&[
        // Names a model VM: it keeps the VM and only gets the IP.
        "-vm",
        "DC0_H0_VM1,10.0.0.9",
        "-vm",
        "ci-op-abcd1234-x1y2z-master-0,10.0.0.10",
        "-vm",
        "ci-op-abcd1234-x1y2z-worker-0,10.0.0.11,fd00::11",
        "-vm",
        "ci-op-abcd1234-x1y2z-worker-1,10.0.0.12",
        // More VMs than the model has left: these are created.
        "-vm",
        "ci-op-abcd1234-x1y2z-worker-2,10.0.0.13,10.0.1.13",
        "-vm",
        "ci-op-abcd1234-x1y2z-bootstrap",
    ]);
    let vms = by_name(sim.admin().await.vms().await);

    let expected: BTreeMap<String, Vec<String>> = [
        ("DC0_H0_VM1", ips(&["10.0.0.9"])),
        ("ci-op-abcd1234-x1y2z-bootstrap", ips(&[])),
        ("ci-op-abcd1234-x1y2z-master-0", ips(&["10.0.0.10"])),
        (
            "ci-op-abcd1234-x1y2z-worker-0",
            ips(&["10.0.0.11", "fd00::11"]),
        ),
        ("ci-op-abcd1234-x1y2z-worker-1", ips(&["10.0.0.12"])),
        (
            "ci-op-abcd1234-x1y2z-worker-2",
            ips(&["10.0.0.13", "10.0.1.13"]),
        ),
    ]
    .into_iter()
    .map(|(name, ips)| (name.to_string(), ips))
    .collect();
    assert_eq!(vms, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_changes_through_the_control_api_show_in_the_next_listing() {
    let sim = Vcsim::start(&["-vm", "node-a,10.0.0.1"]);
    let admin = sim.admin().await;

    // Each helper returns once vcsim applied the change: no polling needed.
    sim.vm_add("node-b", &["10.0.0.2", "10.0.0.3"]).await;
    let vms = by_name(admin.vms().await);
    assert_eq!(vms["node-a"], ips(&["10.0.0.1"]));
    assert_eq!(vms["node-b"], ips(&["10.0.0.2", "10.0.0.3"]));

    sim.vm_rename("node-b", "ci-op-abcd1234-x1y2z-worker-0")
        .await;
    sim.vm_set_ips("node-a", &["192.168.5.5"]).await;
    let vms = by_name(admin.vms().await);
    assert!(!vms.contains_key("node-b"), "{vms:?}");
    assert_eq!(
        vms["ci-op-abcd1234-x1y2z-worker-0"],
        ips(&["10.0.0.2", "10.0.0.3"])
    );
    assert_eq!(vms["node-a"], ips(&["192.168.5.5"]));

    sim.vm_set_ips("node-a", &[]).await;
    sim.vm_remove("ci-op-abcd1234-x1y2z-worker-0").await;
    let vms = by_name(admin.vms().await);
    assert_eq!(vms["node-a"], ips(&[]));
    let names: BTreeSet<&str> = vms.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["DC0_C0_RP0_VM1", "DC0_H0_VM0", "DC0_H0_VM1", "node-a"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_refuses_bad_requests_with_a_status_and_a_reason() {
    let sim = Vcsim::start(&["-vm", "node-a,10.0.0.1", "-vm", "node-b"]);
    let http = reqwest::Client::new();
    let cases = [
        ("vm/add?name=node-a", 409, "exists"),
        ("vm/add?name=node-c&ip=10.0.0.300", 400, "not an IP address"),
        ("vm/add", 400, "missing name"),
        ("vm/rename?name=node-a&new=node-b", 409, "exists"),
        ("vm/rename?name=node-a", 400, "missing new"),
        ("vm/rename?name=nowhere&new=x", 404, "no VM named"),
        ("vm/remove?name=nowhere", 404, "no VM named"),
        ("vm/set-ips?name=nowhere&ip=10.0.0.1", 404, "no VM named"),
        ("vm/explode?name=node-a", 404, "unknown endpoint"),
        ("session/refuse-terminate", 400, "missing key"),
        ("session/end-first", 400, "missing key"),
    ];
    for (path, status, reason) in cases {
        let response = http
            .post(sim.url().join(&format!("vcsim-test/{path}")).unwrap())
            .send()
            .await
            .expect("vcsim answers");
        let code = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(
            (code, body.contains(reason), body.trim().lines().count()),
            (status, true, 1),
            "{path}: {body:?}"
        );
    }
    let get = http
        .get(sim.url().join("vcsim-test/vm/add?name=node-x").unwrap())
        .send()
        .await
        .expect("vcsim answers");
    assert_eq!(get.status().as_u16(), 405);
    // Nothing above changed the inventory.
    let vms = by_name(sim.admin().await.vms().await);
    assert_eq!(vms.len(), 4);
    assert_eq!(vms["node-a"], ips(&["10.0.0.1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_count_seeds_two_thousand_bulk_vms_with_distinct_ips() {
    let started = Instant::now();
    let sim = Vcsim::start(&["-vm-count", "2000"]);
    let start_time = started.elapsed();

    let admin = sim.admin().await;
    let listed = Instant::now();
    let vms = admin.vms().await;
    let list_time = listed.elapsed();
    eprintln!("vcsim -vm-count 2000: started in {start_time:?}, vms() took {list_time:?}");

    let bulk: BTreeMap<String, Vec<String>> = vms
        .into_iter()
        .filter(|(name, _)| !MODEL_VMS.contains(&name.as_str()))
        .collect();
    let expected: BTreeMap<String, Vec<String>> = (0..2000)
        .map(bulk_vm)
        .map(|(name, ip)| (name, vec![ip]))
        .collect();
    assert_eq!(bulk.len(), 2000);
    assert!(bulk == expected, "bulk VMs differ from bulk_vm()");
    assert_eq!(bulk_vm(0), ("bulk-vm-00000".into(), "10.0.0.1".into()));
    assert_eq!(bulk_vm(1999), ("bulk-vm-01999".into(), "10.0.7.208".into()));
}

/// vcsim sends neither `ipConfig` nor `dnsConfig`, a real vCenter does: the
/// listing must not take DNS servers for guest addresses.
#[test]
fn the_vm_listing_reads_only_the_guests_own_addresses() {
    let page = concat!(
        r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-1</obj>"#,
        r#"<propSet><name>guest.ipAddress</name><val xsi:type="xsd:string">10.0.0.5</val></propSet>"#,
        r#"<propSet><name>guest.net</name><val xsi:type="ArrayOfGuestNicInfo"><GuestNicInfo>"#,
        "<network>ci-vlan-1</network><ipAddress>10.0.0.5</ipAddress><ipAddress>fe80::1</ipAddress>",
        "<macAddress>00:50:56:00:00:01</macAddress><connected>true</connected><deviceConfigId>4000</deviceConfigId>",
        "<dnsConfig><dhcp>false</dhcp><ipAddress>10.0.0.53</ipAddress></dnsConfig>",
        "<ipConfig><ipAddress><ipAddress>10.0.0.5</ipAddress><prefixLength>24</prefixLength></ipAddress></ipConfig>",
        "</GuestNicInfo></val></propSet>",
        r#"<propSet><name>name</name><val xsi:type="xsd:string">a&amp;b</val></propSet></objects>"#,
        r#"<objects><obj type="VirtualMachine">vm-2</obj><propSet><name>name</name><val xsi:type="xsd:string">empty</val></propSet>"#,
        r#"<propSet><name>guest.net</name><val xsi:type="ArrayOfGuestNicInfo"/></propSet></objects>"#,
        "</returnval></RetrievePropertiesExResponse>"
    );
    assert_eq!(
        parse_vms(page),
        [
            ("a&b".to_string(), ips(&["10.0.0.5", "fe80::1"])),
            ("empty".to_string(), ips(&[])),
        ]
    );
}

#[test]
fn a_missing_vcsim_binary_fails_with_how_to_build_it() {
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers/no-such-vcsim");
    let panic = std::panic::catch_unwind(|| Vcsim::start_binary(&missing, &[]))
        .err()
        .expect("starting a missing binary panics");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("scripts/build-vcsim.sh"), "{message}");
}
