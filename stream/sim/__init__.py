"""The simulator: a virtual DVS camera filming a person who does the 11 DVS128 Gesture classes.

``body`` (the person and the gestures' motion), ``camera`` (scene, renderer and DVS pixel model),
``recording`` (gestures and recordings as event arrays), ``dataset`` (a DVS128-Gesture-layout data
set on disk and a montage). The live source is ``stream.sources.simulated.SimulatorSource``.
"""
