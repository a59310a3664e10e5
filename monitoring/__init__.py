"""Monitoring: drift reports on served traffic (Evidently), read from the prediction log."""
