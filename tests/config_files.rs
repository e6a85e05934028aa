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

/// `kubectl kustomize DIR`, as objects.
fn kustomize(dir: &str) -> Vec<serde_yaml::Value> {
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", dir])
        .output()
        .unwrap_or_else(|e| panic!("kubectl (with kustomize) must be installed: {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .collect()
}

fn kinds(objects: &[serde_yaml::Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    kinds
}

/// The pod templates' containers of the rendered objects.
fn containers(objects: &[serde_yaml::Value]) -> Vec<&serde_yaml::Value> {
    objects
        .iter()
        .filter_map(|o| match o["kind"].as_str() {
            Some("Deployment") => Some(&o["spec"]["template"]["spec"]["containers"]),
            Some("CronJob") => {
                Some(&o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"])
            }
            _ => None,
        })
        .flat_map(|c| c.as_sequence().unwrap().iter())
        .collect()
}

#[test]
fn both_kustomizations_render_every_object_and_their_args_parse_with_our_own_cli() {
    use clap::Parser as _;
    let base = kustomize("config/kubernetes");
    assert_eq!(
        kinds(&base),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Namespace",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    let cronjob = kustomize("config/overlays/cronjob");
    assert_eq!(
        kinds(&cronjob),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CronJob",
            "Namespace",
            "PersistentVolumeClaim",
            "PrometheusRule",
            "ServiceAccount"
        ]
    );
    // The HA pair: the base with two replicas, each labelling its series.
    let ha = kustomize("config/overlays/ha");
    assert_eq!(kinds(&ha), kinds(&base));
    for (objects, command) in [(&base, "start"), (&cronjob, "once"), (&ha, "start")] {
        let containers = containers(objects);
        assert_eq!(containers.len(), 1);
        let args: Vec<String> = containers[0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(args[0], command);
        let cli = vsphere_ci_session_metrics::cli::Cli::try_parse_from(
            std::iter::once("vsphere-ci-session-metrics".to_string()).chain(args.clone()),
        )
        .unwrap_or_else(|e| panic!("{args:?} do not parse: {e}"));
        let flags = cli.command.flags();
        assert_eq!(
            flags.config.as_deref(),
            Some(std::path::Path::new("/etc/reporter/config.yaml"))
        );
        if std::ptr::eq(objects, &ha) {
            assert_eq!(flags.external_label, ["replica=$(POD_NAME)"]);
            assert_eq!(
                flags.vsphere_user_agent.as_deref(),
                Some("vsphere-ci-session-metrics/$(POD_NAME)")
            );
        }
        // The config file the args name is the ConfigMap mounted there, and
        // it is config/example.yaml.
        let map = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        assert_eq!(
            map["data"]["config.yaml"].as_str().unwrap(),
            std::fs::read_to_string("config/example.yaml").unwrap()
        );
    }
}

#[test]
fn the_prometheus_rule_is_config_alerts_yaml() {
    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string("config/alerts.yaml").unwrap()).unwrap();
    let path = "config/kubernetes/prometheusrule.yaml";
    if std::env::var_os("REGENERATE").is_some() {
        let rule = serde_yaml::to_string(&serde_json::json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "vsphere-ci-session-metrics"},
            "spec": {"groups": serde_json::to_value(&alerts["groups"]).unwrap()},
        }))
        .unwrap();
        let header = "# Generated from config/alerts.yaml (comments there): do not edit.\n\
             # REGENERATE=1 cargo test --test config_files the_prometheus_rule rewrites it.\n";
        std::fs::write(path, format!("{header}{rule}")).unwrap();
    }
    let rule: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "{path} is out of date: REGENERATE=1 cargo test --test config_files the_prometheus_rule"
    );
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

/// Whether every label of `selector` is in `labels` with the same value.
fn selects(selector: &serde_yaml::Value, labels: &serde_yaml::Value) -> bool {
    let selector = selector.as_mapping().expect("a selector is a map");
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn the_shards_overlay_gives_each_shard_its_vcenters_its_label_and_one_scrape() {
    use clap::Parser as _;
    let objects = kustomize("config/overlays/shards");
    let count = |kind: &str| objects.iter().filter(|o| o["kind"] == kind).count();
    // One namespace and one set of rules; the rest once per shard.
    assert_eq!((count("Namespace"), count("PrometheusRule")), (1, 1));
    // Shared, so no shard's: removing a shard keeps them.
    for shared in objects
        .iter()
        .filter(|o| o["kind"] == "Namespace" || o["kind"] == "PrometheusRule")
    {
        assert!(
            shared["metadata"]["labels"]["shard"].is_null(),
            "{shared:?}"
        );
    }
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ] {
        assert_eq!(count(kind), 2, "{kind}");
    }
    let of = |kind: &str, shard: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["labels"]["shard"] == shard)
            .unwrap_or_else(|| panic!("no {kind} of shard {shard}"))
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
    let mut hosts_seen = std::collections::BTreeSet::new();
    for (shard, other) in [("east", "west"), ("west", "east")] {
        let deployment = of("Deployment", shard);
        let pod = &deployment["spec"]["template"];
        let other_pod = &of("Deployment", other)["spec"]["template"];
        // Each Deployment, Service and ServiceMonitor finds its own shard
        // only: no pod is scraped twice, no Service spans shards.
        let own_selector = &deployment["spec"]["selector"]["matchLabels"];
        assert!(selects(own_selector, &pod["metadata"]["labels"]));
        assert!(!selects(own_selector, &other_pod["metadata"]["labels"]));
        let service = of("Service", shard);
        assert!(selects(
            &service["spec"]["selector"],
            &pod["metadata"]["labels"]
        ));
        assert!(!selects(
            &service["spec"]["selector"],
            &other_pod["metadata"]["labels"]
        ));
        let monitor = &of("ServiceMonitor", shard)["spec"];
        let selector = &monitor["selector"]["matchLabels"];
        assert!(selects(selector, &service["metadata"]["labels"]));
        assert!(!selects(
            selector,
            &of("Service", other)["metadata"]["labels"]
        ));
        // Scraped series carry the shard label as pushed ones do, so the
        // stale-data alert names one shard, not a shard and a blank.
        let relabel = &monitor["endpoints"][0]["relabelings"][0];
        assert_eq!(
            (
                relabel["targetLabel"].as_str(),
                relabel["replacement"].as_str()
            ),
            (Some("shard"), Some(shard))
        );
        // Its pod runs as its own service account, bound to its own role.
        let account = of("ServiceAccount", shard)["metadata"]["name"].clone();
        assert_eq!(pod["spec"]["serviceAccountName"], account);
        let binding = of("ClusterRoleBinding", shard);
        assert_eq!(binding["subjects"][0]["name"], account);
        assert_eq!(
            binding["roleRef"]["name"],
            of("ClusterRole", shard)["metadata"]["name"]
        );

        // Its args parse with our CLI and add the shard label...
        let container = &pod["spec"]["containers"][0];
        let args: Vec<String> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let cli = vsphere_ci_session_metrics::cli::Cli::try_parse_from(
            std::iter::once("vsphere-ci-session-metrics".to_string()).chain(args.clone()),
        )
        .unwrap_or_else(|e| panic!("{args:?} do not parse: {e}"));
        // ... to the config of its own ConfigMap, mounted where they say.
        let map = of("ConfigMap", shard);
        let volume = pod["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
        let text = map["data"]["config.yaml"].as_str().unwrap().replace(
            "/etc/reporter-secret/vsphere-password",
            &dir.path().join("pw").display().to_string(),
        );
        let path = dir.path().join(format!("{shard}.yaml"));
        std::fs::write(&path, text).unwrap();
        let mut flags = cli.command.flags().clone();
        flags.config = Some(path);
        let config = Config::build(&flags).unwrap_or_else(|e| panic!("shard {shard}: {e}"));
        assert!(
            config
                .external_labels
                .contains(&("shard".to_string(), shard.to_string())),
            "{:?}",
            config.external_labels
        );
        assert!(!config.vcenters.is_empty());
        for vcenter in &config.vcenters {
            // No vCenter is listed by two shards.
            assert!(hosts_seen.insert(vcenter.host.clone()), "{}", vcenter.host);
        }
    }
}
