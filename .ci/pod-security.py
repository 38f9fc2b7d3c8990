#!/usr/bin/env python3
"""Checks rendered Kubernetes YAML (files given, or standard input) against the Pod Security
Standards' "restricted" level (which includes "baseline"), as the admission controller would
with `pod-security.kubernetes.io/enforce: restricted`, plus this project's own rule that every
container's root filesystem is read-only. No cluster is needed. Exits 1 naming each violation.

https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version latest).
"""
import sys

import yaml

# Where each kind keeps its pod spec.
POD_SPEC_PATHS = {
    "Pod": ["spec"],
    "Deployment": ["spec", "template", "spec"],
    "ReplicaSet": ["spec", "template", "spec"],
    "StatefulSet": ["spec", "template", "spec"],
    "DaemonSet": ["spec", "template", "spec"],
    "Job": ["spec", "template", "spec"],
    "ReplicationController": ["spec", "template", "spec"],
    "CronJob": ["spec", "jobTemplate", "spec", "template", "spec"],
}
# Restricted: only these volume types.
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
# Baseline: no capability beyond these may be added; restricted: NET_BIND_SERVICE alone.
RESTRICTED_ADD = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def dig(doc, path):
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def check_pod(where, spec):
    problems = []
    bad = problems.append
    psc = spec.get("securityContext") or {}
    containers = [("container", c) for c in spec.get("containers") or []]
    containers += [("initContainer", c) for c in spec.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in spec.get("ephemeralContainers") or []]
    # Baseline.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad(f"{where}: {field} is true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad(f"{where}: hostProcess")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad(f"{where}: unsafe sysctl {sysctl.get('name')}")
    if (psc.get("seLinuxOptions") or {}).get("type") not in (None, "", "container_t", "container_init_t",
                                                             "container_kvm_t", "container_engine_t"):
        bad(f"{where}: SELinux type {psc['seLinuxOptions']['type']}")
    # Restricted, pod level.
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            bad(f"{where}: volume {volume.get('name')} is {sorted(kinds - ALLOWED_VOLUMES)}")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        bad(f"{where}: runAsUser 0")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        bad(f"{where}: seccompProfile {pod_seccomp}")
    for kind, c in containers:
        name = f"{where} {kind} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad(f"{name}: hostProcess")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad(f"{name}: hostPort {port['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            bad(f"{name}: procMount {sc['procMount']}")
        # Restricted, per container.
        if sc.get("allowPrivilegeEscalation") is not False:
            bad(f"{name}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") is True or (pod_non_root and sc.get("runAsNonRoot") is not False)):
            bad(f"{name}: runAsNonRoot is not true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad(f"{name}: seccompProfile is {seccomp or 'unset'} (RuntimeDefault or Localhost)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad(f"{name}: capabilities do not drop ALL")
        added = set(caps.get("add") or []) - RESTRICTED_ADD
        if added:
            bad(f"{name}: capabilities add {sorted(added)}")
        # This project's rule.
        if sc.get("readOnlyRootFilesystem") is not True:
            bad(f"{name}: readOnlyRootFilesystem is not true")
    return problems


def main():
    sources = sys.argv[1:] or ["-"]
    problems, pods = [], 0
    for source in sources:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict) or doc.get("kind") not in POD_SPEC_PATHS:
                continue
            spec = dig(doc, POD_SPEC_PATHS[doc["kind"]])
            where = f"{source}: {doc['kind']}/{dig(doc, ['metadata', 'name'])}"
            if not isinstance(spec, dict):
                problems.append(f"{where}: no pod spec")
                continue
            pods += 1
            problems += check_pod(where, spec)
    for p in problems:
        print(f"pod-security: {p}", file=sys.stderr)
    if pods == 0:
        print("pod-security: no pod templates found", file=sys.stderr)
        return 1
    if problems:
        return 1
    print(f"pod-security: {pods} pod templates meet \"restricted\" (and have a read-only root)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
