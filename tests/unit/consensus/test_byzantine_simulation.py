"""Seeded schedules with a byzantine adversary (see consensus.simulation and .adversary).

GRIDLEDGER_SIM_BYZ_SCHEDULES sets how many byzantine schedules run (default 1000); a failing
one prints its replay line (GRIDLEDGER_SIM_SEED=<seed> GRIDLEDGER_SIM_MODE=byzantine ...).
Also here: the scripted stall of issue 12 (a withheld prepare certificate revealed after
honest restarts) and mutation tests proving that the byzantine schedules catch a replica
that ignores its lock and a quorum one signature too small.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest

from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import lottery, simulation
from gridledger_core.consensus.actions import Broadcast, Send
from gridledger_core.consensus.adversary import Adversary, Tactic, craft_block
from gridledger_core.consensus.protocol import Replica
from gridledger_core.consensus.quorum import Quorum
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, block_hash

SCHEDULES = int(os.environ.get("GRIDLEDGER_SIM_BYZ_SCHEDULES", "1000"))
CHUNKS = 10


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_byzantine_schedules(chunk: int) -> None:
    failures = []
    for seed in range(chunk, SCHEDULES, CHUNKS):
        result = simulation.run_schedule(seed, mode="byzantine")
        if result.violations:
            failures.append(result)
    assert not failures, simulation.failure_report(failures)


def test_byzantine_schedules_cover_every_tactic_and_f_2() -> None:
    """The schedules ``test_byzantine_schedules`` runs draw every tactic and fault often,
    and f = 2 with n = 7 (drawing a schedule is cheap: boot and plan, no run)."""
    seen: Counter[str] = Counter()
    for seed in range(SCHEDULES):
        sim = simulation.Simulation(seed, mode="byzantine")
        sim.prepare()
        seen.update(sim.features)
    for tactic in Tactic:
        assert seen[f"byz-{tactic}"] >= SCHEDULES // 50, tactic
    for fault in ("crash-restart", "rolling-restart", "vote-loss", "clock-skew", "partition",
                  "loss", "frozen-primary"):
        assert seen[fault] >= SCHEDULES // 20, fault
    assert seen["byzantine-1-of-4"] >= SCHEDULES // 5
    assert seen["byzantine-2-of-7"] >= SCHEDULES // 10  # f = 2 with n = 7
    assert seen["byzantine-1-of-7"] >= 1


@pytest.mark.parametrize("seed", [0, 3])  # n = 4; n = 7 with two byzantine
def test_byzantine_schedules_with_real_ed25519_and_ecvrf(seed: int) -> None:
    result = simulation.Simulation(seed, real_crypto=True, mode="byzantine").run()
    assert not result.violations, simulation.failure_report([result])


def test_the_adversarys_crafted_pre_blocks_are_what_honest_replicas_prepare() -> None:
    """The adversary's blocks (any content and time, its own key and VRF) pass the honest
    checks: an honest replica PREPAREs one, and two different ones of one (height, round)
    go to two replicas that each PREPARE theirs (equivocation an honest replica cannot
    see alone)."""
    probe = simulation.Simulation(0, n=4)
    primary0 = lottery.primary(probe.ids, probe.genesis_seed, 0, 0)
    sim = simulation.Simulation(0, n=4, mode="byzantine", byzantine=[primary0])
    sim.boot()
    honest = [oid for oid in sim.ids if oid != primary0]
    for i, oid in enumerate(honest[:2]):
        block = craft_block(sim, primary0, 0, 0, GENESIS_PREVIOUS_HASH, sim.genesis_seed,
                            [b"ok:crafted:%d" % i], sim.now)
        replica = sim.instances[oid].replica
        assert replica is not None
        msg = consensus_pb2.ConsensusMessage(
            proposal=consensus_pb2.Proposal(height=0, round=0, block=block)
        )
        actions = replica.on_message(primary0, msg, sim.now)
        votes = [a.message.vote for a in actions if isinstance(a, Send)
                 and a.message.WhichOneof("body") == "vote"]
        assert [v.block_hash for v in votes] == [block_hash(block.header)]


# --- the scripted stall (issue 12) ---------------------------------------------------------


class StallAdversary(Adversary):
    """Round 0's byzantine primary, scripted: it proposes B to every honest replica, keeps
    B's prepare certificate to itself and otherwise sends nothing until ``reveal``."""

    def __init__(self, sim: simulation.Simulation) -> None:
        super().__init__(sim, tactics=())

    def start(self) -> None:
        pass  # no initiative of its own

    def on_output(self, inst: simulation.Instance, action: Send | Broadcast) -> None:
        msg = action.message
        kind = msg.WhichOneof("body")
        if kind == "proposal" and msg.proposal.round == 0 and isinstance(action, Broadcast):
            for to in self.honest_ids:
                self.send(inst.orderer, to, msg)
        elif kind == "prepared" and msg.prepared.round == 0:
            self.withheld.append(msg.prepared)
        # Everything else (its votes, round changes, the commit phase) stays home.


def _stall_cluster() -> tuple[simulation.Simulation, StallAdversary, list[str]]:
    probe = simulation.Simulation(0, n=4)
    primary0 = lottery.primary(probe.ids, probe.genesis_seed, 0, 0)
    sim = simulation.Simulation(
        0, n=4, mode="byzantine", byzantine=[primary0], adversary=StallAdversary
    )
    adversary = sim.adversary
    assert isinstance(adversary, StallAdversary)
    ranking = lottery.ranking(sim.ids, sim.genesis_seed, 0, 0)
    return sim, adversary, ranking


