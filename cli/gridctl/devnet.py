"""The local network launcher: every role as its own process on loopback.

`up` writes `<dir>/network.json` describing every node (name, role, gRPC and metrics address,
pid, data dir) and the TLS files a client such as grpcurl can use. Tests start networks
through this same module.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gridledger_core.consortium import PROFILES, STANDARD, create_consortium, default_topology
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Role
from gridledger_core.rpc import grpc_env
from gridledger_core.rpc.tls import TlsFiles, secure_channel
from gridledger_core.signing_identity import SigningIdentity

MODULES = {
    "orderer": "gridledger_orderer.main",
    "committer": "gridledger_committer.main",
    "endorser": "gridledger_endorser.main",
    "meter-agent": "gridledger_meter_agent.main",
}
CLIENT_IDENTITY = "admin"


@dataclass
class Node:
    name: str
    role: str
    grpc: str
    metrics: str
    data_dir: str
    log: str
    pid: int = 0
    args: list[str] = field(default_factory=list)


@dataclass
class Network:
    directory: Path
    consortium_dir: Path
    nodes: list[Node]

    @property
    def network_file(self) -> Path:
        return self.directory / "network.json"

    def tls(self) -> TlsFiles:
        return TlsFiles.for_node(self.consortium_dir, CLIENT_IDENTITY)

    def by_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def describe(self) -> dict:
        tls = self.tls()
        return {
            "consortium_dir": str(self.consortium_dir),
            "tls": {"ca_bundle": str(tls.ca_bundle), "client_cert": str(tls.certificate),
                    "client_key": str(tls.key), "server_name": "localhost"},
            "nodes": [{k: v for k, v in asdict(n).items() if k != "args"} | {"args": n.args}
                      for n in self.nodes],
        }

    def save(self) -> None:
        self.network_file.write_text(json.dumps(self.describe(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Network:
        doc = json.loads((directory / "network.json").read_text())
        return cls(directory, Path(doc["consortium_dir"]), [Node(**n) for n in doc["nodes"]])


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nobody listens on, drawn below the kernel's ephemeral range: ports that bind(0)
    returns come from that range, where any outgoing connection may take them again before
    the node that was planned for them starts listening."""
    low, high = 20000, _ephemeral_low() - 1
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def ensure_consortium(consortium_dir: Path, orderers: int = 4, meters: int = 3,
                      plants: int = 2, profile: str = STANDARD.name) -> Genesis:
    """The consortium in `consortium_dir`, made with the genesis `profile` ("standard":
    production timing; "fast": the demo market of `make run`) if there is none yet."""
    if not (consortium_dir / "genesis.json").exists():
        create_consortium(consortium_dir, default_topology(orderers, meters, plants),
                          profile=PROFILES[profile])
    redo = ("stop it (gridctl devnet down) and delete its directory, then run again to make "
            "a new consortium")
    try:
        genesis = Genesis.load(consortium_dir / "genesis.json")
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"{consortium_dir} was made by an older GridLedger or is damaged "
                         f"({exc}); {redo}") from exc
    if not genesis.accounts or not all(o.tls_certificate_pem for o in genesis.orderers):
        # Such a genesis binds no identity to an account and pins no orderer: every signature
        # and every call would be refused. Say so instead of starting a network that cannot work.
        raise SystemExit(
            f"{consortium_dir} was made by an older GridLedger (its genesis lists no accounts "
            f"or no orderer TLS certificates); {redo}")
    if "settlement" not in json.loads(genesis.raw):
        # Made before issue 14: no money, so every buy is refused and nothing settles. (A
        # genesis may have the section without a balancing account: imbalances unpriced.)
        raise SystemExit(f"{consortium_dir} was made by an older GridLedger (its genesis has "
                         f"no settlement accounts or genesis money); {redo}")
    return genesis


# The demo's cast (seed 000/002 at any hour): a household with a heat pump that always
# buys, a small wind turbine that always sells, and hybrid PV + wind plants that supply
# contracts at night too and have no forced outages (a seeded outage stops a plant, wind
# included, about 1 % of the time, and a contract signed then is not delivered within the
# minutes the demo promises). Other meters keep their seeded rooftop PV.
DEMO_CONSUMER_ARGS = ["--pv-kwp", "0", "--base-load-w", "3000"]
DEMO_PRODUCER_ARGS = ["--pv-kwp", "0", "--wind-kw", "12"]
DEMO_PLANT_ARGS = ["--wind-kw", "100", "--outage-probability", "0"]


