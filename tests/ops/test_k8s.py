"""Kubernetes manifests, checked offline: every overlay renders with `kubectl kustomize` and
validates with `kubernetes-validate --strict`; commands, flags, ports, probes, peer
addresses, identities, security contexts, disruption budgets and network policies agree
with the code and with the consortium material that k8s/consortium-secrets.sh produces."""

from __future__ import annotations

import base64
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from cryptography import x509
from ops_support import ROOT, console_scripts

from gridledger_core.consortium import create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.node_config import POD_ENDORSER_DIR

K8S = ROOT / "k8s"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
# Oldest supported (StatefulSet spec.ordinals is GA since 1.31) and newest shipped schemas.
KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"]
OVERLAYS = {"dev": 4, "production": 7}  # orderers in each
ROLE_MODULES = {"orderer": "gridledger_orderer.main", "committer": "gridledger_committer.main",
                "endorser": "gridledger_endorser.main",
                "meter-agent": "gridledger_meter_agent.main"}
# A container's declared port (by what it carries) and the flag that makes the node listen there.
PORTS = {"grpc": "--listen", "metrics": "--metrics-listen", "health": "--health-listen"}


def render(kubectl: str, directory: Path) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                         text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    result = {name: render(kubectl, K8S / "overlays" / name) for name in OVERLAYS}
    # The optional ServiceMonitor component on top of production, as docs/operations.md says.
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "overlays" / "monitored").mkdir()
    (copy / "overlays" / "monitored" / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../production"], "components": ["../../components/servicemonitor"]}))
    result["production+servicemonitor"] = render(kubectl, copy / "overlays" / "monitored")
    return result


@pytest.fixture(scope="module")
def consortiums(tmp_path_factory: pytest.TempPathFactory, kubectl: str) -> dict[int, dict]:
    """For each orderer count: the consortium dir and the objects the secrets script makes."""
    made = {}
    for orderers in sorted(set(OVERLAYS.values())):
        directory = tmp_path_factory.mktemp(f"consortium{orderers}")
        create_consortium(directory, default_topology(orderers=orderers))
        out = subprocess.run([str(K8S / "consortium-secrets.sh"), str(directory)],
                             capture_output=True, text=True, check=True).stdout
        objects = [doc for doc in yaml.safe_load_all(out) if doc]
        made[orderers] = {"dir": directory, "yaml": out,
                          "objects": {(o["kind"], o["metadata"]["name"]): o for o in objects}}
    return made


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]


def component(workload: dict) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def flags(args: list[str]) -> dict[str, str]:
    """`--flag value` and `--flag=value` pairs; a switch (`--flag` alone) maps to ""."""
    result, i = {}, 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"stray argument {arg!r}"
        if "=" in arg:
            name, value = arg.split("=", 1)
            i += 1
        elif i + 1 == len(args) or args[i + 1].startswith("--"):
            name, value = arg, ""
            i += 1
        else:
            name, value = arg, args[i + 1]
            i += 2
        assert name not in result, f"{name} given twice"
        result[name] = value
    return result


class Node(NamedTuple):
    """A node as the manifests run it: one container of a workload's pod (a pod may run two
    nodes of one organisation: the endorser in its committer's pod)."""

    name: str  # GRIDLEDGER_NAME: its identity, and the keys it mounts
    role: str  # the container's name: orderer, committer, endorser or meter-agent
    kind: str  # the role, or a meter agent's device role (meter, plant, issuer, settlement)
    labels: dict  # its pod's labels, which the Services and network policies select
    workload: dict
    container: dict

    def port(self, what: str) -> int:
        """The port it listens on for `what` (a key of PORTS), from its flags."""
        return port_of(flags(self.container["args"])[PORTS[what]])


