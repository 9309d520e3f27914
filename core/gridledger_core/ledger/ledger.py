"""The ledger a committer (and an endorser's replica) keeps: verify a block, re-execute its
transactions in order with the shared rules, and write everything in one atomic batch.

Before a block's transactions, its prologue expires the open orders of every slot whose gate
closure is at or before the block's time (header timestamp): part of the block's state
changes, so every replica (and `gridctl ledger verify`) does the same at the same point."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import lmdb
from google.protobuf.message import DecodeError

from gridledger.common.v1 import block_pb2, envelope_pb2, ledger_pb2, transaction_pb2
from gridledger_core.consensus.signing import GENESIS_PREVIOUS_HASH, block_hash, data_hash
from gridledger_core.genesis import Genesis
from gridledger_core.identity import Signers
from gridledger_core.ledger import schema
from gridledger_core.ledger.checks import CheckedTransaction, check_endorsed_transaction
from gridledger_core.ledger.errors import Code, TxInvalid
from gridledger_core.ledger.rules import market as market_rules
from gridledger_core.ledger.rules.identity import LedgerAccounts
from gridledger_core.ledger.rules.money import BlockContext
from gridledger_core.ledger.state import StateOverlay, next_state_root
from gridledger_core.ledger.transitions import TxContext, apply_transaction
from gridledger_core.market import ledger_view as view
from gridledger_core.storage import KeyValueStore, WriteBatch
from gridledger_core.storage.base import prefix_end

log = logging.getLogger(__name__)

# Failures of this node rather than of a transaction (storage, memory, the OS): they abort the
# block, which is then not written, and the follower reports and retries. Turning one into a
# validation code would record a verdict other replicas would not reach.
NODE_FAULTS: tuple[type[BaseException], ...] = (lmdb.Error, OSError, MemoryError)


def _valid_transaction(raw: bytes) -> transaction_pb2.Transaction:
    """A committed valid transaction's body (it decoded when it was judged)."""
    endorsed = envelope_pb2.EndorsedTransaction.FromString(raw)
    return transaction_pb2.Transaction.FromString(endorsed.envelope.payload)


def unexpected_verdict(stage: str, exc: Exception) -> TxInvalid:
    """The deterministic verdict on a transaction whose judging raised something other than
    TxInvalid: a bug, or content a check did not foresee. Same code and message on every
    replica (the exception's own text may differ between library versions, so only its type
    is recorded); the caller rolls the transaction's writes back. `stage` is "check" (decode,
    certificates, signatures, header, endorsements) or "rule" (the body's state transition)."""
    if stage == "check":
        return TxInvalid(Code.TX_VALIDATION_CODE_MALFORMED,
                         f"check failed: {type(exc).__name__}")
    return TxInvalid(Code.TX_VALIDATION_CODE_INVALID_BODY, f"rule failed: {type(exc).__name__}")


class BlockRejected(Exception):
    """A block that is not the next valid final block; nothing of it was written."""


class StoreMismatch(Exception):
    """A followed store that is not the chain followed so far (`Ledger.follow_stored`)."""


# Checks the ordering-service proof of a block (quorum certificate, lottery, VRF, proposer
# signature) given the previous block's header bytes (None for block 0). Raises BlockRejected.
BlockVerifier = Callable[[block_pb2.Block, block_pb2.BlockHeader, bytes | None], None]


