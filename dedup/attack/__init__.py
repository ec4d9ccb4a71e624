"""The extraction attack of Carlini et al. 2023 and the membership signal, to measure what deduplication buys."""

from dedup.errors import require_extra

for _module in ("diffusers", "networkx", "matplotlib"):
    require_extra(_module, "attack", "the attack (dedup verify, dedup extract)")