def test_withheld_prepare_certificate_revealed_after_restarts_does_not_stall() -> None:
    """n = 4. The byzantine primary of round 0 sends pre-block B to the honest replicas,
    collects their PREPAREs and withholds the prepare certificate. Later rounds' honest
    proposals get no certificate (one honest replica's PREPAREs are lost), so every honest
    replica's last prepare is a later block. The honest replicas restart one by one; then
    the byzantine orderer sends a ROUND_CHANGE carrying B's prepare certificate: every honest
    replica locks on B. The cluster must still commit within a few rounds."""
    sim, adversary, ranking = _stall_cluster()
    byz = ranking[0]
    honest = ranking[1:]

    def lose(src: str, dst: str, msg: consensus_pb2.ConsensusMessage) -> bool:
        """In every round >= 1, one honest replica's PREPARE to the primary is lost (the
        replica after the primary in the ranking), so no later block gets a certificate."""
        if msg.WhichOneof("body") != "vote" or msg.vote.phase != consensus_pb2.VOTE_PHASE_PREPARE:
            return False
        primary = ranking[msg.vote.round % 4]
        return (
            msg.vote.round >= 1
            and primary in honest
            and src == honest[(honest.index(primary) + 1) % 3]
        )

    sim.net_filter = lose
    sim.boot()
    txs = [b"ok:stall:%d" % i for i in range(3)]
    for name in [byz, *honest]:
        sim.submit(sim.instances[name], txs)
    sim.run_until(1.5)  # rounds 0 (B), 1 and 2 (no certificate) are over; round 3 runs
    assert len(adversary.withheld) == 1, "the round-0 prepare certificate formed and was kept"
    withheld = adversary.withheld[0]
    for name in honest:
        replica = sim.instances[name].replica
        assert replica is not None and replica.height == 0 and replica.round >= 3
    # Rolling restart: memory is gone, only the persisted records remain.
    at = 1.5
    for name in honest:
        sim.schedule(at, lambda name=name: sim.crash(sim.instances[name]))
        sim.schedule(at + 0.05, lambda name=name: sim.start(sim.instances[name]))
        at += 0.1
    sim.run_until(at + 0.2)
    # The reveal: a signed ROUND_CHANGE with B's certificate, to every honest replica.
    assert adversary.reveal(byz, withheld, honest, as_round_change=True)
    adversary.go_silent()
    sim.net_filter = None
    reveal_at = sim.now
    sim.run_until(reveal_at + 0.1)
    for name in honest:
        replica = sim.instances[name].replica
        assert replica is not None
        assert replica.height >= 1 or replica._lock is not None  # the lock is B's now
    sim.submit_calm([b"ok:calm:%d" % i for i in range(2)])
    sim.run_until(reveal_at + 15.0)  # rounds 3..6 take at most 0.2 * (8 + 16 + 16 + 16) s
    sim.check_liveness()
    result = sim.result()
    assert not result.violations, result.violations
    blocks = sim.instances[honest[0]].durable.blocks
    assert blocks and block_hash(blocks[0].header) == withheld.block_hash, "B is final"
    # Within a few rounds of the reveal (made in round 3 or 4; round 4 is the byzantine's).
    assert blocks[0].metadata.commit_certificate.round <= 7
    final = {tx for blk in blocks for tx in blk.transactions}
    assert set(txs) <= final


# --- mutations the byzantine schedules must catch -----------------------------------------


def _first_caught(seeds: Iterator[int], kind: str) -> int | None:
    for seed in seeds:
        result = simulation.run_schedule(seed, mode="byzantine")
        if any(v.startswith(kind) for v in result.violations):
            return seed
    return None


def test_byzantine_schedules_catch_a_quorum_of_2f(monkeypatch: pytest.MonkeyPatch) -> None:
    """Certificates of 2f signatures (one short) must let the adversary split the chain."""
    monkeypatch.setattr(Quorum, "q", property(lambda self: 2 * self.f))
    assert _first_caught(iter(range(400)), "agreement") is not None


def _without_lock(method):  # type: ignore[no-untyped-def]
    """``method`` run as if the replica held no lock (a lock adopted meanwhile is kept)."""

    def weakened(self: Replica, *args: object, **kwargs: object) -> object:
        lock, self._lock = self._lock, None
        try:
            return method(self, *args, **kwargs)
        finally:
            if self._lock is None:
                self._lock = lock

    return weakened


@pytest.mark.parametrize("also_when_proposing", [False, True])
def test_byzantine_schedules_catch_replicas_that_ignore_their_lock(
    monkeypatch: pytest.MonkeyPatch, also_when_proposing: bool
) -> None:
    """Honest replicas that PREPARE whatever the primary proposes, locked or not (and, in
    the second variant, propose fresh blocks while locked) must let the adversary finalise
    two blocks at one height."""
    monkeypatch.setattr(Replica, "_on_proposal", _without_lock(Replica._on_proposal))
    if also_when_proposing:
        monkeypatch.setattr(Replica, "_maybe_propose", _without_lock(Replica._maybe_propose))
    assert _first_caught(iter(range(400)), "agreement") is not None