@dataclass
class CommitResult:
    number: int
    block_hash: bytes
    state_root: bytes
    tx_ids: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    # Header timestamps (Unix seconds) of the transactions that decoded, for latency metrics.
    tx_timestamps: list[float] = field(default_factory=list)
    # Each transaction as decoded by the checks (None if it did not decode), so followers of
    # the ledger (the endorser's book cache) never parse a block again.
    transactions: list[transaction_pb2.Transaction | None] = field(default_factory=list)
    # The block's header time, and the orders its prologue expired at gate closure.
    block_time: int = 0
    expired_orders: list[str] = field(default_factory=list)
    # A follower of a stored ledger may pass several blocks as one result (`joined`): each
    # block's own result in `parts` (`number` is the last's), and the committed state as of
    # the last block, open only while listeners are called (None: the ledger's store is that
    # state until they return).
    parts: list[CommitResult] = field(default_factory=list)
    committed_state: KeyValueStore | None = None

    @property
    def first_number(self) -> int:
        """The first block's number (`number` is the last's)."""
        return self.parts[0].number if self.parts else self.number

    @property
    def blocks(self) -> list[CommitResult]:
        """Each block's own result, in order (this one when it is one block)."""
        return self.parts or [self]

    @classmethod
    def joined(cls, parts: list[CommitResult]) -> CommitResult:
        """Consecutive blocks' results as one: every transaction in order, the last block's
        hash, root and time, every expired order, and the blocks themselves in `parts`."""
        if len(parts) == 1:
            return parts[0]
        last = parts[-1]
        joined = cls(last.number, last.block_hash, last.state_root, block_time=last.block_time,
                     parts=parts)
        for name in ("tx_ids", "codes", "messages", "tx_timestamps", "transactions",
                     "expired_orders"):
            for part in parts:
                getattr(joined, name).extend(getattr(part, name))
        return joined


