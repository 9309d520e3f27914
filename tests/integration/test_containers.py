"""The container images for real (issue 16): `make images` builds them (installing podman,
runc and debootstrap when missing, as root), `gridctl devnet up --containers` runs the
consortium from them, and `podman kube play` runs the Deployments of the rendered dev
overlay with the consortium's ConfigMap and Secrets.

No engine daemon and no Docker Hub here: podman with host networking (deploy/images/
containers.conf) and, where python:3.11-slim-bookworm cannot be pulled, a Debian 12 base made
with debootstrap. The base image, the wheelhouse and the image layers are cached on the
machine, so a second run builds in well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from devnet_support import (
    committer_stub,
    dump_logs_on_failure,
    height,
    metric,
    same_chain,
    wait_for,
)
from kube_play_support import playable
from test_readme_grpcurl import readme_commands

from gridctl import devnet, devnet_containers

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("orderer", "committer", "endorser", "meter-agent")
BIN = Path(sys.executable).parent
# The first run on a fresh machine installs podman and builds the base and every layer.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


def _pid_inside(host_pid: int) -> int:
    """A process's id in its own PID namespace (the last of NSpid in its status)."""
    status = Path(f"/proc/{host_pid}/status").read_text()
    return int(status.split("NSpid:")[1].splitlines()[0].split()[-1])


def engine_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy/images/containers.conf")}


