"""carbontracker's Python API, measured by the carbontrack binary.

``from carbontrack import CarbonTracker`` (or ``from carbontrack.tracker
import CarbonTracker``, carbontracker's own module path) in place of
``from carbontracker.tracker import CarbonTracker``.
"""

from .tracker import CarbonTracker, find_binary

__all__ = ["CarbonTracker", "find_binary"]
__version__ = "0.1.0"
