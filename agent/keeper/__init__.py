"""The keeper: a small process apart from the agent that undoes what the agent started (today a
freeze) when the agent dies, or when it is alive but holds a freeze past its deadline.  (It was
called the guard; logs and ``guard-restarts`` keep that word.)

- :mod:`.handle`: the agent's side: starts the keeper, sends it every snapshot, watches it
  through a pidfd and restarts it if it dies.
- :mod:`.main`: the keeper process's own main (``python -m pyqga.agent.keeper``): reads the
  agent's snapshots until the pipe closes, then runs the freeze machine's safety thaw; or, at
  the freeze's deadline plus a grace, kills the hung agent and thaws.
- :mod:`.deadline`: the keeper's one decision, pure: how long to wait, or that the agent is hung.
- :mod:`.lock`: the lock a live keeper holds, so that a new agent waits for it to finish.

This package's ``__init__`` imports nothing: the agent imports :mod:`.handle` only, the keeper
process :mod:`.main`, which imports everything it needs up front.
"""
