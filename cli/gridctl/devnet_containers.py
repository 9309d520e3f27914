"""The local network from the container images: every node of `devnet.plan` as a container.

Each node runs from `gridledger/<role>:<tag>` (built by `make images`) with the flags the
process devnet gives it, except that paths are the ones the Kubernetes manifests use: the
consortium read-only at /etc/gridledger/consortium holding only genesis.json, the TLS CA
bundle and the node's own keys (a copy per node, as the manifests' projected volumes do), and
its data volume at /var/lib/gridledger. Containers run as the image's uid 10001 with a
read-only root filesystem, all capabilities dropped and no privilege escalation, restart on
failure like a Deployment's pod, and serve plaintext health on a `--health-listen` port as
for the kubelet. Networking is the host's (this machine has no container network set up), so
every node keeps its own loopback ports from the plan instead of 7050/7051/9464.

With podman, an endorser runs as the manifests run it: in a pod with its organisation's
committer (one PID namespace, held by the pod's infra container, so either container can
restart alone), as its own user in the committer's group, the committer's data volume
mounted at the same path, reading its ledger (`--committer-ledger`). Docker has no pods:
there the endorser keeps a replica of its own.

`<dir>/containers.json` records the engine and the container of every node; its presence
makes `gridctl devnet status/down` (and `devnet.stop`) act on the containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from gridctl import devnet
from gridledger_core.node_config import POD_ENDORSER_DIR

RECORD = "containers.json"
CONSORTIUM_MOUNT = "/etc/gridledger/consortium"
DATA_MOUNT = "/var/lib/gridledger"
UID = 10001
# An endorser in its committer's pod runs as its own user in the committer's group, as in
# the manifests: in one PID namespace a container of the same user could read the other's
# keys through /proc/<pid>/root.
ENDORSER_UID = 10002
KEY_FILES = ("signing.pem", "signing.key", "tls.pem", "tls.key")
# deploy/images/containers.conf of the source tree gridctl runs from (an editable install).
_CONF = Path(__file__).resolve().parents[2] / "deploy" / "images" / "containers.conf"


def engine() -> str:
    """ENGINE if set, else docker when its daemon answers, else podman."""
    chosen = os.environ.get("ENGINE")
    if chosen:
        return chosen
    if shutil.which("docker") and subprocess.run(
            ["docker", "info"], capture_output=True, check=False).returncode == 0:
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise SystemExit("no container engine: run `make images` (it installs podman where it can)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env and _CONF.exists():
        env["CONTAINERS_CONF"] = str(_CONF)
    return env


def run(eng: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([eng, *args], capture_output=True, text=True, env=_env(),
                            check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{eng} {' '.join(args[:3])} ...: {result.stderr.strip()}")
    return result


def is_containerised(directory: Path) -> bool:
    return (directory / RECORD).exists()


def container_name(network: devnet.Network, node: devnet.Node) -> str:
    """Unique per devnet directory, so two devnets (e.g. parallel tests) never collide."""
    tag = hashlib.sha256(str(network.directory.resolve()).encode()).hexdigest()[:8]
    return f"gridledger-{tag}-{node.name}"


def _stage_consortium(network: devnet.Network, node: devnet.Node) -> Path:
    """What the node's pod would mount: genesis, CA bundle, and only its own keys."""
    target = network.directory / "mounts" / node.name
    if target.exists():
        shutil.rmtree(target)
    keys = target / "nodes" / node.name
    keys.mkdir(parents=True)
    src = network.consortium_dir
    for name in ("genesis.json", "tls-ca-bundle.pem"):
        shutil.copyfile(src / name, target / name)
    for name in KEY_FILES:
        shutil.copyfile(src / "nodes" / node.name / name, keys / name)
    for path in [target, *target.rglob("*")]:
        os.chmod(path, 0o550 if path.is_dir() else 0o440)
        _chown(path)
    return target


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, UID, UID)


