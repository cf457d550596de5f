"""Evaluation: metrics, lesion-level intervals, calibration, decision rules, reports, plots, Grad-CAM,
the paper's figures and per-run figures from saved predictions (numpy; no training code)."""
