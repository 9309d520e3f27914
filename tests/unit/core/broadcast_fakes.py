"""For fakes of the endorser's broadcaster (the orderers' side of the network boundary)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gridledger.common.v1 import envelope_pb2
from gridledger.orderer.v1 import orderer_pb2
from gridledger_endorser.sealing import Seal, sealed


class SealsThenBroadcasts:
    """`seal_and_broadcast` as the real broadcaster does it for one group: endorse the items
    under one signature, then hand the endorsed transactions to the fake's `broadcast_many`
    (or its `broadcast`, one by one, an exception being that item's result)."""

    def broadcast(self, endorsed_transaction: bytes,
                  tx_id: str) -> orderer_pb2.BroadcastResponse:
        raise NotImplementedError

    def on_block(self, tx_ids: Sequence[str]) -> None:
        """The real broadcaster's watch of acknowledgements: not faked."""

    def broadcast_many(self, items: list[tuple[bytes, str]]
                       ) -> list[orderer_pb2.BroadcastResponse | BaseException]:
        results: list[orderer_pb2.BroadcastResponse | BaseException] = []
        for tx, tx_id in items:
            try:
                results.append(self.broadcast(tx, tx_id))
            except Exception as exc:
                results.append(exc)
        return results

    def seal_and_broadcast(self, items: Sequence[tuple[envelope_pb2.SignedEnvelope, str]],
                           seal: Seal
                           ) -> list[tuple[orderer_pb2.BroadcastResponse | BaseException,
                                           envelope_pb2.Endorsement | None]]:
        made = sealed([envelope for envelope, _ in items], seal)
        answers = self.broadcast_many([(raw, tx_id) for (raw, _), (_, tx_id)
                                       in zip(made, items, strict=True)])
        return [(answer, endorsement) for answer, (_, endorsement)
                in zip(answers, made, strict=True)]

    def seal_and_broadcast_async(self, items: Sequence[tuple[envelope_pb2.SignedEnvelope, str]],
                                 seal: Seal, loop: asyncio.AbstractEventLoop
                                 ) -> asyncio.Future[list[tuple[
                                     orderer_pb2.BroadcastResponse | BaseException,
                                     envelope_pb2.Endorsement | None]]]:
        """The asyncio server's variant: the same answers, as a future already resolved."""
        future = loop.create_future()
        future.set_result(self.seal_and_broadcast(items, seal))
        return future
