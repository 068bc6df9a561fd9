"""The benchmark is a script run by hand (see run.py); pytest never collects it."""

collect_ignore = ["run.py"]
