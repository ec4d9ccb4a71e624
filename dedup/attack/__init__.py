"""The extraction attack of Carlini et al. 2023 and the membership signal, to measure what deduplication buys."""
