"""Filesystem freeze and thaw: the whole feature, from planning to the kernel calls.

The command layer (:mod:`pyqga.agent.commands.fsfreeze`) calls :class:`.driver.Freezer`, which
``AgentState`` gets from :func:`.build.build_freezer`.  The keeper process
(:mod:`pyqga.agent.keeper`) runs the same driver to thaw when the agent dies.

The sans-IO core, split as h11 splits ``_events.py`` from ``_state.py``:

- :mod:`.vocabulary`: the events that go into the machine, the actions that come out, and the
  values they carry;
- :mod:`.machine`: the state machine (``FreezeCore``): every piece of freeze state, and every
  decision; no I/O, no clock of its own;
- :mod:`.snapshot`: the format the state file and the keeper's pipe carry, and its validation.

Around it:

- :mod:`.driver`: performs the machine's actions (threads, ioctls, state file, hooks, keeper)
  and feeds their results back as events;
- :mod:`.build`: the agent's freezer, put together from its configuration;
- :mod:`.planner`: which superblocks a freeze or thaw touches, through which mount points, in
  which order (``FreezePlanner``);
- :mod:`.mounts`: which filesystems exist and which can be frozen (``/proc/self/mountinfo``);
- :mod:`.order`: which filesystems may be frozen together (waves: children and stacked devices
  first);
- :mod:`.kernel`: the kernel port (FIFREEZE, FITHAW until EINVAL, syncfs) and its Linux side;
- :mod:`.ioctls`: the raw calls (FIFREEZE / FITHAW / syncfs / FITRIM), behind a small seam for fault
  injection;
- :mod:`.hooks`: running the freeze/thaw hook with a timeout (``sample-fsfreeze-hook`` is the
  one the package ships);
- :mod:`.statefile`: the snapshot on disk, which says "frozen" across an agent restart.

``guest-get-fsinfo`` and ``guest-fstrim`` live in :mod:`pyqga.agent.commands.fsinfo`.
"""
