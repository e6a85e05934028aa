#!/usr/bin/env python3
"""Validate rendered Kubernetes manifests: `kubectl kustomize DIR | validate-manifests.py NAME`.

Every object is checked, and the first problem of each is printed on one line
naming the object; the exit status is 1 when any object fails.

- Built-in kinds: against the Kubernetes OpenAPI schemas of KUBERNETES_VERSION
  with kubernetes-validate in strict mode (unknown fields are errors).
- ServiceMonitor and PrometheusRule (prometheus-operator CRDs, not in those
  schemas): against the structure of their monitoring.coreos.com/v1 CRDs, for
  the fields such objects use; unknown fields are errors here too.
- Pod templates: the `restricted` Pod Security Standard (non-root, no
  privilege escalation, every capability dropped, RuntimeDefault or Localhost
  seccomp, allowed volume types, no host namespaces, ports or paths, safe
  sysctls only, no host process, SELinux, AppArmor and procMount left at their
  defaults; init and ephemeral containers too), plus what
  this project requires: a read-only root filesystem, requests and limits, and
  probes for long-running pods.
- RBAC: read-only verbs and no wildcards.
"""

import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.32.0"

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": False,
}

# monitoring.coreos.com/v1 RelabelConfig, as the operator's CRD defines it.
RELABEL_CONFIGS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "separator": {"type": "string"},
            "targetLabel": {"type": "string"},
            "regex": {"type": "string"},
            "modulus": {"type": "integer"},
            "replacement": {"type": "string"},
            "action": {
                "enum": [
                    "replace", "Replace", "keep", "Keep", "drop", "Drop",
                    "hashmod", "HashMod", "labelmap", "LabelMap",
                    "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                    "lowercase", "Lowercase", "uppercase", "Uppercase",
                    "keepequal", "KeepEqual", "dropequal", "DropEqual",
                ]
            },
        },
        "additionalProperties": False,
    },
}

# monitoring.coreos.com/v1 ServiceMonitor and PrometheusRule, as their CRDs
# define the fields used here.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": LABEL_SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": {"type": "string"},
                                "targetPort": {"type": ["string", "integer"]},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": DURATION,
                                "scrapeTimeout": DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": RELABEL_CONFIGS,
                                "metricRelabelings": RELABEL_CONFIGS,
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "properties": {
                                            "record": {"type": "string"},
                                            "alert": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": DURATION,
                                            "keep_firing_for": DURATION,
                                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                        },
                                        "additionalProperties": False,
                                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                    },
                                },
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
}

ALLOWED_VOLUMES = {"configMap", "secret", "persistentVolumeClaim", "emptyDir", "projected",
                   "downwardAPI", "csi", "ephemeral"}


def pod_spec(obj):
    kind = obj.get("kind")
    if kind == "Deployment":
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Job":
        return obj["spec"]["template"]["spec"]
    if kind == "Pod":
        return obj["spec"]
    return None


def restricted(obj, spec):
    """The first way `spec` breaks the restricted profile or our rules, or None."""
    pod = spec.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            return f"{host} is set"
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            return f"volume {volume['name']} is of a type restricted forbids: {sorted(kinds)}"
    safe_sysctls = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                    "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
    for sysctl in pod.get("sysctls", []):
        if sysctl.get("name") not in safe_sysctls:
            return f"sysctl {sysctl.get('name')} is not in the safe set"
    containers = (spec.get("containers", []) + spec.get("initContainers", [])
                  + spec.get("ephemeralContainers", []))
    if not containers:
        return "no containers"
    for context, where in [(pod, "pod")] + [(c.get("securityContext", {}), c["name"]) for c in containers]:
        if context.get("windowsOptions", {}).get("hostProcess"):
            return f"{where}: windowsOptions.hostProcess"
        selinux_type = context.get("seLinuxOptions", {}).get("type")
        if selinux_type not in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"):
            return f"{where}: seLinuxOptions.type {selinux_type}"
        if context.get("seLinuxOptions", {}).get("user") or context.get("seLinuxOptions", {}).get("role"):
            return f"{where}: seLinuxOptions user or role set"
        if context.get("appArmorProfile", {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            return f"{where}: appArmorProfile {context['appArmorProfile']['type']}"
        if context.get("procMount") not in (None, "Default"):
            return f"{where}: procMount {context['procMount']}"
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            return f"container {name} is privileged"
        if sc.get("allowPrivilegeEscalation") is not False:
            return f"container {name}: allowPrivilegeEscalation must be false"
        if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
            return f"container {name}: runAsNonRoot must be true"
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            return f"container {name}: runAsUser must not be 0"
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            return f"container {name}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp}"
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            return f"container {name}: capabilities must drop ALL"
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            return f"container {name}: adds capabilities {caps['add']}"
        for port in c.get("ports", []):
            if port.get("hostPort"):
                return f"container {name}: hostPort {port['hostPort']}"
        # This project's own rules.
        if sc.get("readOnlyRootFilesystem") is not True:
            return f"container {name}: readOnlyRootFilesystem must be true"
        resources = c.get("resources", {})
        for part in ("requests", "limits"):
            if "memory" not in resources.get(part, {}):
                return f"container {name}: no memory {part}"
        if obj["kind"] == "Deployment":
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    return f"container {name}: no {probe}"
    return None


def rbac(obj):
    for rule in obj.get("rules", []):
        for field in ("apiGroups", "resources", "verbs"):
            if "*" in rule.get(field, []):
                return f"a wildcard in {field}"
        if set(rule.get("verbs", [])) - {"get", "list"}:
            return f"verbs beyond get and list: {rule['verbs']}"
    return None


def check(obj):
    """The first problem of one object, or None."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        try:
            jsonschema.validate(obj, CRD_SCHEMAS[key])
        except jsonschema.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            return f"{path}: {e.message}"
    else:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            return f"{path}: {e.message}"
        except kubernetes_validate.SchemaNotFoundError:
            return f"no schema for {key} in Kubernetes {KUBERNETES_VERSION}"
    spec = pod_spec(obj)
    if spec is not None:
        problem = restricted(obj, spec)
        if problem:
            return f"pod security: {problem}"
    if obj.get("kind") in ("ClusterRole", "Role"):
        return rbac(obj)
    return None


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "stdin"
    objects = [o for o in yaml.safe_load_all(sys.stdin) if o]
    if not objects:
        print(f"{name}: no objects")
        return 1
    failed = 0
    for obj in objects:
        what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        problem = check(obj)
        if problem:
            failed += 1
            print(f"{name}: {what}: {problem}")
    print(f"{name}: {len(objects) - failed} of {len(objects)} objects valid "
          f"(Kubernetes {KUBERNETES_VERSION} schemas, CRD structure, restricted pod security)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
