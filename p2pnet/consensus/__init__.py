"""The reputation ledger: Tendermint-style BFT consensus over signed rating
transactions, an LMDB ledger, and the reputation state computed from it.

Public API, re-exported from the modules that hold it (see docs/consensus.md).
"""

from p2pnet.consensus.core import Core, SignState, Tip
from p2pnet.consensus.driver import ConsensusService
from p2pnet.consensus.errors import ConsensusError, GenesisError, LedgerError, MempoolFull
from p2pnet.consensus.genesis import Genesis, Params, Validator, generate_genesis, load_genesis
from p2pnet.consensus.mempool import Mempool
from p2pnet.consensus.reputation import (
    ReputationState, Rules, Standing, apply_block, genesis_state, score, standings, state_hash,
)
from p2pnet.consensus.store import Ledger, MemoryLedger, verify_chain
from p2pnet.consensus.views import block_json, ledger_state, reputation_json, verify_json

__all__ = [
    "ConsensusError", "ConsensusService", "Core", "Genesis", "GenesisError", "Ledger", "LedgerError",
    "MemoryLedger", "Mempool", "MempoolFull", "Params", "ReputationState", "Rules", "SignState", "Standing",
    "Tip", "Validator", "apply_block", "block_json", "generate_genesis", "genesis_state", "ledger_state",
    "load_genesis", "reputation_json", "score", "standings", "state_hash", "verify_chain", "verify_json",
]
