"""Validates manifests rendered by `helm template` (one multi-document file) and checks the
chart's promises on them.

- Built-in kinds: kubernetes-validate's schemas, strict (unknown fields fail), for each
  Kubernetes version given.
- Custom resources (ServiceMonitor, ScaledObject): kubernetes-validate has no schema for them
  and would only warn. They are validated here against crd-schemas/*.json, hand-written
  subsets of the upstream CRDs covering the fields the chart renders, strict as well.
- Any other kind fails: a manifest nothing validates is an error, not a warning.

Then the promises: non-root, read-only root filesystem, no capabilities; the rules mounted as a
directory (never subPath); probes on /healthz and /readyz; a grace period above the shutdown
bound; the buffer budget inside the memory limit. The rendered tailsift.yaml and rule files are
written to --out for the real binary to check.
"""
import argparse
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
}
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def quantity(q):
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    return int(float(m.group(1)) * UNITS[m.group(2)])


def seconds(d):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)\s*(ms|s|m|h)", d))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifests")
    ap.add_argument("--kube", action="append", required=True, help="Kubernetes version, repeatable")
    ap.add_argument("--out", required=True, help="directory for the rendered tailsift.yaml and rules/")
    args = ap.parse_args()

    docs = [d for d in yaml.safe_load_all(open(args.manifests)) if d]
    errors = []
    by_kind = {}
    for doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = f"{kind} {doc.get('metadata', {}).get('name')}"
        by_kind.setdefault(kind, []).append(doc)
        if (api, kind) in CRD_SCHEMAS:
            schema = json.load(open(os.path.join(HERE, "crd-schemas", CRD_SCHEMAS[(api, kind)])))
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                errors.append(f"{name} ({api}, chart's CRD subset schema): {e.json_path}: {e.message}")
            continue
        for version in args.kube:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{name} (Kubernetes {version}): {e.json_path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name}: no schema: {e.message}")

    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    if len(workloads) != 1:
        errors.append(f"expected one Deployment or StatefulSet, found {len(workloads)}")
    config_maps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    for w in workloads:
        errors += check_workload(w, config_maps, args.out)

    for e in errors:
        print(f"  FAIL {e}")
    kinds = ", ".join(f"{k} x{len(v)}" if len(v) > 1 else k for k, v in sorted(by_kind.items()))
    print(f"  {len(docs)} manifests ({kinds}): {'FAILED' if errors else 'valid'}"
          f" for Kubernetes {', '.join(args.kube)}")
    return 1 if errors else 0


def check_workload(w, config_maps, out):
    errs = []
    pod = w["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        errs.append("container may run as root")
    if sc.get("readOnlyRootFilesystem") is not True:
        errs.append("root filesystem is writable")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
        errs.append("capabilities are not all dropped")
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append("privilege escalation allowed")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
        errs.append("probes are not on /healthz and /readyz")

    volumes = {v["name"]: v for v in pod["volumes"]}
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    config_cm = config_maps[volumes["config"]["configMap"]["name"]]
    config = yaml.safe_load(config_cm["data"]["tailsift.yaml"])
    rules_dir = config["rules"]["dir"]
    rules_mount = [m for m in c["volumeMounts"] if m["mountPath"] == rules_dir]
    if len(rules_mount) != 1:
        errs.append(f"rules.dir {rules_dir} is not a mount")
    else:
        if "subPath" in rules_mount[0] or "subPathExpr" in rules_mount[0]:
            errs.append("rules are mounted with subPath: ConfigMap updates would never reach the pod")
        if "configMap" not in volumes[rules_mount[0]["name"]]:
            errs.append("rules volume is not a ConfigMap")
    if any("subPath" in m for m in c["volumeMounts"]):
        errs.append("a volume is mounted with subPath (no in-place updates)")
    if c["args"][-1] != os.path.join(config_mount["mountPath"], "tailsift.yaml"):
        errs.append(f"--config {c['args'][-1]} is not the mounted tailsift.yaml")
    port = int(config["http"]["listen"].rsplit(":", 1)[1])
    if port != c["ports"][0]["containerPort"]:
        errs.append(f"http.listen port {port} is not the container port")

    shutdown = seconds(config["shutdown_timeout"])
    grace = pod["terminationGracePeriodSeconds"]
    if grace <= shutdown + 5:
        errs.append(f"terminationGracePeriodSeconds {grace} <= shutdown_timeout {shutdown}s + 5s")
    limit = quantity(c["resources"]["limits"]["memory"])
    budget = int(config["buffer"]["max_bytes"])
    if not 0 < budget <= limit * 0.8:
        errs.append(f"buffer.max_bytes {budget} is not within 80% of the memory limit {limit}")
    env = {e["name"]: e for e in c.get("env", [])}
    if w["kind"] == "StatefulSet":
        ref = env.get("TAILSIFT_GROUP_INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {})
        if ref.get("fieldPath") != "metadata.name":
            errs.append("StatefulSet pods do not take group.instance.id from their name")
    elif "TAILSIFT_GROUP_INSTANCE_ID" in env:
        errs.append("a Deployment's pods would share one group.instance.id")
    for key, value in env.items():
        if "value" in value and re.search(r"PASSWORD|SECRET", key):
            errs.append(f"env {key} holds a literal secret")

    # For `tailsift config check` outside a pod: every ${file:PATH} is pointed at a stand-in
    # under --out, every ${env:NAME} is listed in --out/env for the caller to set.
    os.makedirs(os.path.join(out, "rules"), exist_ok=True)
    text = config_cm["data"]["tailsift.yaml"]
    for path in set(re.findall(r"\$\{file:([^}]+)\}", text)):
        stand_in = os.path.join(out, "secrets", path.lstrip("/"))
        os.makedirs(os.path.dirname(stand_in), exist_ok=True)
        with open(stand_in, "w") as f:
            f.write("ci-stand-in\n")
        text = text.replace("${file:%s}" % path, "${file:%s}" % stand_in)
    with open(os.path.join(out, "tailsift.yaml"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "env"), "w") as f:
        for name in sorted(set(re.findall(r"\$\{env:([^}]+)\}", text))):
            f.write(f"{name}=ci-stand-in\n")
    rules_cm = config_maps.get(volumes["rules"]["configMap"]["name"])
    if rules_cm is not None:
        for name, text in rules_cm["data"].items():
            with open(os.path.join(out, "rules", name), "w") as f:
                f.write(text)
    return [f"{w['kind']} {w['metadata']['name']}: {e}" for e in errs]


if __name__ == "__main__":
    sys.exit(main())
