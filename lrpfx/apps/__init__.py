"""Uses of the engine: the command line, the demo, pictures and text rendering, preprocessing,
and adapters to other libraries' interfaces (Captum, Quantus). Nothing in :mod:`lrpfx.core`,
:mod:`lrpfx.passes` or :mod:`lrpfx.rules` imports from here.
"""