@pytest.fixture(scope="module")
def engine() -> str:
    """`make images` (deploy/images/build.sh): installs what it needs, builds every role."""
    started = time.monotonic()
    result = subprocess.run(["make", "-C", str(ROOT), "images"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=1400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"make images: {time.monotonic() - started:.0f} s\n{result.stdout}")
    for role in ROLES:
        assert f"gridledger/{role}:dev" in result.stdout
    return devnet_containers.engine()


def podman(eng: str, *args: str, check: bool = True, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([eng, *args], capture_output=True, text=True, env=engine_env(),
                            timeout=300, input=stdin if stdin is not None else "")
    if check:
        assert result.returncode == 0, f"{eng} {' '.join(args)}: {result.stderr}"
    return result


@pytest.mark.parametrize("role", ROLES)
def test_image_runs_its_role_as_non_root_on_a_read_only_root(engine: str, role: str) -> None:
    image = f"gridledger/{role}:dev"
    config = json.loads(podman(engine, "image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    # The build argument ROLE picked the console script the image runs by default.
    usage = podman(engine, "run", "--rm", "--read-only", image, "--help").stdout
    assert usage.startswith(f"usage: gridledger-{role}")
    probe = podman(engine, "run", "--rm", "--read-only", "--entrypoint", "sh", image, "-c",
                   "id -u; touch /opt/gridledger/x 2>&1 || true; touch /tmp/ok && echo tmp-ok",
                   ).stdout
    lines = probe.splitlines()
    assert lines[0] == "10001"
    assert "Read-only file system" in lines[1]
    assert lines[2] == "tmp-ok"  # the engine's tmpfs, as the manifests' /tmp emptyDir
    # No compiler or protobuf generator left in the final image.
    tools = podman(engine, "run", "--rm", "--entrypoint", "sh", image, "-c",
                   "command -v gcc cc protoc; python -c 'import grpc_tools' 2>&1 | tail -1",
                   check=False).stdout
    assert "gcc" not in tools and "ModuleNotFoundError" in tools


@pytest.fixture(scope="class")  # up for TestContainerisedConsortium only
def network(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[devnet.Network]:
    directory = tmp_path_factory.mktemp("containers")
    up = subprocess.run([str(BIN / "gridctl"), "devnet", "up", "--containers", "--detach",
                         "--dir", str(directory), "--json"], capture_output=True, text=True,
                        stdin=subprocess.DEVNULL, timeout=600, env=engine_env())
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        network = devnet.Network.load(directory)
        yield network
    finally:
        down = subprocess.run([str(BIN / "gridctl"), "devnet", "down", "--dir",
                               str(directory)], capture_output=True, text=True, timeout=300,
                              env=engine_env())
        if (directory / "network.json").exists():
            dump_logs_on_failure(devnet.Network.load(directory))
        assert down.returncode == 0, down.stderr
        left = podman(engine, "ps", "-a", "--filter",
                      f"label=io.gridledger.devnet={directory.resolve()}", "-q").stdout
        assert not left.strip(), "devnet down left containers behind"
        pods = podman(engine, "pod", "ls", "--filter",
                      f"label=io.gridledger.devnet={directory.resolve()}", "-q").stdout
        assert not pods.strip(), "devnet down left a pod behind"


class TestContainerisedConsortium:
    """`gridctl devnet up --containers`, as a user runs it, and what it must do."""

    def test_every_node_is_a_locked_down_container_with_only_its_own_keys(
            self, engine: str, network: devnet.Network) -> None:
        states = devnet_containers.state(network)
        assert set(states) == {n.name for n in network.nodes}
        for node in network.nodes:
            state = states[node.name]
            assert state["running"] and state["read_only"], node.name
            # The node's own process (in a pod, PID 1 of the namespace is the infra's); the
            # endorser in its committer's pod as its own user, in the committer's group.
            status = Path(f"/proc/{state['pid']}/status").read_text()
            user = "10002" if node.name == "endorser-1" else "10001"
            assert status.split("Uid:")[1].split()[0] == user, node.name
            assert status.split("Gid:")[1].split()[0] == "10001", node.name
            assert status.split("CapEff:")[1].split()[0] == "0000000000000000", node.name
            name = devnet_containers.container_name(network, node)
            inside = podman(engine, "exec", name, "sh", "-c",
                            "ls /etc/gridledger/consortium; ls /etc/gridledger/consortium/nodes"
                            ).stdout.split()
            assert inside == ["genesis.json", "nodes", "tls-ca-bundle.pem", node.name], \
                (node.name, inside)

    def test_the_endorser_reads_its_committers_ledger_in_their_pod(
            self, engine: str, network: devnet.Network) -> None:
        """As the manifests run it: endorser-1 in committer-1's pod, one PID namespace (the
        infra container's, not the committer's: either restarts alone), reading the ledger
        on committer-1's volume."""
        pid_ns = {name: podman(engine, "exec", devnet_containers.container_name(
                      network, network.node(name)), "readlink", "/proc/self/ns/pid").stdout
                  for name in ("endorser-1", "committer-1", "committer-2")}
        assert pid_ns["endorser-1"] == pid_ns["committer-1"] != pid_ns["committer-2"]
        args = json.loads(podman(engine, "inspect", devnet_containers.container_name(
            network, network.node("endorser-1"))).stdout)[0]["Config"]["Cmd"]
        assert args[args.index("--committer-ledger") + 1] == "/var/lib/gridledger/ledger"
        # Its own user: the committer's keys are out of its reach through /proc.
        pid = devnet_containers.state(network)["committer-1"]["pid"]
        tried = podman(engine, "exec", devnet_containers.container_name(
            network, network.node("endorser-1")), "sh", "-c",
            f"cat /proc/{_pid_inside(pid)}/root/etc/gridledger/consortium/nodes/committer-1/"
            "signing.key 2>&1; true").stdout
        assert "Permission denied" in tried and "PRIVATE KEY" not in tried, tried

    def test_committers_commit_identical_blocks(self, network: devnet.Network) -> None:
        c1 = committer_stub(network, "committer-1")
        c2 = committer_stub(network, "committer-2")
        wait_for(lambda: min(height(c1), height(c2)) >= 5, 120, "five blocks on both")
        assert same_chain(network) >= 5

    def test_readme_grpcurl_lines_answer(self, network: devnet.Network) -> None:
        script = readme_commands().replace(".devnet/network.json", str(network.network_file))
        script = script.replace(".venv/bin/", f"{BIN}/")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert '"status": "SERVING"' in result.stdout
        assert '"validation_code": "TX_VALIDATION_CODE_VALID"' in result.stdout

    def test_status_and_a_killed_container_restarts_and_catches_up(
            self, network: devnet.Network) -> None:
        status = subprocess.run([str(BIN / "gridctl"), "devnet", "status", "--dir",
                                 str(network.directory), "--json"], capture_output=True,
                                text=True, timeout=60, env=engine_env())
        assert status.returncode == 0, status.stdout + status.stderr
        assert {r["state"] for r in json.loads(status.stdout)} == {"up"}
        victim = network.node("committer-2")
        before = devnet_containers.state(network)[victim.name]
        devnet_containers.kill(network, victim)  # SIGKILL from outside: a crash
        wait_for(lambda: devnet_containers.state(network)[victim.name]["restarts"]
                 > before["restarts"] and devnet_containers.state(network)[victim.name][
                     "running"], 60, "the engine to restart committer-2")
        devnet_containers.refresh(network)
        assert network.node(victim.name).pid != before["pid"]
        devnet.wait_healthy(network, network.node(victim.name), 120)
        c1 = committer_stub(network, "committer-1")
        c2 = committer_stub(network, "committer-2")
        target = height(c1) + 2  # blocks committed while it was down and after
        wait_for(lambda: height(c2) >= target, 180, f"committer-2 to reach height {target}")
        assert same_chain(network) >= target

    def test_the_pods_committer_crashes_and_its_endorser_keeps_reading(
            self, network: devnet.Network) -> None:
        """committer-1 SIGKILLed in its pod: the engine restarts it alone (the endorser
        beside it is not restarted: the pod's infra container holds their PID namespace),
        and the endorser is SERVING again and follows the blocks committer-1 writes after
        its restart."""
        victim, endorser = network.node("committer-1"), network.node("endorser-1")
        before = devnet_containers.state(network)
        devnet_containers.kill(network, victim)
        wait_for(lambda: devnet_containers.state(network)[victim.name]["restarts"]
                 > before[victim.name]["restarts"] and devnet_containers.state(network)[
                     victim.name]["running"], 60, "the engine to restart committer-1")
        devnet_containers.refresh(network)
        devnet.wait_healthy(network, victim, 120)
        after = devnet_containers.state(network)[endorser.name]
        assert after["running"] and after["restarts"] == before[endorser.name]["restarts"]
        assert after["pid"] == before[endorser.name]["pid"]
        devnet.wait_healthy(network, endorser, 60)
        # The demo's readings keep coming: blocks committer-1 writes after its restart reach
        # the endorser's read of its ledger.
        c1 = committer_stub(network, "committer-1")
        target = height(c1) + 2
        wait_for(lambda: (metric(endorser, "gridledger_ledger_height") or 0) >= target, 120,
                 f"the endorser's read of committer-1's ledger to reach height {target}")
        devnet.wait_healthy(network, endorser, 10)


def test_kube_play_runs_the_dev_overlay(engine: str, tmp_path: Path) -> None:
    """Every Deployment of the rendered dev overlay, with the ConfigMap and Secrets of
    k8s/consortium-secrets.sh (and the volume claims), played by `podman kube play`, each
    pod in a network namespace of its own (loopback only: this machine has no pod network, so
    the pods cannot reach each other). Each pod must pass the manifests' probes, asked as the
    kubelet asks them: plaintext gRPC health (7051; the endorser's 7061), overall (liveness)
    and for the role's service (readiness), and serve /metrics (9464; 9465), as uid 10001
    with only its own keys. committer-1's pod runs endorser-1 too, reading committer-1's
    ledger through their shared volume and PID namespace: both must pass."""
    if engine != "podman":
        pytest.fail("kube play needs podman")
    consortium = tmp_path / "consortium"
    devnet.ensure_consortium(consortium)
    secrets = subprocess.run(["sh", str(ROOT / "k8s/consortium-secrets.sh"), str(consortium)],
                             capture_output=True, text=True, check=True).stdout
    overlay = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s/overlays/dev")],
                             capture_output=True, text=True, check=True).stdout
    docs = playable([d for d in yaml.safe_load_all(overlay) if d],
                    [d for d in yaml.safe_load_all(secrets) if d])
    play = tmp_path / "play.yaml"
    play.write_text(yaml.safe_dump_all(docs))
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    claims = [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"]
    # 4 orderers, 2 committers (committer-1's pod also runs the endorser), 7 agents
    assert len(deployments) == 13
    podman(engine, "kube", "down", str(play), check=False)
    podman(engine, "volume", "rm", "--force", *claims, check=False)
    try:
        podman(engine, "kube", "play", "--network", "none", str(play))
        for deployment in deployments:
            _check_pod(engine, deployment)
    finally:
        podman(engine, "kube", "down", str(play), check=False)
        podman(engine, "volume", "rm", "--force", *claims, check=False)


PROBE = """
import sys, urllib.request, grpc
from grpc_health.v1 import health_pb2 as pb, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{sys.argv[2]}"))
for service in ("", sys.argv[1]):
    try:
        status = stub.Check(pb.HealthCheckRequest(service=service), timeout=2).status
        print(pb.HealthCheckResponse.ServingStatus.Name(status))
    except grpc.RpcError as exc:
        print(exc.code().name)
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[3]}/metrics", timeout=2).read().decode()
print("metrics" if "gridledger_node_info" in text else "no-metrics")
"""
LEDGER_BOUND_AGENTS = {"settlement", "issuer", "plant-1", "plant-2"}
SERVICES = {"orderer": "gridledger.orderer.v1.OrdererService",
            "committer": "gridledger.committer.v1.CommitterService",
            "endorser": "gridledger.endorser.v1.EndorserService",
            "meter-agent": "gridledger.meteragent.v1.MeterAgentService"}


def _check_pod(engine: str, deployment: dict) -> None:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    for container in containers:
        _check_container(engine, deployment, container)
    if len(containers) > 1:  # the endorser beside its committer: one PID namespace (LMDB)
        names = [f"{deployment['metadata']['name']}-pod-0-{c['name']}" for c in containers]
        namespaces = {podman(engine, "exec", name, "readlink", "/proc/self/ns/pid"
                             ).stdout.strip() for name in names}
        assert len(namespaces) == 1, namespaces
        # ... and each its own user: neither reads the other's keys through /proc.
        for name, other in ((names[0], containers[1]), (names[1], containers[0])):
            node = next(e["value"] for e in other["env"] if e["name"] == "GRIDLEDGER_NAME")
            tried = podman(engine, "exec", name, "sh", "-c",
                           f"for p in /proc/[0-9]*; do grep -qs gridledger-{other['name']} "
                           f"$p/cmdline && cat $p/root/etc/gridledger/consortium/nodes/{node}"
                           "/signing.key; done 2>&1; true").stdout
            assert "Permission denied" in tried and "PRIVATE KEY" not in tried, tried


def _check_container(engine: str, deployment: dict, container: dict) -> None:
    name = f"{deployment['metadata']['name']}-pod-0-{container['name']}"
    node = next(e["value"] for e in container["env"] if e["name"] == "GRIDLEDGER_NAME")
    service = SERVICES[container["name"]]
    args = container["args"]
    health, metrics = (args[args.index(flag) + 1].rpartition(":")[2]
                       for flag in ("--health-listen", "--metrics-listen"))
    # The readiness probe is what the manifests say it is.
    assert container["readinessProbe"]["grpc"] == {"port": int(health), "service": service}
    # Alone in its pod an agent whose loop needs its committer (settlement, issuing, a
    # plant's announcements) cannot reach it: after three passes it must say so to the
    # readiness probe (loop_health.py), which takes it out of service under a kubelet, and
    # not to the liveness probe, which would restart it through the outage.
    ready_status = "NOT_SERVING" if node in LEDGER_BOUND_AGENTS else "SERVING"
    last = ""

    def ready() -> bool:
        nonlocal last
        result = podman(engine, "exec", "-i", name, "python", "-", service, health, metrics,
                        check=False, stdin=PROBE)
        last = result.stdout + result.stderr
        return last.split() == ["SERVING", ready_status, "metrics"]

    wait_for(ready, 120, f"{name} to pass its probes")
    inside = podman(engine, "exec", name, "sh", "-c",
                    "id -u; ls /etc/gridledger/consortium/nodes; touch /x 2>&1 || true").stdout
    uid, keys, touched = inside.splitlines()[:3]
    user = container["securityContext"].get(
        "runAsUser", deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    assert (uid, keys) == (str(user), node), inside
    assert "Read-only file system" in touched
