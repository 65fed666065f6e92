"""The synthetic world: a review grammar, its gold reward, and the artefacts built from them.

Everything here is generated locally from seeds, so the demo, the tests and the benchmarks run
offline and "did RLHF work?" becomes a number (the gold reward) rather than a judgement call.
"""
