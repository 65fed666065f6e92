"""Evaluation: statistics of reward models and policies, and (later) reports and plots."""
