"""The ``quasar`` commands: one module per command, each defining ``COMMAND``.

- ``base``: Option / Command, strict parsing ("did you mean --seed?"), choices and ranges
  checked while parsing, help, exit codes, the missing-extra check, ``-q`` for every command
  (passed on, or handled by the layer), a quiet exit when stdout is closed.
- ``options``: options shared by several commands (one name and short flag per concept).
- ``score``, ``models``, ``export``, ``anchors``, ``evaluate``, ``reproduce``, ``bench``.

A new command: a module here with ``COMMAND = Command(name=..., summary=...,
target="quasar.<pkg>.<module>:<function>", options=[...])`` and one line in
``quasar.cli.COMMANDS``. The function's parameters are the options (a test checks that
each has a described Option and each Option a parameter); its defaults are the defaults.
Nothing here imports torch, onnxruntime, SciPy or the command's own body before the command
line has parsed cleanly.
"""
