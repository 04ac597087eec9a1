"""``rpuhw demo`` (``make run``): from an emulated test chip to a trained network, in one
command.

1. starts ``rpuhw emulate`` (its own process: a 32 x 32 chip with the package's
   hidden device behind a Keithley 2600B, a TSP-linked 707B and a 33500B on
   127.0.0.1);
2. characterises devices of the chip through the real drivers
   (``bench:BENCH.yaml``, pulse response), fits a device model and validates it;
3. trains the paper's lenet on the embedded mnist5k three ways: floating point;
   every layer on the calibrated simulator (``sim:device.yaml``); conv1 (16 x 26)
   on the emulated chip through the bench, the other layers on the calibrated
   simulator;
4. writes ``DIR/report.md`` with the summary table and PNG plots, prints the
   table, and stops the emulator on every exit path.

The three runs share data, epochs, batch size, learning rate and update
granularity (``batch``: one aggregated pulse program per batch and layer, which is
what a bench can afford), so only where the layers live differs.

Modules: :mod:`~rpuhw.demo.sizes` (how much it measures and trains),
:mod:`~rpuhw.demo.pipeline` (the steps), :mod:`~rpuhw.demo.report` (tables and
``report.md``), :mod:`~rpuhw.demo.cli` (the ``rpuhw demo`` command). Nothing
imports the demo.
"""
