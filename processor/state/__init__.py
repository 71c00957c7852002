"""The state engine: per-partition stores of typing sessions (DESIGN §4).

One job per module: `store` (the engine), `session` (per-session record), `timers`
(deadline buckets), `dedupe` (recent event ids), `changelog` (record encoding),
`recovery` (folding a changelog), `work` (what the engine emits), `lead` (how early an
expiry clear goes out), `config` (knobs).
"""

from processor.state.changelog import ChangelogError
from processor.state.config import EngineConfig
from processor.state.store import PartitionStore
from processor.state.work import (
    AppliedChange,
    AuditDecision,
    Emitted,
    NextCall,
    Work,
    WorkKind,
)

__all__ = [
    "AppliedChange",
    "AuditDecision",
    "ChangelogError",
    "Emitted",
    "EngineConfig",
    "NextCall",
    "PartitionStore",
    "Work",
    "WorkKind",
]