def container_args(node: devnet.Node, beside: devnet.Node | None = None) -> list[str]:
    """The node's planned flags with the manifests' in-container paths. `beside`: the
    committer in whose pod an endorser runs (its data volume at DATA_MOUNT, so the ledger at
    DATA_MOUNT/ledger, and the endorser's own state in the volume's directory the committer
    makes for it, as in the manifests); without one an endorser keeps its own replica (a
    container outside its committer's pod sees only its own data volume and PID namespace)."""
    args = list(node.args) if beside is not None else devnet.with_own_replica(node.args)
    data_dir = DATA_MOUNT if beside is None else f"{DATA_MOUNT}/{POD_ENDORSER_DIR}"
    for flag, value in (("--consortium-dir", CONSORTIUM_MOUNT), ("--data-dir", data_dir),
                        (devnet.COMMITTER_LEDGER, f"{DATA_MOUNT}/ledger")):
        if flag in args:
            args[args.index(flag) + 1] = value
    return args


def pods(network: devnet.Network) -> dict[str, devnet.Node]:
    """endorser name -> the committer whose ledger it reads (`--committer-ledger` in the
    plan): the two that share a pod. One endorser per pod, as in the manifests (two would
    run as one user, able to read each other's keys through /proc): another endorser of
    that organisation keeps a replica of its own."""
    by_ledger = {str(Path(c.data_dir) / "ledger"): c for c in network.by_role("committer")}
    shared: dict[str, devnet.Node] = {}
    for endorser in network.by_role("endorser"):
        if devnet.COMMITTER_LEDGER not in endorser.args:
            continue
        committer = by_ledger[endorser.args[endorser.args.index(devnet.COMMITTER_LEDGER) + 1]]
        if committer not in shared.values():
            shared[endorser.name] = committer
    return shared


def pod_name(network: devnet.Network, committer: devnet.Node) -> str:
    return f"{container_name(network, committer)}-pod"


def plan(network: devnet.Network) -> None:
    """Give every node a plaintext health port (as the manifests' --health-listen)."""
    for node in network.nodes:
        if "--health-listen" not in node.args:
            node.args += ["--health-listen", f"127.0.0.1:{devnet.free_port()}"]


def start(network: devnet.Network, *, tag: str = "dev", wait: float = 120.0) -> None:
    """Start the nodes role by role (orderers first) and wait until each reports SERVING."""
    eng = engine()
    missing = [r for r in devnet.ROLE_ORDER
               if run(eng, "image", "inspect", f"gridledger/{r}:{tag}", check=False).returncode]
    if missing:
        raise SystemExit(f"images missing: {', '.join(f'gridledger/{r}:{tag}' for r in missing)};"
                         " build them with `make images`")
    plan(network)
    shared = pods(network) if eng == "podman" else {}
    # Recorded before any container is made, so a failed start still stops what it started.
    record = {"engine": eng, "tag": tag,
              "containers": {n.name: container_name(network, n) for n in network.nodes},
              "pods": sorted({pod_name(network, c) for c in shared.values()})}
    (network.directory / RECORD).write_text(json.dumps(record, indent=2))
    (network.directory / "logs").mkdir(parents=True, exist_ok=True)
    try:
        for committer in shared.values():
            _make_pod(eng, network, committer)
        hosts = {c.name: c for c in shared.values()}  # committers with an endorser
        for role in devnet.ROLE_ORDER:
            for node in network.by_role(role):
                beside = shared.get(node.name)
                host = beside or hosts.get(node.name)  # the committer of its pod, if any
                _run_node(eng, network, node, tag, beside=beside,
                          pod=pod_name(network, host) if host is not None else None)
            refresh(network)
            network.save()
            for node in network.by_role(role):
                devnet.wait_healthy(network, node, wait)
    except BaseException:
        stop(network)
        raise
    network.save()


def _make_pod(eng: str, network: devnet.Network, committer: devnet.Node) -> None:
    """A committer's pod, the host's network, one PID namespace (LMDB tells live readers
    from dead ones by process id) held by the pod's infra container."""
    name = pod_name(network, committer)
    run(eng, "pod", "rm", "--force", name, check=False)
    run(eng, "pod", "create", "--name", name, "--network", "host", "--share", "pid,ipc,uts",
        "--label", f"io.gridledger.devnet={network.directory.resolve()}")


