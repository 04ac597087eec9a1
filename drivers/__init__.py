"""rpuhw.drivers: VISA transport, instrument drivers and hardware benches (issue #4)."""
