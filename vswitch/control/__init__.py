"""The control socket: how `vswitch show`, `capture`, `attach`, `detach` and `reload` talk to a running daemon.

- :mod:`~vswitch.control.protocol`: one JSON line each way, its limits, and the checks of requests and answers;
- :mod:`~vswitch.control.server`: the daemon's side, with its pools, limits and counters, and the commands;
- :mod:`~vswitch.control.reports`: what `show` reports, as plain dicts read from a running node;
- :mod:`~vswitch.control.capture`: a port's frames streamed live to a client as pcap;
- :mod:`~vswitch.control.client`: the command line's side.

The text tables are the command line's (:mod:`vswitch.cli.format`).
"""
