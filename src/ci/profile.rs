//! The user and server fields of the cluster profile files kept in a job's
//! ci-op secret, and nothing else.
//!
//! These files hold vCenter passwords. Each JSON file is deserialized into a
//! struct that declares only the user and server fields (serde skips the
//! rest, passwords included), shell files are scanned line by line for two
//! variables, and errors report the file and serde's position, never content.
//! Formats:
//! - `metadata.json`, written by openshift-install when the install ends
//!   (installer `pkg/types/vsphere/metadata.go`): `{"vsphere": {"vCenter",
//!   "username", "VCenters": [{"vCenter", "username"}]}}`.
//! - `platform.json`, the platform section CI steps read:
//!   `{"vcenters": [{"server", "user"}]}`.
//! - `govc.sh` / `vsphere_context.sh`: `export GOVC_USERNAME=...` and
//!   `export GOVC_URL=...`, quoted or not; GOVC_URL may be a host or a URL.

use std::collections::BTreeSet;

use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::CiIdentity;
use crate::correlate::normalize_username;
use crate::kube_client::json_error_position;

/// Secret keys tried in order; the first that yields a user wins.
pub const PROFILE_FILES: [&str; 4] = [
    "metadata.json",
    "platform.json",
    "govc.sh",
    "vsphere_context.sh",
];

/// Why one file gave no user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: &'static str,
    /// Safe to log: a category and a position, or what is missing.
    pub message: String,
}

/// The users found in a CI secret and the file they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileUsers {
    /// One of [`PROFILE_FILES`].
    pub file: &'static str,
    /// Never empty.
    pub identities: Vec<CiIdentity>,
}

impl ProfileUsers {
    /// Whether the answer is the install's own record (`metadata.json`,
    /// written when the install ends, with every vCenter). Earlier files
    /// (lease files) may name fewer vCenters than the cluster ends up using.
    pub fn is_final(&self) -> bool {
        self.file == FINAL_FILE
    }
}

/// The file whose answer does not change while the job runs.
pub const FINAL_FILE: &str = "metadata.json";

/// Identities from the first file of [`PROFILE_FILES`] that yields a user.
/// `get` returns a file's bytes by key. `Ok(empty)` when no file is present
/// or none names a user; `Err` lists the files that failed to parse when
/// nothing yielded a user.
pub fn identities_from_files<'a>(
    get: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Vec<CiIdentity>, Vec<FileError>> {
    users_from_files(get).map(|found| found.map(|u| u.identities).unwrap_or_default())
}

