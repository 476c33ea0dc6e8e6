"""Benchmarks: one command per figure in BENCHMARKS.md (`python -m bench.<script>`)."""
