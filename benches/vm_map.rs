//! What the VM map costs the reporter's CPU with 2,000 VMs: a full read
//! (every VM entering, as after a start or a re-login), a steady cycle (an
//! empty change set) and one renamed VM, each parsed and applied. The
//! answer is generated in a real vCenter's shape: `guest.net` with MAC,
//! network, `ipConfig` and an IPv6 address per NIC, as the filter receives
//! it. The bytes on the wire are measured against vcsim in tests/vm_map.rs.
//!
//! Run: `cargo bench --bench vm_map`.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vsphere_ci_session_metrics::vcenter::soap::Reply;
use vsphere_ci_session_metrics::vcenter::updates::{UpdatePage, parse_update_page};
use vsphere_ci_session_metrics::vcenter::vm_map::VmMap;

const VMS: usize = 2000;

fn envelope(body: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" "#,
            r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#,
            r#"<WaitForUpdatesExResponse xmlns="urn:vim25">{}</WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"#
        ),
        body
    )
}

/// Every VM entering: name, guest.ipAddress and a one-NIC guest.net.
fn full_read(vms: usize) -> String {
    let mut body = String::from(
        r#"<returnval><version>1</version><filterSet><filter type="PropertyFilter">session[52b1]52e0</filter>"#,
    );
    for i in 0..vms {
        let ip = format!("10.93.{}.{}", i / 250, i % 250 + 1);
        write!(
            body,
            concat!(
                r#"<objectSet><kind>enter</kind><obj type="VirtualMachine">vm-{i}</obj>"#,
                r#"<changeSet><name>guest.ipAddress</name><op>assign</op><val xsi:type="xsd:string">{ip}</val></changeSet>"#,
                r#"<changeSet><name>guest.net</name><op>assign</op><val xsi:type="ArrayOfGuestNicInfo"><GuestNicInfo xsi:type="GuestNicInfo">"#,
                "<network>ci-vlan-{vlan}</network><ipAddress>{ip}</ipAddress><ipAddress>fe80::250:56ff:fe8f:{i:x}</ipAddress>",
                "<macAddress>00:50:56:8f:{hi:02x}:{lo:02x}</macAddress><connected>true</connected><deviceConfigId>4000</deviceConfigId>",
                "<ipConfig><ipAddress><ipAddress>{ip}</ipAddress><prefixLength>23</prefixLength><state>preferred</state></ipAddress>",
                "<ipAddress><ipAddress>fe80::250:56ff:fe8f:{i:x}</ipAddress><prefixLength>64</prefixLength><state>unknown</state></ipAddress></ipConfig>",
                "</GuestNicInfo></val></changeSet>",
                r#"<changeSet><name>name</name><op>assign</op><val xsi:type="xsd:string">ci-op-{job:08}-af877-worker-0-{i:05}</val></changeSet>"#,
                "</objectSet>"
            ),
            i = i,
            ip = ip,
            vlan = i % 8,
            hi = i / 256,
            lo = i % 256,
            job = i / 6,
        )
        .expect("writing to a String cannot fail");
    }
    body.push_str("</filterSet></returnval>");
    envelope(&body)
}

fn one_rename() -> String {
    envelope(concat!(
        r#"<returnval><version>2</version><filterSet><filter type="PropertyFilter">session[52b1]52e0</filter>"#,
        r#"<objectSet><kind>modify</kind><obj type="VirtualMachine">vm-7</obj><changeSet><name>name</name><op>assign</op>"#,
        r#"<val xsi:type="xsd:string">renamed-7</val></changeSet></objectSet></filterSet></returnval>"#
    ))
}

fn page(xml: &str) -> UpdatePage {
    match parse_update_page(xml.as_bytes()) {
        Ok(Reply::Ok(page)) => page,
        other => panic!("the generated answer parses: {other:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let full = full_read(VMS);
    let steady = envelope("");
    let rename = one_rename();
    eprintln!(
        "answers: full read {} bytes, steady {} bytes, one rename {} bytes",
        full.len(),
        steady.len(),
        rename.len()
    );

    let mut group = c.benchmark_group("vm_map");
    group.throughput(Throughput::Bytes(full.len() as u64));
    group.bench_function("full read of 2000 VMs: parse + apply", |b| {
        b.iter(|| {
            let mut map = VmMap::default();
            map.apply(page(black_box(&full)));
            map
        })
    });
    group.finish();

    let mut map = VmMap::default();
    map.apply(page(&full));
    assert_eq!(map.stats().vms, VMS);
    c.bench_function("steady cycle (no change) on 2000 VMs: parse + apply", |b| {
        b.iter(|| map.apply(page(black_box(&steady))))
    });
    c.bench_function("one renamed VM of 2000: parse + apply", |b| {
        b.iter(|| map.apply(page(black_box(&rename))))
    });
    c.bench_function("look up 2000 session addresses", |b| {
        b.iter(|| {
            (0..VMS)
                .filter(|i| {
                    !map.names_for(&format!("10.93.{}.{}", i / 250, i % 250 + 1))
                        .is_empty()
                })
                .count()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
