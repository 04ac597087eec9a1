"""rpuhw.calibration: characterisation protocols and device-model fitting (issue #5)."""