/// Like [`identities_from_files`], also telling which file answered:
/// `Ok(None)` when no file is present or none names a user.
pub fn users_from_files<'a>(
    get: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Option<ProfileUsers>, Vec<FileError>> {
    let mut errors = Vec::new();
    for file in PROFILE_FILES {
        let Some(bytes) = get(file) else { continue };
        let parsed = match file {
            "metadata.json" => parse_metadata_json(bytes),
            "platform.json" => parse_platform_json(bytes),
            _ => Ok(parse_govc_sh(bytes)),
        };
        match parsed {
            Ok(identities) if !identities.is_empty() => {
                return Ok(Some(ProfileUsers { file, identities }));
            }
            Ok(_) => {}
            Err(message) => errors.push(FileError { file, message }),
        }
    }
    if errors.is_empty() {
        Ok(None)
    } else {
        Err(errors)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MetadataJson {
    vsphere: Option<MetadataVsphere>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MetadataVsphere {
    #[serde(rename = "vCenter")]
    vcenter: Option<String>,
    username: Option<String>,
    #[serde(rename = "VCenters")]
    vcenters: Option<Vec<MetadataVcenter>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MetadataVcenter {
    #[serde(rename = "vCenter")]
    vcenter: Option<String>,
    username: Option<String>,
}

/// `metadata.json`: the single `vCenter`/`username` pair and every
/// `VCenters[]` entry.
pub fn parse_metadata_json(bytes: &[u8]) -> Result<Vec<CiIdentity>, String> {
    let doc: MetadataJson = serde_json::from_slice(bytes).map_err(|e| json_error_position(&e))?;
    let Some(vs) = doc.vsphere else {
        return Ok(Vec::new());
    };
    let mut pairs = vec![(vs.vcenter, vs.username)];
    pairs.extend(
        vs.vcenters
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.vcenter, v.username)),
    );
    Ok(collect(pairs))
}

/// The top-level `infraID` of `metadata.json`, and nothing else.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MetadataInfraId {
    #[serde(rename = "infraID")]
    infra_id: Option<String>,
}

/// `metadata.json`'s `infraID` (`ci-op-110jib7j-af877-4p9dw`): the prefix of
/// the cluster's VM names and the CSI driver's cluster ID. `None` when the
/// file is not JSON or has none.
pub fn parse_infra_id(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<MetadataInfraId>(bytes)
        .ok()?
        .infra_id
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PlatformJson {
    vcenters: Option<Vec<PlatformVcenter>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PlatformVcenter {
    server: Option<String>,
    user: Option<String>,
}

/// `platform.json`: every `vcenters[]` entry.
pub fn parse_platform_json(bytes: &[u8]) -> Result<Vec<CiIdentity>, String> {
    let doc: PlatformJson = serde_json::from_slice(bytes).map_err(|e| json_error_position(&e))?;
    Ok(collect(
        doc.vcenters
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.server, v.user)),
    ))
}

/// `govc.sh` / `vsphere_context.sh`: `GOVC_USERNAME` and `GOVC_URL`. A user
/// given only in GOVC_URL's user info is used when GOVC_USERNAME is absent.
/// Lines other than these two are not looked at (GOVC_PASSWORD is there).
pub fn parse_govc_sh(bytes: &[u8]) -> Vec<CiIdentity> {
    let text = String::from_utf8_lossy(bytes);
    let mut username = None;
    let mut url = None;
    for line in text.lines() {
        let line = line.trim();
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        if let Some(value) = line.strip_prefix("GOVC_USERNAME=") {
            username = Some(shell_value(value));
        } else if let Some(value) = line.strip_prefix("GOVC_URL=") {
            url = Some(shell_value(value));
        }
    }
    let Some(url) = url else { return Vec::new() };
    let username = username
        .filter(|u| !u.is_empty())
        .or_else(|| url_user(&url));
    collect([(Some(url), username)])
}

/// A shell assignment's value: single or double quotes removed, or an
/// unquoted word up to whitespace or a comment.
fn shell_value(raw: &str) -> String {
    let raw = raw.trim();
    for quote in ['"', '\''] {
        if let Some(rest) = raw.strip_prefix(quote) {
            return rest.split(quote).next().unwrap_or_default().to_string();
        }
    }
    raw.split(|c: char| c.is_whitespace() || c == ';' || c == '#')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `raw` as a URL: as is when it has a scheme, else as `https://raw`.
fn parse_server(raw: &str) -> Option<url::Url> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    if raw.contains("://") {
        url::Url::parse(raw).ok()
    } else {
        url::Url::parse(&format!("https://{raw}")).ok()
    }
}

/// The host of a vCenter given as a host, `host:port` or URL (with user
/// info, port or path): lower case, without scheme, user info, port, path
/// and trailing dot (`VC1.Example.com.` and `https://u@vc1.example.com:443/sdk`
/// are both `vc1.example.com`). The one normalisation used for vCenter
/// labels everywhere, so sessions and CI users meet on the same value.
/// Parsing is `url`'s (WHATWG host parsing: IDNA to punycode, IPv6 kept in
/// brackets). Empty when `raw` has no host or does not parse.
pub fn normalize_host(raw: &str) -> String {
    let Some(url) = parse_server(raw) else {
        return String::new();
    };
    url.host_str()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// The user of a URL's user info, percent-decoded (`other%40vsphere.local`).
fn url_user(server: &str) -> Option<String> {
    let url = parse_server(server)?;
    let user = url.username();
    if user.is_empty() {
        return None;
    }
    Some(percent_decode_str(user).decode_utf8_lossy().into_owned())
}

/// Pairs with both a server and a user, normalised, deduplicated and sorted.
fn collect(pairs: impl IntoIterator<Item = (Option<String>, Option<String>)>) -> Vec<CiIdentity> {
    let set: BTreeSet<CiIdentity> = pairs
        .into_iter()
        .filter_map(|(server, user)| {
            let vcenter = normalize_host(server.as_deref()?);
            if vcenter.is_empty() {
                return None;
            }
            let username = normalize_username(user.as_deref()?);
            (!username.is_empty()).then_some(CiIdentity { vcenter, username })
        })
        .collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(vcenter: &str, username: &str) -> CiIdentity {
        CiIdentity {
            vcenter: vcenter.into(),
            username: username.into(),
        }
    }

    #[test]
    fn metadata_json_table() {
        let cases: Vec<(&str, Vec<CiIdentity>)> = vec![
            (
                r#"{"clusterName":"c","vsphere":{"vCenter":"VC1.example.com","username":"ci-user-1@vsphere.local","password":"p","terraform_platform":"vsphere"}}"#,
                vec![id("vc1.example.com", "ci-user-1")],
            ),
            (
                r#"{"vsphere":{"VCenters":[{"vCenter":"vc1","username":"a@vsphere.local","password":"p"},{"vCenter":"vc2:443","username":"VSPHERE.LOCAL\\b"}]}}"#,
                vec![id("vc1", "a"), id("vc2", "b")],
            ),
            (
                r#"{"vsphere":{"vCenter":"vc1","username":"a@vsphere.local","VCenters":[{"vCenter":"vc1","username":"a@VSPHERE.LOCAL"}]}}"#,
                vec![id("vc1", "a")],
            ),
            (r#"{"aws":{"region":"x"}}"#, vec![]),
            (r#"{"vsphere":{"vCenter":"vc1"}}"#, vec![]),
            (r#"{"vsphere":null}"#, vec![]),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_metadata_json(body.as_bytes()).unwrap(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn the_infra_id_is_read_from_metadata_json_alone() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (
                br#"{"clusterName":"c","infraID":"ci-op-110jib7j-af877-4p9dw","vsphere":{"password":"x"}}"#,
                Some("ci-op-110jib7j-af877-4p9dw"),
            ),
            (br#"{"infraID":""}"#, None),
            (br#"{"vsphere":{}}"#, None),
            (b"not json", None),
            (br#"{"infraID": 7}"#, None),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse_infra_id(bytes).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn platform_json_table() {
        let cases: Vec<(&str, Vec<CiIdentity>)> = vec![
            (
                r#"{"vcenters":[{"server":"vc1.example.com","user":"u@vsphere.local","password":"p","datacenters":["d"]}]}"#,
                vec![id("vc1.example.com", "u")],
            ),
            (
                r#"{"vcenters":[{"server":"https://VC2/sdk","user":"u2@other.domain"},{"server":"vc1","user":"u1"}]}"#,
                vec![id("vc1", "u1"), id("vc2", "u2@other.domain")],
            ),
            (r#"{"vcenters":[]}"#, vec![]),
            (r#"{}"#, vec![]),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_platform_json(body.as_bytes()).unwrap(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn govc_sh_table() {
        let cases: Vec<(&str, Vec<CiIdentity>)> = vec![
            (
                "export GOVC_URL=vc1.example.com\nexport GOVC_USERNAME=u@vsphere.local\nexport GOVC_PASSWORD=p\n",
                vec![id("vc1.example.com", "u")],
            ),
            (
                "#!/bin/bash\nexport GOVC_USERNAME=\"u@vsphere.local\"\nexport GOVC_PASSWORD='p'\nexport GOVC_URL='https://VC1.example.com/sdk'\n",
                vec![id("vc1.example.com", "u")],
            ),
            (
                "GOVC_URL=\"https://other%40vsphere.local:pw@10.0.0.5:443/sdk\"\n",
                vec![id("10.0.0.5", "other")],
            ),
            ("export GOVC_USERNAME=u\n", vec![]),
            (
                "export GOVC_URL=vc1 # the vcenter\nexport  GOVC_USERNAME=u ; \n",
                vec![id("vc1", "u")],
            ),
            ("", vec![]),
        ];
        for (body, want) in cases {
            assert_eq!(parse_govc_sh(body.as_bytes()), want, "{body}");
        }
    }

    #[test]
    fn normalize_host_table() {
        let cases = [
            ("vc1.example.com", "vc1.example.com"),
            ("VC1.Example.COM:443", "vc1.example.com"),
            ("  vc1.example.com.  ", "vc1.example.com"),
            (
                "https://u:p@VC1.example.com.:8443/sdk?x=1#f",
                "vc1.example.com",
            ),
            ("http://vc1/", "vc1"),
            ("u%40vsphere.local@vc1", "vc1"),
            ("127.0.0.1", "127.0.0.1"),
            ("https://[::1]:443/sdk", "[::1]"),
            ("https://VC%31.example.com", "vc1.example.com"),
            ("https://", ""),
            ("", ""),
            ("vc 1", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_host(input), want, "{input:?}");
        }
    }

    #[test]
    fn the_answering_file_is_told_and_only_metadata_json_is_final() {
        let files = [
            (
                "govc.sh",
                &b"export GOVC_URL=vc1\nexport GOVC_USERNAME=u\n"[..],
            ),
            ("metadata.json", &br#"{"vsphere":{"vCenter":"vc1"}}"#[..]),
        ];
        let get = |k: &str| files.iter().find(|(f, _)| *f == k).map(|(_, b)| *b);
        let found = users_from_files(get)
            .unwrap()
            .expect("govc.sh names a user");
        assert_eq!(found.file, "govc.sh");
        assert!(!found.is_final());

        let meta = br#"{"vsphere":{"vCenter":"vc1","username":"u"}}"#;
        let found = users_from_files(|k| (k == "metadata.json").then_some(&meta[..]))
            .unwrap()
            .expect("metadata.json names a user");
        assert!(found.is_final());
        assert_eq!(users_from_files(|_| None).unwrap(), None);
    }

    #[test]
    fn invalid_json_falls_back_to_the_next_file_and_errors_never_quote_content() {
        let files = [
            (
                "metadata.json",
                &b"{\"vsphere\": {\"password\": \"hunter2\", oops"[..],
            ),
            (
                "govc.sh",
                &b"export GOVC_URL=vc1\nexport GOVC_USERNAME=u\n"[..],
            ),
        ];
        let get = |k: &str| files.iter().find(|(f, _)| *f == k).map(|(_, b)| *b);
        assert_eq!(identities_from_files(get).unwrap(), vec![id("vc1", "u")]);

        let only_bad = [(
            "metadata.json",
            &b"{\"vsphere\": {\"username\": 12, \"password\": \"hunter2\"}}"[..],
        )];
        let get = |k: &str| only_bad.iter().find(|(f, _)| *f == k).map(|(_, b)| *b);
        let errors = identities_from_files(get).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "metadata.json");
        assert!(
            errors[0].message.contains("line 1 column"),
            "{}",
            errors[0].message
        );
        assert!(!errors[0].message.contains("hunter2"));
    }

    #[test]
    fn files_are_tried_in_order_and_absent_files_give_nothing() {
        let files = [
            (
                "platform.json",
                &br#"{"vcenters":[{"server":"vc2","user":"from-platform"}]}"#[..],
            ),
            (
                "metadata.json",
                &br#"{"vsphere":{"vCenter":"vc1","username":"from-metadata"}}"#[..],
            ),
        ];
        let get = |k: &str| files.iter().find(|(f, _)| *f == k).map(|(_, b)| *b);
        assert_eq!(
            identities_from_files(get).unwrap(),
            vec![id("vc1", "from-metadata")]
        );
        assert_eq!(identities_from_files(|_| None).unwrap(), vec![]);
    }
}
