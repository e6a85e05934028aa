//! Guest IP -> VM name, for every VM of a vCenter, kept current from
//! `WaitForUpdatesEx` answers ([`super::updates`]).
//!
//! In-cluster components of a CI cluster (CSI driver, machine API, cloud
//! provider) log in from their node, a VM named `<infraID>-master-0`,
//! `<infraID>-worker-...`: the session's `ipAddress` is one of that VM's guest
//! IPs. Several jobs can share a VLAN, so only a VM's own address ties a
//! session to a job. The first read after a login costs every VM; a steady
//! cycle costs only what changed since the version the map holds.
//!
//! Bounded: at most [`MAX_VMS`] VMs and
//! [`super::updates::MAX_IPS_PER_CHANGE`] addresses per property are kept;
//! names are cut to [`MAX_NAME_BYTES`]. VMs beyond the bound are counted, not
//! stored.

use std::collections::HashMap;

use super::updates::{Change, ObjectUpdate, UpdateKind, UpdatePage};

/// VMs kept per vCenter. Large vCenters hold about 10,000; this leaves room
/// while bounding memory to a few MB.
pub const MAX_VMS: usize = 100_000;

/// vSphere limits VM names to 80 characters; a longer one is cut (at a
/// character boundary) so a hostile value cannot grow the map.
pub const MAX_NAME_BYTES: usize = 255;

/// One VM as the map keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Vm {
    name: String,
    /// `guest.ipAddress`: the primary address VMware Tools reports.
    guest_ip: Option<String>,
    /// Every `guest.net[].ipAddress`.
    nic_ips: Vec<String>,
}

impl Vm {
    /// Distinct addresses of the VM.
    fn ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = self
            .guest_ip
            .iter()
            .chain(self.nic_ips.iter())
            .cloned()
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }
}

/// Counters of one vCenter's VM map, exported as self-metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMapStats {
    /// VMs in the map now.
    pub vms: usize,
    /// Distinct guest addresses in the map now.
    pub addresses: usize,
    /// Response bytes of every `WaitForUpdatesEx` since start.
    pub received_bytes: u64,
    /// Reads from scratch (after start, a re-login or an error).
    pub full_reads: u64,
    /// VMs not stored because the map was full.
    pub dropped_vms: u64,
}

/// The map of one vCenter and the update version it is current to.
#[derive(Debug, Default)]
pub struct VmMap {
    /// By managed object id (`vm-123`), which survives renames.
    vms: HashMap<String, Vm>,
    /// Guest address -> ids of the VMs reporting it (usually one).
    by_ip: HashMap<String, Vec<String>>,
    /// The `WaitForUpdatesEx` version the map reflects; `None` before the
    /// first page.
    version: Option<String>,
    stats: VmMapStats,
}

