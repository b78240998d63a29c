"""Offline evaluation: bags, folders of pairs, baselines and plots."""
