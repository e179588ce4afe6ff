"""Experiment grids of the paper's protocol (light / light+HRF / large) and their runner."""
