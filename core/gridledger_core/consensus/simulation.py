"""Seeded network simulator that runs real ``Replica`` objects under injected faults.

One schedule = one integer seed and a mode. From the seed the simulator draws the cluster
size, the faults of a chaos phase (message loss, delay and reordering, duplication,
partitions and heals, crash and restart from persisted state only, a frozen primary) and
client traffic. After the chaos phase the network heals, every crashed replica restarts,
every frozen one resumes, and fresh ("calm") transactions arrive.

Modes:
- ``honest``: every identity runs honest code; the only byzantine behaviour is Twins (two
  honest copies of one identity and key), drawn for a quarter of the schedules.
- ``byzantine``: up to f identities (n = 4: one; n = 7: one or two) are driven by
  ``adversary.Adversary``, which holds their real keys and does what a key holder can:
  equivocate per recipient, propose ignoring its lock, withhold certificates and reveal them
  later, address chosen peers only, backdate block times, replay, flood, and send
  syntactically valid garbage with extreme integers (see that module). The honest faults
  above are combined with it. After the heal the byzantine identities keep misbehaving or
  go silent. Byzantine schedules also draw honest faults that set the adversary's plays
  up: a congested spell (votes to honest replicas lost, rounds end without certificates),
  a rolling restart of every honest replica, and clock skew (each honest replica's clock
  off the simulated time by up to a quarter of ``max_clock_skew``).

Invariants checked on every schedule (honest instances only):
- agreement: no two honest replicas ever deliver different blocks at one height;
- validity: every delivered block passes ``certificate.verify_block`` against the
  replica's own previous block, contains only valid transactions and no tx id twice on the
  chain, and comes with the seed the VRF gives;
- block time: a delivered block's time is not before the previous block's, not more than
  ``max_clock_skew`` ahead of the simulated clock when it is delivered and not more than
  ``max_clock_skew`` before the moment an honest replica first saw it proposed (the
  simulated time ``now`` starts at 0; a replica's clock is ``now`` plus its offset, zero
  unless the schedule draws clock skew, and honest primaries stamp blocks from it; with
  skew the bounds widen by the largest offset);
- robustness: no replica call raises (whatever the bytes, a replica reaches a verdict);
- accountability: equivocation evidence an honest replica reports (an action with an
  ``evidence`` field) names a faulty orderer, never an honest one, and verifies alone;
- liveness: with at most f faulty identities (the Twins pair counts as one) every
  transaction submitted after the heal is final at every honest replica before the end
  (a bounded simulated time after the heal).

Signatures and the VRF are HMAC stand-ins by default (fast); ``real_crypto=True`` uses
Ed25519 and the ECVRF. Only the replica objects are under test: the simulator executes
actions the way the adapter must (Persist/Deliver before later sends, SetTimer replaces;
action types it does not know, e.g. evidence reports, are ignored).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nacl import bindings as sodium

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import consensus_pb2
from gridledger_core.consensus import certificate, lottery, vrf
from gridledger_core.consensus.actions import (
    Action,
    Broadcast,
    Deliver,
    Persist,
    Send,
    SetTimer,
)
from gridledger_core.consensus.adversary import Adversary
from gridledger_core.consensus.protocol import ChainTip, Dependencies, Replica, ReplicaConfig
from gridledger_core.consensus.quorum import Quorum
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, block_hash

MODES = ("honest", "byzantine")
REPLAY_HINT = (
    "GRIDLEDGER_SIM_SEED={seed} GRIDLEDGER_SIM_MODE={mode} "
    ".venv/bin/pytest tests/unit/consensus/test_consensus_simulation.py -k replay"
)
MAX_CLOCK_SKEW = 1.0  # the simulated replicas' max_clock_skew (seconds of simulated time)


# --- transactions of the simulated clients -----------------------------------------------


def tx_id_of(tx: bytes) -> bytes:
    return hashlib.sha256(tx).digest()[:16]


def validate_tx(tx: bytes) -> bool | str:
    """Stand-in for the endorsement check: ``ok:`` transactions are endorsed."""
    return True if tx.startswith(b"ok:") else "not endorsed"


# --- identities --------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    orderer: str
    seed: bytes
    public_key: bytes


class Crypto:
    """Signatures and VRF for the whole cluster, real or HMAC stand-ins."""

    def __init__(self, ids: list[str], real: bool) -> None:
        self.real = real
        self.identities: dict[str, Identity] = {}
        for oid in ids:
            seed = hashlib.sha256(b"gridledger-sim-key/" + oid.encode()).digest()
            pk = vrf.public_key(seed) if real else hashlib.sha256(b"pk/" + seed).digest()
            self.identities[oid] = Identity(oid, seed, pk)
        self.public_keys = {oid: ident.public_key for oid, ident in self.identities.items()}
        self._by_key = {ident.public_key: ident for ident in self.identities.values()}
        self._real_verify = certificate.ed25519_verifier(self.public_keys)

    def signer(self, oid: str) -> Callable[[bytes], bytes]:
        seed = self.identities[oid].seed
        if self.real:
            sk = sodium.crypto_sign_seed_keypair(seed)[1]
            return lambda msg: sodium.crypto_sign(msg, sk)[:64]
        return lambda msg: hmac.digest(seed, msg, "sha256")

    def verify_sig(self, oid: str, msg: bytes, sig: bytes) -> bool:
        if self.real:
            return self._real_verify(oid, msg, sig)
        ident = self.identities.get(oid)
        return ident is not None and hmac.compare_digest(
            hmac.digest(ident.seed, msg, "sha256"), sig
        )

    def vrf_prover(self, oid: str) -> Callable[[bytes], bytes]:
        seed = self.identities[oid].seed
        if self.real:
            return lambda alpha: vrf.prove(seed, alpha)
        return lambda alpha: hmac.digest(seed, b"vrf/" + alpha, "sha256")

    def vrf_verify(self, pk: bytes, proof: bytes, alpha: bytes) -> bytes | None:
        if self.real:
            return vrf.verify(pk, proof, alpha)
        ident = self._by_key.get(pk)
        if ident is None or not hmac.compare_digest(
            hmac.digest(ident.seed, b"vrf/" + alpha, "sha256"), proof
        ):
            return None
        return hashlib.sha512(proof).digest()


# --- one simulated orderer process ---------------------------------------------------------


@dataclass
class Durable:
    """What survives a crash: the block store (with seeds) and the persisted records."""

    blocks: list[block_pb2.Block] = field(default_factory=list)
    seeds: list[bytes] = field(default_factory=list)
    tx_ids: set[bytes] = field(default_factory=set)  # of every transaction in ``blocks``
    records: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Instance:
    name: str  # unique per process; twins share ``orderer`` but not ``name``
    orderer: str
    honest: bool
    byzantine: bool = False  # driven by the adversary (its replica only tracks state)
    durable: Durable = field(default_factory=Durable)
    replica: Replica | None = None
    frozen: bool = False
    held: list[tuple[str, bytes]] = field(default_factory=list)
    timer_gen: dict[str, int] = field(default_factory=dict)
    due_while_frozen: dict[str, int] = field(default_factory=dict)
    incarnation: int = 0
    clock_offset: float = 0.0  # this process's clock minus the simulated time


# --- the schedule ------------------------------------------------------------------------


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    slow: float = 0.0  # probability of a long delay (reordering)
    # Extra loss of certificates only: leaves replicas with different locks and heights.
    certificate_loss: float = 0.0
    # Extra loss of votes to honest replicas only (congested inbound links): their rounds
    # end without certificates while each replica holds a prepare.
    vote_loss: float = 0.0
    partition: tuple[frozenset[str], ...] | None = None  # groups of instance names


# (source instance name, destination instance name, message) -> drop it?
NetFilter = Callable[[str, str, consensus_pb2.ConsensusMessage], bool]


@dataclass
class SimResult:
    seed: int
    n: int
    features: set[str]
    heights: dict[str, int]
    violations: list[str]
    events: int
    mode: str = "honest"
    calm_latency: float | None = None

    @property
    def replay(self) -> str:
        return REPLAY_HINT.format(seed=self.seed, mode=self.mode)


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        real_crypto: bool = False,
        n: int | None = None,
        mode: str = "honest",
        byzantine: list[str] | None = None,
        adversary: Callable[[Simulation], Adversary] | None = None,
    ) -> None:
        """``byzantine`` names the adversary's identities (default: drawn from the seed in
        byzantine mode); ``adversary`` builds it (default: ``adversary.Adversary`` with
        tactics drawn from the seed)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.seed = seed
        self.mode = mode
        self.rng = random.Random(seed if mode == "honest" else f"{mode}/{seed}")
        rng = self.rng
        if n is None:
            n = 7 if rng.random() < (0.1 if mode == "honest" else 0.35) else 4
        self.n = n
        self.quorum = Quorum(self.n)
        self.ids = [f"o{i}" for i in range(self.n)]
        self.crypto = Crypto(self.ids, real_crypto)
        self.genesis_seed = lottery.genesis_seed(hashlib.sha256(b"sim-genesis").digest())
        self.round_timeout = 0.2
        self.features: set[str] = set()
        self.violations: list[str] = []
        self.now = 0.0
        self.events = 0
        self._queue: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.faults = Faults()
        self.net_filter: NetFilter | None = None
        self.instances: dict[str, Instance] = {}
        if mode == "byzantine" and byzantine is None:
            f = self.quorum.f
            count = f if f == 1 or rng.random() < 0.75 else rng.randint(1, f)
            byzantine = rng.sample(self.ids, count)
        self.byzantine_ids: list[str] = sorted(byzantine or [])
        if len(self.byzantine_ids) > self.quorum.f:
            raise ValueError("more byzantine identities than f: nothing would be guaranteed")
        twin = None
        if mode == "honest" and rng.random() < 0.25:
            twin = rng.choice(self.ids)
        for oid in self.ids:
            byz = oid in self.byzantine_ids
            self.instances[oid] = Instance(oid, oid, honest=oid != twin and not byz, byzantine=byz)
        if twin is not None:
            self.features.add("twins")
            self.instances[twin + "'"] = Instance(twin + "'", twin, honest=False)
        if self.byzantine_ids:
            self.features.add(f"byzantine-{len(self.byzantine_ids)}-of-{self.n}")
        self.final: dict[int, tuple[bytes, str]] = {}  # height -> (hash, first instance)
        self.first_seen: dict[bytes, float] = {}  # block hash -> first proposal at an honest
        self.calm_txs: list[bytes] = []
        self.calm_submitted = False
        self.calm_at = 0.0
        # Simulated seconds from the calm transactions' submission until the last honest
        # replica had them all final (None: not yet, or never).
        self.calm_latency: float | None = None
        self.max_events = 60_000 if mode == "honest" else 150_000
        self.max_clock_skew = MAX_CLOCK_SKEW
        self.adversary: Adversary | None = None
        if self.byzantine_ids:
            if adversary is None:
                self.adversary = Adversary.drawn(self)
            else:
                self.adversary = adversary(self)

    # --- plumbing ---------------------------------------------------------------------

    def _push(self, at: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, payload))

    def clock(self, inst: Instance) -> float:
        """The process's clock: the simulated time plus its offset (clock skew)."""
        return self.now + inst.clock_offset

    def schedule(self, at: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` at simulated time ``at`` (for the adversary and scripted tests)."""
        self._push(max(at, self.now), "call", fn)

    def config_for(self, oid: str) -> ReplicaConfig:
        return ReplicaConfig(
            orderer_id=oid,
            orderers=self.crypto.public_keys,
            max_batch_txs=4,
            max_batch_bytes=400,
            max_batch_wait=0.02,
            round_timeout=self.round_timeout,
            max_clock_skew=self.max_clock_skew,
            max_backoff_exponent=4,
            max_pool_txs=64,
            sync_batch=4,
        )

    def _replica_for(self, inst: Instance) -> Replica:
        oid = inst.orderer
        durable = inst.durable
        if durable.blocks:
            tip = ChainTip(
                len(durable.blocks), block_hash(durable.blocks[-1].header), durable.seeds[-1]
            )
        else:
            tip = ChainTip(0, GENESIS_PREVIOUS_HASH, self.genesis_seed)
        deps = simulated_dependencies(self.crypto, oid, durable.blocks)
        return Replica(self.config_for(oid), deps, tip, dict(durable.records))

    def _instances_of(self, oid: str) -> list[Instance]:
        return [inst for inst in self.instances.values() if inst.orderer == oid]

    def _linked(self, a: Instance, b: Instance) -> bool:
        groups = self.faults.partition
        if groups is None:
            return True
        return any(a.name in g and b.name in g for g in groups)

    def transmit(
        self,
        src: Instance,
        dst_oid: str,
        msg: consensus_pb2.ConsensusMessage,
        *,
        extra_delay: float = 0.0,
    ) -> None:
        """Hand ``msg`` from ``src`` to the network for every process of ``dst_oid``: the
        current faults (partition, loss, duplication, delay) apply."""
        data = msg.SerializeToString()
        loss = self.faults.loss
        kind = msg.WhichOneof("body")
        if kind in ("prepared", "decided"):
            loss = max(loss, self.faults.certificate_loss)
        for dst in self._instances_of(dst_oid):
            link_loss = loss
            if kind == "vote" and dst.honest:
                link_loss = max(loss, self.faults.vote_loss)  # congested honest inbound links
            if not self._linked(src, dst) or self.rng.random() < link_loss:
                continue
            if self.net_filter is not None and self.net_filter(src.name, dst.name, msg):
                continue
            copies = 2 if self.rng.random() < self.faults.duplicate else 1
            for _ in range(copies):
                delay = extra_delay + self.rng.uniform(0.001, 0.01)
                if self.rng.random() < self.faults.slow:
                    delay += self.rng.uniform(0.05, 0.6)
                self._push(self.now + delay, "msg", (dst.name, src.orderer, data))

    def _execute(self, inst: Instance, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Persist):
                inst.durable.records[action.key] = action.value
            elif isinstance(action, Deliver):
                self._on_deliver(inst, action)
            elif isinstance(action, (Send, Broadcast)):
                if inst.byzantine and self.adversary is not None:
                    self.adversary.on_output(inst, action)
                elif isinstance(action, Send):
                    self.transmit(inst, action.to, action.message)
                else:
                    for oid in self.ids:
                        if oid != inst.orderer:
                            self.transmit(inst, oid, action.message)
            elif isinstance(action, SetTimer):
                gen = inst.timer_gen.get(action.name, 0) + 1
                inst.timer_gen[action.name] = gen
                # With a clock offset, float rounding could fire a timer a hair before its
                # deadline on the process's clock, forever: let the clock pass it.
                delay = action.delay + (1e-9 if inst.clock_offset else 0.0)
                self._push(self.now + delay, "timer", (inst.name, action.name, gen))
            else:
                self._on_other_action(inst, action)

    def _on_other_action(self, inst: Instance, action: object) -> None:
        """Actions the simulator does not execute. Equivocation evidence (an action with an
        ``evidence`` field) from an honest replica is checked: it must name a faulty
        orderer and verify on its own (accountability); anything else is ignored."""
        ev = getattr(action, "evidence", None)
        if ev is None or not inst.honest or not hasattr(ev, "orderer"):
            return
        self.features.add("evidence")
        accused = self._instances_of(ev.orderer)
        if accused and all(i.honest for i in accused):
            self.violations.append(
                f"accountability: {inst.name} reported honest {ev.orderer} as equivocating"
            )
        try:
            from gridledger_core.consensus import evidence
        except ImportError:  # a protocol revision without evidence
            return
        if not evidence.verify(ev, self.crypto.verify_sig):
            self.violations.append(
                f"accountability: {inst.name} reported evidence that does not verify"
            )

    def _call(self, inst: Instance, what: str, fn: Callable[[], list[Action]]) -> None:
        """Run one replica input; an exception is a violation (no content may stop a node);
        the process crashes and its supervisor restarts it half a second later."""
        try:
            actions = fn()
        except Exception as exc:  # any exception is the finding
            self.violations.append(
                f"robustness: {inst.name} raised {type(exc).__name__} on {what}: {exc}"
            )
            self._crash(inst)
            self._push(self.now + 0.5, "restart", inst.name)
            return
        self._execute(inst, actions)

    # --- invariants -------------------------------------------------------------------

    def _on_deliver(self, inst: Instance, action: Deliver) -> None:
        durable = inst.durable
        block = action.block
        height = len(durable.blocks)
        if durable.blocks:
            prev_hash, prev_seed = block_hash(durable.blocks[-1].header), durable.seeds[-1]
        else:
            prev_hash, prev_seed = GENESIS_PREVIOUS_HASH, self.genesis_seed
        durable.blocks.append(block)
        durable.seeds.append(action.seed)
        ids = [tx_id_of(tx) for tx in block.transactions]
        duplicates = len(set(ids)) != len(ids) or not durable.tx_ids.isdisjoint(ids)
        durable.tx_ids.update(ids)
        if not inst.honest:
            return
        verdict = certificate.verify_block(
            block,
            prev_hash,
            prev_seed,
            self.crypto.public_keys,
            self.crypto.verify_sig,
            expected_number=height,
            vrf_verify=self.crypto.vrf_verify,
        )
        if not verdict.ok:
            self.violations.append(f"validity: {inst.name} h={height}: {verdict.reason}")
        elif verdict.seed != action.seed:
            self.violations.append(f"validity: {inst.name} h={height}: wrong seed delivered")
        if any(validate_tx(tx) is not True for tx in block.transactions):
            self.violations.append(f"validity: {inst.name} h={height}: invalid tx")
        if duplicates:
            self.violations.append(f"validity: {inst.name} h={height}: duplicate tx id")
        bh = block_hash(block.header)
        first = self.final.setdefault(height, (bh, inst.name))
        if first[0] != bh:
            self.violations.append(
                f"agreement: h={height} {first[1]} and {inst.name} delivered different blocks"
            )
        if first[1] == inst.name and verdict.header is not None:
            self._check_block_time(height, bh, verdict.header, durable.blocks)
        if self.calm_latency is None and self.calm_done():
            self.calm_latency = self.now - self.calm_at

    def _check_block_time(
        self,
        height: int,
        bh: bytes,
        header: block_pb2.BlockHeader,
        chain: list[block_pb2.Block],
    ) -> None:
        stamp = _seconds(header.timestamp)
        # Honest clocks are off by at most a quarter of the skew: judge against true time.
        skew = self.max_clock_skew * (1.25 if "clock-skew" in self.features else 1.0)
        if len(chain) >= 2:
            previous = block_pb2.BlockHeader.FromString(chain[-2].header)
            if stamp < _seconds(previous.timestamp):
                self.violations.append(f"block-time: h={height} before the previous block")
        if stamp > self.now + skew + 1e-6:
            self.violations.append(
                f"block-time: h={height} stamped {stamp:.3f}, final at {self.now:.3f}"
            )
        seen = self.first_seen.get(bh)
        if seen is not None and stamp < seen - skew - 1e-6:
            self.violations.append(
                f"block-time: h={height} backdated: stamped {stamp:.3f}, first proposed to an "
                f"honest replica at {seen:.3f} (max_clock_skew {skew})"
            )

    # --- faults -------------------------------------------------------------------------

    def start(self, inst: Instance) -> None:
        """Start (or restart) the process from its durable state."""
        inst.incarnation += 1
        try:
            inst.replica = self._replica_for(inst)
        except Exception as exc:  # a record it cannot restart from
            self.violations.append(
                f"robustness: {inst.name} cannot restart: {type(exc).__name__}: {exc}"
            )
            return
        replica = inst.replica
        self._call(inst, "start", lambda: replica.on_start(self.clock(inst)))

    def crash(self, inst: Instance) -> None:
        self._crash(inst)

    def _crash(self, inst: Instance) -> None:
        inst.replica = None  # memory is gone; timers die with the process
        inst.timer_gen = {k: v + 1 for k, v in inst.timer_gen.items()}
        inst.held.clear()
        inst.frozen = False

    def _unfreeze(self, inst: Instance) -> None:
        inst.frozen = False
        held, inst.held = inst.held, []
        for sender, data in held:
            self._deliver_msg(inst, sender, data)
        due, inst.due_while_frozen = inst.due_while_frozen, {}
        for name, gen in due.items():
            self._fire_timer(inst, name, gen)

    def _deliver_msg(self, inst: Instance, sender: str, data: bytes) -> None:
        replica = inst.replica
        if replica is None:
            return
        if inst.frozen:
            inst.held.append((sender, data))
            return
        msg = consensus_pb2.ConsensusMessage.FromString(data)
        if inst.honest and msg.WhichOneof("body") == "proposal":
            self.first_seen.setdefault(block_hash(msg.proposal.block.header), self.now)
        if inst.byzantine and self.adversary is not None:
            self.adversary.on_input(inst, sender, msg)
        self._call(inst, "a message", lambda: replica.on_message(sender, msg, self.clock(inst)))

    def _fire_timer(self, inst: Instance, name: str, gen: int) -> None:
        replica = inst.replica
        if replica is None or inst.timer_gen.get(name) != gen:
            return
        if inst.frozen:
            inst.due_while_frozen[name] = gen
            return
        self._call(inst, f"timer {name}", lambda: replica.on_timer(name, self.clock(inst)))

    def submit(self, inst: Instance, txs: list[bytes]) -> None:
        replica = inst.replica
        if replica is None or inst.frozen:
            return  # the client's request fails; it may retry elsewhere
        self._call(inst, "transactions", lambda: replica.on_transactions(txs, self.clock(inst)))

    # --- schedule generation ------------------------------------------------------------

    def _plan(self, chaos_end: float) -> None:
        rng = self.rng
        names = list(self.instances)
        honest = [i for i in self.instances.values() if i.honest]
        if rng.random() < 0.6:
            self.features.add("loss")
        if rng.random() < 0.5:
            self.features.add("duplication")
        if rng.random() < 0.6:
            self.features.add("reordering")
        if rng.random() < 0.4:
            self.features.add("certificate-loss")
        self.faults = Faults(
            loss=rng.choice((0.02, 0.1, 0.25)) if "loss" in self.features else 0.0,
            duplicate=rng.choice((0.05, 0.3)) if "duplication" in self.features else 0.0,
            slow=rng.choice((0.05, 0.3)) if "reordering" in self.features else 0.0,
            certificate_loss=rng.choice((0.3, 0.7)) if "certificate-loss" in self.features else 0.0,
        )
        for _ in range(rng.choice((0, 0, 1, 2))):
            start = rng.uniform(0.0, chaos_end)
            shuffled = names[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            groups = (frozenset(shuffled[:cut]), frozenset(shuffled[cut:]))
            self._push(start, "partition", groups)
            self._push(min(chaos_end, start + rng.uniform(0.2, 2.0)), "partition", None)
            self.features.add("partition")
        for _ in range(rng.choice((0, 0, 1, 2, 3))):
            victim = rng.choice(honest)
            start = rng.uniform(0.0, chaos_end)
            self._push(start, "crash", victim.name)
            self._push(min(chaos_end, start + rng.uniform(0.05, 1.5)), "restart", victim.name)
            self.features.add("crash-restart")
        # (Byzantine mode only draws more: the honest schedules stay as they always were.)
        rolling_from = rng.uniform(0.0, chaos_end * 0.8) if self.mode == "byzantine" else 0.0
        if self.mode == "byzantine" and rng.random() < 0.4:
            # A congested spell: many votes lost, rounds end without certificates.
            start = rng.uniform(0.0, chaos_end * 0.6)
            end = min(chaos_end, start + rng.uniform(0.3, 2.0))
            self._push(start, "vote-loss", rng.choice((0.3, 0.6, 0.9)))
            self._push(end, "vote-loss", 0.0)
            rolling_from = min(end, chaos_end * 0.8)
            self.features.add("vote-loss")
        if self.mode == "byzantine" and rng.random() < 0.5:
            # Honest clocks disagree, each within a quarter of max_clock_skew of the true
            # time, so any two within half of it (the skew the bound is there to absorb).
            for inst in honest:
                inst.clock_offset = rng.uniform(-0.25, 0.25) * self.max_clock_skew
            self.features.add("clock-skew")
        if self.mode == "byzantine" and rng.random() < 0.5:
            # A rolling restart (an upgrade): every honest replica in turn, memory lost.
            at = rolling_from
            for victim in rng.sample(honest, len(honest)):
                self._push(at, "crash", victim.name)
                at = min(chaos_end, at + rng.uniform(0.01, 0.3))
                self._push(at, "restart", victim.name)
            self.features.add("rolling-restart")
        if rng.random() < 0.3:
            start = rng.uniform(0.0, chaos_end * 0.7)
            self._push(start, "freeze-primary", None)
            self._push(min(chaos_end, start + rng.uniform(0.3, 2.5)), "unfreeze", None)
            self.features.add("frozen-primary")
        for seq in range(rng.randint(3, 12)):
            at = rng.uniform(0.0, chaos_end)
            kind = b"ok" if rng.random() < 0.85 else b"bad"
            tx = b"%s:chaos:%d:%d" % (kind, self.seed, seq) + b"x" * rng.randint(0, 60)
            targets = rng.sample(names, 2 if rng.random() < 0.2 else 1)  # duplicates too
            for name in targets:
                self._push(at, "tx", (name, [tx]))

    def heal(self) -> None:
        """The faults stop: network whole, every crashed process restarted, none frozen."""
        self.faults = Faults()
        self.net_filter = None
        for inst in self.instances.values():
            if inst.replica is None:
                self.start(inst)
            elif inst.frozen:
                self._unfreeze(inst)
        if self.adversary is not None:
            self.adversary.on_heal()

    def submit_calm(self, txs: list[bytes]) -> None:
        self.calm_txs = list(txs)
        self.calm_submitted = True
        self.calm_at = self.now
        honest = [i for i in self.instances.values() if i.honest]
        for tx in txs:
            self.submit(self.rng.choice(honest), [tx])

    def calm_done(self) -> bool:
        """True once every honest replica has every calm transaction final."""
        if not self.calm_submitted:
            return False
        wanted = {tx_id_of(tx) for tx in self.calm_txs}
        return all(
            wanted <= inst.durable.tx_ids for inst in self.instances.values() if inst.honest
        )

    # --- running ------------------------------------------------------------------------

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "msg":
            name, sender, data = payload
            self._deliver_msg(self.instances[name], sender, data)
        elif kind == "timer":
            name, timer, gen = payload
            self._fire_timer(self.instances[name], timer, gen)
        elif kind == "tx":
            name, txs = payload
            self.submit(self.instances[name], txs)
        elif kind == "call":
            payload()
        elif kind == "partition":
            self.faults.partition = payload
        elif kind == "vote-loss":
            self.faults.vote_loss = payload
        elif kind == "crash":
            self._crash(self.instances[payload])
        elif kind == "restart":
            inst = self.instances[payload]
            if inst.replica is None:
                self.start(inst)
        elif kind == "freeze-primary":
            live = [i for i in self.instances.values() if i.replica is not None and i.honest]
            if live:
                # Freeze whoever the first live replica believes is primary right now.
                replica = live[0].replica
                assert replica is not None
                for inst in self._instances_of(replica.primary):
                    if inst.replica is not None:
                        inst.frozen = True
        elif kind == "unfreeze":
            for inst in self.instances.values():
                if inst.frozen:
                    self._unfreeze(inst)
        elif kind == "heal":
            self.heal()
        elif kind == "calm-txs":
            self.submit_calm(payload)

    def boot(self) -> None:
        """Start every process (and the adversary)."""
        for inst in self.instances.values():
            self.start(inst)
        if self.adversary is not None:
            self.adversary.start()

    def run_until(self, end: float) -> None:
        while self._queue and self.events < self.max_events:
            at, _, kind, payload = self._queue[0]
            if at > end:
                break
            heapq.heappop(self._queue)
            self.now = max(self.now, at)
            self.events += 1
            self._handle(kind, payload)
        self.now = max(self.now, end) if not self._queue else self.now

    def result(self) -> SimResult:
        heights = {name: len(inst.durable.blocks) for name, inst in self.instances.items()}
        return SimResult(
            self.seed,
            self.n,
            self.features,
            heights,
            self.violations,
            self.events,
            self.mode,
            self.calm_latency,
        )

    def prepare(self) -> float:
        """Boot and draw the whole schedule (``features`` is complete afterwards); returns
        the end of the chaos phase. ``run`` does this first."""
        rng = self.rng
        chaos_end = rng.uniform(1.0, 4.0)
        self.boot()
        self._plan(chaos_end)
        self._push(chaos_end, "heal", None)
        calm = [b"ok:calm:%d:%d" % (self.seed, i) for i in range(rng.randint(1, 6))]
        self._push(chaos_end + 0.5, "calm-txs", calm)
        return chaos_end

    def run(self) -> SimResult:
        chaos_end = self.prepare()
        self.run_until(chaos_end + 40.0)
        self.check_liveness()
        return self.result()

    def check_liveness(self) -> None:
        if self.events >= self.max_events:
            self.violations.append(f"liveness: event budget {self.max_events} exhausted")
        wanted = {tx_id_of(tx) for tx in self.calm_txs}
        for inst in self.instances.values():
            if not inst.honest:
                continue
            missing = wanted - inst.durable.tx_ids
            if missing:
                self.violations.append(
                    f"liveness: {inst.name} at height {len(inst.durable.blocks)} lacks "
                    f"{len(missing)} of {len(wanted)} transactions submitted after the heal"
                )


def _seconds(stamp: Any) -> float:
    """A Timestamp in seconds, without protobuf's range check (a final block out of range
    must be reported as a violation, not stop the simulator)."""
    return stamp.seconds + stamp.nanos / 1e9


def failure_report(results: list[SimResult], shown: int = 8) -> str:
    """What a test prints for failing schedules: the first few, each with its replay line."""
    lines = [
        f"seed {r.seed} (n={r.n}, {', '.join(sorted(r.features))}): "
        f"{r.violations[:3]}\n  replay: {r.replay}"
        for r in results[:shown]
    ]
    return f"{len(results)} failing schedules:\n" + "\n".join(lines)


def run_schedule(
    seed: int, *, real_crypto: bool = False, n: int | None = None, mode: str = "honest"
) -> SimResult:
    """Run one seeded schedule; ``result.violations`` is empty when every invariant held."""
    return Simulation(seed, real_crypto=real_crypto, n=n, mode=mode).run()


def simulated_dependencies(crypto: Crypto, oid: str, blocks: list[block_pb2.Block]
                           ) -> Dependencies:
    """A replica's injected dependencies in a simulation: the cluster's crypto (stand-in or
    real), the simulator's transaction format and the replica's own durable block list."""
    final = FinalIds(blocks)
    return Dependencies(
        sign=crypto.signer(oid),
        verify_sig=crypto.verify_sig,
        vrf_prove=crypto.vrf_prover(oid),
        vrf_verify=crypto.vrf_verify,
        validate_tx=validate_tx,
        tx_id_of=tx_id_of,
        get_block=lambda number: blocks[number] if number < len(blocks) else None,
        is_final=final.contains,
    )


class FinalIds:
    """The tx ids of a durable block list that only grows (an orderer's stored chain): the
    simulator's stand-in for the orderer store's tx-id index."""

    def __init__(self, blocks: list[block_pb2.Block]) -> None:
        self._blocks = blocks
        self._indexed = 0
        self._ids: set[bytes] = set()

    def contains(self, tx_id: bytes) -> bool:
        for block in self._blocks[self._indexed:]:
            self._ids.update(tx_id_of(tx) for tx in block.transactions)
        self._indexed = len(self._blocks)
        return tx_id in self._ids
