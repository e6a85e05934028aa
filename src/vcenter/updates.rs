//! The answer of `PropertyCollector.WaitForUpdatesEx` for the VM filter: an
//! `UpdateSet` of object updates (`enter`, `modify`, `leave`), each a list
//! of property changes, read with the same streaming parser as every other
//! vim25 answer ([`super::soap`]).
//!
//! Only what the VM map keeps is taken: the VM's reference, its `name`, its
//! `guest.ipAddress`, and the `ipAddress` list of every `guest.net[]` NIC
//! (the rest of a NIC, MAC address, network, DNS settings, is skipped as it
//! streams past). The number of addresses kept per change is capped, so a
//! VM reporting thousands of addresses cannot grow the map.
//!
//! Shape (vim25 `UpdateSet`, `PropertyFilterUpdate`, `ObjectUpdate`,
//! `PropertyChange`):
//! <https://developer.broadcom.com/xapis/vsphere-web-services-api/latest/vmodl.query.PropertyCollector.UpdateSet.html>

use super::soap::{self, Fault, ParseError, Parser, Reply, Step, body_path, matches_fault};

/// The response element of `WaitForUpdatesEx`.
const RESPONSE: &str = "WaitForUpdatesExResponse";

/// Addresses kept per property change; a VM has a handful in practice.
pub const MAX_IPS_PER_CHANGE: usize = 32;

/// One `WaitForUpdatesEx` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdatePage {
    /// The version to ask from next time; `None` when nothing changed (the
    /// method returned null) and the previous version still holds.
    pub version: Option<String>,
    /// More updates wait: ask again at once with `version`.
    pub truncated: bool,
    pub objects: Vec<ObjectUpdate>,
}

/// What happened to one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUpdate {
    pub kind: UpdateKind,
    /// The VM's managed object id (`vm-123`): stable across renames.
    pub obj: String,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// The VM entered the view (first read, or created or moved in).
    Enter,
    Modify,
    /// The VM left the view (destroyed or moved out).
    Leave,
}

/// A new value of one watched property; `None` / empty when the property
/// was removed or is unset (a powered-off VM has no guest IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Name(Option<String>),
    GuestIp(Option<String>),
    /// Every `guest.net[].ipAddress`, in order.
    GuestNet(Vec<String>),
}

/// A property change being read.
#[derive(Default)]
struct PendingChange {
    name: String,
    op: String,
    /// A `val` element was present (absent: the property is unset).
    has_val: bool,
    text: String,
    ips: Vec<String>,
}

impl PendingChange {
    fn finish(self) -> Option<Change> {
        let removed = !self.has_val || self.op == "remove" || self.op == "indirectRemove";
        let text = (!removed)
            .then(|| self.text.trim().to_string())
            .filter(|t| !t.is_empty());
        match self.name.as_str() {
            "name" => Some(Change::Name(text)),
            "guest.ipAddress" => Some(Change::GuestIp(text)),
            "guest.net" => Some(Change::GuestNet(if removed {
                Vec::new()
            } else {
                self.ips
            })),
            _ => None,
        }
    }
}