class Ledger:
    def __init__(self, store: KeyValueStore, genesis: Genesis, verify_block: BlockVerifier) -> None:
        self.store = store
        self.genesis = genesis
        self._verify_block = verify_block
        self._commit_lock = threading.Lock()
        self._tip_header: bytes | None = None
        raw = store.get(schema.CHAIN_STATE)
        self._chain = ledger_pb2.ChainState.FromString(raw) if raw else ledger_pb2.ChainState(
            height=0, last_block_hash=b"", state_root=genesis.hash, transactions=0)

    @property
    def chain(self) -> ledger_pb2.ChainState:
        return self._chain

    @property
    def height(self) -> int:
        return self._chain.height

    # -- commit ---------------------------------------------------------------------------

    def commit(self, block: block_pb2.Block) -> CommitResult:
        with self._commit_lock:
            header = self._check_header(block)
            try:
                self._verify_block(block, header, self.previous_header_bytes())
            except (BlockRejected, *NODE_FAULTS):
                raise
            except Exception as exc:  # a proof that cannot even be checked is not valid
                raise BlockRejected(f"block {header.number}: its ordering proof cannot be "
                                    f"checked ({type(exc).__name__})") from exc
            return self._apply(block, header)

    def previous_header_bytes(self) -> bytes | None:
        """The tip's header bytes: read from the store once, then kept from each commit (the
        verifier needs them for every block, and the stored block may be megabytes)."""
        if self.height == 0:
            return None
        if self._tip_header is None:
            previous = self.get_block(self.height - 1)
            assert previous is not None
            self._tip_header = previous[0].header
        return self._tip_header

    def tip_time(self) -> int:
        """Header time (Unix seconds) of the last committed block; 0 before block 0."""
        raw = self.previous_header_bytes()
        return 0 if raw is None else block_pb2.BlockHeader.FromString(raw).timestamp.seconds

    def _check_header(self, block: block_pb2.Block) -> block_pb2.BlockHeader:
        try:
            header = block_pb2.BlockHeader.FromString(block.header)
        except DecodeError as exc:
            raise BlockRejected("block header does not decode") from exc
        if header.number != self.height:
            raise BlockRejected(f"block {header.number} is not the next block ({self.height})")
        expected_previous = self._chain.last_block_hash or GENESIS_PREVIOUS_HASH
        if header.previous_hash != expected_previous:
            raise BlockRejected(f"block {header.number} does not chain to the previous block")
        if header.data_hash != data_hash(block.transactions):
            raise BlockRejected(f"block {header.number} data hash does not match its transactions")
        return header

    def _apply(self, block: block_pb2.Block, header: block_pb2.BlockHeader) -> CommitResult:
        this_hash = block_hash(block.header)
        result = CommitResult(header.number, this_hash, b"", block_time=header.timestamp.seconds)
        first_index: dict[str, int] = {}  # new tx id -> its position; duplicates keep the first
        # Every read of the block from one read transaction (about ten per transaction
        # otherwise); it ends before the block's write.
        with self.store.snapshot() as committed:
            state = StateOverlay(committed, snapshot=True)
            result.expired_orders = self._expire_closed_slots(
                committed, state,
                BlockContext(self.genesis, header.timestamp.seconds, header.number))
            seen: set[str] = set()
            for index, raw in enumerate(block.transactions):
                tx_id, code, message = self._execute(raw, committed, state,
                                                     header.timestamp.seconds, seen, result)
                result.tx_ids.append(tx_id)
                result.codes.append(code)
                result.messages.append(message)
                if tx_id and code != Code.TX_VALIDATION_CODE_DUPLICATE_TXID:
                    first_index[tx_id] = index
        changes = state.changes()
        result.state_root = next_state_root(self._chain.state_root, this_hash, changes)
        batch = WriteBatch()
        batch.put(schema.block_key(header.number), block.SerializeToString())
        record = ledger_pb2.BlockCommitRecord(block_hash=this_hash, state_root=result.state_root,
                                              validation_codes=result.codes,
                                              messages=result.messages,
                                              tx_ids=result.tx_ids,
                                              expired_orders=result.expired_orders)
        batch.put(schema.commit_record_key(header.number), record.SerializeToString())
        for tx_id, index in first_index.items():
            location = ledger_pb2.TxLocation(block_number=header.number, index=index)
            batch.put(schema.tx_key(tx_id), location.SerializeToString())
        for key, value in changes:
            if value is None:
                batch.delete(schema.state_key(key))
            else:
                batch.put(schema.state_key(key), value)
        chain = ledger_pb2.ChainState(height=header.number + 1, last_block_hash=this_hash,
                                      state_root=result.state_root,
                                      transactions=self._chain.transactions
                                      + len(block.transactions))
        batch.put(schema.CHAIN_STATE, chain.SerializeToString())
        self.store.commit(batch)
        self._chain = chain
        self._tip_header = block.header
        return result

    # -- following a ledger another process commits (an endorser on its committer's) --------

    def follow_stored(self, listener: Callable[[CommitResult], None]) -> int:
        """Take every block the store holds beyond this object's height, as one CommitResult
        (`CommitResult.joined` of what `commit` returned for each, from the stored blocks and
        commit records; nothing is executed), and call `listener` with it while its
        `committed_state` (the store as of its last block) is open. Returns the number of
        blocks taken (0: none, the listener is not called). For a ledger this process only
        reads: its organisation's committer writes the store. The result holds the decoded
        transaction of each valid transaction (None for the others), and header times of the
        valid ones only.

        Raises StoreMismatch when the store is not the chain followed so far (lower, or a
        block that does not chain on): another ledger was put in its place."""
        with self.store.snapshot() as stored:
            with self._commit_lock:
                parts = self._take_stored(stored)
            if not parts:
                return 0
            result = CommitResult.joined(parts)
            result.committed_state = stored
            try:
                listener(result)
            finally:
                result.committed_state = None  # the snapshot ends here
            return len(parts)

    def _take_stored(self, stored: KeyValueStore) -> list[CommitResult]:
        """(Under the commit lock.) The stored blocks beyond this height; advances."""
        raw = stored.get(schema.CHAIN_STATE)
        height = ledger_pb2.ChainState.FromString(raw).height if raw else 0
        if height < self.height:
            raise StoreMismatch(f"the ledger read holds {height} blocks; {self.height} were "
                                "followed from it")
        parts: list[CommitResult] = []
        chain, tip = self._chain, self._tip_header
        for number in range(self.height, height):  # all or nothing: a mismatch takes none
            result, chain, tip = self._stored_result(stored, number, chain)
            parts.append(result)
        self._chain, self._tip_header = chain, tip
        return parts

    @staticmethod
    def _stored_result(stored: KeyValueStore, number: int, chain: ledger_pb2.ChainState
                       ) -> tuple[CommitResult, ledger_pb2.ChainState, bytes]:
        """Block `number`'s result, and the chain state and tip header after it."""
        block_raw = stored.get(schema.block_key(number))
        record_raw = stored.get(schema.commit_record_key(number))
        if block_raw is None or record_raw is None:  # written in one transaction with it
            raise StoreMismatch(f"block {number} or its commit record is missing")
        block = block_pb2.Block.FromString(block_raw)
        record = ledger_pb2.BlockCommitRecord.FromString(record_raw)
        header = block_pb2.BlockHeader.FromString(block.header)
        previous = chain.last_block_hash or GENESIS_PREVIOUS_HASH
        if (header.number != number or header.previous_hash != previous
                or record.block_hash != block_hash(block.header)):
            raise StoreMismatch(f"block {number} of the ledger read does not chain on the "
                                "blocks followed from it")
        result = CommitResult(number, record.block_hash, record.state_root,
                              tx_ids=list(record.tx_ids), codes=list(record.validation_codes),
                              messages=list(record.messages),
                              block_time=header.timestamp.seconds,
                              expired_orders=list(record.expired_orders))
        for raw_tx, code in zip(block.transactions, result.codes, strict=True):
            tx = _valid_transaction(raw_tx) if code == Code.TX_VALIDATION_CODE_VALID else None
            result.transactions.append(tx)
            if tx is not None:
                result.tx_timestamps.append(tx.header.timestamp.ToNanoseconds() / 1e9)
        after = ledger_pb2.ChainState(
            height=number + 1, last_block_hash=record.block_hash, state_root=record.state_root,
            transactions=chain.transactions + len(block.transactions))
        return result, after, block.header

    def _expire_closed_slots(self, committed: KeyValueStore, state: StateOverlay,
                             ctx: BlockContext) -> list[str]:
        """The block prologue: expire every open order of each slot whose gate closure is at
        or before the block time. Book keys sort by slot, so it reads the first open order
        and stops at the first slot still open: one point read when nothing closed, else the
        closing slots' open orders, each expired once. The overlay is still empty here, so
        the committed store is the state."""
        gate = self.genesis.market.gate_closure_seconds
        book = schema.state_key("order-book/")
        start: bytes | None = None
        expired: list[str] = []
        while True:
            first = next(iter(committed.scan(book, start=start, limit=1)), None)
            if first is None:
                return expired
            slot = int(first[0][len(book):].split(b"/", 1)[0])
            if ctx.block_time < slot - gate:
                return expired
            slot_prefix = schema.order_book_prefix(slot)
            for key, value in committed.scan(schema.state_key(slot_prefix)):
                order_id = value.decode()
                state.delete(key[len(schema.STATE):].decode())
                try:
                    record = view.load_order(state, order_id)
                    if record is not None:
                        market_rules.expire_order(state, ctx, record)
                        expired.append(order_id)
                except NODE_FAULTS:
                    raise
                except Exception:  # a bug, not content: the same on every replica; go on
                    log.exception("expiring order %s at block %d failed", order_id, ctx.height)
            start = prefix_end(schema.state_key(slot_prefix))

    def _execute(self, raw: bytes, committed: KeyValueStore, state: StateOverlay,
                 block_time: int, seen: set[str], result: CommitResult
                 ) -> tuple[str, int, str]:
        """Validate and apply one transaction; returns (tx id or "", code, message).

        Whatever the bytes, this returns a verdict: TxInvalid carries its own, anything else
        but a node fault (NODE_FAULTS) gets `unexpected_verdict`, with the transaction's
        writes rolled back. So no content can stop a block from committing."""
        tx_id = ""
        decoded = len(result.transactions)
        result.transactions.append(None)
        limit = self.genesis.limits.max_tx_bytes
        if len(raw) > limit:  # refused before parsing: the size is the first thing judged
            return "", Code.TX_VALIDATION_CODE_MALFORMED, (
                f"transaction of {len(raw)} bytes exceeds max_tx_bytes {limit}")
        stage = "check"
        try:
            # Signers are judged at the block's time against the state at this transaction.
            signers = Signers(self.genesis.membership, block_time, LedgerAccounts(state))
            checked = check_endorsed_transaction(raw, signers)
            tx_id = checked.tx_id
            result.transactions[decoded] = checked.tx
            result.tx_timestamps.append(checked.tx.header.timestamp.ToNanoseconds() / 1e9)
            if tx_id in seen or committed.get(schema.tx_key(tx_id)) is not None:
                seen.add(tx_id)
                raise TxInvalid(Code.TX_VALIDATION_CODE_DUPLICATE_TXID,
                                f"transaction {tx_id} is already on the ledger")
            seen.add(tx_id)
            self._check_time(checked, block_time)
            stage = "rule"
            state.savepoint()
            try:
                apply_transaction(state, TxContext(checked, self.genesis, block_time,
                                                   result.number, signers))
            except Exception:
                state.rollback()
                raise
        except TxInvalid as exc:
            return tx_id, exc.code, exc.message
        except NODE_FAULTS:
            raise
        except Exception as exc:
            verdict = unexpected_verdict(stage, exc)
            log.warning("transaction %s: %s (%s: %s)", tx_id or f"#{decoded}", verdict.message,
                        type(exc).__name__, exc)
            return tx_id, verdict.code, verdict.message
        return tx_id, Code.TX_VALIDATION_CODE_VALID, ""

    def _check_time(self, checked: CheckedTransaction, block_time: int) -> None:
        if checked.tx.header.timestamp.seconds > block_time + self.genesis.max_clock_skew_seconds:
            raise TxInvalid(Code.TX_VALIDATION_CODE_BAD_HEADER,
                            "transaction timestamp is later than its block")

    # -- simulation (endorser) ------------------------------------------------------------

    def simulate(self, checked: CheckedTransaction, now: int) -> None:
        """Run the transaction's rules against the current state without writing anything.

        Raises TxInvalid exactly as a committer would at this height."""
        # One committed state for every read (a block committed meanwhile is seen whole or
        # not at all), from one read transaction.
        with self.store.snapshot() as committed:
            if committed.get(schema.tx_key(checked.tx_id)) is not None:
                raise TxInvalid(Code.TX_VALIDATION_CODE_DUPLICATE_TXID,
                                f"transaction {checked.tx_id} is already on the ledger")
            self._check_time(checked, now)
            state = StateOverlay(committed)
            signers = Signers(self.genesis.membership, now, LedgerAccounts(state))
            try:
                apply_transaction(state, TxContext(checked, self.genesis, now, self.height,
                                                   signers))
            except (TxInvalid, *NODE_FAULTS):
                raise
            except Exception as exc:  # the verdict a committer would record
                raise unexpected_verdict("rule", exc) from exc

    def signers(self, at: int) -> Signers:
        """How the endorser judges signers at admission: at its clock `at`, against the
        accounts and revocations of the committed state."""
        return Signers(self.genesis.membership, at, LedgerAccounts(StateOverlay(self.store)))

    # -- queries --------------------------------------------------------------------------

    def get_block(self, number: int) -> tuple[block_pb2.Block, ledger_pb2.BlockCommitRecord] | None:
        raw = self.store.get(schema.block_key(number))
        if raw is None:
            return None
        record = self.store.get(schema.commit_record_key(number))
        assert record is not None, f"block {number} stored without its commit record"
        return block_pb2.Block.FromString(raw), ledger_pb2.BlockCommitRecord.FromString(record)

    def has_transaction(self, tx_id: str) -> bool:
        """Whether a committed block holds the transaction (valid or not)."""
        return self.store.get(schema.tx_key(tx_id)) is not None

    def get_transaction(self, tx_id: str) -> tuple[ledger_pb2.TxLocation, int, str,
                                                   envelope_pb2.EndorsedTransaction] | None:
        raw = self.store.get(schema.tx_key(tx_id))
        if raw is None:
            return None
        location = ledger_pb2.TxLocation.FromString(raw)
        found = self.get_block(location.block_number)
        assert found is not None
        block, record = found
        tx = envelope_pb2.EndorsedTransaction.FromString(block.transactions[location.index])
        return (location, record.validation_codes[location.index],
                record.messages[location.index], tx)

    def get_state(self, key: str) -> bytes | None:
        return self.store.get(schema.state_key(key))

    def scan_state(self, prefix: str, start: str | None = None,
                   limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        offset = len(schema.STATE)
        start_key = schema.state_key(start) if start is not None else None
        for key, value in self.store.scan(schema.state_key(prefix), start=start_key, limit=limit):
            yield key[offset:].decode(), value