impl VmMap {
    /// The version to ask updates from.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn stats(&self) -> VmMapStats {
        VmMapStats {
            vms: self.vms.len(),
            addresses: self.by_ip.len(),
            ..self.stats
        }
    }

    /// Forget everything: the next read starts from scratch.
    pub fn reset(&mut self) {
        self.vms.clear();
        self.by_ip.clear();
        self.version = None;
    }

    /// Count the response bytes of one read.
    pub fn count_bytes(&mut self, bytes: usize) {
        self.stats.received_bytes += bytes as u64;
    }

    /// Count a read from scratch.
    pub fn count_full_read(&mut self) {
        self.stats.full_reads += 1;
    }

    /// Apply one answer: every object update, then its version.
    pub fn apply(&mut self, page: UpdatePage) {
        for update in page.objects {
            self.apply_object(update);
        }
        if let Some(version) = page.version {
            self.version = Some(version);
        }
    }

    fn apply_object(&mut self, update: ObjectUpdate) {
        let ObjectUpdate { kind, obj, changes } = update;
        let before = self.vms.get(&obj).map(Vm::ips).unwrap_or_default();
        if kind == UpdateKind::Leave {
            self.vms.remove(&obj);
            self.reindex(&obj, &before, &[]);
            return;
        }
        if !self.vms.contains_key(&obj) && self.vms.len() >= MAX_VMS {
            self.stats.dropped_vms += 1;
            return;
        }
        let vm = self.vms.entry(obj.clone()).or_default();
        for change in changes {
            match change {
                Change::Name(name) => vm.name = cut(name.unwrap_or_default()),
                Change::GuestIp(ip) => vm.guest_ip = ip,
                Change::GuestNet(ips) => vm.nic_ips = ips,
            }
        }
        let after = vm.ips();
        self.reindex(&obj, &before, &after);
    }

    /// Move `obj` from the addresses it had to the ones it has.
    fn reindex(&mut self, obj: &str, before: &[String], after: &[String]) {
        for ip in before.iter().filter(|ip| !after.contains(ip)) {
            if let Some(ids) = self.by_ip.get_mut(ip) {
                ids.retain(|id| id != obj);
                if ids.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        for ip in after.iter().filter(|ip| !before.contains(ip)) {
            self.by_ip
                .entry(ip.clone())
                .or_default()
                .push(obj.to_string());
        }
    }

    /// Names of the VMs reporting `ip` as a guest address, sorted.
    pub fn names_for(&self, ip: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_ip
            .get(ip)
            .into_iter()
            .flatten()
            .filter_map(|id| self.vms.get(id))
            .map(|vm| vm.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every (name, addresses) pair, sorted by name: for tests and reports.
    pub fn entries(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .vms
            .values()
            .map(|vm| (vm.name.clone(), vm.ips()))
            .collect();
        out.sort();
        out
    }
}

fn cut(mut name: String) -> String {
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enter(obj: &str, name: &str, ips: &[&str]) -> ObjectUpdate {
        ObjectUpdate {
            kind: UpdateKind::Enter,
            obj: obj.into(),
            changes: vec![
                Change::Name(Some(name.into())),
                Change::GuestIp(ips.first().map(|s| s.to_string())),
                Change::GuestNet(ips.iter().map(|s| s.to_string()).collect()),
            ],
        }
    }

    fn page(version: &str, objects: Vec<ObjectUpdate>) -> UpdatePage {
        UpdatePage {
            version: Some(version.into()),
            truncated: false,
            objects,
        }
    }

    #[test]
    fn vms_are_found_by_any_guest_address_and_follow_renames_and_removals() {
        let mut map = VmMap::default();
        map.apply(page(
            "1",
            vec![
                enter("vm-1", "ci-op-a-master-0", &["10.0.0.1", "fe80::1"]),
                enter("vm-2", "ci-op-b-worker-0", &["10.0.0.2"]),
            ],
        ));
        assert_eq!(map.version(), Some("1"));
        assert_eq!(map.names_for("fe80::1"), ["ci-op-a-master-0"]);
        assert_eq!(map.names_for("10.0.0.2"), ["ci-op-b-worker-0"]);

        map.apply(page(
            "2",
            vec![
                ObjectUpdate {
                    kind: UpdateKind::Modify,
                    obj: "vm-1".into(),
                    changes: vec![Change::Name(Some("renamed".into()))],
                },
                ObjectUpdate {
                    kind: UpdateKind::Modify,
                    obj: "vm-2".into(),
                    changes: vec![
                        Change::GuestIp(Some("10.0.0.3".into())),
                        Change::GuestNet(vec!["10.0.0.3".into()]),
                    ],
                },
            ],
        ));
        assert_eq!(map.names_for("10.0.0.1"), ["renamed"]);
        assert!(map.names_for("10.0.0.2").is_empty(), "old address dropped");
        assert_eq!(map.names_for("10.0.0.3"), ["ci-op-b-worker-0"]);

        map.apply(page(
            "3",
            vec![ObjectUpdate {
                kind: UpdateKind::Leave,
                obj: "vm-1".into(),
                changes: vec![],
            }],
        ));
        assert!(map.names_for("10.0.0.1").is_empty());
        assert_eq!(map.stats().vms, 1);
        assert_eq!(map.stats().addresses, 1);
    }

    #[test]
    fn an_address_two_vms_report_names_both() {
        let mut map = VmMap::default();
        map.apply(page(
            "1",
            vec![
                enter("vm-1", "b-vm", &["10.0.0.9"]),
                enter("vm-2", "a-vm", &["10.0.0.9"]),
            ],
        ));
        assert_eq!(map.names_for("10.0.0.9"), ["a-vm", "b-vm"]);
    }

    #[test]
    fn an_empty_answer_keeps_the_version_and_reset_forgets_everything() {
        let mut map = VmMap::default();
        map.apply(page("5", vec![enter("vm-1", "x", &["10.0.0.1"])]));
        map.apply(UpdatePage::default());
        assert_eq!(map.version(), Some("5"));
        map.reset();
        assert_eq!(map.version(), None);
        assert!(map.names_for("10.0.0.1").is_empty());
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let mut map = VmMap::default();
        let long = "é".repeat(200);
        map.apply(page("1", vec![enter("vm-1", &long, &["10.0.0.1"])]));
        let name = &map.names_for("10.0.0.1")[0];
        assert!(name.len() <= MAX_NAME_BYTES && name.chars().all(|c| c == 'é'));
    }
}
