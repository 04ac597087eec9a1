"""Moving devices and trained networks between rpuhw and other simulators.

:mod:`rpuhw.interop.aihwkit`: IBM aihwkit 1.2 (``to_aihwkit``, ``from_aihwkit``, the
Python a config prints as, trained networks); :mod:`rpuhw.interop.presets`: aihwkit's
device presets as ``sim:preset:NAME`` without aihwkit installed. Nothing here imports
aihwkit, torch or numpy at module level.
"""