def demo_settings(genesis: Genesis) -> dict:
    """`plan` arguments that suit the genesis's market: with slots of minutes (the fast
    profile), a day and an hour of history (the forecast looks at the same slot on earlier
    days) posted fast, and a look at the next open slot every few seconds."""
    if genesis.market.slot_seconds >= 900:
        return {}
    # Contracts a meter cannot take (one that exports) close after 5 minutes, not a day.
    return {"backfill_hours": 25, "reading_pace": 200.0,
            "presale_every": max(2.0, genesis.market.slot_seconds / 12),
            "contract_seconds": 300}


def plan(directory: Path, consortium_dir: Path, *, demo: bool = True,
         reading_pace: float = 20.0, backfill_hours: int = 48,
         contract_wh: int = 50, presale_share: int = 50, presale_every: float = 10.0,
         contract_seconds: int = 0,
         consumers: tuple[str, ...] = ("meter-1",),
         producers: tuple[str, ...] = ("meter-2",)) -> Network:
    """Assign ports, data dirs and command lines for every node of the consortium.

    With `demo`, meters post `backfill_hours` of history first, place pre-sale orders and
    buy supply contracts; `consumers` always buy and `producers` always have a surplus, so
    trades cross whatever the hour; plants also produce at night and sign contracts that
    deliver within `contract_seconds` (0: the agent's default)."""
    genesis = Genesis.load(consortium_dir / "genesis.json")
    names = sorted((consortium_dir / "nodes").iterdir())
    roles: dict[str, Role] = {}
    orgs: dict[str, str] = {}
    for node_dir in names:
        identity = genesis.membership.certificate(
            SigningIdentity.load(consortium_dir, node_dir.name).certificate)
        roles[identity.name] = identity.role
        orgs[identity.name] = identity.org
    nodes: list[Node] = []

    def add(name: str, role: str) -> Node:
        data = directory / "data" / name
        node = Node(name, role, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                    str(data), str(directory / "logs" / f"{name}.log"))
        node.args = ["--name", name, "--consortium-dir", str(consortium_dir),
                     "--data-dir", str(data), "--listen", node.grpc,
                     "--metrics-listen", node.metrics]
        nodes.append(node)
        return node

    orderers = [add(o.id, "orderer") for o in genesis.orderers]
    orderer_flags = ["--orderer", ",".join(f"{o.name}={o.grpc}" for o in orderers)]
    for o in orderers:
        o.args += ["--peer", ",".join(f"{p.name}={p.grpc}" for p in orderers if p is not o)]
    committers = [add(n, "committer") for n, r in sorted(roles.items()) if r == Role.COMMITTER]
    endorsers = [add(n, "endorser") for n, r in sorted(roles.items()) if r == Role.ENDORSER]
    for node in committers + endorsers:
        node.args += orderer_flags
    # Every process runs on this host: an endorser reads its own organisation's committer's
    # ledger instead of keeping a replica (core ledger/store_follower.py).
    for endorser in endorsers:
        own = own_committer(endorser, committers, orgs)
        if own is not None:
            endorser.args += [COMMITTER_LEDGER, str(Path(own.data_dir) / "ledger")]
    devices = [(n, r) for n, r in sorted(roles.items()) if r in (Role.METER, Role.PLANT)]
    for name, role in devices:
        agent = add(name, "meter-agent")
        agent.args += ["--endorser", endorsers[0].grpc, "--committer", committers[0].grpc,
                       "--mode", "plant" if role == Role.PLANT else "meter",
                       "--backfill-hours", str(backfill_hours if demo else 0),
                       "--pace", str(reading_pace)]
        if demo and role == Role.PLANT:
            agent.args += DEMO_PLANT_ARGS
            if contract_seconds:
                agent.args += ["--contract-seconds", str(contract_seconds)]
    # New-energy trading (issue 6): meters ask each other for plants (claim 3) and, in the
    # demo, buy supply contracts of `contract_wh`; the initiating organisation's issuer runs
    # as a meter-agent in issuer mode (see gridledger_meter_agent/issuer.py for why).
    meters = [n for n in nodes if n.role == "meter-agent" and roles[n.name] == Role.METER]
    for meter in meters:
        others = [f"{o.name}={o.grpc}" for o in meters if o is not meter]
        meter.args += ["--contract-wh", str(contract_wh if demo else 0)]
        # Sellers order a slot earlier than buyers (half a slot for the producers, a quarter
        # for the others), so their orders rest on the book when the buyers' come and cross;
        # orders placed in the same instant would each rest unmatched.
        lead = genesis.market.slot_seconds // 4
        if demo and meter.name in consumers:
            meter.args += DEMO_CONSUMER_ARGS
            lead = 0
        elif demo and meter.name in producers:
            meter.args += DEMO_PRODUCER_ARGS
            lead = genesis.market.slot_seconds // 2
        meter.args += ["--presale-share", str(presale_share if demo else 0),
                       "--presale-every", str(presale_every), "--presale-lead", str(lead)]
        meter.args += ["--neighbour", ",".join(others)] if others else []
    # The initiating organisation's own agents: the coin issuer, and the settlement agent
    # that settles slots and closes expired contracts (not the balancing account, whose key
    # no process holds).
    for name, role in sorted(roles.items()):
        if role == Role.ISSUER and genesis.initiating_account(name, role):
            mode = "issuer"
        elif (role == Role.SETTLEMENT and genesis.initiating_account(name, role)
              and name != genesis.settlement.balancing_account):
            mode = "settlement"
        else:
            continue
        add(name, "meter-agent").args += ["--mode", mode, "--endorser", endorsers[0].grpc,
                                          "--committer", committers[0].grpc]
    return Network(directory, consortium_dir, nodes)


