"""Fault injection: every fault a lease with a deadline, ended by the agent or by its keeper.

- :mod:`.vocabulary`: kinds, lease phases, end reasons, the core's actions and events (h11 style).
- :mod:`.machine`: :class:`~.machine.LeaseBook`, the sans-IO core that owns the leases.
- :mod:`.snapshot`: the leases as the state file stores them and the keeper's pipe carries them.
- :mod:`.recipes`: the steps that apply and undo a fault, and the one function that runs a step
  (the agent and the keeper both run undo steps through it; every undo step is idempotent).
- :mod:`.kinds`: from a request (kind, target, params) to a recipe; :mod:`.block` for the
  device-mapper kinds, :mod:`.dm` the device-mapper ioctls; :mod:`.processes`; :mod:`.network`
  for nftables partitions and netem, :mod:`.nettools` the nft and tc programs; :mod:`.resources`;
  :mod:`.clock` (with :mod:`.timekeeping`, the clocks and true time); :mod:`.catalog` joins them.
- :mod:`.worker`: the program behind a fault that needs a running process (spawn and reap steps).
- :mod:`.plan`: seeded plans; :mod:`.timeline`: the events; :mod:`.tokens`: random names
  (os.urandom, not secrets, which would load OpenSSL).
- :mod:`.engine`: the driver, with the lock, the deadline timer, the events file and the keeper.
"""
