"""The data layer: read raw rows from any source (:mod:`.loading`), then check and normalise
them to one schema per kind of data (:mod:`.formats`), so trainers see a single row shape
whatever the user's file looked like. Tokenisation and batching live in :mod:`.collate`, which
is imported from there directly (it needs torch, which reading data should not)."""

from rlhfkit.data.formats import (
    FORMATS,
    Kind,
    NormalizeReport,
    RenderChat,
    detect_format,
    normalize,
    ranking_to_pairs,
    split_shared_prompt,
)
from rlhfkit.data.loading import SUPPORTED_EXTENSIONS, Records, read_records

__all__ = [
    "FORMATS",
    "Kind",
    "NormalizeReport",
    "Records",
    "RenderChat",
    "SUPPORTED_EXTENSIONS",
    "detect_format",
    "normalize",
    "ranking_to_pairs",
    "read_records",
    "split_shared_prompt",
]
