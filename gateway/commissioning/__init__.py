"""Commissioning: learn an envelope from the plant's history and prove it against that history.

One module per concept: :mod:`.sources` (history readers behind one interface), :mod:`.stats`
(per-tag statistics), :mod:`.fitting` (the least-squares process model), :mod:`.learn`
(statistics to proposed settings), :mod:`.writer` (the proposed site file), :mod:`.report`
(Markdown, JSON and plots), :mod:`.prove` (offline replay through the live envelope and input
detectors), :mod:`.simday` (a clean simulated day from the simulators) and :mod:`.cli` (the
``learn`` and ``prove`` subcommands). See docs/commissioning.md.
"""
