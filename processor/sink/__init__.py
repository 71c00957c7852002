"""The Genesys sink: conditional PATCHes of `customAttributes.typingIndicator` (DESIGN §2).

`GenesysSink.apply` turns one desired state of one session into the fewest calls that make
it the remote state, and reports what happened as a `SinkResult`.
"""

from processor.sink.client import GenesysSink, RemoteSession
from processor.sink.config import SinkConfig

__all__ = ["GenesysSink", "RemoteSession", "SinkConfig"]