def nodes(docs: list[dict]) -> list[Node]:
    found = []
    for workload in workloads(docs):
        assert workload["spec"]["replicas"] == 1
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for container in workload["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            role = container["name"]
            found.append(Node(env["GRIDLEDGER_NAME"], role,
                              kind(workload) if role == "meter-agent" else role,
                              labels, workload, container))
    return found


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


@functools.cache
def accepted_flags(role: str) -> frozenset[str]:
    out = subprocess.run([sys.executable, "-m", ROLE_MODULES[role], "--help"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out))


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions) against a pod's labels."""
    tests = {"In": lambda k, vs: labels.get(k) in vs,
             "NotIn": lambda k, vs: labels.get(k) not in vs,
             "Exists": lambda k, _: k in labels,
             "DoesNotExist": lambda k, _: k not in labels}
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and \
        all(tests[e["operator"]](e["key"], e.get("values", []))
            for e in selector.get("matchExpressions", []))


# -- rendering and schema validation ----------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", [*OVERLAYS, "production+servicemonitor"])
def test_overlay_validates_strictly(rendered: dict, overlay: str, version: str,
                                    tmp_path: Path) -> None:
    docs = rendered[overlay]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([str(VALIDATE), "--strict", "-k", version, str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout.count(" passed for resource ")
    crds = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert passed == len(docs) - len(crds), result.stdout
    assert len(docs) >= 29


def test_the_validator_rejects_a_misspelt_field(rendered: dict, tmp_path: Path) -> None:
    docs = [d for d in rendered["dev"] if d["kind"] == "Deployment"][:1]
    docs[0]["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"] = True
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([str(VALIDATE), "--strict", "-k", KUBERNETES_VERSIONS[0],
                             str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "readOnlyRootFileSystem" in result.stdout


def test_service_monitor_selects_the_metrics_ports(rendered: dict) -> None:
    docs = rendered["production+servicemonitor"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 1
    spec = monitors[0]["spec"]
    assert spec["namespaceSelector"]["matchNames"] == ["gridledger"]
    services = [d for d in docs if d["kind"] == "Service"
                and matches(spec["selector"], d["metadata"].get("labels", {}))]
    assert {s["metadata"]["name"] for s in services} == {
        "gridledger-orderer", "gridledger-committer", "gridledger-endorser",
        "gridledger-meter", "gridledger-plant", "gridledger-issuer", "gridledger-settlement"}
    for endpoint in spec["endpoints"]:
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert not [d for d in rendered["production"] if d["kind"] == "ServiceMonitor"]


# -- commands, flags and ports ----------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_flags_and_environment_exist(rendered: dict, overlay: str) -> None:
    scripts = console_scripts()
    for node in nodes(rendered[overlay]):
        role, container, workload = node.role, node.container, node.workload
        assert container["command"] == [f"gridledger-{role}"]
        assert container["command"][0] in scripts
        assert container["image"].split(":")[0].endswith(f"gridledger/{role}")
        accepted = accepted_flags(role)
        given = flags(container["args"])
        assert set(given) <= accepted, set(given) - accepted
        for env in container.get("env", []):
            assert env["name"].startswith("GRIDLEDGER_")
            flag = "--" + env["name"].removeprefix("GRIDLEDGER_").lower().replace("_", "-")
            assert flag in accepted, f"{env['name']} sets no option of gridledger-{role}"
            assert flag not in given, f"{flag} set twice"
        if role == "meter-agent":
            mode = next(e["value"] for e in container["env"] if e["name"] == "GRIDLEDGER_MODE")
            assert mode in {"meter", "plant", "issuer", "settlement"}
        assert workload["spec"]["template"]["spec"]["enableServiceLinks"] is False



def test_secrets_script_output_is_exact_and_valid(consortiums: dict, rendered: dict,
                                                  tmp_path: Path) -> None:
    """Exactly the Secrets the dev overlay's pods mount, byte for byte: the operators' CLI
    keys (admin, treasury) and the balancing account's key stay off the cluster."""
    made = consortiums[4]
    directory, objects = made["dir"], made["objects"]
    config = objects[("ConfigMap", "gridledger-consortium")]
    assert config["data"]["genesis.json"].encode() == (directory / "genesis.json").read_bytes()
    assert config["data"]["tls-ca-bundle.pem"].encode() == \
        (directory / "tls-ca-bundle.pem").read_bytes()
    mounted = {name for w in workloads(rendered["dev"])
               for name, _ in _secret_items(w["spec"]["template"]["spec"])}
    assert {name for kind, name in objects if kind == "Secret"} == mounted
    genesis = Genesis.load(directory / "genesis.json")
    kept_off = {a.name for a in genesis.accounts.values()
                if a.role in (Role.ADMIN, Role.TREASURY)} | {genesis.settlement.balancing_account}
    assert {"admin", "treasury", "balancing"} <= kept_off
    for node in (directory / "nodes").iterdir():
        if node.name in kept_off:
            assert ("Secret", f"gridledger-node-{node.name}") not in objects
            key = base64.b64encode((node / "signing.key").read_bytes()).decode()
            assert key not in made["yaml"], node.name
            continue
        secret = objects[("Secret", f"gridledger-node-{node.name}")]
        assert secret["metadata"]["namespace"] == "gridledger"
        assert secret["metadata"]["labels"]["gridledger.io/node"] == node.name
        for key, value in secret["data"].items():
            assert base64.b64decode(value) == (node / key).read_bytes()
    assert "BEGIN PRIVATE KEY" not in made["yaml"]  # keys only base64-encoded in Secrets
    ca_keys = [p.read_bytes() for p in (directory / "orgs").rglob("*-ca.key")]
    encoded = {base64.b64encode(k).decode() for k in ca_keys}
    assert not any(e in made["yaml"] for e in encoded), "a CA key left the consortium dir"
    path = tmp_path / "secrets.yaml"
    path.write_text(made["yaml"])
    result = subprocess.run([str(VALIDATE), "--strict", "-k", KUBERNETES_VERSIONS[0],
                             str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(" passed for resource ") == len(objects)


def test_secrets_script_refuses_a_directory_that_is_no_consortium(tmp_path: Path) -> None:
    result = subprocess.run([str(K8S / "consortium-secrets.sh"), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "not a consortium directory" in result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tls_certificates_cover_the_names_peers_and_clients_dial(
        rendered: dict, consortiums: dict, overlay: str) -> None:
    directory = consortiums[OVERLAYS[overlay]]["dir"]

    def sans(node: str) -> set[str]:
        cert = x509.load_pem_x509_certificate((directory / "nodes" / node / "tls.pem")
                                              .read_bytes())
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return set(ext.value.get_values_for_type(x509.DNSName))

    def covered(name: str, names: set[str]) -> bool:
        return name in names or any(n.startswith("*.") and name.split(".", 1)[1] == n[2:]
                                    for n in names)

    docs = rendered[overlay]
    for node in nodes(docs):
        workload = node.workload
        given = flags(node.container["args"])
        for flag in ("--peer", "--orderer"):
            for item in given.get(flag, "").split(",") if flag in given else []:
                name, address = item.split("=", 1)
                assert covered(address.rpartition(":")[0], sans(name)), address
        for flag in ("--endorser", "--committer"):
            if flag in given:
                host = given[flag].rpartition(":")[0]
                targets = [n.name for n in nodes(docs) if n.role == flag.removeprefix("--")]
                assert targets
                for target in targets:
                    assert covered(host, sans(target)), (host, target)
        spec = workload["spec"]["template"]["spec"]
        if "hostname" in spec:
            assert covered(f"{spec['hostname']}.{spec['subdomain']}", sans(spec["hostname"]))


# -- security, resources, disruption budgets -------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_contexts_and_resources(rendered: dict, overlay: str) -> None:
    namespace = next(d for d in rendered[overlay] if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in workloads(rendered[overlay]):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] >= 1000
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "add" not in context["capabilities"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/var/lib/gridledger", "/tmp"} <= mounts
        if workload["kind"] == "Deployment":
            assert workload["spec"]["strategy"]["type"] == "Recreate"
            assert workload["spec"]["replicas"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_at_most_f_orderers_may_be_disrupted(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    orderers = [w for w in workloads(docs) if component(w) == "orderer"]
    n = sum(w["spec"]["replicas"] for w in orderers)
    assert n == OVERLAYS[overlay]
    f = (n - 1) // 3
    assert n == 3 * f + 1
    for orderer in orderers:
        budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"
                   and matches(d["spec"]["selector"], orderer["spec"]["template"]["metadata"]
                               ["labels"])]
        assert len(budgets) == 1
        assert budgets[0]["spec"]["maxUnavailable"] == f
        assert "minAvailable" not in budgets[0]["spec"]


# -- keys where they belong -------------------------------------------------------------------

def _secret_items(spec: dict) -> list[tuple[str, str]]:
    """(Secret name, path in the volume) of every Secret a pod spec mounts."""
    items = []
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            items.append((volume["secret"]["secretName"], "*"))
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                items += [(source["secret"]["name"], i["path"])
                          for i in source["secret"].get("items", [{"path": "*"}])]
    return items


def _mounted_secrets(spec: dict, container: dict) -> set[str]:
    """The node Secrets a container can read: those of the volumes it mounts."""
    mounted = {m["name"] for m in container["volumeMounts"]}
    return {name for volume in spec.get("volumes", []) if volume["name"] in mounted
            for name, _ in _secret_items({"volumes": [volume]})}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_mounts_only_its_own_keys(rendered: dict, consortiums: dict,
                                            overlay: str) -> None:
    """One compromised pod must not yield another organisation's keys, nor another node's
    of its own beyond the pod (a quorum of orderers' signing keys, say): each container
    mounts exactly one node Secret, its own node's; a pod holds only the Secrets of the nodes
    it runs, all of one organisation (the endorser shares its committer's pod); and every
    node's Secret is mounted by exactly one container of one single-replica workload."""
    genesis = Genesis.load(consortiums[OVERLAYS[overlay]]["dir"] / "genesis.json")
    mounted_by: dict[str, list[str]] = {}
    for workload in workloads(rendered[overlay]):
        spec = workload["spec"]["template"]["spec"]
        run = nodes([workload])
        items = _secret_items(spec)
        assert {secret for secret, _ in items} == {f"gridledger-node-{n.name}" for n in run}
        assert {path for _, path in items} == {
            f"nodes/{n.name}/{f}" for n in run
            for f in ("signing.pem", "signing.key", "tls.pem", "tls.key")}
        # One node a pod, or an endorser beside a committer of its own organisation: never
        # two orderers (a quorum's keys), nor nodes of two organisations.
        assert len(run) == 1 or sorted(n.role for n in run) == ["committer", "endorser"], \
            [n.name for n in run]
        assert len({genesis.accounts[n.name].org for n in run}) == 1, [n.name for n in run]
        for node in run:
            assert _mounted_secrets(spec, node.container) == {f"gridledger-node-{node.name}"}
            for mount in node.container["volumeMounts"]:
                assert "subPathExpr" not in mount  # what a pod may read is what it mounts
            mounted_by.setdefault(f"gridledger-node-{node.name}", []).append(
                f"{workload['metadata']['name']}/{node.role}")
    assert {n.role for n in nodes(rendered[overlay])} == {
        "orderer", "committer", "endorser", "meter-agent"}
    assert all(len(users) == 1 for users in mounted_by.values()), mounted_by
    assert len([s for s in mounted_by if s.startswith("gridledger-node-orderer-")]) == \
        OVERLAYS[overlay]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_endorser_reads_its_committers_ledger_in_one_pod(rendered: dict,
                                                              overlay: str) -> None:
    """Every endorser runs beside a committer, reading its ledger: `--committer-ledger` is the
    committer's `--data-dir` + /ledger, on one volume both mount read-write at those paths
    (the endorser must write LMDB's lock file), in one PID namespace (LMDB registers readers
    by process id), with no volume of its own: its `--data-dir` (its acknowledgement journal)
    is the directory of that volume the committer makes writable by the pod's group
    (--group-readers). Both ask every orderer."""
    docs = rendered[overlay]
    endorsers = [n for n in nodes(docs) if n.role == "endorser"]
    assert endorsers
    orderers = {n.name for n in nodes(docs) if n.role == "orderer"}
    for endorser in endorsers:
        spec = endorser.workload["spec"]["template"]["spec"]
        (committer,) = [n for n in nodes([endorser.workload]) if n.role == "committer"]
        assert spec["shareProcessNamespace"] is True
        assert "--group-readers" in flags(committer.container["args"])  # lock.mdb g+w
        # Its own user in the committer's group: one PID namespace lets a container read
        # another's files through /proc/<pid>/root only when both run as the same user.
        user = {n.role: n.container["securityContext"].get(
            "runAsUser", spec["securityContext"]["runAsUser"]) for n in (endorser, committer)}
        assert user["endorser"] != user["committer"], user
        assert "runAsGroup" not in endorser.container["securityContext"]
        assert spec["securityContext"]["runAsGroup"] == spec["securityContext"]["fsGroup"]
        given, committer_given = flags(endorser.container["args"]), flags(
            committer.container["args"])
        assert given["--committer-ledger"] == f"{committer_given['--data-dir']}/ledger"

        def data_mount(node: Node, path: str) -> dict:
            (mount,) = [m for m in node.container["volumeMounts"] if m["mountPath"] == path]
            return mount
        assert given["--data-dir"] == f"{committer_given['--data-dir']}/{POD_ENDORSER_DIR}"
        ours = data_mount(endorser, committer_given["--data-dir"])
        theirs = data_mount(committer, committer_given["--data-dir"])
        assert ours["name"] == theirs["name"] and ours["mountPath"] == theirs["mountPath"]
        assert not ours.get("readOnly") and not theirs.get("readOnly")
        for node in (endorser, committer):
            asked = {item.split("=", 1)[0]
                     for item in flags(node.container["args"])["--orderer"].split(",")}
            assert asked == orderers, (node.name, asked)
    # No other endorser Deployment, and no volume claim of its own.
    names = {d["metadata"]["name"] for d in docs}
    assert not names & {"endorser-1", "endorser-1-data"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_node_listens_on_the_ports_its_pod_declares_and_services_target(
        rendered: dict, overlay: str) -> None:
    """Containers of one pod share its network namespace: their ports must differ, each
    container must declare the ports its flags listen on (and probe its own health port),
    and every Service must target, by name, a port its pods declare, of the role it serves
    (the endorser's Service the endorser's port in its committer's pod)."""
    docs = rendered[overlay]
    declared: dict[str, dict[str, tuple[int, str]]] = {}  # workload -> name -> (port, role)
    for node in nodes(docs):
        ports = {p["name"]: p["containerPort"] for p in node.container["ports"]}
        for name in ports:  # IANA_SVC_NAME, which the schema does not check
            assert len(name) <= 15 and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) \
                and re.search("[a-z]", name), name
        assert sorted(ports.values()) == sorted(node.port(what) for what in PORTS), node.name
        health = node.port("health")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert node.container[probe]["grpc"]["port"] == health, (node.name, probe)
        pod = declared.setdefault(node.workload["metadata"]["name"], {})
        for name, port in ports.items():
            assert name not in pod and port not in {p for p, _ in pod.values()}, node.name
            pod[name] = (port, node.role)
    for service in [d for d in docs if d["kind"] == "Service"]:
        role = service["metadata"]["labels"]["app.kubernetes.io/component"]
        selected = [w for w in workloads(docs)
                    if matches({"matchLabels": service["spec"]["selector"]},
                               w["spec"]["template"]["metadata"]["labels"])]
        assert selected, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            for workload in selected:
                target = declared[workload["metadata"]["name"]][port["targetPort"]]
                assert target[1] == role, (service["metadata"]["name"], port)
                kind = "grpc" if port["name"] == "grpc" else "metrics"
                assert any(target[0] == n.port(kind) for n in nodes([workload])
                           if n.role == role)
        # Annotation-based scraping: a Service's annotations name its role's metrics port.
        annotated = service["metadata"].get("annotations", {}).get("prometheus.io/port")
        if annotated is not None:
            assert {int(annotated)} == {n.port("metrics") for w in selected
                                        for n in nodes([w]) if n.role == role}
    # ... and a pod's name the metrics port of its own component (the committer's in
    # committer-1's pod); every node is scraped by one of the two.
    scraped = set()
    for workload in workloads(docs):
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        (node,) = [n for n in nodes([workload]) if n.role == component(workload)]
        assert int(annotations["prometheus.io/port"]) == node.port("metrics")
        scraped.add(node.name)
    for service in [d for d in docs if d["kind"] == "Service"
                    and "prometheus.io/port" in d["metadata"].get("annotations", {})]:
        scraped |= {n.name for w in workloads(docs) for n in nodes([w])
                    if matches({"matchLabels": service["spec"]["selector"]},
                               w["spec"]["template"]["metadata"]["labels"])
                    and n.port("metrics") == int(service["metadata"]["annotations"][
                        "prometheus.io/port"])}
    assert scraped == {n.name for n in nodes(docs)}


# -- network policies -------------------------------------------------------------------------

def _peer_allows(peers: list[dict], labels: dict, namespace: str) -> bool:
    for peer in peers:
        ns_ok = ("namespaceSelector" not in peer and namespace == "gridledger") or (
            "namespaceSelector" in peer and peer["namespaceSelector"]["matchLabels"].get(
                "kubernetes.io/metadata.name") == namespace)
        if ns_ok and matches(peer.get("podSelector", {}), labels):
            return True
    return False


def _port_allows(rule: dict, port: int) -> bool:
    return any(p["port"] == port and p.get("protocol", "TCP") == "TCP"
               for p in rule.get("ports", []))


def allowed(docs: list[dict], src: dict, dst: dict, port: int, src_ns: str = "gridledger"
            ) -> bool:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    ingress = any(matches(p["spec"]["podSelector"], dst) and "Ingress" in p["spec"]["policyTypes"]
                  and any(_peer_allows(r.get("from", []), src, src_ns) and _port_allows(r, port)
                          for r in p["spec"].get("ingress", []))
                  for p in policies)
    if src_ns != "gridledger":
        return ingress
    egress = any(matches(p["spec"]["podSelector"], src) and "Egress" in p["spec"]["policyTypes"]
                 and any(_peer_allows(r.get("to", []), dst, "gridledger") and _port_allows(r, port)
                         for r in p["spec"].get("egress", []))
                 for p in policies)
    return ingress and egress


def kind(workload: dict) -> str:
    """The workload's component, or for a meter agent its device role (meter, plant, issuer,
    settlement): the policies tell those apart."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return labels.get("gridledger.io/device-role") or component(workload)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_meters_reach_the_agents_they_call(rendered: dict, overlay: str) -> None:
    """Every meter's --neighbour addresses and every plant's advertised endpoint are the
    DNS names of agents the policies let that meter reach (the addresses are used, not only
    allowed)."""
    docs = rendered[overlay]
    by_host = {}
    for w in workloads(docs):
        spec = w["spec"]["template"]["spec"]
        if "hostname" in spec:
            by_host[f"{spec['hostname']}.{spec['subdomain']}:7050"] = w
    meters = [w for w in workloads(docs) if kind(w) == "meter"]
    plants = [w for w in workloads(docs) if kind(w) == "plant"]
    assert len(meters) >= 2 and plants
    for meter in meters:
        (container,) = meter["spec"]["template"]["spec"]["containers"]
        neighbours = flags(container["args"])["--neighbour"].split(",")
        assert len(neighbours) == len(meters) - 1
        for entry in neighbours:
            name, _, address = entry.partition("=")
            target = by_host[address]
            assert target["spec"]["template"]["spec"]["hostname"] == name
            assert allowed(docs, meter["spec"]["template"]["metadata"]["labels"],
                           target["spec"]["template"]["metadata"]["labels"], 7050)
        for plant in plants:
            (pc,) = plant["spec"]["template"]["spec"]["containers"]
            advertise = next(e["value"] for e in pc["env"] if e["name"] == "GRIDLEDGER_ADVERTISE")
            assert by_host[advertise] is plant
            assert allowed(docs, meter["spec"]["template"]["metadata"]["labels"],
                           plant["spec"]["template"]["metadata"]["labels"], 7050)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_only_the_protocol(rendered: dict, overlay: str) -> None:
    """Between every two nodes (by their pods' labels, to the port the callee listens on;
    the endorser at its own port in its committer's pod), exactly the protocol's calls; no
    node reaches another's metrics, and Prometheus reaches every node's metrics only."""
    docs = rendered[overlay]
    deny = [d for d in docs if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny[0]["spec"].get("ingress") and not deny[0]["spec"].get("egress")
    every = nodes(docs)
    assert {"meter", "plant", "issuer", "settlement", "endorser"} <= {n.kind for n in every}
    devices = ("meter", "plant", "issuer", "settlement")
    flows = {(d, s) for d in devices for s in ("endorser", "committer")} | {
        ("endorser", "orderer"), ("committer", "orderer"), ("orderer", "orderer"),
        # Claim 3's neighbour directory (GetPlantDirectory) and ProposeContract: meters call
        # other meters' and plants' agents; plants, the issuer and the settlement agent call
        # no agent.
        ("meter", "meter"), ("meter", "plant")}
    for src in every:
        for dst in every:
            if src.workload is dst.workload:
                continue  # one pod: loopback, which no policy governs
            expected = (src.kind, dst.kind) in flows
            grpc, metrics = dst.port("grpc"), dst.port("metrics")
            assert allowed(docs, src.labels, dst.labels, grpc) == expected, (src, dst)
            assert not allowed(docs, src.labels, dst.labels, metrics), (src.name, dst.name)
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    for dst in every:
        assert allowed(docs, prometheus, dst.labels, dst.port("metrics"), src_ns="monitoring")
        assert not allowed(docs, prometheus, dst.labels, dst.port("grpc"), src_ns="monitoring")
        assert not allowed(docs, {"app": "other"}, dst.labels, dst.port("metrics"),
                           src_ns="monitoring")


# -- the initiating organisation's settlement agent (issue 14) --------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settlement_agent_runs_with_only_its_key_and_reaches_only_the_ledger(
        rendered: dict, consortiums: dict, overlay: str) -> None:
    """The settlement agent runs as the devnet runs it (`--mode settlement` under the genesis
    settlement account that is not the balancing account), mounts only its own Secret, is
    locked down like every agent, and may call the endorser and the committer and nothing
    else (DNS aside); no pod may call it, and no pod holds the balancing or treasury key."""
    docs = rendered[overlay]
    (agent,) = [w for w in workloads(docs) if kind(w) == "settlement"]
    spec = agent["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["command"] == ["gridledger-meter-agent"]
    assert (env["GRIDLEDGER_MODE"], env["GRIDLEDGER_NAME"]) == ("settlement", "settlement")
    assert {"--endorser", "--committer"} <= set(flags(container["args"]))
    genesis = Genesis.load(consortiums[OVERLAYS[overlay]]["dir"] / "genesis.json")
    assert genesis.initiating_account("settlement", Role.SETTLEMENT)
    assert genesis.settlement.balancing_account not in ("", "settlement")
    assert {name for name, _ in _secret_items(spec)} == {"gridledger-node-settlement"}
    assert agent["spec"]["replicas"] == 1

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (issuer,) = [w for w in workloads(docs) if kind(w) == "issuer"]
    (other,) = issuer["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe] == other[probe], probe
    assert container["resources"] == other["resources"]

    for workload in workloads(docs):
        mounted = {name for name, _ in _secret_items(workload["spec"]["template"]["spec"])}
        for kept_off in ("balancing", "treasury", "admin"):
            assert f"gridledger-node-{kept_off}" not in mounted, workload["metadata"]["name"]

    labels = agent["spec"]["template"]["metadata"]["labels"]
    every = nodes(docs)
    ledger = [n for n in every if n.kind in ("endorser", "committer")]
    for dst in ledger:
        assert allowed(docs, labels, dst.labels, dst.port("grpc")), dst.name
    reached = set()
    for policy in [d for d in docs if d["kind"] == "NetworkPolicy"
                   and matches(d["spec"]["podSelector"], labels)
                   and "Egress" in d["spec"]["policyTypes"]]:
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), f"{policy['metadata']['name']}: egress to anywhere"
            for peer in rule["to"]:
                assert "ipBlock" not in peer, policy["metadata"]["name"]
                if "namespaceSelector" in peer:  # only cluster DNS
                    assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                    assert {p["port"] for p in rule["ports"]} == {53}
                    continue
                ports = [p["port"] for p in rule["ports"]]
                peers = [n for n in every if matches(peer["podSelector"], n.labels)]
                assert ports in [[n.port("grpc")] for n in peers], ports  # gRPC only
                reached |= {n.kind for n in peers if [n.port("grpc")] == ports}
    assert reached == {"endorser", "committer"}, reached
    for src in every:
        assert not allowed(docs, src.labels, labels, 7050)


def test_secrets_script_on_one_organisations_directory(tmp_path: Path) -> None:
    """Per-organisation enrolment (`gridctl org init`): an organisation's directory yields
    Secrets for its own nodes only, and never its CA keys."""
    from gridctl.commands_enrol import assemble_genesis, init_org
    from gridledger_core.identity import Role

    org_dir = tmp_path / "utility"
    public = init_org(org_dir, "utility", [("committer-2", Role.COMMITTER),
                                          ("orderer-2", Role.ORDERER)])
    assemble_genesis(org_dir, "test", "utility", [public])
    out = subprocess.run([str(K8S / "consortium-secrets.sh"), str(org_dir)],
                         capture_output=True, text=True, check=True).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc]
    assert sorted(o["metadata"]["name"] for o in objects) == [
        "gridledger-consortium", "gridledger-node-committer-2", "gridledger-node-orderer-2"]
    for key in (org_dir / "ca").glob("*.key"):
        assert base64.b64encode(key.read_bytes()).decode() not in out


def test_dev_history_and_pace_reach_only_device_agents(rendered: dict) -> None:
    """The dev overlay's demo settings (readings history, pace) go to the agents of meters and
    plants; the issuer and the settlement agent read no device, so they get none."""
    seen: dict[str, set[str]] = {}
    for workload in workloads(rendered["dev"]):
        if component(workload) != "meter-agent":
            continue
        (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"]
                        if c["name"] == "meter-agent"]
        names = {e["name"] for e in container.get("env", [])}
        demo = {"GRIDLEDGER_BACKFILL_HOURS", "GRIDLEDGER_PACE"} & names
        seen.setdefault(kind(workload), set()).add("demo" if demo else "none")
        assert container["resources"]["requests"] == {"cpu": "20m", "memory": "128Mi"}
    assert seen == {"meter": {"demo"}, "plant": {"demo"}, "issuer": {"none"},
                    "settlement": {"none"}}
