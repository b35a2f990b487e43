"""What the e2e tests, the fault tests, bench/bench.py and bench/soak.py share: starting
processes (`processes`: fwproxy and the servers, a clean environment, stopping by PID) and
reading /proc (`procfs`: RSS, peak RSS, fds, CPU time, TCP sockets).

Nothing here imports pytest: the bench scripts run it outside a test session.
"""
