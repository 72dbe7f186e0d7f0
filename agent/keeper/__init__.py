"""The keeper: a small process apart from the agent that undoes what the agent started (today a
freeze) when the agent dies.  (It was called the guard; logs and ``guard-restarts`` keep that word.)

- :mod:`.handle`: the agent's side: starts the keeper, sends it every snapshot, watches it
  through a pidfd and restarts it if it dies.
- :mod:`.main`: the keeper process's own main (``python -m pyqga.agent.keeper``): reads the
  agent's snapshots until the pipe closes, then runs the freeze machine's safety thaw.
- :mod:`.lock`: the lock a live keeper holds, so that a new agent waits for it to finish.

This package's ``__init__`` imports nothing: the agent imports :mod:`.handle` only, the keeper
process :mod:`.main`, which imports everything it needs up front.
"""
