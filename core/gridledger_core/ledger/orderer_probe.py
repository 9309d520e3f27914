"""Which orderer holds a block final, and since when: a node's look past the ledger it follows.

A follower learns blocks from one source (its organisation's committer's store, or one
orderer's Deliver stream). Whether that source keeps up is told by asking the orderers
directly for the next block: one that delivers it with a valid proof holds it final, and the
block's stamp says how long ago the cluster decided it. Asked with `follow=False`, `limit=1`,
within a timeout per orderer, so an orderer that hangs costs a look its timeout and nothing
else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from gridledger.common.v1 import block_pb2
from gridledger.orderer.v1 import orderer_pb2, orderer_pb2_grpc
from gridledger_core.consensus.protocol import block_time
from gridledger_core.ledger.ledger import BlockVerifier, Ledger
from gridledger_core.rpc.tls import TlsFiles, secure_channel

# How far behind the orderers (the age of the first block it lacks, its stamp against this
# node's clock) the ledger read may be before the endorser stops serving: far above a
# committer's usual delay (well under a second), a primary's clock skew (5 s) and an honest
# node's clock error, far below the minutes a meter's trade slot lasts.
MAX_LAG = 30.0


class Verdicts(NamedTuple):
    """What one look at the orderers says about the ledger read at a height: each a reason,
    "" for none, or None when it cannot be told (orderers unreachable)."""

    stall: str | None  # the ledger read stays below a block an orderer holds final
    lag: str | None  # ... and that block was stamped more than MAX_LAG seconds ago


class OrdererProbe:
    """One look at the orderers for the first that holds block `height` final, verified with
    the consortium's block proof against the ledger's block before it (so a hostile orderer
    cannot make a node look stale or lagging, nor lure a follower to itself with a block it
    made up). `StoreFollower`'s `probe` for an endorser reading its committer's ledger
    (`verdicts`), and `BlockFollower`'s look past the orderer it follows (`held`)."""

    def __init__(self, ledger: Ledger, orderers: Sequence[tuple[str, str]], tls: TlsFiles,
                 verify_block: BlockVerifier, timeout: float = 2.0, max_lag: float = MAX_LAG,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._ledger = ledger
        self._max_lag = max_lag
        self._wall_clock = wall_clock
        self._channels = [(name, secure_channel(address, tls)) for name, address in orderers]
        self._stubs = [(name, orderer_pb2_grpc.OrdererServiceStub(channel))
                       for name, channel in self._channels]
        self._verify = verify_block
        self._timeout = timeout

    def verdicts(self, height: int) -> Verdicts:
        """The stall: why the ledger read is stale at `height` (an orderer holds block
        `height` final), "" when every orderer answered without it (an idle chain is not a
        stall). The lag: why it lags, when that block was stamped more than `max_lag` seconds
        ago by this node's clock (a primary's stamp is within the consortium's clock skew of
        honest orderers' clocks), "" when not. Both None when it cannot be told (none had
        it, and some could not be asked)."""
        held = self.held(height)
        if held is None:
            return Verdicts(None, None)
        holder, stamped = held
        if not holder:
            return Verdicts("", "")
        stall = (f"the committer's ledger stays at height {height} while {holder} holds "
                 f"block {height} final")
        age = self._wall_clock() - stamped
        if age <= self._max_lag:
            return Verdicts(stall, "")
        return Verdicts(stall, f"the committer's ledger lags the orderers: it lacks block "
                               f"{height}, final at {holder} and stamped {age:.0f} s ago (more "
                               f"than {self._max_lag:g} s)")

    def held(self, height: int, skip: str = "") -> tuple[str, float] | None:
        """(the first orderer but `skip` that delivers block `height` final, the block's time
        stamp); ("", 0.0) when every one answered without it; None when it cannot be told."""
        previous = self._header_before(height)
        unknown = False
        for name, stub in self._stubs:
            if name == skip:
                continue
            try:
                block = self._first_block(stub, height)
            except Exception:  # unreachable, slow, or an answer that does not decode
                unknown = True
                continue
            stamped = None if block is None else self._final_time(block, height, previous)
            if stamped is not None:
                return name, stamped
        return None if unknown else ("", 0.0)

    def _header_before(self, height: int) -> bytes | None:
        """The header of the ledger's block `height - 1` (read by number: the follower may
        move the tip meanwhile)."""
        if height == 0:
            return None
        stored = self._ledger.get_block(height - 1)
        if stored is None:
            raise RuntimeError(f"the ledger read has no block {height - 1}")
        return stored[0].header

    def close(self) -> None:
        for _, channel in self._channels:
            channel.close()

    def _first_block(self, stub: orderer_pb2_grpc.OrdererServiceStub, height: int
                     ) -> block_pb2.Block | None:
        call = stub.Deliver(orderer_pb2.DeliverRequest(start_number=height, follow=False,
                                                       limit=1),
                            timeout=self._timeout)
        try:
            for response in call:
                return response.block
        finally:
            call.cancel()
        return None

    def _final_time(self, block: block_pb2.Block, height: int,
                    previous: bytes | None) -> float | None:
        """The time stamp of `block` if it is block `height`, final on the chain read so far
        (its proof verified), else None."""
        try:
            header = block_pb2.BlockHeader.FromString(block.header)
            if header.number != height:
                return None
            self._verify(block, header, previous)
        except Exception:  # a block this node would refuse says nothing about the committer
            return None
        stamped = block_time(header)
        return self._wall_clock() if stamped is None else stamped
