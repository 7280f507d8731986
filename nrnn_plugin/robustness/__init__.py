"""Robustness evaluation: test-time input perturbations, evaluation tables and plots (THEORY.md section 6)."""
