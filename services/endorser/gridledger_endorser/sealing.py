"""Endorsing a broadcast group with one signature.

The endorser signs what travels together: the broadcaster's sender thread takes every
transaction waiting for the orderers (one `BroadcastBatch` call) and seals them with one
signature over the Merkle root of their endorsement messages (`SigningIdentity.endorse_batch`);
each transaction carries its own leaf index and audit path. Groups form while the previous
call is in flight, so under load one signature covers about five single calls (1.3 when the
endorser batched only the calls that arrived while it was signing; measured at max rate), and
every orderer and committer verifies one endorsement signature per group.

Every signature made here is entered into the process's verified-signature cache, so the
endorser's own replica does not verify it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import Histogram

from gridledger.common.v1 import envelope_pb2
from gridledger_core.sigcache import VERIFIED
from gridledger_core.signing_identity import SigningIdentity

# The most transactions under one signature. It bounds the audit path an endorsement adds
# to a transaction (service.endorsement_overhead), which the size check admits against.
MAX_GROUP = 256

Seal = Callable[[Sequence[bytes]], list[envelope_pb2.Endorsement]]

BATCH_SIZE = Histogram("gridledger_endorser_endorsement_batch_size",
                       "Transactions endorsed under one batch signature.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


class Sealer:
    """A `Seal`: the endorsements of up to MAX_GROUP payloads under one signature."""

    def __init__(self, identity: SigningIdentity,
                 remember: Callable[[bytes, bytes, bytes], None] = VERIFIED.remember) -> None:
        self._identity = identity
        self._remember = remember

    def __call__(self, payloads: Sequence[bytes]) -> list[envelope_pb2.Endorsement]:
        if not 0 < len(payloads) <= MAX_GROUP:
            raise ValueError(f"a group holds 1 to {MAX_GROUP} payloads, not {len(payloads)}")
        message, endorsements = self._identity.endorse_batch(payloads)
        self._remember(self._identity.signer.public_key_bytes, endorsements[0].signature,
                       message)
        BATCH_SIZE.observe(len(payloads))
        return endorsements


def sealed(envelopes: Sequence[envelope_pb2.SignedEnvelope], seal: Seal
           ) -> list[tuple[bytes, envelope_pb2.Endorsement]]:
    """Each envelope as an endorsed transaction (its bytes, and its endorsement), all under
    one signature."""
    endorsements = seal([e.payload for e in envelopes])
    return [(envelope_pb2.EndorsedTransaction(envelope=e, endorsements=[x]).SerializeToString(),
             x) for e, x in zip(envelopes, endorsements, strict=True)]
