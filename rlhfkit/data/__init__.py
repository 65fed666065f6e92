"""The data layer: read raw rows from any source (:mod:`.loading`), then check and normalise
them to one schema per kind of data (:mod:`.formats`), so trainers see a single row shape
whatever the user's file looked like. Tokenisation and batching live in :mod:`.collate`."""

from rlhfkit.data.formats import NormalizeReport, detect_format, normalize, ranking_to_pairs
from rlhfkit.data.loading import read_records

__all__ = ["NormalizeReport", "detect_format", "normalize", "ranking_to_pairs", "read_records"]
