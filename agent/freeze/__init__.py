"""Filesystem freeze/thaw as a library: no wire code, no agent state.

The command layer calls these modules and converts their :class:`protocol.errors.AgentError`
values into replies; keeping the kernel work here lets it be tested on real loop-mounted
filesystems without a daemon around it.

- :mod:`.mounts`: which filesystems exist and which can be frozen (``/proc/self/mountinfo``).
- :mod:`.ioctls`: FIFREEZE / FITHAW / syncfs / FITRIM, behind a small seam for fault injection.
- :mod:`.engine`: freeze-all, freeze-list, thaw, with qemu-ga's ordering and error rules.
- :mod:`.hooks`: running the freeze/thaw hook with a timeout.
- :mod:`.fsinfo`: ``guest-get-fsinfo`` and ``guest-fstrim`` data.
- :mod:`.statefile`: the on-disk marker that says "frozen" across an agent restart.
"""
