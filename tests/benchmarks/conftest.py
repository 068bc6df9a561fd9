"""The benchmarks are scripts run by hand (see run.py, history.py); pytest never collects them.
test_history_bench.py only checks that history.py works, at a tiny size: it times nothing."""

collect_ignore = ["run.py", "history.py"]
