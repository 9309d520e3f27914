"""The container launcher's pure parts: the flags a container gets and what it mounts (the
containers themselves run in tests/integration/test_containers.py)."""

from __future__ import annotations

from pathlib import Path

from gridctl import devnet, devnet_containers


def test_container_args_keep_the_plan_but_use_the_manifests_paths(consortium_dir: Path,
                                                                   tmp_path: Path) -> None:
    network = devnet.plan(tmp_path, consortium_dir, demo=False)
    devnet_containers.plan(network)
    for node in network.nodes:
        args = devnet_containers.container_args(node)
        # A container sees only its own volume: an endorser keeps a replica there.
        dropped = 2 if devnet.COMMITTER_LEDGER in node.args else 0
        assert len(args) == len(node.args) - dropped
        assert devnet.COMMITTER_LEDGER not in args
        given = dict(zip(args[::2], args[1::2], strict=False))
        assert given["--consortium-dir"] == "/etc/gridledger/consortium"
        assert given["--data-dir"] == "/var/lib/gridledger"
        assert given["--listen"] == node.grpc and given["--name"] == node.name
        assert given["--health-listen"].startswith("127.0.0.1:")
        # The plan itself is unchanged: the host's paths stay in network.json.
        assert str(consortium_dir) in node.args and node.data_dir in node.args


def test_each_node_mounts_only_its_own_keys(consortium_dir: Path, tmp_path: Path) -> None:
    network = devnet.plan(tmp_path, consortium_dir, demo=False)
    for node in network.nodes:
        staged = devnet_containers._stage_consortium(network, node)
        files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        assert files == ["genesis.json", *(f"nodes/{node.name}/{f}" for f in sorted(
            devnet_containers.KEY_FILES)), "tls-ca-bundle.pem"]
        key = staged / "nodes" / node.name / "tls.key"
        assert key.read_bytes() == (consortium_dir / "nodes" / node.name / "tls.key").read_bytes()
        assert key.stat().st_mode & 0o777 == 0o440


def test_container_names_differ_per_devnet_directory(consortium_dir: Path,
                                                     tmp_path: Path) -> None:
    a = devnet.plan(tmp_path / "a", consortium_dir, demo=False)
    b = devnet.plan(tmp_path / "b", consortium_dir, demo=False)
    node_a, node_b = a.node("committer-1"), b.node("committer-1")
    assert devnet_containers.container_name(a, node_a) != devnet_containers.container_name(
        b, node_b)
    assert devnet_containers.container_name(a, node_a).endswith("-committer-1")


def test_an_endorser_reads_its_own_organisations_committers_ledger(consortium_dir: Path,
                                                                   tmp_path: Path) -> None:
    """On one host the devnet's endorser (gridops) reads committer-1's ledger (gridops), never
    committer-2's (utility: another organisation's word it must not take)."""
    network = devnet.plan(tmp_path, consortium_dir, demo=False)
    [endorser] = network.by_role("endorser")
    at = endorser.args.index(devnet.COMMITTER_LEDGER)
    assert endorser.args[at + 1] == str(Path(network.node("committer-1").data_dir) / "ledger")


def test_an_endorser_never_takes_another_organisations_committer() -> None:
    def node(name: str, role: str) -> devnet.Node:
        return devnet.Node(name, role, "", "", f"/data/{name}", "")
    endorser = node("endorser-9", "endorser")
    others = [node("committer-1", "committer"), node("committer-2", "committer")]
    orgs = {"endorser-9": "utility", "committer-1": "gridops", "committer-2": "utility"}
    assert devnet.own_committer(endorser, others, orgs) is others[1]
    assert devnet.own_committer(endorser, others[:1], orgs) is None


def test_with_podman_an_endorser_shares_its_committers_pod_and_reads_its_ledger(
        consortium_dir: Path, tmp_path: Path) -> None:
    """As the manifests run it: the endorser beside the committer of its own organisation
    (the plan's --committer-ledger), that committer's volume at the same path, so the
    ledger at /var/lib/gridledger/ledger, its own state in the volume's directory the
    committer makes for it; without a pod (Docker) a replica of its own."""
    network = devnet.plan(tmp_path, consortium_dir, demo=False)
    devnet_containers.plan(network)
    shared = devnet_containers.pods(network)
    assert {e: c.name for e, c in shared.items()} == {"endorser-1": "committer-1"}
    endorser = network.node("endorser-1")
    args = devnet_containers.container_args(endorser, shared["endorser-1"])
    given = dict(zip(args[::2], args[1::2], strict=False))
    assert given["--committer-ledger"] == "/var/lib/gridledger/ledger"
    assert given["--data-dir"] == "/var/lib/gridledger/endorser"
    assert len(args) == len(endorser.args)
    assert devnet.COMMITTER_LEDGER not in devnet_containers.container_args(endorser)
    assert devnet_containers.pod_name(network, shared["endorser-1"]) == \
        devnet_containers.container_name(network, network.node("committer-1")) + "-pod"