/// Parses a `WaitForUpdatesEx` response. An empty response (no
/// `returnval`) is a page without a version: nothing changed.
pub fn parse_update_page(xml: &[u8]) -> Result<Reply<UpdatePage>, ParseError> {
    let mut parser = Parser::new(xml);
    let mut page = UpdatePage::default();
    let mut response_seen = false;
    let mut fault_seen = false;
    let mut object: Option<ObjectUpdate> = None;
    let mut change: Option<PendingChange> = None;

    while let Some(step) = parser.next()? {
        let Some(body) = body_path(&parser.path) else {
            continue;
        };
        if matches_fault(body, &[]) {
            fault_seen = true;
        }
        let Some(rel) = soap::response_path(body, RESPONSE) else {
            continue;
        };
        let text = parser.text.as_str();
        match (step, rel.as_slice()) {
            (Step::Open { .. }, []) => response_seen = true,
            (Step::Close, ["returnval", "version"]) => {
                page.version = Some(text.trim().to_string());
            }
            (Step::Close, ["returnval", "truncated"]) => page.truncated = text.trim() == "true",
            (Step::Open { .. }, ["returnval", "filterSet", "objectSet"]) => {
                object = Some(ObjectUpdate {
                    kind: UpdateKind::Modify,
                    obj: String::new(),
                    changes: Vec::new(),
                });
            }
            (Step::Close, ["returnval", "filterSet", "objectSet"]) => {
                if let Some(o) = object.take().filter(|o| !o.obj.is_empty()) {
                    page.objects.push(o);
                }
            }
            (Step::Close, ["returnval", "filterSet", "objectSet", "kind"]) => {
                if let Some(o) = object.as_mut() {
                    o.kind = match text.trim() {
                        "enter" => UpdateKind::Enter,
                        "leave" => UpdateKind::Leave,
                        "modify" => UpdateKind::Modify,
                        other => {
                            return Err(parser.error(format!(
                                "unknown ObjectUpdate kind {:?}",
                                truncate(other)
                            )));
                        }
                    };
                }
            }
            (Step::Close, ["returnval", "filterSet", "objectSet", "obj"]) => {
                if let Some(o) = object.as_mut() {
                    o.obj = text.trim().to_string();
                }
            }
            (Step::Open { .. }, ["returnval", "filterSet", "objectSet", "changeSet"]) => {
                change = Some(PendingChange::default());
            }
            (Step::Close, ["returnval", "filterSet", "objectSet", "changeSet"]) => {
                if let (Some(o), Some(c)) =
                    (object.as_mut(), change.take().and_then(|c| c.finish()))
                {
                    o.changes.push(c);
                }
            }
            (Step::Close, [.., "changeSet", field @ ("name" | "op")]) => {
                if let Some(c) = change.as_mut() {
                    let value = text.trim().to_string();
                    if *field == "name" {
                        c.name = value;
                    } else {
                        c.op = value;
                    }
                }
            }
            (Step::Open { .. }, [.., "changeSet", "val"]) => {
                if let Some(c) = change.as_mut() {
                    c.has_val = true;
                }
            }
            (Step::Close, [.., "changeSet", "val"]) => {
                if let Some(c) = change.as_mut() {
                    c.text = text.to_string();
                }
            }
            (Step::Close, [.., "changeSet", "val", "GuestNicInfo", "ipAddress"]) => {
                if let Some(c) = change.as_mut()
                    && c.ips.len() < MAX_IPS_PER_CHANGE
                {
                    let ip = text.trim();
                    if !ip.is_empty() {
                        c.ips.push(ip.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if !parser.saw_envelope {
        return Err(ParseError("the document is not a SOAP 1.1 envelope".into()));
    }
    if fault_seen {
        // Rare on a 200; the general parser reads the fault's details.
        return Ok(Reply::Fault(soap::parse_fault(xml).unwrap_or(Fault {
            fault: "Fault".into(),
            message: String::new(),
        })));
    }
    if !response_seen {
        return Err(ParseError(format!(
            "the SOAP body holds neither {RESPONSE} nor a fault"
        )));
    }
    Ok(Reply::Ok(page))
}

/// At most 64 characters of a value quoted in an error.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/soap/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path} is readable: {e}"))
    }

    fn page(xml: &[u8]) -> UpdatePage {
        match parse_update_page(xml) {
            Ok(Reply::Ok(page)) => page,
            other => panic!("expected an update page, got {other:?}"),
        }
    }

    #[test]
    fn a_first_read_enters_every_vm_with_its_name_and_guest_addresses() {
        let page = page(&fixture("wait_for_updates_enter.xml"));
        assert_eq!(page.version.as_deref(), Some("1"));
        assert!(page.truncated);
        assert_eq!(
            page.objects,
            vec![
                ObjectUpdate {
                    kind: UpdateKind::Enter,
                    obj: "vm-41".into(),
                    changes: vec![
                        Change::GuestIp(Some("10.93.60.11".into())),
                        Change::GuestNet(vec![
                            "10.93.60.11".into(),
                            "fe80::250:56ff:fe8f:1".into()
                        ]),
                        Change::Name(Some("ci-op-aaaaaaaa-af877-master-0".into())),
                    ],
                },
                ObjectUpdate {
                    kind: UpdateKind::Enter,
                    obj: "vm-42".into(),
                    changes: vec![
                        Change::GuestIp(None),
                        Change::GuestNet(vec![]),
                        Change::Name(Some("template-rhcos".into())),
                    ],
                },
            ]
        );
    }

    #[test]
    fn a_rename_and_a_removal_are_a_modify_and_a_leave() {
        let page = page(&fixture("wait_for_updates_modify.xml"));
        assert_eq!(page.version.as_deref(), Some("7"));
        assert!(!page.truncated);
        assert_eq!(
            page.objects,
            vec![
                ObjectUpdate {
                    kind: UpdateKind::Modify,
                    obj: "vm-41".into(),
                    changes: vec![Change::Name(Some("renamed-0".into()))],
                },
                ObjectUpdate {
                    kind: UpdateKind::Leave,
                    obj: "vm-42".into(),
                    changes: vec![],
                },
            ]
        );
    }

    #[test]
    fn no_returnval_means_nothing_changed() {
        let xml = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><WaitForUpdatesExResponse xmlns="urn:vim25"></WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"#;
        assert_eq!(page(xml), UpdatePage::default());
    }

    #[test]
    fn addresses_per_change_are_capped() {
        let ips: String = (0..100)
            .map(|i| format!("<ipAddress>10.0.0.{i}</ipAddress>"))
            .collect();
        let xml = format!(
            concat!(
                r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>"#,
                r#"<WaitForUpdatesExResponse xmlns="urn:vim25"><returnval><version>2</version><filterSet><filter type="PropertyFilter">f</filter>"#,
                r#"<objectSet><kind>modify</kind><obj type="VirtualMachine">vm-1</obj><changeSet><name>guest.net</name><op>assign</op>"#,
                r#"<val><GuestNicInfo>{}</GuestNicInfo></val></changeSet></objectSet></filterSet></returnval>"#,
                "</WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"
            ),
            ips
        );
        let page = page(xml.as_bytes());
        match &page.objects[0].changes[0] {
            Change::GuestNet(ips) => assert_eq!(ips.len(), MAX_IPS_PER_CHANGE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_truncation_is_an_error_and_faults_are_reported() {
        let xml = fixture("wait_for_updates_enter.xml");
        let trimmed = xml.trim_ascii_end().len();
        for end in 0..trimmed {
            assert!(
                parse_update_page(&xml[..end]).is_err(),
                "cut at byte {end} of {trimmed} parsed"
            );
        }
        let fault = fixture("not_authenticated_fault.xml");
        match parse_update_page(&fault) {
            Ok(Reply::Fault(f)) => assert!(f.is_not_authenticated(), "{f:?}"),
            other => panic!("expected a fault, got {other:?}"),
        }
        assert!(parse_update_page(b"<html>busy</html>").is_err());
    }
}