def own_committer(endorser: Node, committers: list[Node], orgs: dict[str, str]) -> Node | None:
    """The first committer of the endorser's own organisation (`orgs`: node -> organisation):
    the only ledger it may take the state from. None: its organisation runs no committer."""
    return next((c for c in committers if orgs[c.name] == orgs[endorser.name]), None)


ROLE_ORDER = ("orderer", "committer", "endorser", "meter-agent")
COMMITTER_LEDGER = "--committer-ledger"


def with_own_replica(args: list[str]) -> list[str]:
    """An endorser's planned flags without `--committer-ledger`: it keeps its own replica
    (a container outside its committer's pod sees only its own data volume)."""
    if COMMITTER_LEDGER not in args:
        return list(args)
    at = args.index(COMMITTER_LEDGER)
    return args[:at] + args[at + 2:]


def start(network: Network, *, wait: float = 60.0,
          roles: tuple[str, ...] = ROLE_ORDER) -> None:
    """Start the nodes of `roles` (orderers first), record pids, wait until all report
    SERVING. Benchmarks start a subset (e.g. only the orderers)."""
    (network.directory / "logs").mkdir(parents=True, exist_ok=True)
    order = [role for role in ROLE_ORDER if role in roles]
    try:
        for role in order:
            for node in network.by_role(role):
                _spawn(node)
            network.save()
            for node in network.by_role(role):
                wait_healthy(network, node, wait)
    except BaseException:
        stop(network)
        raise
    network.save()


def wait_healthy(network: Network, node: Node, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not pid_alive(node.pid):
            raise RuntimeError(f"{node.name} exited during start-up; see {node.log}")
        # A new channel per look: one made before the server listened was seen to stay
        # unconnected for about 20 s after the server was up (each of its connection
        # attempts timing out), which held every role's start-up back that long.
        with secure_channel(node.grpc, network.tls()) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as exc:
                last = exc.code().name  # type: ignore[attr-defined]
        time.sleep(0.2)
    raise TimeoutError(f"{node.name} not healthy after {timeout:.0f} s ({last}); see {node.log}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _is_ours(node: Node) -> bool:
    """Only signal a pid that still runs this node (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return node.data_dir.encode() in cmdline


def stop_node(node: Node, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    stop_nodes([node], timeout, sig)


def stop_nodes(nodes: list[Node], timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal all of `nodes` at once, wait up to `timeout` for them to exit, then SIGKILL the
    rest. Only pids that still run the node (its data dir on the command line) are touched."""
    running = [n for n in nodes if pid_alive(n.pid) and _is_ours(n)]
    for node in running:
        os.kill(node.pid, sig)
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        running = [n for n in running if pid_alive(n.pid)]
        time.sleep(0.05)
    for node in running:
        os.kill(node.pid, signal.SIGKILL)
    for node in running:
        while pid_alive(node.pid):
            time.sleep(0.05)


def stop(network: Network) -> None:
    """Stop every node, devices first and orderers last (each role's nodes together), with
    SIGTERM and, after 10 s, SIGKILL."""
    if (network.directory / "containers.json").exists():  # started with --containers
        from gridctl import devnet_containers
        return devnet_containers.stop(network)
    for role in ["meter-agent", "endorser", "committer", "orderer"]:
        stop_nodes(network.by_role(role))


def _spawn(node: Node) -> None:
    """Start the node's process in its own session (so a terminal's Ctrl-C reaches only the
    launcher, which stops the nodes in order), logging to its log file."""
    Path(node.data_dir).mkdir(parents=True, exist_ok=True)
    with open(node.log, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", MODULES[node.role], *node.args],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=grpc_env.environment(os.environ))
    node.pid = proc.pid


def restart_node(network: Network, node: Node, wait: float = 60.0) -> None:
    _spawn(node)
    network.save()
    wait_healthy(network, node, wait)
