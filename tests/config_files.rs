//! The configuration files shipped in `config/` parse and validate, so the
//! examples in the README and the manifests never rot.

use vsphere_ci_session_metrics::cli::Flags;
use vsphere_ci_session_metrics::config::{Config, ProwSourceConfig};

#[test]
fn the_example_config_file_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    // The example names a password file under /etc; point at a real one.
    let text = std::fs::read_to_string("config/example.yaml")
        .unwrap()
        .replace(
            "/etc/reporter-secret/vsphere-password",
            &dir.path().join("pw").display().to_string(),
        );
    std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
    let path = dir.path().join("example.yaml");
    std::fs::write(&path, text).unwrap();
    let flags = Flags {
        config: Some(path),
        ..Flags::default()
    };
    let config = Config::build(&flags).unwrap();
    assert_eq!(config.vcenters.len(), 1);
    // The example's reaper block spells out the defaults: off, nobody named.
    assert!(!config.reaper.enabled && !config.reaper.apply);
    assert!(config.reaper.users.is_empty());
    assert_eq!(config.reaper.reasons.len(), 3);
    assert_eq!(
        config.reaper.min_age,
        std::time::Duration::from_secs(2 * 3600)
    );
    assert_eq!(config.vcenters[0].host, "vcenter.ci.example.com");
    assert_eq!(config.vcenters[0].password.expose(), "secret");
    assert_eq!(config.remote_write.len(), 1);
    assert_eq!(config.build_clusters.len(), 1);
    assert_eq!(
        config.external_labels,
        vec![("reporter".to_string(), "ci-sessions".to_string())]
    );
    assert!(matches!(config.prow, ProwSourceConfig::Deck { .. }));
    assert_eq!(config.vcenters[0].session_limit, 3000);
    assert_eq!(
        config.vcenters[0].aliases,
        ["vcenter-1.ci.example.com", "10.0.0.10"]
    );
    assert!(config.vcenters[0].vm_map, "vm_attribution: true");
    assert_eq!(
        config.leaks.login_grace,
        std::time::Duration::from_secs(300)
    );
    assert_eq!(
        config.leaks.idle_threshold,
        std::time::Duration::from_secs(3600)
    );
    // The example spells out the defaults: the same patterns.
    let defaults = vsphere_ci_session_metrics::leaks::LeakRules::default();
    let patterns =
        |v: &[regex::Regex]| v.iter().map(|r| r.as_str().to_string()).collect::<Vec<_>>();
    assert_eq!(
        patterns(&config.leaks.exclude_users),
        patterns(&defaults.exclude_users)
    );
    assert_eq!(
        patterns(&config.leaks.cluster_user_agents),
        patterns(&defaults.cluster_user_agents)
    );
}

#[test]
fn the_kubernetes_manifests_and_alert_rules_are_valid_yaml() {
    for file in [
        "config/kubernetes/rbac.yaml",
        "config/kubernetes/deployment.yaml",
        "config/kubernetes/cronjob.yaml",
        "config/alerts.yaml",
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(value.is_mapping(), "{file}: every document is a mapping");
        }
    }
}

use serde::Deserialize as _;

/// Every `promql` block of the README is one valid PromQL expression:
/// `promtool check rules` parses each as a recording rule.
#[test]
fn the_readme_queries_are_valid_promql() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut queries = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match (&mut block, line) {
            (None, "```promql") => block = Some(String::new()),
            (Some(q), "```") => {
                queries.push(q.trim().to_string());
                block = None;
            }
            (Some(q), l) => {
                q.push_str(l);
                q.push('\n');
            }
            _ => {}
        }
    }
    assert!(
        queries.len() >= 8,
        "the README's queries were found: {queries:?}"
    );
    let mut rules = String::from("groups:\n  - name: readme\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: readme:query_{i}\n        expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readme-queries.yaml");
    std::fs::write(&path, rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool not found: install Debian package prometheus (scripts/test.sh does it)");
    assert!(
        out.status.success(),
        "{}{}\nqueries: {queries:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
