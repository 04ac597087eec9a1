"""Training algorithms of analog layers, one module each, registered by name.

A layer hands its algorithm the (x, d) pairs of an optimizer step; the algorithm owns
the arrays it names (``("C",)`` for ``sgd``/``mp``, ``("A", "C")`` for ``tt``), each a
:class:`~rpuhw.schedule.TileGrid` on a backend spec, and decides what is pulsed where
and how the layer's weight is formed (``gamma*A + C`` for ``tt``; ``ttv2``, ``cttv2``
and ``agad`` add a digital buffer, choppers and a running reference). Algorithms use
only the :class:`~rpuhw.array.CrossPointArray` contract and the periphery, so they run on
every backend. See docs/algorithms.md.

``ALGORITHMS.get("tt")`` gives the class; :func:`parse_algorithm` turns a YAML/CLI value
(``"tt"``, ``"tt:gamma=0.1,transfer_every=2"`` or ``{name: tt, gamma: 0.1}``) into a
name and its validated hyper-parameters.
"""

from __future__ import annotations

from rpuhw.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    algorithm_class,
    make_params,
    parse_algorithm,
)

ALGORITHMS.add("sgd", "rpuhw.algorithms.sgd:SGD", usage="sgd")
ALGORITHMS.add("mp", "rpuhw.algorithms.mp:MixedPrecision", usage="mp")
ALGORITHMS.add("tt", "rpuhw.algorithms.tt:TikiTaka", usage="tt")
ALGORITHMS.add("ttv2", "rpuhw.algorithms.ttv2:BufferedTikiTaka", usage="ttv2")
ALGORITHMS.add("cttv2", "rpuhw.algorithms.cttv2:ChoppedTikiTaka", usage="cttv2")
ALGORITHMS.add("agad", "rpuhw.algorithms.agad:DynamicTikiTaka", usage="agad")

__all__ = ["ALGORITHMS", "Algorithm", "algorithm_class", "make_params", "parse_algorithm"]
