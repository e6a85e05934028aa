//! How long parsing a large `sessionList` takes: 2,000 sessions in one
//! `RetrievePropertiesEx` response (~950 KB), the size of a busy CI vCenter.
//! The document is generated in vcsim's shape (`XMLSchema-instance:type`
//! prefixes, default `urn:vim25` namespace).
//!
//! Run: `cargo bench --bench parse_sessions`.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vsphere_ci_session_metrics::vcenter::soap::{Reply, parse_session_page};

const SESSIONS: usize = 2000;

fn session_list_response(sessions: usize) -> String {
    let mut xml = String::from(concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?>"#,
        "\n",
        r#"<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" "#,
        r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
        r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#,
        r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects>"#,
        r#"<obj type="SessionManager">SessionManager</obj><propSet><name>sessionList</name>"#,
        r#"<val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ArrayOfUserSession">"#,
    ));
    for i in 0..sessions {
        let user = if i % 2 == 0 {
            format!("ci-user-{}@vsphere.local", i % 4)
        } else {
            format!(r"VSPHERE.LOCAL\ci-user-{}", i % 4)
        };
        write!(
            xml,
            concat!(
                "<UserSession><key>{:08x}-5f3b-4c1d-9e8a-{:012x}</key>",
                "<userName>{user}</userName><fullName>{user}</fullName>",
                "<loginTime>2026-11-25T09:52:08.920654973Z</loginTime>",
                "<lastActiveTime>2026-11-25T09:58:41.120659094Z</lastActiveTime>",
                "<locale>en_US</locale><messageLocale>en_US</messageLocale>",
                "<extensionSession>false</extensionSession><ipAddress>10.131.{}.{}</ipAddress>",
                "<userAgent>openshift-install/4.16.{:04}</userAgent>",
                "<callCount>{}</callCount></UserSession>"
            ),
            i,
            i * 7919,
            i / 250,
            i % 250,
            i,
            i * 13,
            user = user,
        )
        .expect("writing to a String cannot fail");
    }
    xml.push_str(
        "</val></propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>",
    );
    xml
}

fn bench(c: &mut Criterion) {
    let xml = session_list_response(SESSIONS);
    match parse_session_page(xml.as_bytes(), false) {
        Ok(Reply::Ok(page)) => assert_eq!(page.sessions.len(), SESSIONS),
        other => panic!("the generated document parses: {other:?}"),
    }
    let mut group = c.benchmark_group("parse_sessions");
    group.throughput(Throughput::Bytes(xml.len() as u64));
    group.bench_function(
        format!("{SESSIONS} sessions, {} KB", xml.len() / 1000),
        |b| b.iter(|| parse_session_page(black_box(xml.as_bytes()), false)),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
