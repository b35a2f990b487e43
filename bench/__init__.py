"""The benchmark (bench.bench) and the soak test (bench.soak), run as modules from the repo
root (`python -m bench.bench`) so they import tests/support, the process harness and /proc
readers the e2e tests use. The helper servers and clients they start (idle.py,
bare_proxy.py, fixed_rate.py, rtt_relay.py, script_scenario.py, mitm_addon.py) stay
standalone scripts run by path: they import nothing from the repository."""