def _run_node(eng: str, network: devnet.Network, node: devnet.Node, tag: str, *,
              beside: devnet.Node | None = None, pod: str | None = None) -> None:
    """`pod`: the pod it joins (else the host's network); `beside`: for an endorser, the
    committer whose data volume it mounts and whose ledger it reads."""
    name = container_name(network, node)
    run(eng, "rm", "--force", name, check=False)
    data = Path((beside or node).data_dir)
    data.mkdir(parents=True, exist_ok=True)
    _chown(data)
    consortium = _stage_consortium(network, node)
    log = Path(node.log)
    log.unlink(missing_ok=True)
    # Podman writes the container's output to the node's usual log file; Docker keeps its own.
    logging = ["--log-driver", "k8s-file", "--log-opt", f"path={log}"] if eng == "podman" else []
    placed = ["--pod", pod] if pod is not None else ["--network", "host"]
    if beside is not None:
        placed += ["--user", f"{ENDORSER_UID}:{UID}"]
    args = container_args(node, beside)
    if pod is not None and node.role == "committer":  # its endorser reads as another user
        args.append("--group-readers")
    run(eng, "run", "--detach", "--name", name, *placed,
        "--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--restart", "always", "--stop-timeout", "10",
        "--label", f"io.gridledger.devnet={network.directory.resolve()}",
        "--env", f"GRIDLEDGER_NAME={node.name}",
        *logging,
        "--volume", f"{consortium}:{CONSORTIUM_MOUNT}:ro",
        "--volume", f"{data}:{DATA_MOUNT}",
        f"gridledger/{node.role}:{tag}", *args)


def _record(network: devnet.Network) -> dict:
    return json.loads((network.directory / RECORD).read_text())


def state(network: devnet.Network) -> dict[str, dict]:
    """name -> {running, pid, restarts, user, read_only} as the engine reports it."""
    doc = _record(network)
    eng = doc["engine"]
    names = list(doc["containers"].values())
    out = run(eng, "inspect", *names, check=False).stdout
    found = {c["Name"].lstrip("/"): c for c in (json.loads(out) if out.strip() else [])}
    result = {}
    for node_name, cname in doc["containers"].items():
        c = found.get(cname)
        if c is None:
            result[node_name] = {"running": False, "pid": 0, "restarts": 0}
            continue
        result[node_name] = {
            "running": bool(c["State"].get("Running")), "pid": int(c["State"].get("Pid") or 0),
            "restarts": int(c.get("RestartCount") or 0), "user": c["Config"].get("User", ""),
            "read_only": bool(c["HostConfig"].get("ReadonlyRootfs"))}
    return result


def refresh(network: devnet.Network) -> None:
    """Record each node's current process id (a restarted container has a new one)."""
    if not is_containerised(network.directory):
        return
    states = state(network)
    for node in network.nodes:
        if node.name in states:
            node.pid = states[node.name]["pid"] if states[node.name]["running"] else 0


def kill(network: devnet.Network, node: devnet.Node) -> None:
    """Kill the node's process as a crash would (SIGKILL from outside, not a `stop`, which
    an engine treats as the operator's wish and does not restart)."""
    pid = state(network)[node.name]["pid"]
    if pid:
        os.kill(pid, 9)


def stop(network: devnet.Network) -> None:
    """Stop and remove every container, devices first and orderers last; data stays."""
    doc = _record(network)
    eng = doc["engine"]
    for role in ("meter-agent", "endorser", "committer", "orderer"):
        names = [doc["containers"][n.name] for n in network.by_role(role)
                 if n.name in doc["containers"]]
        if names:
            run(eng, "stop", "--time", "10", *names, check=False)
            run(eng, "rm", "--force", *names, check=False)
    for pod in doc.get("pods", []):
        run(eng, "pod", "rm", "--force", pod, check=False)
    for node in network.nodes:
        node.pid = 0
    network.save()
    (network.directory / RECORD).unlink(missing_ok=True)


def wait_running(network: devnet.Network, node: devnet.Node, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state(network)[node.name]["running"]:
            refresh(network)
            return
        time.sleep(0.5)
    raise TimeoutError(f"{node.name}'s container did not run again within {timeout:.0f} s")
