"""The stochastic RPU simulator: SimulatedArray, its update engines and the slow reference."""
